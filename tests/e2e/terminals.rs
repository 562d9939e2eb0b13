//! `bkg shell` and `bkg exe --tty` on a real pseudo-terminal: this test opens one, runs the real
//! `bkg` on its slave side as a user's shell would (its controlling terminal, its own session),
//! and types into the master: keys, a resize, Ctrl-C, and an exit with a code.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bkg_tests::{Agent, AgentOptions, code, eventually, stderr, stdout};

/// How long any one expected piece of output may take before the test gives up (it fails
/// rather than hangs; nothing is measured against it).
const PATIENCE: Duration = Duration::from_secs(90);

/// `bkg` on the slave side of a fresh pseudo-terminal, and the master to drive it.
struct OnTerminal {
    master: std::fs::File,
    child: Child,
    chunks: mpsc::Receiver<Vec<u8>>,
    screen: String,
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

impl OnTerminal {
    fn spawn(mut command: Command) -> Self {
        let mut master_fd = -1;
        let mut slave_fd = -1;
        let size = winsize(80, 24);
        // SAFETY: openpty writes two descriptors into the given ints and reads the winsize; the
        // name and termios pointers may be null.
        let opened =
            unsafe { libc::openpty(&mut master_fd, &mut slave_fd, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty just gave us these two descriptors; nothing else owns them.
        let (master, slave): (OwnedFd, OwnedFd) =
            unsafe { (std::os::fd::FromRawFd::from_raw_fd(master_fd), std::os::fd::FromRawFd::from_raw_fd(slave_fd)) };
        let stdin = slave.try_clone().expect("dup slave");
        let stdout = slave.try_clone().expect("dup slave");
        command.stdin(Stdio::from(stdin)).stdout(Stdio::from(stdout)).stderr(Stdio::from(slave));
        // SAFETY: between fork and exec only async-signal-safe calls: setsid and ioctl.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start bkg on the terminal");
        drop(command);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().expect("dup master");
        let (sender, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once the slave side is closed everywhere: the end of the screen.
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 || sender.send(buffer[..read].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self { master, child, chunks, screen: String::new() }
    }

    fn type_in(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type into the terminal");
    }

    /// Waits until `needle` has appeared on the screen since the last wait; what came before it is
    /// consumed.
    fn expect(&mut self, needle: &str) {
        loop {
            if let Some(at) = self.screen.find(needle) {
                self.screen.drain(..at + needle.len());
                return;
            }
            match self.chunks.recv_timeout(PATIENCE) {
                Ok(chunk) => self.screen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(error) => panic!("`{needle}` never appeared ({error}); the screen had:\n{}", self.screen),
            }
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        let size = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one winsize struct, valid for the call.
        let set = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(set, 0, "resize: {}", std::io::Error::last_os_error());
    }

    fn exit_code(&mut self) -> i32 {
        let status = self.child.wait().expect("wait for bkg");
        status.code().unwrap_or(-1)
    }

    /// What bkg wrote after the last `expect`, up to its end (once it has exited).
    fn rest_of_screen(&mut self) -> String {
        while let Ok(chunk) = self.chunks.recv_timeout(PATIENCE) {
            self.screen.push_str(&String::from_utf8_lossy(&chunk));
        }
        std::mem::take(&mut self.screen)
    }

    /// Whether the terminal echoes what is typed (the master reads the slave's settings).
    fn echoes(&self) -> bool {
        let mut settings = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the termios given when it returns 0, checked before it is read.
        let read = unsafe { libc::tcgetattr(self.master.as_raw_fd(), settings.as_mut_ptr()) };
        assert_eq!(read, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        // SAFETY: filled by the successful tcgetattr above.
        unsafe { settings.assume_init() }.c_lflag & libc::ECHO != 0
    }
}

fn in_project(agent: &Agent, dir: &Path, args: &[&str]) -> Command {
    let mut command = agent.bkg();
    // A user's shell at a terminal: CI's `CI=true` would keep `bkg init` from asking anything.
    command.args(args).current_dir(dir).env("TERM", "xterm-256color").env_remove("CI");
    command
}

/// A project with one persistent Python sandbox, `box`, defined with the agent by one run.
fn project_with_a_sandbox(agent: &Agent) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: \"true\"\n",
    )
    .expect("cave.yaml");
    let first = agent.bkgr(project.path(), &["box"]);
    assert_eq!(code(&first), 0, "bkgr box: {}", stderr(&first));
    project
}

#[test]
fn bkg_shell_types_resizes_interrupts_and_exits_with_the_shells_code() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["shell", "box", "--timeout", "5m"]));

    // Arithmetic in the commands: what comes back is the shell's answer, not the echo of our keys.
    terminal.type_in("test -t 0 && test -t 1 && echo tty-$((40+2)) $TERM\r");
    terminal.expect("tty-42 xterm-256color");

    // A program that waits for the size to change, then reports what it sees.
    terminal.type_in(
        "python3 -c 'import signal, os; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH]); \
         print(\"wait\" \"ing\", flush=True); signal.sigwait([signal.SIGWINCH]); s = os.get_terminal_size(); \
         print(\"size\", s.columns, s.lines)'\r",
    );
    terminal.expect("waiting");
    terminal.resize(100, 30);
    terminal.expect("size 100 30");
    terminal.type_in("stty size | sed 's/ /x/'\r");
    terminal.expect("30x100");

    // Ctrl-C ends the foreground command and the shell carries on. The command says when it
    // runs: a Ctrl-C typed before it started would reach the shell instead.
    terminal.type_in("python3 -c 'import time; print(\"sleep\" \"ing\", flush=True); time.sleep(1000)'\r");
    terminal.expect("sleeping");
    terminal.type_in("\x03");
    terminal.type_in("echo after-$((2+3))\r");
    terminal.expect("after-5");

    terminal.type_in("exit 7\r");
    assert_eq!(terminal.exit_code(), 7, "bkg exits with the shell's code");

    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    assert_eq!(runs[0]["exit_code"], 7, "the shell is recorded as a run of the sandbox: {runs}");
    assert!(runs[0]["sandbox_id"].as_str().is_some_and(|id| id.starts_with("box-")), "{runs}");
}

#[test]
fn bkg_exe_tty_runs_a_script_on_a_terminal() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("ask.py"),
        "import fcntl, os, sys, termios\nprint('isatty', sys.stdin.isatty(), sys.stdout.isatty(), os.environ['TERM'], flush=True)\n\
         try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\nexcept OSError as error:\n    print('tiocsti errno', error.errno)\n\
         line = input('name? ')\nprint('hello', line.upper())\nsys.exit(3)\n",
    )
    .expect("script");
    let mut terminal = OnTerminal::spawn(in_project(&agent, dir.path(), &["exe", "--tty", "ask.py"]));
    terminal.expect("isatty True True xterm-256color");
    // Injecting input stays refused on the code's own terminal (EPERM from seccomp).
    terminal.expect("tiocsti errno 1");
    terminal.expect("name? ");
    terminal.type_in("ada\r");
    terminal.expect("hello ADA");
    assert_eq!(terminal.exit_code(), 3, "bkg exits with the script's code");

