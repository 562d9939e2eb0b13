//! What the host gives: the agent's checks at start, its security level in status, run results
//! and the audit log, and `bkg doctor` (docs/compatibility.md, "Hosts").

use std::path::Path;
use std::process::{Command, Output};

use bkg_tests::{Agent, AgentOptions, bin_dir, code, examples_dir, stderr, stdout};

/// Starts `bkg-agent --foreground` with `args` where it must refuse to start.
fn refused_start(args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (refused_start_in(dir.path(), args), dir)
}

/// `refused_start` in `dir`, whose `state` (the state directory) may be there already.
fn refused_start_in(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(bin_dir().join("bkg-agent"))
        .arg("--foreground")
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-refused-{}", std::process::id()))
        .args(args)
        .output()
        .expect("run bkg-agent");
    assert!(!dir.join("agent.sock").exists(), "a refused agent must not serve");
    output
}

#[test]
fn an_agent_whose_runtime_does_not_exist_refuses_to_start_with_one_line_and_the_fix() {
    let (output, _dir) = refused_start(&["--python", "/nonexistent/python3"]);
    assert_eq!(code(&output), 1, "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output).trim_end(),
        "bkg-agent: runtime.python: --python /nonexistent/python3 does not exist; fix: install python there, or \
         start the agent with --python PATH to an interpreter"
    );
}

/// Anything answers `--version`; the agent wants its interpreter's own answer.
#[test]
fn an_agent_whose_python_is_another_program_refuses_to_start() {
    let (output, _dir) = refused_start(&["--python", "/usr/bin/node"]);
    assert_eq!(code(&output), 1, "stderr: {}", stderr(&output));
    let said = stderr(&output);
    assert!(
        said.starts_with(
            "bkg-agent: runtime.python: --python /usr/bin/node is not a python interpreter: its `--version` says `v"
        ),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
}

/// A flag's bad value is the usage error (2) of the command given it, also when the agent would
/// go on in the background (it was the background agent's failure, 1, with a state directory
/// made for its log).
#[test]
fn a_bad_flag_value_is_exit_2_before_the_agent_goes_to_the_background() {
    for flag in ["--egress-allow=a b", "--warm-pool-memory=x", "--health-interval=x", "--disk-budget=x"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new(bin_dir().join("bkg-agent"))
            .arg(flag)
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup-dir")
            .arg(format!("bkg-test-refused-{}", std::process::id()))
            .output()
            .expect("run bkg-agent");
        assert_eq!(code(&output), 2, "{flag}: {}", stderr(&output));
        let flag_name = flag.split('=').next().unwrap_or_default();
        assert!(stderr(&output).starts_with(&format!("bkg-agent: {flag_name}")), "{flag}: {}", stderr(&output));
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
        assert!(!dir.path().join("state").exists(), "{flag}: a state directory was made");
    }
    // Nor is a directory given changed, nor are parents made (found by a new-user trial: an
    // existing one was made 0700, and the parents of a missing one were left).
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    for state_dir in [shared.clone(), dir.path().join("a/deep/state")] {
        let output = Command::new(bin_dir().join("bkg-agent"))
            .arg("--warm-pool-memory=x")
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--cgroup-dir")
            .arg(format!("bkg-test-refused-{}", std::process::id()))
            .output()
            .expect("run bkg-agent");
        assert_eq!(code(&output), 2, "{}", stderr(&output));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&shared).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o755, "the directory given was changed");
    assert!(!dir.path().join("a").exists(), "parents of a state directory were made");
}

/// A start that fails once the store is open (here: the TCP port is taken) leaves no socket
/// file behind for a client to find and wait on.
#[test]
fn an_agent_whose_port_is_taken_says_so_in_one_line_and_leaves_no_socket() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("its address").to_string();
    let (output, _dir) = refused_start(&["--listen", &address, "--warm-pool", "0"]);
    assert_eq!(code(&output), 1, "stderr: {}", stderr(&output));
    let said = stderr(&output);
    let lines: Vec<&str> = said.lines().filter(|line| line.starts_with("bkg-agent: ")).collect();
    assert_eq!(lines.len(), 1, "{said}");
    assert!(lines[0].starts_with(&format!("bkg-agent: listen on {address} (is another agent")), "{said}");
    assert!(lines[0].ends_with("or give another --listen): Address already in use (os error 98)"), "{said}");
}

