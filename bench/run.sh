#!/usr/bin/env bash
# bench/run.sh — startup latency, throughput and memory of `bkg exe` compared with the bare
# interpreter, `unshare` and bubblewrap. See bench/README.md.
#
# Usage: bash bench/run.sh [--quick] [--no-build]
#   --quick     fewer runs (about a minute); numbers are rougher
#   --no-build  use the existing target/release/{bkg,bkg-agent} instead of building them
#
# Writes raw data to bench/results/raw/, the aggregate to bench/results/latest.json and the
# Markdown summary to bench/results/latest.md; prints the Markdown summary on stdout (progress
# and hyperfine output go to stderr). Needs root, hyperfine, bwrap, unshare and /usr/bin/python3.
set -euo pipefail

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

QUICK=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RESULTS=$ROOT/bench/results
RAW=$RESULTS/raw
EXAMPLES=$ROOT/examples

# Benchmark subjects (the agent's defaults for --python/--node) and the helper interpreter.
PYTHON=/usr/bin/python3
NODE=/usr/bin/node
HOSTPY=/usr/bin/python3

WARMUP=5
ROUNDS=5           # hyperfine invocations per language, every command in each (interleaving)
if ((QUICK)); then
    RUNS=10        # hyperfine runs per command, over all rounds (divisible by ROUNDS)
    TP_TOTAL=32    # runs per throughput cell (divisible by every CONCURRENCY level)
    JSON_RUNS=5    # `bkg exe --json` runs for the agent-side timing
else
    RUNS=30
    TP_TOTAL=96
    JSON_RUNS=20
fi
CONCURRENCY=(1 2 8 32)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (bkg-agent needs root)"
for tool in hyperfine bwrap unshare cargo; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y hyperfine bubblewrap)"
done
for f in "$PYTHON" "$NODE" "$HOSTPY" "$EXAMPLES/hello.py" "$EXAMPLES/hello.js"; do
    [[ -e $f ]] || die "missing $f"
done

rm -rf "$RAW"
mkdir -p "$RAW"

BKG=$ROOT/target/release/bkg
AGENT=$ROOT/target/release/bkg-agent
if ((BUILD)); then
    # Only the two binaries measured here and the sandbox init and the zygote's library beside
    # them (what `cargo build --release --workspace` would build for them, with the same
    # profile), so unrelated crates cannot stop the benchmark.
    log "building release binaries (bkg, bkg-agent, bkg-sandbox-init, libbkg_zygote.so)"
    { cargo build --release -q -p bkg-cli --bin bkg -p bkg-agent --bin bkg-agent --bin bkg-sandbox-init &&
        cargo build --release -q -p bkg-zygote; } ||
        die "cargo build --release failed (use --no-build to benchmark the existing binaries)"
else
    log "--no-build: using the existing binaries"
fi
for f in "$BKG" "$AGENT"; do
    [[ -x $f ]] || die "missing $f (run without --no-build)"
done
printf '%s\t%s\n' "$BUILD" "$(date -u -r "$AGENT" +%Y-%m-%dT%H:%M:%SZ)" >"$RAW/build.tsv"

