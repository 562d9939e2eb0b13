//! The agent on the network: TLS (verification, SIGHUP reload, no plain HTTP on the TLS port,
//! no plain HTTP beyond loopback), `/healthz` without a key, connection caps and timeouts that
//! keep the unix socket serving, the shared body budget, and a CLI that does not wait forever
//! on a stopped agent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::http::{Answer, Client, exchange, read_answer};
use bkg_tests::{Agent, AgentOptions, bin_dir, code, stderr, stdout};

/// An agent with a TCP listener on 127.0.0.1 and an admin key.
struct NetAgent {
    agent: Agent,
    address: String,
    admin_key: String,
    files: tempfile::TempDir,
}

impl NetAgent {
    fn start(extra_args: &[String]) -> Self {
        let files = tempfile::Builder::new().prefix("bkg-net-").tempdir().expect("temp dir");
        let address_file = files.path().join("address");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-address-file".into(),
            address_file.display().to_string(),
        ];
        args.extend(extra_args.iter().cloned());
        let agent = Agent::start_with(AgentOptions { warm_pool: 1, extra_args: args, ..AgentOptions::default() });
        let address = poll("the TCP address is written", || {
            std::fs::read_to_string(&address_file)
                .ok()
                .filter(|text| text.ends_with('\n'))
                .map(|text| text.trim().to_owned())
        });
        let created = agent.bkg().args(["keys", "create", "--role", "admin", "--name", "net"]).output().expect("bkg");
        assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
        let admin_key = stdout(&created).trim().to_owned();
        Self { agent, address, admin_key, files }
    }

    /// `bkg --remote URL` with the admin key, as a user elsewhere would run it.
    fn remote_bkg(&self, url: &str) -> Command {
        let mut command = Command::new(bin_dir().join("bkg"));
        command
            .env("BKG_API_KEY", &self.admin_key)
            .env("HOME", self.files.path())
            .env("BKG_NO_AUTOSTART", "1")
            .env_remove("BKG_SOCKET")
            .env_remove("BKG_CACERT")
            .env_remove("SSL_CERT_FILE")
            .args(["--remote", url])
            .stdin(Stdio::null());
        command
    }
}

/// Polls `probe` until it gives a value, for at most a minute.
fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let file = |suffix: &str| format!("{name}-{suffix}");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca_key, ca, key, csr, cert, ext) =
        (file("ca.key"), file("ca.pem"), file("key.pem"), file("csr.pem"), file("cert.pem"), file("ext.cnf"));
    let ca_subject = format!("/CN=bkg test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", &ca_subject]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    Pki { ca: dir.join(ca), cert: dir.join(cert), key: dir.join(key) }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

fn agent_status(agent: &NetAgent, url: &str, cacert: Option<&Path>) -> Output {
    let mut command = agent.remote_bkg(url);
    if let Some(cacert) = cacert {
        command.arg("--cacert").arg(cacert);
    }
    command.args(["keys", "ls", "--json"]).output().expect("bkg keys ls")
}

