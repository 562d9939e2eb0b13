//! What an agent owns and how it lets go: two agents on one host, the locks on a cgroup
//! directory and a uid range, broken warm sandboxes, runs closed after a crash or a shutdown, and a CLI whose
//! reader has gone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{
    Agent, AgentOptions, UidRange, bin_dir, cgroup_dirs_named, code, examples_dir, live_children_of, run_cgroups_in,
    stderr,
};

/// One request over the agent's unix socket (root is admin there); the status and the body.
fn socket_request(socket: &Path, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the agent's socket");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let body = body.map(|value| value.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: bkg\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).expect("send the request");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

fn socket_json(agent: &Agent, path: &str) -> serde_json::Value {
    let (status, body) = socket_request(&agent.socket, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("GET {path} is not JSON ({error}): {body}"))
}

/// Polls `check` every 50 ms until it holds, failing after a generous `bound`.
fn wait_until(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_active_runs(agent: &Agent, count: u64) {
    wait_until(&format!("{count} run(s) are active"), Duration::from_secs(30), || {
        agent.status_json()["active_runs"] == count
    });
}

/// A `bkg exe --json` run of `code` that sleeps, started in the background. It asks whether
/// the agent is alive after 2 s of silence (not 10), so within a stop's 5 s grace too: a
/// stopping agent refuses that question, and the run must still get its result (found by a
/// new-user trial: a quiet run's caller gave up and cancelled it).
fn long_run(agent: &Agent, code: &str) -> Child {
    agent
        .bkg()
        .env("BKG_CLIENT_TIMEOUT", "2s")
        .args(["exe", "--json", "--type", "python", "--timeout", "5m", "-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bkg exe")
}

fn hello_runs(agent: &Agent) {
    let output = agent.exe(&[examples_dir().join("hello.py").to_str().unwrap_or_default()]);
    assert_eq!(code(&output), 0, "bkg exe failed: {}\nagent log:\n{}", stderr(&output), agent.log());
}

#[test]
fn two_agents_with_their_own_cgroup_dirs_run_side_by_side() {
    let mut first = Agent::start_with(AgentOptions { warm_pool: 2, ..AgentOptions::default() });
    let second = Agent::start_with(AgentOptions { warm_pool: 2, ..AgentOptions::default() });
    let runners: Vec<_> = [&first, &second]
        .into_iter()
        .map(|agent| {
            let mut commands: Vec<Command> = (0..6)
                .map(|_| {
                    let mut command = agent.bkg();
                    command
                        .args(["exe", "--type", "python", "-c", "print(sum(range(1000)))"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    command
                })
                .collect();
            std::thread::spawn(move || {
                commands.iter_mut().map(|c| c.status().is_ok_and(|s| s.success())).filter(|ok| *ok).count()
            })
        })
        .collect();
    let succeeded: Vec<usize> = runners.into_iter().map(|runner| runner.join().expect("runner")).collect();
    assert_eq!(succeeded, vec![6, 6], "both agents run every run");

    // One agent stopping leaves the other's runs and warm sandboxes alone.
    first.stop();
    assert!(first.leftovers().is_clean(), "{:#?}", first.leftovers());
    hello_runs(&second);
    hello_runs(&second);
}

/// `bkg-agent` on `socket`, `state_dir`, `cgroup_dir` and `uid_base`, without its log.
fn second_agent_command(socket: &Path, state_dir: &Path, cgroup_dir: &str, uid_base: u32) -> Command {
    let mut command = Command::new(bin_dir().join("bkg-agent"));
    command
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--cgroup-dir")
        .arg(cgroup_dir)
        .arg("--uid-base")
        .arg(uid_base.to_string())
        .env("BKG_LOG", "off")
        .stdin(Stdio::null());
    command
}

/// Starts a second agent with a socket of its own, on `state_dir` (else one of its own),
/// `cgroup_dir` and `uid_base`, one of which `first` holds: it must refuse to start, in the foreground and
/// in the background, with one line naming `first` and the flag `fix`. The first then still runs.
fn a_second_agent_is_refused(first: &Agent, state_dir: Option<&Path>, cgroup_dir: &str, uid_base: u32, fix: &str) {
    let other = tempfile::Builder::new().prefix("bkg-e2e-second-").tempdir().expect("temp dir");
    let state_dir = state_dir.map_or_else(|| other.path().join("state"), Path::to_path_buf);
    let socket = other.path().join("agent.sock");
    let second_agent = || second_agent_command(&socket, &state_dir, cgroup_dir, uid_base);
    let mut second = second_agent()
        .arg("--foreground")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second bkg-agent");
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the second agent exits", Duration::from_secs(30), || {
            second.try_wait().expect("wait for the second agent").is_some()
        })
    }));
    if refused.is_err() {
        // An agent that did start must not outlive the test; it is this test's child.
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second agent did not refuse to start");
    }
    let second = second.wait_with_output().expect("the second agent's stderr");
    let message = stderr(&second);
    assert_eq!(code(&second), 1, "the second agent must refuse: {message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("bkg-agent: "), "{message}");
    assert!(message.contains(&format!("pid {}", first.pid())), "names the agent holding it: {message}");
    assert!(message.contains(fix), "names the fix: {message}");
    assert!(!other.path().join("agent.sock").exists(), "the refused agent never served");

    // Started in the background (`bkg agent start`, autostart), it says the same one line.
    let detached = second_agent().output().expect("run a second bkg-agent in the background");
    if code(&detached) == 0 {
        // It started after all: stop it (its pid is what it printed) before failing.
        if let Ok(pid) = String::from_utf8_lossy(&detached.stdout).trim().parse::<i32>() {
            // SAFETY: kill(2) has no memory effects; this agent was started by this test.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        panic!("the second agent started in the background");
    }
    let message = stderr(&detached);
    assert_eq!(code(&detached), 1, "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains(&format!("pid {}", first.pid())) && message.contains(fix), "{message}");

    // The first agent's warm sandboxes and cgroups are intact: its next runs use them.
    for _ in 0..3 {
        hello_runs(first);
    }
    let metrics = socket_request(&first.socket, "GET", "/metrics", None).1;
    assert!(metrics.contains("bkg_warm_sandboxes_replaced_total 0"), "{metrics}");
}

#[test]
fn a_second_agent_on_the_same_cgroup_dir_refuses_with_one_line_and_the_first_keeps_working() {
    let first = Agent::start_with(AgentOptions { warm_pool: 2, ..AgentOptions::default() });
    hello_runs(&first);
    // A uid range of its own: only the cgroup directory is shared.
    let own_uids = UidRange::reserve();
    a_second_agent_is_refused(&first, None, &first.cgroup_dir, own_uids.base, "--cgroup-dir");
}

#[test]
fn a_second_agent_on_an_overlapping_uid_range_refuses_with_one_line_and_the_first_keeps_working() {
    let first = Agent::start_with(AgentOptions { warm_pool: 2, ..AgentOptions::default() });
    hello_runs(&first);
    // Half of the first's range, with a cgroup directory of its own: the sandboxes of the two
    // would share host uids.
    let own_cgroup_dir = format!("{}-second", first.cgroup_dir);
    a_second_agent_is_refused(&first, None, &own_cgroup_dir, first.uid_base + 32_768, "--uid-base");
    assert!(cgroup_dirs_named(&own_cgroup_dir).is_empty(), "the refused agent removed the cgroup directory it made");
}

#[test]
fn a_second_agent_on_the_same_state_dir_refuses_with_one_line_and_the_first_keeps_working() {
    let first = Agent::start_with(AgentOptions { warm_pool: 2, ..AgentOptions::default() });
    hello_runs(&first);
    // Socket, cgroup directory and uids of its own: only the state directory is shared.
    let own_uids = UidRange::reserve();
    let own_cgroup_dir = format!("{}-state", first.cgroup_dir);
    a_second_agent_is_refused(&first, Some(&first.state_dir), &own_cgroup_dir, own_uids.base, "--state-dir");
    assert!(cgroup_dirs_named(&own_cgroup_dir).is_empty(), "the refused agent removed the cgroup directory it made");
}

/// A second agent on the socket another serves (state, cgroups and uids of its own) refuses to
/// start with one line, exit 1, in the foreground and in the background: `bkg-agent` without
/// `--foreground` waits until the agent it started serves, so it cannot report a start that
/// then fails. The first keeps serving.
#[test]
fn a_second_agent_on_a_busy_socket_refuses_in_the_foreground_and_in_the_background() {
    let first = Agent::start();
    let other = tempfile::Builder::new().prefix("bkg-e2e-busy-").tempdir().expect("temp dir");
    let uids = UidRange::reserve();
    let own_cgroup_dir = format!("{}-busy", first.cgroup_dir);
    let state_dir = other.path().join("state");
    let second_agent = || second_agent_command(&first.socket, &state_dir, &own_cgroup_dir, uids.base);
    let expected = format!("bkg-agent: another agent is already listening on {}", first.socket.display());
    for detached in [false, true] {
        let mut command = second_agent();
        if !detached {
            command.arg("--foreground");
        }
        let output = command.output().expect("run a second bkg-agent");
        let message = stderr(&output);
        if code(&output) == 0 {
            if let Ok(pid) = String::from_utf8_lossy(&output.stdout).trim().parse::<i32>() {
                // SAFETY: kill(2) has no memory effects; this agent was started by this test.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            panic!("the second agent started (detached: {detached}): {message}");
        }
        assert_eq!(code(&output), 1, "detached: {detached}: {message}");
        assert_eq!(message.lines().count(), 1, "one line: {message}");
        assert!(message.starts_with(&expected), "detached: {detached}: {message}");
        assert!(message.contains("or give this one a socket of its own with --socket PATH"), "{message}");
        assert!(output.stdout.is_empty(), "no pid is printed for an agent that did not start");
    }
    assert!(cgroup_dirs_named(&own_cgroup_dir).is_empty(), "the refused agent made no cgroup directory");
    hello_runs(&first);
    assert!(first.status_json()["running"] == true);
}

#[test]
fn a_broken_warm_sandbox_is_replaced_not_handed_to_a_run() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 1, ..AgentOptions::default() });
    wait_until("the warm sandbox is ready", Duration::from_secs(30), || agent.status_json()["warm_sandboxes"] == 1);
    // Break it from outside: the idle agent's only sandbox init is the warm sandbox's pid 1 (its
    // other child is the zygote).
    let victims = agent.sandbox_inits();
    assert_eq!(victims.len(), 1, "the warm sandbox's pid 1: {victims:?}");
    for &pid in &victims {
        // SAFETY: kill(2) has no memory effects; these processes belong to this test's agent.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    // SIGKILL lands asynchronously: the sandbox is broken once its pid 1 has ended.
    wait_until("the warm sandbox's pid 1 has ended", Duration::from_secs(30), || {
        live_children_of(agent.pid()).iter().all(|pid| !victims.contains(pid))
    });
    // Not listed as warm while it waits to be replaced (found by a new-user trial).
    let status = agent.status_json();
    assert_eq!(
        (status["warm_sandboxes"].as_u64(), &status["warm_pool"]),
        (Some(0), &serde_json::json!([])),
        "{status}"
    );
    hello_runs(&agent);
    let metrics = socket_request(&agent.socket, "GET", "/metrics", None).1;
    assert!(metrics.contains("bkg_warm_sandboxes_replaced_total 1"), "{metrics}");
}

/// A project whose sandbox `sleeper` sleeps, started detached with `bkgr -d`; returns the
/// project and the run's id.
fn detached_sleeper(agent: &Agent) -> (tempfile::TempDir, String) {
    let project = tempfile::tempdir().expect("project dir");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  sleeper:\n    type: python\n    limits: { timeout: 5m }\n    scripts:\n      start: python -c 'import time; time.sleep(300)'\n",
    )
    .expect("write cave.yaml");
    let detached = Command::new(bin_dir().join("bkgr"))
        .args(["-d", "sleeper"])
        .current_dir(project.path())
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run bkgr -d");
    assert_eq!(code(&detached), 0, "bkgr -d: {}", stderr(&detached));
    let printed = String::from_utf8_lossy(&detached.stdout).into_owned();
    let run_id = printed.trim().strip_prefix("sleeper\t").unwrap_or_else(|| panic!("bkgr -d printed {printed:?}"));
    (project, run_id.to_owned())
}

#[test]
fn a_run_cut_off_by_a_crash_is_closed_as_interrupted_at_the_next_start() {
    let mut agent = Agent::start_with(AgentOptions { warm_pool: 1, ..AgentOptions::default() });
    let (project, _) = detached_sleeper(&agent);
    let temporary = long_run(&agent, "import time\ntime.sleep(300)");
    wait_for_active_runs(&agent, 2);
    let mut open = Vec::new();
    wait_until("both runs are recorded as started", Duration::from_secs(30), || {
        open = socket_json(&agent, "/api/v1/runs?limit=10")
            .as_array()
            .expect("a list of runs")
            .iter()
            .filter(|run| run["finished_at_ms"].is_null())
            .map(|run| run["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        open.len() == 2
    });

    agent.crash();
    let cut = temporary.wait_with_output().expect("bkg exe ends with its agent");
    assert_eq!(cut.status.code(), Some(125));
    // It names its run, to be looked up once the agent is back (found by a new-user trial).
    let said = String::from_utf8_lossy(&cut.stderr).into_owned();
    let named = open.iter().find(|id| said.contains(&format!("before run {id} ended: `bkg runs show {id}`")));
    assert!(named.is_some(), "{said}");
    agent.spawn(&AgentOptions { warm_pool: 0, ..AgentOptions::default() });

    for id in &open {
        let run = socket_json(&agent, &format!("/api/v1/runs/{id}"));
        assert_eq!(run["killed_by"], "interrupted", "{run}");
        assert!(run["finished_at_ms"].is_u64(), "{run}");
        assert_eq!(run["cleaned_up"], true, "the restart removed what the run left: {run}");
    }
    let listed = agent.bkg().args(["ls", "--json"]).current_dir(project.path()).output().expect("bkg ls");
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let sandboxes: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("bkg ls --json");
    assert_eq!(sandboxes[0]["state"], "idle", "{sandboxes}");
    assert_eq!(sandboxes[0]["last_run"]["killed_by"], "interrupted", "{sandboxes}");
    let table = agent.bkg().arg("ls").current_dir(project.path()).output().expect("bkg ls");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(!table.contains("running"), "{table}");
    assert!(table.contains("interrupted"), "{table}");

    // Each closing is in the audit log.
    let tail = agent
        .bkg()
        .args(["audit", "tail", "-n", "100", "--json", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .expect("bkg audit tail");
    let lines = String::from_utf8_lossy(&tail.stdout).into_owned();
    for id in &open {
        assert!(
            lines.lines().any(|line| line.contains("\"action\":\"run.interrupted\"") && line.contains(id.as_str())),
            "no run.interrupted line for {id}:\n{lines}"
        );
    }
}

/// Whether process `pid` ignores SIGTERM (`SigIgn` in its status, a mask with bit N-1 for N).
fn ignores_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ignored = status.lines().find_map(|line| line.strip_prefix("SigIgn:")).map(str::trim);
    ignored
        .and_then(|mask| u64::from_str_radix(mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Waits for the agent's socket file to go: the last thing a stopping agent does.
fn wait_for_exit(agent: &Agent) {
    wait_until("the agent has stopped", Duration::from_secs(60), || !agent.socket.exists());
}

#[test]
fn sigterm_ends_runs_after_the_grace_with_killed_by_shutdown_and_leaves_no_cgroup() {
    let mut agent = Agent::start_with(AgentOptions { warm_pool: 1, ..AgentOptions::default() });
    // It ignores the stop's SIGTERM: only the end of the grace ends it.
    let mut streamed =
        long_run(&agent, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)");
    // A plain (not streamed) HTTP run, answered only when it ends.
    let plain = {
        let socket = agent.socket.clone();
        let body = serde_json::json!({ "language": "python", "code": "import time\ntime.sleep(300)" });
        std::thread::spawn(move || socket_request(&socket, "POST", "/api/v1/runs", Some(&body)))
    };
    // A detached run (`bkgr -d`), whose caller is long gone.
    let (_project, detached_run) = detached_sleeper(&agent);
    wait_for_active_runs(&agent, 3);
    // A run is active from its acceptance: the stop must not come before the script ignores it
    // (it did once, and the run ended by the SIGTERM itself).
    wait_until("the script to ignore SIGTERM", Duration::from_secs(30), || {
        bkg_tests::processes_with_uid_in(agent.uid_base, agent.uid_base + 65_536).into_iter().any(ignores_sigterm)
    });

    // SAFETY: kill(2) has no memory effects; the agent is this test's child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let mut result = String::new();
    streamed.stdout.take().expect("stdout").read_to_string(&mut result).expect("read the result");
    let status = streamed.wait().expect("bkg exe ends");
    let result: serde_json::Value = serde_json::from_str(&result)
        .unwrap_or_else(|error| panic!("no JSON result ({error}): {result}\nagent log:\n{}", agent.log()));
    assert_eq!(result["killed_by"], "shutdown", "{result}");
    assert_eq!(result["signal"], 9, "killed at the end of the grace: {result}");
    assert_eq!(status.code(), Some(143), "bkg exe's exit code for a run ended by a shutdown");

    let (plain_status, plain_body) = plain.join().expect("plain run");
    assert_eq!(plain_status, 200, "{plain_body}");
    let plain_result: serde_json::Value = serde_json::from_str(&plain_body).expect("a run result");
    assert_eq!(plain_result["killed_by"], "shutdown", "{plain_result}");

    wait_for_exit(&agent);
    agent.stop();
    let leftovers = agent.leftovers();
    assert!(leftovers.is_clean(), "left behind: {leftovers:#?}");
    assert!(leftovers.cgroups.is_empty(), "cgroup directories remain: {:?}", leftovers.cgroups);
    for dir in &leftovers.cgroups {
        assert!(run_cgroups_in(dir).is_empty());
    }
    assert!(!agent.log().contains("Device or resource busy"), "{}", agent.log());

    // Every run was closed, its cleanup confirmed, by the shutdown itself: read from the store
    // before any agent starts again (the next start would close what was left open).
    let store = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); print(db.execute('select count(*), sum(finished_at_ms is not null), sum(cleaned_up), sum(killed_by = \"shutdown\") from runs').fetchone())")
        .arg(agent.state_dir.join("state.db"))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&store.stdout).trim(), "(3, 3, 3, 3)", "{}", stderr(&store));
    agent.spawn(&AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let runs = socket_json(&agent, "/api/v1/runs?limit=10");
    let runs = runs.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 3, "{runs:?}");
    for run in runs {
        assert_eq!(run["killed_by"], "shutdown", "{run}");
        assert!(run["finished_at_ms"].is_u64(), "{run}");
    }
    assert!(runs.iter().any(|run| run["id"] == detached_run.as_str()), "{runs:?}");
}

/// A run still waiting for its place when the agent stops ends `killed_by: shutdown` without a
/// sandbox, though the stop frees the place it waited for (found by a new-user trial: it was
/// started after the stop began, and killed 7 ms later).
#[test]
fn a_run_queued_when_the_agent_stops_never_gets_a_sandbox() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() }.with_places(1));
    let mut running = long_run(&agent, "import time\ntime.sleep(300)");
    wait_for_active_runs(&agent, 1);
    let mut queued = long_run(&agent, "print('started')");
    wait_until("the second run to wait for its place", Duration::from_secs(30), || {
        agent.status_json()["queued_runs"] == 1
    });
    let stopped = agent.bkg().args(["agent", "stop"]).output().expect("bkg agent stop");
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let mut result = String::new();
    queued.stdout.take().expect("stdout").read_to_string(&mut result).expect("read the result");
    assert_eq!(queued.wait().expect("bkg exe ends").code(), Some(143));
    let result: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|error| panic!("{error}: {result}"));
    assert_eq!(result["killed_by"], "shutdown", "{result}");
    assert_eq!((result["stdout"].as_str(), result["peak_memory_bytes"].as_u64()), (Some(""), Some(0)), "{result}");
    assert_eq!(running.wait().expect("the first bkg exe ends").code(), Some(143));
}