/// A file at the `--socket` path is the user's, not a stale socket: the agent refuses to start
/// and leaves it as it is (found by a new-user trial: it was deleted without a word).
#[test]
fn an_agent_given_a_files_path_as_its_socket_refuses_and_keeps_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "important\n").expect("the user's file");
    let output = Command::new(bin_dir().join("bkg-agent"))
        .arg("--foreground")
        .arg("--socket")
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-file-socket-{}", std::process::id()))
        .args(["--warm-pool", "0"])
        .output()
        .expect("run bkg-agent");
    assert_eq!(code(&output), 1, "stderr: {}", stderr(&output));
    let said = stderr(&output);
    let lines: Vec<&str> = said.lines().filter(|line| line.starts_with("bkg-agent: ")).collect();
    assert_eq!(
        lines,
        [format!("bkg-agent: {} exists and is not a socket: give --socket a path of its own", file.display())],
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("the file is still there"), "important\n");
}

/// Waits until `agent`, started by a test with its own flags, answers on `socket`.
fn until_it_answers(agent: &mut std::process::Child, socket: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(agent.try_wait().expect("try_wait").is_none(), "the agent ended");
        assert!(std::time::Instant::now() < deadline, "the agent did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Stops an agent a test started with SIGTERM, as a service manager does.
fn stop(mut agent: std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on the agent this test started; no memory is involved.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait().expect("the agent stops")
}

/// An agent whose state is in `dir`, on `socket`, open to the members of `group`; once it answers.
fn start_with_socket_group(
    dir: &std::path::Path,
    socket: &std::path::Path,
    group: &str,
    uids: &bkg_tests::UidRange,
    log: std::process::Stdio,
) -> std::process::Child {
    let mut agent = Command::new(bin_dir().join("bkg-agent"))
        .arg("--foreground")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-socket-group-{group}-{}", std::process::id()))
        .args(["--warm-pool", "0", "--socket-group", group, "--uid-base", &uids.base.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start bkg-agent");
    until_it_answers(&mut agent, socket);
    agent
}

/// With a socket group, every directory the agent makes on the way to its socket is 0755, so
/// the socket's own mode decides who gets in (found by a new-user trial: all but the last were
/// left 0700, and the group was kept out).
#[test]
fn the_directories_made_for_a_group_socket_let_the_group_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pub/sub/agent.sock");
    let uids = bkg_tests::UidRange::reserve();
    let agent = start_with_socket_group(dir.path(), &socket, "daemon", &uids, std::process::Stdio::null());
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("made").permissions().mode() & 0o777;
    let modes = (mode(&dir.path().join("pub")), mode(&dir.path().join("pub/sub")), mode(&socket));
    let stopped = stop(agent);
    assert_eq!(modes, (0o755, 0o755, 0o660));
    assert!(stopped.success(), "{stopped}");
}

/// The agent warns that the socket's group cannot reach the socket only when its directory keeps
/// them out: one of their group that lets its group through (0710 root:GROUP) does not, and a
/// member's run goes through it (found by a new-user trial: it was warned about all the same);
/// one closed to all but root (0700) does.
#[test]
fn the_socket_directory_is_said_to_keep_the_group_out_only_when_it_does() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOGROUP: u32 = 65534;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    for (mode, kept_out) in [(0o710, false), (0o700, true)] {
        let socket_dir = dir.path().join(format!("run-{mode:o}"));
        std::fs::create_dir(&socket_dir).expect("mkdir");
        std::os::unix::fs::chown(&socket_dir, None, Some(NOGROUP)).expect("chgrp nogroup");
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let socket = socket_dir.join("agent.sock");
        let log_path = dir.path().join(format!("agent-{mode:o}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let uids = bkg_tests::UidRange::reserve();
        let agent = start_with_socket_group(dir.path(), &socket, "nogroup", &uids, log.into());
        // nobody, whose group is nogroup.
        let run = Command::new(bin_dir().join("bkg"))
            .args(["exe", "--type", "python", "-c", "print('ran')"])
            .env("BKG_SOCKET", &socket)
            .env("BKG_NO_AUTOSTART", "1")
            .current_dir(dir.path())
            .uid(65534)
            .gid(NOGROUP)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bkg exe");
        // Found by a new-user trial: a local user's `bkg ui` was told to log in with a key, not
        // how to get one.
        let ui = Command::new(bin_dir().join("bkg"))
            .args(["ui"])
            .env("BKG_SOCKET", &socket)
            .env("BKG_NO_AUTOSTART", "1")
            .current_dir(dir.path())
            .uid(65534)
            .gid(NOGROUP)
            .output()
            .expect("bkg ui");
        let stopped = stop(agent);
        assert!(stopped.success(), "{stopped}");
        if !kept_out {
            assert_ne!(code(&ui), 0, "{}", stderr(&ui));
            assert!(stderr(&ui).contains("make a key (`bkg keys create --role session`)"), "{}", stderr(&ui));
        }
        let said = std::fs::read_to_string(&log_path).expect("the agent's log");
        let warned = said.contains("the socket's directory is closed to");
        assert_eq!(warned, kept_out, "mode {mode:o}: {said}");
        assert_eq!(code(&run) == 0, !kept_out, "mode {mode:o}: {}", stderr(&run));
    }
}

/// A project directory the user cannot look into is said to be that, not a directory without a
/// cave.yaml (found by a new-user trial: `bkg status api -C DIR` said "run bkg init first").
#[test]
fn a_project_directory_the_user_cannot_enter_is_named_as_such() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let project = dir.path().join("private");
    std::fs::create_dir(&project).expect("mkdir");
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(project.join("cave.yaml"), "version: 1\nsandboxes:\n  api:\n    type: python\n").expect("cave.yaml");
    let socket = dir.path().join("run/agent.sock");
    let uids = bkg_tests::UidRange::reserve();
    let agent = start_with_socket_group(dir.path(), &socket, "nogroup", &uids, std::process::Stdio::null());
    // nobody, whose group is nogroup: a local user of this agent.
    let status = Command::new(bin_dir().join("bkg"))
        .args(["status", "api", "-C"])
        .arg(&project)
        .env("BKG_SOCKET", &socket)
        .env("BKG_NO_AUTOSTART", "1")
        .current_dir(dir.path())
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bkg status");
    let stopped = stop(agent);
    let said = String::from_utf8_lossy(&status.stderr).into_owned();
    assert_eq!(status.status.code(), Some(125), "{said}");
    assert!(said.contains(&format!("cannot look for cave.yaml in {}: Permission denied", project.display())), "{said}");
    assert!(stopped.success(), "{stopped}");
}

/// A relative `--state-dir` is taken from where the agent starts (found by a new-user trial: the
/// agent said ready, and every run failed to find its disk image from its sandbox's directory).
#[test]
fn a_relative_state_dir_is_taken_from_where_the_agent_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let uids = bkg_tests::UidRange::reserve();
    let mut agent = Command::new(bin_dir().join("bkg-agent"))
        .current_dir(dir.path())
        .args(["--foreground", "--state-dir", "relative/state", "--warm-pool", "0"])
        .arg("--socket")
        .arg(&socket)
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-relative-{}", std::process::id()))
        .args(["--uid-base", &uids.base.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bkg-agent");
    until_it_answers(&mut agent, &socket);
    let ran = Command::new(bin_dir().join("bkg"))
        .args(["exe", "--type", "python", "-c", "print('ran')"])
        .env("BKG_SOCKET", &socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bkg exe");
    let stopped = stop(agent);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ran\n", "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(dir.path().join("relative/state/state.db").is_file());
    assert!(stopped.success(), "{stopped}");
}

/// A state directory another user owns is refused (its owner could read or replace the keys in
/// it, whatever its mode), and the store's files are made private (found by a new-user trial).
#[test]
fn a_state_dir_another_user_owns_is_refused_and_the_store_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::write(state.join("state.db"), b"").expect("state.db");
    std::fs::set_permissions(state.join("state.db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let start = || {
        let uids = bkg_tests::UidRange::reserve();
        Command::new(bin_dir().join("bkg-agent"))
            .args(["--foreground", "--warm-pool", "0", "--uid-base", &uids.base.to_string()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--cgroup-dir")
            .arg(format!("bkg-test-foreign-{}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bkg-agent")
    };
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let refused = start();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("belongs to uid 65534, not to the agent's uid 0"), "{said}");
    // Refused as it was found (it was made 0700 first: found by a new-user trial).
    let mode = std::fs::metadata(&state).expect("state").permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "another user's directory was changed");
    // Its own: the agent starts, with the store made private.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).expect("chown back");
    let uids = bkg_tests::UidRange::reserve();
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new(bin_dir().join("bkg-agent"))
        .args(["--foreground", "--warm-pool", "0", "--uid-base", &uids.base.to_string()])
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-foreign-{}", std::process::id()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bkg-agent");
    until_it_answers(&mut agent, &socket);
    assert!(stop(agent).success());
    let mode = std::fs::metadata(state.join("state.db")).expect("state.db").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// An agent refused another's cgroup directory has written nothing: the state directory it
/// was given, new, is not left behind (found by a new-user trial: its audit log and store were).
#[test]
fn an_agent_refused_anothers_cgroup_directory_leaves_no_state_directory() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let uids = bkg_tests::UidRange::reserve();
    let refused = Command::new(bin_dir().join("bkg-agent"))
        .args(["--foreground", "--warm-pool", "0", "--uid-base", &uids.base.to_string()])
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .args(["--cgroup-dir", &agent.cgroup_dir])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bkg-agent");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is in use by another agent"), "{said}");
    assert!(!state.exists(), "{:?}", std::fs::read_dir(&state).map(|entries| entries.count()));
}

/// `bkg agent start --state-dir DIR` where an agent with another state directory already serves
/// the socket says so (exit 125) rather than "already running" with DIR ignored (found by a
/// new-user trial); the same directory is the agent asked for.
#[test]
fn agent_start_on_a_socket_an_agent_with_another_state_dir_serves_is_refused() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let elsewhere = agent.dir.path().join("elsewhere");
    let refused = agent.bkg().args(["agent", "start", "--state-dir"]).arg(&elsewhere).output().expect("bkg");
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    let expected = format!(
        "bkg: the agent on {} keeps its state in {}, not {}: stop it first (`bkg agent stop`), or start this one on another socket (BKG_SOCKET)\n",
        agent.socket.display(),
        agent.state_dir.display(),
        elsewhere.display()
    );
    assert_eq!(stderr(&refused), expected);
    let same = agent.bkg().args(["agent", "start", "--state-dir"]).arg(&agent.state_dir).output().expect("bkg");
    assert_eq!(
        (code(&same), stderr(&same)),
        (0, format!("bkg: an agent is already running on {}\n", agent.socket.display()))
    );
}

/// `bkg agent start` that the agent refuses for a flag's value says so in one line (was: clap's
/// three, blank and advice included; found by a new-user trial).
#[test]
fn agent_start_refused_for_a_flag_says_why_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bkg_tests::bkg_bin())
        .args(["agent", "start", "--state-dir"])
        .arg(dir.path().join("state"))
        .env("BKG_SOCKET", dir.path().join("agent.sock"))
        .env("BKG_UID_BASE", "5")
        .output()
        .expect("bkg agent start");
    assert_eq!(code(&output), 125, "{}", stderr(&output));
    let said = stderr(&output);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.starts_with("bkg: invalid value '5' for '--uid-base"), "{said}");
    // bkg-agent itself says it in one line too, as its other refusals (clap's own is three).
    let direct =
        Command::new(bkg_tests::bin_dir().join("bkg-agent")).args(["--uid-base", "5"]).output().expect("bkg-agent");
    assert_eq!(code(&direct), 2, "{}", stderr(&direct));
    assert_eq!(stderr(&direct).lines().count(), 1, "{}", stderr(&direct));
    assert!(stderr(&direct).starts_with("bkg-agent: invalid value '5' for '--uid-base"), "{}", stderr(&direct));
    // A flag of a few values names them (found by a new-user trial of --zygote).
    let values =
        Command::new(bkg_tests::bin_dir().join("bkg-agent")).args(["--zygote", "maybe"]).output().expect("bkg-agent");
    assert_eq!((code(&values), stderr(&values).lines().count()), (2, 1), "{}", stderr(&values));
    assert!(
        stderr(&values).contains("'maybe' for '--zygote <BOOL>' [possible values: true, false]"),
        "{}",
        stderr(&values)
    );
    // A flag that needs another names the one missing (found by a new-user trial: the message
    // ended at "were not provided:").
    let missing = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
        .args(["--tls-cert", "/nonexistent.pem", "--listen", "127.0.0.1:0"])
        .output()
        .expect("bkg-agent");
    assert_eq!((code(&missing), stderr(&missing).lines().count()), (2, 1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("were not provided: --tls-key <PEM> (`bkg-agent --help`"),
        "{}",
        stderr(&missing)
    );
}

