//! Sessions: `bkg exec NAME --session S` keeps an interpreter's state between executions,
//! interrupts without losing it, shows figures as PNG and tracebacks that name the cell.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bkg_tests::{Agent, AgentOptions, bin_dir, code, stderr, stdout};

/// A project with a python sandbox `box` and a node sandbox `js`, both defined on the agent.
fn project(agent: &Agent) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    for (name, language) in [("box", "python"), ("js", "node")] {
        // Small disks and no warm pool: two sessions hold two sandboxes at once.
        let added = agent.bkg_in(dir, &["add", name, "--type", language, "--script", "start=true", "--disk", "64MiB"]);
        assert_eq!(code(&added), 0, "add: {}", stderr(&added));
        let run = Command::new(bin_dir().join("bkgr"))
            .arg(name)
            .current_dir(dir)
            .env("BKG_SOCKET", &agent.socket)
            .env("BKG_NO_AUTOSTART", "1")
            .stdin(Stdio::null())
            .output()
            .expect("bkgr");
        assert_eq!(code(&run), 0, "first run: {}", stderr(&run));
    }
    project
}

/// A cell that writes an event's mark and then 256 MiB without a newline cannot make the agent
/// hold all it writes: past 16 MiB the line is left out up to its end, and `bkg exec` is told
/// (docs/security.md, "output cap"). The agent held all of it before.
#[test]
fn a_mark_without_an_end_does_not_grow_the_agents_memory() {
    const MIB: u64 = 1024 * 1024;
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let flood = "import os\nos.write(1, b'\\x1e')\nchunk = b'x' * (1 << 20)\nfor _ in range(256):\n    \
                 os.write(1, chunk)\nos.write(1, b'\\n')";
    let output = agent
        .bkg()
        .args(["exec", "box", "-c", flood])
        .current_dir(project.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("bkg exec");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    // After the line that says the session started.
    let said = "bkg: left out a line of over 16MiB that the session's interpreter began as an event (a result or \
                figure too large to show)\n";
    assert!(stderr(&output).ends_with(said), "{}", stderr(&output));
    let peak_kib = vm_kib(agent.pid(), "VmHWM:");
    assert!(peak_kib * 1024 < 160 * MIB, "the agent's memory peaked at {} MiB", peak_kib / 1024);
}

/// `bkg exec box -c CELL` in the project at `dir`, its output piped.
fn spawn_exec(agent: &Agent, dir: &std::path::Path, cell: &str) -> std::process::Child {
    agent
        .bkg()
        .args(["exec", "box", "-c", cell])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg exec")
}

/// `bkg exec box -c CELL` in the project at `dir`, sent `signal` once the cell has printed its
/// first line, `up`: how it ended.
fn signalled_once_up(agent: &Agent, dir: &std::path::Path, cell: &str, signal: i32) -> std::process::Output {
    let mut child = spawn_exec(agent, dir, cell);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")), &mut first)
        .expect("the cell's output");
    assert_eq!(first, "up\n");
    // SAFETY: kill(2) on a child this test spawned; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    child.wait_with_output().expect("bkg exec")
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("the field")
}

/// A caller that reads slower than a cell displays cannot make the agent hold what the cell
/// made: the events on their way are bounded by their bytes (32 MiB), not only by their count,
/// and the cell waits for room. Before, 60 displays of 8 MB each could all wait in the agent.
/// Nor bkg itself: what waits for its reader is bounded by bytes (16 MiB) as well; before, 16
/// such displays waited there (found by a new-user trial: bkg grew to 188 MB).
#[test]
fn a_slow_reader_of_large_displays_grows_neither_the_agent_nor_bkg() {
    const MIB: u64 = 1024 * 1024;
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let started = agent.bkg_in(project.path(), &["exec", "box", "-c", "big = 'x' * 8_000_000"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let before = vm_kib(agent.pid(), "VmRSS:") * 1024;
    let cells = "import sys\nprint('go', file=sys.stderr, flush=True)\nfor _ in range(60):\n    \
                 display(data={'text/plain': big})\nprint('done')";
    let mut child = spawn_exec(&agent, project.path(), cells);
    let mut said = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while line != "go\n" {
        line.clear();
        assert_ne!(std::io::BufRead::read_line(&mut said, &mut line).expect("bkg exec's stderr"), 0, "no go");
    }
    // Nothing is read until the interpreter waits for room to write its next event while the
    // agent is idle (it took all it would), or has finished the cell and waits for the next one
    // (the agent took all of it). The agent's own CPU tells its idling from its parsing an
    // event, which in a debug build is slow enough to hold the interpreter up too.
    let waits = || -> Vec<String> {
        bkg_tests::processes_with_uid_in(agent.uid_base, agent.uid_base + 65_536)
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok())
            .collect()
    };
    let agent_cpu = || -> u64 {
        let fields = bkg_tests::stat_fields(agent.pid()).expect("the agent's stat");
        // utime and stime, fields 14 and 15 of /proc/PID/stat (these start at field 3).
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut cpu = agent_cpu();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (now, cpu_now) = (waits(), agent_cpu());
        let agent_idle = cpu_now <= cpu + 1;
        cpu = cpu_now;
        if now.iter().any(|wchan| wchan.contains("pipe_read"))
            || (agent_idle && now.iter().any(|wchan| wchan.contains("pipe_write")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the interpreter neither finished nor waited for room: {now:?}");
    }
    let peak = vm_kib(agent.pid(), "VmHWM:") * 1024;
    let bkg_peak = vm_kib(child.id(), "VmHWM:") * 1024;
    // The caller goes away and the cell is interrupted: the session serves on.
    child.kill().expect("end bkg exec");
    drop(child.wait());
    let interrupted = agent.bkg_in(project.path(), &["exec", "box", "--interrupt"]);
    assert_eq!(code(&interrupted), 0, "{}", stderr(&interrupted));
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let next = agent.bkg_in(project.path(), &["exec", "box", "-c", "print(len(big))"]);
        if !stderr(&next).contains("is running an execution") || Instant::now() > deadline {
            break next;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code(&next), 0, "{}", stderr(&next));
    assert!(stdout(&next).ends_with("8000000\n"), "{}", stdout(&next));
    assert!(peak < before + 200 * MIB, "the agent grew from {} to {} MiB", before / MIB, peak / MIB);
    // Its queue's 16 MiB, the event it is writing, the one it is reading and their copies.
    assert!(bkg_peak < 100 * MIB, "bkg exec grew to {} MiB", bkg_peak / MIB);
}

/// Lines printed one by one, with stderr between them, arrive whole and in their order: the
/// agent merges the output lines it reads together into one event and sends the events queued
/// together at once, and bkg shows the text of one stream in a row with one write.
#[test]
fn lines_printed_one_by_one_arrive_whole_and_in_order() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let cell = "import sys\nfor i in range(100000): print(i)\nprint('half', file=sys.stderr)\n\
                for i in range(100000, 150000): print(i)";
    let output = agent.bkg_in(project.path(), &["exec", "box", "-c", cell]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let expected: String = (0..150_000).map(|i| format!("{i}\n")).collect();
    assert!(stdout(&output) == expected, "{} bytes of stdout, {} expected", stdout(&output).len(), expected.len());
    assert!(stderr(&output).ends_with("half\n"), "{}", stderr(&output));

    // Events as JSON: each line once, stdout's before and after stderr's line as printed.
    let output = agent.bkg_in(project.path(), &["exec", "box", "--json", "-c", cell]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let mut streams = String::new();
    for line in stdout(&output).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("event");
        if event["type"] == "stream" {
            streams.push_str(event["text"].as_str().unwrap_or_default());
        }
    }
    let (before, after) = expected.split_at(expected.find("100000\n").unwrap_or_default());
    assert!(streams == format!("{before}half\n{after}"), "{} bytes of streams", streams.len());
}

/// A `bkg exec` whose reader goes away (`| head -1`) interrupts its execution, as Ctrl-C would,
/// instead of reading on for nobody while the execution prints forever; the session and its
/// variables stay.
#[test]
fn an_execution_whose_reader_goes_away_is_interrupted() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let mut child =
        spawn_exec(&agent, project.path(), "x = 41\nimport itertools\nfor i in itertools.count(): print(i)");
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).expect("the cell's output");
    assert_eq!(first, "0\n");
    drop(reader);
    let output = child.wait_with_output().expect("bkg exec");
    interrupted_keeping_x(&agent, project.path(), &output, 130);
}

/// The execution that set `x = 41` ended with `code`, interrupted, and the session kept `x`.
fn interrupted_keeping_x(agent: &Agent, dir: &std::path::Path, output: &std::process::Output, expected: i32) {
    assert_eq!(code(output), expected, "{}", stderr(output));
    assert!(stderr(output).contains("KeyboardInterrupt"), "{}", stderr(output));
    let next = agent.bkg_in(dir, &["exec", "box", "-c", "print(x + 1)"]);
    assert_eq!((code(&next), stdout(&next).as_str()), (0, "42\n"), "{}", stderr(&next));
}

/// Code that ignores SIGINT goes on after Ctrl-C: `bkg exec` says so, and what ends it, rather
/// than seem to do nothing (found by a new-user trial).
#[test]
fn ctrl_c_on_an_execution_that_ignores_it_says_what_ends_it() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let started = agent.bkg_in(project.path(), &["exec", "box", "-c", "x = 41"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let cell = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\n\
                time.sleep(4)\nprint(x + 1)";
    let output = signalled_once_up(&agent, project.path(), cell, libc::SIGINT);
    assert_eq!((code(&output), stdout(&output).as_str()), (0, "42\n"), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "bkg: the execution goes on after the interrupt (its code may catch or ignore SIGINT): `bkg exec box \
         --restart` ends the session's interpreter, and its variables with it\n"
    );
}

/// SIGTERM to `bkg exec` (as `timeout` sends) interrupts the execution as Ctrl-C does and exits
/// 143; the session and its variables stay (was: bkg died at once, and the execution went on
/// holding the session).
#[test]
fn sigterm_interrupts_the_execution_and_exits_143() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let cell = "x = 41\nimport time\nprint('up', flush=True)\ntime.sleep(300)";
    let output = signalled_once_up(&agent, project.path(), cell, libc::SIGTERM);
    interrupted_keeping_x(&agent, project.path(), &output, 143);
}

/// SIGHUP to `bkg exec` whose code ignores the interrupt: bkg does not wait for the execution's
/// end, says what ends it, and exits 129.
#[test]
fn sighup_on_an_execution_that_ignores_the_interrupt_says_what_ends_it_and_exits_129() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let cell = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\n\
                time.sleep(300)\nprint('slept')";
    let output = signalled_once_up(&agent, project.path(), cell, libc::SIGHUP);
    assert_eq!((code(&output), stdout(&output).as_str()), (129, ""), "{}", stderr(&output));
    let said = "bkg: the execution goes on after the interrupt (its code may catch or ignore SIGINT): `bkg exec box \
                --restart` ends the session's interpreter, and its variables with it\n";
    assert!(stderr(&output).ends_with(said), "{}", stderr(&output));
}

/// `bkg runs cancel` does not end a session's interpreter, which holds its variables: it says
/// what does (found by a new-user trial: the session's state was gone, and `bkg exec` blamed
/// `bkg stop`).
#[test]
fn bkg_runs_cancel_leaves_a_sessions_interpreter_and_says_what_ends_it() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let set = agent.bkg_in(dir, &["exec", "box", "-c", "x = 41"]);
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let run = status["current_run"].as_str().expect("the session's run").to_owned();
    let refused = agent.bkg_in(dir, &["runs", "cancel", &run]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        format!(
            "bkg: run {run} is the interpreter of session `default` of sandbox box, which holds its variables: \
             interrupt its execution (Ctrl-C on `bkg exec`), or end the session with `bkg stop box`\n"
        )
    );
    let kept = agent.bkg_in(dir, &["exec", "box", "-c", "x + 1"]);
    assert_eq!((code(&kept), stdout(&kept)), (0, "42\n".to_owned()), "{}", stderr(&kept));
}

