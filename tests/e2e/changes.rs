//! The change feed (`bkg watch`, `GET /api/v1/changes`) of real agents, alone and sharing one real
//! PostgreSQL (scripts/postgres.sh).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bkg_tests::{Agent, code, stderr, stdout};

use super::bkg_db::{Postgres, agent_id, agent_with_db, agent_with_db_and_tcp, wait_synced};

/// Long enough for a loaded CI machine; only a change that never arrives fails on it.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `bkg watch --json`: its changes arrive on a channel as they are printed.
struct Watch {
    child: Child,
    changes: mpsc::Receiver<serde_json::Value>,
}

impl Watch {
    fn start(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(["watch", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bkg watch");
        let output = child.stdout.take().expect("piped stdout");
        let (sender, changes) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                let change = serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
                if sender.send(change).is_err() {
                    break;
                }
            }
        });
        Self { child, changes }
    }

    /// The next change; fails only when none comes at all.
    fn next(&self) -> serde_json::Value {
        self.changes.recv_timeout(PATIENCE).expect("a change within the patience")
    }

    /// Waits for the first change `wanted` accepts, returning it and those before it.
    fn until(&self, wanted: impl Fn(&serde_json::Value) -> bool) -> (serde_json::Value, Vec<serde_json::Value>) {
        let mut before = Vec::new();
        loop {
            let change = self.next();
            if wanted(&change) {
                return (change, before);
            }
            before.push(change);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bkg watch --json ARGS` to its end (`--count`): its changes.
fn watch_to_end(mut command: Command, args: &[&str]) -> Vec<serde_json::Value> {
    let output = command.args(["watch", "--json"]).args(args).stdin(Stdio::null()).output().expect("bkg watch");
    assert_eq!(code(&output), 0, "bkg watch {args:?}: {}", stderr(&output));
    stdout(&output).lines().map(|line| serde_json::from_str(line).expect("a change as JSON")).collect()
}

fn positions(changes: &[serde_json::Value]) -> Vec<u64> {
    changes.iter().map(|change| change["position"].as_u64().expect("a position")).collect()
}

#[test]
fn an_agent_without_bkg_db_serves_its_own_feed_and_resumes_after_a_cursor() {
    let mut agent = Agent::start();
    let watch = Watch::start(agent.bkg(), &["--kinds", "runs"]);
    let output = agent.exe(&["--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let (started, skipped) = watch.until(|change| change["action"] == "run.started");
    assert!(skipped.iter().all(|change| change["kind"] == "runs"), "{skipped:?}");
    let (finished, _) = watch.until(|change| change["action"] == "run.finished");
    assert_eq!(started["source"], "local");
    assert_eq!(started["object_id"], finished["object_id"]);
    assert_eq!(finished["namespace"], "default");
    assert_eq!(finished["record"]["run"], finished["object_id"], "the signed record comes along");

    // Every kind, from the start: the local positions are the audit seqs, without a gap.
    let first = positions(&watch_to_end(agent.bkg(), &["--count", "3"]));
    assert_eq!(first, [1, 2, 3]);
    let after = positions(&watch_to_end(agent.bkg(), &["--since", "2", "--count", "1"]));
    assert_eq!(after, [3], "resumed after its cursor: no repeat, no gap");

    // --no-follow prints what there is and ends, saying where the next look resumes.
    let caught_up = agent.bkg().args(["watch", "--json", "--kinds", "runs", "--no-follow"]).output();
    let caught_up = caught_up.expect("bkg watch --no-follow");
    assert_eq!(code(&caught_up), 0, "{}", stderr(&caught_up));
    let actions: Vec<String> = stdout(&caught_up)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a change")["action"].to_string())
        .collect();
    assert_eq!(actions, ["\"run.started\"", "\"run.finished\""]);
    let hint = stderr(&caught_up);
    let resume_from: u64 = hint
        .trim()
        .strip_prefix("bkg: caught up; resume with --since ")
        .and_then(|position| position.parse().ok())
        .unwrap_or_else(|| panic!("{hint}"));
    assert!(resume_from >= finished["position"].as_u64().expect("a position"), "{hint}");

    // Found by a new-user trial: an admin's cursor, a position of the whole feed, was refused for
    // the feed of a namespace whose own changes end before it.
    let since = resume_from.to_string();
    let one_namespace = agent.bkg().args(["watch", "--no-follow", "--namespace", "other", "--since", &since]).output();
    let one_namespace = one_namespace.expect("bkg watch --namespace");
    assert_eq!((code(&one_namespace), stdout(&one_namespace)), (0, String::new()), "{}", stderr(&one_namespace));

    let bad = agent.bkg().args(["watch", "--kinds", "runs,logs"]).output().expect("bkg watch");
    assert_eq!(code(&bad), 125);
    assert!(stderr(&bad).contains("unknown kind \"logs\""), "{}", stderr(&bad));
    // Over HTTP a kind there is not is a value read and refused (422), as docs/api.md sorts them.
    let refused = bkg_tests::http::unix_request(&agent.socket, "GET", "/api/v1/changes?kinds=runs,logs", None);
    assert_eq!(refused.status, 422, "{}", refused.text());
    let misnamed = agent.bkg().args(["watch", "--namespace", "Team_A"]).output().expect("bkg watch");
    assert_eq!(code(&misnamed), 125, "{}", stderr(&misnamed));
    assert!(
        stderr(&misnamed).contains("namespace `Team_A` must be lowercase letters, digits and '-'"),
        "{}",
        stderr(&misnamed)
    );
    // Found by a new-user trial: a name of 57 to 63 characters, its bkg_db role's name too long for
    // PostgreSQL, ended the feed with "identifier too long".
    let long = "n".repeat(57);
    let too_long = agent.bkg().args(["watch", "--no-follow", "--namespace", &long]).output().expect("bkg watch");
    assert_eq!(code(&too_long), 125, "{}", stderr(&too_long));
    assert!(stderr(&too_long).contains("at most 56 characters"), "{}", stderr(&too_long));
    let key =
        agent.bkg().args(["keys", "create", "--role", "namespace", "--namespace", &long]).output().expect("bkg keys");
    assert_eq!(code(&key), 125, "{}", stderr(&key));
    assert!(stderr(&key).contains("at most 56 characters"), "{}", stderr(&key));
    // A cursor past the newest change would skip the changes up to it when they came.
    let ahead = agent.bkg().args(["watch", "--since", "1000000"]).output().expect("bkg watch");
    assert_eq!(code(&ahead), 125, "{}", stderr(&ahead));
    assert!(stderr(&ahead).contains("since 1000000 is past this feed's newest change"), "{}", stderr(&ahead));

    // Its reader gone (`bkg watch | head -1`), it ends with 0 though no change comes (was: only
    // at its next write, so on a quiet feed never; found by a new-user trial).
    let mut quiet = agent.bkg().args(["watch"]).stdout(Stdio::piped()).spawn().expect("bkg watch");
    let mut first = String::new();
    BufReader::new(quiet.stdout.take().expect("piped stdout")).read_line(&mut first).expect("a first change");
    let (ended, status) = mpsc::channel();
    std::thread::spawn(move || ended.send(quiet.wait().map(|status| status.code())));
    let status = status.recv_timeout(PATIENCE).expect("bkg watch ends once its reader has gone");
    assert_eq!(status.ok().flatten(), Some(0));

    // A stopping agent ends the stream itself, saying where to resume (not a cut connection).
    let mut open = agent.bkg().args(["watch"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let open = open.as_mut().expect("bkg watch");
    let mut first = String::new();
    // Kept open until the end: a closed stdout would end `bkg watch` by itself.
    let mut changes = BufReader::new(open.stdout.take().expect("piped stdout"));
    changes.read_line(&mut first).expect("a first change");
    assert!(first.contains("log.opened"), "{first}");
    agent.stop();
    let status = open.wait().expect("bkg watch ends");
    let mut told = String::new();
    std::io::Read::read_to_string(&mut open.stderr.take().expect("piped stderr"), &mut told).expect("stderr");
    assert_eq!(status.code(), Some(125), "{told}");
    assert!(told.contains("the agent is stopping; resume with --since "), "{told}");
    drop(changes);
}

#[test]
fn a_watch_on_one_agent_sees_a_run_made_on_another_sharing_bkg_db() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let first = agent_with_db(&url);
    let second = agent_with_db(&url);
    let second_id = agent_id(&second);
    let watch = Watch::start(first.bkg(), &["--kinds", "runs"]);
    let output = second.exe(&["--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let (finished, _) =
        watch.until(|change| change["action"] == "run.finished" && change["agent_id"] == second_id.as_str());
    assert_eq!(finished["source"], "bkg_db");
    assert_eq!(finished["kind"], "runs");
    let newest = finished["position"].as_u64().expect("a position");
    let ahead = first.bkg().args(["watch", "--since", &(newest + 1000).to_string()]).output().expect("bkg watch");
    assert_eq!(code(&ahead), 125, "{}", stderr(&ahead));
    assert!(stderr(&ahead).contains("is past this feed's newest change"), "{}", stderr(&ahead));
}

/// Makes `count` changes on `agent` (keys: one audit event each, cheap), from `workers` threads.
fn make_keys(agent: &Agent, count: usize, workers: usize, namespace: &str) {
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                for _ in 0..count / workers {
                    let output = agent
                        .bkg()
                        .args(["keys", "create", "--role", "namespace", "--namespace", namespace])
                        .output()
                        .expect("bkg keys create");
                    assert_eq!(code(&output), 0, "{}", stderr(&output));
                }
            });
        }
    });
}

#[test]
fn a_stream_cut_and_resumed_over_500_changes_of_two_agents_misses_nothing_and_repeats_nothing() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let first = agent_with_db(&url);
    let second = agent_with_db(&url);

    // A reader cut while the changes are being made: killed after some, resumed from its last.
    let mut read = Vec::new();
    let watch = Watch::start(first.bkg(), &[]);
    std::thread::scope(|scope| {
        scope.spawn(|| make_keys(&first, 260, 2, "left"));
        scope.spawn(|| make_keys(&second, 260, 2, "right"));
        for _ in 0..37 {
            read.push(watch.next());
        }
    });
    drop(watch);
    wait_synced(&first);
    wait_synced(&second);
    let head: u64 = postgres.query("SELECT max(position) FROM changes").parse().expect("a head position");
    assert_eq!(postgres.query("SELECT count(*) FROM changes"), head.to_string(), "no gap in bkg_db");
    assert!(head >= 520, "{head} changes");

    // Then cut by --count, in uneven pieces, alternating between the two agents.
    let sizes = [1_u64, 50, 7, 113, 2, 64];
    let mut turn = 0;
    while positions(&read).last().copied().unwrap_or(0) < head {
        let last = positions(&read).last().copied().unwrap_or(0);
        let size = sizes[turn % sizes.len()].min(head - last);
        let agent = if turn % 2 == 0 { &second } else { &first };
        let since = last.to_string();
        read.extend(watch_to_end(agent.bkg(), &["--since", &since, "--count", &size.to_string()]));
        turn += 1;
    }
    assert_eq!(positions(&read), (1..=head).collect::<Vec<_>>(), "every position once, in order");
    let events: BTreeSet<(String, u64)> = read
        .iter()
        .map(|change| (change["agent_id"].as_str().expect("agent").to_owned(), change["seq"].as_u64().expect("seq")))
        .collect();
    assert_eq!(events.len() as u64, head, "no event twice");
    assert_eq!(postgres.query("SELECT count(*) FROM audit_events"), head.to_string(), "every shipped event");
    for agent in [&first, &second] {
        let id = agent_id(agent);
        let seqs: Vec<u64> = events.iter().filter(|(agent, _)| *agent == id).map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "agent {id}: every seq");
    }
}

#[test]
fn a_namespace_keys_stream_and_psql_as_its_role_show_only_its_namespace() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let files = tempfile::tempdir().expect("temp dir");
    let (agent, _, address) = agent_with_db_and_tcp(&url, files.path());
    let other = agent_with_db(&url);
    let key_of = |agent: &Agent, namespace: &str| {
        let output = agent
            .bkg()
            .args(["keys", "create", "--role", "namespace", "--namespace", namespace])
            .output()
            .expect("bkg keys create");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        stdout(&output).trim().to_owned()
    };
    let alpha = key_of(&agent, "alpha");
    let beta = key_of(&agent, "beta");
    let remote = |key: &str| {
        let mut command = agent.bkg();
        command.env("BKG_REMOTE", format!("http://{address}")).env("BKG_API_KEY", key);
        command
    };
    // The namespace's role, made as an operator makes it once the agent has migrated bkg_db (the
    // group role `bkg_namespace` comes with the schema): `bkg-agent --namespace-role`, the
    // password on stdin (found by a new-user trial: the docs named a Rust function for it).
    wait_synced(&agent);
    let mut make_role = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
        .args(["--namespace-role", "alpha"])
        .env("BKG_DB_URL", postgres.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg-agent --namespace-role");
    std::io::Write::write_all(&mut make_role.stdin.take().expect("stdin"), b"alpha-password\n").expect("password");
    let made = make_role.wait_with_output().expect("bkg-agent --namespace-role");
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    assert!(stdout(&made).contains("role bkg_ns_alpha logs in with that password"), "{}", stdout(&made));
    for (namespace, said) in
        [("Alpha", "`Alpha` must be lowercase letters"), ("alpha", "give the role's password on stdin")]
    {
        let refused = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
            .args(["--namespace-role", namespace])
            .env("BKG_DB_URL", postgres.url())
            .stdin(Stdio::null())
            .output()
            .expect("bkg-agent --namespace-role");
        assert_eq!((code(&refused), stderr(&refused).lines().count()), (2, 1), "{}", stderr(&refused));
        assert!(stderr(&refused).contains(said), "{}", stderr(&refused));
    }
    // Too short a password (a login of the shared database), and a login that may not create
    // roles: one line each that says what to do (found by a new-user trial: one character was
    // taken, and the other was given advice about migrations).
    postgres.query("CREATE ROLE plain_login LOGIN PASSWORD 'plain-password'");
    for (url, password, said, exit) in [
        (postgres.url(), "short\n", "the role's password must be at least 12 characters", 2),
        (
            super::bkg_db::url_as(&postgres, "plain_login", "plain-password"),
            "gamma-password\n",
            "login `plain_login` may not create roles: run it as the schema's owner",
            1,
        ),
    ] {
        let mut refused = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
            .args(["--namespace-role", "gamma"])
            .env("BKG_DB_URL", url)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bkg-agent --namespace-role");
        std::io::Write::write_all(&mut refused.stdin.take().expect("stdin"), password.as_bytes()).expect("password");
        let refused = refused.wait_with_output().expect("bkg-agent --namespace-role");
        assert_eq!((code(&refused), stderr(&refused).lines().count()), (exit, 1), "{}", stderr(&refused));
        assert!(stderr(&refused).contains(said), "{}", stderr(&refused));
    }
    let as_alpha =
        postgres.psql_as("bkg_ns_alpha", "alpha-password", "SELECT count(*) FROM runs WHERE namespace <> 'alpha'");
    assert_eq!((code(&as_alpha), stdout(&as_alpha).trim()), (0, "0"), "{}", stderr(&as_alpha));

    let watch = Watch::start(remote(&alpha), &[]);
    for (key, namespace) in [(&alpha, "alpha"), (&beta, "beta"), (&alpha, "alpha")] {
        let output = remote(key).args(["exe", "--type", "python", "-c", "print(1)"]).stdin(Stdio::null()).output();
        let output = output.expect("bkg exe");
        assert_eq!(code(&output), 0, "exe in {namespace}: {}", stderr(&output));
    }
    make_keys(&other, 4, 1, "beta");
    make_keys(&other, 2, 1, "alpha");
    wait_synced(&agent);
    wait_synced(&other);
    let alpha_changes: usize =
        postgres.query("SELECT count(*) FROM changes WHERE namespace = 'alpha'").parse().expect("a count");
    let seen: Vec<_> = (0..alpha_changes).map(|_| watch.next()).collect();
    assert!(seen.iter().all(|change| change["namespace"] == "alpha"), "{seen:?}");
    assert!(seen.iter().any(|change| change["agent_id"] == agent_id(&other).as_str()), "the other agent's too");
    assert_eq!(seen.iter().filter(|change| change["action"] == "run.finished").count(), 2);
    assert!(!agent.log().contains("no namespace role to read the change feed as"), "read as bkg_ns_alpha");
    // A change of beta, then one of alpha: the next the stream shows is alpha's.
    make_keys(&agent, 1, 1, "beta");
    make_keys(&agent, 1, 1, "alpha");
    let next = watch.next();
    assert_eq!((next["namespace"].as_str(), next["action"].as_str()), (Some("alpha"), Some("key.created")), "{next}");

    let refused = remote(&alpha).args(["watch", "--namespace", "beta"]).output().expect("bkg watch");
    assert_eq!(code(&refused), 125);
    assert!(stderr(&refused).contains("sees only namespace `alpha`"), "{}", stderr(&refused));
    // Past the newest change: refused without the newest position, which counts every namespace.
    let ahead = remote(&alpha).args(["watch", "--since", "9000000"]).output().expect("bkg watch");
    assert_eq!(code(&ahead), 125, "{}", stderr(&ahead));
    assert!(stderr(&ahead).contains("since 9000000 is past this feed's newest change: "), "{}", stderr(&ahead));
    // Held to its own namespace's newest: probing `since` must not count the others' changes
    // (found by a new-user trial: it was every namespace's newest).
    make_keys(&agent, 1, 1, "beta");
    wait_synced(&agent);
    let alpha_newest: u64 =
        postgres.query("SELECT max(position) FROM changes WHERE namespace = 'alpha'").parse().expect("a position");
    let since = (alpha_newest + 1).to_string();
    let beyond = remote(&alpha).args(["watch", "--no-follow", "--since", &since]).output().expect("bkg watch");
    assert_eq!(code(&beyond), 125, "past alpha's newest, not past beta's: {}", stderr(&beyond));

    // psql as the namespace's role: its own rows of runs and changes, nothing else.
    let as_alpha = |sql: &str| postgres.query_as("bkg_ns_alpha", "alpha-password", sql);
    assert_eq!(as_alpha("SELECT string_agg(DISTINCT namespace, ',') FROM changes"), "alpha");
    wait_synced(&agent);
    let all_of_alpha = postgres.query("SELECT count(*) FROM changes WHERE namespace = 'alpha'");
    assert_eq!(as_alpha("SELECT count(*) FROM changes"), all_of_alpha);
    assert_eq!(as_alpha("SELECT string_agg(DISTINCT namespace, ',') FROM runs"), "alpha");
    assert_eq!(as_alpha("SELECT count(*) FROM runs"), "2");
}

/// A stream opened with a key is held to that key: a session key sees no other key's events (it
/// may see no other key), and its stream ends once the key is revoked, before a later change
/// reaches it.
#[test]
fn a_keys_stream_shows_only_what_the_key_may_see_and_ends_with_the_key() {
    let files = tempfile::tempdir().expect("temp dir");
    let address_file = files.path().join("address");
    let agent = Agent::start_with(bkg_tests::AgentOptions {
        extra_args: vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-address-file".into(),
            address_file.display().to_string(),
        ],
        warm_pool: 0,
        ..bkg_tests::AgentOptions::default()
    });
    let address = super::bkg_db::listen_address(&agent, &address_file);
    let key = |role: &str| {
        let output = agent
            .bkg()
            .args(["keys", "create", "--role", role, "--namespace", "team", "--json"])
            .output()
            .expect("bkg keys create");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        let issued: serde_json::Value = serde_json::from_slice(&output.stdout).expect("issued key");
        (issued["id"].as_str().unwrap_or_default().to_owned(), issued["key"].as_str().unwrap_or_default().to_owned())
    };
    let (session_id, session) = key("session");
    let (_, team) = key("namespace");
    let remote = |key: &str| {
        let mut command = agent.bkg();
        command.env("BKG_REMOTE", format!("http://{address}")).env("BKG_API_KEY", key).stdin(Stdio::null());
        command
    };

    let seen = remote(&session).args(["watch", "--json", "--no-follow", "--kinds", "keys"]).output();
    let seen = seen.expect("bkg watch");
    assert_eq!(code(&seen), 0, "{}", stderr(&seen));
    let objects: Vec<String> = stdout(&seen)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a change")["object_id"].to_string())
        .collect();
    assert_eq!(objects, [format!("\"{session_id}\"")], "only its own key's events");

    let run_in_team = || {
        let ran = remote(&team).args(["exe", "--json", "--type", "python", "-c", "print(1)"]).output();
        let ran = ran.expect("bkg exe");
        assert_eq!(code(&ran), 0, "{}", stderr(&ran));
        serde_json::from_slice::<serde_json::Value>(&ran.stdout).expect("a result")["id"].to_string()
    };
    let mut watching = remote(&session)
        .args(["watch", "--json", "--kinds", "runs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg watch");
    let mut lines = BufReader::new(watching.stdout.take().expect("piped stdout"));
    // The stream is open once it shows a run made after it started.
    let first_run = run_in_team();
    let mut first = String::new();
    lines.read_line(&mut first).expect("the first run's change");
    assert!(first.contains(first_run.trim_matches('"')), "{first}");
    let revoked = agent.bkg().args(["keys", "revoke", &session_id]).output().expect("bkg keys revoke");
    assert_eq!(code(&revoked), 0, "{}", stderr(&revoked));
    let second_run = run_in_team();
    // A stream that outlived its key would never end: it is stopped after the patience.
    let pid = watching.id().to_string();
    let (sender, waited) = mpsc::channel();
    std::thread::spawn(move || sender.send(watching.wait_with_output()));
    let Ok(ended) = waited.recv_timeout(PATIENCE) else {
        let _ = Command::new("kill").arg(&pid).status();
        panic!("the stream outlived its revoked key");
    };
    let ended = ended.expect("bkg watch ends");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).expect("the rest of stdout");
    assert_eq!(code(&ended), 125, "{}", stderr(&ended));
    assert!(stderr(&ended).contains("the key was revoked; resume with --since "), "{}", stderr(&ended));
    assert!(!rest.contains(second_run.trim_matches('"')), "a change after the revocation reached the key: {rest}");
}