/// A `--cgroup-dir` that is not one plain name is a usage error, found before anything is written.
#[test]
fn a_cgroup_dir_that_would_climb_out_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bin_dir().join("bkg-agent"))
        .args(["--foreground", "--cgroup-dir", "../x", "--socket"])
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run bkg-agent");
    assert_eq!(code(&output), 2, "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("'--cgroup-dir <CGROUP_DIR>': \"../x\" is not usable"), "{}", stderr(&output));
    assert!(!dir.path().join("state").exists(), "nothing is written before the flags are checked");
}

/// A value the agent parses itself (sizes, durations, counts, rules, groups) is a usage error
/// as clap's own are: one line naming the flag, exit 2 (docs/operations.md).
#[test]
fn a_flag_value_the_agent_cannot_parse_is_a_usage_error() {
    for (flag, value, says) in [
        ("--max-memory", "lots", "--max-memory: `lots` is not a size"),
        ("--disk-budget", "12XB", "--disk-budget: `12XB` is not a size"),
        ("--max-timeout", "soon", "--max-timeout: "),
        ("--health-interval", "0", "--health-interval: `0` is too small"),
        ("--max-running-runs", "0", "--max-running-runs must be a number above 0"),
        ("--zygote-memory", "lots", "--zygote-memory: `lots` is not a size"),
        ("--zygote-memory", "0", "--zygote-memory: `0` is too small: the least is 1 byte"),
        ("--egress-allow", "bad host!", "--egress-allow: `bad host!` is not a network rule"),
        // Found by a new-user trial: taken as `none`, and exit 1.
        ("--egress-allow", "", "--egress-allow: a rule is empty"),
        ("--egress-allow", "none,*", "--egress-allow none allows nothing: give it alone, not beside *"),
        ("--retention", "x", "retention \"x\": `x` is not a duration"),
        // Found by a new-user trial: exit 1, and named "artefact quota \"lots\"".
        ("--artefact-quota", "lots", "--artefact-quota: `lots` is not a size"),
        ("--artefact-quota-for", "ci=0", "--artefact-quota-for: `0` is too small: the least is 1 byte"),
        ("--artefact-quota-for", "ci", "--artefact-quota-for wants NAMESPACE=SIZE"),
        ("--retention-for", "x", "--retention-for wants NAMESPACE=DURATION"),
        ("--user-limit", "memory=lots", "--user-limit \"memory=lots\": `lots` is not a size"),
        // A maximum no run could stay under would refuse every run.
        ("--max-cpus", "0", "--max-cpus: `0` is too small: a run needs at least 0.01"),
        ("--max-cpus", "0.005", "--max-cpus: `0.005` is too small: a run needs at least 0.01"),
        ("--max-memory", "8MiB", "--max-memory: `8MiB` is too small: a run needs at least 16MiB"),
        ("--max-disk", "1KiB", "--max-disk: `1KiB` is too small: a run needs at least 16MiB"),
        ("--max-timeout", "0s", "--max-timeout: `0s` is too small: a run needs at least 1ms"),
        // A bkg_db URL that could never connect (a server down is the sync's to retry).
        ("--db-url", "mysql://u:hunter2@db/bkg", "--db-url: bkg_db URL: expected postgres://"),
        ("--db-url", "postgres://u:hunter2@db/bkg?sslmode=bogus", "--db-url: bkg_db URL: unknown sslmode \"bogus\""),
        (
            "--db-url",
            "postgres://u:hunter2@db/bkg?connect_timeout=abc",
            "--db-url: bkg_db URL: invalid connection string",
        ),
        (
            "--db-url",
            "postgres://u:hunter2@db/bkg?sslmode=require&sslrootcert=/nonexistent.pem",
            "--db-url: bkg_db TLS: /nonexistent.pem",
        ),
    ] {
        let (output, _dir) = refused_start(&[flag, value]);
        assert_eq!(code(&output), 2, "{flag} {value}: {}", stderr(&output));
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
        assert!(stderr(&output).starts_with(&format!("bkg-agent: {says}")), "{}", stderr(&output));
        assert!(!stderr(&output).contains("hunter2"), "a password is never repeated: {}", stderr(&output));
    }
}