#[test]
fn a_session_keeps_its_state_names_the_cell_in_tracebacks_and_survives_an_interrupt() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();

    let set = agent.bkg_in(dir, &["exec", "box", "-c", "x = 41\nprint('set')"]);
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    assert_eq!(stdout(&set), "set\n");
    let next = agent.bkg_in(dir, &["exec", "box", "-c", "x + 1"]);
    assert_eq!(code(&next), 0, "{}", stderr(&next));
    assert_eq!(stdout(&next), "42\n", "the value of the last expression, with x kept");
    // A session made is said (after an agent's restart, the code would otherwise meet a
    // NameError with no word why); one in use is not.
    assert!(stderr(&set).contains("started session default of box (a fresh python interpreter"), "{}", stderr(&set));
    assert_eq!(stderr(&next), "");
    // A Python session does not run code given as Node's.
    let other = agent.bkg_in(dir, &["exec", "box", "--type", "node", "-c", "console.log(1)"]);
    assert_eq!(code(&other), 125, "{}", stderr(&other));
    assert_eq!(
        stderr(&other),
        "bkg: session `default` runs python, not node: leave out --type, or end the session first (`bkg stop box`)\n"
    );
    assert_eq!(stdout(&other), "");

    let failing = agent.bkg_in(dir, &["exec", "box", "-c", "def f():\n    return 1 / 0\nf()"]);
    assert_eq!(code(&failing), 1);
    let trace = stderr(&failing);
    assert!(trace.contains("File \"<cell 3>\", line 2, in f"), "{trace}");
    assert!(trace.contains("ZeroDivisionError: division by zero"), "{trace}");
    assert!(!trace.contains("<string>"), "the runner's frames are not shown: {trace}");
    // What `display` could not send ends the traceback at the cell, not inside the runner and
    // the json module it called (found by a new-user trial); what the cell itself calls of the
    // standard library stays.
    let unsendable = agent.bkg_in(dir, &["exec", "box", "-c", "display(data={'text/plain': object()})"]);
    assert_eq!(code(&unsendable), 1);
    let trace = stderr(&unsendable);
    assert!(trace.contains("File \"<cell 4>\", line 1, in <module>"), "{trace}");
    assert!(trace.contains("TypeError: Object of type object is not JSON serializable"), "{trace}");
    assert!(!trace.contains("<string>") && !trace.contains("json/encoder.py"), "{trace}");
    let own = agent.bkg_in(dir, &["exec", "box", "-c", "import json\njson.dumps(object())"]);
    assert!(stderr(&own).contains("json/encoder.py"), "{}", stderr(&own));

    let mut looping = spawn_exec(&agent, dir, "while True: pass");
    // A second execution meanwhile is refused, told how to end the first.
    bkg_tests::eventually("the loop executing", || {
        let status = agent.bkg_in(dir, &["status", "box"]);
        if stdout(&status).contains("executing") { Ok(()) } else { Err(stdout(&status)) }
    });
    let busy = agent.bkg_in(dir, &["exec", "box", "-c", "1"]);
    assert_eq!(code(&busy), 125, "{}", stderr(&busy));
    assert!(stderr(&busy).contains("interrupt it (`bkg exec box --interrupt`) or wait"), "{}", stderr(&busy));
    // The interrupt is sent until the execution it meant has ended (one sent before it started
    // finds the session idle, where an interrupt does nothing).
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let interrupt = agent.bkg_in(dir, &["exec", "box", "--interrupt"]);
        assert_eq!(code(&interrupt), 0, "{}", stderr(&interrupt));
        // Sent, which is not done: the code may catch it.
        assert!(
            stderr(&interrupt).contains("is idle: nothing to interrupt")
                || stderr(&interrupt).starts_with(
                    "bkg: sent an interrupt (SIGINT) to the execution in session default of box; code that catches \
                     or ignores it goes on: `bkg exec box --restart` ends the session's interpreter"
                ),
            "{}",
            stderr(&interrupt)
        );
        if let Some(status) = looping.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the loop was not interrupted");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(130), "an interrupted execution ends with 130");
    let after = agent.bkg_in(dir, &["exec", "box", "-c", "x"]);
    assert_eq!(stdout(&after), "41\n", "the session kept its state: {}", stderr(&after));
    let idle = agent.bkg_in(dir, &["exec", "box", "--interrupt"]);
    assert_eq!(code(&idle), 0, "{}", stderr(&idle));
    assert!(stderr(&idle).contains("is idle: nothing to interrupt"), "{}", stderr(&idle));

    let restarted = agent.bkg_in(dir, &["exec", "box", "--restart"]);
    assert_eq!(code(&restarted), 0, "{}", stderr(&restarted));
    let gone = agent.bkg_in(dir, &["exec", "box", "-c", "x"]);
    assert_eq!(code(&gone), 1);
    assert!(stderr(&gone).contains("NameError"), "{}", stderr(&gone));

    // A restart gives the session cave.yaml's definition as it is now, as docs/cli.md says (found
    // by a new-user trial: the environment it had started with stayed).
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    std::fs::write(dir.join("cave.yaml"), cave.replacen("  box:\n", "  box:\n    env:\n      MODE: v5\n", 1))
        .expect("cave.yaml");
    let restarted = agent.bkg_in(dir, &["exec", "box", "--restart"]);
    assert_eq!(code(&restarted), 0, "{}", stderr(&restarted));
    let mode = agent.bkg_in(dir, &["exec", "box", "-c", "import os; os.environ.get('MODE')"]);
    assert_eq!(stdout(&mode), "'v5'\n", "{}", stderr(&mode));

    // A session that is not there (ended with the sandbox): nothing runs in it to interrupt,
    // and a restart starts it.
    let stopped = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let none = agent.bkg_in(dir, &["exec", "box", "--interrupt"]);
    assert_eq!(code(&none), 0, "{}", stderr(&none));
    assert!(stderr(&none).contains("box has no session default: nothing to interrupt"), "{}", stderr(&none));
    let fresh = agent.bkg_in(dir, &["exec", "box", "--restart", "--json"]);
    assert_eq!(code(&fresh), 0, "{}", stderr(&fresh));
    let info: serde_json::Value = serde_json::from_str(&stdout(&fresh)).expect("session JSON");
    assert_eq!((info["name"].as_str(), info["executions"].as_u64()), (Some("default"), Some(0)), "{info}");
}