    // A dumb terminal's TERM is the code's too.
    let mut dumb = in_project(
        &agent,
        dir.path(),
        &["exe", "--tty", "-t", "python", "-c", "import os; print('term', os.environ['TERM'])"],
    );
    dumb.env("TERM", "dumb");
    let mut terminal = OnTerminal::spawn(dumb);
    terminal.expect("term dumb");
    assert_eq!(terminal.exit_code(), 0);
}

/// Ctrl-D typed before bkg has put the terminal in raw mode is an end of file to the code, as on
/// its own terminal (found by a new-user trial: the line discipline kept it, and once raw it
/// reached the code as a NUL byte).
#[test]
fn ctrl_d_typed_as_a_terminal_run_starts_is_an_end_of_file() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    // One write for the answer: the echo of `after` may come while it is written, and a `print`
    // of two values writes them apart (sandboxes run Python unbuffered).
    let code = "import sys\nprint('ready', flush=True)\nsys.stdout.write('got %r\\n' % sys.stdin.readline())\n";
    std::fs::write(dir.path().join("eof.py"), code).expect("script");
    let mut terminal = OnTerminal::spawn(in_project(&agent, dir.path(), &["exe", "--tty", "eof.py"]));
    terminal.type_in("\u{4}");
    terminal.expect("ready");
    terminal.type_in("after\r");
    // Before, `got '\\x00after\\n'`.
    terminal.expect("got ''");
    assert_eq!(terminal.exit_code(), 0);
}