/// A state directory that is a file is said to be one (found by a new-user trial: "create state
/// directory …: File exists (os error 17)").
#[test]
fn a_state_dir_that_is_a_file_is_said_to_be_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state");
    std::fs::write(&file, "").expect("a file");
    let output = refused_start_in(dir.path(), &[]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!("bkg-agent: --state-dir {} is a file, not a directory: give a directory\n", file.display())
    );
}

#[test]
fn an_unknown_security_level_is_a_usage_error() {
    let (output, _dir) = refused_start(&["--allow-degraded", "paranoid"]);
    assert_eq!(code(&output), 2, "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("\"paranoid\" is not a level: strict, standard or degraded"),
        "{}",
        stderr(&output)
    );
}

/// This host gives `strict` (docs/testing.md's machines all do): status, every run's JSON and
/// the agent's start record in the audit log say so.
#[test]
fn the_security_level_is_in_the_status_every_run_and_the_audit_log() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let status = agent.status_json();
    assert_eq!(status["security_level"], "strict", "{status}");
    let runtimes = status["runtimes"].as_array().cloned().unwrap_or_default();
    assert_eq!(runtimes.len(), 2, "{status}");
    assert!(runtimes[0]["version"].as_str().is_some_and(|version| version.starts_with("Python 3")), "{status}");

    let text = agent.bkg().args(["agent", "status"]).output().expect("bkg agent status");
    assert!(stdout(&text).contains("security   strict"), "{}", stdout(&text));

    let (result, _) = agent.exe_json(&[examples_dir().join("hello.py").to_str().unwrap_or_default()]);
    assert_eq!(result["security_level"], "strict", "{result}");

    let audit_dir = agent.state_dir.join("audit");
    let started = std::fs::read_dir(&audit_dir)
        .expect("audit dir")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .find(|line| line.contains("\"warm_pool\""));
    assert!(started.as_deref().is_some_and(|line| line.contains("\"security_level\":\"strict\"")), "{started:?}");
}