/// Found by a new-user trial: with its output waiting for a reader that took none
/// (`bkg exec … | less`), Ctrl-C reached nobody until the reader went away.
#[test]
fn ctrl_c_interrupts_an_execution_whose_output_nobody_reads() {
    use std::io::Read;
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let cell = "try:\n    i = 0\n    while True:\n        print(i)\n        i += 1\n\
                except KeyboardInterrupt:\n    open('/workspace/interrupted', 'w').write('yes')\n    raise";
    let mut command = Command::new(bkg_tests::bkg_bin());
    command
        .args(["exec", "box", "-c", cell])
        .current_dir(dir)
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1");
    let (mut child, mut unread) = bkg_tests::spawn_with_stdout_unread(command, "0\n");
    // SAFETY: kill(2) on the bkg this test started; no memory is touched.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // The cell took the interrupt while its output still waits: it says so in a file.
    let fetched = tempfile::tempdir().expect("dir");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copied = agent.bkg_in(dir, &["cp", "box:interrupted", fetched.path().to_str().unwrap_or_default()]);
        if code(&copied) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the interrupt never reached the cell: {}", stderr(&copied));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_to_string(fetched.path().join("interrupted")).expect("the cell's file"), "yes");
    let mut rest = Vec::new();
    unread.read_to_end(&mut rest).expect("the output, to its end");
    let status = child.wait().expect("bkg exec");
    assert_eq!(status.code(), Some(130), "an interrupted execution ends with 130");
}

