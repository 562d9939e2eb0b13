//! The conformance suite (issue 16, docs/testing.md): the same scripts run bare, in a sandbox
//! prepared on demand with an interpreter of its own (`--warm-pool 0 --zygote false`, "cold")
//! and in one taken from the warm pool ("warm"), and everything they print, their exit status
//! and what they can learn about how they were started must be the same. A faster start (an
//! interpreter started ahead, engine/prestart.rs, or forked from the zygote, engine/zygote.rs)
//! must not be visible to the code. The scripts print facts relative to their own directory, so
//! the bare run's temporary directory and the sandbox's /workspace compare equal as `<dir>`.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bkg_tests::{Agent, AgentOptions};

const PYTHON: &str = "/usr/bin/python3";
const NODE: &str = "/usr/bin/node";
const STDIN: &str = "first line\nsecond line\n";
/// Where the sandbox puts the script (engine/request.rs).
const WORKSPACE: &str = "/workspace";
/// Who runs the bare interpreter.
const NOBODY: u32 = 65534;

/// The environment the agent gives every sandbox (engine/request.rs `sandbox_env`), given to the
/// bare run too: the code must not be able to tell them apart by it.
fn sandbox_env(home: &Path) -> Vec<(String, String)> {
    [
        ("PATH", "/opt/bkg/bin:/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", "/tmp".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("USER", "sandbox".to_owned()),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance").join(name)
}

/// What a run showed the world, with its directory written as `<dir>`.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    stdout: String,
    stderr: String,
    status: i32,
}

impl Seen {
    fn of(output: &Output, dir: &str) -> Self {
        let portable = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace(dir, "<dir>");
        let status = output.status.code().unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
        Self { stdout: portable(&output.stdout), stderr: portable(&output.stderr), status }
    }
}

/// How the run's stdout and stderr are given to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streams {
    /// A pipe each.
    Apart,
    /// One pipe for both, as after `2>&1`: what is read of it is `Seen::stdout`.
    Joined,
}

/// A pipe as a user's shell makes it: the user's own, here the bare run's (nobody), so that the
/// code may open its standard streams again by name (`/dev/stdout`), which needs the pipe's
/// owner. A sandboxed run's pipes are the agent's (engine/sandbox.rs, `code_pipe`).
fn users_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    std::os::unix::fs::fchown(&writer, Some(NOBODY), Some(NOBODY)).expect("give the pipe to nobody");
    (reader, writer)
}

fn feed(mut command: Command, streams: Streams) -> Output {
    let (stdin, mut feeder) = users_pipe();
    command.stdin(stdin);
    let (out_reader, out_writer) = users_pipe();
    let err_reader = match streams {
        Streams::Apart => {
            let (err_reader, err_writer) = users_pipe();
            command.stdout(out_writer).stderr(err_writer);
            Some(err_reader)
        }
        Streams::Joined => {
            command.stdout(out_writer.try_clone().expect("dup the pipe")).stderr(out_writer);
            None
        }
    };
    let mut child = command.spawn().expect("start the run");
    drop(command);
    let read_all = |mut reader: std::io::PipeReader| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut bytes).expect("read the run's output");
            bytes
        })
    };
    let (stdout, stderr) = (read_all(out_reader), err_reader.map(read_all));
    feeder.write_all(STDIN.as_bytes()).expect("write stdin");
    drop(feeder);
    let status = child.wait().expect("wait for the run");
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.map(|reader| reader.join().expect("stderr reader")).unwrap_or_default();
    Output { status, stdout, stderr }
}