#[test]
fn tls_listener_verifies_against_the_ca_refuses_plain_http_and_reloads_on_sighup() {
    let pki_dir = tempfile::tempdir().expect("pki dir");
    let first = make_pki(pki_dir.path(), "first");
    let second = make_pki(pki_dir.path(), "second");
    // The agent reads its certificate from these paths, which later get the second pair.
    let (served_cert, served_key) = (pki_dir.path().join("served-cert.pem"), pki_dir.path().join("served-key.pem"));
    std::fs::copy(&first.cert, &served_cert).expect("copy cert");
    std::fs::copy(&first.key, &served_key).expect("copy key");
    let api =
        NetAgent::start(&["--tls-cert".into(), path_arg(&served_cert), "--tls-key".into(), path_arg(&served_key)]);
    let url = format!("https://{}", api.address);

    // Verified against --cacert (and BKG_CACERT): the remote CLI works end to end.
    let verified = agent_status(&api, &url, Some(&first.ca));
    assert_eq!(code(&verified), 0, "{}", stderr(&verified));
    let keys: serde_json::Value = serde_json::from_slice(&verified.stdout).expect("keys JSON");
    assert!(keys.as_array().is_some_and(|keys| keys.iter().any(|key| key["name"] == "net")), "{keys}");
    let by_env = api.remote_bkg(&url).env("BKG_CACERT", &first.ca).args(["keys", "ls"]).output().expect("bkg");
    assert_eq!(code(&by_env), 0, "{}", stderr(&by_env));
    let ran = api
        .remote_bkg(&url)
        .args(["--cacert", &path_arg(&first.ca), "exe", "-c", "print('over tls')", "--type", "python"])
        .output()
        .expect("bkg exe");
    assert_eq!((code(&ran), stdout(&ran).as_str()), (0, "over tls\n"), "{}", stderr(&ran));

    // Without the CA (the system's roots do not know it) verification fails: one clear line.
    let unverified = agent_status(&api, &url, None);
    assert_eq!(code(&unverified), 125, "{}", stderr(&unverified));
    assert_eq!(stderr(&unverified).lines().count(), 1, "{}", stderr(&unverified));
    assert!(
        stderr(&unverified).contains("certificate") && stderr(&unverified).contains("--cacert"),
        "{}",
        stderr(&unverified)
    );

    // Plain HTTP to the TLS port gets no HTTP answer, from the CLI or by hand; the CLI says to
    // use https (found by a new-user trial: "invalid HTTP version parsed" alone).
    let plain = agent_status(&api, &format!("http://{}", api.address), None);
    assert_eq!(code(&plain), 125, "{}", stderr(&plain));
    assert!(stderr(&plain).contains("(the agent there speaks https: give --remote https://…)"), "{}", stderr(&plain));
    let mut stream = TcpStream::connect(&api.address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {}", String::from_utf8_lossy(&answer));

    // A renewed certificate (another CA's) is served after SIGHUP, on the same listener.
    assert_ne!(code(&agent_status(&api, &url, Some(&second.ca))), 0, "the second CA verifies before the reload");
    std::fs::copy(&second.cert, &served_cert).expect("copy the new cert");
    std::fs::copy(&second.key, &served_key).expect("copy the new key");
    // SAFETY: kill(2) on the agent this test started; no memory is touched.
    assert_eq!(unsafe { libc::kill(api.agent.pid() as i32, libc::SIGHUP) }, 0);
    poll("the reloaded certificate is served", || {
        (code(&agent_status(&api, &url, Some(&second.ca))) == 0).then_some(())
    });
    let old = agent_status(&api, &url, Some(&first.ca));
    assert_eq!(code(&old), 125, "the old CA still verifies: {}", stdout(&old));
    // --cacert was given: the hint is not to give it (found by the same trial).
    assert!(stderr(&old).contains("does not verify against --cacert's CA"), "{}", stderr(&old));
    assert!(api.agent.log().contains("reloaded TLS certificate"), "{}", api.agent.log());

    // A broken file on SIGHUP keeps the certificate served so far.
    std::fs::write(&served_cert, b"not a certificate").expect("break the cert");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(api.agent.pid() as i32, libc::SIGHUP) }, 0);
    poll("the failed reload is logged", || api.agent.log().contains("was not reloaded").then_some(()));
    assert_eq!(code(&agent_status(&api, &url, Some(&second.ca))), 0);
}

#[test]
fn listening_beyond_loopback_without_tls_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let refused = Command::new(bin_dir().join("bkg-agent"))
        .args(["--foreground", "--listen", "0.0.0.0:0", "--socket"])
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("bkg-agent");
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--plain-http-behind-proxy"), "{}", stderr(&refused));
    assert!(!dir.path().join("state").exists(), "the refused agent made its state dir");
}