/// The interrupted cell's end waits behind the output nobody reads: a second Ctrl-C leaves, and
/// the session is free for the next execution (found by a new-user trial: each Ctrl-C was one
/// more interrupt, and bkg and the session stayed until the reader went).
#[test]
fn a_second_ctrl_c_leaves_an_interrupted_execution_whose_output_nobody_reads() {
    leaves_with_its_output_unread(
        &[libc::SIGINT, libc::SIGINT],
        130,
        "\nbkg: interrupting the execution; its output waits for a reader that takes none (Ctrl-C again to quit \
         without it)\nbkg: stopped with the execution's output unwritten\n",
    );
}

/// SIGTERM (`timeout`, a service manager) does not wait for an end that waits behind output
/// nobody reads: the execution is interrupted and bkg leaves at once (found by a new-user trial:
/// it stayed until a second SIGTERM).
#[test]
fn sigterm_leaves_an_execution_whose_output_nobody_reads_at_once() {
    leaves_with_its_output_unread(&[libc::SIGTERM], 143, "\nbkg: stopped with the execution's output unwritten\n");
}

fn leaves_with_its_output_unread(signals: &[i32], exit: i32, said_last: &str) {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let mut command = Command::new(bkg_tests::bkg_bin());
    command
        .args(["exec", "box", "-c", "i = 0\nwhile True:\n    print(i)\n    i += 1"])
        .current_dir(dir)
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1");
    let (mut child, unread) = bkg_tests::spawn_with_stdout_unread(command, "0\n");
    let pid = child.id() as i32;
    for (nth, signal) in signals.iter().enumerate() {
        if nth > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        // SAFETY: kill(2) on the bkg this test started; no memory is touched.
        assert_eq!(unsafe { libc::kill(pid, *signal) }, 0);
    }
    // Bounded: the fault was a wait for the reader that never ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bkg exec did not leave at {signals:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("bkg exec");
    assert_eq!(code(&output), exit, "{}", stderr(&output));
    assert!(stderr(&output).ends_with(said_last), "{}", stderr(&output));
    drop(unread);
    // The interrupted code ends once the agent has taken the output bkg left (at once after a
    // signal bkg did not wait on).
    bkg_tests::eventually("the session free again", || {
        let next = agent.bkg_in(dir, &["exec", "box", "-c", "print('next', i > 0)"]);
        match code(&next) {
            0 if stdout(&next).ends_with("next True\n") => Ok(()),
            _ => Err(format!("{}{}", stdout(&next), stderr(&next))),
        }
    });
}

