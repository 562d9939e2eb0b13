//! The shared bkg_db: a real PostgreSQL (scripts/postgres.sh) fed by real agents.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

/// A throwaway PostgreSQL cluster, stopped and deleted when dropped.
struct Postgres {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

impl Postgres {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("bkg-pg-").tempdir().expect("pg dir");
        let postgres = Self { dir };
        postgres.up();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    fn up(&self) {
        let output = Command::new("bash").arg(script()).arg("start").arg(self.data()).output().expect("postgres.sh");
        assert!(output.status.success(), "postgres.sh start: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn down(&self) {
        let output = Command::new("bash").arg(script()).arg("stop").arg(self.data()).output().expect("postgres.sh");
        assert!(output.status.success(), "postgres.sh stop: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn url(&self) -> String {
        let output = Command::new("bash").arg(script()).arg("url").arg(self.data()).output().expect("postgres.sh");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// One value from a query, as psql prints it.
    fn query(&self, sql: &str) -> String {
        let output = Command::new("psql").arg(self.url()).args(["-tAX", "-c", sql]).output().expect("psql");
        assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.data()).output();
    }
}

fn agent_with_db(url: &str) -> Agent {
    Agent::start_with(AgentOptions { extra_args: vec!["--db-url".into(), url.into()], ..AgentOptions::default() })
}

fn agent_id(agent: &Agent) -> String {
    // agent_id is the first 16 hex digits of sha256(public key): read it from a record.
    let files = std::fs::read_dir(agent.state_dir.join("audit")).expect("audit dir");
    let first = files.flatten().map(|entry| entry.path()).min().expect("an audit file");
    let text = std::fs::read_to_string(first).expect("audit file");
    let record: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    record["agent_id"].as_str().expect("agent_id").to_owned()
}

fn runs(agent: &Agent, count: usize, workers: usize) -> usize {
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let mut commands: Vec<_> = (0..count / workers)
                .map(|_| {
                    let mut command = agent.bkg();
                    command
                        .args(["exe", "--type", "python", "-c", "print(1)"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null());
                    command
                })
                .collect();
            std::thread::spawn(move || {
                commands.iter_mut().map(|c| c.status().is_ok_and(|s| s.success())).filter(|ok| *ok).count()
            })
        })
        .collect();
    threads.into_iter().map(|thread| thread.join().expect("worker")).sum()
}

fn wait_synced(agent: &Agent) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let output = agent.bkg().args(["sync", "status", "--json"]).output().expect("sync status");
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("sync json");
        if status["backlog"] == 0 && status["last_success_ms"].is_u64() {
            return status;
        }
        assert!(Instant::now() < deadline, "the backlog never drained: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verify(agent: &Agent, from_db: bool) {
    let mut command = agent.bkg();
    command.args(["audit", "verify"]).env("BKG_STATE_DIR", &agent.state_dir);
    if from_db {
        command.arg("--from-db");
    }
    let output = command.output().expect("audit verify");
    assert_eq!(code(&output), 0, "audit verify (from_db {from_db}): {}", stderr(&output));
    assert!(stderr(&output).contains("chain intact"), "{}", stderr(&output));
}

#[test]
fn runs_made_while_bkg_db_is_down_and_across_an_agent_crash_all_arrive_once() {
    let postgres = Postgres::start();
    let url = postgres.url();
    postgres.down();

    let mut agent = agent_with_db(&url);
    assert_eq!(runs(&agent, 100, 4), 100);
    let status = agent.bkg().args(["sync", "status", "--json"]).output().expect("sync status");
    assert_eq!(code(&status), 1, "a failing sync is exit 1: {}", stdout(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert!(status["backlog"].as_u64().unwrap_or(0) >= 200, "{status}");
    assert!(status["last_error"].is_string(), "{status}");

    agent.crash();
    agent.spawn(&AgentOptions { extra_args: vec!["--db-url".into(), url.clone()], ..AgentOptions::default() });
    assert_eq!(runs(&agent, 100, 4), 100);

    postgres.up();
    wait_synced(&agent);
    let id = agent_id(&agent);
    assert_eq!(postgres.query(&format!("SELECT count(*) FROM runs WHERE agent_id = '{id}'")), "200");
    assert_eq!(
        postgres.query(&format!("SELECT count(*) FROM runs WHERE agent_id = '{id}' AND exit_code = 0")),
        "200",
        "every run arrived with its outcome"
    );
    let (events, distinct, highest) = (
        postgres.query(&format!("SELECT count(*) FROM audit_events WHERE agent_id = '{id}'")),
        postgres.query(&format!("SELECT count(DISTINCT seq) FROM audit_events WHERE agent_id = '{id}'")),
        postgres.query(&format!("SELECT max(seq) FROM audit_events WHERE agent_id = '{id}'")),
    );
    assert_eq!(events, distinct, "no duplicate event");
    assert_eq!(events, highest, "no missing event");
    verify(&agent, false);
    verify(&agent, true);
}

#[test]
fn two_agents_share_one_bkg_db() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let first = agent_with_db(&url);
    let second = agent_with_db(&url);
    let (first_runs, second_runs) = std::thread::scope(|scope| {
        let one = scope.spawn(|| runs(&first, 20, 2));
        let two = scope.spawn(|| runs(&second, 20, 2));
        (one.join().expect("first"), two.join().expect("second"))
    });
    assert_eq!((first_runs, second_runs), (20, 20));
    wait_synced(&first);
    wait_synced(&second);
    for agent in [&first, &second] {
        let id = agent_id(agent);
        assert_eq!(postgres.query(&format!("SELECT count(*) FROM runs WHERE agent_id = '{id}'")), "20");
        verify(agent, true);
    }
    assert_eq!(postgres.query("SELECT count(DISTINCT agent_id) FROM agents"), "2");
}
