//! Limits that hold whatever the client does, disk exhaustion reported as such, bounded queues
//! and disk, and a health check that reflects real runs (issue 11, items 1, 4, 6 and 8).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::http::{Answer, unix_request};
use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};
use serde_json::{Value, json};

/// Polls `check` until it gives a value; panics after `bound` with `what`.
fn wait_for<T>(what: &str, bound: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn api(agent: &Agent, method: &str, path: &str, body: Option<&Value>) -> Answer {
    unix_request(&agent.socket, method, path, body)
}

/// The newest run the agent recorded, once it has finished.
fn finished_run(agent: &Agent) -> Option<Value> {
    let runs = api(agent, "GET", "/api/v1/runs?limit=1", None).json();
    runs.get(0).filter(|run| !run["finished_at_ms"].is_null()).cloned()
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_flooding_run_ends_at_its_timeout_while_its_client_stops_reading() {
    // No warm pool: once idle, nothing of the run may be left.
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    // bkg's stdout is a pipe nobody reads: bkg blocks on it and stops reading the agent.
    let client = agent
        .bkg()
        .args(["exe", "--timeout", "2s", "--type", "python", "-c", "while True: print('x' * 4096)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bkg exe");
    let run = wait_for("the run to end at its timeout", Duration::from_secs(25), || finished_run(&agent));
    let mut client = client;
    assert!(client.try_wait().ok().flatten().is_none(), "the client must still be stuck, not reading: {run}");
    assert_eq!(run["killed_by"], "timeout", "{run}");
    assert_eq!(agent.status_json()["active_runs"], 0);
    kill(client);
    agent.wait_idle();
    assert!(agent.leftovers().is_clean(), "{:?}", agent.leftovers());
}

/// A reader that takes nothing for a while after the run has ended still gets all of the output:
/// the agent drops what waits for it after 2 s, and bkg writes that end from the result (up to
/// 1 MiB, which the result holds as text) or from the run's kept copy of the stream (past 1 MiB,
/// or whenever the result's text is not exact).
#[test]
fn a_reader_that_pauses_after_the_run_still_gets_the_whole_output() {
    let agent = Agent::start();
    // Long; short; short and not UTF-8 (the result's text of it is not exact).
    for (runs, size, fill) in [(1, 5 * 1024 * 1024, "y"), (2, 512 * 1024, "y"), (3, 512 * 1024, "\\xff")] {
        let script = format!("import sys\nsys.stdout.buffer.write(b'{fill}' * ({size} - 3) + b'end')\n");
        let mut client = agent
            .bkg()
            .args(["exe", "--type", "python", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bkg exe");
        // bkg blocks on its stdout meanwhile and stops reading the agent, which ends the run.
        wait_for("the run to end", Duration::from_secs(25), || (finished_runs(&agent) == runs).then_some(()));
        std::thread::sleep(Duration::from_secs(3));
        let mut stdout = Vec::new();
        std::io::Read::read_to_end(&mut client.stdout.take().expect("stdout"), &mut stdout).expect("read stdout");
        let output = client.wait_with_output().expect("bkg exits");
        assert_eq!(stdout.len(), size, "{}", stderr(&output));
        assert!(stdout.ends_with(b"end"));
        assert_eq!(stdout[0], if fill == "y" { b'y' } else { 0xff });
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        // All of it arrived, so nothing is said: not what did not arrive, nor that the agent
        // kept a copy of the stream (it does past 1 MiB).
        assert_eq!(stderr(&output), "");
    }
}

/// A reader that takes nothing for longer than the agent's 30 s of patience while the run goes
/// on (`bkg exe job.py | less`, read later) makes the code wait on its writes, as a paused
/// terminal does, and then gets every byte, with the run's own exit code (found by a new-user
/// trial: the agent closed the connection after 30 s, the rest was lost, and bkg exited 125).
#[test]
fn a_reader_that_pauses_longer_than_the_agent_s_patience_during_the_run_gets_every_byte() {
    let agent = Agent::start();
    // Far more than the pipes and buffers on the way hold (the run's own pipe holds 1 MiB).
    let script = "for i in range(1000000): print(i)\nprint('end')\n";
    let expected: String = (0..1_000_000).map(|i| format!("{i}\n")).chain(["end\n".to_owned()]).collect();
    let mut client = agent.spawn_exe(&["--type", "python", "-c", script]);
    // Nothing read for longer than the 30 s after which a caller that takes nothing of a run that
    // has ended is let go (server/runs.rs, STREAM_WRITE_TIMEOUT); the run has not ended meanwhile.
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(finished_runs(&agent), 0, "the run ended though its output was not taken");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut client.stdout.take().expect("stdout"), &mut stdout).expect("read stdout");
    let output = client.wait_with_output().expect("bkg exits");
    assert_eq!((code(&output), stderr(&output).as_str()), (0, ""));
    assert!(stdout == expected.as_bytes(), "{} bytes of {}", stdout.len(), expected.len());
}

/// Once bkg's stdout's reader has gone (`| head -1`), the code's next write fails as it would in
/// the pipeline bare, though bkg itself writes nothing more (found by a new-user trial: the
/// script wrote once more, was not told, and exited 0).
#[test]
fn the_code_s_next_write_after_our_reader_went_fails_as_bare() {
    use std::io::BufRead;
    let agent = Agent::start();
    let script = "import sys, time\nprint('a', flush=True)\ntime.sleep(2)\nprint('b', flush=True)\n\
                  print('not reached', file=sys.stderr)\n";
    let mut client = agent.spawn_exe(&["--type", "python", "-c", script]);
    let mut first = String::new();
    std::io::BufReader::new(client.stdout.take().expect("stdout")).read_line(&mut first).expect("the first line");
    assert_eq!(first, "a\n");
    // The reader is dropped with the BufReader: the pipe's reading end is closed now.
    let output = client.wait_with_output().expect("bkg exits");
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("BrokenPipeError"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("not reached"), "{}", stderr(&output));
}

/// How many runs the agent has recorded as finished.
fn finished_runs(agent: &Agent) -> usize {
    let runs = api(agent, "GET", "/api/v1/runs?limit=50", None).json();
    runs.as_array().map_or(0, |runs| runs.iter().filter(|run| !run["finished_at_ms"].is_null()).count())
}

#[test]
fn a_script_that_dies_of_a_full_disk_reports_killed_by_disk_with_its_own_exit_code() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&[
        "--type",
        "python",
        "-c",
        "with open('/workspace/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * 1048576)",
    ]);
    assert_eq!(result["killed_by"], "disk", "{result}");
    assert_eq!(result["exit_code"], 1, "{result}");
    assert_eq!(code(&output), 1);
    // The run list says both (found by a new-user trial: it said `disk` alone).
    let listed = agent.bkg().args(["runs", "ls"]).output().expect("bkg runs ls");
    assert!(stdout(&listed).contains(" disk, exit 1 "), "{}", stdout(&listed));
}

#[test]
fn running_out_of_inodes_is_killed_by_disk_and_comes_after_100000_files() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&[
        "--type",
        "python",
        "-c",
        "import sys\nn = 0\ntry:\n    while True:\n        open(f'/workspace/f{n}', 'w').close()\n        n += 1\n\
         finally:\n    print(n)\n",
    ]);
    assert_eq!(result["killed_by"], "disk", "{result}");
    assert_eq!(code(&output), 1);
    let files: u64 = result["stdout"].as_str().and_then(|text| text.trim().parse().ok()).unwrap_or(0);
    assert!(files >= 100_000, "only {files} files fit in 500 MiB: {result}");
}

