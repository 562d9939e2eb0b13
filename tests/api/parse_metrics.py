"""Parses the agent's /metrics text (on stdin) with prometheus_client's OpenMetrics parser and its
classic Prometheus text parser; both must take it. Prints what the Rust test checks, as JSON:
the family names, runs by outcome, HTTP requests by status and the run-duration count."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

text = sys.stdin.read()
families = list(openmetrics_families(text))
# The classic parser must also read it (Prometheus scrapes either way); it stops at `# EOF`.
classic = {family.name for family in prometheus_families(text)}
names = sorted(family.name for family in families)
missing = [name for name in names if name not in classic and f"{name}_total" not in classic]
if missing:
    sys.exit(f"the classic parser lost {missing}")

summary = {"families": names, "bkg_runs": {}, "bkg_http_requests": {}, "bkg_run_duration_seconds": {}}
for family in families:
    for sample in family.samples:
        if family.name == "bkg_runs" and sample.name == "bkg_runs_total":
            summary["bkg_runs"][sample.labels["outcome"]] = sample.value
        elif family.name == "bkg_http_requests" and sample.name == "bkg_http_requests_total":
            status = sample.labels["status"]
            summary["bkg_http_requests"][status] = summary["bkg_http_requests"].get(status, 0) + sample.value
        elif family.name == "bkg_run_duration_seconds" and sample.name == "bkg_run_duration_seconds_count":
            summary["bkg_run_duration_seconds"]["count"] = sample.value
json.dump(summary, sys.stdout)
