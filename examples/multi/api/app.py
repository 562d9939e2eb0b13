"""Totals the orders in data/orders.csv (mounted at /workspace/data) and writes a summary."""

import csv
import json
import os
import pathlib
import sys

WORKSPACE = pathlib.Path(os.environ.get("RESULTS_DIR", "/workspace"))
DATA = pathlib.Path(os.environ.get("DATA_DIR", WORKSPACE / "data"))


def totals(rows):
    return {row["item"]: round(int(row["quantity"]) * float(row["price"]), 2) for row in rows}


def main(argv):
    with open(DATA / "orders.csv", newline="") as orders:
        rows = list(csv.DictReader(orders))
    if "--check" in argv:
        bad = [row["id"] for row in rows if int(row["quantity"]) <= 0]
        print("orders ok" if not bad else f"bad quantities in orders {bad}")
        return 1 if bad else 0
    summary = totals(rows)
    (WORKSPACE / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(summary)} items, {sum(summary.values()):.2f} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