/// `bkg doctor --json` with `args`, run through `wrapper` (e.g. `unshare …`) when given.
fn doctor(agent: Option<&Agent>, wrapper: &[&str], args: &[&str]) -> (serde_json::Value, Output) {
    doctor_with_env(agent, wrapper, args, &[])
}

fn doctor_with_env(
    agent: Option<&Agent>,
    wrapper: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> (serde_json::Value, Output) {
    let bkg = bkg_tests::bkg_bin();
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&bkg);
            command
        }
        None => Command::new(&bkg),
    };
    command.args(["doctor", "--json"]).args(args);
    match agent {
        Some(agent) => command.env("BKG_SOCKET", &agent.socket),
        None => command.env("BKG_SOCKET", "/nonexistent/bkg/agent.sock"),
    };
    let output = command.env_remove("BKG_REMOTE").envs(env.iter().copied()).output().expect("run bkg doctor");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("bkg doctor printed no JSON ({error}): {}\n{}", stdout(&output), stderr(&output))
    });
    (report, output)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

#[test]
fn doctor_passes_here_with_an_agent_running() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let (report, output) = doctor(Some(&agent), &[], &[]);
    assert_eq!(code(&output), 0, "{report:#}");
    let not_passed: Vec<&serde_json::Value> =
        report["checks"].as_array().into_iter().flatten().filter(|check| check["status"] != "pass").collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
    assert_eq!(report["status"], "pass");
    assert_eq!(report["host_level"], "strict");
    assert_eq!(report["agent_level"], "strict");
    assert!(check(&report, "socket")["found"].as_str().is_some_and(|found| found.contains("mode 0600")), "{report:#}");
    let state_dir = check(&report, "state_dir")["found"].as_str().unwrap_or_default().to_owned();
    assert!(state_dir.starts_with(&agent.state_dir.display().to_string()), "{state_dir}");
    // Another one given: said not to be the running agent's, and not told to give it again.
    let (report, _) = doctor(Some(&agent), &[], &["--state-dir", "/nonexistent/bkg-state"]);
    let other = check(&report, "state_dir");
    assert_eq!(
        other["found"].as_str().unwrap_or_default(),
        format!("/nonexistent/bkg-state does not exist yet (the running agent's is {})", agent.state_dir.display()),
        "{other:#}"
    );
    assert_eq!(other["fix"], "an agent started with it creates it at start", "{other:#}");
}

