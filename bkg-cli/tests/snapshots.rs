//! Snapshots of the text people read: every command's help, the common errors, the `ls` and
//! `runs ls` tables and `bkg version`. Stable by construction: a fixed width (COLUMNS), no
//! colour, fixed records for the tables. `cargo insta review` (or INSTA_UPDATE=always) updates
//! them after a deliberate change.

use std::process::{Command, Stdio};

use bkg_cli::version_cmd::{AgentVersion, Build, Versions};
use bkg_schema::RunRecord;
use bkg_schema::egress::{RestartPolicy, ServiceHealth, ServiceState};
use bkg_schema::sandbox::SandboxInfo;

const BKG: &str = env!("CARGO_BIN_EXE_bkg");

/// `bkg ARGS` without a terminal, 100 columns wide, no colour; its exit code, stdout and stderr.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        // Empty counts as unset (schema/src/environment.rs), so help shows no value of the user's.
        .env("BKG_SOCKET", "")
        .env("BKG_NO_AUTOSTART", "1")
        .env_remove("BKG_REMOTE")
        .env_remove("BKG_API_KEY")
        .env_remove("BKG_STATE_DIR")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let name = std::path::Path::new(program).file_name().map(|name| name.to_string_lossy().into_owned());
    format!(
        "$ {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
        std::iter::once(name.unwrap_or_default())
            .chain(args.iter().map(|arg| (*arg).to_owned()))
            .collect::<Vec<_>>()
            .join(" "),
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// bkgr, built beside bkg by `cargo build --workspace`.
fn bkgr() -> String {
    let path = std::path::Path::new(BKG).with_file_name("bkgr");
    assert!(path.exists(), "{} is missing: build the workspace first (`cargo build --workspace`)", path.display());
    path.to_string_lossy().into_owned()
}

fn paths(command: &clap::Command, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    found.push(path.clone());
    for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
        path.push(sub.get_name().to_owned());
        paths(sub, path, found);
        path.pop();
    }
}

#[test]
fn help_of_every_command() {
    let mut found = Vec::new();
    paths(&bkg_cli::args::bkg_command(), &mut Vec::new(), &mut found);
    let mut text = String::new();
    for path in found {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        text.push_str(&run(BKG, &args));
        text.push('\n');
    }
    text.push_str(&run(&bkgr(), &["--help"]));
    insta::assert_snapshot!("help", text);
}

#[test]
fn common_errors() {
    let cases: &[&[&str]] = &[
        &["exce"],
        &["exe"],
        &["exe", "missing.py"],
        &["exe", "--memory", "lots", "-t", "python", "-c", "print(1)"],
        &["exe", "--timeout", "1m30x", "-c", "print(1)", "-t", "python"],
        &["exe", "-c", "print(1)"],
        &["exe", "--memory", "x.py"],
        &["exe", "--timeout", "--cpus", "1", "x.py"],
        &["exe", "--memory", "--type", "python", "-c", "1"],
        &["exe", "--file", "", "-t", "python", "-c", "1"],
        &["add", "web", "--type", "python", "--memory", "--cpus", "1"],
        &["exe", "--bogus", "x.py", "a", "--memory", "--cpus"],
        &["exe", "x.py", "--memory", "1"],
        &["exe", "x.py", "--memory=1"],
        &["exe", "--with", "-e .", "--type", "python", "-c", "1"],
        &["exe", "--output", "-out", "--type", "python", "-c", "1"],
        &["add", "web"],
        &["ls", "--bogus"],
        &["runs", "ls", "--limit", "0"],
        &["exe", "--with", "", "-t", "python", "-c", "print(1)"],
        &["exe", "-r", "missing-requirements.txt", "-t", "python", "-c", "print(1)"],
        &["runs", "files", "run_1", "--output", "/etc/hostname"],
        &["logout"],
        &["completions", "tcsh"],
        &[],
    ];
    let mut text = String::new();
    for args in cases {
        text.push_str(&run(BKG, args));
        text.push('\n');
    }
    text.push_str(&run(&bkgr(), &["--bogus"]));
    text.push('\n');
    text.push_str(&run(&bkgr(), &["--cpus", "web"]));
    text.push('\n');
    text.push_str(&run(&bkgr(), &["-C", "/nonexistent/project", "api"]));
    insta::assert_snapshot!("errors", text);
}

