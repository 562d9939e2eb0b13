//! Egress (docs/security.md, "Egress"): a run given `--net` reaches its hosts through the proxy
//! the agent puts on its loopback, the host's own loopback only as host.bkg.internal on an
//! allowed port, and every other attempt (a host not on the list, a direct address, UDP) is
//! refused at once and reported in the run's result. No packet leaves this machine: the only
//! server is the test's own, on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

/// A one-line HTTP server on the host's loopback; answers every request with `body`.
fn serve_on_loopback(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

/// Free loopback port on the host that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("address").port()
}

const PROBES: &str = r#"
import json, socket, sys, urllib.request, urllib.error
allowed_port, other_port = int(sys.argv[1]), int(sys.argv[2])
out = {}
def fetch(url):
    try:
        return urllib.request.urlopen(url, timeout=20).read().decode()
    except urllib.error.HTTPError as e:
        return "HTTP %d" % e.code
    except Exception as e:
        return type(e).__name__
out["allowed"] = fetch("http://host.bkg.internal:%d/" % allowed_port)
out["other_port"] = fetch("http://host.bkg.internal:%d/" % other_port)
out["other_host"] = fetch("http://not-on-the-list.test/")
out["address_by_proxy"] = fetch("http://169.254.169.254/latest/meta-data/")
out["unresolved"] = fetch("http://no-such-name-bkg.invalid/")
def connect(host, port):
    s = socket.socket()
    s.settimeout(20)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
out["direct_address"] = connect("192.0.2.10", 80)
out["direct_metadata"] = connect("169.254.169.254", 80)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(20)
try:
    u.connect(("192.0.2.53", 53))
    u.send(b"x")
    u.recv(512)
    out["udp"] = "answered"
except OSError as e:
    out["udp"] = type(e).__name__
print(json.dumps(out, sort_keys=True))
"#;

#[test]
fn allowed_host_answers_and_everything_else_is_refused_and_reported() {
    let allowed_port = serve_on_loopback("hello from the host");
    let other_port = serve_on_loopback("must not be reached");
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--egress-allow".into(), format!("*,host.bkg.internal:{allowed_port}")],
        ..Default::default()
    });
    let net = format!("host.bkg.internal:{allowed_port},*.example,*.invalid");
    let (allowed, other) = (allowed_port.to_string(), other_port.to_string());
    let (result, output) =
        agent.exe_json(&["--net", &net, "--type", "python", "-c", PROBES, allowed.as_str(), other.as_str()]);
    assert_eq!(code(&output), 0, "stderr: {}\nresult: {result}", stderr(&output));
    let seen: serde_json::Value =
        serde_json::from_str(result["stdout"].as_str().expect("stdout")).expect("the probes' JSON");
    assert_eq!(seen["allowed"], "hello from the host", "{seen}");
    assert_eq!(seen["other_port"], "HTTP 403", "a port of the host that was not allowed: {seen}");
    assert_eq!(seen["other_host"], "HTTP 403", "{seen}");
    assert_eq!(seen["address_by_proxy"], "HTTP 403", "{seen}");
    // A name on the list that does not resolve is no refusal: a gateway's failure (found by a
    // new-user trial: it was 403 like one).
    assert_eq!(seen["unresolved"], "HTTP 502", "{seen}");
    assert_eq!(seen["direct_address"], "ConnectionRefusedError", "{seen}");
    assert_eq!(seen["direct_metadata"], "ConnectionRefusedError", "{seen}");
    assert_eq!(seen["udp"], "ConnectionRefusedError", "{seen}");

    let denials = result["network_denials"].as_array().expect("denials in the result");
    let reported = |transport: &str, destination: &str| {
        denials.iter().any(|denial| denial["transport"] == transport && denial["destination"] == destination)
    };
    for (transport, destination) in [
        ("proxy", format!("host.bkg.internal:{other_port}")),
        ("proxy", "not-on-the-list.test:80".to_owned()),
        ("proxy", "no-such-name-bkg.invalid:80".to_owned()),
        ("proxy", "169.254.169.254:80".to_owned()),
        ("tcp", "192.0.2.10:80".to_owned()),
        ("tcp", "169.254.169.254:80".to_owned()),
        ("udp", "192.0.2.53:53".to_owned()),
    ] {
        assert!(reported(transport, &destination), "{transport} {destination} not reported: {denials:?}");
    }
    assert!(
        !denials.iter().any(|denial| denial["destination"] == format!("host.bkg.internal:{allowed_port}")),
        "the allowed host is no denial: {denials:?}"
    );

    // The run's record and its audit line keep them.
    let run_id = result["id"].as_str().expect("the run's id");
    let shown = agent.bkg().args(["runs", "show", run_id, "--json"]).output().expect("bkg runs show");
    let record: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("the run's JSON");
    assert_eq!(record["network_denials"], result["network_denials"], "{record}");
    let finished = agent
        .audit_records()
        .into_iter()
        .find(|line| line["action"] == "run.finished" && line["run"] == run_id)
        .expect("the run's audit line");
    assert_eq!(finished["details"]["network_denials"], result["network_denials"], "{finished}");

    // Without --json the denials are one line each on stderr, after the script's output.
    let plain = agent.exe(&["--net", &net, "--type", "python", "-c", PROBES, allowed.as_str(), other.as_str()]);
    assert_eq!(code(&plain), 0, "stderr: {}", stderr(&plain));
    assert!(stderr(&plain).contains("bkg: network: refused udp 192.0.2.53:53"), "stderr: {}", stderr(&plain));
}