/// Without a pool, a terminal run's sandbox starts no interpreter ahead: it could not take one
/// (its code needs the terminal from its start), so a fork of the zygote would only be thrown
/// away, and the code would start as pid 3 instead of 2 (found by a new-user trial).
#[test]
fn without_a_pool_a_terminal_run_takes_no_fork_of_the_zygote_and_its_code_is_pid_2() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let dir = tempfile::tempdir().expect("dir");
    let first = agent.exe(&["-t", "python", "-c", "pass"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    eventually("a zygote serving", || {
        let zygote = &agent.status_json()["zygote"];
        if zygote["state"] == "serving" { Ok(()) } else { Err(zygote.to_string()) }
    });
    let forked = || agent.status_json()["zygote_runs"].as_u64();
    let before = forked();
    let mut terminal = OnTerminal::spawn(in_project(
        &agent,
        dir.path(),
        &["exe", "--tty", "-t", "python", "-c", "import os, sys; print('pid', os.getpid(), sys.stdout.isatty())"],
    ));
    terminal.expect("pid 2 True");
    assert_eq!(terminal.exit_code(), 0);
    assert_eq!(forked(), before, "{}", agent.status_json());
    // A run that can take the zygote's fork still does.
    let piped = agent.exe(&["-t", "python", "-c", "import os; print('pid', os.getpid())"]);
    assert_eq!((code(&piped), stdout(&piped).as_str()), (0, "pid 2\n"), "{}", stderr(&piped));
    assert_eq!(forked(), before.map(|runs| runs + 1), "{}", agent.status_json());
}

/// `bkg shell NAME -- PROGRAM ARGS…`: each word reaches the program as it was given (spaces,
/// quotes, `$`), as `docker exec` and `kubectl exec` take a command; `-c` and `--` are one or the other.
#[test]
fn bkg_shell_runs_the_program_given_after_dashes_with_its_words_intact() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let words = ["python3", "-c", "import sys; print(sys.argv[1:]); sys.exit(4)", "a b", "it's", "$HOME"];
    let mut terminal =
        OnTerminal::spawn(in_project(&agent, project.path(), &[&["shell", "box", "--"][..], &words].concat()));
    terminal.expect(r#"['a b', "it's", '$HOME']"#);
    assert_eq!(terminal.exit_code(), 4, "bkg exits with the program's code");

    let both =
        in_project(&agent, project.path(), &["shell", "box", "-c", "true", "--", "true"]).output().expect("bkg shell");
    assert_eq!(code(&both), 125, "{}", stderr(&both));
    assert!(stderr(&both).contains("cannot be used with"), "{}", stderr(&both));
}

#[test]
fn a_terminal_is_refused_without_one_and_an_unknown_sandbox_is_named() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let piped = in_project(&agent, project.path(), &["shell", "box"]).stdin(Stdio::null()).output().expect("bkg shell");
    assert_eq!(code(&piped), 125, "{}", stderr(&piped));
    assert!(stderr(&piped).contains("needs a terminal"), "{}", stderr(&piped));

    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["shell", "nobox"]));
    terminal.expect("no sandbox `nobox` in cave.yaml (it has: box)");
    assert_eq!(terminal.exit_code(), 125);
}