/// Found by a new-user trial: any value of BKG_CREDENTIAL_STORE counted as the keyring, so a typo
/// of `file` sent a key where the user had asked it not to go.
#[test]
fn an_unknown_credential_store_is_refused_before_a_key_is_looked_for() {
    let output = Command::new(BKG)
        .args(["--remote", "http://127.0.0.1:9", "keys", "ls"])
        .env("BKG_CREDENTIAL_STORE", "flie")
        .env("NO_COLOR", "1")
        .env_remove("BKG_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "bkg: BKG_CREDENTIAL_STORE=flie: use `file` or `keyring`\n");
}

/// A remote address nothing listens on is said in one line with what to check (found by a
/// new-user trial: it was hyper's error chain, `client error (Connect): tcp connect error: …`).
#[test]
fn a_remote_agent_nothing_listens_for_is_one_line_with_a_hint() {
    // A loopback port just freed: nothing listens on it.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a port").port();
    let remote = format!("http://127.0.0.1:{port}");
    let output = Command::new(BKG)
        .args(["--remote", &remote, "runs", "ls"])
        .env("BKG_API_KEY", "bkg_not_a_key")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "bkg: cannot reach the agent at {remote}: connection refused (nothing listens there: check the address \
             and port, and that the agent serves them, `bkg-agent --listen ADDRESS:PORT`)\n"
        )
    );
}

/// `bkg ARGS` in `dir` with BKG_SOCKET set (to no agent), as a user's shell may have it: its
/// exit code and stderr.
fn with_socket_set(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let output = Command::new(BKG)
        .args(args)
        .current_dir(dir)
        .env("BKG_SOCKET", "/nonexistent/agent.sock")
        .env("BKG_NO_AUTOSTART", "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_usage_line_shows_what_was_typed_not_what_the_environment_gave() {
    let (code, stderr) = with_socket_set(&["exe", "--bogus", "x.py"], &std::env::temp_dir());
    assert_eq!(code, Some(125), "{stderr}");
    assert_eq!(stderr, "bkg: unexpected argument `--bogus`: `bkg exe --help` lists what it takes\n");
    // A command's flag before the command, where git and make take theirs (found by a new-user
    // trial: it said only that `bkg --help` lists what bkg takes).
    let (code, stderr) = with_socket_set(&["-C", "/tmp", "ls"], &std::env::temp_dir());
    assert_eq!(code, Some(125), "{stderr}");
    assert_eq!(
        stderr,
        "bkg: unexpected argument `-C`: it is not one of bkg's own flags; a command's come after the command \
         (`bkg COMMAND -C …`), and `bkg --help` lists bkg's own\n"
    );
    // Without a script, one line that names no flag of the environment's either.
    let (code, stderr) = with_socket_set(&["exe"], &std::env::temp_dir());
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.starts_with("bkg: no code to run: give a script") && !stderr.contains("--socket"), "{stderr}");
    let (_, stderr) = with_socket_set(&["stop", "--all", "web"], &std::env::temp_dir());
    assert!(stderr.contains("\nUsage: bkg stop --all [NAME]...\n"), "{stderr}");
}

fn run_record(json: serde_json::Value) -> RunRecord {
    serde_json::from_value(json).expect("a run record")
}

fn runs() -> Vec<RunRecord> {
    let limits = serde_json::json!({"cpu_millis": 1000, "memory_bytes": 536_870_912u64, "timeout_ms": 60_000, "disk_bytes": 524_288_000u64, "pids": 256});
    vec![
        run_record(serde_json::json!({
            "id": "run_19bc0a1f2e3d4c5b", "namespace": "default", "sandbox_id": "a-rather-long-sandbox-name-6f1c2d3e4f5a6b7c",
            "language": "python", "started_at_ms": 1_795_829_760_088u64, "finished_at_ms": null, "limits": limits,
            "exit_code": null, "signal": null, "killed_by": null, "wall_ms": null, "cpu_ms": null,
            "peak_memory_bytes": null, "stdout_bytes": null, "stderr_bytes": null, "cleaned_up": false, "error": null
        })),
        run_record(serde_json::json!({
            "id": "run_19bc0a1f2e3d4c5a", "namespace": "team-a", "sandbox_id": null,
            "language": "node", "started_at_ms": 1_795_829_700_000u64, "finished_at_ms": 1_795_829_760_000u64, "limits": limits,
            "exit_code": null, "signal": 9, "killed_by": "timeout", "wall_ms": 60_000, "cpu_ms": 59_870,
            "peak_memory_bytes": 48_234_496, "stdout_bytes": 12, "stderr_bytes": 0, "cleaned_up": true, "error": null
        })),
        run_record(serde_json::json!({
            "id": "run_19bc0a1f2e3d4c59", "namespace": "default", "sandbox_id": null,
            "language": "python", "started_at_ms": 1_795_829_600_000u64, "finished_at_ms": 1_795_829_600_014u64, "limits": limits,
            "exit_code": 0, "signal": null, "killed_by": null, "wall_ms": 14, "cpu_ms": 12,
            "peak_memory_bytes": 7_651_328, "stdout_bytes": 3, "stderr_bytes": 0, "cleaned_up": true, "error": null
        })),
        run_record(serde_json::json!({
            "id": "run_19bc0a1f2e3d4c58", "namespace": "default", "sandbox_id": "web-6f1c2d3e4f5a6b7c",
            "language": "node", "started_at_ms": 1_795_829_500_000u64, "finished_at_ms": 1_795_829_500_031u64, "limits": limits,
            "exit_code": 0, "signal": null, "killed_by": null, "wall_ms": 31, "cpu_ms": 2,
            "peak_memory_bytes": 1_048_576, "stdout_bytes": 0, "stderr_bytes": 0, "cleaned_up": true, "error": null,
            "file_transfer": true
        })),
    ]
}