#[test]
fn healthz_without_a_key_says_only_the_status_and_a_reason_word() {
    let api = NetAgent::start(&[]);
    let anonymous = Client::new(&api.address, None);
    let healthy = anonymous.get("/healthz");
    assert_eq!(healthy.status, 200, "{}", healthy.text());
    assert_eq!(healthy.json(), serde_json::json!({ "status": "ok" }));
    // A key that is wrong is still refused, and the other routes still need one.
    assert_eq!(Client::new(&api.address, Some("bkg_admin_wrong")).get("/healthz").status, 401);
    assert_eq!(anonymous.get("/metrics").status, 401);
    // Asking for more is a mistake named as such, not a way to more detail.
    let asked = anonymous.get("/healthz?detail=1");
    assert_eq!(asked.status, 400, "{}", asked.text());
    assert!(asked.text().contains("unknown parameter `detail`"), "{}", asked.text());

    // The store is locked: without a key one word, with a key the reason in full.
    let mut locker = api.agent.lock_store();
    let sick = poll("the keyless probe sees the locked store", || {
        let answer = anonymous.get("/healthz");
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(sick.json(), serde_json::json!({ "status": "unavailable", "reason": "store" }));
    let detailed = Client::new(&api.address, Some(&api.admin_key)).get("/healthz");
    assert_eq!(detailed.status, 503);
    assert!(detailed.text().contains("store not writable"), "{}", detailed.text());
    drop(locker.stdin.take());
    locker.wait().expect("locker ends");
    poll("healthy again", || (anonymous.get("/healthz").status == 200).then_some(()));
}

/// Whether the server closed `stream` (end of file or a reset) rather than keeping it open.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn unix_get(agent: &Agent, path: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(&agent.socket)
        .arg(format!("http://agent{path}"))
        .output()
        .expect("curl")
}

#[test]
fn idle_connections_over_the_tcp_cap_are_closed_and_the_socket_keeps_serving() {
    let api = NetAgent::start(&["--max-connections".into(), "20".into(), "--header-timeout".into(), "10m".into()]);
    let mut idle: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(&api.address).expect("connect")).collect();
    // The first 20 hold the TCP listener's slots; each one after is closed on arrival.
    for stream in &mut idle[20..] {
        assert!(closed_by_server(stream), "a connection over the cap was kept");
    }
    // The unix socket has room of its own: a run and the health check go through.
    let ran = api.agent.exe(&["-c", "print('still served')", "--type", "python"]);
    assert_eq!((code(&ran), stdout(&ran).as_str()), (0, "still served\n"), "{}", stderr(&ran));
    let health = unix_get(&api.agent, "/healthz");
    // A socket peer is an admin: it is told the security level as well (docs/api.md, /healthz).
    assert_eq!(stdout(&health), "{\"status\":\"ok\",\"security_level\":\"strict\"}", "{}", stderr(&health));
    let metrics = stdout(&unix_get(&api.agent, "/metrics"));
    let refused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("bkg_connections_refused_total{listener=\"tcp\"} "))
        .and_then(|value| value.trim().parse::<u64>().ok());
    assert!(refused.is_some_and(|count| count >= 40), "{metrics}");
    // Freed slots are taken again.
    idle.clear();
    poll("TCP serves again once the idle connections are gone", || {
        let mut stream = TcpStream::connect(&api.address).ok()?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").ok()?;
        let mut answer = Vec::new();
        stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let _ = stream.read_to_end(&mut answer);
        answer.starts_with(b"HTTP/1.1 200").then_some(())
    });
}

#[test]
fn half_sent_heads_and_idle_connections_are_closed_after_the_header_timeout() {
    let api = NetAgent::start(&["--header-timeout".into(), "1s".into()]);
    let mut half = TcpStream::connect(&api.address).expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n").expect("half a head");
    let mut silent = TcpStream::connect(&api.address).expect("connect");
    assert!(closed_by_server(&mut half), "a half-sent head was kept open");
    assert!(closed_by_server(&mut silent), "a silent connection was kept open");
    // The same bound holds on the unix socket.
    let mut local = std::os::unix::net::UnixStream::connect(&api.agent.socket).expect("connect the socket");
    local.write_all(b"GET /healthz HTTP/1.1\r\n").expect("half a head");
    local.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let mut rest = Vec::new();
    assert!(local.read_to_end(&mut rest).is_ok(), "the socket's half-sent head was kept open");
}