/// A stopping agent asks each run's script to end (SIGTERM) before its grace is over: a script
/// that handles it ends cleanly, with its own exit code, and its caller is told the agent's stop
/// ended it.
#[test]
fn a_stopping_agent_sends_sigterm_first_so_a_script_can_end_cleanly() {
    let mut agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let handler = "import signal, sys, time\n\
                   def ended(*_):\n    print('got TERM', flush=True)\n    sys.exit(9)\n\
                   signal.signal(signal.SIGTERM, ended)\nprint('ready', flush=True)\ntime.sleep(300)";
    let mut run = agent
        .bkg()
        .args(["exe", "--type", "python", "--timeout", "5m", "-c", handler])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bkg exe");
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("the script's first line");
    assert_eq!(line, "ready\n");
    // SAFETY: kill(2) has no memory effects; the agent is this test's child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest of the output");
    let ended = run.wait_with_output().expect("bkg exe ends");
    assert_eq!(rest, "got TERM\n", "the script's handler ran: {}", stderr(&ended));
    // Its own code, not 143 (found by a new-user trial: 143 and a SIGKILL that never came).
    assert_eq!(code(&ended), 9, "{}", stderr(&ended));
    assert_eq!(stderr(&ended), "bkg: the agent's stop asked the script to end (SIGTERM); it exited with 9\n");
    wait_for_exit(&agent);
    agent.stop();
    agent.spawn(&AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let runs = socket_json(&agent, "/api/v1/runs?limit=1");
    // It ended by itself, with its own code: not killed at the end of the grace.
    assert_eq!((&runs[0]["exit_code"], &runs[0]["signal"]), (&9.into(), &serde_json::Value::Null), "{runs}");
    assert_eq!(runs[0]["killed_by"], "shutdown", "{runs}");
}

/// `bkg ARGS` with its stdout and stderr on a pipe nobody reads: `bkg … 2>&1 | head -0`.
fn bkg_into_a_closed_pipe(agent: &Agent, args: &[&str]) -> Option<i32> {
    let (read, write) = std::io::pipe().expect("pipe");
    drop(read);
    let stdout = write.try_clone().expect("dup");
    agent
        .bkg()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(write))
        .status()
        .expect("run bkg exe")
        .code()
}