#[test]
fn a_hundred_thousand_small_files_fit_in_500mib() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&[
        "--type",
        "python",
        "-c",
        "import os\nfor d in range(100):\n    os.mkdir(f'/workspace/d{d}')\n    for n in range(1000):\n\
         \x20       with open(f'/workspace/d{d}/f{n}', 'w') as f:\n            f.write('x')\nprint('ok')\n",
    ]);
    assert_eq!(code(&output), 0, "{result}");
    assert_eq!(result["stdout"], "ok\n");
}

#[test]
fn runs_over_the_queue_bound_are_refused_at_once_with_retry_after() {
    let agent = Agent::start_with(AgentOptions {
        warm_pool: 0,
        extra_args: ["--max-running-runs", "1", "--max-queued-runs", "2"].map(String::from).to_vec(),
        ..AgentOptions::default()
    });
    let sleeper = || {
        agent
            .bkg()
            .args(["exe", "--type", "python", "-c", "import time; time.sleep(600)"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bkg exe")
    };
    let running = sleeper();
    wait_for("the first run", Duration::from_secs(30), || (agent.status_json()["active_runs"] == 1).then_some(()));
    // Each caller is told, within a second or so, why nothing happens; with --json too (its
    // stdout is the result's, its stderr still people's).
    let mut queued = Vec::new();
    for (waiting, json) in [(1, false), (2, true)] {
        let mut args = vec!["exe", "--type", "python", "-c", "print(1)"];
        if json {
            args.push("--json");
        }
        let mut child = agent
            .bkg()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bkg exe");
        wait_for("the run to queue", Duration::from_secs(30), || {
            (agent.status_json()["queued_runs"] == waiting).then_some(())
        });
        let queued_stderr = child.stderr.take().expect("stderr");
        let (told, notice) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(queued_stderr), &mut line);
            let _ = told.send(line);
        });
        let notice = notice.recv_timeout(Duration::from_secs(30)).expect("a line on the queued run's stderr");
        let wait = if waiting == 1 { "waits" } else { "wait" };
        let expected = format!(
            "bkg: waiting for a place: this agent runs 1 at once (--max-running-runs) and {waiting} {wait} for one\n"
        );
        assert_eq!(notice, expected, "--json: {json}");
        queued.push(child);
    }
    // A run waiting for a place is not counted as going on.
    let status = agent.status_json();
    assert_eq!((&status["active_runs"], &status["queued_runs"]), (&json!(1), &json!(2)), "{status}");
    // Listed as queued, not as running (found by a new-user trial: all three said running).
    let runs = api(&agent, "GET", "/api/v1/runs?limit=10", None).json();
    let flags: Vec<bool> = runs.as_array().expect("runs").iter().map(|run| run["queued"] == true).collect();
    assert_eq!(flags, [true, true, false], "newest first: {runs}");
    let table = stdout(&agent.bkg().args(["runs", "ls"]).output().expect("bkg runs ls"));
    assert_eq!((table.matches(" queued ").count(), table.matches(" running ").count()), (2, 1), "{table}");

    // Every place taken and the queue full, no run has succeeded yet: /healthz runs its probe
    // beside the queue and answers (was: refused as the queue was full, or, with room in it,
    // waited for a place as long as the runs held them; found by a new-user trial).
    let health = api(&agent, "GET", "/healthz", None);
    assert_eq!((health.status, health.json()["status"].clone()), (200, json!("ok")), "{}", health.text());
    let refused = api(&agent, "POST", "/api/v1/runs", Some(&json!({ "language": "python", "code": "print(1)" })));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.error_code(), "unavailable");
    assert!(refused.header("retry-after").is_some_and(|seconds| seconds.parse::<u32>().is_ok()), "{refused:?}");
    let output = agent.exe(&["--type", "python", "-c", "print(1)"]);
    let err = stderr(&output);
    assert_eq!(code(&output), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--max-queued-runs"), "{err}");

    // A caller that gives up while queued leaves the queue at once, while the first still runs.
    queued.into_iter().for_each(kill);
    wait_for("the queued run to leave", Duration::from_secs(30), || {
        (agent.status_json()["queued_runs"] == 0).then_some(())
    });
    assert_eq!(agent.status_json()["active_runs"], 1);
    // Its record is closed just after it leaves.
    wait_for("the queued run to be recorded as cancelled", Duration::from_secs(30), || {
        let runs = api(&agent, "GET", "/api/v1/runs?limit=10", None).json();
        let cancelled =
            runs.as_array().map_or(0, |runs| runs.iter().filter(|run| run["killed_by"] == "cancelled").count());
        (cancelled == 2).then_some(())
    });
    kill(running);
    agent.wait_idle();
    let (result, _) = agent.exe_json(&["--type", "python", "-c", "print('after')"]);
    assert_eq!(result["stdout"], "after\n");
}

