//! What the host gives: the agent's checks at start, its security level in status, run results
//! and the audit log, and `bkg doctor` (docs/compatibility.md, "Hosts").

use std::process::{Command, Output};

use bkg_tests::{Agent, AgentOptions, bin_dir, code, examples_dir, stderr, stdout};

/// Starts `bkg-agent --foreground` with `args` where it must refuse to start.
fn refused_start(args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bin_dir().join("bkg-agent"))
        .arg("--foreground")
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cgroup-dir")
        .arg(format!("bkg-test-refused-{}", std::process::id()))
        .args(args)
        .output()
        .expect("run bkg-agent");
    assert!(!dir.path().join("agent.sock").exists(), "a refused agent must not serve");
    (output, dir)
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

#[test]
fn an_unknown_security_level_is_a_usage_error() {
    let (output, _dir) = refused_start(&["--allow-degraded", "paranoid"]);
    assert_eq!(code(&output), 2, "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("\"paranoid\" is not a level: strict, standard or degraded"), "{}", stderr(&output));
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
