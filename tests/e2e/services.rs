//! Services: a persistent sandbox run detached (`bkgr -d`) without a timeout, reachable on its
//! forwarded host port, started again when it is killed (`restart: on-failure`), its health in
//! `bkg status`, and stopped for good by `bkg stop`. And `bkg exe -p` for a one-off run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("address").port()
}

/// GET / on the host's loopback port; the body, or `None` when nothing answers.
fn get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// Polls `probe` until it gives a value, for at most two minutes.
fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(agent: &Agent, project: &Path) -> serde_json::Value {
    status_of(agent, project, "web")
}

/// `bkg status NAME --json` in `project`.
fn status_of(agent: &Agent, project: &Path, name: &str) -> serde_json::Value {
    let output = agent.bkg_in(project, &["status", name, "--json"]);
    assert_eq!(code(&output), 0, "status: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

/// `bkg logs NAME -f` in `project`, its stdout and stderr on pipes.
fn follow_log(agent: &Agent, project: &Path, name: &str) -> std::process::Child {
    agent
        .bkg()
        .current_dir(project)
        .args(["logs", name, "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg logs -f")
}

/// A project whose sandbox `flaky` is a `restart: on-failure` service that always fails.
fn flaky_project() -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  flaky:\n    type: python\n    restart: on-failure\n    scripts:\n      \
         start: python -c \"raise SystemExit(4)\"\n",
    )
    .expect("cave.yaml");
    project
}

/// An agent that allows `timeout: none`, and a copy of examples/python-service forwarding a
/// free host port instead of its 8080.
fn service_example() -> (Agent, tempfile::TempDir, u16) {
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--max-timeout".into(), "none".into()],
        ..Default::default()
    });
    let project = tempfile::tempdir().expect("project dir");
    let example = bkg_tests::examples_dir().join("python-service");
    std::fs::copy(example.join("server.py"), project.path().join("server.py")).expect("server.py");
    let port = free_port();
    let cave = std::fs::read_to_string(example.join("cave.yaml")).expect("cave.yaml");
    assert!(cave.contains("127.0.0.1:8080:8000"), "{cave}");
    let cave = cave.replace("127.0.0.1:8080:8000", &format!("127.0.0.1:{port}:8000"));
    std::fs::write(project.path().join("cave.yaml"), cave).expect("cave.yaml");
    (agent, project, port)
}

/// Starts the example's service in the background, greeting with `marker`, and returns its
/// first answer on the forwarded `port`.
fn start_service(agent: &Agent, dir: &Path, port: u16, marker: &str) -> String {
    let started = agent.bkgr(dir, &["-d", "web", "start", "--", marker]);
    assert_eq!(code(&started), 0, "bkgr -d: {}", stderr(&started));
    assert_eq!(stderr(&started), "", "`timeout: none`: nothing to say of a timeout");
    poll("the service on its forwarded port", || get(port).filter(|body| body.starts_with(marker)))
}