#[test]
fn a_disk_beyond_the_budget_refuses_a_run_with_one_line() {
    let agent = Agent::start_with(AgentOptions {
        warm_pool: 0,
        extra_args: ["--disk-budget", "100MiB"].map(String::from).to_vec(),
        ..AgentOptions::default()
    });
    let output = agent.exe(&["--disk", "200MiB", "--type", "python", "-c", "print(1)"]);
    let err = stderr(&output);
    assert_eq!(code(&output), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("100MiB (the agent's whole disk budget: --disk-budget)"), "{err}");
    let (result, output) = agent.exe_json(&["--disk", "64MiB", "--type", "python", "-c", "print('fits')"]);
    assert_eq!(code(&output), 0, "{result}");
    assert_eq!(result["stdout"], "fits\n");
    // A run that asked for no disk is told the default was too much (found by a new-user trial).
    let plain = agent.exe(&["--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&plain), 125, "{}", stderr(&plain));
    assert!(stderr(&plain).starts_with("bkg: disk 500MiB (the default) is above"), "{}", stderr(&plain));
}

/// Two agents whose state directories share a filesystem: the sandboxes of one take their
/// disk's blocks from the other's default budget (a share of the free space read at each
/// sandbox), so together they cannot give away the whole disk; each counts its own as its own.
#[test]
fn a_second_agent_on_the_same_filesystem_shrinks_the_default_disk_budget() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let options = || AgentOptions { warm_pool: 0, ..AgentOptions::default() };
    let (holder, other) = (Agent::start_with(options()), Agent::start_with(options()));
    let budget = |agent: &Agent| agent.status_json()["disk_budget_bytes"].as_u64().expect("disk_budget_bytes");
    let (holder_before, other_before) = (budget(&holder), budget(&other));
    assert!(other_before > 12 * GIB, "this test needs 15 GiB free: the budget is {other_before} bytes");
    let run = holder.start_long_run_with(&["--disk", "8GiB"]);
    // 80% of the 8 GiB reserved; other tests' sandboxes come and go meanwhile (500 MiB each).
    let shrunk = other_before.saturating_sub(budget(&other));
    let held = holder_before.abs_diff(budget(&holder));
    kill(run);
    assert!((4 * GIB..=9 * GIB).contains(&shrunk), "the other agent's budget shrank by {shrunk} bytes");
    assert!(held < 3 * GIB, "the holder's own budget moved by {held} bytes");
}

#[test]
fn health_is_503_with_the_reason_once_runs_fail() {
    let agent = Agent::start_with(AgentOptions {
        warm_pool: 0,
        extra_args: ["--health-interval", "1s", "--zygote", "false"].map(String::from).to_vec(),
        ..AgentOptions::default()
    });
    let healthy = api(&agent, "GET", "/healthz", None);
    assert_eq!(healthy.status, 200, "{}", healthy.text());
    // A hard limit on open files below what every sandbox sets makes every run fail, while
    // sandboxes are still prepared without trouble. (Not a zygote's fork: it was started before
    // the limit was lowered, and sets the limits of the code from its own.)
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &agent.pid().to_string(), "--nofile=1024:2048"])
        .status()
        .expect("prlimit");
    assert!(lowered.success());
    let sick = wait_for("/healthz to notice", Duration::from_secs(60), || {
        let answer = api(&agent, "GET", "/healthz", None);
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(sick.error_code(), "unavailable");
    let message = sick.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.starts_with("runs fail: ") && message.contains("open files"), "{message}");
}