fn bare(interpreter: &str, script: &str, args: &[&str], streams: Streams) -> Seen {
    let dir = tempfile::Builder::new().prefix("bkg-conformance-").tempdir_in("/").expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let copy = dir.path().join(script);
    std::fs::copy(script_path(script), &copy).expect("copy the script");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut command = Command::new("setpriv");
    command
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "env".into(),
            "-i".into(),
        ])
        .args(sandbox_env(dir.path()).iter().map(|(key, value)| format!("{key}={value}")))
        .arg(interpreter)
        .arg(&copy)
        .args(args)
        .current_dir(dir.path());
    // SAFETY: between fork and exec the child only makes one system call, close_range, which
    // is async-signal-safe; descriptors the test runner left open must not reach the script,
    // as none reach a sandboxed one.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    Seen::of(&feed(command, streams), &dir.path().display().to_string())
}

/// `bkg exe script -- args` against `agent`.
fn sandboxed(agent: &Agent, script: &str, args: &[&str]) -> Seen {
    sandboxed_with(agent, script, args, Streams::Apart)
}

fn sandboxed_with(agent: &Agent, script: &str, args: &[&str], streams: Streams) -> Seen {
    let mut command = agent.bkg();
    command.arg("exe").arg(script_path(script)).arg("--").args(args);
    let mut seen = Seen::of(&feed(command, streams), WORKSPACE);
    // The CLI's own note on a run that a signal ended (bkg-cli/src/stream.rs), not the code's.
    if let Some(signal) = seen.status.checked_sub(128).filter(|signal| *signal > 0) {
        seen.stderr = seen.stderr.replace(&format!("bkg: the script was killed by signal {signal}\n"), "");
    }
    seen
}

/// How many runs `agent` gave to an interpreter it had started ahead (`bkg agent status`).
fn prestarted_runs(agent: &Agent) -> u64 {
    agent.status_json()["prestarted_runs"].as_u64().unwrap_or(u64::MAX)
}

/// How many of those interpreters were forks of the zygote.
fn zygote_runs(agent: &Agent) -> u64 {
    agent.status_json()["zygote_runs"].as_u64().unwrap_or(u64::MAX)
}

struct Agents {
    cold: Agent,
    warm: Agent,
}

impl Agents {
    fn start() -> Self {
        Self {
            // Without a pool a Python run forks the zygote once one serves: `--zygote false`
            // keeps every run cold.
            cold: Agent::start_with(AgentOptions {
                warm_pool: 0,
                extra_args: vec!["--zygote".into(), "false".into()],
                ..AgentOptions::default()
            }),
            warm: Agent::start_with(AgentOptions { warm_pool: 1, ..AgentOptions::default() }),
        }
    }

    /// The same script bare, cold and warm: all three must have seen the same.
    fn compare(&self, interpreter: &str, script: &str, args: &[&str]) -> Seen {
        self.compare_with(interpreter, script, args, Streams::Apart)
    }

    /// As `compare`, the runs' stdout and stderr given as `streams`. Joined, Node's warm run
    /// starts an interpreter of its own: the one started ahead has its stderr apart.
    fn compare_with(&self, interpreter: &str, script: &str, args: &[&str], streams: Streams) -> Seen {
        let sandboxed = |agent: &Agent, script: &str, args: &[&str]| sandboxed_with(agent, script, args, streams);
        let bare = bare(interpreter, script, args, streams);
        let cold = sandboxed(&self.cold, script, args);
        // A pool sandbox starts ahead the interpreter of the run before (engine/prestart.rs):
        // after one run of this interpreter, the next takes a prepared sandbox whose interpreter
        // is already started, and that is the warm run compared. The first run waits for the
        // pool's first sandbox: one it found empty would have grown the pool, and the sandbox
        // still being prepared then (the previous interpreter's) would be the next one taken.
        self.warm.wait_warm(1);
        sandboxed(&self.warm, script, args);
        self.warm.wait_warm(1);
        let (prestarted_before, forked_before) = (prestarted_runs(&self.warm), zygote_runs(&self.warm));
        let warm = sandboxed(&self.warm, script, args);
        let prestarted = prestarted_runs(&self.warm) - prestarted_before;
        assert_eq!(prestarted, 1, "{script} {streams:?}: runs given the interpreter started ahead");
        // Python's is a fork of the zygote (engine/zygote.rs); Node has none.
        let forked = zygote_runs(&self.warm) - forked_before;
        assert_eq!(forked, u64::from(interpreter == PYTHON), "{script}: runs forked by the zygote");
        assert_eq!(prestarted_runs(&self.cold), 0, "a sandbox prepared on demand starts nothing ahead");
        assert_eq!(cold, bare, "{script} {args:?}: a cold sandbox differs from bare {interpreter}");
        assert_eq!(warm, bare, "{script} {args:?}: a warm sandbox differs from bare {interpreter}");
        bare
    }
}

