#!/usr/bin/env python3
"""Aggregate the raw output of bench/run.sh into one JSON document and a Markdown summary.

Standard library only. Reads RAW/ (hyperfine exports, throughput.tsv, procmem snapshots, ...),
writes --out (JSON) and --markdown (Markdown). See bench/README.md for the meaning of each field.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

# Order and labels of the startup subjects (hyperfine command names set by run.sh).
SUBJECTS = [
    ("bare", "bare interpreter"),
    ("unshare", "unshare (user+pid+mnt+net+uts+ipc+cgroup ns)"),
    ("bwrap", "bwrap --unshare-all, ro /usr"),
    ("bkg-warm", "bkg exe, warm agent (pool 2)"),
    ("bkg-pool0", "bkg exe, agent --warm-pool 0"),
]
THROUGHPUT_TOOLS = ["bare", "bwrap", "bkg-warm", "bkg-pool0"]
# Issue 16's targets: warm start-up ratios (at most), throughput ratios (at least), idle RSS.
STARTUP_TARGETS = {"python": 0.7, "node": 0.5}
THROUGHPUT_TARGET = 1.3  # bkg warm vs bare python3 at 2 and 8 clients
IDLE_RSS_TARGET_MIB = 20


def run(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def load_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def machine(raw):
    cpu = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    os_name = None
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    status = load_json(raw / "agent-status.json") or {}
    try:
        load = (raw / "loadavg-start.txt").read_text().split()
    except OSError:
        load = []
    def busy(name):
        try:
            return float((raw / name).read_text())
        except (OSError, ValueError):
            return None

    return {
        "kernel": platform.release(),
        "os": os_name,
        "arch": platform.machine(),
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "mem_total_bytes": mem_kib * 1024,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "loadavg_at_start": [float(x) for x in load],
        "cpu_busy_before": busy("cpu-busy-start.txt"),
        "cpu_busy_after": busy("cpu-busy-end.txt"),
        "cgroup_version": status.get("cgroup_version"),
    }


def versions(args):
    root = Path(__file__).resolve().parent.parent
    rev = run("git", "-C", str(root), "rev-parse", "--short=12", "HEAD")
    dirty = run("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    try:
        built, mtime = (args.raw / "build.tsv").read_text().split()
    except (OSError, ValueError):
        built, mtime = None, None
    return {
        "built_by_run": built == "1",
        "bkg_agent_binary_mtime": mtime,
        "bkg_git_rev": rev,
        "bkg_tree_dirty": bool(dirty),
        "bkg": run(args.bkg, "--version"),
        "python": run(args.python, "--version"),
        "node": run(args.node, "--version"),
        "hyperfine": run("hyperfine", "--version"),
        "bwrap": run("bwrap", "--version"),
    }


def startup(raw, lang, pattern="startup-{lang}-round*.json"):
    """Every command's times over all interleaved rounds (startup-LANG-roundN.json), merged; or
    those of the files `pattern` names (the spaced runs: spaced-LANG.json)."""
    times = {}
    rounds = sorted(raw.glob(pattern.format(lang=lang)))
    for path in rounds:
        data = load_json(path) or {"results": []}
        for r in data["results"]:
            times.setdefault(r["command"], []).extend(r.get("times", []))
    if not times:
        return None
    by_name = {}
    for name, ts in times.items():
        by_name[name] = {
            "median_ms": round(statistics.median(ts) * 1000, 2),
            "mean_ms": round(statistics.mean(ts) * 1000, 2),
            "stddev_ms": round((statistics.stdev(ts) if len(ts) > 1 else 0) * 1000, 2),
            "min_ms": round(min(ts) * 1000, 2),
            "max_ms": round(max(ts) * 1000, 2),
            "runs": len(ts),
            "rounds": len(rounds),
        }
    bare, bwrap = by_name.get("bare"), by_name.get("bwrap")
    for r in by_name.values():
        r["ratio_vs_bare"] = ratio(r["median_ms"], bare and bare["median_ms"])
        r["ratio_vs_bwrap"] = ratio(r["median_ms"], bwrap and bwrap["median_ms"])
        r["mean_ratio_vs_bare"] = ratio(r["mean_ms"], bare and bare["mean_ms"])
        r["mean_ratio_vs_bwrap"] = ratio(r["mean_ms"], bwrap and bwrap["mean_ms"])
    return by_name


def prestarted(raw, lang):
    """How many of the warm agent's startup runs took an interpreter started ahead (run.sh)."""
    try:
        runs, taken = (int(x) for x in (raw / f"prestarted-{lang}.txt").read_text().split())
    except (OSError, ValueError):
        return None
    return {"runs": runs, "prestarted": taken}