#[test]
fn a_matplotlib_figure_comes_back_as_a_png_and_node_keeps_its_state() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let plot = agent.bkg_in(
        dir,
        &["exec", "box", "--json", "-c", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nprint('plotted')"],
    );
    assert_eq!(code(&plot), 0, "{}", stderr(&plot));
    let events: Vec<serde_json::Value> =
        stdout(&plot).lines().map(|line| serde_json::from_str(line).expect("event")).collect();
    let printed: String = events
        .iter()
        .filter(|event| event["type"] == "stream" && event["name"] == "stdout")
        .filter_map(|event| event["text"].as_str())
        .collect();
    assert_eq!(printed, "plotted\n", "stdout streamed as events: {events:?}");
    let png = events
        .iter()
        .find(|event| event["type"] == "display")
        .and_then(|event| event["data"]["image/png"].as_str())
        .unwrap_or_else(|| panic!("no PNG among {events:?}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(png).expect("base64");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG image");
    assert_eq!(events.last().map(|event| event["type"].clone()), Some(serde_json::json!("end")));

    // Found by a new-user trial: `sys.stdout.buffer` raised and `sys.stdout.encoding` was None.
    let bytes = agent.bkg_in(
        dir,
        &["exec", "box", "-c", "import sys\nsys.stdout.buffer.write('é'.encode()[:1])\nsys.stdout.buffer.write('é\\n'.encode()[1:])\nprint(sys.stdout.encoding)"],
    );
    assert_eq!((code(&bytes), stdout(&bytes).as_str()), (0, "é\nutf-8\n"), "{}", stderr(&bytes));

    let set = agent.bkg_in(dir, &["exec", "js", "-c", "let y = 41; console.log('set')"]);
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    assert_eq!(stdout(&set), "set\n");
    let next = agent.bkg_in(dir, &["exec", "js", "-c", "y + 1"]);
    assert_eq!(stdout(&next), "42\n", "{}", stderr(&next));
    let failing = agent.bkg_in(dir, &["exec", "js", "-c", "\nnull.x"]);
    assert_eq!(code(&failing), 1);
    assert!(stderr(&failing).contains("<cell 3>:2"), "{}", stderr(&failing));
    // Found by a new-user trial: a promise rejected with no handler, or a timer that throws,
    // ended the interpreter without a word, and every variable with it. Node's REPL says
    // `Uncaught …` and goes on; so does a session.
    let rejected = agent.bkg_in(dir, &["exec", "js", "-c", "Promise.reject(new Error('nobody waits')); 'v'"]);
    assert_eq!(code(&rejected), 0, "{}", stderr(&rejected));
    let thrown = agent.bkg_in(dir, &["exec", "js", "-c", "setTimeout(() => { throw new Error('late') }, 10); 'w'"]);
    assert_eq!(code(&thrown), 0, "{}", stderr(&thrown));
    // Its value comes once the timer above has surely fired.
    let after = agent.bkg_in(dir, &["exec", "js", "-c", "new Promise((done) => setTimeout(() => done(y), 100))"]);
    assert_eq!(stdout(&after), "41\n", "the session lived on: {}", stderr(&after));
    let said = format!("{}{}{}", stderr(&rejected), stderr(&thrown), stderr(&after));
    assert!(said.contains("Uncaught Error: nobody waits"), "{said}");
    assert!(said.contains("Uncaught Error: late"), "{said}");
}

/// What a timer or a thread prints after its execution ended comes with the next execution,
/// before that one's own output, instead of being lost; output without a final newline is
/// output, not the runner's protocol.
#[test]
fn output_written_between_executions_comes_with_the_next_one() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    for (sandbox, later, next) in [
        ("js", "setTimeout(() => console.log('from the timer'), 200); console.log('cell ends')", "console.log('next')"),
        (
            "box",
            "import threading\nthreading.Timer(0.2, lambda: print('from the timer')).start()\nprint('cell ends')",
            "print('next')",
        ),
    ] {
        let first = agent.bkg_in(dir, &["exec", sandbox, "-c", later]);
        assert_eq!((code(&first), stdout(&first)), (0, "cell ends\n".to_owned()), "{}", stderr(&first));
        std::thread::sleep(Duration::from_millis(800));
        let second = agent.bkg_in(dir, &["exec", sandbox, "-c", next]);
        assert_eq!(code(&second), 0, "{}", stderr(&second));
        assert_eq!(stdout(&second), "from the timer\nnext\n", "{sandbox}: {}", stderr(&second));
    }
    // Output without a final newline is output, and the execution still ends.
    let partial = agent.bkg_in(dir, &["exec", "js", "-c", "process.stdout.write('partial'); undefined"]);
    assert_eq!((code(&partial), stdout(&partial)), (0, "partial".to_owned()), "{}", stderr(&partial));
    let after = agent.bkg_in(dir, &["exec", "js", "-c", "40 + 2"]);
    assert_eq!((code(&after), stdout(&after)), (0, "42\n".to_owned()), "{}", stderr(&after));
    // Long output without a newline, written past the runner (Node's, `os.write`) or through it
    // (one event line), comes whole, its characters uncut (found by a new-user trial: the agent
    // searched all of it again at every piece, 12 s of CPU for 20 MB).
    let long = "é".repeat(300_000);
    for (sandbox, code_text) in [
        ("js", "process.stdout.write('é'.repeat(300000)); undefined"),
        ("box", "import os\nos.write(1, ('é' * 300000).encode())\nNone"),
        ("box", "import sys\nsys.stdout.write('é' * 300000)\nNone"),
    ] {
        let written = agent.bkg_in(dir, &["exec", sandbox, "-c", code_text]);
        assert_eq!(code(&written), 0, "{sandbox}: {}", stderr(&written));
        assert!(stdout(&written) == long, "{sandbox}: {} bytes", written.stdout.len());
    }
    // Long output through a runner goes as several events: characters outside the BMP (two
    // UTF-16 units in Node) are never cut between them.
    let faces = "😀".repeat(100_000);
    for (sandbox, code_text) in
        [("js", "console.log('a' + '😀'.repeat(100000))"), ("box", "print('a' + '😀' * 100000)")]
    {
        let written = agent.bkg_in(dir, &["exec", sandbox, "-c", code_text]);
        assert_eq!(code(&written), 0, "{sandbox}: {}", stderr(&written));
        assert!(stdout(&written) == format!("a{faces}\n"), "{sandbox}: {} bytes", written.stdout.len());
    }
}