fn post_head(address: &str, key: &str, length: usize) -> String {
    format!(
        "POST /api/v1/runs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[test]
fn bodies_share_one_budget_time_out_and_bad_chunking_is_a_400() {
    const MIB: usize = 1024 * 1024;
    let api = NetAgent::start(&["--body-budget".into(), "8MiB".into(), "--body-timeout".into(), "10s".into()]);
    let key = api.admin_key.clone();

    // Two 6 MiB bodies on their way: whichever comes first holds 6 of the 8 MiB, and the other
    // gets 503 with Retry-After at once. (Started one after the other, the second still may
    // reach the budget first: which one is refused is not the point.)
    let (answers, answered) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&api.address).expect("connect");
        stream.write_all(post_head(&api.address, &key, 6 * MIB).as_bytes()).expect("head");
        let answers = answers.clone();
        std::thread::spawn(move || answers.send(read_answer(&mut stream)));
    }
    let busy = answered.recv_timeout(Duration::from_secs(60)).expect("an answer");
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"), "{:?}", busy.headers);
    assert_eq!(busy.error_code(), "unavailable");
    // A body the whole budget could never hold is too large, not busy.
    let mut huge = TcpStream::connect(&api.address).expect("connect");
    huge.write_all(post_head(&api.address, &key, 9 * MIB).as_bytes()).expect("head");
    assert_eq!(read_answer(&mut huge).status, 413);

    // The body that holds the budget does not arrive in time: 408, and its share of the budget
    // is free again.
    let late = answered.recv_timeout(Duration::from_secs(60)).expect("an answer");
    assert_eq!(late.status, 408, "{}", late.text());
    assert_eq!(late.error_code(), "request_timeout");
    let mut whole = post_head(&api.address, &key, 6 * MIB).into_bytes();
    whole.extend(std::iter::repeat_n(b' ', 6 * MIB - 2));
    whole.extend(b"{}");
    let accepted = exchange(&api.address, &whole);
    assert_ne!(accepted.status, 503, "{}", accepted.text());
    assert_eq!(accepted.status, 422, "{}", accepted.text());

    // Broken chunked framing is the client's mistake: 400, not 413.
    let chunked = format!(
        "POST /api/v1/runs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
        api.address
    );
    let bad: Answer = exchange(&api.address, chunked.as_bytes());
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.error_code(), "bad_request");
}

#[test]
fn a_namespace_key_holds_a_quarter_of_the_body_budget_and_never_the_admins_share() {
    const MIB: usize = 1024 * 1024;
    let api = NetAgent::start(&["--body-budget".into(), "8MiB".into(), "--body-timeout".into(), "20s".into()]);
    let created = api.agent.bkg().args(["keys", "create", "--role", "model-access", "--namespace", "team"]).output();
    let created = created.expect("bkg keys create");
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let team_key = stdout(&created).trim().to_owned();

    // The team declares 2 and 1 MiB and sends nothing: whichever comes first is held, and the
    // other would pass the team's quarter (2 MiB), so it gets 503 at once.
    let (answers, answered) = std::sync::mpsc::channel();
    for length in [2 * MIB, MIB] {
        let mut stream = TcpStream::connect(&api.address).expect("connect");
        stream.write_all(post_head(&api.address, &team_key, length).as_bytes()).expect("head");
        let answers = answers.clone();
        std::thread::spawn(move || answers.send(read_answer(&mut stream)));
    }
    let busy = answered.recv_timeout(Duration::from_secs(15)).expect("an answer before the body timeout");
    assert_eq!((busy.status, busy.header("retry-after")), (503, Some("1")), "{}", busy.text());
    let mut over = TcpStream::connect(&api.address).expect("connect");
    over.write_all(post_head(&api.address, &team_key, 3 * MIB).as_bytes()).expect("head");
    let too_large = read_answer(&mut over);
    assert_eq!(too_large.status, 413, "{}", too_large.text());

    // An admin's body of 6 MiB still fits while the team's declaration is held.
    let mut whole = post_head(&api.address, &api.admin_key, 6 * MIB).into_bytes();
    whole.extend(std::iter::repeat_n(b' ', 6 * MIB - 2));
    whole.extend(b"{}");
    let accepted = exchange(&api.address, &whole);
    assert_eq!(accepted.status, 422, "{}", accepted.text());
}