#[test]
fn tables() {
    let runs = runs();
    let sandboxes: Vec<SandboxInfo> = vec![
        serde_json::from_value(serde_json::json!({
            "id": "a-rather-long-sandbox-name-6f1c2d3e4f5a6b7c", "name": "a-rather-long-sandbox-name", "namespace": "default",
            "project_dir": "/srv/projects/an-app-with-a-long-path/and-deeper", "language": "python", "limits": runs[0].limits,
            "state": "running", "current_run": "run_19bc0a1f2e3d4c5b", "last_run": runs[0], "previous_run": runs[1],
            "created_at_ms": 1_795_829_000_000u64,
            "disk_bytes_allocated": 155_648
        }))
        .expect("a sandbox"),
        serde_json::from_value(serde_json::json!({
            "id": "web-6f1c2d3e4f5a6b7c", "name": "web", "namespace": "default", "project_dir": "/srv/app", "language": "node",
            "limits": runs[0].limits, "state": "idle", "current_run": null, "last_run": runs[2],
            "created_at_ms": 1_795_829_000_000u64, "disk_bytes_allocated": 52_428_800
        }))
        .expect("a sandbox"),
    ];
    let declared = [
        bkg_cli::manage::Declared {
            name: "api".into(),
            language: bkg_schema::Language::Python,
            project_dir: "/srv/app".into(),
            others: false,
        },
        // A shared project's sandbox that another user ran.
        bkg_cli::manage::Declared {
            name: "cron".into(),
            language: bkg_schema::Language::Python,
            project_dir: "/srv/app".into(),
            others: true,
        },
    ];
    let mut text = String::new();
    for width in [None, Some(100), Some(80), Some(60)] {
        text.push_str(&format!("--- bkg ls, width {width:?}\n"));
        text.push_str(&bkg_cli::manage::sandbox_table(&sandboxes, &declared, width));
        text.push_str(&format!("--- bkg runs ls, width {width:?}\n"));
        text.push_str(&bkg_cli::runs_cmd::runs_table(&runs, width));
    }
    // An admin's `bkg ls --all`: sandboxes of several namespaces say whose they are.
    let mut mixed = sandboxes.clone();
    mixed[1].namespace = "user-alice".into();
    // A service waiting to be started again after a failure is not idle.
    mixed[1].service = Some(
        serde_json::from_value(serde_json::json!({ "state": "restarting", "restart": "on-failure", "restarts": 2 }))
            .expect("a service's health"),
    );
    // One made through the API, MCP or the Web UI has no project of its own.
    mixed.push(sandboxes[1].clone());
    (mixed[2].name, mixed[2].namespace, mixed[2].has_project) = ("from-mcp".into(), "team-a".into(), false);
    mixed[2].project_dir = "/var/lib/bkg/namespaces/team-a".into();
    text.push_str("--- bkg ls --all, two namespaces\n");
    text.push_str(&bkg_cli::manage::sandbox_table(&mixed, &[], None));
    text.push_str("--- bkg runs show\n");
    text.push_str(&bkg_cli::runs_cmd::describe(&runs[1]));
    text.push_str("--- bkg runs show, an install that failed\n");
    let mut failed = runs[1].clone();
    (failed.exit_code, failed.signal, failed.killed_by) = (None, None, None);
    failed.error = Some(
        "installing 1 Python package failed (pip exited with code 1); the installer said:\n\
         ERROR: Could not find a version that satisfies the requirement six==99.0\n\
         ERROR: No matching distribution found for six==99.0"
            .into(),
    );
    text.push_str(&bkg_cli::runs_cmd::describe(&failed));
    text.push_str("--- bkg runs show, a run refused before it started (nothing measured)\n");
    let mut refused = failed.clone();
    (refused.wall_ms, refused.cpu_ms, refused.peak_memory_bytes) = (None, None, None);
    refused.error = Some("port 18777 on 127.0.0.1 is taken".into());
    text.push_str(&bkg_cli::runs_cmd::describe(&refused));
    text.push_str("--- bkg status, a run that failed before its script\n");
    let mut idle = sandboxes[1].clone();
    let mut prepared_not = runs[2].clone();
    (prepared_not.exit_code, prepared_not.signal, prepared_not.killed_by) = (None, None, None);
    prepared_not.error =
        Some("preparing the sandbox failed at `inspect /srv/app`: No such file or directory (os error 2)".into());
    idle.last_run = Some(prepared_not);
    text.push_str(&bkg_cli::manage::describe(&idle));
    // A service says its restart policy, `no` too (was: nothing for it; found by a new-user trial).
    text.push_str("--- bkg status, services with each restart policy\n");
    for restart in [RestartPolicy::No, RestartPolicy::OnFailure] {
        let mut serving = sandboxes[1].clone();
        serving.service = Some(ServiceHealth {
            state: ServiceState::Running,
            restart,
            run_id: None,
            restarts: 2,
            last_exit_code: Some(3),
            last_killed_by: None,
            ports: Vec::new(),
            not_restarted: None,
        });
        text.push_str(&bkg_cli::manage::describe(&serving));
    }
    insta::assert_snapshot!("tables", text);
}