#[test]
fn bkg_into_a_closed_pipe_exits_with_its_documented_code() {
    let agent = Agent::start();
    // A closed stderr alone changes nothing for the code: its exit code is bkg's.
    let chatty = "import sys\nfor i in range(2000):\n    print('line', i, file=sys.stderr)\nsys.exit(3)";
    let (read, write) = std::io::pipe().expect("pipe");
    drop(read);
    let mut alone = agent.bkg();
    alone.args(["exe", "--type", "python", "-c", chatty]).stdin(Stdio::null()).stdout(Stdio::null());
    assert_eq!(alone.stderr(Stdio::from(write)).status().expect("bkg exe").code(), Some(3));
    // Closed with stdout, as one pipe (`2>&1 | head -0`), it is the code's stderr too (its
    // stdout's pipe, closed): its next write to stderr fails and it ends as bare python3 does
    // there, with 1, long before its timeout (writing for ever: how far a bounded writer gets
    // before the close reaches it is a race).
    let endless = "import sys\nwhile True:\n    print('x' * 100, file=sys.stderr)";
    let joined = bkg_into_a_closed_pipe(&agent, &["exe", "--type", "python", "--timeout", "1m", "-c", endless]);
    assert_eq!(joined, Some(1));
    // A closed stdout closes the code's: its next print raises BrokenPipeError, and the code
    // ends as it would in `python3 x.py | head -0` (1), long before its timeout (124).
    let endless = "while True:\n    print('x' * 100)";
    assert_eq!(bkg_into_a_closed_pipe(&agent, &["exe", "--type", "python", "--timeout", "1m", "-c", endless]), Some(1));
    // The reason line (`timed out …`) goes to the closed stderr.
    let quiet = "import time\ntime.sleep(30)";
    assert_eq!(bkg_into_a_closed_pipe(&agent, &["exe", "--type", "python", "--timeout", "2s", "-c", quiet]), Some(124));
    // bkg's own one-line error, to the closed stderr.
    assert_eq!(
        bkg_into_a_closed_pipe(&agent, &["exe", Path::new("/nonexistent/x.py").to_str().unwrap_or_default()]),
        Some(127)
    );
    // A command that prints until its reader goes ends quietly with 0.
    let state_dir = agent.state_dir.to_str().unwrap_or_default();
    assert_eq!(bkg_into_a_closed_pipe(&agent, &["audit", "tail", "-n", "100", "--state-dir", state_dir]), Some(0));
    // Found by a new-user trial: `bkg completions bash | head -1` ended with 125.
    assert_eq!(bkg_into_a_closed_pipe(&agent, &["completions", "bash"]), Some(0));
}

#[test]
fn a_sandbox_killed_from_outside_mid_run_is_one_clear_line_not_a_silent_125() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let run = agent
        .bkg()
        .args([
            "exe",
            "--type",
            "python",
            "--timeout",
            "5m",
            "-c",
            "import time\nprint('up', flush=True)\ntime.sleep(300)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bkg exe");
    let mut run = run;
    let mut stdout = run.stdout.take().expect("stdout");
    let mut up = [0u8; 3];
    stdout.read_exact(&mut up).expect("the script has started");
    assert_eq!(&up, b"up\n");
    // The running sandbox's pid 1: the agent's child running the sandbox init.
    let victims = agent.sandbox_inits();
    assert_eq!(victims.len(), 1, "{victims:?}");
    // SAFETY: kill(2) has no memory effects; this process belongs to this test's agent.
    unsafe { libc::kill(victims[0] as i32, libc::SIGKILL) };
    let output = run.wait_with_output().expect("bkg exe ends");
    let message = stderr(&output);
    assert_eq!(code(&output), 125, "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("killed from outside"), "{message}");
}