/// Waits for `child` for at most two minutes; one that is still running then is killed and fails
/// the test.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still waits on the stopped agent");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn the_cli_says_a_stopped_agent_does_not_answer_instead_of_waiting_forever() {
    let agent = Agent::start();
    let pid = agent.pid() as i32;
    // SAFETY: kill(2) on the agent this test started; it is continued below before it is dropped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let spawn = |args: &[&str]| {
        agent
            .bkg()
            .env("BKG_CLIENT_TIMEOUT", "2s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bkg")
    };
    let status = spawn(&["agent", "status"]);
    let run = spawn(&["exe", "--timeout", "2s", "-c", "print('never')", "--type", "python"]);
    let (status, run) = (finish(status, "bkg agent status"), finish(run, "bkg exe"));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    for output in [&status, &run] {
        assert_eq!(code(output), 125, "{}", stderr(output));
        assert_eq!(stderr(output).lines().count(), 1, "{}", stderr(output));
        assert!(stderr(output).contains("does not answer"), "{}", stderr(output));
    }
    // Continued, the agent answers again (and is stopped cleanly when dropped).
    let ran = agent.exe(&["-c", "print('back')", "--type", "python"]);
    assert_eq!((code(&ran), stdout(&ran).as_str()), (0, "back\n"), "{}", stderr(&ran));

    // A run silent for longer than the client's patience is fine while the agent answers.
    let quiet =
        finish(spawn(&["exe", "--type", "python", "-c", "import time\ntime.sleep(5)\nprint('done')"]), "a quiet run");
    assert_eq!((code(&quiet), stdout(&quiet).as_str()), (0, "done\n"), "{}", stderr(&quiet));

    // Stopped in the middle of a run: the silent stream makes bkg ask the agent, which does not
    // answer either.
    let mut long = spawn(&["exe", "--timeout", "10m", "--type", "python", "-c", SILENT_RUN]);
    let mut first_line = String::new();
    let mut reader = std::io::BufReader::new(long.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut reader, &mut first_line).expect("the run's first line");
    assert_eq!(first_line, "started\n");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let long = finish(long, "a run whose agent stopped");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(code(&long), 125, "{}", stderr(&long));
    assert!(stderr(&long).contains("does not answer"), "{}", stderr(&long));
}

/// A run that says it started, then is silent for longer than the client's patience.
const SILENT_RUN: &str = "import time\nprint('started', flush=True)\ntime.sleep(20)";

/// `openssl s_server` on a free loopback port: it completes TLS handshakes with the given
/// certificate and writes what clients send to a file (it never answers, which is enough to see
/// that a request arrived over verified TLS).
struct TlsReceiver {
    child: Child,
    port: u16,
    received: PathBuf,
}