#[test]
fn agent_status() {
    let limits = serde_json::json!({
        "cpu_millis": 1000, "memory_bytes": 536_870_912u64, "timeout_ms": 60_000, "disk_bytes": 524_288_000u64,
        "pids": 256, "network": "none"
    });
    let info: bkg_schema::AgentInfo = serde_json::from_value(serde_json::json!({
        "version": "0.1.0", "commit": "0123456789ab", "build_date": "2026-12-01", "pid": 4242,
        "socket": "/run/bkg/agent.sock", "state_dir": "/var/lib/bkg", "cgroup_version": "V1",
        "security_level": "strict", "warm_sandboxes": 2, "warm_target": 2, "warm_memory_bytes": 30_408_704u64,
        "warm_pool": [
            {"id": "sbx_1a2b3c4d5e6f7a8b9c0d", "memory_bytes": 15_204_352u64, "started_ahead": "python"},
            {"id": "sbx_1a2b3c4d5e6f7a8b9c0e", "memory_bytes": 3_145_728u64}
        ],
        "warm_memory_limit_bytes": 268_435_456u64, "queued_runs": 3, "max_running_runs": 8, "max_queued_runs": 256,
        "long_lived_runs": 1, "max_long_lived_runs": 6,
        "disk_in_use_bytes": 1_572_864_000u64, "disk_budget_bytes": 42_949_672_960u64,
        "prestarted_runs": 17, "zygote_runs": 12, "zygote": {"state": "serving", "generation": 3, "pid": 4250, "memory_bytes": 11_812_864u64},
        "active_runs": 1, "pending_cleanups": 0,
        "default_limits": limits, "max_limits": limits,
        "listeners": [{"url": "http://127.0.0.1:41823", "started_by": "bkg ui"}]
    }))
    .expect("agent info");
    insta::assert_snapshot!("agent_status", bkg_cli::agent_cmd::describe(&info));
}

#[test]
fn version() {
    let cli = || Build { version: "0.1.0".into(), commit: "0123456789ab".into(), build_date: "2026-12-01".into() };
    let with_agent = Versions {
        cli: cli(),
        agent: Some(AgentVersion {
            version: "0.1.0".into(),
            commit: "0123456789ab".into(),
            build_date: "2026-12-01".into(),
            endpoint: "/run/bkg/agent.sock".into(),
            protections: vec!["seccomp filter".into(), "landlock ABI 6".into()],
        }),
    };
    let alone = Versions { cli: cli(), agent: None };
    let text = format!(
        "{}{}--- json\n{}\n",
        bkg_cli::version_cmd::describe(&with_agent, None),
        bkg_cli::version_cmd::describe(&alone, Some("no agent is running on /run/bkg/agent.sock")),
        serde_json::to_string_pretty(&with_agent).expect("json")
    );
    insta::assert_snapshot!("version", text);
}