/// Found by a new-user trial: for a user the socket refuses, doctor passed the socket (beside the
/// agent's check failing for its mode) and said the agent would make the user's own state
/// directory, which no agent of root's uses.
#[test]
fn doctor_as_a_user_the_socket_refuses_says_so_of_the_socket_and_guesses_no_state_dir() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let output = bkg_tests::bkg_as_nobody(&agent.socket, &["doctor", "--json"]).output().expect("bkg doctor");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("doctor's JSON");
    assert_eq!(code(&output), 1, "{report:#}");
    let socket = check(&report, "socket");
    assert_eq!(socket["status"], "fail", "{report:#}");
    assert!(socket["found"].as_str().is_some_and(|found| found.ends_with("uid 65534 may not use it")), "{socket}");
    // Found by a new-user trial: it was said to be shown to admins only, of an agent that had
    // told this user nothing.
    let state_dir = check(&report, "state_dir");
    assert_eq!(
        state_dir["found"], "the agent could not be asked for its state directory (see the agent check)",
        "{state_dir}"
    );
}

/// Found by a new-user trial: a regular file named by BKG_SOCKET, and a socket file nothing
/// listens on (mode 0755), were each said to let every local user reach the agent.
#[test]
fn doctor_tells_a_file_and_a_stale_socket_from_a_socket_others_may_use() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("notasock");
    std::fs::write(&file, "").expect("a regular file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (report, _) = doctor_with_env(None, &[], &[], &[("BKG_SOCKET", &file.display().to_string())]);
    let socket = check(&report, "socket");
    assert_eq!(socket["status"], "fail", "{socket}");
    assert_eq!(socket["found"], format!("{} is not a socket", file.display()), "{socket}");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind a socket"));
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (report, _) = doctor_with_env(None, &[], &[], &[("BKG_SOCKET", &stale.display().to_string())]);
    let socket = check(&report, "socket");
    assert_eq!(socket["status"], "warn", "{socket}");
    assert_eq!(socket["found"], format!("{} is stale: nothing listens on it", stale.display()), "{socket}");
    assert!(socket["fix"].as_str().is_some_and(|fix| fix.contains("agent start")), "{socket}");
}

/// A live socket's mode: others' write permission alone lets every local user connect.
#[test]
fn doctor_says_every_user_reaches_a_socket_only_when_others_may_write_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let socket_check = |mode: u32| {
        std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(mode)).expect("chmod the socket");
        let (report, _) = doctor(Some(&agent), &[], &[]);
        check(&report, "socket").clone()
    };
    let readable = socket_check(0o755);
    assert_eq!(readable["status"], "pass", "{readable}");
    let writable = socket_check(0o666);
    assert_eq!(writable["status"], "fail", "{writable}");
    assert!(writable["found"].as_str().is_some_and(|found| found.ends_with("every local user can reach it")));
    socket_check(0o600);
}

