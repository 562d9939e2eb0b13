//! Retention: a namespace's runs expire after its time, here and in bkg_db; the audit log stays.

use std::time::{Duration, Instant};

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

use super::bkg_db::{Postgres, agent_with_db_and_tcp, print_one, wait_synced};

fn run_namespaces(agent: &Agent) -> Vec<String> {
    let output = agent.bkg().args(["runs", "ls", "--json", "--limit", "1000"]).output().expect("bkg runs ls");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let runs: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).expect("runs as JSON");
    runs.iter().map(|run| run["namespace"].as_str().expect("a namespace").to_owned()).collect()
}

#[test]
fn a_namespaces_runs_expire_locally_and_in_bkg_db_while_the_audit_log_keeps_them() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let files = tempfile::tempdir().expect("temp dir");
    let (mut agent, mut options, address) = agent_with_db_and_tcp(&url, files.path());
    let output = agent.bkg().args(["keys", "create", "--role", "namespace", "--namespace", "brief"]).output();
    let output = output.expect("bkg keys create");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let key = stdout(&output).trim().to_owned();
    for remote in [false, true, false, true] {
        print_one(&agent, remote.then_some((address.as_str(), key.as_str())));
    }
    wait_synced(&agent);
    assert_eq!(postgres.query("SELECT count(*) FROM runs WHERE namespace = 'brief'"), "2");
    // The first pass, at start-up, waits for the schema the sync worker makes in a new bkg_db.
    assert!(!agent.log().contains("retention could not expire runs"), "{}", agent.log());

    agent.stop();
    options.extra_args.extend(["--retention-for".into(), "brief=1ms".into()]);
    agent.spawn(&options);
    // The agent expires runs as it starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_namespaces(&agent).iter().any(|namespace| namespace == "brief")
        || postgres.query("SELECT count(*) FROM runs WHERE namespace = 'brief'") != "0"
    {
        assert!(Instant::now() < deadline, "the brief runs never expired:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(run_namespaces(&agent), ["default", "default"], "the default namespace keeps its runs");
    assert_eq!(postgres.query("SELECT count(*) FROM runs WHERE namespace = 'default'"), "2");
    let kept = "SELECT count(*) FROM audit_events WHERE namespace = 'brief' AND action = 'run.finished'";
    assert_eq!(postgres.query(kept), "2", "bkg_db's audit trail keeps the expired runs");
    let verify = agent.bkg().args(["audit", "verify"]).env("BKG_STATE_DIR", &agent.state_dir).output();
    let verify = verify.expect("bkg audit verify");
    assert_eq!(code(&verify), 0, "the local audit log is whole: {}", stderr(&verify));
    // The start's record says the retention it ran under, so the deletion can be traced (found
    // by a new-user trial: nothing recorded a shortened retention).
    let started: Vec<serde_json::Value> = agent
        .audit_records()
        .into_iter()
        .filter(|record| record["action"] == "config.changed")
        .map(|record| record["details"].clone())
        .filter(|details| details.get("default_limits").is_some())
        .collect();
    let last = started.last().expect("a start record");
    assert_eq!(
        last["retention"],
        serde_json::json!({ "default_ms": 30 * 24 * 3600 * 1000_u64, "per_namespace": { "brief": 1 } }),
        "{last}"
    );
}

/// Found by a new-user trial: nothing an operator reads said how long runs are kept.
#[test]
fn agent_status_says_how_long_runs_are_kept() {
    let options =
        AgentOptions { extra_args: vec!["--retention-for".into(), "ci=1h".into()], ..AgentOptions::default() };
    let agent = Agent::start_with(options);
    let status = agent.status_json();
    assert_eq!(
        status["retention"],
        serde_json::json!({ "default_ms": 30 * 24 * 3600 * 1000_u64, "per_namespace": { "ci": 3_600_000 } }),
        "{status}"
    );
    let text = agent.bkg().args(["agent", "status"]).output().expect("bkg agent status");
    let text = stdout(&text);
    assert!(
        text.lines().any(|line| line.starts_with("runs kept") && line.ends_with("30d (--retention) · ci 1h")),
        "{text}"
    );
}