/// `bkg doctor --json` on this host without an agent, and its text form for a fixed report.
/// Redacted: what differs between machines of the same kind (kernel release, interpreter
/// versions, the cgroup layout's wording, the temporary state directory and its free space).
#[test]
fn doctor() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BKG)
        .args(["doctor", "--json", "--state-dir"])
        .arg(state_dir.path())
        .env("BKG_SOCKET", "/nonexistent/bkg/agent.sock")
        .env_remove("BKG_REMOTE")
        .env_remove("BKG_PYTHON")
        .env_remove("BKG_NODE")
        .env_remove("BKG_TLS_CERT")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let mut report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("doctor JSON");
    for check in report["checks"].as_array_mut().into_iter().flatten() {
        let volatile = ["kernel", "cgroups", "runtime.python", "runtime.node", "state_dir", "state_dir_fs"];
        if volatile.iter().any(|name| check["name"] == *name) {
            check["found"] = "[redacted]".into();
        }
    }
    let fixed: bkg_schema::host::DoctorReport = serde_json::from_value(serde_json::json!({
        "status": "fail",
        "host_level": "standard",
        "agent_level": null,
        "checks": [
            {"name": "kernel", "status": "pass", "found": "Linux 6.8.0-45-generic"},
            {"name": "landlock", "status": "warn", "found": "Landlock ABI 4: file system rules only", "fix": "a kernel of 6.12 or later"},
            {"name": "runtime.node", "status": "fail", "found": "--node /usr/bin/node does not exist", "fix": "install node there"}
        ]
    }))
    .expect("a report");
    let text = format!(
        "--- json (this host, no agent)\n{}\n--- text\n{}",
        serde_json::to_string_pretty(&report).expect("json"),
        bkg_cli::doctor::describe(&fixed)
    );
    insta::assert_snapshot!("doctor", text);
}

/// A global given through the environment (BKG_SOCKET) does not turn a bare `bkg` into
/// "requires a subcommand": it shows the help as without it.
#[test]
fn a_bare_bkg_shows_its_help_with_bkg_socket_set_too() {
    let bare = |socket: Option<&str>| {
        let mut command = Command::new(BKG);
        command.env("COLUMNS", "100").env("NO_COLOR", "1").env("BKG_NO_AUTOSTART", "1").stdin(Stdio::null());
        match socket {
            Some(socket) => command.env("BKG_SOCKET", socket),
            None => command.env_remove("BKG_SOCKET"),
        };
        let output = command.output().expect("runs");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (with_code, with) = bare(Some("/nonexistent/agent.sock"));
    let (without_code, without) = bare(None);
    assert!(with.starts_with("bkg runs untrusted Python and Node.js code"), "{with}");
    assert!(with.contains("\nCommands:\n") && !with.contains("requires a subcommand"), "{with}");
    // The same help but for the socket's value, which wraps its line.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let shown = without.replace("[env: BKG_SOCKET=]", "[env: BKG_SOCKET=/nonexistent/agent.sock]");
    assert_eq!((with_code, words(&with)), (without_code, words(&shown)));
}

#[test]
fn a_host_file_with_a_colon_in_its_name_is_pointed_to_with_dot_slash() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a:b.txt"), "x").expect("write");
    let (code, stderr) = with_socket_set(&["cp", "a:b.txt", "box:in"], dir.path());
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("for the file of that name here write `./a:b.txt`"), "{stderr}");
}

/// docs/cli.md's example of a usage error is what `bkg` prints (it had drifted as clap's tips
/// changed; found by a new-user trial).
#[test]
fn the_usage_error_docs_cli_md_shows_is_the_real_one() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).expect("docs/cli.md");
    let shown = docs.split("```\n$ bkg stopp\n").nth(1).and_then(|rest| rest.split("```").next());
    let output = Command::new(BKG)
        .arg("stopp")
        .env("NO_COLOR", "1")
        .env("BKG_SOCKET", "")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(Some(String::from_utf8_lossy(&output.stderr).as_ref()), shown);
    assert_eq!(output.status.code(), Some(125), "a usage error's, as the docs say");
}

/// With no agent on a socket of its own, the fix names that socket: sudo leaves BKG_SOCKET
/// behind, and the service manager serves the default one only (found by a new-user trial).
#[test]
fn no_agent_on_another_socket_is_told_how_to_start_one_there() {
    let output = Command::new(BKG)
        .args(["--socket", "/nonexistent/bkg-test.sock", "exe", "-t", "python", "-c", "print(1)"])
        .env("NO_COLOR", "1")
        .env("BKG_NO_AUTOSTART", "1")
        .env_remove("BKG_REMOTE")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(125));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("start one with `bkg --socket /nonexistent/bkg-test.sock agent start`"), "{said}");
}