/// The agent's flags a user exported for `bkg agent start` (BKG_LISTEN, BKG_WARM_POOL, …) are not
/// `--check-host`'s: doctor's probe runs without them. Every check has its `fix` key, null when
/// it passes.
#[test]
fn doctor_is_not_misled_by_the_agents_flags_in_the_environment() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let (report, output) =
        doctor_with_env(Some(&agent), &[], &[], &[("BKG_WARM_POOL", "lots"), ("BKG_LISTEN", "nowhere")]);
    assert_eq!(code(&output), 0, "{report:#}\n{}", stderr(&output));
    assert_eq!(report["host_level"], "strict");
    for check in report["checks"].as_array().into_iter().flatten() {
        assert!(check.get("fix").is_some_and(serde_json::Value::is_null), "{check}");
    }
}

/// With --remote the agent is elsewhere: this host's kernel and state directory are not checked.
#[test]
fn doctor_with_remote_checks_the_agent_not_this_host() {
    let remote = ["--remote", "http://127.0.0.1:9"];
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path().to_str().unwrap_or_default();
    let env = [("HOME", home), ("XDG_CONFIG_HOME", home), ("BKG_CREDENTIAL_STORE", "file")];
    let (keyless, output) = doctor_with_env(None, &[], &remote, &env);
    assert_eq!(code(&output), 1, "{keyless:#}\n{}", stderr(&output));
    assert!(
        check(&keyless, "agent")["found"].as_str().is_some_and(|found| found.contains("no API key")),
        "{keyless:#}"
    );
    // A remote agent that does not answer is a failure: there is nothing to start here.
    let (report, output) = doctor_with_env(None, &[], &remote, &[("BKG_API_KEY", "bkg_admin_0")]);
    assert_eq!(code(&output), 1, "{report:#}\n{}", stderr(&output));
    let names: Vec<&str> =
        report["checks"].as_array().into_iter().flatten().filter_map(|check| check["name"].as_str()).collect();
    assert_eq!(names, ["agent"], "{report:#}");
    assert_eq!(check(&report, "agent")["status"], "fail");
    assert!(report["host_level"].is_null(), "{report:#}");
    let text = Command::new(bkg_tests::bkg_bin())
        .args([&remote[..], &["doctor"]].concat())
        .env("BKG_API_KEY", "bkg_admin_0")
        .output()
        .expect("run bkg doctor");
    assert!(
        stdout(&text).contains("host level: not checked (the agent is remote) · agent level: no agent answers"),
        "{}",
        stdout(&text)
    );
    let refused = Command::new(bkg_tests::bkg_bin())
        .args(["--remote", "http://127.0.0.1:9", "doctor", "--state-dir", "/tmp"])
        .output()
        .expect("run bkg doctor");
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--state-dir names a directory of this host"), "{}", stderr(&refused));
}

#[test]
fn doctor_fails_a_runtime_path_that_does_not_exist() {
    let (report, output) = doctor(None, &[], &["--node", "/nonexistent/node"]);
    assert_eq!(code(&output), 1, "{report:#}");
    assert_eq!(report["status"], "fail");
    let node = check(&report, "runtime.node");
    assert_eq!(node["status"], "fail");
    assert_eq!(node["found"], "--node /nonexistent/node does not exist");
    // A runtime is not part of the level: the host still gives one.
    assert_eq!(report["host_level"], "strict");
}

/// A state directory on a read-only mount of the test's own mount namespace.
#[test]
fn doctor_fails_a_state_dir_that_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let script = format!("mount -t tmpfs -o ro tmpfs {} && exec \"$0\" \"$@\"", state.display());
    let (report, output) = doctor(
        None,
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script],
        &["--state-dir", state.to_str().unwrap_or_default()],
    );
    assert_eq!(code(&output), 1, "{report:#}");
    let state_check = check(&report, "state_dir");
    assert_eq!(state_check["status"], "fail", "{report:#}");
    assert!(state_check["found"].as_str().is_some_and(|found| found.contains("Read-only file system")), "{report:#}");
    assert!(state_check["fix"].as_str().is_some_and(|fix| fix.contains("--state-dir")), "{report:#}");
}