#[test]
fn rules_outside_the_agents_policy_are_refused_before_the_run() {
    let allowed_port = closed_port();
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--egress-allow".into(), format!("*:443,host.bkg.internal:{allowed_port}")],
        ..Default::default()
    });
    for rule in [
        "host.bkg.internal:22".to_owned(),
        "host.bkg.internal".to_owned(),
        "pypi.org".to_owned(),
        "10.0.0.1:443".to_owned(),
    ] {
        let output = agent.exe(&["--net", &rule, "--type", "python", "-c", "print('ran')"]);
        assert_ne!(code(&output), 0, "{rule} ran: {}", stderr(&output));
        assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"), "{rule}");
        assert!(stderr(&output).contains("outside this agent's egress policy"), "{rule}: {}", stderr(&output));
        assert_eq!(stderr(&output).trim().lines().count(), 1, "one line: {}", stderr(&output));
        // The policy's addresses and ports are its admins' to know.
        assert!(!stderr(&output).contains(&allowed_port.to_string()), "the policy was shown: {}", stderr(&output));
    }
    // A loopback address is pointed at the host's loopback by name.
    let loopback = agent.exe(&["--net", "127.0.0.1:8000", "--type", "python", "-c", "print('ran')"]);
    assert!(
        stderr(&loopback).trim_end().ends_with("; this host's loopback is host.bkg.internal:8000"),
        "{}",
        stderr(&loopback)
    );
    let allowed = agent.exe(&["--net", "pypi.org:443", "--type", "python", "-c", "print('ran')"]);
    assert_eq!(code(&allowed), 0, "{}", stderr(&allowed));

    let bad = agent.exe(&["--net", "http://pypi.org", "--type", "python", "-c", "print('ran')"]);
    assert_eq!(code(&bad), 125, "a malformed rule is bkg's one-line error: {}", stderr(&bad));
    assert!(stderr(&bad).contains("is not a network rule"), "{}", stderr(&bad));
}

#[test]
fn without_net_the_sandbox_still_has_no_network_and_no_proxy() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&[
        "--type",
        "python",
        "-c",
        "import os, socket\nprint(os.environ.get('HTTP_PROXY'))\ns = socket.socket()\ntry:\n    s.connect(('192.0.2.10', 80))\nexcept OSError as e:\n    print(e.errno)\n",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(result["stdout"], "None\n101\n", "ENETUNREACH as before: {result}");
    assert!(result.get("network_denials").is_none(), "{result}");
}

/// One run's proxy serves a bounded number of connections at once; those past it are closed as
/// they come, and other callers of the agent are served meanwhile (found by a new-user trial: a
/// run that held thousands took every descriptor of the agent, which then accepted nobody).
#[test]
fn a_run_holding_many_proxy_connections_is_bounded_and_others_are_served() {
    let allowed_port = serve_on_loopback("hello from the host");
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--egress-allow".into(), format!("*,host.bkg.internal:{allowed_port}")],
        ..Default::default()
    });
    let holder = "import socket, sys, time\n\
        held = []\n\
        for _ in range(300):\n    held.append(socket.create_connection(('127.0.0.1', 3128)))\n\
        for connection in held:\n    connection.setblocking(False)\n\
        def closed():\n    count = 0\n    for connection in held:\n        try:\n            count += connection.recv(1) == b''\n        except BlockingIOError:\n            pass\n        except ConnectionError:\n            count += 1\n    return count\n\
        deadline = time.monotonic() + 5\n\
        while (count := closed()) < 172 and time.monotonic() < deadline:\n    time.sleep(0.1)\n\
        print(count, flush=True)\n\
        time.sleep(30)\n";
    let net = format!("host.bkg.internal:{allowed_port}");
    let mut run = agent.spawn_exe(&["--net", &net, "--type", "python", "-c", holder]);
    let mut closed = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(run.stdout.take().expect("stdout")), &mut closed)
        .expect("the count of closed connections");
    assert_eq!(closed.trim(), "172", "300 connections, 128 served: {closed}");
    let other = agent.exe(&["--type", "python", "-c", "print('served')"]);
    assert_eq!((code(&other), stdout(&other).as_str()), (0, "served\n"), "{}", stderr(&other));
    let _ = run.kill();
    let _ = run.wait();
}