#[test]
fn python_sees_the_same_start_bare_cold_and_warm() {
    let agents = Agents::start();
    let seen = agents.compare(PYTHON, "facts.py", &["7", "two words"]);
    assert_eq!(seen.status, 7, "sys.exit(7) is the exit status:\n{seen:?}");
    assert!(seen.stdout.contains("\"name\": \"__main__\""), "{seen:?}");
    assert!(seen.stdout.contains("\"stdin\": \"first line\\nsecond line\\n\""), "{seen:?}");
    assert!(seen.stdout.ends_with("handler saw [10]\natexit ran\n"), "{seen:?}");

    let traceback = agents.compare(PYTHON, "traceback.py", &[]);
    assert_eq!(traceback.status, 1);
    for line in ["File \"<dir>/traceback.py\", line 14, in <module>", "line 6, in inner", "ZeroDivisionError"] {
        assert!(traceback.stderr.contains(line), "no `{line}` in:\n{}", traceback.stderr);
    }

    let killed = agents.compare(PYTHON, "killed.py", &[]);
    assert_eq!(killed.status, 128 + libc::SIGTERM, "{killed:?}");

    let depth = agents.compare(PYTHON, "depth.py", &[]);
    assert!(depth.stdout.starts_with("limit 1000 script 9"), "{depth:?}");

    let threads = agents.compare(PYTHON, "threads.py", &[]);
    assert!(threads.stdout.starts_with("pthread_kill [10]\nthread CPU clock True\n"), "{threads:?}");
    assert!(threads.stdout.contains("seekable [False, False, False]\nstdin cannot seek:"), "{threads:?}");

    let shutdown = agents.compare(PYTHON, "shutdown.py", &[]);
    for line in
        ["finalized a cycle a global still holds", "finalized a garbage cycle", "finalized a weakly referenced object"]
    {
        assert!(shutdown.stdout.contains(line), "no `{line}` in:\n{}", shutdown.stdout);
    }
}

/// Each cold run's interpreter draws its own hash seed. Warm runs' interpreters are forks of the
/// zygote, which share its seed within one generation (docs/security.md, "The zygote"), and
/// two generations (here the zygotes of two agents) do not share one.
#[test]
fn python_hash_seeds_differ_between_cold_runs_and_between_zygote_generations() {
    let agents = Agents::start();
    let hashes: Vec<String> = (0..3).map(|_| sandboxed(&agents.cold, "hash.py", &[]).stdout).collect();
    assert!(
        hashes[0] != hashes[1] || hashes[1] != hashes[2],
        "cold: three runs with one string hash: {hashes:?} (a shared interpreter start)"
    );

    let forked = |agent: &Agent| {
        agent.wait_warm(1);
        let before = zygote_runs(agent);
        let hash = sandboxed(agent, "hash.py", &[]).stdout;
        assert_eq!(zygote_runs(agent), before + 1, "the warm run was not a fork of the zygote");
        (hash, agent.status_json()["zygote"]["generation"].as_u64())
    };
    let (first, generation) = forked(&agents.warm);
    let (second, same_generation) = forked(&agents.warm);
    assert_eq!(generation, same_generation, "the zygote was replaced between two runs");
    assert_eq!(first, second, "forks of one zygote generation share its hash seed");
    let other = Agent::start_with(AgentOptions { warm_pool: 1, ..AgentOptions::default() });
    let (another, _) = forked(&other);
    assert_ne!(first, another, "two zygotes with one hash seed");
}

