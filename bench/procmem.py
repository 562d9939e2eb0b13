#!/usr/bin/env python3
"""Memory snapshot of a process and all of its descendants (stdlib only).

Usage: procmem.py PID [LABEL] > snapshot.json
       procmem.py --cpu-busy SECONDS   (prints the machine's busy CPU share over SECONDS, 0..1)
       procmem.py --cpu-mark PID       (prints "all_ticks other_ticks steal_ticks"; see cpu_mark)

For every process in the tree it records VmRSS (resident set, counts shared pages in full) and,
when readable, Pss from /proc/PID/smaps_rollup (shared pages divided among their users), both
in KiB. Zombies ("[exe] <defunct>") are listed with zero memory.
"""

import json
import os
import sys
import time


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def stat_fields(pid):
    """(state, ppid) from /proc/PID/stat; comm may contain spaces and parentheses."""
    text = read(f"/proc/{pid}/stat")
    if text is None:
        return None
    rest = text[text.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def kib(text, key):
    if not text:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def describe(pid):
    st = stat_fields(pid)
    if st is None:
        return None
    status = read(f"/proc/{pid}/status")
    cmdline = (read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
    comm = (read(f"/proc/{pid}/comm") or "").strip()
    return {
        "pid": pid,
        "ppid": st[1],
        "state": st[0],
        "comm": comm,
        "cmdline": cmdline or f"[{comm}]",
        "threads": kib(status, "Threads"),
        "rss_kib": kib(status, "VmRSS"),
        "pss_kib": kib(read(f"/proc/{pid}/smaps_rollup"), "Pss"),
    }


def tree(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = stat_fields(int(name))
        if st is not None:
            children.setdefault(st[1], []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        info = describe(pid)
        if info is None:
            continue
        out.append(info)
        todo.extend(sorted(children.get(pid, [])))
    return out


def cpu_busy(seconds):
    """Fraction of all CPUs' time spent not idle (idle + iowait) over the next SECONDS."""

    def sample():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals[:8]), vals[3] + vals[4]  # user..steal; idle + iowait

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def cpu_mark(root):
    """(all CPU ticks so far, CPU ticks used by other processes so far, steal ticks so far).

    "Other" is utime+stime+cutime+cstime summed over every user-space process that is neither
    ROOT nor one of its descendants, nor pid 1 (which reaps orphans, possibly ours), nor a kernel
    thread (kworkers also tear down our sandboxes' namespaces). Steal is time the hypervisor gave
    this VM's CPUs to someone else. Summing cutime/cstime keeps
    processes that ended between two marks in the count, via their parent. Only differences
    between two marks mean anything.
    """
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    total, steal = sum(vals), vals[7]
    ours, stats = set(), {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = read(f"/proc/{name}/stat")
            if text:
                stats[int(name)] = text[text.rfind(")") + 2:].split()
    children = {}
    for pid, rest in stats.items():
        children.setdefault(int(rest[1]), []).append(pid)
    todo = [root]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo.extend(children.get(pid, []))
    other = 0
    for pid, rest in stats.items():
        kernel = pid == 2 or int(rest[1]) == 2
        if pid in ours or pid == 1 or kernel:
            continue
        other += sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    return total, other, steal


def main():
    if sys.argv[1] == "--cpu-mark":
        print(*cpu_mark(int(sys.argv[2])))
        return
    if sys.argv[1] == "--cpu-busy":
        print(f"{cpu_busy(float(sys.argv[2])):.3f}")
        return
    root = int(sys.argv[1])
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    procs = tree(root)
    if not procs:
        sys.exit(f"procmem: no process {root}")
    agent, desc = procs[0], procs[1:]
    live = [p for p in desc if p["state"] != "Z"]
    inits = [p for p in live if "__sandbox-init" in p["cmdline"]]
    json.dump(
        {
            "label": label,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "agent_pid": root,
            "agent_rss_kib": agent["rss_kib"],
            "agent_pss_kib": agent["pss_kib"],
            "agent_threads": agent["threads"],
            "descendants": len(desc),
            "zombies": len(desc) - len(live),
            "sandbox_inits": len(inits),
            "descendants_rss_kib": sum(p["rss_kib"] for p in desc),
            "descendants_pss_kib": sum(p["pss_kib"] for p in desc),
            "sandbox_init_rss_kib": sum(p["rss_kib"] for p in inits),
            "sandbox_init_pss_kib": sum(p["pss_kib"] for p in inits),
            "total_rss_kib": sum(p["rss_kib"] for p in procs),
            "total_pss_kib": sum(p["pss_kib"] for p in procs),
            "processes": procs,
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