def agent_side(raw, lang):
    path = raw / f"bkg-json-{lang}.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    ok = sum(1 for r in rows if r.get("exit_code") == 0)

    def med(key):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else None

    return {
        "runs": len(rows),
        "ok": ok,
        "wall_ms_median": med("wall_ms"),
        "cpu_ms_median": med("cpu_ms"),
        "peak_memory_bytes_median": med("peak_memory_bytes"),
    }


def throughput(raw):
    levels = {}
    path = raw / "throughput.tsv"
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        name, conc, runs, fails, ns = line.split("\t")
        secs = int(ns) / 1e9
        levels.setdefault(int(conc), {})[name] = {
            "runs": int(runs),
            "failures": int(fails),
            "seconds": round(secs, 3),
            "runs_per_s": round(int(runs) / secs, 2),
            "ok_runs_per_s": round((int(runs) - int(fails)) / secs, 2),
        }
    out = []
    for conc in sorted(levels):
        tools = levels[conc]
        bwrap = tools.get("bwrap", {}).get("runs_per_s")
        bare = tools.get("bare", {}).get("runs_per_s")
        for t in tools.values():
            t["ratio_vs_bare"] = ratio(t["runs_per_s"], bare)
            t["ratio_vs_bwrap"] = ratio(t["runs_per_s"], bwrap)
        out.append({"concurrency": conc, "tools": tools})
    return out


def agent_cpu(raw, tp):
    """Agent CPU per run in each bkg throughput cell, from /proc/PID/stat before and after it:
    the agent process itself, and with the children it reaped (the sandboxes' inits, which
    include the interpreter they reaped) and its zygote (bench/run.sh, `agent_cpu`)."""
    path = raw / "agent-cpu.tsv"
    if not path.exists():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        label, own, children, hz = line.split("\t")
        when, name, conc = label.split()
        rows[(name, int(conc), when)] = (int(own), int(children), int(hz))
    runs = {(name, lvl["concurrency"]): t["runs"] for lvl in tp for name, t in lvl["tools"].items()}
    out = []
    for (name, conc, when), (own1, ch1, hz) in sorted(rows.items()):
        if when != "after" or (name, conc, "before") not in rows:
            continue
        own0, ch0, _ = rows[(name, conc, "before")]
        n = runs.get((name, conc))
        if not n:
            continue
        out.append({"agent": name, "concurrency": conc, "runs": n,
                    "agent_cpu_ms_per_run": round((own1 - own0) * 1000 / hz / n, 2),
                    "with_sandboxes_cpu_ms_per_run": round((own1 - own0 + ch1 - ch0) * 1000 / hz / n, 2)})
    return out


def memory(raw):
    snaps = {}
    for name in ("warm-idle", "cold-idle", "warm-after", "cold-after"):
        s = load_json(raw / f"rss-{name}.json")
        if s:
            snaps[name] = {k: v for k, v in s.items() if k != "processes"}
            snaps[name]["processes"] = [
                {k: p[k] for k in ("pid", "ppid", "state", "cmdline", "rss_kib", "pss_kib")}
                for p in s["processes"]
            ]
    derived = {}
    warm, cold = snaps.get("warm-idle"), snaps.get("cold-idle")
    if warm and warm["sandbox_inits"]:
        n = warm["sandbox_inits"]
        derived["prepared_sandboxes"] = n
        derived["per_sandbox_init_rss_kib"] = round(warm["sandbox_init_rss_kib"] / n)
        derived["per_sandbox_init_pss_kib"] = round(warm["sandbox_init_pss_kib"] / n)
        if cold:
            derived["per_sandbox_total_rss_delta_kib"] = round(
                (warm["total_rss_kib"] - cold["total_rss_kib"]) / n)
            derived["per_sandbox_total_pss_delta_kib"] = round(
                (warm["total_pss_kib"] - cold["total_pss_kib"]) / n)
            derived["agent_rss_delta_pool2_vs_pool0_kib"] = (
                warm["agent_rss_kib"] - cold["agent_rss_kib"])
    return {"snapshots": snaps, "derived": derived}