#[test]
fn node_sees_the_same_start_bare_cold_and_warm() {
    let agents = Agents::start();
    let seen = agents.compare(NODE, "facts.js", &["5"]);
    assert_eq!(seen.status, 5, "process.exitCode is the exit status:\n{seen:?}");
    assert!(seen.stdout.contains("\"mainIsModule\":true"), "{seen:?}");
    assert!(seen.stdout.ends_with("SIGUSR2 handled\nexit handler with 5\n"), "{seen:?}");

    let module = agents.compare(NODE, "facts.mjs", &["an arg"]);
    assert_eq!(module.status, 0, "{module:?}");
    assert!(module.stdout.contains("\"url\":\"file://<dir>/facts.mjs\""), "{module:?}");
    assert!(module.stdout.contains("\"requireType\":\"undefined\""), "{module:?}");

    // Found by a flaky test: a prestarted Node's loader deleted itself, and each Worker, which
    // preloads it again, failed with "Cannot find module".
    let workers = agents.compare(NODE, "worker.js", &[]);
    assert_eq!(
        (workers.status, workers.stdout.as_str()),
        (0, "the worker said 42\nthe worker exited with 0\n"),
        "{workers:?}"
    );

    let traceback = agents.compare(NODE, "traceback.js", &[]);
    assert_eq!(traceback.status, 1);
    for line in ["RangeError: no zero", "at inner (<dir>/traceback.js:4:", "at outer (<dir>/traceback.js:8:"] {
        assert!(traceback.stderr.contains(line), "no `{line}` in:\n{}", traceback.stderr);
    }
}

/// Output to stdout and stderr in turn, both on one pipe (`bkg exe x.py 2>&1 | …`): bare, cold
/// and warm, it comes in the order the code wrote it (was: in pieces of each stream, a
/// traceback at times before the lines printed ahead of it, and lines glued together).
#[test]
fn stdout_and_stderr_on_one_pipe_keep_the_order_they_were_written_in() {
    let agents = Agents::start();
    for (interpreter, script, last) in
        [(PYTHON, "streams.py", "failed at the end\n"), (NODE, "streams.js", "Node.js v")]
    {
        let seen = agents.compare_with(interpreter, script, &[], Streams::Joined);
        assert_eq!((seen.status, seen.stderr.as_str()), (1, ""), "{seen:?}");
        let expected: String = (0..200).map(|i| format!("out {i}\nerr {i}\n")).collect();
        let expected = format!(
            "{expected}no newline, then stderr's line\none file: {}\n",
            ["True", "true"][usize::from(interpreter == NODE)]
        );
        assert!(seen.stdout.starts_with(&expected), "{script}:\n{}", seen.stdout);
        assert!(seen.stdout.contains(last), "{script}:\n{}", seen.stdout);
    }
}

/// `/dev/stdout`, `/dev/stderr`, `/dev/stdin` and `/proc/self/fd/N` open as they do bare (was:
/// `EACCES`: the code's pipes were the agent's, and a pipe opens by name only for its owner).
#[test]
fn the_standard_streams_open_by_name_as_they_do_bare() {
    let agents = Agents::start();
    let python = agents.compare(PYTHON, "std_by_name.py", &[]);
    assert_eq!(
        (python.status, python.stdout.as_str(), python.stderr.as_str()),
        (
            0,
            "to /dev/stdout\nto /proc/self/fd/1\nstdin: ['first line', 'second line']\nsh said 0\n",
            "to /dev/stderr\nfrom sh\n"
        )
    );
    let node = agents.compare(NODE, "std_by_name.js", &[]);
    assert_eq!(
        (node.status, node.stdout.as_str(), node.stderr.as_str()),
        (0, "to /dev/stdout\nto /proc/self/fd/1\nstdin: [ 'first line', 'second line', '' ]\n", "to /dev/stderr\n")
    );
}