# Noisy neighbours: wait (up to QUIET_WAIT seconds) until the machine is nearly idle — a build
# that was queued behind ours on cargo's lock starts right now — then note how busy it was.
QUIET_WAIT=${BENCH_QUIET_WAIT:-90}
deadline=$((SECONDS + QUIET_WAIT))
while :; do
    "$HOSTPY" bench/procmem.py --cpu-busy 2 >"$RAW/cpu-busy-start.txt"
    busy=$(<"$RAW/cpu-busy-start.txt")
    ((10#${busy/./} < 100)) && break # busy is "0.123": compare in thousandths
    if ((SECONDS >= deadline)); then
        log "warning: the machine is still busy (CPU busy $busy); measuring anyway"
        break
    fi
    log "machine busy (CPU busy $busy of 1.0); waiting for it to quieten (up to ${QUIET_WAIT}s)"
    sleep 3
done
cut -d' ' -f1-3 /proc/loadavg >"$RAW/loadavg-start.txt"

TMP=$(mktemp -d /tmp/bkg-bench.XXXXXX)
AGENT_PIDS=()

stop_agents() {
    local pid i
    for pid in "${AGENT_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${AGENT_PIDS[@]}"; do
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "agent $pid ignored SIGTERM for 15s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    AGENT_PIDS=()
}

cleanup() {
    local rc=$? log_file name
    trap - EXIT INT TERM
    stop_agents
    for log_file in "$TMP"/*/agent.log; do
        [[ -e $log_file ]] || continue
        name=$(basename "$(dirname "$log_file")")
        cp "$log_file" "$RAW/agent-$name.log"
        if ((rc != 0)); then
            log "last lines of the $name agent log ($RAW/agent-$name.log):"
            tail -n 30 "$log_file" >&2
        fi
    done
    rm -rf --one-file-system "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# mark PHASE: note CPU counters at a phase boundary, so summarize.py can tell how much CPU other
# processes on the machine (not this script's process tree) used while each phase ran.
mark() {
    printf '%s %s\n' "$1" "$("$HOSTPY" bench/procmem.py --cpu-mark "$$")" >>"$RAW/cpu-marks.txt"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# status_count SOCKET FIELD: a count from the agent's `bkg agent status --json`, or -1 when it
# does not answer.
status_count() {
    local out
    out=$("$BKG" agent status --json --socket "$1" 2>/dev/null) || { echo -1; return; }
    "$HOSTPY" -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 0))' "$out" "$2"
}

# warm_count SOCKET: the agent's prepared-sandbox count, or -1 when it does not answer.
warm_count() { status_count "$1" warm_sandboxes; }

# wait_agent NAME PID SOCKET POOL START_MS: wait until the agent answers and its pool is full.
wait_agent() {
    local name=$1 pid=$2 sock=$3 pool=$4 start=$5 ready=-1 n deadline
    deadline=$(($(now_ms) + 60000))
    while (($(now_ms) < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "the $name agent exited during start-up"
        n=$(warm_count "$sock")
        if ((n >= 0)); then
            ((ready >= 0)) || ready=$(($(now_ms) - start))
            if ((n >= pool)); then
                printf '%s\t%s\t%s\t%s\n' "$name" "$pool" "$ready" "$(($(now_ms) - start))" \
                    >>"$RAW/agent-start.tsv"
                return 0
            fi
        fi
        sleep 0.05
    done
    die "the $name agent did not get ready with $pool warm sandboxes within 60s"
}

# wait_pool SOCKET POOL: wait (up to 30s) until the pool has refilled after runs.
wait_pool() {
    local i
    for ((i = 0; i < 600; i++)); do
        (($(warm_count "$1") >= $2)) && return 0
        sleep 0.05
    done
    log "warning: pool of $1 did not refill to $2 within 30s"
}

# start_agent NAME POOL EXTRA_ARGS...: start an agent on $TMP/NAME; sets STARTED_PID.
start_agent() {
    local name=$1 pool=$2 start
    shift 2
    mkdir -p "$TMP/$name"
    start=$(now_ms)
    "$AGENT" --foreground --socket "$TMP/$name/agent.sock" --state-dir "$TMP/$name/state" \
        --warm-pool "$pool" "$@" >"$TMP/$name/agent.log" 2>&1 &
    STARTED_PID=$!
    AGENT_PIDS+=("$STARTED_PID")
    wait_agent "$name" "$STARTED_PID" "$TMP/$name/agent.sock" "$pool" "$start"
}

# Two agents side by side: the one under test with the default warm pool, and one without a pool
# (own cgroup directory and uid range so their sandboxes never overlap). The disk budget counts
# disk limits, not bytes written (the images are sparse): at 32 clients the default (80% of the
# free space) can be spent by limits alone on a small disk, and a refused run measures nothing.
log "starting agents"
start_agent warm 2 --cgroup-dir bkg-bench --disk-budget 64GiB
WARM_PID=$STARTED_PID
WARM_SOCK=$TMP/warm/agent.sock
start_agent cold 0 --cgroup-dir bkg-bench-cold --uid-base 1880000000 --disk-budget 64GiB
COLD_PID=$STARTED_PID
COLD_SOCK=$TMP/cold/agent.sock
export BKG_NO_AUTOSTART=1 BKG_SOCKET=$WARM_SOCK

# Every timed command, baseline or bkg, runs in one clean environment: `env -i PATH=/usr/bin:/bin`
# plus the few variables a bkg sandbox gives its script (engine/request.rs), not the caller's:
# variables such as NODE_EXTRA_CA_CERTS (which makes node parse a CA bundle at start-up, +40 ms)
# or PYTHONPATH would otherwise skew the baselines only.
mkdir -p "$TMP/home"
CLEAN_ENV=(env -i PATH=/usr/bin:/bin HOME="$TMP/home" LANG=C.UTF-8 PYTHONUNBUFFERED=1
    BKG_NO_AUTOSTART=1)
"$BKG" agent status --json --socket "$WARM_SOCK" >"$RAW/agent-status.json"

sleep 1
"$HOSTPY" bench/procmem.py "$WARM_PID" "idle, warm pool 2" >"$RAW/rss-warm-idle.json"
"$HOSTPY" bench/procmem.py "$COLD_PID" "idle, warm pool 0" >"$RAW/rss-cold-idle.json"

# Sanity: every subject must run and print its greeting before it is timed.
log "checking that every subject works"
"$BKG" exe "$EXAMPLES/hello.py" >&2
"$BKG" exe "$EXAMPLES/hello.js" >&2
"$BKG" exe --socket "$COLD_SOCK" "$EXAMPLES/hello.py" >&2

# bubblewrap with isolation close to a bkg sandbox: all namespaces, read-only /usr, the host's
# merged-/usr layout, the /etc entries the agent binds, fresh /proc, minimal /dev, tmpfs /tmp.
BWRAP=(bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr)
for d in /bin /sbin /lib /lib64 /lib32 /libx32; do
    if [[ -L $d ]]; then
        BWRAP+=(--symlink "$(readlink "$d")" "$d")
    elif [[ -d $d ]]; then
        BWRAP+=(--ro-bind "$d" "$d")
    fi
done
for e in /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d /etc/localtime /etc/alternatives \
    /etc/ssl /etc/ca-certificates /etc/mime.types /etc/python3 /etc/python3.11 /etc/nsswitch.conf; do
    BWRAP+=(--ro-bind-try "$e" "$e")
done
BWRAP+=(--proc /proc --dev /dev --tmpfs /tmp --ro-bind "$EXAMPLES" /w --chdir /w)
UNSHARE=(unshare --user --map-root-user --pid --fork --mount --net --uts --ipc --cgroup)
"${CLEAN_ENV[@]}" "${BWRAP[@]}" "$PYTHON" /w/hello.py >&2
"${CLEAN_ENV[@]}" "${BWRAP[@]}" "$NODE" /w/hello.js >&2
"${CLEAN_ENV[@]}" "${UNSHARE[@]}" "$PYTHON" "$EXAMPLES/hello.py" >&2
"${CLEAN_ENV[@]}" "${UNSHARE[@]}" "$NODE" "$EXAMPLES/hello.js" >&2

# quote WORDS...: one command line for hyperfine -N (which splits it like a POSIX shell).
quote() { local out; printf -v out '%q ' "$@"; echo "${out% }"; }
printf '%s\n' "$(quote "${BWRAP[@]}" "$PYTHON" /w/hello.py)" >"$RAW/bwrap-command.txt"
printf '%s\n' "$(quote "${UNSHARE[@]}" "$PYTHON" "$EXAMPLES/hello.py")" >"$RAW/unshare-command.txt"

# startup LANG INTERPRETER SCRIPT: ROUNDS hyperfine invocations, each timing every command
# (baselines and bkg) for RUNS/ROUNDS runs, so slow drift of the machine (neighbours, thermal)
# falls on all of them alike; summarize.py merges the rounds' times per command.
startup() {
    local lang=$1 interp=$2 script=$3 round warmup warm_runs=0 prestarted_before prestarted_after
    log "startup, $lang: $ROUNDS interleaved hyperfine rounds, $((RUNS / ROUNDS)) runs per command each"
    prestarted_before=$(status_count "$WARM_SOCK" prestarted_runs)
    for ((round = 1; round <= ROUNDS; round++)); do
        wait_pool "$WARM_SOCK" 2
        warmup=1
        ((round == 1)) && warmup=$WARMUP
        warm_runs=$((warm_runs + warmup + RUNS / ROUNDS))
        "${CLEAN_ENV[@]}" hyperfine -N --style basic --warmup "$warmup" --runs "$((RUNS / ROUNDS))" \
            --export-json "$RAW/startup-$lang-round$round.json" \
            -n "bare" "$(quote "$interp" "$EXAMPLES/$script")" \
            -n "unshare" "$(quote "${UNSHARE[@]}" "$interp" "$EXAMPLES/$script")" \
            -n "bwrap" "$(quote "${BWRAP[@]}" "$interp" "/w/$script")" \
            -n "bkg-warm" "$(quote "$BKG" exe --socket "$WARM_SOCK" "$EXAMPLES/$script")" \
            -n "bkg-pool0" "$(quote "$BKG" exe --socket "$COLD_SOCK" "$EXAMPLES/$script")" >&2
    done
    # How many of the warm agent's runs (warmups included) took a sandbox whose interpreter was
    # started ahead: the others found none ready and prepared their own, which the times mix in.
    # An agent that did not answer either time leaves no count rather than a wrong one.
    prestarted_after=$(status_count "$WARM_SOCK" prestarted_runs)
    if ((prestarted_before >= 0 && prestarted_after >= 0)); then
        printf '%s %s\n' "$warm_runs" "$((prestarted_after - prestarted_before))" >"$RAW/prestarted-$lang.txt"
    fi
}
# spaced LANG INTERPRETER SCRIPT: bare and warm bkg once more, each run 200 ms after the last
# (`--prepare sleep`), as a person's runs come: the pool has refilled between runs and nothing
# else runs beside them. Reported apart from the back-to-back rounds above, which issue 16's
# targets are read from.
spaced() {
    local lang=$1 interp=$2 script=$3
    log "startup, $lang, spaced 200 ms apart: $RUNS runs per command"
    wait_pool "$WARM_SOCK" 2
    "${CLEAN_ENV[@]}" hyperfine -N --style basic --warmup 2 --runs "$RUNS" --prepare "sleep 0.2" \
        --export-json "$RAW/spaced-$lang.json" \
        -n "bare" "$(quote "$interp" "$EXAMPLES/$script")" \
        -n "bkg-warm" "$(quote "$BKG" exe --socket "$WARM_SOCK" "$EXAMPLES/$script")" >&2
}
mark start
startup python "$PYTHON" hello.py
mark startup-python
startup node "$NODE" hello.js
mark startup-node
spaced python "$PYTHON" hello.py
spaced node "$NODE" hello.js
mark startup-spaced

# Agent-side accounting of the same runs (wall_ms measured inside the agent).
for script in hello.py hello.js; do
    wait_pool "$WARM_SOCK" 2
    log "agent-side timing: $JSON_RUNS x bkg exe --json $script"
    for ((i = 0; i < JSON_RUNS; i++)); do
        "$BKG" exe --json "$EXAMPLES/$script"
        echo
    done >"$RAW/bkg-json-${script/./-}.jsonl"
done

# throughput NAME CONCURRENCY TOTAL COMMAND...: run COMMAND TOTAL times split over CONCURRENCY
# parallel workers; append name, concurrency, runs, failures, elapsed ns to throughput.tsv.
throughput() {
    local name=$1 conc=$2 total=$3 per start end fails=0 w f
    shift 3
    per=$((total / conc))
    local pids=()
    start=$(date +%s%N)
    for ((w = 0; w < conc; w++)); do
        # One worker: a bash loop in the clean environment that counts failed runs.
        # shellcheck disable=SC2016 # expanded by the worker's bash
        "${CLEAN_ENV[@]}" bash -c '
            per=$1 err=$2 n=0
            shift 2
            for ((i = 0; i < per; i++)); do
                "$@" >/dev/null 2>>"$err" || n=$((n + 1))
            done
            echo "$n"' worker "$per" "$TMP/tp-$name-$conc-$w.err" "$@" \
            >"$TMP/tp-$name-$conc-$w.fails" &
        pids+=($!)
    done
    wait "${pids[@]}"
    end=$(date +%s%N)
    for ((w = 0; w < conc; w++)); do
        f=$(<"$TMP/tp-$name-$conc-$w.fails")
        fails=$((fails + f))
    done
    if ((fails > 0)); then
        log "throughput $name x$conc: $fails of $((per * conc)) runs failed; first errors:"
        cat "$TMP"/tp-"$name"-"$conc"-*.err | head -n 10 >&2
    fi
    printf '%s\t%d\t%d\t%d\t%d\n' "$name" "$conc" "$((per * conc))" "$fails" "$((end - start))" \
        >>"$RAW/throughput.tsv"
}

# agent_cpu NAME PID: the agent's own CPU time (utime + stime) and that of the children it has
# reaped (cutime + cstime: the sandboxes' inits, which include the code they reaped) plus all of
# its live zygote's (the forks it reaped that entered the sandboxes; a zygote the agent has
# replaced is in the agent's cutime), in clock ticks, appended to agent-cpu.tsv with NAME.
agent_cpu() {
    local fields zygote children
    read -ra fields <"/proc/$2/stat"
    # /proc/PID/stat: (comm) holds no space for bkg-agent, so utime is field 14 (index 13).
    children=$((fields[15] + fields[16]))
    for zygote in $(pgrep -P "$2" -x python3 || true); do
        read -ra fields <"/proc/$zygote/stat" || continue
        children=$((children + fields[13] + fields[14] + fields[15] + fields[16]))
    done
    read -ra fields <"/proc/$2/stat"
    printf '%s\t%s\t%s\t%s\n' "$1" "$((fields[13] + fields[14]))" "$children" \
        "$(getconf CLK_TCK)" >>"$RAW/agent-cpu.tsv"
}

mark agent-side
log "throughput: $TP_TOTAL \`-c pass\` runs per tool and concurrency level"
for conc in "${CONCURRENCY[@]}"; do
    log "  concurrency $conc"
    throughput bare "$conc" "$TP_TOTAL" "$PYTHON" -c pass
    throughput bwrap "$conc" "$TP_TOTAL" "${BWRAP[@]}" "$PYTHON" -c pass
    wait_pool "$WARM_SOCK" 2
    agent_cpu "before bkg-warm $conc" "$WARM_PID"
    throughput bkg-warm "$conc" "$TP_TOTAL" "$BKG" exe --socket "$WARM_SOCK" -t python -c pass
    agent_cpu "after bkg-warm $conc" "$WARM_PID"
    agent_cpu "before bkg-pool0 $conc" "$COLD_PID"
    throughput bkg-pool0 "$conc" "$TP_TOTAL" "$BKG" exe --socket "$COLD_SOCK" -t python -c pass
    agent_cpu "after bkg-pool0 $conc" "$COLD_PID"
done

mark throughput

# Memory again after all that load, once the pool has refilled.
wait_pool "$WARM_SOCK" 2
sleep 1
"$HOSTPY" bench/procmem.py "$WARM_PID" "after load, warm pool 2" >"$RAW/rss-warm-after.json"
"$HOSTPY" bench/procmem.py "$COLD_PID" "after load, warm pool 0" >"$RAW/rss-cold-after.json"

log "stopping agents"
stop_agents
"$HOSTPY" bench/procmem.py --cpu-busy 2 >"$RAW/cpu-busy-end.txt"

"$HOSTPY" bench/summarize.py --raw "$RAW" --out "$RESULTS/latest.json" \
    --markdown "$RESULTS/latest.md" --quick "$QUICK" --runs "$RUNS" --warmup "$WARMUP" --rounds "$ROUNDS" \
    --bkg "$BKG" --python "$PYTHON" --node "$NODE"
cat "$RESULTS/latest.md"
log "wrote $RESULTS/latest.json and $RESULTS/latest.md"