/// `bkg repl` on a real terminal: Ctrl-C at the prompt drops what was typed and gives a fresh
/// prompt (the REPL stays), Ctrl-C during an execution interrupts it, a bracket left open continues
/// the cell, output without a final newline is not wiped by the next prompt, a dead interpreter is
/// replaced, and Ctrl-D leaves with 0, running first the cell typed at `...`.
#[test]
fn bkg_repl_keeps_going_on_ctrl_c_and_leaves_on_ctrl_d() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["repl", "box"]));
    terminal.expect(">>> ");
    // Lines that come at once (typed ahead, or sent by a program without bracketed paste) each
    // run, in order (found by a new-user trial: all but the first were lost).
    terminal.type_in("p = 1\rq = 2\rr = 3\rprint('sum', p + q + r)\r");
    terminal.expect("sum 6");
    terminal.expect(">>> ");
    terminal.type_in("x = 40");
    terminal.type_in("\x03");
    terminal.expect(">>> ");
    terminal.type_in("print('x' in globals(), 40 + 2)\r");
    terminal.expect("False 42");
    terminal.type_in("import time; print('sleep' 'ing', flush=True); time.sleep(1000)\r");
    terminal.expect("sleeping");
    terminal.type_in("\x03");
    terminal.expect("interrupted");
    terminal.expect(">>> ");
    // Each Ctrl-C is an interrupt: code that catches the first gets the second.
    terminal.type_in(
        "exec(\"import time\\nn = 0\\nwhile n < 2:\\n try:\\n  print('wait', n, flush=True); time.sleep(600)\\n \
         except KeyboardInterrupt:\\n  n += 1; print('caught', n, flush=True)\")\r",
    );
    terminal.expect("wait 0");
    terminal.type_in("\x03");
    terminal.expect("caught 1");
    terminal.expect("wait 1");
    terminal.type_in("\x03");
    terminal.expect("caught 2");
    terminal.expect(">>> ");
    // A bracket left open mid-line continues the cell; its closing line runs it.
    terminal.type_in("print(1,\r");
    terminal.expect("... ");
    terminal.type_in("2)\r");
    terminal.expect("1 2");
    terminal.expect(">>> ");
    // Output without a final newline stays on screen: the next prompt starts a line of its own.
    terminal.type_in("print('no new' 'line', end='')\r");
    terminal.expect("no newline\r\n");
    terminal.expect(">>> ");
    // An interpreter that dies is replaced: the REPL goes on.
    terminal.type_in("import os; os._exit(4)\r");
    terminal.expect("the next code runs in a fresh one");
    terminal.expect("interpreter is ready");
    terminal.type_in("print('alive' 'again')\r");
    terminal.expect("aliveagain");
    terminal.expect(">>> ");
    // Ctrl-D at `...` runs the cell typed so far before leaving.
    terminal.type_in("for i in range(2):\r");
    terminal.expect("... ");
    terminal.type_in("    print('ctrl-d ran', i)\r");
    terminal.expect("... ");
    terminal.type_in("\x04");
    terminal.expect("ctrl-d ran 0");
    terminal.expect("ctrl-d ran 1");
    assert_eq!(terminal.exit_code(), 0, "Ctrl-D leaves the REPL");
}

/// `exit()` at `bkg repl`'s prompt leaves it as Python's own prompt does, the session kept (was:
/// a SystemExit traceback; found by a new-user trial).
#[test]
fn exit_at_the_repl_prompt_leaves_it() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["repl", "box"]));
    terminal.expect(">>> ");
    terminal.type_in("kept = 7\r");
    terminal.expect(">>> ");
    terminal.type_in("exit()\r");
    assert_eq!(terminal.exit_code(), 0, "exit() leaves the REPL");
    assert!(!terminal.rest_of_screen().contains("SystemExit"));
    let mut again = OnTerminal::spawn(in_project(&agent, project.path(), &["repl", "box"]));
    again.expect(">>> ");
    again.type_in("print('kept', kept)\r");
    again.expect("kept 7");
    // At the prompt: typed while the cell's output is still coming, the terminal is not yet the
    // line editor's, and a Ctrl-D there is the line discipline's end of file, not a key.
    again.expect(">>> ");
    again.type_in("\x04");
    assert_eq!(again.exit_code(), 0);
}