/// A state directory on tmpfs works but would hold every sandbox's disk in the host's memory:
/// doctor warns (the agent's own probe, as the agent logs it at start), and does not fail.
#[test]
fn doctor_warns_of_a_state_dir_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let script = format!("mount -t tmpfs tmpfs {} && exec \"$0\" \"$@\"", state.display());
    let (report, output) = doctor(
        None,
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script],
        &["--state-dir", state.to_str().unwrap_or_default()],
    );
    let in_memory = check(&report, "state_dir_fs");
    assert_eq!(in_memory["status"], "warn", "{report:#}");
    assert!(in_memory["found"].as_str().is_some_and(|found| found.contains("is on tmpfs")), "{report:#}");
    assert!(in_memory["fix"].as_str().is_some_and(|fix| fix.contains("--state-dir")), "{report:#}");
    assert_eq!(check(&report, "state_dir")["status"], "pass", "{report:#}");
    // Only the agent that does not answer (none runs for this test) and this warn.
    assert_eq!(code(&output), 0, "{report:#}");
}

/// Network namespaces blocked in a user namespace of the test's own (`user.max_net_namespaces`
/// is per user namespace): doctor, and the agent's probe it runs, find the kind missing.
#[test]
fn doctor_fails_a_namespace_kind_the_host_blocks() {
    let script = "echo 0 > /proc/sys/user/max_net_namespaces && exec \"$0\" \"$@\"";
    let (report, output) = doctor(None, &["unshare", "--user", "--map-root-user", "sh", "-c", script], &[]);
    assert_eq!(code(&output), 1, "{report:#}");
    let net = check(&report, "namespace.net");
    assert_eq!(net["status"], "fail", "{report:#}");
    assert!(net["found"].as_str().is_some_and(|found| found.contains("ENOSPC")), "{net}");
    assert!(net["fix"].as_str().is_some_and(|fix| fix.contains("user.max_net_namespaces")), "{net}");
    assert_eq!(check(&report, "namespace.uts")["status"], "pass");
    // Without every namespace kind there is no level at all.
    assert_eq!(report["host_level"], serde_json::Value::Null);
}

/// The controllers `/proc/cgroups` shows bound to a cgroup v1 hierarchy (so absent from v2).
fn bound_to_v1(controllers: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/cgroups").expect("/proc/cgroups");
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?))
        })
        .filter(|(name, hierarchy)| controllers.contains(name) && *hierarchy != "0")
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// cgroup2 mounted at /sys/fs/cgroup in the test's own mount namespace: the agent takes the host
/// for a v2 one. On a v1 host (the test machines) the controllers the limits need are bound to
/// v1 and cannot be enabled in v2: doctor names them and the agent refuses to start with one
/// line. On a v2 host the same mount offers them and the check passes.
#[test]
fn a_cgroup2_hierarchy_is_judged_by_the_controllers_it_really_offers() {
    let script = "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"";
    let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script];
    let (report, _) = doctor(None, &wrapper, &[]);
    let cgroups = check(&report, "cgroups");
    let found = cgroups["found"].as_str().unwrap_or_default();
    assert!(found.starts_with("cgroup v2"), "{cgroups}");
    let bound = bound_to_v1(&["cpu", "memory", "pids"]);
    if bound.is_empty() {
        assert_eq!(cgroups["status"], "pass", "{cgroups}");
        return;
    }
    assert_eq!(cgroups["status"], "fail", "{cgroups}");
    assert!(found.contains(&format!("lacks the {} controllers", bound.join(", "))), "{cgroups}");
    assert_eq!(report["host_level"], serde_json::Value::Null);

    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(bin_dir().join("bkg-agent"))
        .arg("--foreground")
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-v2-{}", std::process::id()))
        .output()
        .expect("run bkg-agent");
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let line = stderr(&output);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("bkg-agent: cgroups: cgroup v2, but /sys/fs/cgroup lacks the"), "{line}");
    assert!(line.contains("Delegate=yes"), "{line}");
}

/// A self-signed certificate valid for `days`, made with the openssl CLI.
fn certificate(dir: &std::path::Path, days: &str) -> std::path::PathBuf {
    let cert = dir.join(format!("cert-{days}.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bkg"])
        .args(["-days", days, "-keyout"])
        .arg(dir.join(format!("key-{days}.pem")))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(output.status.success(), "openssl: {}", stderr(&output));
    cert
}

#[test]
fn doctor_checks_the_tls_certificates_expiry_when_there_is_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, _) = doctor(None, &[], &[]);
    assert!(report["checks"].as_array().is_some_and(|checks| checks.iter().all(|check| check["name"] != "tls_cert")));
    for (days, status) in [("400", "pass"), ("3", "warn")] {
        let cert = certificate(dir.path(), days);
        let (report, _) = doctor(None, &[], &["--tls-cert", cert.to_str().unwrap_or_default()]);
        assert_eq!(check(&report, "tls_cert")["status"], status, "{report:#}");
    }
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let (report, output) = doctor(None, &[], &["--tls-cert", garbage.to_str().unwrap_or_default()]);
    assert_eq!(check(&report, "tls_cert")["status"], "fail", "{report:#}");
    assert_eq!(code(&output), 1);
}