/// Found by a new-user trial: `bkg exec` whose agent died during the execution said only the
/// transport's "unexpected EOF during chunk size line".
#[test]
fn an_execution_whose_agent_dies_says_the_connection_broke() {
    let mut agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let started = agent.bkg_in(project.path(), &["exec", "box", "-c", "print('ready')"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    use std::io::BufRead as _;
    let mut exec = spawn_exec(&agent, project.path(), "import time\nprint('waiting', flush=True)\ntime.sleep(60)");
    let mut output = std::io::BufReader::new(exec.stdout.take().expect("stdout"));
    let mut line = String::new();
    output.read_line(&mut line).expect("the execution's first line");
    assert_eq!(line, "waiting\n");
    agent.crash();
    let ended = exec.wait_with_output().expect("bkg exec");
    assert_eq!(code(&ended), 125, "{}", stderr(&ended));
    assert!(stderr(&ended).contains("the connection to the agent broke during the execution"), "{}", stderr(&ended));
}

/// `bkg repl box` in `dir`, its stdin, stdout and stderr piped.
fn piped_repl(agent: &Agent, dir: &std::path::Path) -> std::process::Child {
    agent
        .bkg()
        .args(["repl", "box"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bkg repl")
}

/// Found by a new-user trial: a `bkg repl` whose session was stopped from elsewhere left with
/// the API's "no session … (POST …/sessions)", and the cell typed was lost. A fresh session
/// runs it, and the repl says why its state is gone.
#[test]
fn a_repl_whose_session_was_stopped_goes_on_in_a_fresh_one() {
    use std::io::{BufRead as _, Write as _};
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let mut repl = piped_repl(&agent, project.path());
    let mut input = repl.stdin.take().expect("stdin");
    let mut output = std::io::BufReader::new(repl.stdout.take().expect("stdout"));
    input.write_all(b"print('one')\n").expect("cell");
    let mut line = String::new();
    output.read_line(&mut line).expect("first output");
    assert_eq!(line, "one\n");
    let stopped = agent.bkg_in(project.path(), &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    input.write_all(b"print('two')\n").expect("cell");
    drop(input);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut output, &mut rest).expect("rest");
    let ended = repl.wait_with_output().expect("repl");
    assert_eq!((code(&ended), rest), (0, "two\n".to_owned()), "{}", stderr(&ended));
    assert!(
        stderr(&ended).contains("session default of box had ended (`bkg stop`, or the agent restarted)"),
        "{}",
        stderr(&ended)
    );
}

/// `bkg repl box` in the project at `dir` fed `cells` on a pipe that then ends.
fn piped_repl_of(agent: &Agent, dir: &std::path::Path, cells: &[u8]) -> std::process::Child {
    use std::io::Write as _;
    let mut repl = piped_repl(agent, dir);
    repl.stdin.take().expect("stdin").write_all(cells).expect("write the cells");
    repl
}

/// A piped repl in the project at `dir` whose second cell has started and sleeps; a third
/// cell follows it.
fn repl_in_a_long_cell(agent: &Agent, dir: &std::path::Path) -> std::process::Child {
    let cells = b"import time\nprint('started', flush=True); time.sleep(300)\nprint('after')\n";
    let mut repl = piped_repl_of(agent, dir, cells);
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(repl.stdout.as_mut().expect("stdout"));
    std::io::BufRead::read_line(&mut reader, &mut first).expect("the cell's output");
    assert_eq!(first, "started\n");
    repl
}

/// Ctrl-C on a repl fed from a pipe interrupts its cell and runs none after it, as on
/// `python3 < cells.py`, and so do SIGTERM and SIGHUP (was: after Ctrl-C the rest ran on, and
/// SIGTERM ended bkg with its cell going on; found by new-user trials). The session is free
/// for the next execution at once.
#[test]
fn a_signal_on_a_piped_repl_stops_its_cells() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    for (signal, expected, said) in [(libc::SIGINT, 130, "Ctrl-C"), (libc::SIGTERM, 143, "SIGTERM")] {
        let repl = repl_in_a_long_cell(&agent, project.path());
        // SAFETY: kill(2) on a child this test spawned; no memory is involved.
        assert_eq!(unsafe { libc::kill(repl.id() as i32, signal) }, 0);
        let done = repl.wait_with_output().expect("bkg repl");
        assert_eq!((code(&done), stdout(&done).as_str()), (expected, ""), "{said}: {}", stderr(&done));
        let note = format!("bkg: stopped at {said}: no more cells are run\n");
        assert!(stderr(&done).ends_with(&note), "{}", stderr(&done));
        let next = agent.bkg_in(project.path(), &["exec", "box", "-c", "print('free')"]);
        assert_eq!((code(&next), stdout(&next).as_str()), (0, "free\n"), "{said}: {}", stderr(&next));
    }
}

/// A piped repl whose agent stops mid-cell exits 143, as `bkg exec` does, and runs no cell after
/// it (found by a new-user trial: the next cell found no agent, exit 125, with advice for a TCP
/// port on a unix socket).
#[test]
fn a_piped_repl_whose_agent_stops_exits_143_and_runs_no_more_cells() {
    let mut agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let repl = repl_in_a_long_cell(&agent, project.path());
    agent.stop();
    let done = repl.wait_with_output().expect("bkg repl");
    assert_eq!((code(&done), stdout(&done).as_str()), (143, ""), "{}", stderr(&done));
    assert!(stderr(&done).ends_with("bkg: the agent stopped: no more cells are run\n"), "{}", stderr(&done));
}

/// `bkg repl` reading a pipe runs every cell and says with its exit code whether one failed,
/// without the banner meant for a person at a terminal.
#[test]
fn a_piped_repl_runs_every_cell_and_exits_1_when_one_failed() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let repl = piped_repl_of(&agent, project.path(), b"x = 1\nraise ValueError('piped')\nprint('after', x)\n");
    let done = repl.wait_with_output().expect("bkg repl");
    assert_eq!(code(&done), 1, "{}", stderr(&done));
    assert_eq!(stdout(&done), "after 1\n");
    assert!(stderr(&done).contains("ValueError: piped"), "{}", stderr(&done));
    assert!(!stderr(&done).contains("Ctrl-D"), "no banner for a pipe: {}", stderr(&done));
}

/// A session's stdout is its runner's events, which are nobody's log: `bkg logs` goes on
/// showing the sandbox's last run that has one.
#[test]
fn bkg_logs_does_not_show_a_sessions_events() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let shown = agent.bkg_in(dir, &["exec", "box", "-c", "print('visible output')"]);
    assert_eq!((code(&shown), stdout(&shown)), (0, "visible output\n".to_owned()), "{}", stderr(&shown));
    let stopped = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let logs = agent.bkg_in(dir, &["logs", "box"]);
    assert_eq!(code(&logs), 0, "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "", "the start script's log (it printed nothing), not the session's events");
}

/// A run refused while a session holds its sandbox says so, and how to go on.
#[test]
fn a_run_refused_for_a_session_names_the_session() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let shown = agent.bkg_in(dir, &["exec", "box", "-c", "x = 1"]);
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    let refused = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("held by session `default` (`bkg exec`): run code in it with `bkg exec box`,"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("bkg stop box"), "{}", stderr(&refused));
    // What holds it shows where its state is asked.
    let status = agent.bkg_in(dir, &["status", "box"]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    assert!(stdout(&status).contains("\nsession      default (python · 1 execution · idle)\n"), "{}", stdout(&status));
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&stdout(&status)).expect("JSON");
    assert_eq!(info["session"]["run_id"], info["current_run"], "{info}");
    assert_eq!(info["session"]["executions"], 1, "{info}");
    let stopped = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&stdout(&status)).expect("JSON");
    assert!(info.get("session").is_none(), "{info}");
}

