//! The shared bkg_db: a real PostgreSQL (scripts/postgres.sh) fed by real agents.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

/// A throwaway PostgreSQL cluster, stopped and deleted when dropped.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

impl Postgres {
    pub(crate) fn start() -> Self {
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

    pub(crate) fn url(&self) -> String {
        let output = Command::new("bash").arg(script()).arg("url").arg(self.data()).output().expect("postgres.sh");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// One value from a query, as psql prints it.
    pub(crate) fn query(&self, sql: &str) -> String {
        let output = Command::new("psql").arg(self.url()).args(["-tAX", "-c", sql]).output().expect("psql");
        assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// psql as login `role` (with `password`), as a user of bkg_db would connect: how it ended.
    pub(crate) fn psql_as(&self, role: &str, password: &str, sql: &str) -> std::process::Output {
        let url = self.url();
        let port = url.rsplit(':').next().and_then(|rest| rest.split('/').next()).expect("the cluster's port");
        Command::new("psql")
            .arg(format!("postgres://{role}:{password}@127.0.0.1:{port}/postgres"))
            .args(["-tAX", "-c", sql])
            .output()
            .expect("psql")
    }

    /// One value from a query as login `role`, which must succeed.
    pub(crate) fn query_as(&self, role: &str, password: &str, sql: &str) -> String {
        let output = self.psql_as(role, password, sql);
        assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.data()).output();
    }
}

pub(crate) fn agent_with_db(url: &str) -> Agent {
    Agent::start_with(AgentOptions { extra_args: vec!["--db-url".into(), url.into()], ..AgentOptions::default() })
}

pub(crate) fn agent_id(agent: &Agent) -> String {
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

/// Runs `print(1)` through the agent's socket, or with `remote` (its TCP address and a key) as a
/// client of its listener, and asserts it succeeded.
pub(crate) fn print_one(agent: &Agent, remote: Option<(&str, &str)>) {
    let mut command = agent.bkg();
    if let Some((address, key)) = remote {
        command.env("BKG_REMOTE", format!("http://{address}")).env("BKG_API_KEY", key);
    }
    let output = command.args(["exe", "--type", "python", "-c", "print(1)"]).stdin(Stdio::null()).output();
    let output = output.expect("bkg exe");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
}

pub(crate) fn wait_synced(agent: &Agent) -> serde_json::Value {
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

/// `bkg audit verify` of `agent`'s own chain, from its files or (`from_db`) bkg_db's copy.
fn audit_verify(agent: &Agent, from_db: bool) -> std::process::Output {
    let mut command = agent.bkg();
    command.args(["audit", "verify"]).env("BKG_STATE_DIR", &agent.state_dir);
    if from_db {
        command.arg("--from-db");
    }
    command.output().expect("audit verify")
}

fn verify(agent: &Agent, from_db: bool) {
    let output = audit_verify(agent, from_db);
    assert_eq!(code(&output), 0, "audit verify (from_db {from_db}): {}", stderr(&output));
    assert!(stderr(&output).contains("chain intact"), "{}", stderr(&output));
    // Found by a new-user trial: bkg_db's copy was said to be "in 1 file".
    assert_eq!(stderr(&output).contains("in bkg_db's copy of agent "), from_db, "{}", stderr(&output));
}

#[test]
fn runs_made_while_bkg_db_is_down_and_across_an_agent_crash_all_arrive_once() {
    let postgres = Postgres::start();
    let url = postgres.url();
    postgres.down();

    let started = std::time::Instant::now();
    let mut agent = agent_with_db(&url);
    assert_eq!(runs(&agent, 100, 4), 100);
    let status = agent.bkg().args(["sync", "status", "--json"]).output().expect("sync status");
    assert_eq!(code(&status), 1, "a failing sync is exit 1: {}", stdout(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert!(status["backlog"].as_u64().unwrap_or(0) >= 200, "{status}");
    assert!(status["last_error"].as_str().is_some_and(|error| error.contains("is PostgreSQL up")), "{status}");
    // The backoff holds while events keep coming (docs/operations.md: 200 ms doubling up to
    // 10 s, jittered down to half): seven attempts in the first 13 s at most, then at most one
    // every 5 s; new events used to cut each pause short, one attempt per event.
    let allowed = 8 + started.elapsed().as_secs() / 5;
    assert!(
        status["failures"].as_u64().unwrap_or(u64::MAX) <= allowed,
        "more attempts than the backoff allows ({allowed}): {status}"
    );
    // The agent's own status says so too.
    let shown = agent.bkg().args(["agent", "status"]).output().expect("agent status");
    assert!(stdout(&shown).contains("\nbkg_db     failing ("), "{}", stdout(&shown));

    agent.crash();
    agent.spawn(&AgentOptions { extra_args: vec!["--db-url".into(), url.clone()], ..AgentOptions::default() });
    assert_eq!(runs(&agent, 100, 4), 100);

    postgres.up();
    wait_synced(&agent);
    let shown = agent.bkg().args(["agent", "status", "--json"]).output().expect("agent status");
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["bkg_db"]["backlog"], 0, "{shown}");
    assert_eq!(shown["bkg_db"]["failures"], 0, "{shown}");
    // Found by a new-user trial: the outage's error, kept, read as the state of the sync.
    let human = agent.bkg().args(["sync", "status"]).output().expect("sync status");
    let last_error = stdout(&human).lines().find(|line| line.starts_with("last error")).map(str::to_owned);
    assert!(last_error.as_deref().is_some_and(|line| line.ends_with("; resolved since)")), "{}", stdout(&human));
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

/// Found by a new-user trial: with bkg_db down, `bkg watch --no-follow` (without `--since`)
/// waited without a word until bkg_db came back. It fails at once, as `--since N` did.
#[test]
fn watch_no_follow_says_bkg_db_is_down_instead_of_waiting_for_it() {
    // A port nothing listens on: every connection is refused.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("port").port();
    let agent =
        agent_with_db(&format!("postgres://agent:pw@127.0.0.1:{port}/bkg_db?sslmode=disable&connect_timeout=2"));
    for since in [&[][..], &["--since", "0"]] {
        let watched = Command::new("timeout")
            .arg("60")
            .arg(bkg_tests::bkg_bin())
            .args(["watch", "--no-follow"])
            .args(since)
            .env("BKG_SOCKET", &agent.socket)
            .env("BKG_NO_AUTOSTART", "1")
            .stdin(Stdio::null())
            .output()
            .expect("bkg watch");
        assert_eq!(code(&watched), 125, "{since:?}: {}", stderr(&watched));
        assert!(stderr(&watched).starts_with("bkg: bkg_db"), "{since:?}: {}", stderr(&watched));
        assert!(!stderr(&watched).contains("pw@"), "the URL's password is never repeated: {}", stderr(&watched));
    }
    // Found by the same trial: on the command line the password is every local user's to read.
    assert!(agent.log().contains("--db-url holds a password, which every local user can read"), "{}", agent.log());
}

/// Found by a new-user trial: `bkg watch` on an agent whose login may not read the feed said
/// only "bkg_db: db error". It gives the server's message and what to do.
#[test]
fn watch_says_what_bkg_db_refused_and_what_to_do() {
    let postgres = Postgres::start();
    postgres.query("CREATE ROLE outsider LOGIN PASSWORD 'outsider-password'");
    let owner = agent_with_db(&postgres.url());
    wait_synced(&owner);
    drop(owner);
    let agent = agent_with_db(&url_as(&postgres, "outsider", "outsider-password"));
    let watched = Command::new("timeout")
        .arg("60")
        .arg(bkg_tests::bkg_bin())
        .args(["watch", "--no-follow"])
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("bkg watch");
    assert_eq!(code(&watched), 125, "{}", stderr(&watched));
    let said = stderr(&watched);
    assert!(said.contains("permission denied for table") && said.contains("a member of bkg_agent"), "{said}");
    assert!(!said.contains("db error"), "{said}");
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

/// An agent with a bkg_db and a TCP listener on loopback (for signup and login); its address.
pub(crate) fn agent_with_db_and_tcp(url: &str, files: &Path) -> (Agent, AgentOptions, String) {
    let address_file = files.join("address");
    let options = AgentOptions {
        extra_args: vec![
            "--db-url".into(),
            url.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-address-file".into(),
            address_file.display().to_string(),
        ],
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(options.clone());
    let address = listen_address(&agent, &address_file);
    (agent, options, address)
}

pub(crate) fn listen_address(agent: &Agent, file: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no TCP address written:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of the agent's local audit log.
fn audit_lines(agent: &Agent) -> Vec<String> {
    audit_files(agent)
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path).expect("audit file").lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

fn wait_for_action(agent: &Agent, action: &str) {
    let needle = format!("\"action\":\"{action}\"");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !audit_lines(agent).iter().any(|line| line.contains(&needle)) {
        assert!(Instant::now() < deadline, "no {action} record in the audit log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sync_status(agent: &Agent) -> (i32, serde_json::Value) {
    let output = agent.bkg().args(["sync", "status", "--json"]).output().expect("sync status");
    (code(&output), serde_json::from_slice(&output.stdout).expect("sync json"))
}

/// Waits until nothing but `parked` events is left to ship.
fn wait_shipped(agent: &Agent, parked: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, status) = sync_status(agent);
        if status["backlog"] == 0 && status["parked"] == parked {
            return status;
        }
        assert!(Instant::now() < deadline, "the backlog never came down to {parked} parked: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ok(output: &std::process::Output, what: &str) -> String {
    assert_eq!(code(output), 0, "{what}: {}", stderr(output));
    stdout(output)
}

fn outbox(agent: &Agent) -> rusqlite::Connection {
    rusqlite::Connection::open(agent.state_dir.join("state.db")).expect("the agent's store")
}

/// Every kind of record the agent writes (`AuditAction::ALL`: a new kind fails here until this
/// test makes one) is produced by the real agent, through the CLI and the API, and reaches a real
/// bkg_db. One event made unreadable in the outbox is parked without holding back the others,
/// and ships once fixed and retried.
#[test]
fn every_kind_of_record_reaches_bkg_db_and_a_bad_one_is_parked_then_retried() {
    use bkg_schema::audit::AuditAction;
    use bkg_tests::http::Client;

    let postgres = Postgres::start();
    let url = postgres.url();
    // bkg_db is down at first: the agent records the failure (sync.error).
    postgres.down();
    let files = tempfile::tempdir().expect("temp dir");
    let (mut agent, options, address) = agent_with_db_and_tcp(&url, files.path());
    wait_for_action(&agent, "sync.error");

    // Keys through the CLI: created, rotated, revoked.
    let admin_key =
        ok(&agent.bkg().args(["keys", "create", "--role", "admin", "--name", "walk"]).output().expect("bkg"), "create");
    let admin_key = admin_key.trim().to_owned();
    let created = ok(
        &agent
            .bkg()
            .args(["keys", "create", "--role", "namespace", "--namespace", "walk", "--json"])
            .output()
            .expect("bkg"),
        "create --json",
    );
    let key: serde_json::Value = serde_json::from_str(&created).expect("key json");
    let key_id = key["id"].as_str().expect("key id").to_owned();
    ok(&agent.bkg().args(["keys", "rotate", &key_id]).output().expect("bkg"), "rotate");
    ok(&agent.bkg().args(["keys", "revoke", &key_id]).output().expect("bkg"), "revoke");

    // A user (config.changed) who gets the password wrong (auth.login_refused), then logs in (login).
    let admin = Client::new(&address, Some(&admin_key));
    let signup = serde_json::json!({"username": "walker", "namespace": "walk", "password": "a long enough password"});
    assert_eq!(admin.post("/api/v1/auth/signup", &signup).status, 201);
    let wrong = serde_json::json!({"username": "walker", "password": "not the password"});
    assert_eq!(Client::new(&address, None).post("/api/v1/auth/login", &wrong).status, 401);
    let login = Client::new(&address, None)
        .post("/api/v1/auth/login", &serde_json::json!({"username": "walker", "password": "a long enough password"}));
    assert_eq!(login.status, 201, "{}", login.text());

    // A run, and a persistent sandbox defined, run, given another definition and removed.
    ok(
        &agent.bkg().args(["exe", "--type", "python", "-c", "print(1)"]).stdin(Stdio::null()).output().expect("bkg"),
        "exe",
    );
    let project = tempfile::tempdir().expect("project");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nnamespace: walk\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: python -c 'print(2)'\n",
    )
    .expect("cave.yaml");
    ok(&agent.bkgr(project.path(), &["api"]), "bkgr");
    let cave = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    std::fs::write(project.path().join("cave.yaml"), cave.replace("print(2)", "print(3)")).expect("cave.yaml");
    ok(&agent.bkgr(project.path(), &["api"]), "bkgr again");
    ok(&agent.bkg().args(["rm", "api", "--force"]).current_dir(project.path()).output().expect("bkg"), "rm");

    // Killed in the middle of a run (run.interrupted on the next start), the agent's outbox gets
    // one event it cannot read, and its log a torn last line (log.recovered on the next start).
    let mut long_run = agent.start_long_run();
    agent.crash();
    let _ = long_run.wait();
    let key_seq: i64 = outbox(&agent)
        .query_row(
            "SELECT seq FROM outbox WHERE action = 'key.created' AND synced = 0 ORDER BY seq LIMIT 1",
            [],
            |row| row.get(0),
        )
        .expect("an unsynced key.created");
    let good_line: String =
        outbox(&agent).query_row("SELECT line FROM outbox WHERE seq = ?1", [key_seq], |row| row.get(0)).expect("line");
    outbox(&agent)
        .execute("UPDATE outbox SET line = substr(line, 1, 60) WHERE seq = ?1", [key_seq])
        .expect("corrupt the line");
    let newest = audit_files(&agent).pop().expect("an audit file");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"{\"seq\":"))
        .expect("tear the log");

    postgres.up();
    let address_file = files.path().join("address");
    std::fs::remove_file(&address_file).expect("remove the old address");
    agent.spawn(&options);
    let admin = Client::new(&listen_address(&agent, &address_file), Some(&admin_key));
    let status = wait_shipped(&agent, 1);
    assert_eq!(status["parked_events"][0]["seq"], key_seq, "{status}");
    assert!(
        status["parked_events"][0]["reason"].as_str().is_some_and(|reason| reason.contains("not an audit record")),
        "{status}"
    );
    let (exit, _) = sync_status(&agent);
    assert_eq!(exit, 1, "parked events make sync status exit 1");
    let human = ok_or_one(&agent.bkg().args(["sync", "status"]).output().expect("bkg"));
    assert!(human.contains("parked        1 event ") && human.contains("key.created"), "{human}");
    let metrics = admin.get("/metrics").text();
    assert!(metrics.contains("bkg_sync_parked_events 1"), "{metrics}");
    let health = admin.get("/healthz").json();
    assert_eq!(
        (health["status"].as_str(), health["reason"].as_str()),
        (Some("degraded"), Some("sync_parked")),
        "{health}"
    );

    // The events after it were not held back: a new run goes through too.
    ok(
        &agent.bkg().args(["exe", "--type", "python", "-c", "print(3)"]).stdin(Stdio::null()).output().expect("bkg"),
        "exe",
    );
    wait_shipped(&agent, 1);
    let id = agent_id(&agent);
    // print(1), the sandbox's two runs, print(3).
    assert_eq!(postgres.query(&format!("SELECT count(*) FROM runs WHERE agent_id = '{id}' AND exit_code = 0")), "4");
    assert_eq!(
        postgres.query(&format!("SELECT count(*) FROM audit_events WHERE agent_id = '{id}' AND seq = {key_seq}")),
        "0"
    );

    // Fixed (the agent stopped) and retried, it ships.
    agent.stop();
    outbox(&agent)
        .execute("UPDATE outbox SET line = ?2 WHERE seq = ?1", rusqlite::params![key_seq, good_line])
        .expect("fix");
    std::fs::remove_file(&address_file).expect("remove the old address");
    agent.spawn(&options);
    let admin = Client::new(&listen_address(&agent, &address_file), Some(&admin_key));
    let retried =
        ok(&agent.bkg().args(["sync", "retry", &key_seq.to_string(), "--json"]).output().expect("bkg"), "retry");
    assert!(retried.contains(&key_seq.to_string()), "{retried}");
    let again = agent.bkg().args(["sync", "retry", "999999"]).output().expect("bkg");
    assert_eq!(code(&again), 125, "an event that is not parked is refused");
    assert_eq!(stderr(&again), "bkg: outbox event 999999 is not parked\n");
    wait_shipped(&agent, 0);
    assert_eq!(
        (sync_status(&agent).0, admin.get("/healthz").json()["status"].as_str().map(str::to_owned)),
        (0, Some("ok".to_owned()))
    );

    // Every kind is in bkg_db, the whole chain verifies from it, and the key's state is there.
    let shipped =
        postgres.query(&format!("SELECT string_agg(DISTINCT action, ',') FROM audit_events WHERE agent_id = '{id}'"));
    let shipped: Vec<&str> = shipped.split(',').collect();
    for action in AuditAction::ALL {
        assert!(shipped.contains(&action.as_str()), "no {} record reached bkg_db: {shipped:?}", action.as_str());
    }
    let (events, highest) = (
        postgres.query(&format!("SELECT count(*) FROM audit_events WHERE agent_id = '{id}'")),
        postgres.query(&format!("SELECT max(seq) FROM audit_events WHERE agent_id = '{id}'")),
    );
    assert_eq!(events, highest, "no hole is left");
    verify(&agent, true);
    let key_row = postgres.query(&format!(
        "SELECT role || ' ' || (rotated_at_ms IS NOT NULL) || ' ' || (revoked_at_ms IS NOT NULL) FROM keys WHERE id = '{key_id}'"
    ));
    assert_eq!(key_row, "namespace true true");
    assert_eq!(postgres.query("SELECT count(*) FROM sandboxes WHERE name = 'api' AND deleted_at_ms IS NOT NULL"), "1");
}

/// The agent's audit log files, in order.
fn audit_files(agent: &Agent) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(agent.state_dir.join("audit"))
        .expect("audit dir")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "jsonl"))
        .collect();
    files.sort();
    files
}

/// stdout of a command that may exit 0 or 1 (a status), nothing else.
fn ok_or_one(output: &std::process::Output) -> String {
    assert!(matches!(code(output), 0 | 1), "{}", stderr(output));
    stdout(output)
}

/// Every file under `dir` whose bytes contain `needle`, but a persistent sandbox's disk image:
/// that is the sandbox's own filesystem (what its code writes), not a record of the agent.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && path.file_name().is_none_or(|name| name != "disk.img")
                && std::fs::read(&path).expect("read file").windows(needle.len()).any(|window| window == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Environment values, from cave.yaml and from `bkg exe -e`, and a secret's value
/// (`bkg secrets set`, given by cave.yaml's `secrets:` and `bkg exe --secret`), reach the
/// sandbox and nothing else: not the audit log, the store or any other file of the agent's
/// state, nor its log, nor any column of any bkg_db table. Only the sandbox's own `env.json`
/// (0600) keeps the values of a persistent sandbox; the secret is sealed (`secrets.json`).
#[test]
fn environment_values_reach_the_sandbox_and_no_record() {
    use std::os::unix::fs::PermissionsExt;

    let postgres = Postgres::start();
    let mut agent = agent_with_db(&postgres.url());
    let nonce = std::process::id();
    let (defined, passed) = (format!("defined-secret-{nonce}-x7q"), format!("passed-secret-{nonce}-k3z"));
    let sealed = format!("sealed-secret-{nonce}-m2w");
    let mut set = agent.bkg().args(["secrets", "set", "SEALED"]).stdin(Stdio::piped()).spawn().expect("set");
    std::io::Write::write_all(&mut set.stdin.take().expect("stdin"), sealed.as_bytes()).expect("the value");
    let set = set.wait_with_output().expect("bkg secrets set");
    assert_eq!(code(&set), 0, "{}", stderr(&set));

    let project = tempfile::tempdir().expect("project");
    std::fs::write(
        project.path().join("cave.yaml"),
        format!(
            "version: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    env:\n      TOKEN: {defined}\n    secrets: [SEALED]\n    scripts:\n      start: python -c \"import os; print(os.environ['TOKEN'][::-1], os.environ['SEALED'][::-1])\"\n"
        ),
    )
    .expect("cave.yaml");
    let run = agent.bkgr(project.path(), &["api"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let reversed = |value: &str| value.chars().rev().collect::<String>();
    assert_eq!(
        stdout(&run).trim(),
        format!("{} {}", reversed(&defined), reversed(&sealed)),
        "the values reached the sandbox"
    );
    let exe = agent
        .bkg()
        .args(["exe", "--type", "python", "--secret", "SEALED", "-e", &format!("PASSED={passed}"), "-c"])
        .arg("import os; print(os.environ['PASSED'][::-1], os.environ['SEALED'][::-1])")
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&exe), 0, "{}", stderr(&exe));
    assert_eq!(stdout(&exe).trim(), format!("{} {}", reversed(&passed), reversed(&sealed)));
    wait_synced(&agent);
    // The sandbox's own home in the agent's state dir (bkg_schema::paths::SandboxHome).
    let homes = agent.state_dir.join("workspaces/default");
    let home = std::fs::read_dir(&homes).expect("the sandbox's home").flatten().next().expect("one home").path();
    let env_file = home.join("env.json");
    assert_eq!(std::fs::metadata(&env_file).expect("env.json").permissions().mode() & 0o777, 0o600);
    agent.stop();

    for value in [&defined, &passed, &sealed] {
        assert_eq!(
            files_containing(&agent.state_dir, value.as_bytes()),
            if *value == defined { vec![env_file.clone()] } else { Vec::new() },
            "{value} in the state dir"
        );
        assert!(!agent.log().contains(value.as_str()), "{value} in the agent's log");
        // The agent writes nothing into the project (its `.bkg/` is made by `bkg init` only).
        let project_state = project.path().join(".bkg");
        let in_project_state =
            if project_state.exists() { files_containing(&project_state, value.as_bytes()) } else { Vec::new() };
        assert_eq!(in_project_state, Vec::<PathBuf>::new(), "{value} in the project's .bkg");
        let tables = postgres.query("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'");
        for table in tables.split(',') {
            let rows = postgres.query(&format!("SELECT count(*) FROM {table} t WHERE t::text LIKE '%{value}%'"));
            assert_eq!(rows, "0", "{value} in bkg_db table {table}");
        }
    }
    // The names are kept.
    let names = postgres.query("SELECT state->'env' FROM sandboxes WHERE name = 'api'");
    assert_eq!(names, "[\"TOKEN\"]");
}

/// `bkg audit verify --from-db` checks the chain as bkg_db holds it: an edited and
/// a removed line there are each named, with exit 1, while the agent's own files stay intact.
#[test]
fn audit_verify_from_db_names_what_was_tampered_with_in_bkg_db() {
    let postgres = Postgres::start();
    let agent = agent_with_db(&postgres.url());
    assert_eq!(runs(&agent, 3, 1), 3);
    wait_synced(&agent);
    verify(&agent, true);
    let id = agent_id(&agent);
    let seq_of = |action: &str| {
        postgres.query(&format!(
            "SELECT seq FROM audit_events WHERE agent_id = '{id}' AND action = '{action}' ORDER BY seq LIMIT 1"
        ))
    };
    let verify_fails = |what: &str, seq: &str| {
        let output = audit_verify(&agent, true);
        assert_eq!(code(&output), 1, "{what}: {}", stderr(&output));
        let said = format!("{}{}", stdout(&output), stderr(&output));
        assert!(said.contains(seq), "{what}: the report names seq {seq}: {said}");
        assert!(said.contains("audit: bkg_db (agent "), "{what}: the report names bkg_db, not a copy: {said}");
        verify(&agent, false);
    };

    // An edited outcome: the run "failed".
    let finished = seq_of("run.finished");
    let original =
        postgres.query(&format!("SELECT line FROM audit_events WHERE agent_id = '{id}' AND seq = {finished}"));
    postgres.query(&format!(
        "UPDATE audit_events SET line = replace(line, '\"exit_code\":0', '\"exit_code\":1') \
         WHERE agent_id = '{id}' AND seq = {finished} RETURNING seq"
    ));
    verify_fails("edited", &finished);

    // Put back, then removed.
    postgres.query(&format!(
        "UPDATE audit_events SET line = $bkg${original}$bkg$ WHERE agent_id = '{id}' AND seq = {finished} RETURNING seq"
    ));
    verify(&agent, true);
    let started = seq_of("run.started");
    postgres.query(&format!("DELETE FROM audit_events WHERE agent_id = '{id}' AND seq = {started} RETURNING seq"));
    verify_fails("removed", &started);

    // Found by a new-user trial: another agent's key (RFC 8032's first test key here), which
    // names an agent bkg_db holds nothing of, was "ok, 0 records"; with --remote and no key, this
    // host's key was taken for the remote agent's.
    let other_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let wrong =
        agent.bkg().args(["audit", "verify", "--from-db", "--key", other_key]).output().expect("bkg audit verify");
    assert_eq!(code(&wrong), 1, "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("bkg_db holds no records of agent "), "{}", stderr(&wrong));
    assert!(stdout(&wrong).is_empty(), "{}", stdout(&wrong));
    let remote = agent
        .bkg()
        .args(["--remote", "http://127.0.0.1:9", "audit", "verify", "--from-db"])
        .env("BKG_API_KEY", "bkg_admin_unused")
        .output()
        .expect("bkg audit verify");
    assert_eq!(code(&remote), 125, "{}", stderr(&remote));
    assert!(stderr(&remote).contains("with --remote, give --key HEX"), "{}", stderr(&remote));
}

/// Found by a new-user trial: an agent whose login row-level security shows only some rows (a
/// namespace's) had `bkg audit verify --from-db` report the lines it could not see as tampering.
#[test]
fn audit_verify_from_db_through_a_narrow_login_says_so_instead_of_tampering() {
    let postgres = Postgres::start();
    let owner = agent_with_db(&postgres.url());
    assert_eq!(runs(&owner, 1, 1), 1);
    wait_synced(&owner);
    drop(owner);
    postgres.query("CREATE ROLE narrow LOGIN PASSWORD 'narrow-password' IN ROLE bkg_namespace");
    let agent = agent_with_db(&url_as(&postgres, "narrow", "narrow-password"));
    let output = audit_verify(&agent, true);
    assert_eq!(code(&output), 125, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("bkg_db login `narrow` reads only the rows row-level security gives it"),
        "{}",
        stderr(&output)
    );
}

/// Found by a new-user trial: an agent that logs in as a bkg_agent member, newer than its
/// bkg_db, was told to have the owner run `bkg db migrate`, which goes through that same agent
/// and its login, and fails the same way. The owner migrates with `bkg-agent --migrate-db`; and
/// a bkg_db newer than the agent is said to be newer, not to be at the agent's version.
#[test]
fn a_bkg_db_behind_is_migrated_by_its_owner_and_one_ahead_is_said_to_be() {
    let postgres = Postgres::start();
    let migrate_as_owner = || {
        let output = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
            .arg("--migrate-db")
            .env("BKG_DB_URL", postgres.url())
            .output()
            .expect("bkg-agent --migrate-db");
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let port = postgres.url().rsplit(':').next().and_then(|rest| rest.split('/').next()).unwrap_or_default().to_owned();
    let latest = migrate_as_owner();
    let named = format!("bkg_db (database postgres at 127.0.0.1:{port}) is at schema version ");
    assert!(latest.starts_with(&named) && latest.contains(" applied now)"), "{latest}");
    let version: i32 = postgres.query("SELECT max(version) FROM bkg_schema_migrations").parse().expect("a version");
    // bkg_db as it was one version ago: the newest migration's objects and record gone.
    postgres.query(&format!(
        "DROP TRIGGER bkg_head_moves_forward ON bkg_change_head; DROP FUNCTION bkg_head_moves_forward();
         DROP TRIGGER bkg_change_at_a_taken_position ON changes; DROP FUNCTION bkg_change_at_a_taken_position();
         DROP TRIGGER bkg_namespace_widens_only ON namespaces; DROP FUNCTION bkg_namespace_widens_only();
         DELETE FROM bkg_schema_migrations WHERE version = {version}"
    ));
    postgres.query("CREATE ROLE agent_host LOGIN PASSWORD 'host-password' IN ROLE bkg_agent");
    let agent = agent_with_db(&url_as(&postgres, "agent_host", "host-password"));
    let migrate = agent.bkg().args(["db", "migrate"]).output().expect("bkg db migrate");
    assert_eq!(code(&migrate), 125, "{}", stderr(&migrate));
    assert!(stderr(&migrate).contains("BKG_DB_URL=OWNER_URL bkg-agent --migrate-db"), "{}", stderr(&migrate));
    assert_eq!(migrate_as_owner(), format!("{named}{version} (1 applied now)\n"));
    let migrate = agent.bkg().args(["db", "migrate", "--json"]).output().expect("bkg db migrate");
    assert_eq!(code(&migrate), 0, "{}", stderr(&migrate));
    let migrated: serde_json::Value = serde_json::from_slice(&migrate.stdout).expect("JSON");
    assert_eq!(migrated, serde_json::json!({ "applied": [], "latest": version, "version": version }));

    // A newer agent's migration is there: this one is older, and says so.
    postgres.query(&format!(
        "INSERT INTO bkg_schema_migrations (version, name) VALUES ({}, 'from_the_future')",
        version + 1
    ));
    let migrate = agent.bkg().args(["db", "migrate"]).output().expect("bkg db migrate");
    assert_eq!(code(&migrate), 0, "{}", stderr(&migrate));
    assert!(
        stdout(&migrate)
            .contains(&format!("bkg_db is at schema version {}, newer than this agent's {version}", version + 1)),
        "{}",
        stdout(&migrate)
    );
    // A URL that can never connect is a usage error, as for the agent; a refused login says the
    // server's message once, with the fix.
    let refused = |url: &str| {
        let output = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
            .arg("--migrate-db")
            .env("BKG_DB_URL", url)
            .output()
            .expect("bkg-agent --migrate-db");
        (output.status.code(), stderr(&output))
    };
    let (exit, said) = refused(&postgres.url().replace("sslmode=disable", "sslmode=bogus"));
    assert_eq!((exit, said.lines().count()), (Some(2), 1), "{said}");
    let (exit, said) = refused(&url_as(&postgres, "agent_host", "wrong-password"));
    assert_eq!((exit, said.lines().count()), (Some(1), 1), "{said}");
    assert_eq!(said.matches("password authentication failed").count(), 1, "{said}");
    assert!(said.contains("check the user and password in the bkg_db URL (BKG_DB_URL or --db-url)"), "{said}");
    // Found by a new-user trial: a URL without the password said "password missing" alone.
    let (exit, said) = refused(&url_as(&postgres, "agent_host", "").replacen(":@", "@", 1));
    assert_eq!((exit, said.lines().count()), (Some(1), 1), "{said}");
    assert!(
        said.contains("password missing: the server wants the login's password: give it in the bkg_db URL"),
        "{said}"
    );
    // A password holding `@` makes the rest of it the host, which does not resolve (the name is
    // under .invalid, which never does: RFC 6761).
    let (exit, said) = refused("postgres://agent_host:pa@ss@db.invalid:5432/bkg_db?sslmode=disable");
    assert_eq!((exit, said.lines().count()), (Some(1), 1), "{said}");
    assert!(said.contains("the host of the bkg_db URL does not resolve"), "{said}");
}

/// bkg_db over TLS, verified against the CA given in the URL; a certificate this host does not
/// trust is one line saying what to do (found by a new-user trial: a bare rustls error).
#[test]
fn bkg_db_over_tls_is_verified_and_an_untrusted_certificate_says_what_to_do() {
    let postgres = Postgres::start();
    let ca = postgres.data().join("ca.crt");
    let over_tls = |query: &str| postgres.url().replace("sslmode=disable", query);
    let agent = agent_with_db(&over_tls(&format!("sslmode=verify-full&sslrootcert={}", ca.display())));
    assert_eq!(runs(&agent, 1, 1), 1);
    let status = wait_synced(&agent);
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    assert_ne!(postgres.query("SELECT count(*) FROM audit_events"), "0");
    drop(agent);

    // The system's roots do not hold the cluster's CA; `prefer`, the default, verifies too.
    for query in ["sslmode=verify-full", "sslmode=prefer"] {
        let agent = agent_with_db(&over_tls(query));
        let migrate = agent.bkg().args(["db", "migrate"]).output().expect("bkg db migrate");
        assert_eq!(code(&migrate), 125, "{query}: {}", stderr(&migrate));
        let said = stderr(&migrate);
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(
            said.contains(
                "not signed by a CA trusted here (the URL's `sslrootcert=PATH`, else the host's trust store)"
            ),
            "{query}: {said}"
        );
    }

    // Found by a new-user trial: an sslrootcert with no certificate in it (empty, or another
    // file's text) was taken at start, and every handshake then failed as if none had been given.
    let empty = tempfile::NamedTempFile::new().expect("an empty file");
    for file in [empty.path(), std::path::Path::new("/etc/passwd")] {
        let url = over_tls(&format!("sslmode=verify-full&sslrootcert={}", file.display()));
        let output = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
            .arg("--migrate-db")
            .env("BKG_DB_URL", &url)
            .output()
            .expect("bkg-agent --migrate-db");
        let said = stderr(&output);
        assert_eq!((output.status.code(), said.lines().count()), (Some(2), 1), "{said}");
        assert!(said.contains(&format!("{}: no certificate in it", file.display())), "{said}");
    }
}

/// Found by a new-user trial: an agent pointed at a bkg_db that lacks its earlier events (a new
/// or restored database) sends them again, and that showed as a sync failure ("event N follows
/// 0") in `bkg sync status` long after. It is not one.
#[test]
fn an_agent_moved_to_a_new_bkg_db_sends_its_history_again_without_a_failure() {
    let postgres = Postgres::start();
    let mut agent = agent_with_db(&postgres.url());
    assert_eq!(runs(&agent, 1, 1), 1);
    wait_synced(&agent);
    postgres.query("CREATE DATABASE moved");
    let moved = postgres.url().replace("/postgres?", "/moved?");
    agent.stop();
    agent.spawn(&AgentOptions { extra_args: vec!["--db-url".into(), moved.clone()], ..AgentOptions::default() });
    assert_eq!(runs(&agent, 1, 1), 1);
    let status = wait_synced(&agent);
    assert_eq!(
        (&status["failures"], &status["last_error"]),
        (&serde_json::json!(0), &serde_json::Value::Null),
        "{status}"
    );
    assert!(agent.log().contains("sending them again"), "{}", agent.log());
    let id = agent_id(&agent);
    let held = Command::new("psql")
        .arg(&moved)
        .args(["-tAX", "-c", &format!("SELECT count(*) = max(seq) FROM audit_events WHERE agent_id = '{id}'")])
        .output()
        .expect("psql");
    assert_eq!(stdout(&held).trim(), "t", "the whole history, without a hole: {}", stderr(&held));
}

/// Found by a new-user trial: a bkg_db that lost an agent's newest events (restored from an
/// older backup, rows deleted) was noticed only at the agent's next event; an idle agent said it
/// was in sync. It looks while idle (`SyncConfig::head_check`) and sends them again.
#[test]
fn an_idle_agent_sends_again_the_events_bkg_db_lost() {
    let postgres = Postgres::start();
    let agent = agent_with_db(&postgres.url());
    assert_eq!(runs(&agent, 2, 1), 2);
    wait_synced(&agent);
    let id = agent_id(&agent);
    let newest: u64 = postgres
        .query(&format!("SELECT max(seq) FROM audit_events WHERE agent_id = '{id}'"))
        .parse()
        .expect("the newest seq in bkg_db");
    postgres.query(&format!("DELETE FROM audit_events WHERE agent_id = '{id}' AND seq > {}", newest - 3));
    let whole = format!("SELECT count(*) = {newest} AND max(seq) = {newest} FROM audit_events WHERE agent_id = '{id}'");
    let deadline = Instant::now() + Duration::from_secs(60);
    while postgres.query(&whole) != "t" {
        assert!(Instant::now() < deadline, "bkg_db never got its lost events again:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(agent.log().contains("sending them again"), "{}", agent.log());
    let status = wait_synced(&agent);
    assert_eq!(
        (&status["failures"], &status["last_error"]),
        (&serde_json::json!(0), &serde_json::Value::Null),
        "{status}"
    );
}

/// Found by a new-user trial: a bkg_db whose schema went (made anew, restored from before its
/// migrations) gave `relation "…" does not exist`, with no word of the fix.
#[test]
fn a_bkg_db_without_its_schema_names_the_migration_as_the_fix() {
    let postgres = Postgres::start();
    let agent = agent_with_db(&postgres.url());
    wait_synced(&agent);
    postgres.query("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    assert_eq!(runs(&agent, 1, 1), 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    let error = loop {
        let (_, status) = sync_status(&agent);
        if let Some(error) = status["last_error"].as_str() {
            break error.to_owned();
        }
        assert!(Instant::now() < deadline, "no sync error: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(error.contains("does not exist"), "{error}");
    assert!(error.contains("bkg-agent --migrate-db"), "{error}");
    // Found by a new-user trial: doctor's fix told every failure to `bkg db migrate`, which an
    // agent's login refused the schema cannot; it points to the error's own fix.
    let doctor = agent.bkg().args(["doctor", "--json"]).output().expect("bkg doctor");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor's JSON");
    let check = report["checks"].as_array().into_iter().flatten().find(|check| check["name"] == "bkg_db");
    let check = check.cloned().unwrap_or_default();
    assert_eq!(check["status"], "fail", "{report}");
    assert!(check["found"].as_str().unwrap_or_default().contains("bkg-agent --migrate-db"), "{check}");
    assert!(check["fix"].as_str().unwrap_or_default().starts_with("do what the error says"), "{check}");
}

/// Found by a new-user trial: right after a restart `bkg sync status` said "last success:
/// never" until a batch went through, though bkg_db held the agent's events. It is kept.
#[test]
fn the_last_sync_is_remembered_across_an_agent_restart() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let mut agent = agent_with_db(&url);
    let synced = wait_synced(&agent);
    let before = synced["last_success_ms"].as_u64().expect("a last success");
    agent.stop();
    // With bkg_db down, nothing new can reach it: what status says is what was kept.
    postgres.down();
    agent.spawn(&AgentOptions { extra_args: vec!["--db-url".into(), url], ..AgentOptions::default() });
    let (_, status) = sync_status(&agent);
    postgres.up();
    // At least the one seen before the stop: later batches of the first agent may follow it.
    assert!(status["last_success_ms"].as_u64().is_some_and(|last| last >= before), "{status}");
}

/// The URL of `postgres` with login `role` (password `password`) in place of the owner.
pub(crate) fn url_as(postgres: &Postgres, role: &str, password: &str) -> String {
    let url = postgres.url();
    let port = url.rsplit(':').next().and_then(|rest| rest.split('/').next()).expect("the cluster's port");
    format!("postgres://{role}:{password}@127.0.0.1:{port}/postgres?sslmode=disable")
}

/// Each agent's rows are written only by the login it writes with (migration 6; until then any
/// bkg_agent login could rewrite another agent's runs or mark its keys revoked), and an agent
/// whose id another login holds is refused with that login's name, not shipped half.
#[test]
fn an_agents_rows_are_written_only_by_its_own_login() {
    let postgres = Postgres::start();
    let owner = agent_with_db(&postgres.url());
    wait_for_action(&owner, "log.opened");
    wait_synced(&owner);
    postgres.query(
        "CREATE ROLE agent_host1 LOGIN PASSWORD 'host1-password' IN ROLE bkg_agent;
         CREATE ROLE agent_host2 LOGIN PASSWORD 'host2-password' IN ROLE bkg_agent",
    );
    let mut first = agent_with_db(&url_as(&postgres, "agent_host1", "host1-password"));
    let second = agent_with_db(&url_as(&postgres, "agent_host2", "host2-password"));
    for agent in [&first, &second] {
        assert_eq!(runs(agent, 2, 1), 2);
        wait_synced(agent);
    }
    let (first_id, second_id) = (agent_id(&first), agent_id(&second));
    assert_eq!(
        postgres.query(&format!("SELECT role FROM bkg_agent_logins WHERE agent_id = '{first_id}'")),
        "agent_host1"
    );
    assert_eq!(postgres.query("SELECT count(*) FROM bkg_agent_logins"), "2", "the owner's agent binds nothing");

    // host2 reads host1's agent's rows, and changes none of them.
    let as_host2 = |sql: &str| postgres.psql_as("agent_host2", "host2-password", sql);
    let read = as_host2(&format!("SELECT count(*) FROM runs WHERE agent_id = '{first_id}'"));
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "2");
    let changed = as_host2(&format!("UPDATE runs SET exit_code = 99 WHERE agent_id = '{first_id}'"));
    assert_eq!(
        String::from_utf8_lossy(&changed.stdout).trim(),
        "UPDATE 0",
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let deleted = as_host2(&format!("DELETE FROM runs WHERE agent_id = '{first_id}'"));
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "DELETE 0");
    let forged = as_host2(&format!(
        "INSERT INTO keys (agent_id, id, namespace, seq, revoked_at_ms) VALUES ('{first_id}', 'key_forged', 'default', 999999, 1)"
    ));
    assert!(String::from_utf8_lossy(&forged.stderr).contains("row-level security"), "{forged:?}");
    let taken = as_host2(&format!(
        "INSERT INTO bkg_agent_logins (agent_id, role, claimed_ms) VALUES ('{first_id}', 'agent_host2', 0)"
    ));
    assert!(!taken.status.success(), "{taken:?}");
    // The change feed's head moves only forward, changes land only at positions taken from it,
    // and a namespace's row only widens (migration 7; found by a new-user trial: a login set the
    // head back, and every other agent's next batch clashed on a position and was parked).
    let refused = |output: std::process::Output, reason: &str| {
        let error = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success() && error.contains(reason), "not refused for {reason:?}: {output:?}");
    };
    refused(as_host2("UPDATE bkg_change_head SET position = 0"), "moves forward only");
    refused(as_host2("UPDATE bkg_change_head SET position = position + 1000000"), "moves forward only");
    let forged_change = format!(
        "INSERT INTO changes (position, agent_id, seq, namespace, kind, action, object_id, ts_ms)
         SELECT position + 1, '{second_id}', 999999, 'default', 'audit', 'forged', NULL, 0 FROM bkg_change_head"
    );
    refused(as_host2(&forged_change), "was not taken from bkg_change_head");
    // A temporary table of the same name does not stand in for the head.
    refused(
        as_host2(&format!(
            "CREATE TEMP TABLE bkg_change_head (position bigint); INSERT INTO bkg_change_head VALUES (9000000000000);
             {}",
            forged_change.replace("FROM bkg_change_head", "FROM public.bkg_change_head")
        )),
        "was not taken from bkg_change_head",
    );
    refused(as_host2("UPDATE namespaces SET namespace = namespace || '-renamed'"), "keeps its name");
    refused(as_host2("UPDATE namespaces SET last_seen_ms = 0"), "only widens");
    // Its own agent's rows it still writes.
    let own = as_host2(&format!("UPDATE agents SET last_seen_ms = last_seen_ms WHERE agent_id = '{second_id}'"));
    assert!(String::from_utf8_lossy(&own.stdout).trim().starts_with("UPDATE ") && own.status.success(), "{own:?}");
    assert_eq!(
        postgres.query(&format!("SELECT count(*) FROM runs WHERE agent_id = '{first_id}' AND exit_code = 0")),
        "2"
    );

    // A namespace role made without `GRANT … TO bkg_agent`: a stream of that namespace still
    // holds to it, and the agent says why it does not read as the role (found by a new-user
    // trial: silent).
    postgres.query(
        "CREATE ROLE bkg_ns_beta LOGIN PASSWORD 'beta-password' IN ROLE bkg_namespace;
         INSERT INTO bkg_namespace_roles (role, namespace) VALUES ('bkg_ns_beta', 'beta')",
    );
    let seen =
        second.bkg().args(["watch", "--json", "--no-follow", "--namespace", "beta"]).output().expect("bkg watch");
    assert_eq!(code(&seen), 0, "{}", stderr(&seen));
    assert!(
        second.log().contains("namespace role bkg_ns_beta exists but this agent's login may not act as it"),
        "{}",
        second.log()
    );

    // A namespace role the agent may act as, but which bkg_namespace_roles does not map (its
    // INSERT forgotten, or the database recreated while the cluster's roles stayed): row-level
    // security would show it nothing, so the feed filters by namespace itself, and says why
    // (found by a new-user trial: the feed was empty, without a word).
    postgres.query("CREATE ROLE bkg_ns_default NOLOGIN IN ROLE bkg_namespace; GRANT bkg_ns_default TO bkg_agent");
    let seen = second
        .bkg()
        .args(["watch", "--json", "--no-follow", "--namespace", "default", "--kinds", "runs"])
        .output()
        .expect("bkg watch");
    assert_eq!(code(&seen), 0, "{}", stderr(&seen));
    assert!(stdout(&seen).lines().count() >= 2, "the namespace's runs are seen: {}", stdout(&seen));
    assert!(
        second
            .log()
            .contains("namespace role bkg_ns_default is not mapped to namespace default in bkg_namespace_roles"),
        "{}",
        second.log()
    );
    postgres.query("DROP ROLE bkg_ns_default");

    // The head still moves for the next batches of both logins.
    for agent in [&first, &second] {
        assert_eq!(runs(agent, 1, 1), 1);
        let status = wait_synced(agent);
        assert_eq!(status["parked"], 0, "{status}");
    }

    // The first agent, started again with host2's login: refused, naming the login it has.
    first.stop();
    first.spawn(&AgentOptions {
        extra_args: vec!["--db-url".into(), url_as(&postgres, "agent_host2", "host2-password")],
        ..AgentOptions::default()
    });
    assert_eq!(runs(&first, 1, 1), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (_, status) = sync_status(&first);
        if status["last_error"].as_str().is_some_and(|error| error.contains("agent_host1")) {
            break status;
        }
        assert!(Instant::now() < deadline, "never refused: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("agent {first_id} writes to bkg_db as login `agent_host1`, not `agent_host2`")),
        "{error}"
    );
    assert!(status["backlog"].as_u64().is_some_and(|backlog| backlog > 0), "nothing of it was shipped: {status}");
    // bkg_db's copy, checked meanwhile, is intact and said not to hold what waits (found by a
    // new-user trial: "intact" read as complete).
    let verified = audit_verify(&first, true);
    assert_eq!(code(&verified), 0, "{}", stderr(&verified));
    // Counted from the agent's log (found by a new-user trial: the outbox's backlog was said,
    // which leaves out what bkg_db lost): at least what waited when the status was read (the
    // agent may have logged more since, its sync's failure among them).
    let note = stderr(&verified).lines().find(|line| line.contains("not in bkg_db yet")).map(str::to_owned);
    let note = note.unwrap_or_else(|| panic!("no note of what bkg_db lacks: {}", stderr(&verified)));
    let missing: u64 = note
        .strip_prefix("bkg: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{note}"));
    assert!(missing >= status["backlog"].as_u64().unwrap_or(u64::MAX), "{note}: {status}");
    assert!(note.contains("not in bkg_db yet: the copy checked ends at seq "), "{note}");
}