/// A run that prints nothing for many times the client's patience still ends with its own
/// result: each liveness check the client makes while it waits is answered, however the agent's
/// idle-connection timeout (here as short as the client's patience) falls against it.
#[test]
fn a_silent_run_outlasts_many_liveness_checks_and_ends_with_its_result() {
    let options = AgentOptions { extra_args: vec!["--header-timeout".into(), "1s".into()], ..Default::default() };
    let agent = Agent::start_with(options);
    let output = agent
        .bkg()
        .env("BKG_CLIENT_TIMEOUT", "1s")
        .args(["exe", "--type", "python", "-c", "import time; time.sleep(12); print('done')"])
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "done\n");
}

/// An agent that takes connections and answers nothing (its process stopped): `bkg agent status`
/// and `bkg doctor` say so once, and `bkg agent stop` asks nothing of it, so that no stop waits
/// in its socket to happen when it wakes (found by a new-user trial: the stop queued there
/// stopped the agent on SIGCONT, after the command had failed; doctor told root to log in).
#[test]
fn a_silent_agent_is_named_as_such_and_not_stopped_behind_the_callers_back() {
    let agent = Agent::start();
    let pid = agent.pid() as i32;
    // SAFETY: kill(2) has no memory effects; the agent is this test's child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP the agent");
    let silent = |args: &[&str]| agent.bkg().args(args).env("BKG_CLIENT_TIMEOUT", "1s").output().expect("bkg");
    let status = silent(&["agent", "status"]);
    let stop = silent(&["agent", "stop"]);
    let doctor = silent(&["doctor"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT the agent");

    assert_eq!(code(&status), 125, "{}", stderr(&status));
    assert!(stderr(&status).contains("does not answer (nothing within 1 s"), "{}", stderr(&status));
    assert_eq!(code(&stop), 125, "{}", stderr(&stop));
    assert!(stderr(&stop).contains("so it was not asked to stop"), "{}", stderr(&stop));
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(doctor.contains("the agent's process may be stopped"), "{doctor}");
    assert!(!doctor.contains("bkg login"), "{doctor}");

    // Awake again, it serves: nothing had asked it to stop.
    let awake = agent.bkg().args(["agent", "status"]).output().expect("bkg agent status");
    assert_eq!(code(&awake), 0, "{}", stderr(&awake));
    let ran = agent.bkg().args(["exe", "--type", "python", "-c", "print(6 * 7)"]).output().expect("bkg exe");
    assert_eq!((code(&ran), String::from_utf8_lossy(&ran.stdout).into_owned()), (0, "42\n".to_owned()));
}

/// Found by a new-user trial: with its socket file deleted, the agent ran on unreachable (`bkg
/// agent status` said none runs, and one started beside it was refused for the state it
/// holds). It makes the file again; and a socket another agent bound at the path meanwhile is
/// left to that agent, also when this one stops.
#[test]
fn a_deleted_socket_file_is_made_again_and_another_agent_s_is_left_alone() {
    let mut agent = Agent::start();
    std::fs::remove_file(&agent.socket).expect("delete the socket file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.socket.exists() {
        assert!(Instant::now() < deadline, "the socket file was not made again:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let ran = agent.bkg().args(["exe", "--type", "python", "-c", "print(6 * 7)"]).output().expect("bkg exe");
    assert_eq!((code(&ran), String::from_utf8_lossy(&ran.stdout).into_owned()), (0, "42\n".to_owned()));
    assert!(agent.log().contains("the socket file was deleted: made it again"), "{}", agent.log());

    // Another agent binds the path while this one cannot make its file again: it is left to it.
    let pid = agent.pid() as i32;
    // SAFETY: kill(2) has no memory effects; the agent is this test's child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP the agent");
    std::fs::remove_file(&agent.socket).expect("delete the socket file");
    let mut other = Agent::unstarted();
    other.socket = agent.socket.clone();
    other.spawn(&AgentOptions::default());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("the socket file was replaced by another") {
        assert!(Instant::now() < deadline, "the agent did not see its socket taken:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.stop();
    assert!(agent.socket.exists(), "the agent that stopped took the other's socket file with it");
    let status = agent.bkg().args(["agent", "status", "--json"]).output().expect("bkg agent status");
    assert_eq!(code(&status), 0, "the other agent answers on the path: {}{}", stderr(&status), stdout(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("agent status --json");
    assert_eq!(status["pid"], other.pid(), "{status}");
}

/// Found by a new-user trial: once the reader of the agent's stderr went away (`| head -1`, a
/// `tee` killed), its next log line made it panic (exit 101), ending its runs and leaving its
/// cgroups. It goes on serving, and stops cleanly.
#[test]
fn the_agent_outlives_the_reader_of_its_log() {
    let closed_stderr = "exec 2> >(head -c 1 > /dev/null); exec \"$0\" \"$@\"";
    let options = AgentOptions {
        wrapper: vec!["bash".to_owned(), "-c".to_owned(), closed_stderr.to_owned()],
        ..AgentOptions::default()
    };
    let mut agent = Agent::start_with(options);
    for _ in 0..3 {
        let ran = agent.bkg().args(["exe", "--type", "python", "-c", "print(6 * 7)"]).output().expect("bkg exe");
        assert_eq!((code(&ran), stdout(&ran)), (0, "42\n".to_owned()), "{}", stderr(&ran));
    }
    let stop = agent.bkg().args(["agent", "stop"]).output().expect("bkg agent stop");
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    assert_eq!(agent.wait_for_exit().code(), Some(0));
}

/// A file left in the sandboxes' directory (the health check's probe, which a full disk or a
/// crash can leave) is cleared at the next start like a directory is: it kept every later agent
/// from starting, `Not a directory` (found by a new-user trial).
#[test]
fn a_file_left_among_the_sandboxes_does_not_keep_the_next_agent_from_starting() {
    let mut agent = Agent::start();
    agent.stop();
    let probe = agent.state_dir.join("sandboxes/.healthz-99999");
    std::fs::write(&probe, b"").expect("a probe left behind");
    agent.spawn(&AgentOptions::default());
    let ran = agent.exe(&["--type", "python", "-c", "print(1)"]);
    assert_eq!((code(&ran), stdout(&ran).as_str()), (0, "1\n"), "{}", agent.log());
    assert!(!probe.exists());
}