/// The hint of a run refused for a named session reaches that session (found by a new-user
/// trial: it said `bkg exec box`, which is refused while another session holds the sandbox).
#[test]
fn a_run_refused_for_a_named_session_tells_how_to_reach_it() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let shown = agent.bkg_in(dir, &["exec", "box", "--session", "s2", "-c", "x = 1"]);
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    let refused = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused)
            .contains("held by session `s2` (`bkg exec`): run code in it with `bkg exec box --session s2`,"),
        "{}",
        stderr(&refused)
    );
    let reached = agent.bkg_in(dir, &["exec", "box", "--session", "s2", "-c", "print(x)"]);
    assert_eq!((code(&reached), stdout(&reached).as_str()), (0, "1\n"), "{}", stderr(&reached));
    // `--interrupt` without `--session` names the one there is, rather than say nothing runs.
    let interrupt = agent.bkg_in(dir, &["exec", "box", "--interrupt"]);
    assert_eq!(
        (code(&interrupt), stderr(&interrupt).as_str()),
        (125, "bkg: box has no session default; its session is s2: `bkg exec box --session s2 --interrupt`\n")
    );
}

/// A session whose interpreter is killed at its memory limit says so, and the next execution
/// gets a fresh interpreter.
#[test]
fn a_session_killed_at_its_memory_limit_says_so() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let set = agent.bkg_in(dir, &["exec", "box", "-c", "x = 1"]);
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    let killed = agent.bkg_in(dir, &["exec", "box", "-c", "hog = b'x' * (900 << 20)"]);
    assert_eq!(code(&killed), 137, "as a run killed at its limit: {}", stderr(&killed));
    assert!(
        stderr(&killed).contains(
            "the session's interpreter was killed at its memory limit (limits.memory in cave.yaml): what it held is \
             gone, and the next code runs in a fresh one"
        ),
        "{}",
        stderr(&killed)
    );
    let fresh = agent.bkg_in(dir, &["exec", "box", "-c", "print('x' in globals())"]);
    assert_eq!((code(&fresh), stdout(&fresh)), (0, "False\n".to_owned()), "{}", stderr(&fresh));
}

/// An execution whose caller went away runs to its end (as a notebook kernel's does), and what
/// it printed after comes first in the next execution's output, as a timer's does (was: lost).
#[test]
fn the_output_of_an_execution_whose_caller_went_away_opens_the_next() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = project(&agent);
    let dir = project.path();
    let mut abandoned = agent
        .bkg()
        .args([
            "exec",
            "box",
            "-c",
            "import time\nprint('started', flush=True)\ntime.sleep(1)\nprint('after the caller left')\nr = 7",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bkg exec");
    // The reader is kept until the caller is gone: bkg interrupts an execution whose stdout's
    // reader went away (`| head`), and closing it first raced the kill.
    let mut reader = std::io::BufReader::new(abandoned.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).expect("read");
    assert_eq!(first, "started\n");
    abandoned.kill().expect("kill the caller");
    abandoned.wait().expect("reap");
    drop(reader);
    // Busy (125) until the abandoned execution has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = loop {
        let next = agent.bkg_in(dir, &["exec", "box", "-c", "print('r is', r)"]);
        if code(&next) == 0 {
            break next;
        }
        assert!(stderr(&next).contains("busy") || stderr(&next).contains("execution"), "{}", stderr(&next));
        assert!(Instant::now() < deadline, "the abandoned execution never ended");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stdout(&next), "after the caller left\nr is 7\n", "{}", stderr(&next));
}