/// Ctrl-C at a question bkg asks ends it with 130 and leaves the terminal as it was: echo on
/// after a password's prompt, the cursor shown after a list's (found by a new-user trial: the
/// shell showed nothing typed after `bkg secrets set`, and no cursor after `bkg init`).
#[test]
fn ctrl_c_at_a_prompt_ends_bkg_with_130_and_the_terminal_as_it_was() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["secrets", "set", "FOO"]));
    terminal.expect("value of FOO");
    // The prompt is written before the terminal's echo is turned off.
    eventually("echo turned off for the value", || if terminal.echoes() { Err("echo on".to_owned()) } else { Ok(()) });
    terminal.type_in("\x03");
    assert_eq!(terminal.exit_code(), 130);
    assert!(terminal.echoes(), "echo is back on");

    let mut terminal =
        OnTerminal::spawn(in_project(&agent, project.path(), &["init", "--namespace", "team", "--sandbox", "app"]));
    terminal.expect("Type");
    terminal.type_in("\x03");
    assert_eq!(terminal.exit_code(), 130);
    let screen = terminal.rest_of_screen();
    assert!(
        screen.ends_with("\x1b[?25h\n") || screen.ends_with("\x1b[?25h\r\n"),
        "the cursor is shown at the end: {screen:?}"
    );
    assert!(!project.path().join("cave.yaml").exists(), "nothing is written");
}

/// A shell whose client is gone is hung up (SIGHUP to its group, as a closed terminal does), not
/// asked with SIGTERM, which an interactive shell ignores until the grace's SIGKILL (found by a
/// new-user trial: a killed `bkg shell` held its sandbox for the whole grace).
#[test]
fn a_shell_whose_client_is_gone_is_hung_up() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["shell", "box", "--timeout", "5m"]));
    terminal.type_in("echo up-$((20+1))\r");
    terminal.expect("up-21");
    terminal.child.kill().expect("kill bkg");
    let _ = terminal.exit_code();
    let record = eventually("the shell's run recorded as ended", || {
        let listed = agent.bkg_in(project.path(), &["runs", "ls", "--json", "-n", "1"]);
        let runs: serde_json::Value = serde_json::from_slice(&listed.stdout).map_err(|error| error.to_string())?;
        match runs.get(0) {
            Some(run) if !run["finished_at_ms"].is_null() => Ok(run.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!((record["killed_by"].as_str(), record["signal"].as_i64()), (Some("cancelled"), Some(1)), "{record}");
}

/// `bkg stop` of a sandbox whose shell is open ends the shell, and its `bkg shell` says it was
/// stopped as bkgr says it, not cancelled by `bkg runs cancel` or the API (found by a new-user
/// trial).
#[test]
fn a_shell_stopped_by_bkg_stop_says_it_was_stopped() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["shell", "box", "--timeout", "5m"]));
    terminal.type_in("echo up-$((30+3))\r");
    terminal.expect("up-33");
    let stopped = agent.bkg_in(project.path(), &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    terminal.expect("bkg: stopped (`bkg stop`, `bkg rm` or `bkg runs cancel`");
    assert_eq!(terminal.exit_code(), 130);
}

/// `bkg shell NAME` outside any project finds the sandbox as `bkg exec` does, by name among
/// those the agent shows (was: "no cave.yaml", so a remote user, who has no project, could not
/// open one; found by a new-user trial).
#[test]
fn bkg_shell_outside_a_project_finds_the_sandbox_by_name() {
    let agent = Agent::start();
    let _project = project_with_a_sandbox(&agent);
    let elsewhere = tempfile::tempdir().expect("a directory without a cave.yaml");
    let mut terminal =
        OnTerminal::spawn(in_project(&agent, elsewhere.path(), &["shell", "box", "-c", "echo hi-$((1+1))"]));
    terminal.expect("hi-2");
    assert_eq!(terminal.exit_code(), 0);
}

/// Found by a new-user trial: `bkg exe` out of its terminal's foreground (under `timeout`, or
/// `bkg exe job.py &`) read the terminal for the run's stdin and was stopped there (SIGTTIN)
/// though the script read nothing; `timeout` then could not end it. `script` gives the commands
/// a terminal, of which `timeout` takes its command out of the foreground.
#[test]
fn a_run_out_of_its_terminals_foreground_does_not_stop_to_read_it() {
    let agent = Agent::start();
    let command = format!(
        "timeout 30 {} exe --type python -c 'print(6 * 7)' 2>/dev/null; echo rc=$?",
        bkg_tests::bkg_bin().display()
    );
    let output = Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let said = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert_eq!((output.status.code(), said.as_str()), (Some(0), "42\nrc=0\n"), "{}", stderr(&output));
}

/// SIGTERM or SIGHUP from elsewhere (`kill`, `timeout`, a closed window) ends a run on a terminal
/// as it ends `bkg exe`'s, and `bkg repl` at its prompt at once: each leaves the terminal as it
/// was, echoing (found by a new-user trial: bkg died of the signal with its terminal raw).
#[test]
fn a_stop_signal_leaves_the_terminal_as_it_was() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let signal = |terminal: &OnTerminal, signal: i32| {
        // SAFETY: kill(2) on the bkg this test started; no memory is involved.
        unsafe { libc::kill(terminal.child.id() as i32, signal) };
    };
    for (args, sent, code) in [
        (&["shell", "box"][..], libc::SIGTERM, 143),
        (&["shell", "box"][..], libc::SIGHUP, 129),
        (
            &["exe", "--tty", "--type", "python", "-c", "import time; print('up', flush=True); time.sleep(600)"][..],
            libc::SIGTERM,
            143,
        ),
    ] {
        let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), args));
        terminal.expect(if args[0] == "shell" { "$ " } else { "up" });
        eventually("the terminal made raw", || if terminal.echoes() { Err("echo on".to_owned()) } else { Ok(()) });
        signal(&terminal, sent);
        assert_eq!(terminal.exit_code(), code, "{args:?}: {}", terminal.rest_of_screen());
        assert!(terminal.echoes(), "{args:?}: echo is back on");
    }
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["repl", "box"]));
    terminal.expect(">>> ");
    eventually("the prompt made raw", || if terminal.echoes() { Err("echo on".to_owned()) } else { Ok(()) });
    signal(&terminal, libc::SIGTERM);
    let status = terminal.child.wait().expect("wait for bkg");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM), "{status}");
    assert!(terminal.echoes(), "echo is back on after the repl");
}

