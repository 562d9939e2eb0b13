//! Ctrl-C (and SIGTERM, SIGHUP) on `bkg exe` and `bkgr`, and the agent that `bkg exe` starts
//! by itself.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{Agent, UidRange, bin_dir, bkg_bin, cgroup_dirs_named, code, stderr, stdout};

fn interrupt(child: &Child) {
    // SAFETY: kill(2) on a child this test spawned; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

#[test]
fn ctrl_c_cancels_a_run_with_130_and_leaves_no_sandbox() {
    let agent = Agent::start();
    let child = agent.start_long_run();
    interrupt(&child);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(code(&output), 130, "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1, "one line: {}", stderr(&output));
    agent.wait_idle();

    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    assert!(runs.status.success(), "{}", stderr(&runs));
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    assert_eq!(runs[0]["killed_by"], "cancelled", "{runs}");
}

/// Code that ignores SIGTERM keeps Ctrl-C waiting for the grace (bkg_schema::STOP_GRACE) before
/// SIGKILL: bkg says so once the run has not ended soon, rather than seem to hang.
#[test]
fn ctrl_c_on_code_that_ignores_sigterm_says_it_waits_for_the_grace() {
    let agent = Agent::start();
    let script =
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)";
    let mut child = agent
        .bkg()
        .args(["exe", "--type", "python", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bkg exe");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut first).expect("read the run's output");
    assert_eq!(first, "up\n");
    interrupt(&child);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(code(&output), 130, "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "bkg: cancelling the run: its code has SIGTERM, and SIGKILL if still going 5 s after it (Ctrl-C again to stop waiting)\nbkg: cancelled\n"
    );
    agent.wait_idle();
}

/// Stdin the code never reads (`yes | bkg exe job.py`) fills every buffer on its way to the
/// code, and the run stream's cancel frame waits behind it: Ctrl-C still ends the run, as bkg
/// also asks the agent on a call of its own (`POST /api/v1/runs/{id}/cancel`).
#[test]
fn ctrl_c_cancels_a_run_whose_stdin_the_code_does_not_read() {
    let agent = Agent::start();
    let mut child = agent
        .bkg()
        .args([
            "exe",
            "--timeout",
            "60s",
            "--type",
            "python",
            "-c",
            "import time\nprint('up', flush=True)\ntime.sleep(60)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bkg exe");
    let mut stdin = child.stdin.take().expect("stdin");
    let (fed, taken) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let chunk = vec![b'y'; 64 * 1024];
        while std::io::Write::write_all(&mut stdin, &chunk).is_ok() && fed.send(()).is_ok() {}
    });
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut first).expect("read the run's output");
    assert_eq!(first, "up\n");
    // Backed up: no more stdin has gone in for a second (the code reads none of it).
    while taken.recv_timeout(Duration::from_secs(1)).is_ok() {}
    interrupt(&child);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(code(&output), 130, "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "bkg: cancelled\n");
    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    assert_eq!(runs[0]["killed_by"], "cancelled", "{runs}");
    agent.wait_idle();
}

/// A second Ctrl-C to `child`, which must end at once (within 20 s), and its output.
fn second_ctrl_c(mut child: Child) -> std::process::Output {
    interrupt(&child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "bkg did not end on a second Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("wait")
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a process this test spawned; no memory is involved.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// What `timeout`, a service manager or a closed terminal sends is a Ctrl-C too: the run is
/// cancelled and recorded so, and bkg exits as the signal's convention says.
#[test]
fn sigterm_and_sighup_cancel_a_run_like_ctrl_c_with_128_plus_the_signal() {
    let agent = Agent::start();
    for (sent, exit) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let child = agent.start_long_run();
        signal(&child, sent);
        let output = child.wait_with_output().expect("wait");
        assert_eq!(code(&output), exit, "stderr: {}", stderr(&output));
        assert_eq!(stderr(&output), "bkg: cancelled\n");
        agent.wait_idle();
        let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
        let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
        assert_eq!(runs[0]["killed_by"], "cancelled", "{runs}");
    }
}

/// GNU `timeout` sends its signal twice: to bkg, then to its own process group, bkg in it. That
/// is one stop, not a second one that ends bkg without waiting (found by a new-user trial: two
/// tries of five quit at once, and the run went on without a client).
#[test]
fn the_signal_timeout_sends_twice_is_one_stop_and_bkg_waits_for_the_run() {
    let agent = Agent::start();
    let code_that_ends_late = "import signal, time\n\
        signal.signal(signal.SIGTERM, lambda *_: print('asked to end', flush=True))\n\
        print('started', flush=True)\ntime.sleep(1.5)\nprint('ended')\n";
    for attempt in 0..8 {
        let output = Command::new("timeout")
            .env("BKG_SOCKET", &agent.socket)
            .env("BKG_NO_AUTOSTART", "1")
            .args(["--preserve-status", "-s", "TERM", "0.7"])
            .arg(bkg_bin())
            .args(["exe", "--type", "python", "-c", code_that_ends_late])
            .output()
            .expect("timeout bkg exe");
        assert_eq!(
            (code(&output), stdout(&output).as_str(), stderr(&output).as_str()),
            (143, "started\nasked to end\nended\n", "bkg: cancelled\n"),
            "attempt {attempt}"
        );
    }
    agent.wait_idle();
}

/// Found by a new-user trial: a SIGTERM in the first few tens of milliseconds of a run was lost
/// (no code to signal yet, or only the interpreter started ahead, which died of it and was
/// replaced by a fresh one), so the script ran to its end and its record said both exit 0 and
/// cancelled. However early it comes, the code does not finish.
#[test]
fn a_cancel_as_the_run_starts_ends_the_code() {
    let agent = Agent::start();
    for delay_ms in (0..=60).step_by(2) {
        let child = agent
            .bkg()
            .args(["exe", "--type", "python", "-c", "import time; time.sleep(3); print('finished')"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bkg exe");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        signal(&child, libc::SIGTERM);
        let output = child.wait_with_output().expect("wait");
        // So early, bkg itself may not handle SIGTERM yet and die of it: the run, if it began,
        // is cancelled as its client hangs up.
        let died = std::os::unix::process::ExitStatusExt::signal(&output.status) == Some(libc::SIGTERM);
        assert!(code(&output) == 143 || died, "after {delay_ms} ms: {:?} {}", output.status, stderr(&output));
        assert_eq!(stdout(&output), "", "after {delay_ms} ms");
        agent.wait_idle();
        let runs = agent.bkg().args(["runs", "ls", "--json", "-n", "1"]).output().expect("bkg runs ls");
        let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
        // A run cancelled before it left the queue has no record of its own.
        if let Some(run) = runs.as_array().and_then(|runs| runs.first()) {
            assert_eq!(run["exit_code"], serde_json::Value::Null, "after {delay_ms} ms: {run}");
        }
    }
}

/// Ctrl-C waits for the agent to end the run and say so; a second one does not wait (here the
/// agent is stopped and cannot answer).
#[test]
fn a_second_ctrl_c_ends_bkg_without_waiting_for_the_run() {
    let agent = Agent::start();
    let mut child = agent.start_long_run();
    let agent_pid = agent.pid() as i32;
    struct Continue(i32);
    impl Drop for Continue {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the test's own agent; no memory is involved.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(agent_pid, libc::SIGSTOP) };
    let _continue = Continue(agent_pid);
    interrupt(&child);
    // Apart, so that they are two signals, not one delivered twice.
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().expect("try_wait").is_none(), "bkg waits for the run's end after one Ctrl-C");
    let output = second_ctrl_c(child);
    assert_eq!(code(&output), 130);
    assert_eq!(stderr(&output), "bkg: stopped without waiting for the run's end\n");
    drop(_continue);
    agent.wait_idle();
}

/// A reader that takes nothing (`bkg exe job.py | less`) does not stop Ctrl-C: the run is
/// cancelled while bkg waits for its output to be read, and a second Ctrl-C ends bkg.
#[test]
fn ctrl_c_cancels_a_run_whose_output_nobody_reads() {
    cancelled_with_its_output_unread(true);
}

/// The same, with the Ctrl-C before the output has filled the reader: bkg says so once it has
/// (was: only if it had at the Ctrl-C, so a loaded machine made bkg wait silently).
#[test]
fn ctrl_c_before_the_output_fills_its_reader_says_so_once_it_has() {
    cancelled_with_its_output_unread(false);
}

fn cancelled_with_its_output_unread(filled_first: bool) {
    let agent = Agent::start();
    let mut command = agent.bkg();
    // Code that goes on writing through the cancel's grace (it ignores SIGTERM): whenever the
    // Ctrl-C comes, output enough to fill the reader follows.
    let ignore_sigterm =
        if filled_first { "" } else { "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" };
    command
        .args(["exe", "--timeout", "60s", "--type", "python", "-c"])
        .arg(format!("import sys\n{ignore_sigterm}print('up', flush=True)\nwhile True: sys.stdout.write('x' * 65536)"));
    let (mut child, unread) = match filled_first {
        true => bkg_tests::spawn_with_stdout_unread(command, "up\n"),
        false => {
            let mut child =
                command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("bkg");
            let mut unread = BufReader::new(child.stdout.take().expect("stdout"));
            let mut first = String::new();
            unread.read_line(&mut first).expect("its first line");
            assert_eq!(first, "up\n");
            (child, unread)
        }
    };
    interrupt(&child);
    // Recorded once the agent has given up on the output nobody took (2 s after the run ended).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
        let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
        if !runs[0]["finished_at_ms"].is_null() {
            assert_eq!(runs[0]["killed_by"], "cancelled", "{runs}");
            break;
        }
        assert!(Instant::now() < deadline, "the run was not cancelled: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().expect("try_wait").is_none(), "bkg still holds output nobody has read");
    let output = second_ctrl_c(child);
    assert_eq!(code(&output), 130, "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "bkg: cancelling the run; its output waits for a reader that takes none (Ctrl-C again to quit without it)\n\
         bkg: stopped with the run's output unwritten: `bkg runs ls` shows how the run ended\n"
    );
    drop(unread);
    agent.wait_idle();
}

/// Ctrl-C once the run has ended, its output still waiting for a reader that takes none: there
/// is nothing to cancel, and bkg says so rather than that it cancels the run (found by a
/// new-user trial); a second Ctrl-C ends bkg.
#[test]
fn ctrl_c_after_the_run_ended_with_its_output_unread_says_it_has_ended() {
    let agent = Agent::start();
    let mut command = agent.bkg();
    command
        .args(["exe", "--type", "python", "-c"])
        .arg("import sys\nprint('up', flush=True)\nsys.stdout.write('x' * 3_000_000)");
    let (mut child, unread) = bkg_tests::spawn_with_stdout_unread(command, "up\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
        let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
        if !runs[0]["finished_at_ms"].is_null() {
            assert_eq!(runs[0]["exit_code"], 0, "{runs}");
            break;
        }
        assert!(Instant::now() < deadline, "the run did not end: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt(&child);
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().expect("stderr")).read_line(&mut line).expect("bkg's note");
    assert_eq!(
        line,
        "bkg: the run has ended; its output waits for a reader that takes none (Ctrl-C again to quit without it)\n"
    );
    let output = second_ctrl_c(child);
    assert_eq!(code(&output), 130, "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "bkg: stopped with the run's output unwritten: `bkg runs ls` shows how the run ended\n"
    );
    drop(unread);
    agent.wait_idle();
}

/// `bkgr ARGS` in the project at `dir`, its output piped.
fn spawn_bkgr(agent: &Agent, dir: &Path, args: &[&str]) -> Child {
    Command::new(bin_dir().join("bkgr"))
        .args(args)
        .current_dir(dir)
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bkgr")
}

/// `bkgr NAME` stopped by SIGTERM names it as what stopped the sandbox's run.
#[test]
fn sigterm_on_bkgr_is_named_as_what_stopped_the_run() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  one:\n    type: python\n    scripts:\n      start: python -c \"import time; print('up', flush=True); time.sleep(60)\"\n",
    )
    .expect("cave.yaml");
    let mut bkgr = spawn_bkgr(&agent, project.path(), &["one"]);
    let mut line = String::new();
    BufReader::new(bkgr.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line, "up\n");
    signal(&bkgr, libc::SIGTERM);
    let output = bkgr.wait_with_output().expect("wait bkgr");
    assert_eq!(code(&output), 143, "{}", stderr(&output));
    // The script's shell says its command was ended by SIGTERM (the run is asked to end, engine/run.rs).
    assert_eq!(stderr(&output), "Terminated\nbkgr: one: stopped (SIGTERM, or `bkg stop` or `bkg rm` of the sandbox)\n");
}

#[test]
fn ctrl_c_on_bkgr_stops_every_sandbox_of_the_project() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  one:\n    type: python\n    scripts:\n      start: python -c \"import time; print('one up', flush=True); time.sleep(60)\"\n  two:\n    type: python\n    scripts:\n      start: python -c \"import time; print('two up', flush=True); time.sleep(60)\"\n",
    )
    .expect("cave.yaml");
    let mut bkgr = spawn_bkgr(&agent, dir, &[]);
    let mut reader = BufReader::new(bkgr.stdout.take().expect("stdout"));
    let mut up = Vec::new();
    while up.len() < 2 {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read") > 0, "bkgr ended early; got {up:?}");
        up.push(line.trim_end().to_owned());
    }
    up.sort();
    assert_eq!(up, ["one | one up", "two | two up"]);
    interrupt(&bkgr);
    let status = bkgr.wait().expect("wait bkgr");
    assert_eq!(status.code(), Some(130), "{status}");
    agent.wait_idle();

    let ls = agent.bkg().args(["ls", "--json"]).current_dir(dir).output().expect("bkg ls");
    assert!(ls.status.success(), "{}", stderr(&ls));
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("ls JSON");
    let states: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|s| s["state"].as_str()).collect();
    assert_eq!(states.len(), 2, "{listed}");
    assert!(states.iter().all(|state| *state != "running"), "Ctrl-C stopped them all: {listed}");
}

/// Several sandboxes' runs cancelled at once each say what became of theirs after its name, and
/// a second Ctrl-C, which ends bkgr, says it once for them all.
#[test]
fn ctrl_c_on_bkgr_with_several_sandboxes_names_each_one_waiting_for_its_grace() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    let start = "python -c \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)\"";
    std::fs::write(
        dir.join("cave.yaml"),
        format!("version: 1\nnamespace: default\nsandboxes:\n  one:\n    type: python\n    scripts:\n      start: {start}\n  two:\n    type: python\n    scripts:\n      start: {start}\n"),
    )
    .expect("cave.yaml");
    let mut bkgr = spawn_bkgr(&agent, dir, &[]);
    let mut reader = BufReader::new(bkgr.stdout.take().expect("stdout"));
    for _ in 0..2 {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read") > 0, "bkgr ended early");
    }
    interrupt(&bkgr);
    let mut errors = BufReader::new(bkgr.stderr.take().expect("stderr"));
    let mut notes = Vec::new();
    while notes.len() < 2 {
        let mut line = String::new();
        assert!(errors.read_line(&mut line).expect("read") > 0, "bkgr ended early; said {notes:?}");
        notes.push(line.trim_end().to_owned());
    }
    notes.sort();
    let waiting = "cancelling the run: its code has SIGTERM, and SIGKILL if still going 5 s after it (Ctrl-C again to stop waiting)";
    assert_eq!(notes, [format!("bkgr: one: {waiting}"), format!("bkgr: two: {waiting}")]);
    interrupt(&bkgr);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut errors, &mut rest).expect("read stderr");
    let status = bkgr.wait().expect("wait bkgr");
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(rest, "bkgr: stopped without waiting for the runs' end\n");
    agent.wait_idle();
}

