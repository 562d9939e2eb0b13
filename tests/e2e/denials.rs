//! What the sandbox refuses a run is named in its result (`denials`), in its audit line and by
//! `bkg logs NAME --policy`; the refused call still fails as the policy says.

use bkg_tests::{Agent, code, stderr, stdout};

/// Python that calls ptrace(PTRACE_TRACEME) twice through libc and prints what it got back.
const PTRACE_TWICE: &str = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
    for _ in range(2):\n    print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())\n";

#[test]
fn a_refused_syscall_is_named_in_the_result_and_the_audit_log() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&["--type", "python", "-c", PTRACE_TWICE]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(result["stdout"], "-1 1\n-1 1\n", "ptrace still fails with EPERM: {result}");
    let denials = result["denials"].as_array().cloned().unwrap_or_default();
    assert!(
        denials.iter().any(|denial| denial["kind"] == "seccomp" && denial["what"] == "ptrace" && denial["count"] == 2),
        "{result}"
    );

    let run_id = result["id"].as_str().expect("run id");
    let finished = agent
        .audit_records()
        .into_iter()
        .find(|line| line["action"] == "run.finished" && line["run"] == run_id)
        .expect("the run's end in the audit log");
    assert!(finished.to_string().contains("\"what\":\"ptrace\""), "{finished}");

    // A run that is refused nothing reports nothing; a limit that ends a run is named.
    let (quiet, _) = agent.exe_json(&["--type", "node", "-c", "console.log(6 * 7)"]);
    assert!(quiet.get("denials").is_none(), "{quiet}");
    let (timed_out, _) = agent.exe_json(&["--timeout", "1s", "--type", "python", "-c", "import time; time.sleep(60)"]);
    assert_eq!(timed_out["denials"], serde_json::json!([{"kind": "limit", "what": "timeout", "count": 1}]));
}

#[test]
fn bkg_logs_policy_lists_what_a_sandbox_was_refused() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    std::fs::write(project.path().join("probe.py"), PTRACE_TWICE).expect("probe.py");
    // A connection past the proxy, straight to an address: refused (a reset) and reported.
    std::fs::write(
        project.path().join("connect.py"),
        "import socket\ntry:\n    socket.create_connection(('192.0.2.10', 80), timeout=20)\nexcept OSError as error:\n    print(type(error).__name__)\n",
    )
    .expect("connect.py");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  box:\n    type: python\n    network: { allow: ['example.com:443'] }\n    \
         scripts:\n      start: python probe.py\n      connect: python connect.py\n",
    )
    .expect("cave.yaml");
    let bkgr = agent.bkgr(project.path(), &["box"]);
    assert_eq!(code(&bkgr), 0, "{}", stderr(&bkgr));
    let connect = agent.bkgr(project.path(), &["box", "connect"]);
    assert_eq!((code(&connect), stdout(&connect).as_str()), (0, "ConnectionRefusedError\n"), "{}", stderr(&connect));

    let policy = agent.bkg().args(["logs", "box", "--policy"]).current_dir(project.path()).output().expect("bkg logs");
    assert_eq!(code(&policy), 0, "{}", stderr(&policy));
    let listed = stdout(&policy);
    assert!(listed.starts_with("RUN"), "{listed}");
    let row = listed.lines().find(|line| line.contains("ptrace")).unwrap_or_default();
    assert!(row.contains("seccomp") && row.trim_end().ends_with('2'), "{listed}");
    let row = listed.lines().find(|line| line.contains("192.0.2.10:80")).unwrap_or_default();
    assert!(row.contains("network") && row.contains("tcp"), "{listed}");
}