/// Sessions, services and terminals hold at most three quarters of `--max-running-runs` (at
/// least one place kept): one more is refused at once, with what to do, while a run that ends by
/// itself still finds a place (was: idle sessions took every place and every other run waited
/// for their hour; found by a new-user trial).
#[test]
fn long_lived_runs_leave_places_for_runs_that_end_by_themselves() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() }.with_places(2));
    let project = project(&agent);
    let dir = project.path();
    let first = agent.bkg_in(dir, &["exec", "box", "-c", "x = 1"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let second = agent.bkg_in(dir, &["exec", "js", "-c", "let y = 1"]);
    assert_eq!(code(&second), 125, "{}", stderr(&second));
    assert!(
        stderr(&second).contains("sessions, services and terminals already hold 1 of this agent's 2 places"),
        "{}",
        stderr(&second)
    );
    let status = agent.bkg().args(["agent", "status", "--json"]).output().expect("bkg agent status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!((&status["long_lived_runs"], &status["max_long_lived_runs"]), (&1.into(), &1.into()), "{status}");
    let one_shot = agent.exe(&["--type", "python", "-c", "print('ran')"]);
    assert_eq!((code(&one_shot), stdout(&one_shot).as_str()), (0, "ran\n"), "{}", stderr(&one_shot));
    // Every sandbox's service at once: each refusal named, the busy sandbox's as busy.
    let services = agent.bkgr(dir, &["-d"]);
    assert_eq!(code(&services), 125, "{}", stderr(&services));
    let said = stderr(&services);
    let named: Vec<&str> = said.lines().filter_map(|line| line.strip_prefix("bkgr: ")?.split(':').next()).collect();
    assert_eq!(named, ["box", "js"], "{said}");
    assert!(said.contains("held by session `default`"), "{said}");
    // The session's end gives its place back.
    assert_eq!(code(&agent.bkg_in(dir, &["stop", "box"])), 0);
    let again = agent.bkg_in(dir, &["exec", "js", "-c", "let y = 1"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
}

/// Ctrl-C on a `bkg exec` whose session waits for a place withdraws it: 130, and the session's
/// run is cancelled in the queue (was: the code ran once a place freed, and bkg exited 0).
#[test]
fn ctrl_c_on_an_execution_whose_session_waits_for_a_place_withdraws_it() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() }.with_places(2));
    let project = project(&agent);
    let mut holders = [agent.start_long_run(), agent.start_long_run()];
    let waiting = agent
        .bkg()
        .args(["exec", "box", "-c", "print('ran')"])
        .current_dir(project.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg exec");
    bkg_tests::eventually("the session's run queued", || {
        let listed = agent.bkg().args(["runs", "ls", "--json"]).output().map_err(|error| error.to_string())?;
        let runs: serde_json::Value = serde_json::from_slice(&listed.stdout).map_err(|error| error.to_string())?;
        let queued = runs.as_array().into_iter().flatten().any(|run| run["queued"] == true);
        if queued { Ok(()) } else { Err(runs.to_string()) }
    });
    // SAFETY: kill(2) on a child this test spawned; no memory is involved.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) };
    let output = waiting.wait_with_output().expect("bkg exec ends");
    assert_eq!(code(&output), 130, "{}", stderr(&output));
    assert_eq!(stdout(&output), "", "the code never ran");
    assert!(stderr(&output).contains("a Ctrl-C while it waited for a place"), "{}", stderr(&output));
    for holder in &mut holders {
        holder.kill().expect("end a long run");
        holder.wait().expect("reap");
    }
}

/// One namespace's sessions, services and terminals hold all their places but one, which is
/// another namespace's (was: one namespace's could take them all; found by a new-user trial).
#[test]
fn one_namespace_leaves_a_long_lived_place_to_the_others() {
    // Four places: three for sessions, services and terminals, two of them one namespace's.
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() }.with_places(4));
    let project_of = |namespace: &str, names: &[&str]| {
        let project = tempfile::tempdir().expect("project dir");
        let mut cave = format!("version: 1\nnamespace: {namespace}\nsandboxes:\n");
        for name in names {
            cave.push_str(&format!("  {name}:\n    type: python\n    limits: {{disk: 64MiB}}\n"));
        }
        std::fs::write(project.path().join("cave.yaml"), cave).expect("cave.yaml");
        project
    };
    let ours = project_of("default", &["a", "b", "c"]);
    let theirs = project_of("team", &["t"]);
    for name in ["a", "b"] {
        let session = agent.bkg_in(ours.path(), &["exec", name, "-c", "1"]);
        assert_eq!(code(&session), 0, "{name}: {}", stderr(&session));
    }
    let third = agent.bkg_in(ours.path(), &["exec", "c", "-c", "1"]);
    assert_eq!(code(&third), 125, "{}", stderr(&third));
    assert!(
        stderr(&third).contains("of namespace `default` already hold 2 places, all one namespace may"),
        "{}",
        stderr(&third)
    );
    let other = agent.bkg_in(theirs.path(), &["exec", "t", "-c", "1"]);
    assert_eq!(code(&other), 0, "{}", stderr(&other));
}

/// Found by a new-user trial: while a session held a sandbox, `bkg ls` showed `running` as its
/// LAST EXIT, hiding how its last run had ended; the agent now gives that run beside the one
/// going on (`previous_run`).
#[test]
fn a_session_holding_the_sandbox_leaves_its_last_exit_shown() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=exit 3", "--disk", "64MiB"]);
    assert_eq!(code(&added), 0, "add: {}", stderr(&added));
    assert_eq!(code(&agent.bkgr(dir, &["box"])), 3);
    let exec = agent.bkg_in(dir, &["exec", "box", "-c", "x = 1"]);
    assert_eq!(code(&exec), 0, "{}", stderr(&exec));

    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["last_run"]["finished_at_ms"], serde_json::Value::Null, "{status}");
    assert_eq!(status["previous_run"]["exit_code"], 3, "{status}");
    let text = stdout(&agent.bkg_in(dir, &["status", "box"]));
    assert!(text.contains("last exit    3\n"), "{text}");
    let ls = stdout(&agent.bkg_in(dir, &["ls"]));
    let row = ls.lines().find(|line| line.starts_with("box ")).expect("box's row");
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["box", "python", "running", "3"], "{ls}");

    // Once the session ends, its own run is the last, and nothing else is given.
    let stop = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert!(status.get("previous_run").is_none() && status["state"] == "idle", "{status}");
}