/// `bkg exe` with no agent on its socket starts one (as root), runs the script, and the agent it
/// started (shown by `ps` under its own name) stops on `bkg agent stop` leaving nothing behind.
#[test]
fn bkg_exe_starts_an_agent_when_none_answers() {
    let dir = tempfile::Builder::new().prefix("bkg-e2e-auto-").tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let cgroup_dir = format!("bkg-test-{}-autostart", std::process::id());
    let uids = UidRange::reserve();
    let environment = |command: &mut Command| {
        command
            .env("BKG_SOCKET", &socket)
            .env("BKG_STATE_DIR", dir.path().join("state"))
            .env("BKG_CGROUP_DIR", &cgroup_dir)
            .env("BKG_UID_BASE", uids.base.to_string())
            .env("BKG_WARM_POOL", "0")
            .env_remove("BKG_NO_AUTOSTART")
            .env_remove("BKG_REMOTE")
            .stdin(Stdio::null());
    };
    let mut exe = Command::new(bkg_bin());
    exe.args(["exe", "--type", "python", "-c", "print('ran')"]);
    environment(&mut exe);
    let output = exe.output().expect("bkg exe");
    let said = stderr(&output);
    let pid: Option<u32> =
        said.split("(pid ").nth(1).and_then(|rest| rest.split(')').next()).and_then(|pid| pid.parse().ok());
    let agent_pid = AutostartedAgent(pid);
    assert_eq!(code(&output), 0, "stderr: {said}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ran\n");
    assert!(said.contains("started an agent"), "bkg says it started one: {said}");
    let pid = agent_pid.0.expect("the pid of the started agent");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the started agent's command line");
    let name = String::from_utf8_lossy(cmdline.split(|byte| *byte == 0).next().unwrap_or_default()).into_owned();
    assert!(name.ends_with("bkg-agent"), "`ps` shows the agent as {name:?}");

    let mut stop = Command::new(bkg_bin());
    stop.args(["agent", "stop"]);
    environment(&mut stop);
    let stopped = stop.output().expect("bkg agent stop");
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(Instant::now() < deadline, "the started agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = cgroup_dirs_named(&cgroup_dir);
    assert!(left.is_empty(), "the started agent left its cgroups: {left:?}");
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Kills an agent that `bkg exe` started if the test fails before stopping it.
struct AutostartedAgent(Option<u32>);

impl Drop for AutostartedAgent {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|pid| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid)) {
            // SAFETY: kill(2) of the agent this test had `bkg exe` start; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}