#[test]
fn a_service_is_forwarded_restarted_when_killed_shown_healthy_and_stopped() {
    let (agent, project, port) = service_example();
    let dir = project.path();
    // The greeting names this test's server among the host's processes.
    let marker = format!("svc-{}-{port}", std::process::id());

    let first = start_service(&agent, dir, port, &marker);
    // Each start of the server draws its own token: a new one means a new process.
    let first_token = first.rsplit(' ').next().expect("token").to_owned();

    let healthy = poll("status to show the port accepting", || {
        let info = status(&agent, dir);
        (info["service"]["ports"][0]["accepting"] == true).then_some(info)
    });
    assert_eq!(healthy["state"], "running", "{healthy}");
    assert!(healthy["limits"]["timeout_ms"].is_null(), "timeout none: {healthy}");
    assert_eq!(healthy["service"]["state"], "running", "{healthy}");
    assert_eq!(healthy["service"]["restart"], "on-failure", "{healthy}");
    assert_eq!(healthy["service"]["restarts"], 0, "{healthy}");
    assert_eq!(healthy["service"]["ports"][0]["mapping"], format!("127.0.0.1:{port}:8000"), "{healthy}");
    let shown = agent.bkg_in(dir, &["status", "web"]);
    assert!(stdout(&shown).contains(&format!("127.0.0.1:{port}:8000 (accepting)")), "{}", stdout(&shown));

    // cave.yaml edited while it runs, and `bkgr -d` refused as busy: the running service keeps
    // its definition, so its restart below still listens on `port` (found by a new-user trial:
    // the refused start had stored the new port, and the restart took it).
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    let elsewhere = free_port();
    std::fs::write(dir.join("cave.yaml"), cave.replace(&format!(":{port}:"), &format!(":{elsewhere}:"))).expect("edit");
    let refused = agent.bkgr(dir, &["-d", "web"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("already running"), "{}", stderr(&refused));
    let shown = agent.bkg_in(dir, &["status", "web"]);
    assert!(stdout(&shown).contains(&format!("127.0.0.1:{port}:8000 (accepting)")), "{}", stdout(&shown));
    // The agent keeps to that for API clients too: another definition is refused while it
    // runs, so no restart can mix the old command with new ports.
    let info = status(&agent, dir);
    let mut changed = serde_json::json!({
        "name": "web", "namespace": info["namespace"], "project_dir": info["project_dir"],
        "language": info["language"], "restart": "on-failure",
        "ports": [format!("127.0.0.1:{elsewhere}:8000")],
    });
    let id = info["id"].as_str().expect("id");
    let put = bkg_tests::http::unix_request(&agent.socket, "PUT", &format!("/api/v1/sandboxes/{id}"), Some(&changed));
    assert_eq!(put.status, 409, "{}", put.text());
    assert!(put.text().contains("keeps the definition it started with"), "{}", put.text());
    changed["ports"] = serde_json::json!([]);
    let put = bkg_tests::http::unix_request(&agent.socket, "PUT", &format!("/api/v1/sandboxes/{id}"), Some(&changed));
    assert_eq!(put.status, 409, "{}", put.text());

    // Kill the server from the host, as an OOM or a crash would.
    let killed = Command::new("pkill").args(["-KILL", "-f", &format!("server.py {marker}")]).status().expect("pkill");
    assert!(killed.success(), "the server process was found");
    let second = poll("the service to answer again after its restart", || {
        get(port).filter(|body| body.starts_with(&marker) && !body.ends_with(&format!(" {first_token}")))
    });
    assert_ne!(second, first, "a new process answers");
    let restarted = poll("status to count the restart", || {
        let info = status(&agent, dir);
        (info["service"]["restarts"] == 1 && info["service"]["state"] == "running").then_some(info)
    });
    assert!(restarted["service"]["last_exit_code"].is_null() || restarted["service"]["last_exit_code"] != 0);

    let stop = agent.bkg_in(dir, &["stop", "web"]);
    assert_eq!(code(&stop), 0, "stop: {}", stderr(&stop));
    let stopped = status(&agent, dir);
    assert_eq!(stopped["state"], "idle", "{stopped}");
    assert_eq!(stopped["service"]["state"], "stopped", "{stopped}");
    assert_eq!(stopped["last_run"]["killed_by"], "cancelled", "{stopped}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the forwarded port is closed with the run");
    agent.wait_idle();
    let after = status(&agent, dir);
    assert_eq!(after["service"]["state"], "stopped", "a stopped service is not started again: {after}");
    assert!(after["current_run"].is_null(), "{after}");
}

/// `bkgr -d` refuses a host port another process holds, as plain `bkgr` does, rather than
/// saying the service runs and then restarting it for ever (found by a new-user trial).
#[test]
fn a_detached_service_whose_host_port_is_taken_is_refused_at_once() {
    let (agent, project, port) = service_example();
    let dir = project.path();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the service's port");
    let started = agent.bkgr(dir, &["-d", "web"]);
    assert_eq!(code(&started), 125, "{}", stderr(&started));
    assert_eq!(stdout(&started), "", "no run was started");
    assert!(stderr(&started).contains(&format!("host port 127.0.0.1:{port} cannot be used")), "{}", stderr(&started));
    let listed = agent.bkg_in(dir, &["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("ls JSON");
    for sandbox in listed.as_array().into_iter().flatten() {
        assert!(sandbox["current_run"].is_null() && sandbox["service"].is_null(), "{sandbox}");
    }
}

/// A `restart: on-failure` service ended by the agent's stop, or by its crash, is started again
/// by the next agent on the same state directory; one stopped with `bkg stop` is not.
#[test]
fn a_service_outlives_an_agent_restart_and_a_crash_but_not_a_stop() {
    let (mut agent, project, port) = service_example();
    let dir = project.path();
    let marker = format!("svc-resume-{}-{port}", std::process::id());
    let options = AgentOptions { extra_args: vec!["--max-timeout".into(), "none".into()], ..Default::default() };
    let token = |body: &str| body.rsplit(' ').next().unwrap_or_default().to_owned();
    let mut last = token(&start_service(&agent, dir, port, &marker));
    // A follow of its log ends with the agent's stop, saying so.
    let mut follow = follow_log(&agent, dir, "web");
    // Following once the log's first line has come: a stop before that would cut its request.
    let mut followed_out = BufReader::new(follow.stdout.take().expect("the follow's stdout"));
    let mut first = String::new();
    followed_out.read_line(&mut first).expect("the log's first line");
    assert_eq!(first, "serving on port 8000\n");

    for (how, end) in [("a stop", Agent::stop as fn(&mut Agent)), ("a crash", Agent::crash)] {
        end(&mut agent);
        agent.spawn(&options);
        let again = poll(&format!("the service to answer again after {how}"), || {
            get(port).filter(|body| body.starts_with(&marker) && token(body) != last)
        });
        last = token(&again);
        let info = status(&agent, dir);
        assert_eq!(info["service"]["state"], "running", "after {how}: {info}");
    }
    std::io::copy(&mut followed_out, &mut std::io::sink()).expect("the rest of the log");
    let followed = follow.wait_with_output().expect("bkg logs -f ended with the first stop");
    assert_eq!(code(&followed), 125, "{}", stderr(&followed));
    assert!(stderr(&followed).contains("the agent stopped, so following ended"), "{}", stderr(&followed));

    // Its port taken while no agent ran: the next agent cannot start it again, and `bkg status`
    // says why (was: only the agent's log did; found by a new-user trial).
    agent.stop();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the service's port");
    agent.spawn(&options);
    let info = poll("status to say why the service was not started again", || {
        let info = status(&agent, dir);
        info["service"]["not_restarted"].as_str().is_some_and(|why| why.contains("in use")).then_some(info)
    });
    assert_eq!(info["service"]["state"], "stopped", "{info}");
    let shown = agent.bkg_in(dir, &["status", "web"]);
    assert!(stdout(&shown).contains(" · not started again: "), "{}", stdout(&shown));
    drop(squatter);
    start_service(&agent, dir, port, &marker);

    let stop = agent.bkg_in(dir, &["stop", "web"]);
    assert_eq!(code(&stop), 0, "stop: {}", stderr(&stop));
    agent.stop();
    let earlier_log = agent.log().len();
    agent.spawn(&options);
    poll("the next agent to read the services left", || {
        agent.log()[earlier_log..].contains("services the last agent left").then_some(())
    });
    let info = status(&agent, dir);
    assert!(info["current_run"].is_null(), "a stopped service is not started by the next agent: {info}");
    // Its status still says how it ended, with the restarts it had.
    assert_eq!(info["service"]["state"], "stopped", "{info}");
    assert_eq!(info["service"]["restart"], "on-failure", "{info}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing answers on the port");
}

/// Ten minutes of a service: `make test` runs this beside the rest of the suite, in the
/// background (scripts/background-test.sh), so the suite takes no longer for it.
#[test]
#[ignore = "ten minutes long: make test runs it in the background (scripts/background-test.sh)"]
fn a_service_keeps_answering_for_ten_minutes_and_stops_cleanly() {
    const LIFE: Duration = Duration::from_secs(600);
    let (agent, project, port) = service_example();
    let dir = project.path();
    let marker = format!("svc-long-{}-{port}", std::process::id());
    let first = start_service(&agent, dir, port, &marker);

    // The same process answers all along: a restart would draw a new token.
    let since = Instant::now();
    let mut answers = 0;
    while since.elapsed() < LIFE {
        std::thread::sleep(Duration::from_secs(15));
        let body = get(port);
        assert_eq!(body.as_deref(), Some(first.as_str()), "after {:?} ({answers} answers)", since.elapsed());
        answers += 1;
    }
    let info = status(&agent, dir);
    assert_eq!((info["state"].as_str(), info["service"]["restarts"].as_u64()), (Some("running"), Some(0)), "{info}");

    let stop = agent.bkg_in(dir, &["stop", "web"]);
    assert_eq!(code(&stop), 0, "stop: {}", stderr(&stop));
    assert_eq!(status(&agent, dir)["state"], "idle");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the forwarded port is closed with the run");
    agent.wait_idle();
}

#[test]
fn exe_publishes_a_port_for_the_run_and_refuses_timeout_none() {
    let agent = Agent::start();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8000");
    let script = "import http.server\n\
        class Once(http.server.BaseHTTPRequestHandler):\n    \
            def do_GET(self):\n        \
                self.send_response(200); self.send_header('Content-Length', '7'); self.end_headers(); self.wfile.write(b'served!')\n\
        server = http.server.HTTPServer(('127.0.0.1', 8000), Once)\n\
        print('up', flush=True)\n\
        server.handle_request()\n";
    let mut child = agent
        .bkg()
        .args(["exe", "-p", &publish, "--type", "python", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg exe");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    assert_eq!(line, "up\n");
    assert_eq!(get(port).as_deref(), Some("served!"));
    let status = child.wait().expect("bkg exe ends");
    assert!(status.success(), "{status:?}");

    let none = agent.exe(&["--timeout", "none", "--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&none), 125, "{}", stderr(&none));
    assert!(stderr(&none).contains("timeout none"), "{}", stderr(&none));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("address").port();
    let busy = agent.exe(&["-p", &format!("{taken_port}:8000"), "--type", "python", "-c", "print(1)"]);
    assert_ne!(code(&busy), 0);
    assert!(stderr(&busy).contains(&format!("host port 127.0.0.1:{taken_port} cannot be used")), "{}", stderr(&busy));
    // It says what to do (found by a new-user trial: only what went wrong).
    assert!(
        stderr(&busy).contains(": free it, or forward another host port (`ports:` in cave.yaml, `bkg exe -p`)"),
        "{}",
        stderr(&busy)
    );
    // An address this host does not have is no port to free (found by a new-user trial).
    let elsewhere = agent.exe(&["-p", "192.0.2.7:47842:8000", "--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&elsewhere), 125, "{}", stderr(&elsewhere));
    assert!(stderr(&elsewhere).contains("the address is not one of this host's"), "{}", stderr(&elsewhere));
}

/// `bkg logs -f` of a service without restarts that `bkg stop` ends says it was stopped (was:
/// silent, as the run's end was not recorded yet when its log ended; found by a new-user trial).
#[test]
fn following_a_service_that_bkg_stop_ends_says_it_was_stopped() {
    let agent = Agent::start();
    let (project, follow) = a_followed_ticker(&agent);
    let stop = agent.bkg_in(project.path(), &["stop", "ticker"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    assert_eq!(why_the_follow_ended(follow), "bkg: ticker's service was stopped; following ended\n");
}

/// `bkg logs -f` of a service follows it into each restart's run, and ends when it is stopped.
#[test]
fn logs_follow_a_service_across_its_restarts() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("attempt.py"),
        "import os\nn = len(os.listdir('/workspace')) + 1\n\
        open(f'/workspace/{n}', 'w').close()\nprint('attempt', n, flush=True)\nraise SystemExit(1)\n",
    )
    .expect("attempt.py");
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  flaky:\n    type: python\n    restart: on-failure\n    scripts:\n      \
         start: python /project/attempt.py\n",
    )
    .expect("cave.yaml");
    let started = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    // A detached run's timeout is said, as it ends it (was: a server went away after the
    // default minute without a word; found by a new-user trial).
    assert!(stderr(&started).starts_with("bkgr: flaky: its run ends at its timeout, 1m "), "{}", stderr(&started));
    let mut follow = follow_log(&agent, dir, "flaky");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|line| lines_tx.send(line))
    });
    let mut seen = Vec::new();
    // Attempts 2 and 3 start after pauses of 1 s and 2 s: the follow waits them out.
    while seen.len() < 3 {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => seen.push(line),
            Err(error) => panic!("the follow gave no line ({error}) after {seen:?}"),
        }
    }
    let first: u32 = seen[0].trim_start_matches("attempt ").parse().expect("an attempt");
    assert_eq!(seen, (first..first + 3).map(|n| format!("attempt {n}")).collect::<Vec<_>>());
    let stop = agent.bkg_in(dir, &["stop", "flaky"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    let status = poll("the follow to end with the service", || follow.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    // It says why (was: silent, as if the service had ended by itself; found by a new-user trial).
    let mut said = String::new();
    follow.stderr.take().expect("stderr").read_to_string(&mut said).expect("the follow's stderr");
    assert_eq!(said, "bkg: flaky's service was stopped; following ended\n");
}

/// `bkg logs -f` of a service ended by `bkg rm` says the sandbox was removed (was: "was
/// stopped" when the follower asked before the removal ended; found by a new-user trial).
/// A follow says how the service's last run ended, not its last failure's code, and nothing of
/// the service after another run's log (found by a new-user trial: "ended with exit 9" after a
/// last run that exited 0, and after a foreground run of the sandbox).
#[test]
fn a_follow_ends_with_how_the_run_it_followed_ended() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    // Fails the first time, succeeds the second.
    std::fs::write(
        dir.join("twice.py"),
        "import os\nfirst = not os.path.exists('/workspace/ran')\nopen('/workspace/ran', 'w').close()\n\
        print('attempt', flush=True)\nraise SystemExit(9 if first else 0)\n",
    )
    .expect("twice.py");
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  twice:\n    type: python\n    restart: on-failure\n    scripts:\n      \
         start: python /project/twice.py\n      ok: echo ok\n",
    )
    .expect("cave.yaml");
    let started = agent.bkgr(dir, &["-d", "twice"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let followed = follow_log(&agent, dir, "twice").wait_with_output().expect("bkg logs -f");
    assert_eq!(code(&followed), 0, "{}", stderr(&followed));
    assert_eq!(stdout(&followed), "attempt\nattempt\n");
    assert_eq!(stderr(&followed), "bkg: twice's service ended with exit 0; following ended\n");

    // A foreground run after the service ended: its log is followed, and its end is its own.
    let ran = agent.bkgr(dir, &["twice", "ok"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    let followed = follow_log(&agent, dir, "twice").wait_with_output().expect("bkg logs -f");
    assert_eq!((code(&followed), stdout(&followed), stderr(&followed)), (0, "ok\n".to_owned(), String::new()));
}

#[test]
fn a_follow_ended_by_rm_says_the_sandbox_was_removed() {
    let agent = Agent::start();
    let (project, follow) = a_followed_ticker(&agent);
    let removed = agent.bkg_in(project.path(), &["rm", "ticker", "--force"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    assert_eq!(why_the_follow_ended(follow), "bkg: ticker was removed; following ended\n");
}

/// A project whose sandbox `ticker` prints a line every 0.2 s, started with `bkgr -d`, and a
/// `bkg logs -f` of it that has printed its first line (the rest is read and dropped).
fn a_followed_ticker(agent: &Agent) -> (tempfile::TempDir, std::process::Child) {
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("tick.py"),
        "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n",
    )
    .expect("tick.py");
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  ticker:\n    type: python\n    scripts:\n      start: python /project/tick.py\n",
    )
    .expect("cave.yaml");
    let started = agent.bkgr(dir, &["-d", "ticker"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let mut follow = follow_log(agent, dir, "ticker");
    let mut stdout = BufReader::new(follow.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the follow's first line");
    assert_eq!(first, "tick\n");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (project, follow)
}

/// What a follow says on stderr once it has ended by itself, with 0.
fn why_the_follow_ended(mut follow: std::process::Child) -> String {
    let status = poll("the follow to end", || follow.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    let mut said = String::new();
    follow.stderr.take().expect("stderr").read_to_string(&mut said).expect("the follow's stderr");
    said
}

/// A service ended by its time limit is shown failed by that limit, where an exit code names
/// the others.
#[test]
fn a_service_ended_by_its_time_limit_says_so() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  slow:\n    type: python\n    restart: on-failure\n    limits: { timeout: 1s }\n    \
         scripts:\n      start: sleep 30\n",
    )
    .expect("cave.yaml");
    let started = agent.bkgr(dir, &["-d", "slow"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let info = poll("the service to fail by its time limit", || {
        let output = agent.bkg_in(dir, &["status", "slow", "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (info["service"]["last_killed_by"] == "timeout").then_some(info)
    });
    assert!(info["service"]["last_exit_code"].is_null(), "{info}");
    let shown = agent.bkg_in(dir, &["status", "slow"]);
    assert!(stdout(&shown).contains("last failure: timeout limit"), "{}", stdout(&shown));
    let stop = agent.bkg_in(dir, &["stop", "slow"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
}

/// Starts `flaky` (`flaky_project`) in the background and waits until it has failed and waits
/// to be started again.
fn start_until_it_waits_to_restart(agent: &Agent, dir: &Path) {
    let started = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&started), 0, "bkgr -d: {}", stderr(&started));
    poll("the service to wait for its restart", || {
        let info = status_of(agent, dir, "flaky");
        (info["service"]["state"] == "restarting" && info["current_run"].is_null()).then_some(())
    });
}

/// A service that keeps failing waits between restarts; `bkg stop --all` stops it there too
/// (it has no run then, but is not stopped), says it did, and no restart follows.
#[test]
fn stop_all_calls_off_the_restart_a_failing_service_waits_for() {
    let agent = Agent::start();
    let project = flaky_project();
    let dir = project.path();
    start_until_it_waits_to_restart(&agent, dir);
    let flaky_status = || status_of(&agent, dir, "flaky");
    let stopped = agent.bkg_in(dir, &["stop", "--all", "--json"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let answers: serde_json::Value = serde_json::from_slice(&stopped.stdout).expect("stop --json");
    assert_eq!(answers, serde_json::json!([{"name": "flaky", "stopped": true}]));
    let after = flaky_status();
    assert_eq!(after["service"]["state"], "stopped", "{after}");
    let restarts = after["service"]["restarts"].clone();
    // Longer than the first pauses between restarts: none comes.
    std::thread::sleep(Duration::from_secs(3));
    let later = flaky_status();
    assert_eq!((&later["service"]["state"], &later["service"]["restarts"]), (&"stopped".into(), &restarts), "{later}");
}

/// Found by a new-user trial: a `bkg exec` while a failing service waited to restart switched
/// the service off for good ("not started again: held by session"). It waits for the session,
/// says so, and starts again once the session ends.
#[test]
fn a_failing_service_waits_for_a_session_that_holds_its_sandbox() {
    let agent = Agent::start();
    let project = flaky_project();
    let dir = project.path();
    start_until_it_waits_to_restart(&agent, dir);
    let flaky_status = || status_of(&agent, dir, "flaky");
    let exec = agent.bkg_in(dir, &["exec", "flaky", "-c", "print(6 * 7)"]);
    assert_eq!((code(&exec), stdout(&exec)), (0, "42\n".to_owned()), "{}", stderr(&exec));
    let waiting = poll("the service to wait for the session", || {
        let info = flaky_status();
        info["service"]["not_restarted"].as_str().is_some_and(|why| why.contains("holds its sandbox")).then_some(info)
    });
    assert_eq!(waiting["service"]["state"], "restarting", "{waiting}");
    let text = agent.bkg_in(dir, &["status", "flaky"]);
    let said = "waits to start again: session `default` holds its sandbox; it starts again once the session ends";
    assert!(stdout(&text).contains(said), "{}", stdout(&text));
    let id = waiting["id"].as_str().unwrap_or_default().to_owned();
    let ended = bkg_tests::http::unix_request(
        &agent.socket,
        "DELETE",
        &format!("/api/v1/sandboxes/{id}/sessions/default"),
        None,
    );
    assert!(ended.status < 300, "end the session: {}", ended.status);
    let restarts = waiting["service"]["restarts"].as_u64().unwrap_or_default();
    poll("the service to start again after the session", || {
        let info = flaky_status();
        (info["service"]["restarts"].as_u64().unwrap_or_default() > restarts).then_some(())
    });
    let stopped = agent.bkg_in(dir, &["stop", "flaky"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
}

/// What keeps a failing service from starting again is said as it is (found by a new-user trial:
/// a foreground run of its own, and a host port another process took during the pause, were both
/// said to be "a file transfer"), and both are waited out.
#[test]
fn a_failing_service_says_what_keeps_it_from_starting_again() {
    let agent = Agent::start();
    let port = free_port();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    let fails = "python -c \"raise SystemExit(4)\"";
    std::fs::write(
        dir.join("cave.yaml"),
        format!(
            "version: 1\nsandboxes:\n  flaky:\n    type: python\n    restart: on-failure\n    scripts:\n      \
             start: {fails}\n      hold: sleep 20\n  ported:\n    type: python\n    restart: on-failure\n    \
             ports: [\"127.0.0.1:{port}:8000\"]\n    scripts:\n      start: {fails}\n"
        ),
    )
    .expect("cave.yaml");
    start_until_it_waits_to_restart(&agent, dir);
    let mut hold = agent
        .bkgr_command(dir, &["flaky", "hold"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bkgr flaky hold");
    poll("the service to wait for the run that holds its sandbox", || {
        let why = status_of(&agent, dir, "flaky")["service"]["not_restarted"].as_str().map(str::to_owned);
        why.filter(|why| why.contains("a run of its own holds its sandbox"))
    });
    let _ = hold.kill();
    let _ = hold.wait();

    let started = agent.bkgr(dir, &["-d", "ported"]);
    assert_eq!(code(&started), 0, "bkgr -d: {}", stderr(&started));
    // Taken as soon as the failed run lets it go, in the pause before its restart.
    let taken = poll("the service's host port to be free", || std::net::TcpListener::bind(("127.0.0.1", port)).ok());
    let why = poll("the service to wait for its host port", || {
        let why = status_of(&agent, dir, "ported")["service"]["not_restarted"].as_str().map(str::to_owned);
        why.filter(|why| why.contains(&format!("host port 127.0.0.1:{port} cannot be used")))
    });
    assert!(why.ends_with("; it is tried again after each pause"), "{why}");
    drop(taken);
    let stopped = agent.bkg_in(dir, &["stop", "--all"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
}

/// A failing `restart: on-failure` service is started again by the next agent both when it was
/// started anew (`bkgr -d`) while it waited to restart, and when its restart fell in the agent's
/// shutdown grace (another run kept the agent stopping): neither forgets it, and the stopping
/// agent records no refused restart as a run.
#[test]
fn a_failing_service_outlives_a_new_start_in_its_pause_and_a_restart_due_in_the_shutdown_grace() {
    let mut agent = Agent::start();
    let project = flaky_project();
    let dir = project.path();
    let flaky_status = |agent: &Agent| status_of(agent, dir, "flaky");
    let waiting_to_restart = |agent: &Agent| {
        poll("the service to wait for its restart", || {
            let info = flaky_status(agent);
            (info["service"]["state"] == "restarting" && info["current_run"].is_null()).then_some(())
        })
    };
    let started = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&started), 0, "bkgr -d: {}", stderr(&started));
    waiting_to_restart(&agent);
    let again = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&again), 0, "bkgr -d while it waits to restart: {}", stderr(&again));
    waiting_to_restart(&agent);

    // A run that ignores the stop's SIGTERM and outlasts the shutdown grace keeps the agent
    // stopping past the service's next restart (its pauses are 1, 2, then 4 s; the grace is 5 s).
    let stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\n\
                    time.sleep(60)";
    let mut long_run = agent
        .bkg()
        .args(["exe", "--type", "python", "-c", stubborn])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bkg exe");
    let mut up = String::new();
    BufReader::new(long_run.stdout.take().expect("stdout")).read_line(&mut up).expect("the long run's first line");
    assert_eq!(up, "up\n");
    agent.stop();
    let _ = long_run.wait();

    let earlier_log = agent.log().len();
    agent.spawn(&AgentOptions::default());
    poll("the next agent to read the services left", || {
        agent.log()[earlier_log..].contains("services the last agent left services=1").then_some(())
    });
    poll("the service to run or wait for its restart again", || {
        let info = flaky_status(&agent);
        matches!(info["service"]["state"].as_str(), Some("running" | "restarting")).then_some(())
    });
    let runs = bkg_tests::http::unix_request(&agent.socket, "GET", "/api/v1/runs", None).json();
    let refused: Vec<serde_json::Value> = runs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|run| run["error"].as_str().is_some_and(|error| error.contains("shutting down")))
        .cloned()
        .collect();
    assert!(refused.is_empty(), "no run is recorded for a restart the stopping agent refused: {refused:?}");
    let stop = agent.bkg_in(dir, &["stop", "flaky"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
}

/// `bkg stop` asks the code to end (SIGTERM) before it kills it, so a service can save its work
/// (found by a new-user trial: it was killed outright and lost what it had not flushed), and a
/// service that ignores SIGTERM is still ended, after the grace.
#[test]
fn bkg_stop_lets_a_service_save_its_work_and_kills_one_that_ignores_it() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  saver:\n    type: python\n    scripts:\n      start: python /project/saver.py\n  \
         stubborn:\n    type: python\n    scripts:\n      start: python /project/stubborn.py\n",
    )
    .expect("cave.yaml");
    std::fs::write(
        dir.join("saver.py"),
        "import signal, sys, time\nkept = ['a', 'b']\n\ndef save(*_):\n    open('/workspace/journal.txt', 'w').write(''.join(kept))\n    sys.exit(0)\n\n\
         signal.signal(signal.SIGTERM, save)\nprint('ready', flush=True)\nwhile True:\n    time.sleep(1)\n",
    )
    .expect("saver.py");
    std::fs::write(
        dir.join("stubborn.py"),
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\nwhile True:\n    time.sleep(1)\n",
    )
    .expect("stubborn.py");
    for name in ["saver", "stubborn"] {
        let started = agent.bkgr(dir, &["-d", name]);
        assert_eq!(code(&started), 0, "{}", stderr(&started));
        poll(&format!("{name} to be ready"), || {
            let logs = agent.bkg_in(dir, &["logs", name]);
            stdout(&logs).contains("ready").then_some(())
        });
    }
    let stop = agent.bkg_in(dir, &["stop", "saver"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    let copied = agent.bkg_in(dir, &["cp", "saver:journal.txt", "fetched"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(dir.join("fetched/journal.txt")).expect("the journal"), "ab");

    let began = std::time::Instant::now();
    let stop = agent.bkg_in(dir, &["stop", "stubborn"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    assert!(began.elapsed() >= std::time::Duration::from_secs(4), "killed before its grace: {:?}", began.elapsed());
    let info = status_of(&agent, dir, "stubborn");
    assert_eq!(
        (&info["last_run"]["killed_by"], &info["last_run"]["signal"]),
        (&serde_json::json!("cancelled"), &serde_json::json!(9)),
        "{info}"
    );
}

/// The output of a service's failed run stays readable once it is started again: `bkg logs NAME
/// --run ID` (found by a new-user trial: only the newest run's log could be read, and a 3 a.m.
/// crash's traceback was gone with the restart).
#[test]
fn a_failed_runs_log_is_read_after_its_service_started_again() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  crash:\n    type: python\n    restart: on-failure\n    scripts:\n      \
         start: python -c \"import uuid; print('run', uuid.uuid4().hex, flush=True); raise SystemExit(3)\"\n",
    )
    .expect("cave.yaml");
    let started = agent.bkgr(dir, &["-d", "crash"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let runs = poll("a restart", || {
        let listed = agent.bkg_in(dir, &["runs", "ls", "--sandbox", "crash", "--json"]);
        let runs: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).ok()?;
        (runs.len() >= 2 && runs.iter().all(|run| run["finished_at_ms"].is_u64())).then_some(runs)
    });
    let stop = agent.bkg_in(dir, &["stop", "crash"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
    let (newest, older) = (&runs[0], &runs[1]);
    let shown = |run: &serde_json::Value| {
        let output = agent.bkg_in(dir, &["logs", "crash", "--run", run["id"].as_str().expect("a run id")]);
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        stdout(&output)
    };
    let (newest_log, older_log) = (shown(newest), shown(older));
    assert!(
        older_log.starts_with("run ") && newest_log.starts_with("run ") && older_log != newest_log,
        "{older_log} {newest_log}"
    );
    let unknown = agent.bkg_in(dir, &["logs", "crash", "--run", "run_0"]);
    assert_eq!(code(&unknown), 125, "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("no log of run run_0 in sandbox crash"), "{}", stderr(&unknown));
    let bad = agent.bkg_in(dir, &["logs", "crash", "--run", "../x"]);
    assert_eq!(code(&bad), 125, "{}", stderr(&bad));
}

/// A service started again by the next agent keeps its restarts and its last failure, even after
/// a crash (found by a new-user trial: after an agent's restart a service in a crash loop showed
/// `restarted 0×`).
#[test]
fn a_services_restarts_and_last_failure_outlive_an_agent_restart() {
    let mut agent = Agent::start();
    let project = flaky_project();
    let dir = project.path();
    let started = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let before = poll("a restart", || {
        let info = status_of(&agent, dir, "flaky");
        (info["service"]["restarts"].as_u64().is_some_and(|restarts| restarts >= 1)).then_some(info)
    });
    let restarts = before["service"]["restarts"].as_u64().unwrap_or_default();
    // Killed, the agent keeps nothing at its end: what it kept as the service changed is all.
    agent.crash();
    agent.spawn(&AgentOptions::default());
    let after = poll("the service started again", || {
        let info = status_of(&agent, dir, "flaky");
        (info["service"]["state"] != "stopped" && info["service"].is_object()).then_some(info)
    });
    assert!(after["service"]["restarts"].as_u64().is_some_and(|now| now >= restarts), "{before} then {after}");
    assert_eq!(after["service"]["last_exit_code"], 4, "{after}");
    let stop = agent.bkg_in(dir, &["stop", "flaky"]);
    assert_eq!(code(&stop), 0, "{}", stderr(&stop));
}

/// A project of `restart: on-failure` services named `names`, each running `start`, and a
/// sandbox `box` whose first run has defined it with the agent.
fn services_project(agent: &Agent, names: &[&str], start: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    let mut cave = "version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: \"true\"\n".to_owned();
    for name in names {
        cave.push_str(&format!(
            "  {name}:\n    type: python\n    restart: on-failure\n    scripts:\n      start: {start}\n"
        ));
    }
    std::fs::write(project.path().join("cave.yaml"), cave).expect("cave.yaml");
    let first = agent.bkgr(project.path(), &["box"]);
    assert_eq!(code(&first), 0, "bkgr box: {}", stderr(&first));
    project
}

/// A failed service whose place a session took during its pause waits for room and starts
/// again once the session ends (was: it was switched off for good; found by a new-user trial).
#[test]
fn a_service_whose_place_was_taken_during_its_pause_starts_once_it_is_free() {
    // Two places: one for sessions, services and terminals.
    let agent = Agent::start_with(AgentOptions::default().with_places(2));
    let project = services_project(&agent, &["flaky"], "python -c \"raise SystemExit(4)\"");
    let dir = project.path();
    let started = agent.bkgr(dir, &["-d", "flaky"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    // Its pauses double from a second: after its second restart it pauses for four.
    poll("the service's pause after its second restart", || {
        let info = status_of(&agent, dir, "flaky");
        (info["service"]["restarts"] == 2 && info["service"]["state"] == "restarting").then_some(())
    });
    let session = agent.bkg_in(dir, &["exec", "box", "-c", "1"]);
    assert_eq!(code(&session), 0, "{}", stderr(&session));
    let waiting = poll("the service to wait for room", || {
        let info = status_of(&agent, dir, "flaky");
        let why = info["service"]["not_restarted"].as_str().unwrap_or_default();
        why.contains("it starts again once the agent has room").then_some(info)
    });
    assert_eq!(waiting["service"]["state"], "restarting", "{waiting}");
    assert_eq!(code(&agent.bkg_in(dir, &["stop", "box"])), 0);
    poll("the service to start again", || {
        let info = status_of(&agent, dir, "flaky");
        (info["service"]["restarts"].as_u64() > Some(2)).then_some(())
    });
    assert_eq!(code(&agent.bkg_in(dir, &["stop", "flaky"])), 0);
}

/// Services the last agent left that this one has no room for wait, and start once a place
/// frees (was: refused once, and never started again, by later agents either).
#[test]
fn services_an_agent_has_no_room_for_start_once_a_place_frees() {
    let mut agent = Agent::start_with(AgentOptions::default().with_places(4));
    let project = services_project(&agent, &["one", "two"], "sleep 1000");
    let dir = project.path();
    for name in ["one", "two"] {
        let started = agent.bkgr(dir, &["-d", name]);
        assert_eq!(code(&started), 0, "{name}: {}", stderr(&started));
    }
    agent.stop();
    agent.spawn(&AgentOptions::default().with_places(2));
    let (waiting, running) = poll("one service to wait for room", || {
        let [one, two] = ["one", "two"].map(|name| status_of(&agent, dir, name));
        let waits = |info: &serde_json::Value| {
            info["service"]["not_restarted"]
                .as_str()
                .is_some_and(|why| why.contains("it starts again once the agent has room"))
        };
        match (waits(&one), waits(&two)) {
            (true, false) if two["service"]["state"] == "running" => Some(("one", "two")),
            (false, true) if one["service"]["state"] == "running" => Some(("two", "one")),
            _ => None,
        }
    });
    assert_eq!(status_of(&agent, dir, waiting)["service"]["state"], "restarting");
    assert_eq!(code(&agent.bkg_in(dir, &["stop", running])), 0);
    poll("the waiting service to start", || {
        let info = status_of(&agent, dir, waiting);
        (info["service"]["state"] == "running" && !info["current_run"].is_null()).then_some(())
    });
    assert_eq!(code(&agent.bkg_in(dir, &["stop", waiting])), 0);
}
