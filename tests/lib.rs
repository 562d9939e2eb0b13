//! Test harness: each test starts its own real agent (temp socket, temp state dir, its own
//! cgroup directory and uid range) and drives it with the real `bkg` binary.

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where cargo put the workspace binaries: next to the directory of this test executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("target profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    for binary in ["bkg", "bkg-agent"] {
        assert!(
            dir.join(binary).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace`)",
            dir.join(binary).display()
        );
    }
    dir
}

pub fn bkg_bin() -> PathBuf {
    bin_dir().join("bkg")
}

/// `bkg ARGS` as the user nobody (uid 65534), with a bare environment but for `socket` as its
/// BKG_SOCKET and no autostart: a local user who is not root.
pub fn bkg_as_nobody(socket: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(bkg_bin());
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("BKG_SOCKET", socket)
        .env("BKG_NO_AUTOSTART", "1")
        .uid(65534);
    command
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("examples")
}

static NEXT_AGENT: AtomicU32 = AtomicU32::new(0);

/// A uid range no other test agent on the host has while this is held: an agent refuses to
/// start on a range that overlaps another's, and the leftovers check counts processes by uid.
/// Test processes run in parallel, so the ranges are handed out by `flock` on one file each.
pub struct UidRange {
    pub base: u32,
    _lock: std::fs::File,
}

impl UidRange {
    /// The test agents' ranges: 8192 of 65,536 uids from 2^30, above the security suite's
    /// (security/bkgsec.py) and below the agent's default.
    const FIRST: u32 = 0x4000_0000;
    const COUNT: u32 = 8192;

    pub fn reserve() -> Self {
        let locks = std::env::temp_dir().join("bkg-test-uid-ranges");
        std::fs::create_dir_all(&locks).expect("create the uid range locks' directory");
        // Spread the search start so parallel tests rarely try the same file first.
        let start = std::process::id().wrapping_mul(7919) % Self::COUNT;
        for index in (0..Self::COUNT).map(|offset| (start + offset) % Self::COUNT) {
            let lock = std::fs::File::create(locks.join(index.to_string())).expect("open a uid range lock");
            if lock.try_lock().is_ok() {
                return Self { base: Self::FIRST + index * 65_536, _lock: lock };
            }
        }
        panic!("every test uid range is held");
    }
}

/// A running agent owned by one test; stopped (and checked for leftovers) when dropped.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_dir: String,
    pub uid_base: u32,
    /// Held until the agent is dropped (after its leftovers were checked by uid).
    _uid_range: UidRange,
    child: Option<Child>,
    /// The test killed the agent on purpose and did not start it again: what it left is the
    /// crash's, not a defect of shutdown.
    crashed: bool,
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub warm_pool: usize,
    pub extra_args: Vec<String>,
    /// Extra environment of the agent process.
    pub env: Vec<(String, String)>,
    /// A command the agent is started through, which must exec it (`sh -c '…; exec "$0" "$@"'`)
    /// so that it keeps the agent's pid; the state directory exists when it runs.
    pub wrapper: Vec<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { warm_pool: 1, extra_args: Vec::new(), env: Vec::new(), wrapper: Vec::new() }
    }
}

impl AgentOptions {
    /// These options with `--max-running-runs places`.
    pub fn with_places(mut self, places: usize) -> Self {
        self.extra_args.extend(["--max-running-runs".to_owned(), places.to_string()]);
        self
    }
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(AgentOptions::default())
    }

    pub fn start_with(options: AgentOptions) -> Self {
        let mut agent = Self::unstarted();
        agent.spawn(&options);
        agent
    }

    /// Started as systemd starts it from bkg-agent.socket: `systemd-socket-activate` makes and
    /// listens on the socket, and the agent serves the descriptor it is handed (LISTEN_FDS).
    pub fn start_socket_activated() -> Self {
        let mut agent = Self::unstarted();
        agent.launch(&AgentOptions::default(), true);
        agent
    }

    /// An agent not started yet: `spawn` starts it.
    pub fn unstarted() -> Self {
        let dir = tempfile::Builder::new().prefix("bkg-e2e-").tempdir().expect("temp dir");
        let serial = NEXT_AGENT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{serial}", std::process::id());
        let uid_range = UidRange::reserve();
        Agent {
            socket: dir.path().join("agent.sock"),
            state_dir: dir.path().join("state"),
            cgroup_dir: format!("bkg-test-{tag}"),
            uid_base: uid_range.base,
            _uid_range: uid_range,
            dir,
            child: None,
            crashed: false,
        }
    }

    /// Starts (or restarts) the agent process with the same socket, state and cgroup dir.
    pub fn spawn(&mut self, options: &AgentOptions) {
        self.launch(options, false);
    }

    fn launch(&mut self, options: &AgentOptions, socket_activated: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut command = if socket_activated {
            // It execs the agent, which keeps its pid: stopping and crashing work as without it.
            let mut activate = Command::new("systemd-socket-activate");
            activate.arg("--listen").arg(&self.socket).arg(bin_dir().join("bkg-agent"));
            activate
        } else if let Some((program, args)) = options.wrapper.split_first() {
            std::fs::create_dir_all(&self.state_dir).expect("state dir");
            let mut wrapped = Command::new(program);
            wrapped.args(args).arg(bin_dir().join("bkg-agent")).arg("--socket").arg(&self.socket);
            wrapped
        } else {
            let mut direct = Command::new(bin_dir().join("bkg-agent"));
            direct.arg("--socket").arg(&self.socket);
            direct
        };
        let child = command
            .arg("--foreground")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cgroup-dir")
            .arg(&self.cgroup_dir)
            .arg("--uid-base")
            .arg(self.uid_base.to_string())
            .arg("--warm-pool")
            .arg(options.warm_pool.to_string())
            .args(&options.extra_args)
            .envs(options.env.iter().map(|(name, value)| (name, value)))
            .env("BKG_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start bkg-agent");
        self.child = Some(child);
        self.crashed = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        // A socket that accepts is not enough: a process forked by a killed agent may hold its
        // listener for a moment (until its exec), so the agent that answers must be this one.
        // (Every wrapper execs the agent: it keeps the child's pid.)
        let answers = |agent: &Self| {
            std::os::unix::net::UnixStream::connect(&agent.socket).is_ok()
                && agent.status_json_if_up().is_some_and(|status| status["pid"] == agent.pid())
        };
        while !answers(self) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited during start-up ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "agent did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent running")
    }

    /// `bkg` talking to this agent, never starting another.
    pub fn bkg(&self) -> Command {
        let mut command = Command::new(bkg_bin());
        command.env("BKG_SOCKET", &self.socket).env("BKG_NO_AUTOSTART", "1").env_remove("BKG_STATE_DIR");
        command
    }

    /// Sets secret `name` of the default namespace to `value` with `bkg secrets set`, as a user
    /// types it (a line on stdin).
    pub fn set_secret(&self, name: &str, value: &str) {
        let mut set = self.bkg().args(["secrets", "set", name]).stdin(Stdio::piped()).spawn().expect("set");
        std::io::Write::write_all(&mut set.stdin.take().expect("stdin"), format!("{value}\n").as_bytes())
            .expect("write the value");
        let set = set.wait_with_output().expect("bkg secrets set");
        assert_eq!(code(&set), 0, "{}", stderr(&set));
    }

    /// Runs `bkgr ARGS` in the project directory `dir` against this agent, with an empty stdin.
    pub fn bkgr(&self, dir: &Path, args: &[&str]) -> Output {
        self.bkgr_command(dir, args).output().expect("run bkgr")
    }

    /// `bkgr ARGS` in the project directory `dir` against this agent, with an empty stdin, to
    /// be given its stdout and stderr.
    pub fn bkgr_command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin_dir().join("bkgr"));
        command
            .args(args)
            .current_dir(dir)
            .env("BKG_SOCKET", &self.socket)
            .env("BKG_NO_AUTOSTART", "1")
            .stdin(Stdio::null());
        command
    }

    /// Runs `bkg ARGS` in directory `dir` against this agent, with an empty stdin.
    pub fn bkg_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.bkg().args(args).current_dir(dir).stdin(Stdio::null()).output().expect("run bkg")
    }

    /// Runs `bkg exe ARGS` with an empty stdin.
    pub fn exe(&self, args: &[&str]) -> Output {
        self.bkg().arg("exe").args(args).stdin(Stdio::null()).output().expect("run bkg exe")
    }

    /// Starts `bkg exe` of a script that prints `up` and then sleeps for a minute, and returns it
    /// once `up` has arrived: from then on the run is going on in its sandbox. stderr is piped.
    pub fn start_long_run(&self) -> Child {
        self.start_long_run_with(&[])
    }

    /// `bkg exe ARGS` started with no stdin, its stdout and stderr piped to the test.
    pub fn spawn_exe(&self, args: &[&str]) -> Child {
        self.bkg()
            .arg("exe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bkg exe")
    }

    /// `start_long_run` with `flags` of `bkg exe` besides its own (`--disk 8GiB`).
    pub fn start_long_run_with(&self, flags: &[&str]) -> Child {
        let code = ["--type", "python", "-c", "import time\nprint('up', flush=True)\ntime.sleep(60)"];
        let mut child = self.spawn_exe(&[&["--timeout", "60s"], flags, &code].concat());
        let mut first_line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut first_line,
        )
        .expect("read the run's first line");
        assert_eq!(first_line, "up\n", "the run did not start");
        child
    }

    /// Holds a write lock on the agent's store (a `BEGIN IMMEDIATE` in another process) until
    /// the returned child's stdin is closed: the store cannot be written meanwhile.
    pub fn lock_store(&self) -> Child {
        let mut locker = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 db = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 db.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n",
                self.state_dir.join("state.db").to_str().expect("path"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(locker.stdout.as_mut().expect("stdout")), &mut line)
            .expect("locker started");
        assert_eq!(line.trim(), "locked");
        locker
    }

    /// Runs `bkg exe --json ARGS` and parses the result.
    pub fn exe_json(&self, args: &[&str]) -> (serde_json::Value, Output) {
        let output = self.bkg().arg("exe").arg("--json").args(args).stdin(Stdio::null()).output().expect("run bkg exe");
        let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "bkg exe --json printed no JSON ({error}); status {:?}\nstdout: {}\nstderr: {}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (value, output)
    }

    /// Every record of the agent's local audit log that parses, file by file.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state_dir.join("audit"))
            .expect("audit dir")
            .flatten()
            .map(|entry| entry.path())
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect::<Vec<_>>())
            .collect()
    }

    /// `bkg agent status --json`, if an agent answers.
    fn status_json_if_up(&self) -> Option<serde_json::Value> {
        let output = self.bkg().args(["agent", "status", "--json"]).output().ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let output = self.bkg().args(["agent", "status", "--json"]).output().expect("bkg agent status");
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// Waits until no cleanup is pending and no run is active.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status_json();
            if status["pending_cleanups"] == 0 && status["active_runs"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "agent never became idle: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the warm pool holds `count` prepared sandboxes (it refills in the background).
    pub fn wait_warm(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status_json();
            if status["warm_sandboxes"].as_u64() == Some(count) {
                return;
            }
            assert!(Instant::now() < deadline, "the warm pool never held {count}: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the warm pool holds as many prepared sandboxes as it aims for, whatever a
    /// burst of runs grew that to (engine/pool.rs): nothing is being prepared for it then.
    pub fn wait_pool_full(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status_json();
            if status["warm_sandboxes"].as_u64().is_some_and(|ready| ready > 0)
                && status["warm_sandboxes"] == status["warm_target"]
            {
                return;
            }
            assert!(Instant::now() < deadline, "the warm pool never filled: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGTERM (it is our child) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY-free: kill(2) through the libc crate on our own child.
            unsafe_kill(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Waits for the agent to exit by itself (after `bkg agent stop`), at most 30 s.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the agent (our child), as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.crashed = true;
        }
    }

    /// The agent's cgroup directory and socket lock files (bkg-agent/src/engine/lock.rs), found
    /// by the state directory each names.
    fn lock_files(&self) -> Vec<PathBuf> {
        let owner = format!("state directory {}", self.state_dir.display());
        std::fs::read_dir("/run/bkg/locks")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| {
                        path.file_name().is_some_and(|name| {
                            let name = name.to_string_lossy();
                            name.starts_with("cgroup-") || name.starts_with("socket-")
                        })
                    })
                    .filter(|path| std::fs::read_to_string(path).is_ok_and(|text| text.ends_with(&owner)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything of this agent still on the host.
    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            cgroups: cgroup_dirs_named(&self.cgroup_dir),
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains(self.state_dir.to_str().unwrap_or("?")))
                .map(str::to_owned)
                .collect(),
            loop_devices: loop_devices_under(&self.state_dir),
            // A running agent holds its locks; a stopped one must have removed their files.
            lock_files: if self.child.is_some() { Vec::new() } else { self.lock_files() },
            processes: processes_with_uid_in(self.uid_base, self.uid_base + 65_536),
            sandbox_dirs: std::fs::read_dir(self.state_dir.join("sandboxes"))
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default(),
            agent_running: self.child.is_some(),
        }
    }
}

impl Drop for Agent {
    /// Ends the agent and checks that it left nothing of its own on the host: a clean shutdown
    /// must remove every run cgroup, mount, loop device, process and directory. Whatever is left
    /// (after a failure or a deliberate crash) is removed here so that it cannot pile up.
    fn drop(&mut self) {
        self.stop();
        let leftovers = self.leftovers();
        let clean = leftovers.is_clean();
        remove_cgroups_named(&self.cgroup_dir);
        // A crashed agent's lock files stay (the next holder would reuse them): no test reuses one.
        for lock_file in &leftovers.lock_files {
            let _ = std::fs::remove_file(lock_file);
        }
        if !clean && !self.crashed && !std::thread::panicking() {
            panic!("the agent left this behind after its shutdown: {leftovers:#?}\n{}", self.log());
        }
    }
}

/// Kills what is left in the run cgroups of a test agent's cgroup directory, then removes them
/// and the directory. Only the test's own agent made these, beneath its own cgroup.
fn remove_cgroups_named(name: &str) {
    for dir in cgroup_dirs_named(name) {
        for run in run_cgroups_in(&dir) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pids = std::fs::read_to_string(run.join("cgroup.procs")).unwrap_or_default();
                if pids.trim().is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in pids.lines().filter_map(|line| line.trim().parse::<u32>().ok()) {
                    unsafe_kill(pid, libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(&run);
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory effects; the pid is a child this test spawned or a process
    // in one of its agent's run cgroups.
    unsafe { libc::kill(pid as i32, signal) };
}

#[derive(Debug, Default, PartialEq)]
pub struct Leftovers {
    pub cgroups: Vec<PathBuf>,
    pub mounts: Vec<String>,
    pub loop_devices: Vec<String>,
    pub lock_files: Vec<PathBuf>,
    pub processes: Vec<u32>,
    pub sandbox_dirs: Vec<PathBuf>,
    /// Whether the agent was running when they were looked at: its zygote's cgroup
    /// (`zygote-N`, engine/zygote.rs) is then its own, as its locks are, not a run's leftover.
    pub agent_running: bool,
}

impl Leftovers {
    /// Only empty per-agent directories may remain (and a running agent's zygote cgroup); no run
    /// cgroup, mount, device, lock file, process or dir.
    pub fn is_clean(&self) -> bool {
        let the_zygotes = |cgroup: &PathBuf| {
            self.agent_running && cgroup.file_name().is_some_and(|name| name.to_string_lossy().starts_with("zygote-"))
        };
        self.mounts.is_empty()
            && self.loop_devices.is_empty()
            && self.lock_files.is_empty()
            && self.processes.is_empty()
            && self.sandbox_dirs.is_empty()
            && self.cgroups.iter().all(|dir| run_cgroups_in(dir).iter().all(the_zygotes))
    }
}

/// Every `<mount>/.../NAME` directory in the cgroup hierarchies.
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return found;
    };
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(separator + 1).copied().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let mount_point = PathBuf::from(fields[4]);
        find_dirs_named(&mount_point, name, 4, &mut found);
    }
    found
}

fn find_dirs_named(dir: &Path, name: &str, depth: u32, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if entry.file_name().to_string_lossy() == name {
            found.push(entry.path());
        } else if depth > 0 {
            find_dirs_named(&entry.path(), name, depth - 1, found);
        }
    }
}

pub fn run_cgroups_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()).collect()
        })
        .unwrap_or_default()
}

pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim()).starts_with(dir).then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Pids of live host processes whose real uid is in `[low, high)`. Zombies are left out: they
/// run nothing, and one whose parent died (a crashed agent's) waits for the host's init to
/// reap it, which a test cannot hurry.
pub fn processes_with_uid_in(low: u32, high: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let uid: u32 =
                status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()?;
            let zombie =
                status.lines().find_map(|l| l.strip_prefix("State:")).is_some_and(|s| s.trim_start().starts_with('Z'));
            ((low..high).contains(&uid) && !zombie).then_some(pid)
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name, from field 3 (the state) on: the
/// name may hold spaces, so they are read after its last `)`.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.get(stat.rfind(')')? + 2..)?.split(' ').map(str::to_owned).collect())
}

/// Pids of the live (not zombie) processes whose parent is `parent`.
pub fn live_children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|fields| {
                fields.first().is_some_and(|state| state != "Z")
                    && fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent)
            })
        })
        .collect()
}

/// The pid namespace `pid` is in, as its `/proc` link reads (`pid:[INODE]`).
fn pid_namespace(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

impl Agent {
    /// The pid 1s of this agent's sandboxes: its own children running the sandbox init
    /// (`CLONE_PARENT`), those of its warm pool and of its runs.
    pub fn sandbox_inits(&self) -> Vec<u32> {
        live_children_of(self.pid())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.split(|byte| *byte == 0).any(|arg| arg == b"__sandbox-init"))
            })
            .collect()
    }

    /// Processes with this agent's sandbox ids outside every sandbox still prepared in its warm
    /// pool, whose pid 1 holds a process of its own (its prestarted interpreter,
    /// bkg-agent/src/engine/prestart.rs): what ended runs left behind. Call it once the pool is
    /// full (`wait_warm`).
    pub fn processes_outside_prepared_sandboxes(&self) -> Vec<u32> {
        let prepared: Vec<PathBuf> = self.sandbox_inits().into_iter().filter_map(pid_namespace).collect();
        // Any other sandbox init (an ended run's, still alive) is no prepared sandbox.
        let warm = self.status_json()["warm_sandboxes"].as_u64();
        assert_eq!(Some(prepared.len() as u64), warm, "the agent's sandbox inits are its warm sandboxes, no more");
        processes_with_uid_in(self.uid_base, self.uid_base + 65_536)
            .into_iter()
            .filter(|pid| pid_namespace(*pid).is_some_and(|namespace| !prepared.contains(&namespace)))
            .collect()
    }
}

/// stdout of a finished command as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// `command` (a bkg client) started with its stdout piped and its first line read, which must
/// be `first`; the pipe is then held open and never read, as by a reader that takes nothing
/// (`| less`), for a second, long enough for the pipe and bkg's own queue to fill. The reader is
/// returned with the child: dropping it lets bkg's writes fail.
pub fn spawn_with_stdout_unread(
    mut command: Command,
    first: &str,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
    let mut unread = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    unread.read_line(&mut first_line).expect("its first line");
    assert_eq!(first_line, first);
    std::thread::sleep(Duration::from_secs(1));
    (child, unread)
}

/// The one emptied disk kept for the next sandbox of its size in `templates` (the state
/// directory's `disk-templates`, or its path through the agent's root), once it is there:
/// a temporary sandbox's disk is kept only after its result, as it is disposed of. Waits for
/// the agent to be idle first: a disk being kept is renamed `spare-N` before its image is
/// emptied (engine/disk.rs, `DiskTemplates::recycle`), so a spare seen during a disposal may
/// still be rewritten, or be an earlier run's while the last run's is still to come.
pub fn the_kept_disk(agent: &Agent, templates: &Path) -> PathBuf {
    agent.wait_idle();
    eventually("one emptied disk kept", || {
        let spares: Vec<_> = std::fs::read_dir(templates)
            .map(|entries| entries.flatten().map(|entry| entry.path()))
            .into_iter()
            .flatten()
            .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("spare-")))
            .collect();
        match spares.as_slice() {
            [kept] => Ok(kept.clone()),
            _ => Err(format!("{spares:?} in {}", templates.display())),
        }
    })
}

/// Polls `check` until it holds, for up to 30 s, and fails with what it last saw otherwise.
pub fn eventually<T: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() > deadline => panic!("{what}: last saw {seen}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