def neighbours(raw):
    """CPU share used by processes other than the benchmark's own, per phase (from cpu-marks)."""
    path = raw / "cpu-marks.txt"
    if not path.exists():
        return {}
    marks = [line.split() for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for (_, t0, o0, s0), (name, t1, o1, s1) in zip(marks, marks[1:]):
        total = int(t1) - int(t0)
        if total > 0:
            out[name] = {"other_processes": round(max(int(o1) - int(o0), 0) / total, 3),
                         "steal": round((int(s1) - int(s0)) / total, 3)}
    return out


def agent_start(raw):
    out = {}
    path = raw / "agent-start.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, pool, ready, full = line.split("\t")
            out[name] = {"warm_pool": int(pool), "socket_ready_ms": int(ready),
                         "pool_full_ms": int(full)}
    return out


# ---------------------------------------------------------------------------------- Markdown

def fx(x):
    return f"{x:.2f}×" if x is not None else "–"


def fms(x):
    return f"{x:.1f}" if x is not None else "–"


def pct(x):
    return f"{x * 100:.0f}%" if x is not None else "?"


def mib(kib):
    return f"{kib / 1024:.1f}" if kib is not None else "–"


def markdown(doc):
    m, v = doc["machine"], doc["versions"]
    lines = []
    lines.append(
        f"Machine: Linux {m['kernel']}, {m['cpu_model']}, {m['nproc']} CPUs, "
        f"{m['mem_total_gib']} GiB RAM, cgroup {m['cgroup_version']}, {m['os']}; "
        f"load avg at start {'/'.join(str(x) for x in m['loadavg_at_start'])}, "
        f"CPU busy before/after the run {pct(m['cpu_busy_before'])}/{pct(m['cpu_busy_after'])}. "
        f"{doc['date'][:10]}, bkg {v['bkg_git_rev']}{' (dirty tree)' if v['bkg_tree_dirty'] else ''}"
        f"{'' if v['built_by_run'] else ' (--no-build, binaries of ' + str(v['bkg_agent_binary_mtime']) + ')'}, "
        f"{v['python']}, Node {v['node']}, {v['hyperfine']} "
        f"(-N, {doc['hyperfine']['warmup']} warmup + {doc['hyperfine']['runs']} runs per command in "
        f"{doc['hyperfine']['rounds']} interleaved rounds)"
        f"{', QUICK run' if doc['quick'] else ''}.")
    for lang, script in (("python", "hello.py"), ("node", "hello.js")):
        res = doc["startup"].get(lang)
        if not res:
            continue
        lines += ["", f"Startup, `{script}` (wall time per run, client to exit):", "",
                  "| what | median ms | ratio vs bare | ratio vs bwrap | mean ± σ ms |",
                  "|---|---:|---:|---:|---:|"]
        for key, label in SUBJECTS:
            r = res.get(key)
            if r:
                lines.append(f"| {label} | {fms(r['median_ms'])} | {fx(r['ratio_vs_bare'])} | "
                             f"{fx(r['ratio_vs_bwrap'])} | {fms(r['mean_ms'])} ± "
                             f"{fms(r['stddev_ms'])} |")
        p = doc["prestarted"].get(lang)
        if p:
            lines += ["", f"Runs of the warm agent (warmups included) that took a sandbox with the "
                      f"interpreter started ahead: {p['prestarted']} of {p['runs']}; the others "
                      f"found none ready that fit and had one prepared for them."]
        sp = (doc.get("startup_spaced") or {}).get(lang) or {}
        if sp.get("bare") and sp.get("bkg-warm"):
            lines += ["", f"Spaced 200 ms apart ({sp['bare']['runs']} runs each, the pool refilled "
                      f"between runs; not what the targets below are read from): bare "
                      f"{fms(sp['bare']['median_ms'])} ms, warm bkg {fms(sp['bkg-warm']['median_ms'])} ms, "
                      f"{fx(sp['bkg-warm']['ratio_vs_bare'])} bare."]
        a = doc["agent_side"].get(lang)
        if a and a["wall_ms_median"] is not None:
            lines += ["", f"Agent-reported `wall_ms` of `bkg exe --json {script}` (median of "
                      f"{a['runs']}): {a['wall_ms_median']} ms, cpu_ms {a['cpu_ms_median']}."]
    nb = doc["cpu_share_by_phase"]
    if nb:
        lines += ["", "CPU used by other processes on the machine / stolen by the hypervisor while "
                  "each phase ran (share of all CPUs; > 5% means that phase is disturbed): " +
                  ", ".join(f"{k} {pct(v['other_processes'])} / {pct(v['steal'])}"
                            for k, v in nb.items()) + "."]
    if doc["targets"]:
        lines += ["", "Issue 16's targets:", ""]
        for t in doc["targets"]:
            verdict = "met" if t["met"] else "NOT met" if t["met"] is not None else "not measured"
            lines.append(f"- {t['what']}: {t['value']} (target {t['target']}): {verdict}")
    if doc["throughput"]:
        runs = doc["throughput"][0]["tools"].get("bare", {}).get("runs")
        lines += ["", f"Throughput, `python3 -c pass` runs/s ({runs} runs per cell split over N "
                  "parallel clients):", "",
                  "| concurrency | bare python3 | bwrap | bkg warm (pool 2) | bkg pool 0 | "
                  "bkg warm / bare | bkg warm / bwrap | bkg pool 0 / bwrap |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        failures = []
        for lvl in doc["throughput"]:
            tools = lvl["tools"]
            cells = []
            for name in THROUGHPUT_TOOLS:
                tr = tools.get(name)
                cells.append(f"{tr['runs_per_s']:.1f}" if tr else "–")
                if tr and tr["failures"]:
                    failures.append(f"{name} ×{lvl['concurrency']}: {tr['failures']} failed")
            warm, cold = tools.get("bkg-warm"), tools.get("bkg-pool0")
            lines.append(f"| {lvl['concurrency']} | " + " | ".join(cells) +
                         f" | {fx(warm and warm['ratio_vs_bare'])} | {fx(warm and warm['ratio_vs_bwrap'])}"
                         f" | {fx(cold and cold['ratio_vs_bwrap'])} |")
        if failures:
            lines += ["", "FAILED runs: " + "; ".join(failures) + "."]
    if doc["agent_cpu"]:
        lines += ["", "Agent CPU per `bkg exe -c pass` run (from /proc/PID/stat over each throughput "
                  "cell; with sandboxes = plus the children it reaped, sandbox inits and the interpreter, and "
                  "its zygote with the forks it reaped):", "",
                  "| agent | concurrency | agent ms/run | with sandboxes ms/run |", "|---|---:|---:|---:|"]
        for r in doc["agent_cpu"]:
            lines.append(f"| {r['agent']} | {r['concurrency']} | {r['agent_cpu_ms_per_run']:.1f} | "
                         f"{r['with_sandboxes_cpu_ms_per_run']:.1f} |")
    mem = doc["memory"]
    s, d = mem["snapshots"], mem["derived"]
    if s:
        lines += ["", "Memory (idle agents, /proc VmRSS and Pss):", "",
                  "| what | RSS MiB | PSS MiB |", "|---|---:|---:|"]

        def row(label, rss, pss):
            lines.append(f"| {label} | {mib(rss)} | {mib(pss)} |")

        c, w = s.get("cold-idle"), s.get("warm-idle")
        if c:
            row("agent, `--warm-pool 0`", c["agent_rss_kib"], c["agent_pss_kib"])
        if w:
            row("agent process, `--warm-pool 2`", w["agent_rss_kib"], w["agent_pss_kib"])
            row(f"its {w['sandbox_inits']} prepared sandboxes (`__sandbox-init`), together",
                w["sandbox_init_rss_kib"], w["sandbox_init_pss_kib"])
            row("agent + descendants, `--warm-pool 2`", w["total_rss_kib"], w["total_pss_kib"])
        if "per_sandbox_init_rss_kib" in d:
            row("per prepared sandbox (its init process)", d["per_sandbox_init_rss_kib"],
                d["per_sandbox_init_pss_kib"])
        if "per_sandbox_total_rss_delta_kib" in d:
            row("per prepared sandbox ((pool 2 total − pool 0 total) / 2)",
                d["per_sandbox_total_rss_delta_kib"], d["per_sandbox_total_pss_delta_kib"])
        for key, label in (("warm-after", "agent + descendants, pool 2, after the benchmark"),
                           ("cold-after", "agent, pool 0, after the benchmark")):
            if key in s:
                row(label, s[key]["total_rss_kib"], s[key]["total_pss_kib"])
        zombies = w["zombies"] if w else 0
        if zombies:
            lines += ["", f"Note: the pool-2 agent had {zombies} zombie child(ren) "
                      "(`[exe] <defunct>`) while idle (0 RSS)."]
    st = doc["agent_start"]
    if st:
        parts = [f"{k} agent (pool {x['warm_pool']}): socket answers after "
                 f"{x['socket_ready_ms']} ms, pool full after {x['pool_full_ms']} ms"
                 for k, x in st.items()]
        lines += ["", "Agent start-up: " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def targets(doc):
    out = []
    for lang, limit in STARTUP_TARGETS.items():
        w = ((doc["startup"].get(lang) or {}).get("bkg-warm") or {}).get("ratio_vs_bare")
        out.append({"what": f"warm bkg exe hello ({lang}) / bare", "value": fx(w), "target": f"≤ {limit}×",
                    "met": None if w is None else w <= limit})
    for lvl in doc["throughput"]:
        if lvl["concurrency"] not in (2, 8):
            continue
        tools = lvl["tools"]
        warm = (tools.get("bkg-warm") or {}).get("ratio_vs_bare")
        cold = (tools.get("bkg-pool0") or {}).get("ratio_vs_bwrap")
        out.append({"what": f"bkg warm runs/s / bare at {lvl['concurrency']} clients", "value": fx(warm),
                    "target": f"≥ {THROUGHPUT_TARGET}×", "met": None if warm is None else warm >= THROUGHPUT_TARGET})
        out.append({"what": f"bkg pool 0 runs/s / bwrap at {lvl['concurrency']} clients", "value": fx(cold),
                    "target": "≥ 1.00×", "met": None if cold is None else cold >= 1.0})
    idle = doc["memory"]["snapshots"].get("warm-idle")
    rss = idle and idle["agent_rss_kib"] / 1024
    out.append({"what": "agent process idle RSS, pool full", "value": f"{rss:.1f} MiB" if rss else "–",
                "target": f"< {IDLE_RSS_TARGET_MIB} MiB", "met": None if rss is None else rss < IDLE_RSS_TARGET_MIB})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--markdown", required=True, type=Path)
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--bkg", default="bkg")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--node", default="/usr/bin/node")
    args = ap.parse_args()
    raw = args.raw

    def text(name):
        try:
            return (raw / name).read_text().strip()
        except OSError:
            return None

    doc = {
        "schema": "bkg-bench/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "hyperfine": {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds, "shell": "none (-N)"},
        "machine": machine(raw),
        "versions": versions(args),
        "commands": {"bwrap": text("bwrap-command.txt"), "unshare": text("unshare-command.txt")},
        "startup": {lang: startup(raw, lang) for lang in ("python", "node")},
        "startup_spaced": {lang: startup(raw, lang, "spaced-{lang}.json") for lang in ("python", "node")},
        "agent_side": {"python": agent_side(raw, "hello-py"), "node": agent_side(raw, "hello-js")},
        "prestarted": {lang: prestarted(raw, lang) for lang in ("python", "node")},
        "throughput": throughput(raw),
        "agent_cpu": [],
        "memory": memory(raw),
        "agent_start": agent_start(raw),
        "cpu_share_by_phase": neighbours(raw),
    }
    doc["agent_cpu"] = agent_cpu(raw, doc["throughput"])
    doc["targets"] = targets(doc)
    md = markdown(doc)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.markdown.write_text(md)


if __name__ == "__main__":
    main()