impl TlsReceiver {
    fn start(pki: &Pki, dir: &Path, name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let received = dir.join(format!("{name}.received"));
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(&pki.cert)
            .arg("-key")
            .arg(&pki.key)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&received).expect("received file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        poll("s_server listens", || TcpStream::connect(("127.0.0.1", port)).ok().map(drop));
        Self { child, port, received }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.received).unwrap_or_default()
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn webhooks_and_otlp_export_reach_https_receivers_verified_by_the_agent() {
    let pki_dir = tempfile::tempdir().expect("pki dir");
    let pki = make_pki(pki_dir.path(), "receivers");
    let collector = TlsReceiver::start(&pki, pki_dir.path(), "otlp");
    let hook = TlsReceiver::start(&pki, pki_dir.path(), "hook");
    let secret = pki_dir.path().join("webhook-secret");
    std::fs::write(&secret, "an-example-secret-of-more-than-32-bytes").expect("secret");
    let files = tempfile::tempdir().expect("files");
    let address_file = files.path().join("address");
    let agent = Agent::start_with(AgentOptions {
        warm_pool: 0,
        extra_args: vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-address-file".into(),
            path_arg(&address_file),
            "--webhook".into(),
            format!("https://127.0.0.1:{}/hook", hook.port),
            "--webhook-secret-file".into(),
            path_arg(&secret),
        ],
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("https://127.0.0.1:{}", collector.port)),
            ("CAVE_OTEL_SAMPLING_RATE".into(), "1.0".into()),
            // The receivers' CA, the way an operator names a private one (docs/operations.md).
            ("SSL_CERT_FILE".into(), path_arg(&pki.ca)),
        ],
        ..AgentOptions::default()
    });
    let created =
        agent.bkg().args(["keys", "create", "--role", "namespace", "--namespace", "hooks", "--json"]).output();
    let created = created.expect("bkg keys create");
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let id = serde_json::from_slice::<serde_json::Value>(&created.stdout).expect("key JSON")["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rotated = agent.bkg().args(["keys", "rotate", &id]).output().expect("bkg keys rotate");
    assert_eq!(code(&rotated), 0, "{}", stderr(&rotated));
    let address = poll("the TCP address is written", || {
        std::fs::read_to_string(&address_file)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .map(|text| text.trim().to_owned())
    });
    let key = stdout(&agent.bkg().args(["keys", "create", "--role", "admin"]).output().expect("bkg"));
    assert_eq!(Client::new(&address, Some(key.trim())).get("/api/v1/auth/whoami").status, 200);

    poll("the rotation notice arrives over https", || hook.text().contains("POST /hook HTTP/1.1").then_some(()));
    poll("spans arrive over https", || collector.text().contains("POST /v1/traces HTTP/1.1").then_some(()));

    // An agent that does not know the receiver's CA refuses the handshake: the attempt fails at
    // once (an unverified one would have sent the notice, then waited 5 s for an answer).
    let stranger_hook = TlsReceiver::start(&pki, pki_dir.path(), "stranger");
    let stranger = Agent::start_with(AgentOptions {
        warm_pool: 0,
        extra_args: vec![
            "--webhook".into(),
            format!("https://127.0.0.1:{}/hook", stranger_hook.port),
            "--webhook-secret-file".into(),
            path_arg(&secret),
        ],
        env: vec![("SSL_CERT_FILE".into(), "/nonexistent/ca.pem".into())],
        ..AgentOptions::default()
    });
    let created = stranger.bkg().args(["keys", "create", "--role", "namespace", "--namespace", "x", "--json"]).output();
    let id = serde_json::from_slice::<serde_json::Value>(&created.expect("bkg").stdout).expect("key JSON")["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(code(&stranger.bkg().args(["keys", "rotate", &id]).output().expect("bkg")), 0);
    poll("the unverified delivery fails", || stranger.log().contains("rotation notice not delivered").then_some(()));
    assert!(!stranger_hook.text().contains("POST"), "a notice went to an unverified receiver");
}

#[test]
fn the_web_uis_cookies_are_secure_over_tls_and_bkg_ui_gives_an_https_url() {
    let pki_dir = tempfile::tempdir().expect("pki dir");
    let pki = make_pki(pki_dir.path(), "ui");
    let api = NetAgent::start(&["--tls-cert".into(), path_arg(&pki.cert), "--tls-key".into(), path_arg(&pki.key)]);
    let fetched = Command::new("curl")
        .args(["-sS", "-i", "--cacert", &path_arg(&pki.ca), &format!("https://{}/ui/login", api.address)])
        .output()
        .expect("curl");
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let head = stdout(&fetched);
    let cookie =
        head.lines().find(|line| line.to_ascii_lowercase().starts_with("set-cookie: bkg_login=")).unwrap_or("");
    assert!(cookie.trim_end().split("; ").any(|part| part == "Secure"), "no Secure flag over TLS: {head}");
    let launched = api.agent.bkg().args(["ui", "--json"]).output().expect("bkg ui");
    assert_eq!(code(&launched), 0, "{}", stderr(&launched));
    let url = format!("https://{}/ui/login#token=", api.address);
    assert!(stdout(&launched).contains(&url), "{}", stdout(&launched));
}