/// A repl whose session is busy with an execution from elsewhere says so and keeps its prompt
/// (found by a new-user trial: it ended with 125, the cell lost).
#[test]
fn a_repl_whose_session_is_busy_elsewhere_keeps_its_prompt() {
    let agent = Agent::start();
    let project = project_with_a_sandbox(&agent);
    let mut terminal = OnTerminal::spawn(in_project(&agent, project.path(), &["repl", "box"]));
    terminal.expect(">>> ");
    let mut elsewhere = in_project(&agent, project.path(), &["exec", "box", "-c", "import time; time.sleep(600)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bkg exec");
    eventually("the other execution running", || {
        let status = in_project(&agent, project.path(), &["status", "box"]).output().expect("bkg status");
        if stdout(&status).contains("executing") { Ok(()) } else { Err(stdout(&status)) }
    });
    terminal.type_in("print(6 * 7)\r");
    terminal.expect("is running an execution from elsewhere; this cell was not run");
    terminal.expect(">>> ");
    let _ = elsewhere.kill();
    let _ = elsewhere.wait();
    let interrupted = in_project(&agent, project.path(), &["exec", "box", "--interrupt"]).output().expect("interrupt");
    assert_eq!(code(&interrupted), 0, "{}", stderr(&interrupted));
    terminal.type_in("print(6 * 7)\r");
    terminal.expect("42");
    terminal.expect(">>> ");
    terminal.type_in("\x04");
    assert_eq!(terminal.exit_code(), 0);
}
