//! The agent's HTTP API on loopback TCP: keys, roles and namespaces, expiry, rotation and
//! revocation, signed rotation notices, rate limits, health, metrics, traces, MCP, the CLI's
//! `login`/`keys`/`--remote`, and the curl examples of docs/api.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::http::{Answer, Client, Receiver, request};
use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "an-example-secret-of-more-than-32-bytes";

/// An agent listening on 127.0.0.1 (besides its socket) and an admin key made over the socket.
struct ApiAgent {
    agent: Agent,
    address: String,
    admin_key: String,
    options: AgentOptions,
    files: tempfile::TempDir,
}

impl ApiAgent {
    fn start(extra_args: &[&str]) -> Self {
        Self::start_with(extra_args, Vec::new(), 1)
    }

    fn start_with(extra_args: &[&str], env: Vec<(String, String)>, warm_pool: usize) -> Self {
        let files = tempfile::Builder::new().prefix("bkg-api-").tempdir().expect("temp dir");
        let address_file = files.path().join("address");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-address-file".into(),
            address_file.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        let options = AgentOptions { warm_pool, extra_args: args, env, ..AgentOptions::default() };
        let agent = Agent::start_with(options.clone());
        let address = crate::bkg_db::listen_address(&agent, &address_file);
        let created = agent.bkg().args(["keys", "create", "--role", "admin", "--name", "tests"]).output().expect("bkg");
        assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
        let admin_key = stdout(&created).trim().to_owned();
        assert!(admin_key.starts_with("bkg_admin_"), "{admin_key}");
        Self { agent, address, admin_key, options, files }
    }

    /// Stops the agent and starts the next one on the same state directory (and keys).
    fn restart(&mut self) {
        self.agent.stop();
        let address_file = self.files.path().join("address");
        std::fs::remove_file(&address_file).expect("the last agent's address file");
        self.agent.spawn(&self.options);
        self.address = crate::bkg_db::listen_address(&self.agent, &address_file);
    }

    fn client(&self, key: &str) -> Client {
        Client::new(&self.address, Some(key))
    }

    fn admin(&self) -> Client {
        self.client(&self.admin_key)
    }

    fn anonymous(&self) -> Client {
        Client::new(&self.address, None)
    }

    /// Sends `POST /api/v1/runs` with `body` as the admin on a raw connection (`extra` headers
    /// first) and returns the connection unread: what the caller does next is the test.
    fn raw_run(&self, body: &Value, extra: &str) -> std::net::TcpStream {
        let body = body.to_string();
        let mut caller = std::net::TcpStream::connect(&self.address).expect("connect");
        let head = format!(
            "POST /api/v1/runs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.address,
            self.admin_key,
            body.len()
        );
        std::io::Write::write_all(&mut caller, head.as_bytes()).expect("send the request");
        caller
    }

    /// Creates a key with the admin key; returns (id, secret).
    fn key(&self, role: &str, namespace: Option<&str>) -> (String, String) {
        let mut body = json!({ "role": role });
        if let Some(namespace) = namespace {
            body["namespace"] = json!(namespace);
        }
        let answer = self.admin().post("/api/v1/auth/keys", &body);
        assert_eq!(answer.status, 201, "create {role} key: {}", answer.text());
        let key = answer.json();
        (key["id"].as_str().unwrap_or_default().to_owned(), key["key"].as_str().unwrap_or_default().to_owned())
    }
}

fn expect(answer: &Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text());
    if status >= 400 {
        let body = answer.json();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
    }
}

fn python_run(namespace: Option<&str>) -> Value {
    let mut body = json!({ "language": "python", "code": "print('hi from', __import__('os').getcwd())" });
    if let Some(namespace) = namespace {
        body["namespace"] = json!(namespace);
    }
    body
}

#[test]
fn tcp_needs_a_valid_key_and_keys_are_confined_to_their_role_and_namespace() {
    let api = ApiAgent::start(&[]);
    let (anonymous, admin) = (api.anonymous(), api.admin());

    // No key, a malformed header or an unknown key: 401 everywhere, even for unknown paths, but
    // for the health probe's keyless view (tests/e2e/net.rs).
    assert_eq!(anonymous.get("/healthz").json(), json!({ "status": "ok" }));
    // A load balancer that probes with HEAD (found by a new-user trial: 401).
    assert_eq!(request(&api.address, "HEAD", "/healthz", &[], b"").status, 200);
    for path in ["/metrics", "/api/v1/runs", "/api/v1/sandboxes", "/mcp", "/no/such/path"] {
        let refused = anonymous.get(path);
        expect(&refused, 401, path);
        // Each names the scheme it takes, as RFC 9110 asks (found by a new-user trial: none).
        assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"bkg\""), "{path}");
    }
    let basic = request(&api.address, "GET", "/healthz", &[("Authorization", "Basic YTpi")], b"");
    expect(&basic, 401, "basic auth");
    expect(&api.client("bkg_admin_not-a-real-key").get("/healthz"), 401, "unknown key");
    // Each refusal is in the agent's log with the address it came from, never the key (found by
    // a new-user trial: guessed keys left no line).
    let log = api.agent.log();
    assert!(
        log.lines().any(|line| line.contains("refused a request without a valid key or login")
            && line.contains("address=127.0.0.1:")
            && line.contains("route=/healthz")),
        "{log}"
    );
    assert!(!log.contains("not-a-real-key"), "the key itself is never logged");
    assert_eq!(admin.get("/healthz").json()["status"], "ok");
    // With a key the probe names the agent's security level, the one its runs report.
    let level = admin.get("/healthz").json()["security_level"].clone();
    assert!(level.is_string(), "{level}");
    assert_eq!(admin.get("/api/v1/agent").json()["security_level"], level);

    let (team_id, team) = api.key("namespace", Some("team"));
    let (_, other) = api.key("namespace", Some("other"));
    let (model_id, model) = api.key("model-access", Some("team"));

    // The API's own description, for any key (a client generator needs nothing more), not without one.
    expect(&anonymous.get("/api/v1/openapi.json"), 401, "the document without a key");
    let document = api.client(&model).get("/api/v1/openapi.json").json();
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1")), "{}", document["openapi"]);
    let served: std::collections::BTreeSet<String> =
        document["paths"].as_object().expect("paths").keys().cloned().collect();
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/openapi.yaml"))
        .expect("schema/openapi.yaml");
    let documented: std::collections::BTreeSet<String> = checked_in
        .lines()
        .filter_map(|line| line.strip_prefix("  /")?.strip_suffix(':').map(|path| format!("/{path}")))
        .collect();
    assert_eq!(served, documented, "the served document is schema/openapi.yaml's");
    assert!(served.contains("/api/v1/openapi.json"), "{served:?}");
    let team = api.client(&team);
    let other = api.client(&other);
    let model = api.client(&model);

    // A namespace key runs code in its own namespace only.
    let ran = team.post("/api/v1/runs", &python_run(None));
    expect(&ran, 200, "namespace key runs code");
    assert_eq!(ran.json()["stdout"], "hi from /workspace\n");
    let run_id = ran.json()["id"].as_str().unwrap_or_default().to_owned();
    expect(&team.post("/api/v1/runs", &python_run(Some("other"))), 403, "another namespace's run");
    // Host ports other hosts could reach, or privileged ones, are an admin's to forward.
    for port in ["0.0.0.0:18080:8000", "80:8000"] {
        let mut run = python_run(None);
        run["ports"] = json!([port]);
        let refused = team.post("/api/v1/runs", &run);
        expect(&refused, 403, port);
        assert!(
            refused.json()["error"]["message"].as_str().is_some_and(|error| error.contains("only an admin")),
            "{port}"
        );
    }
    let by_admin = admin.post("/api/v1/runs", &python_run(Some("elsewhere")));
    expect(&by_admin, 200, "an admin names any namespace");
    assert_eq!(team.get(&format!("/api/v1/runs/{run_id}")).json()["namespace"], "team");
    expect(&other.get(&format!("/api/v1/runs/{run_id}")), 404, "another namespace's run is not found");
    let listed = team.get("/api/v1/runs").json();
    assert!(
        listed.as_array().is_some_and(|runs| !runs.is_empty() && runs.iter().all(|run| run["namespace"] == "team"))
    );
    expect(&team.get("/api/v1/runs?namespace=other"), 403, "listing another namespace");
    expect(&team.get("/api/v1/runs?limit=0"), 422, "a limit out of range (read, then refused)");
    assert_eq!(admin.get("/api/v1/runs?namespace=elsewhere").json().as_array().map(Vec::len), Some(1));
    // Pages: `before` a listing's last run gives the runs after it, without gap or repeat.
    let ids = |answer: &Answer| -> Vec<String> {
        answer.json().as_array().into_iter().flatten().filter_map(|run| run["id"].as_str().map(str::to_owned)).collect()
    };
    let all = ids(&admin.get("/api/v1/runs"));
    assert!(all.len() >= 2, "{all:?}");
    let mut paged = ids(&admin.get("/api/v1/runs?limit=1"));
    while let Some(last) = paged.last().cloned() {
        let page = ids(&admin.get(&format!("/api/v1/runs?limit=1&before={last}")));
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let elsewhere = by_admin.json()["id"].as_str().unwrap_or_default().to_owned();
    for before in [elsewhere.as_str(), "run_0000000000000000"] {
        let refused = team.get(&format!("/api/v1/runs?before={before}"));
        expect(&refused, 422, "paging from a run the key cannot see, or none");
        assert!(refused.text().contains(&format!("no run {before}")), "{}", refused.text());
    }
    // An empty filter is refused alike, whichever it is.
    for filter in ["namespace", "sandbox", "before"] {
        let refused = admin.get(&format!("/api/v1/runs?{filter}="));
        expect(&refused, 422, filter);
        assert_eq!(
            refused.json()["error"]["message"],
            format!("{filter} is empty: give a value, or leave it out"),
            "{}",
            refused.text()
        );
    }

    // Sandboxes: the team's are invisible to the other namespace.
    let created = team.post("/api/v1/sandboxes", &json!({ "name": "box", "language": "python" }));
    expect(&created, 201, "create a sandbox");
    let sandbox = created.json();
    assert_eq!(sandbox["namespace"], "team");
    let id = sandbox["id"].as_str().unwrap_or_default().to_owned();
    expect(
        &team.post("/api/v1/sandboxes", &json!({ "name": "box", "language": "python" })),
        409,
        "the same name again",
    );
    for (method, path) in [
        ("GET", format!("/api/v1/sandboxes/{id}")),
        ("POST", format!("/api/v1/sandboxes/{id}/stop")),
        ("POST", format!("/api/v1/sandboxes/{id}/start")),
        ("GET", format!("/api/v1/sandboxes/{id}/logs")),
        ("DELETE", format!("/api/v1/sandboxes/{id}")),
    ] {
        expect(&other.send(method, &path, None, &[]), 404, &format!("{method} {path} from another namespace"));
    }
    let exec = json!({ "command": "echo hi" });
    expect(&other.post(&format!("/api/v1/sandboxes/{id}/exec"), &exec), 404, "exec from another namespace");
    assert_eq!(other.get("/api/v1/sandboxes").json(), json!([]), "the other namespace sees none");
    expect(
        &team.post("/api/v1/sandboxes", &json!({ "name": "x", "namespace": "other", "language": "python" })),
        403,
        "creating in another namespace",
    );
    // Host paths and volumes are for admins only.
    let outside = json!({ "name": "host", "namespace": "team", "project_dir": "/tmp", "language": "python" });
    expect(&team.send("PUT", "/api/v1/sandboxes/host-0", Some(&outside), &[]), 403, "a host project dir");
    // A namespace's own directory on the agent may be named before any sandbox of it was made
    // with a POST (found by a new-user trial: 422, the directory not there yet); a wrong id says
    // the right one.
    let own = api.agent.state_dir.join("namespaces/other").display().to_string();
    let defined = json!({ "name": "svc", "namespace": "other", "project_dir": own, "language": "python" });
    let own_id = bkg_schema::sandbox::sandbox_id(&own, "svc");
    let wrong = other.send("PUT", "/api/v1/sandboxes/bogus-id", Some(&defined), &[]);
    expect(&wrong, 422, "a wrong id");
    assert!(wrong.text().contains(&format!("its id is {own_id}")), "{}", wrong.text());
    let put = other.send("PUT", &format!("/api/v1/sandboxes/{own_id}"), Some(&defined), &[]);
    assert!(matches!(put.status, 200 | 201), "PUT in a fresh namespace: {} {}", put.status, put.text());
    expect(&other.send("DELETE", &format!("/api/v1/sandboxes/{own_id}"), None, &[]), 200, "its sandbox removed");

    // Keys: a namespace key makes session and model-access keys of its namespace only.
    let session = team.post("/api/v1/auth/keys", &json!({ "role": "session" }));
    expect(&session, 201, "namespace key creates a session key");
    assert_eq!(session.json()["namespace"], "team");
    assert!(session.json()["key"].as_str().is_some_and(|key| key.starts_with("bkg_sess_")));
    expect(&team.post("/api/v1/auth/keys", &json!({ "role": "namespace", "namespace": "team" })), 403, "ns → ns key");
    expect(&team.post("/api/v1/auth/keys", &json!({ "role": "admin" })), 403, "ns → admin key");
    expect(&team.post("/api/v1/auth/keys", &json!({ "role": "session", "namespace": "other" })), 403, "other ns");
    let visible = team.get("/api/v1/auth/keys").json();
    assert!(visible.as_array().is_some_and(|keys| keys.iter().all(|key| key["namespace"] == "team")), "{visible}");
    expect(&other.get(&format!("/api/v1/auth/keys/{team_id}")), 404, "another namespace's key");
    let session_key = session.json()["key"].as_str().unwrap_or_default().to_owned();
    let session = api.client(&session_key);
    expect(&session.post("/api/v1/runs", &python_run(None)), 200, "a session key runs code");
    expect(&session.post("/api/v1/auth/keys", &json!({ "role": "session" })), 403, "session → keys");
    assert_eq!(session.get("/api/v1/auth/keys").json().as_array().map(Vec::len), Some(1), "only itself");
    expect(&session.get(&format!("/api/v1/auth/keys/{team_id}")), 404, "session sees no other key");

    // Model-access keys reach no sandbox and no code.
    expect(&model.post("/api/v1/runs", &python_run(None)), 403, "model-access runs code");
    expect(&model.get("/api/v1/sandboxes"), 403, "model-access lists sandboxes");
    let secrets = model.get("/api/v1/secrets");
    expect(&secrets, 403, "model-access lists secrets");
    assert!(secrets.text().contains("runs and secrets"), "the refusal names what was asked: {}", secrets.text());
    // A run on a terminal is refused before the WebSocket upgrade, in the API's error shape.
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let terminal = model.send("GET", "/api/v1/runs/terminal", None, &upgrade);
    expect(&terminal, 403, "model-access opens a run terminal");
    assert!(terminal.json()["error"]["message"].as_str().is_some_and(|text| text.contains("cannot run code")));
    assert_eq!(model.get("/api/v1/auth/whoami").json()["role"], "model-access");
    assert_eq!(model.get(&format!("/api/v1/auth/keys/{model_id}")).json()["id"], model_id.as_str());
    // Nor MCP, whose tools run code: refused before it says what they are.
    let mcp_accept = [("Accept", "application/json, text/event-stream")];
    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } });
    let tools = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
    for message in [&initialize, &tools] {
        let refused = model.send("POST", "/mcp", Some(message), &mcp_accept);
        expect(&refused, 403, "model-access on MCP");
        assert!(refused.json()["error"]["message"].as_str().is_some_and(|text| text.contains("cannot use MCP")));
    }
    expect(&team.send("POST", "/mcp", Some(&initialize), &mcp_accept), 200, "a namespace key initializes MCP");
    // MCP's refusals of malformed requests come in the API's one error shape.
    let no_accept = team.post("/mcp", &initialize);
    expect(&no_accept, 406, "MCP without Accept");
    assert_eq!(no_accept.error_code(), "bad_request");
    let get = team.get("/mcp");
    expect(&get, 405, "MCP by GET");
    assert_eq!((get.error_code().as_str(), get.header("allow")), ("method_not_allowed", Some("POST")));
    // Without a key, nothing says which methods a path takes (found by a new-user trial: the
    // 401 carried `Allow`); with one, the 405 does.
    for path in ["/api/v1/runs", "/mcp"] {
        let refused = api.anonymous().send("PATCH", path, None, &[]);
        expect(&refused, 401, "a wrong method without a key");
        assert_eq!(refused.header("allow"), None, "{path}");
    }
    let wrong = team.send("PATCH", "/api/v1/runs", None, &[]);
    expect(&wrong, 405, "a wrong method with a key");
    assert!(wrong.header("allow").is_some_and(|allow| allow.contains("POST")), "{:?}", wrong.header("allow"));
    let team_key = team.key.clone().unwrap_or_default();
    let not_json = request(
        &api.address,
        "POST",
        "/mcp",
        &[("Authorization", &format!("Bearer {team_key}")), ("Content-Type", "application/json"), mcp_accept[0]],
        b"{not json",
    );
    expect(&not_json, 400, "MCP with a body that is not JSON");
    assert_eq!(not_json.error_code(), "bad_request");
    // A request whose params its method cannot take is JSON-RPC's invalid params, with its id
    // (was: -32601, "method not found", naming the method).
    let call = json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": { "arguments": {} } });
    let invalid = team.send("POST", "/mcp", Some(&call), &mcp_accept);
    expect(&invalid, 200, "tools/call without a tool's name");
    assert_eq!(invalid.json()["id"], 9);
    assert_eq!(invalid.json()["error"]["code"], -32602, "{}", invalid.json());
    assert!(invalid.json()["error"]["message"].as_str().is_some_and(|text| text.contains("params.name")));
    // An unknown tool and a method MCP does not have are named, with what there is (found by a
    // new-user trial: "tool not found", and the bare method name).
    let unknown = json!({ "jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": { "name": "run_code" } });
    let unknown = team.send("POST", "/mcp", Some(&unknown), &mcp_accept).json();
    assert_eq!((&unknown["id"], &unknown["error"]["code"]), (&json!(10), &json!(-32602)), "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|text| text.contains("there is no tool `run_code`; the tools are")),
        "{unknown}"
    );
    let typo = json!({ "jsonrpc": "2.0", "id": 11, "method": "tools/lists" });
    let typo = team.send("POST", "/mcp", Some(&typo), &mcp_accept).json();
    assert_eq!((&typo["id"], &typo["error"]["code"]), (&json!(11), &json!(-32601)), "{typo}");
    assert!(
        typo["error"]["message"]
            .as_str()
            .is_some_and(|text| text.contains("method `tools/lists` is not an MCP request")),
        "{typo}"
    );
    // What is no request in JSON-RPC's terms is its Invalid Request, not HTTP 400 (found by a
    // new-user trial): a batch, an id of another type, another jsonrpc.
    for (request, said) in [
        (json!([{ "jsonrpc": "2.0", "id": 1, "method": "ping" }]), "a batch of requests is not taken"),
        (json!({ "jsonrpc": "2.0", "id": { "a": 1 }, "method": "ping" }), "id must be a string or an integer"),
        (json!({ "jsonrpc": "2.0", "id": 1.5, "method": "ping" }), "id must be a string or an integer"),
        (json!({ "jsonrpc": "1.0", "id": 1, "method": "ping" }), "jsonrpc must be \"2.0\""),
    ] {
        let answer = team.send("POST", "/mcp", Some(&request), &mcp_accept);
        expect(&answer, 200, "an invalid JSON-RPC request");
        let answer = answer.json();
        assert_eq!((&answer["id"], &answer["error"]["code"]), (&json!(null), &json!(-32600)), "{answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|text| text.contains(said)), "{answer}");
    }
    // A response posted to the server is refused as JSON-RPC has it, with a null id (found by a
    // new-user trial: no id at all).
    let response = json!({ "jsonrpc": "2.0", "id": 1, "result": {} });
    let refused = team.send("POST", "/mcp", Some(&response), &mcp_accept).json();
    assert_eq!((refused.get("id"), &refused["error"]["code"]), (Some(&json!(null)), &json!(-32600)), "{refused}");
    // A key twice, as the API refuses it (found by a new-user trial: "unrecognized JSON-RPC message").
    let twice = request(
        &api.address,
        "POST",
        "/mcp",
        &[("Authorization", &format!("Bearer {team_key}")), ("Content-Type", "application/json"), mcp_accept[0]],
        br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
    );
    expect(&twice, 200, "a JSON-RPC request with a key twice");
    let twice = twice.json();
    assert_eq!((&twice["id"], &twice["error"]["code"]), (&json!(null), &json!(-32600)), "{twice}");
    assert!(
        twice["error"]["message"].as_str().is_some_and(|text| text.contains("the key `id` comes twice")),
        "{twice}"
    );

    // Admin-only endpoints.
    for client in [&team, &session, &model] {
        expect(&client.get("/metrics"), 403, "metrics");
        expect(&client.get("/api/v1/agent"), 403, "agent info");
        expect(&client.post("/api/v1/agent/shutdown", &json!({})), 403, "shutdown");
        let signup = json!({ "username": "eve", "password": "long enough password", "namespace": "team" });
        expect(&client.post("/api/v1/auth/signup", &signup), 403, "signup");
    }
    assert_eq!(admin.get("/api/v1/agent").json()["version"], env!("CARGO_PKG_VERSION"));

    // A secret is set in the namespace `?namespace=` names, as it is listed and removed there.
    let set = admin.send("PUT", "/api/v1/secrets/TOKEN?namespace=team", Some(&json!({ "value": "s3cret" })), &[]);
    expect(&set, 200, "a secret set with ?namespace=");
    assert_eq!(set.json()["namespace"], "team");
    assert_eq!(admin.get("/api/v1/secrets?namespace=team").json()[0]["name"], "TOKEN");
    let both = json!({ "value": "x", "namespace": "other" });
    expect(&admin.send("PUT", "/api/v1/secrets/TOKEN?namespace=team", Some(&both), &[]), 422, "two namespaces");
    expect(&admin.delete("/api/v1/secrets/TOKEN?namespace=team"), 200, "removed where it was set");

    // Malformed input: 400 for broken JSON, 422 for wrong values, 413 for a huge body, 405 for a
    // wrong method; never 500.
    let broken = request(
        &api.address,
        "POST",
        "/api/v1/runs",
        &[("Authorization", &format!("Bearer {}", api.admin_key)), ("Content-Type", "application/json")],
        b"{not json",
    );
    expect(&broken, 400, "broken JSON");
    // The last of two would run where whatever read the first (a proxy, a log) saw the other.
    let twice = request(
        &api.address,
        "POST",
        "/api/v1/runs",
        &[("Authorization", &format!("Bearer {}", api.admin_key)), ("Content-Type", "application/json")],
        br#"{"language":"python","code":"print('checked')","code":"print('ran')"}"#,
    );
    expect(&twice, 400, "a key twice");
    assert!(twice.text().contains("the key `code` comes twice"), "{}", twice.text());
    expect(&admin.post("/api/v1/runs", &json!({ "language": "cobol", "code": "" })), 422, "unknown language");
    expect(&admin.post("/api/v1/runs", &json!(["python", "print(1)"])), 422, "an array body");
    expect(
        &admin.post("/api/v1/runs", &json!({ "language": "python", "code": "", "limits": [1, 2] })),
        422,
        "array limits",
    );
    expect(
        &admin.post(
            "/api/v1/runs",
            &json!({ "language": "python", "code": "", "limits": { "memory_bytes": 1u64 << 50 } }),
        ),
        422,
        "above max",
    );
    // A misspelt limit would otherwise run with the default in its place.
    let misspelt = admin.post("/api/v1/runs", &json!({ "language": "python", "code": "", "limits": { "memory": 1 } }));
    expect(&misspelt, 422, "an unknown limit");
    assert!(misspelt.text().contains("unknown field `memory`"), "{}", misspelt.text());
    let huge = request(
        &api.address,
        "POST",
        "/api/v1/runs",
        &[("Authorization", &format!("Bearer {}", api.admin_key)), ("Content-Length", "100000000")],
        b"",
    );
    expect(&huge, 413, "a body over the limit");
    // Without a key, it is the key that is missing, whatever the body (was: 413; found by a
    // new-user trial).
    let keyless = request(&api.address, "POST", "/api/v1/runs", &[("Content-Length", "100000000")], b"");
    expect(&keyless, 401, "a keyless body over the limit");
    let patch = admin.send("PATCH", "/api/v1/runs", None, &[]);
    expect(&patch, 405, "a wrong method");
    assert_eq!(patch.error_code(), "method_not_allowed");
    expect(&admin.get("/api/v1/nothing"), 404, "an unknown path");

    // The socket needs no key; a key sent there speaks for its holder.
    let on_socket = api.agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
    assert_eq!(code(&on_socket), 0, "{}", stderr(&on_socket));
    let all: Value = serde_json::from_slice(&on_socket.stdout).expect("keys JSON");
    assert!(all.as_array().is_some_and(|keys| keys.len() >= 5), "{all}");

    // /metrics parses with the Prometheus client library's own parsers.
    let metrics = admin.get("/metrics");
    expect(&metrics, 200, "metrics");
    assert!(metrics.header("content-type").is_some_and(|value| value.starts_with("application/openmetrics-text")));
    let parsed = parse_metrics(&metrics.text());
    assert!(parsed["bkg_runs"]["ok"].as_f64().unwrap_or(0.0) >= 3.0, "{parsed}");
    // This agent has no bkg_db: its outbox keeps the events for one, and no lag grows (found by
    // a new-user trial: an alert on a growing lag would fire on every agent without one).
    assert!(metrics.text().contains("bkg_sync_lag_seconds 0.0\n"), "{}", metrics.text());
    let sync = api.agent.bkg().args(["sync", "status", "--json"]).output().expect("bkg sync status");
    assert_eq!(code(&sync), 0, "{}", stderr(&sync));
    let sync: Value = serde_json::from_slice(&sync.stdout).expect("sync JSON");
    assert_eq!((&sync["configured"], &sync["lag_ms"]), (&json!(false), &Value::Null), "{sync}");
    assert!(sync["backlog"].as_u64().is_some_and(|backlog| backlog > 0), "{sync}");
    let said = api.agent.bkg().args(["sync", "status"]).output().expect("bkg sync status");
    assert!(stdout(&said).contains("events, kept for a bkg_db once one is configured"), "{}", stdout(&said));
    assert!(!stdout(&said).contains("oldest"), "{}", stdout(&said));
    assert!(parsed["bkg_http_requests"]["401"].as_f64().unwrap_or(0.0) >= 7.0, "{parsed}");
    assert!(parsed["bkg_run_duration_seconds"]["count"].as_f64().unwrap_or(0.0) >= 3.0, "{parsed}");
    for family in ["bkg_active_sandboxes", "bkg_warm_sandboxes", "bkg_limit_kills", "bkg_rate_limited_requests"] {
        assert!(
            parsed["families"].as_array().is_some_and(|names| names.contains(&json!(family))),
            "{family}: {parsed}"
        );
    }
}

/// Runs tests/api/parse_metrics.py over `text`: both of prometheus_client's parsers must take it.
fn parse_metrics(text: &str) -> Value {
    let script = workspace().join("tests/api/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write metrics");
    let output = child.wait_with_output().expect("parse_metrics.py");
    assert_eq!(code(&output), 0, "the metrics do not parse: {}\n{text}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("parse_metrics.py JSON")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A followed log opened with a key is held to it: once the key is revoked, the log stops coming
/// while its run goes on.
/// `GET …/logs?follow=true` of sandbox `id` with `key` (and `extra` header lines), read until
/// `until` has come (at most 60 s a read): the connection and what it brought so far.
fn follow_log(api: &ApiAgent, id: &str, key: &str, extra: &str, until: &str) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::{Read, Write};
    let mut follow = std::net::TcpStream::connect(&api.address).expect("connect");
    follow.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let head = format!(
        "GET /api/v1/sandboxes/{id}/logs?follow=true HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         {extra}Connection: close\r\n\r\n",
        api.address
    );
    follow.write_all(head.as_bytes()).expect("send");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(until) {
        let read = follow.read(&mut buffer).expect("read the log");
        assert!(read > 0, "the log ended before {until:?}: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..read]);
    }
    (follow, received)
}

/// Sandbox `name` made with `team`'s key and its `start` script started as a service; its id.
fn started_service(team: &Client, name: &str, start: &str) -> String {
    let created =
        team.post("/api/v1/sandboxes", &json!({ "name": name, "language": "python", "scripts": { "start": start } }));
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    expect(&team.send("POST", &format!("/api/v1/sandboxes/{id}/start"), None, &[]), 202, "start");
    id
}

#[test]
fn a_followed_log_ends_when_its_key_is_revoked() {
    use std::io::Read;
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let (session_id, session) = api.key("session", Some("web"));
    let team = api.client(&key);
    let ticks = "for i in $(seq 1 100); do echo tick $i; sleep 0.2; done";
    let id = started_service(&team, "ticker", ticks);

    // The log is streaming once its first tick has come.
    let (mut follow, mut received) = follow_log(&api, &id, &session, "", "tick 1\n");
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received));
    let revoked = api.admin().post(&format!("/api/v1/auth/keys/{session_id}/revoke"), &json!({}));
    expect(&revoked, 200, "revoke");
    // Read until the agent ends the stream: soon, not when the 20 s run ends.
    let _ = follow.read_to_end(&mut received);
    let state = team.get(&format!("/api/v1/sandboxes/{id}")).json();
    assert_eq!(state["state"], "running", "the log outlived its key until the run ended: {state}");
    assert!(!String::from_utf8_lossy(&received).contains("tick 100"));
    expect(&team.post(&format!("/api/v1/sandboxes/{id}/stop"), &json!({})), 200, "stop");
}

/// `bkg --remote exe` as `key` of a script that says `ready` and sleeps for a minute, once it has
/// said it.
fn remote_run_until_ready(api: &ApiAgent, home: &Path, key: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut run = bkg_at(api, home)
        .args(["--remote", &format!("http://{}", api.address), "exe", "--type", "python", "-c"])
        .arg("import time; print('ready', flush=True); time.sleep(60)")
        .env("BKG_API_KEY", key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg exe");
    let mut first = String::new();
    std::io::BufReader::new(run.stdout.take().expect("stdout")).read_line(&mut first).expect("read the run's output");
    assert_eq!(first, "ready\n");
    run
}

#[test]
fn a_run_started_with_a_key_is_cancelled_when_the_key_is_revoked_but_a_service_goes_on() {
    let api = ApiAgent::start(&[]);
    let (key_id, key) = api.key("namespace", Some("web"));
    let team = api.client(&key);
    let id = started_service(&team, "service", "sleep 60");

    let home = tempfile::tempdir().expect("home");
    let run = remote_run_until_ready(&api, home.path(), &key);
    let revoked = api.admin().post(&format!("/api/v1/auth/keys/{key_id}/revoke"), &json!({}));
    expect(&revoked, 200, "revoke");
    // The run ends at once, cancelled; not when its 60 s sleep would.
    let ended = run.wait_with_output().expect("bkg exe ends");
    assert_eq!(code(&ended), 130, "{}", stderr(&ended));
    assert!(
        stderr(&ended).contains("cancelled (by `bkg runs cancel`, the API or the Web UI, as the API key"),
        "{}",
        stderr(&ended)
    );
    let runs = api.admin().get("/api/v1/runs?namespace=web").json();
    let cancelled = runs.as_array().into_iter().flatten().filter(|run| run["killed_by"] == "cancelled").count();
    assert_eq!(cancelled, 1, "{runs}");
    // The service belongs to its sandbox: it outlives the key that started it.
    let state = api.admin().get(&format!("/api/v1/sandboxes/{id}")).json();
    assert_eq!(state["state"], "running", "{state}");
    expect(&api.admin().post(&format!("/api/v1/sandboxes/{id}/stop"), &json!({})), 200, "stop");
}

/// `bkg runs cancel` (`POST /api/v1/runs/{id}/cancel`) ends a run of the key's own namespace as
/// its Ctrl-C would, answers with the run as recorded, and says when there is nothing to cancel;
/// another namespace's key is told there is no such run.
#[test]
fn bkg_runs_cancel_ends_a_run_of_the_keys_own_namespace_only() {
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let (_, other) = api.key("namespace", Some("shop"));
    let team = api.client(&key);
    let home = tempfile::tempdir().expect("home");
    let remote = format!("http://{}", api.address);
    let run = remote_run_until_ready(&api, home.path(), &key);
    let runs = team.get("/api/v1/runs").json();
    let id = runs[0]["id"].as_str().expect("the run's id").to_owned();
    let cancel = format!("/api/v1/runs/{id}/cancel");

    let elsewhere = api.client(&other).post(&cancel, &json!({}));
    expect(&elsewhere, 404, "another namespace's cancel");
    let cancelled = bkg_at(&api, home.path())
        .args(["--remote", &remote, "runs", "cancel", &id, "--json"])
        .env("BKG_API_KEY", &key)
        .output()
        .expect("bkg runs cancel");
    assert_eq!(code(&cancelled), 0, "{}", stderr(&cancelled));
    let record: Value = serde_json::from_slice(&cancelled.stdout).expect("the run as JSON");
    assert_eq!(record["killed_by"], "cancelled", "{record}");
    assert!(record["finished_at_ms"].is_u64(), "answered once the end is recorded: {record}");
    let ended = run.wait_with_output().expect("bkg exe ends");
    assert_eq!(code(&ended), 130, "{}", stderr(&ended));
    assert_eq!(
        stderr(&ended),
        "bkg: cancelled (by `bkg runs cancel`, the API or the Web UI, as the API key it ran with was revoked, \
         rotated, deleted or expired, or as its user was taken out of the agent's group)\n"
    );

    let again = team.post(&cancel, &json!({}));
    expect(&again, 409, "a second cancel");
    assert_eq!(again.error_code(), "conflict");
    let said = bkg_at(&api, home.path())
        .args(["--remote", &remote, "runs", "cancel", &id])
        .env("BKG_API_KEY", &key)
        .output()
        .expect("bkg runs cancel");
    assert_eq!(code(&said), 125);
    assert_eq!(stderr(&said), format!("bkg: run {id} has already ended: `bkg runs show {id}` shows how\n"));
}

/// A `restart: on-failure` service a key started is started again by the next agent, as that
/// key, while the key may run code; once the key is revoked, the next agent leaves it
/// (docs/operations.md).
#[test]
fn a_service_a_key_started_is_resumed_as_that_key_until_the_key_is_revoked() {
    let mut api = ApiAgent::start(&[]);
    let (key_id, key) = api.key("namespace", Some("web"));
    let body =
        json!({ "name": "svc", "language": "python", "restart": "on-failure", "scripts": { "start": "sleep 600" } });
    let created = api.client(&key).post("/api/v1/sandboxes", &body);
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let started = api.client(&key).send("POST", &format!("/api/v1/sandboxes/{id}/start"), None, &[]);
    expect(&started, 202, "start");
    let first_run = started.json()["run_id"].as_str().unwrap_or_default().to_owned();

    api.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let info = api.client(&key).get(&format!("/api/v1/sandboxes/{id}")).json();
        // Its run is registered a moment before its service is: both say it is back.
        if info["current_run"].is_string()
            && info["current_run"] != first_run.as_str()
            && info["service"]["state"] == "running"
        {
            break info;
        }
        assert!(Instant::now() < deadline, "the service was not started again: {info}\n{}", api.agent.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    // It runs as the key that started it: the key's own view of the runs holds the new one (once
    // its start is recorded, as its run begins).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = api.client(&key).get("/api/v1/runs").json();
        if runs.as_array().into_iter().flatten().any(|run| run["id"] == resumed["current_run"]) {
            break;
        }
        assert!(Instant::now() < deadline, "the key does not see the resumed run: {runs}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Revoked, the key may no longer start anything: the next agent leaves the service.
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{key_id}/revoke"), &json!({})), 200, "revoke");
    let earlier_log = api.agent.log().len();
    api.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api.agent.log()[earlier_log..].contains("the service could not be started again") {
        assert!(Instant::now() < deadline, "no word on the service left:\n{}", api.agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        api.agent.log()[earlier_log..]
            .contains(&format!("the key it was started with, {key_id}, was revoked, rotated, deleted or has expired")),
        "{}",
        api.agent.log()
    );
    let info = api.admin().get(&format!("/api/v1/sandboxes/{id}")).json();
    assert!(info["current_run"].is_null(), "{info}");
}

/// Sandbox `box` of namespace `web`, made with a namespace key: that key's client, a session key
/// of `web` (id and secret), and the sandbox's id.
fn web_box_and_its_session_key(api: &ApiAgent) -> (Client, (String, String), String) {
    let (_, key) = api.key("namespace", Some("web"));
    let session = api.key("session", Some("web"));
    let team = api.client(&key);
    let created = team.post("/api/v1/sandboxes", &json!({ "name": "box", "language": "python" }));
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    (team, session, id)
}

/// The revocation can come before the transfer's own run has started (found by CI on a loaded
/// machine, where the upload was told its sandbox "did not start"): here that run waits for the
/// agent's one place, taken by another run, when the key is revoked; the upload is told why.
#[test]
fn an_upload_whose_key_is_revoked_before_its_transfer_started_says_the_key_was_revoked() {
    use std::io::{BufRead, BufReader};
    let api = ApiAgent::start(&["--max-running-runs", "1"]);
    let (team, (session_id, session), id) = web_box_and_its_session_key(&api);
    let mut sleeper = api
        .agent
        .bkg()
        .args(["exe", "--type", "python", "-c", "print('up', flush=True); import time; time.sleep(60)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bkg exe");
    let mut line = String::new();
    BufReader::new(sleeper.stdout.take().expect("stdout")).read_line(&mut line).expect("the sleeper's first line");
    assert_eq!(line, "up\n");

    let upload = {
        let address = api.address.clone();
        let session = session.clone();
        let id = id.clone();
        let payload = tempfile::tempdir().expect("payload dir");
        std::fs::write(payload.path().join("a.txt"), "uploaded\n").expect("write");
        let archive =
            Command::new("tar").args(["-cf", "-", "a.txt"]).current_dir(payload.path()).output().expect("tar");
        std::thread::spawn(move || {
            let bearer = format!("Bearer {session}");
            let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/x-tar")];
            request(&address, "PUT", &format!("/api/v1/sandboxes/{id}/files?path=in"), &headers, &archive.stdout)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while team.get(&format!("/api/v1/sandboxes/{id}")).json()["current_run"].is_null() {
        assert!(Instant::now() < deadline, "the upload's run never came");
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{session_id}/revoke"), &json!({})), 200, "revoke");
    let answer = upload.join().expect("the upload's thread");
    assert_eq!((answer.status, answer.error_code()), (401, "unauthorized".to_owned()), "{}", answer.text());
    assert!(answer.text().contains("the key was revoked"), "{}", answer.text());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn an_upload_made_with_a_key_fails_when_the_key_is_revoked_and_keeps_nothing() {
    use std::io::{Read, Write};
    let api = ApiAgent::start(&[]);
    let (team, (session_id, session), id) = web_box_and_its_session_key(&api);
    let payload = tempfile::tempdir().expect("payload dir");
    std::fs::write(payload.path().join("a.txt"), "uploaded\n").expect("write");
    let archive = Command::new("tar").args(["-cf", "-", "a.txt"]).current_dir(payload.path()).output().expect("tar");
    assert!(archive.status.success());

    // The body comes in two parts, the key revoked in between.
    let mut upload = std::net::TcpStream::connect(&api.address).expect("connect");
    upload.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let head = format!(
        "PUT /api/v1/sandboxes/{id}/files?path=in HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {session}\r\n\
         Connection: close\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        api.address,
        archive.stdout.len()
    );
    upload.write_all(head.as_bytes()).expect("send head");
    upload.write_all(&archive.stdout[..512]).expect("send the first block");
    let deadline = Instant::now() + Duration::from_secs(30);
    while team.get(&format!("/api/v1/sandboxes/{id}")).json()["current_run"].is_null() {
        assert!(Instant::now() < deadline, "the upload never held the sandbox");
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{session_id}/revoke"), &json!({})), 200, "revoke");
    // The agent may have answered and closed already: the rest may not go out.
    let _ = upload.write_all(&archive.stdout[512..]);
    let mut answer = String::new();
    let _ = upload.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "the upload outlived its key: {answer}");
    assert!(answer.contains("the key was revoked"), "{answer}");
    let listed = team.get(&format!("/api/v1/sandboxes/{id}/files/list"));
    expect(&listed, 200, "list");
    let entries = listed.json();
    let names: Vec<&str> = entries.as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect();
    assert!(!names.iter().any(|name| name.starts_with("in")), "a revoked key's upload left {names:?}");
}

#[test]
fn a_quiet_followed_log_ends_at_once_with_the_reason_when_its_key_is_revoked() {
    use std::io::Read;
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let (session_id, session) = api.key("session", Some("web"));
    let team = api.client(&key);
    let id = started_service(&team, "quiet", "echo first; sleep 60");
    let sse = "Accept: text/event-stream\r\n";
    let (mut follow, mut received) = follow_log(&api, &id, &session, sse, "data: first\n");
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{session_id}/revoke"), &json!({})), 200, "revoke");
    // The run prints nothing more for a minute: the stream still ends now (within the read
    // timeout), with an event that says why.
    follow.read_to_end(&mut received).expect("the log ends before the read timeout");
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("event: error\ndata: {\"message\":\"the key was revoked\"}"), "{text}");
    assert!(!text.contains("event: end"), "{text}");
    expect(&team.post(&format!("/api/v1/sandboxes/{id}/stop"), &json!({})), 200, "stop");
}

/// Found by a new-user trial: a session key revoked while a cell it sent ran (in a session
/// another key made) kept receiving the cell's output to its end. The cell is interrupted and
/// the key's stream ends, saying so; the session stays for the keys that still speak for it.
#[test]
fn a_cell_sent_with_a_key_is_cut_off_when_the_key_is_revoked() {
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let (session_id, session) = api.key("session", Some("web"));
    let team = api.client(&key);
    let created = team.post("/api/v1/sandboxes", &json!({ "name": "ticker", "language": "python" }));
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    expect(&team.post(&format!("/api/v1/sandboxes/{id}/sessions"), &json!({})), 201, "the team's session");

    let (text, last) = a_long_cell_cut_off_by_its_keys_revocation(&api, &id, (&session_id, &session));
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("end"), Some("interrupted")), "{text}");
    assert_eq!(last["killed_by"], "cancelled", "{text}");
    assert!(text.matches("tick").count() < 5, "the cell ran on for its revoked key: {text}");
    // The session is the team's still: its next cell runs, once the interrupted one has ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    while team.get(&format!("/api/v1/sandboxes/{id}/sessions/default")).json()["busy"] != false {
        assert!(Instant::now() < deadline, "the interrupted cell never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = team.post(&format!("/api/v1/sandboxes/{id}/sessions/default/execute"), &json!({ "code": "6 * 7" }));
    expect(&next, 200, "the team's next cell");
    assert!(next.text().contains("42"), "{}", next.text());
}

/// A long cell sent with `key` (its id and secret) to sandbox `id`'s default session, and the
/// key revoked once the cell has printed: the stream's text and its last event.
fn a_long_cell_cut_off_by_its_keys_revocation(
    api: &ApiAgent,
    id: &str,
    (key_id, key): (&str, &str),
) -> (String, Value) {
    use std::io::{Read, Write};
    let mut cell = std::net::TcpStream::connect(&api.address).expect("connect");
    cell.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let body = json!({ "code": "import time\nprint('first', flush=True)\nfor i in range(60):\n    time.sleep(1)\n    print('tick', i, flush=True)" })
        .to_string();
    let head = format!(
        "POST /api/v1/sandboxes/{id}/sessions/default/execute HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        api.address,
        body.len()
    );
    cell.write_all(head.as_bytes()).expect("send");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("first") {
        let read = cell.read(&mut buffer).expect("read the cell's events");
        assert!(read > 0, "the cell ended before its first line: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..read]);
    }
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{key_id}/revoke"), &json!({})), 200, "revoke");
    cell.read_to_end(&mut received).expect("the stream ends before the read timeout");
    let text = String::from_utf8_lossy(&received).into_owned();
    let last = text.lines().rfind(|line| line.starts_with('{')).unwrap_or_default();
    let last = serde_json::from_str(last).unwrap_or_default();
    (text, last)
}

/// A session started with a key ends with it: a cell sent with that key then ends `died`, not
/// `interrupted`, as the interpreter and its variables are gone (found by a new-user trial).
#[test]
fn a_cell_in_a_session_its_key_started_dies_with_the_key() {
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let (session_id, session) = api.key("session", Some("web"));
    let created = api.client(&key).post("/api/v1/sandboxes", &json!({ "name": "own", "language": "python" }));
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    expect(&api.client(&session).post(&format!("/api/v1/sandboxes/{id}/sessions"), &json!({})), 201, "its session");
    let (text, last) = a_long_cell_cut_off_by_its_keys_revocation(&api, &id, (&session_id, &session));
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("end"), Some("died")), "{text}");
    assert_eq!(last["killed_by"], "cancelled", "{text}");
}

#[test]
fn a_key_speaks_for_itself_alone_and_its_name_cannot_rewrite_a_terminal() {
    let api = ApiAgent::start(&[]);
    let (_, team_key) = api.key("namespace", Some("team"));
    let (_, other_key) = api.key("namespace", Some("other"));
    let team = api.client(&team_key);
    // Naming another namespace is refused for sandboxes as for runs, not answered empty.
    let listed = api.client(&other_key).get("/api/v1/sandboxes?namespace=team");
    expect(&listed, 403, "another namespace's sandboxes");
    assert!(listed.text().contains("sees only namespace `other`"), "{}", listed.text());
    // Two keys in one request: neither is taken.
    let both = team.send("GET", "/api/v1/auth/whoami", None, &[("Authorization", &format!("Bearer {other_key}"))]);
    expect(&both, 401, "two Authorization headers");
    assert!(both.text().contains("one Authorization header"), "{}", both.text());
    // A name with an escape sequence would repaint the admin's `bkg keys ls`.
    let named = team.post("/api/v1/auth/keys", &json!({ "role": "session", "name": "evil\u{1b}[2J\rkey_fake" }));
    expect(&named, 422, "a control character in a key's name");
    assert!(named.text().contains("control characters"), "{}", named.text());
}

#[test]
fn a_terminal_address_asked_without_a_websocket_answers_in_the_error_shape() {
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("team"));
    let team = api.client(&key);
    let plain = team.get("/api/v1/runs/terminal");
    expect(&plain, 400, "a terminal without the WebSocket headers");
    assert_eq!(plain.error_code(), "bad_request");
    assert!(plain.json()["error"]["message"].as_str().is_some_and(|m| m.contains("WebSocket")), "{}", plain.text());
    // A sandbox that is not there is that, first.
    let missing = team.get("/api/v1/sandboxes/nope-0000000000000000/terminal");
    expect(&missing, 404, "a terminal of no sandbox");
    assert_eq!(missing.error_code(), "not_found");
}

#[test]
fn sandboxes_are_created_started_followed_executed_stopped_and_deleted_over_tcp() {
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("web"));
    let team = api.client(&key);
    let created = team.post(
        "/api/v1/sandboxes",
        &json!({
            "name": "app",
            "language": "python",
            "limits": { "timeout_ms": 20000 },
            "scripts": { "start": "echo one; sleep 0.3; echo two", "slow": "echo going; sleep 30" },
        }),
    );
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    assert!(created.json()["project_dir"].as_str().is_some_and(|dir| dir.ends_with("/namespaces/web")));
    // That directory is the agent's, not a project of the user's (`bkg ls` says so).
    assert_eq!(created.json()["has_project"], false, "{}", created.json());
    assert_eq!(team.get(&format!("/api/v1/sandboxes/{id}")).json()["state"], "idle");
    expect(&team.get(&format!("/api/v1/sandboxes/{id}/logs")), 404, "logs before any run");

    let started = team.send("POST", &format!("/api/v1/sandboxes/{id}/start"), None, &[]);
    expect(&started, 202, "start");
    let run_id = started.json()["run_id"].as_str().unwrap_or_default().to_owned();
    // Followed as server-sent events, the log ends with the run.
    let events =
        team.send("GET", &format!("/api/v1/sandboxes/{id}/logs?follow=true"), None, &[("Accept", "text/event-stream")]);
    expect(&events, 200, "SSE logs");
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        events.text(),
        format!("event: log\ndata: one\n\nevent: log\ndata: two\n\nevent: end\ndata: {{\"run_id\":\"{run_id}\"}}\n\n")
    );
    let plain = team.get(&format!("/api/v1/sandboxes/{id}/logs"));
    assert_eq!(plain.text(), "one\ntwo\n");
    assert!(plain.header("content-type").is_some_and(|value| value.starts_with("text/plain")));

    let ran = team.post(&format!("/api/v1/sandboxes/{id}/exec"), &json!({ "command": "echo kept > f; cat f" }));
    expect(&ran, 200, "exec");
    assert_eq!(ran.json()["stdout"], "kept\n");
    let again = team.post(&format!("/api/v1/sandboxes/{id}/exec"), &json!({ "command": "cat f" }));
    assert_eq!(again.json()["stdout"], "kept\n", "the workspace persists");

    let slow = team.post(&format!("/api/v1/sandboxes/{id}/start"), &json!({ "script": "slow" }));
    expect(&slow, 202, "start another script");
    expect(&team.post(&format!("/api/v1/sandboxes/{id}/exec"), &json!({ "command": "true" })), 409, "busy");
    expect(&team.post(&format!("/api/v1/sandboxes/{id}/start"), &json!({ "script": "nope" })), 422, "no such script");
    assert_eq!(team.get(&format!("/api/v1/sandboxes/{id}")).json()["state"], "running");
    let stopped = team.post(&format!("/api/v1/sandboxes/{id}/stop"), &json!({}));
    assert_eq!(stopped.json()["stopped"], true);
    let info = team.get(&format!("/api/v1/sandboxes/{id}")).json();
    assert_eq!(info["state"], "idle");
    assert_eq!(info["last_run"]["killed_by"], "cancelled");

    let listed = team.get("/api/v1/sandboxes").json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    expect(&team.delete(&format!("/api/v1/sandboxes/{id}")), 200, "delete");
    expect(&team.get(&format!("/api/v1/sandboxes/{id}")), 404, "deleted");
    api.agent.wait_idle();
}

/// The HMAC-SHA256 signature header of `body` at `timestamp`, as a peer would send it.
fn sign(timestamp: u64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("hmac key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[test]
fn keys_expire_rotate_and_revoke_at_once_and_rotations_are_signed_to_webhooks() {
    // The first delivery fails, so the notice must be retried.
    let webhook = Receiver::start(vec![500]);
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, format!("{WEBHOOK_SECRET}\n")).expect("write secret");
    let hook = format!("http://{}/hooks/bkg", webhook.address);
    let api = ApiAgent::start(&[
        "--session-key-ttl",
        "2s",
        "--webhook",
        &hook,
        "--webhook-secret-file",
        secret_file.to_str().expect("path"),
    ]);
    let (admin, anonymous) = (api.admin(), api.anonymous());

    // Signup is for admins; login trades a password for a session key of the user's namespace.
    let signup = json!({ "username": "ada", "password": "correct horse battery", "namespace": "lab" });
    expect(&admin.post("/api/v1/auth/signup", &signup), 201, "signup");
    expect(&admin.post("/api/v1/auth/signup", &signup), 409, "the same user again");
    let short = json!({ "username": "bob", "password": "short", "namespace": "lab" });
    expect(&admin.post("/api/v1/auth/signup", &short), 422, "a short password");
    expect(
        &anonymous.post("/api/v1/auth/login", &json!({ "username": "ada", "password": "wrong password!" })),
        401,
        "bad password",
    );
    expect(
        &anonymous.post("/api/v1/auth/login", &json!({ "username": "nobody", "password": "whatever it is" })),
        401,
        "no user",
    );
    // Both refusals are in the audit log with the client's address; a name no user has is not
    // kept, as it may be a password typed into the wrong field (found by a new-user trial: a
    // guessed password left no record).
    let refused: Vec<serde_json::Value> =
        api.agent.audit_records().into_iter().filter(|record| record["action"] == "auth.login_refused").collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!((refused[0]["actor"].as_str(), refused[0]["namespace"].as_str()), (Some("anonymous"), Some("lab")));
    assert_eq!(refused[0]["details"]["username"], "ada");
    assert_eq!((refused[1]["namespace"].as_str(), &refused[1]["details"]["username"]), (None, &json!(null)));
    for record in &refused {
        assert!(record["details"]["address"].as_str().is_some_and(|address| address.starts_with("127.0.0.1:")));
        assert!(!record.to_string().contains("nobody") && !record.to_string().contains("password"), "{record}");
    }
    let tail = api.agent.bkg().args(["audit", "tail", "-n", "2"]).output().expect("bkg audit tail");
    let rows = stdout(&tail);
    assert!(
        rows.contains("login refused: user ada from 127.0.0.1:") && rows.contains("login refused: no such user from"),
        "{rows}"
    );
    let login =
        anonymous.post("/api/v1/auth/login", &json!({ "username": "ada", "password": "correct horse battery" }));
    expect(&login, 201, "login");
    assert_eq!(login.json()["role"], "session");
    assert_eq!(login.json()["namespace"], "lab");
    assert_eq!(login.json()["user"], "ada");
    let first = login.json()["key"].as_str().unwrap_or_default().to_owned();
    assert_eq!(api.client(&first).get("/api/v1/auth/whoami").json()["namespace"], "lab");

    // Refresh hands out a new session key and revokes the old one at once.
    let refreshed = api.client(&first).send("POST", "/api/v1/auth/refresh", None, &[]);
    expect(&refreshed, 201, "refresh");
    let second = refreshed.json()["key"].as_str().unwrap_or_default().to_owned();
    expect(&api.client(&first).get("/api/v1/auth/whoami"), 401, "the refreshed-away key");
    expect(&api.client(&second).get("/api/v1/auth/whoami"), 200, "the new session key");
    expect(&admin.send("POST", "/api/v1/auth/refresh", None, &[]), 403, "refreshing an admin key");

    // Expiry: the session TTL is 2 s here.
    std::thread::sleep(Duration::from_millis(2200));
    let expired = api.client(&second).get("/api/v1/auth/whoami");
    expect(&expired, 401, "an expired key");
    assert!(expired.json()["error"]["message"].as_str().is_some_and(|message| message.contains("expired")));
    expect(
        &admin
            .post("/api/v1/auth/keys", &json!({ "role": "namespace", "namespace": "lab", "ttl_seconds": 999_999_999 })),
        422,
        "a TTL above the role's",
    );

    // Rotation: the old secret is refused at once, the new one works, and the webhook gets a
    // signed notice (after a retry).
    let (id, old) = api.key("namespace", Some("lab"));
    let rotated = admin.send("POST", &format!("/api/v1/auth/keys/{id}/rotate"), None, &[]);
    expect(&rotated, 200, "rotate");
    let new = rotated.json()["key"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated.json()["id"], id.as_str(), "a rotated key keeps its id");
    expect(&api.client(&old).get("/api/v1/auth/whoami"), 401, "the old secret after rotation");
    expect(&api.client(&new).get("/api/v1/auth/whoami"), 200, "the new secret");
    let deliveries = webhook.wait_for(2, Duration::from_secs(10));
    assert_eq!(deliveries.len(), 2, "one failed delivery and its retry: {deliveries:?}");

    let notice = &deliveries[1];
    assert_eq!((notice.method.as_str(), notice.path.as_str()), ("POST", "/hooks/bkg"));
    assert_eq!(deliveries[0].header("x-bkg-signature"), notice.header("x-bkg-signature"), "a retry is the same notice");
    let signature = notice.header("x-bkg-signature").unwrap_or_default().to_owned();
    let timestamp: u64 = signature.trim_start_matches("t=").split(',').next().and_then(|t| t.parse().ok()).unwrap_or(0);
    assert!(unix_now().abs_diff(timestamp) < 60);
    assert_eq!(signature, sign(timestamp, &notice.body), "the signature is HMAC-SHA256 of `t.body`");
    let body: Value = serde_json::from_slice(&notice.body).expect("notice JSON");
    assert_eq!(body["event"], "key.rotated");
    assert_eq!(body["key_id"], id.as_str());
    assert_eq!(body["namespace"], "lab");

    // The same agent accepts the notice as a peer would send it, once; bad, stale and
    // replayed notices are refused.
    let notice_to = |signature: &str, body: &[u8]| {
        request(
            &api.address,
            "POST",
            "/api/v1/auth/keys/rotated",
            &[("X-Bkg-Signature", signature), ("Content-Type", "application/json")],
            body,
        )
    };
    let accepted = notice_to(&signature, &notice.body);
    expect(&accepted, 202, "a good notice");
    assert_eq!(accepted.json()["key_id"], id.as_str());
    let replayed = notice_to(&signature, &notice.body);
    expect(&replayed, 409, "a replay");
    assert_eq!(replayed.error_code(), "replayed");
    let mut tampered = notice.body.clone();
    tampered.extend_from_slice(b" ");
    expect(&notice_to(&signature, &tampered), 401, "a tampered body");
    expect(&notice_to("t=1,v1=00", &notice.body), 401, "a wrong signature");
    expect(&notice_to("", &notice.body), 401, "no signature");
    let stale_time = unix_now() - 301;
    expect(&notice_to(&sign(stale_time, &notice.body), &notice.body), 401, "a stale timestamp");
    // Signed at another second, the same notice is a new one.
    let fresh = sign(timestamp + 1, &notice.body);
    expect(&notice_to(&fresh, &notice.body), 202, "a fresh signature of the same notice");

    // Revocation: 401 from the very next request; delete likewise.
    let revoked = admin.send("POST", &format!("/api/v1/auth/keys/{id}/revoke"), None, &[]);
    expect(&revoked, 200, "revoke");
    assert!(revoked.json()["revoked_at_ms"].is_u64());
    let refused = api.client(&new).get("/api/v1/auth/whoami");
    expect(&refused, 401, "a revoked key");
    assert!(refused.json()["error"]["message"].as_str().is_some_and(|message| message.contains("revoked")));
    expect(&admin.send("POST", &format!("/api/v1/auth/keys/{id}/rotate"), None, &[]), 409, "rotating a revoked key");
    let (doomed_id, doomed) = api.key("session", Some("lab"));
    expect(&admin.delete(&format!("/api/v1/auth/keys/{doomed_id}")), 200, "delete");
    expect(&api.client(&doomed).get("/api/v1/auth/whoami"), 401, "a deleted key");
    expect(&admin.get(&format!("/api/v1/auth/keys/{doomed_id}")), 404, "the deleted key is gone");

    let metrics = admin.get("/metrics").text();
    assert!(metrics.contains("bkg_rotation_webhook_deliveries_total{outcome=\"delivered\"} 1"), "{metrics}");

    // A key made with a short lifetime keeps it when rotated: not its role's 30 days.
    let hour =
        admin.post("/api/v1/auth/keys", &json!({ "role": "namespace", "namespace": "lab", "ttl_seconds": 3600 }));
    expect(&hour, 201, "a one-hour key");
    let hour_id = hour.json()["id"].as_str().unwrap_or_default().to_owned();
    let rotated_hour = admin.send("POST", &format!("/api/v1/auth/keys/{hour_id}/rotate"), None, &[]);
    expect(&rotated_hour, 200, "rotating the one-hour key");
    let lifetime = |body: &serde_json::Value| {
        body["expires_at_ms"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(body["rotated_at_ms"].as_u64().or(body["created_at_ms"].as_u64()).unwrap_or(0))
    };
    assert_eq!(lifetime(&rotated_hour.json()), 3_600_000, "{}", rotated_hour.json());
}

#[test]
fn keys_over_their_rate_get_429_with_retry_after_and_socket_peers_are_not_limited() {
    let api = ApiAgent::start(&["--session-rate-limit", "5", "--namespace-rate-limit", "7"]);
    let (_, session) = api.key("session", Some("rl"));
    let (_, namespace) = api.key("namespace", Some("rl"));
    let session = api.client(&session);
    for attempt in 1..=5 {
        expect(&session.get("/api/v1/auth/whoami"), 200, &format!("request {attempt} of 5"));
    }
    let limited = session.get("/api/v1/auth/whoami");
    expect(&limited, 429, "the 6th request in a minute");
    assert_eq!(limited.error_code(), "rate_limited");
    let retry_after: u64 = limited.header("retry-after").and_then(|value| value.parse().ok()).unwrap_or(0);
    assert!((1..=12).contains(&retry_after), "5/min refills one every 12 s: {retry_after}");

    // Another key has its own allowance; the socket has none at all.
    let namespace = api.client(&namespace);
    for attempt in 1..=7 {
        expect(&namespace.get("/api/v1/auth/whoami"), 200, &format!("namespace key request {attempt}"));
    }
    expect(&namespace.get("/api/v1/auth/whoami"), 429, "the namespace key's 8th");
    for _ in 0..20 {
        let output = api.agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
    }
    // Without a key, the open routes allow 30 requests a minute per client address.
    let anonymous = api.anonymous();
    for attempt in 1..=30 {
        let notice = anonymous.post("/api/v1/auth/keys/rotated", &json!({}));
        expect(&notice, 401, &format!("unsigned notice {attempt}"));
    }
    let flooded = anonymous.post("/api/v1/auth/login", &json!({ "username": "x", "password": "y" }));
    expect(&flooded, 429, "the 31st request without a key");
    assert!(flooded.header("retry-after").is_some());
    assert!(flooded.text().contains("this address (requests without a valid key) is over"), "{}", flooded.text());
    assert!(limited.text().contains("this key is over its request rate"), "{}", limited.text());

    let metrics = api.admin().get("/metrics").text();
    assert!(metrics.contains("bkg_rate_limited_requests_total{role=\"anonymous\"} 1"), "{metrics}");
    assert!(metrics.contains("bkg_rate_limited_requests_total{role=\"session\"} 1"), "{metrics}");
    assert!(metrics.contains("bkg_rate_limited_requests_total{role=\"namespace\"} 1"), "{metrics}");

    // A long silent run of a key near its rate: the client's "does the agent still answer?"
    // checks (one per BKG_CLIENT_TIMEOUT of silence) must not cancel it when the key's allowance
    // runs out, since a 429 is an answer.
    let (_, busy) = api.key("namespace", Some("rl"));
    let home = tempfile::tempdir().expect("home");
    let slow = bkg_at(&api, home.path())
        .args(["--remote", &format!("http://{}", api.address), "exe", "--type", "python", "-c"])
        .arg("import time; time.sleep(10); print('done')")
        .env("BKG_API_KEY", &busy)
        .env("BKG_CLIENT_TIMEOUT", "1s")
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!((code(&slow), stdout(&slow).as_str()), (0, "done\n"), "{}", stderr(&slow));
}

#[test]
fn health_is_503_with_the_reason_when_the_store_is_locked_or_sandboxes_cannot_be_made() {
    // No warm pool: a healthy answer proves a sandbox can be prepared right now.
    let api = ApiAgent::start_with(&[], Vec::new(), 0);
    let admin = api.admin();
    expect(&admin.get("/healthz"), 200, "healthy");

    // Another process holds the store's write lock.
    let mut locker = api.agent.lock_store();
    let sick = admin.get("/healthz");
    expect(&sick, 503, "a locked store");
    assert_eq!(sick.error_code(), "unavailable");
    assert!(
        sick.json()["error"]["message"].as_str().is_some_and(|m| m.contains("store not writable")),
        "{}",
        sick.text()
    );
    drop(locker.stdin.take());
    locker.wait().expect("locker ends");
    expect(&admin.get("/healthz"), 200, "the lock is gone");

    // The sandboxes' directory cannot be written (a file stands where it should be).
    let sandboxes = api.agent.state_dir.join("sandboxes");
    let moved = api.agent.state_dir.join("sandboxes.moved");
    std::fs::rename(&sandboxes, &moved).expect("move the sandboxes dir");
    std::fs::write(&sandboxes, b"not a directory").expect("write a file in its place");
    let sick = admin.get("/healthz");
    expect(&sick, 503, "sandboxes cannot be made");
    assert!(sick.json()["error"]["message"].as_str().is_some_and(|m| m.contains("sandboxes")), "{}", sick.text());
    std::fs::remove_file(&sandboxes).expect("remove the file");
    std::fs::rename(&moved, &sandboxes).expect("restore the sandboxes dir");
    expect(&admin.get("/healthz"), 200, "healthy again");
}

#[test]
fn the_official_mcp_sdk_client_starts_a_sandbox_runs_python_and_stops_it() {
    let client = workspace().join("tests/mcp/client.mjs");
    assert!(
        workspace().join("tests/mcp/node_modules/@modelcontextprotocol/sdk").exists(),
        "the MCP SDK is missing: run `npm ci` in tests/mcp (scripts/setup.sh does)"
    );
    let api = ApiAgent::start(&[]);
    let (_, key) = api.key("namespace", Some("agents"));
    let output =
        Command::new("node").arg(&client).arg(format!("http://{}/mcp", api.address)).arg(&key).output().expect("node");
    assert_eq!(code(&output), 0, "client.mjs failed: {}\n{}", stderr(&output), api.agent.log());
    let summary: Value = serde_json::from_str(stdout(&output).trim()).expect("client.mjs JSON");
    assert_eq!(summary["refused_bad_key"], true, "{summary}");
    for busy in [&summary["busy"], &summary["busy_create"]["text"]] {
        let text = busy.as_str().unwrap_or_default();
        assert!(text.contains("is running another run") && !text.contains("bkg stop"), "{summary}");
    }
    assert_eq!(
        summary["limited"],
        json!({
            "set": ["ok", false, false],
            "spun": ["interrupted", true, "KeyboardInterrupt"],
            "after_spin": "42",
            "ignored": ["died", true, "string"],
            "after_ignored": "False",
            "flood": ["ok", true, 1048576, "end\n"],
        }),
        "a session's execution is held to the sandbox's timeout, its output to 1 MiB a stream"
    );
    // A sandbox there is not is said to be missing, whatever the path (was: "/workspace is a directory").
    assert_eq!(summary["no_such"]["is_error"], true, "{summary}");
    assert!(summary["no_such"]["text"].as_str().is_some_and(|text| text.contains("doesnotexist-1234")), "{summary}");
    assert!(!summary["no_such"]["text"].as_str().unwrap_or_default().contains("is a directory"), "{summary}");
    // The cancelled call's run ended when the client cancelled it, not at its 50 s sleep's end,
    // and the sandbox took the next call.
    let cancel = &summary["cancel"];
    assert!(cancel["aborted"].as_str().is_some_and(|error| error.contains("gave up")), "{summary}");
    assert_eq!(cancel["after"], "free\n", "{summary}");
    let sandbox = cancel["sandbox_id"].as_str().unwrap_or_default();
    let runs =
        bkg_tests::http::unix_request(&api.agent.socket, "GET", &format!("/api/v1/runs?sandbox={sandbox}"), None)
            .json();
    let sleeper =
        runs.as_array().into_iter().flatten().find(|run| run["exit_code"] != 0 || run["killed_by"] != Value::Null);
    assert_eq!(sleeper.map(|run| run["killed_by"].clone()), Some(json!("cancelled")), "{runs}");
    // A client that goes away mid-call ends the call's run too, as a REST caller's does.
    let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "sandbox_run_code",
        "arguments": { "sandbox_id": sandbox, "code": "import time\ntime.sleep(50)" } } })
    .to_string();
    let mut hanging_up = std::net::TcpStream::connect(&api.address).expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        call.len()
    );
    std::io::Write::write_all(&mut hanging_up, format!("{head}{call}").as_bytes()).expect("send the call");
    let sandbox_path = format!("/api/v1/sandboxes/{sandbox}");
    bkg_tests::eventually("the call's run to start", || {
        let info = bkg_tests::http::unix_request(&api.agent.socket, "GET", &sandbox_path, None).json();
        if info["current_run"].is_null() { Err(info.to_string()) } else { Ok(()) }
    });
    drop(hanging_up);
    let runs_path = format!("/api/v1/runs?sandbox={sandbox}");
    bkg_tests::eventually("the run of the call whose client went away to be cancelled", || {
        let runs = bkg_tests::http::unix_request(&api.agent.socket, "GET", &runs_path, None).json();
        let cancelled = runs.as_array().into_iter().flatten().filter(|run| run["killed_by"] == "cancelled").count();
        if cancelled == 2 { Ok(()) } else { Err(runs.to_string()) }
    });
    let deleted = bkg_tests::http::unix_request(&api.agent.socket, "DELETE", &sandbox_path, None);
    assert!(deleted.status < 300, "{}", deleted.text());
    assert_eq!(summary["unknown_argument"]["is_error"], true, "{summary}");
    assert!(summary["unknown_argument"]["text"].as_str().is_some_and(|text| text.contains("bogus")), "{summary}");
    let mut tools: Vec<&str> =
        summary["tools"].as_array().into_iter().flatten().filter_map(|tool| tool["name"].as_str()).collect();
    tools.sort_unstable();
    assert_eq!(
        tools,
        [
            "run_read_file",
            "sandbox_download",
            "sandbox_get_metrics",
            "sandbox_list_files",
            "sandbox_run_code",
            "sandbox_run_command",
            "sandbox_start",
            "sandbox_stop",
            "sandbox_upload",
            "session_create",
            "session_execute",
            "session_restart",
        ]
    );
    assert!(summary["tools"].as_array().into_iter().flatten().all(|tool| tool["schema_type"] == "object"));
    assert_eq!(summary["started"]["namespace"], "agents", "MCP sandboxes are in the key's namespace");
    assert_eq!(summary["stdout"], "hello from mcp 45\n");
    assert_eq!(
        summary["long"],
        json!({
            "truncated": true,
            "kept": ["stdout"],
            "pages": [
                { "offset": 0, "bytes": 1048575, "size": 1400001, "next": 1048575 },
                { "offset": 1048575, "bytes": 351426, "size": 1400001, "next": null },
            ],
            "whole": true,
        }),
        "{summary}"
    );
    assert_eq!(summary["past_end"]["is_error"], true, "{summary}");
    assert!(
        summary["past_end"]["text"]
            .as_str()
            .is_some_and(|text| text.contains("is past the end of stdout (1400001 bytes)")),
        "{summary}"
    );
    assert_eq!(summary["uploaded_files"], 1, "{summary}");
    assert_eq!(summary["uploaded_path"], "/workspace/data/in.txt", "the file written: {summary}");
    assert_eq!(summary["outside"]["is_error"], true, "{summary}");
    assert!(summary["outside"]["text"].as_str().is_some_and(|text| text.contains("../../etc/x")), "{summary}");
    assert_eq!(summary["link"]["is_error"], true, "{summary}");
    assert!(
        summary["link"]["text"].as_str().is_some_and(|text| text.contains("data/link is a symbolic link (to in.txt)")),
        "{summary}"
    );
    // Was: " is a directory", or the first file of /workspace when that came first.
    assert_eq!(summary["whole"]["is_error"], true, "{summary}");
    assert_eq!(summary["whole"]["text"], "/workspace is a directory: sandbox_list_files lists it", "{summary}");
    // Was: "`bkg exec` (POST …/sessions) starts one", the CLI's and the API's ways (found by a
    // new-user trial).
    assert_eq!(summary["no_session"]["is_error"], true, "{summary}");
    assert!(
        summary["no_session"]["text"]
            .as_str()
            .is_some_and(|text| text.ends_with("has no session: call session_create first")),
        "{summary}"
    );
    assert_eq!(summary["listed"], serde_json::json!(["in.txt"]), "{summary}");
    assert_eq!(summary["downloaded"], "41\n", "{summary}");
    assert_eq!(summary["session_language"], "python", "{summary}");
    assert_eq!(summary["first_stdout"], "read 41\n", "{summary}");
    assert_eq!(summary["second_result"], "42", "a two-step session keeps x: {summary}");
    // Found by a new-user trial: these named `bkg exec`, `bkg stop` and cave.yaml's limits.
    for (refusal, says) in [
        (
            "again",
            "already has its python session (2 executions): run code in it with session_execute, or start it afresh with session_restart",
        ),
        ("beside", "is held by its python session: run code there with session_execute"),
        ("too_big", "is above this agent's maximum"),
    ] {
        assert_eq!(summary[refusal]["is_error"], true, "{refusal}: {summary}");
        let text = summary[refusal]["text"].as_str().unwrap_or_default();
        assert!(text.contains(says), "{refusal}: {text}");
        assert!(!text.contains("bkg ") && !text.contains("cave.yaml"), "{refusal}: {text}");
    }
    assert!(
        summary["too_big"]["text"].as_str().is_some_and(|text| text.ends_with("ask for at most that with `memory`"))
    );
    assert_eq!(summary["exit_code"], 3);
    assert_eq!(
        (&summary["python_language"], &summary["node_stdout"], &summary["node_language"]),
        (&json!("python"), &json!("string\n"), &json!("node")),
        "node code in a python sandbox runs, and is recorded, as node: {summary}"
    );
    assert_eq!(summary["command_stdout"], "kept\n");
    assert_eq!(summary["metrics_exit_code"], 0, "the metrics are of the last run (the command)");
    assert!(summary["command_run"].as_str().is_some_and(|id| id.starts_with("run_")), "{summary}");
    assert_eq!(summary["metrics_run"], summary["command_run"], "the metrics are of the last run (the command)");
    assert_eq!(summary["stopped"], true);
    assert_eq!(summary["gone_is_error"], true);
    assert_eq!(api.admin().get("/api/v1/sandboxes").json(), json!([]), "the sandbox is deleted");
    api.agent.wait_idle();
}

#[test]
fn traces_reach_an_otlp_receiver_unless_sampling_is_zero_and_a_bad_rate_refuses_to_start() {
    let bad = Command::new(bkg_tests::bin_dir().join("bkg-agent"))
        .args(["--foreground", "--socket", "/nonexistent/agent.sock"])
        .env("CAVE_OTEL_SAMPLING_RATE", "1.5")
        .output()
        .expect("bkg-agent");
    assert_eq!(code(&bad), 1);
    let message = stderr(&bad);
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.contains("CAVE_OTEL_SAMPLING_RATE") && message.contains("1.5"), "{message}");

    let collector = Receiver::start(Vec::new());
    let silent = Receiver::start(Vec::new());
    let env = |rate: &str, receiver: &Receiver| {
        vec![
            ("CAVE_OTEL_SAMPLING_RATE".to_owned(), rate.to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{}", receiver.address)),
        ]
    };
    let traced = ApiAgent::start_with(&[], env("1.0", &collector), 0);
    let untraced = ApiAgent::start_with(&[], env("0.0", &silent), 0);
    for api in [&traced, &untraced] {
        for _ in 0..3 {
            expect(&api.admin().get("/api/v1/auth/whoami"), 200, "whoami");
        }
    }
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    traced.admin().send("GET", "/api/v1/auth/whoami", None, &[("traceparent", parent)]);

    let exports = collector.wait_for(1, Duration::from_secs(10));
    assert!(!exports.is_empty(), "no spans arrived");
    assert_eq!(exports[0].path, "/v1/traces");
    assert!(exports[0].header("content-type").is_some_and(|value| value.starts_with("application/json")));
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<Value> = collector
            .requests()
            .iter()
            .filter_map(|export| serde_json::from_slice::<Value>(&export.body).ok())
            .flat_map(|body| body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default())
            .collect();
        let whoami = spans.iter().filter(|span| span["name"] == "GET /api/v1/auth/whoami").count();
        if whoami >= 4 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let whoami: Vec<&Value> = spans.iter().filter(|span| span["name"] == "GET /api/v1/auth/whoami").collect();
    assert!(whoami.len() >= 4, "{spans:?}");
    assert!(
        whoami
            .iter()
            .any(|span| span["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
                && span["parentSpanId"] == "00f067aa0ba902b7"),
        "the traceparent is followed: {spans:?}"
    );
    assert!(whoami.iter().all(|span| span["attributes"].as_array().is_some_and(|attributes| {
        attributes
            .iter()
            .any(|attribute| attribute["key"] == "http.response.status_code" && attribute["value"]["intValue"] == "200")
    })));
    std::thread::sleep(Duration::from_secs(1));
    assert!(silent.requests().is_empty(), "sampling 0.0 exports nothing");
}

/// `bkg` with a home of its own, so credentials never touch the real one.
fn bkg_at(api: &ApiAgent, home: &Path) -> Command {
    let mut command = api.agent.bkg();
    command.env("HOME", home).env_remove("XDG_CONFIG_HOME").env_remove("BKG_API_KEY").env_remove("BKG_REMOTE");
    command
}

/// `bkg --remote REMOTE ARGS` at `home`, keeping keys in its credentials file, with `input` on
/// stdin (a key or a password, as a pipe gives it).
fn bkg_fed(api: &ApiAgent, home: &Path, remote: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut command = bkg_at(api, home);
    command.arg("--remote").arg(remote).args(args).env("BKG_CREDENTIAL_STORE", "file");
    fed(command, input)
}

/// `command`'s output with `input` on its stdin.
fn fed(mut command: Command, input: &[u8]) -> std::process::Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("bkg");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input).expect("bkg's stdin");
    child.wait_with_output().expect("bkg")
}

#[test]
fn the_cli_logs_in_keeps_the_key_and_manages_keys_locally_and_remotely() {
    let api = ApiAgent::start(&[]);
    let home = tempfile::tempdir().expect("home");
    let remote = format!("http://{}", api.address);

    // On the socket, `bkg keys` acts as admin.
    let created = bkg_at(&api, home.path())
        .args(["keys", "create", "--role", "namespace", "--namespace", "cli", "--json"])
        .output()
        .expect("bkg");
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let issued: Value = serde_json::from_slice(&created.stdout).expect("issued JSON");
    let (id, key) =
        (issued["id"].as_str().unwrap_or_default().to_owned(), issued["key"].as_str().unwrap_or_default().to_owned());
    assert!(stderr(&created).contains("shown only this once"));

    // `bkg doctor` of a remote agent: a namespace key reaches it but cannot read its level (a
    // warning); a key it does not know is a failure.
    let doctor = |key: &str| {
        let output = bkg_at(&api, home.path())
            .args(["--remote", &remote, "doctor", "--json"])
            .env("BKG_API_KEY", key)
            .output()
            .expect("bkg doctor");
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (code(&output), report["checks"][0].clone())
    };
    let (status, agent) = doctor(&key);
    assert_eq!((status, agent["status"].as_str()), (0, Some("warn")), "{agent}");
    assert!(agent["found"].as_str().is_some_and(|found| found.contains("a namespace key cannot read")), "{agent}");
    let (status, agent) = doctor("bkg_ns_not-a-real-key");
    assert_eq!((status, agent["status"].as_str()), (1, Some("fail")), "{agent}");

    // Remote without any key: one clear line, exit 125.
    let keyless = bkg_at(&api, home.path()).args(["--remote", &remote, "keys", "ls"]).output().expect("bkg");
    assert_eq!(code(&keyless), 125);
    assert!(stderr(&keyless).contains("bkg login"), "{}", stderr(&keyless));
    let https =
        bkg_at(&api, home.path()).args(["--remote", "https://example.invalid", "keys", "ls"]).output().expect("bkg");
    assert_eq!(code(&https), 125);
    assert_eq!(stderr(&https).lines().count(), 1);
    // https to the plain-http listener: what rustls saw, and why.
    let tls_to_plain = bkg_at(&api, home.path())
        .args(["--remote", &remote.replace("http://", "https://"), "keys", "ls"])
        .env("BKG_API_KEY", &key)
        .output()
        .expect("bkg");
    assert_eq!(code(&tls_to_plain), 125);
    assert!(stderr(&tls_to_plain).contains("speaks plain http, not https"), "{}", stderr(&tls_to_plain));

    // `login --key-stdin` falls back to the 0600 credentials file when told to (or when no kernel
    // keyring can be had), and every later `--remote` command uses the key.
    let login = bkg_fed(&api, home.path(), &remote, &["login", "--key-stdin"], format!("{key}\n").as_bytes());
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    let file = home.path().join(".config/bkg/credentials");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("credentials file").permissions());
    assert_eq!(mode & 0o777, 0o600);
    let remote_run = bkg_at(&api, home.path())
        .args(["--remote", &remote, "exe", "-c", "print('remote run')", "--type", "python"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&remote_run), 0, "{}", stderr(&remote_run));
    assert_eq!(stdout(&remote_run), "remote run\n");
    // Environments are every namespace's: a namespace key may not list them.
    let envs = bkg_at(&api, home.path())
        .args(["--remote", &remote, "envs", "ls"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg envs ls");
    assert_eq!(code(&envs), 125, "{}", stderr(&envs));
    assert!(stderr(&envs).contains("only an admin may list the dependency environments"), "{}", stderr(&envs));
    let listed = bkg_at(&api, home.path())
        .args(["--remote", &remote, "keys", "ls", "--json"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("keys JSON");
    assert!(listed.as_array().is_some_and(|keys| keys.iter().all(|key| key["namespace"] == "cli")), "{listed}");

    // `login --user` reads the password from stdin (no terminal) and keeps a session key.
    let signup = json!({ "username": "cli-user", "password": "a password for the cli", "namespace": "cli" });
    expect(&api.admin().post("/api/v1/auth/signup", &signup), 201, "signup");
    let user_home = tempfile::tempdir().expect("home");
    let login = bkg_fed(
        &api,
        user_home.path(),
        &remote,
        &["login", "--user", "cli-user", "--json"],
        b"a password for the cli\n",
    );
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    let principal: Value = serde_json::from_slice(&login.stdout).expect("whoami JSON");
    assert_eq!((principal["role"].as_str(), principal["namespace"].as_str()), (Some("session"), Some("cli")));
    let wrong = bkg_fed(&api, user_home.path(), &remote, &["login", "--user", "cli-user"], b"not the password\n");
    assert_eq!(code(&wrong), 125);
    assert_eq!(stderr(&wrong).trim(), "bkg: wrong username or password");
    // A login over a kept key says that it replaces it (found by a new-user trial: an admin key,
    // shown once, was dropped without a word).
    let swap_home = tempfile::tempdir().expect("home");
    let first = bkg_fed(&api, swap_home.path(), &remote, &["login", "--key-stdin"], format!("{key}\n").as_bytes());
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(!stderr(&first).contains("replaces"), "{}", stderr(&first));
    let over = bkg_fed(&api, swap_home.path(), &remote, &["login", "--user", "cli-user"], b"a password for the cli\n");
    assert_eq!(code(&over), 0, "{}", stderr(&over));
    assert!(
        stderr(&over)
            .contains(&format!("bkg: it replaces the key kept for {} before (bkg_ns_…)", remote.trim_end_matches('/'))),
        "{}",
        stderr(&over)
    );

    // `logout` revokes the session key the password login made, as the Web UI's logout does
    // (found by a new-user trial: it stayed usable for its hour), and forgets it: the next
    // command has none.
    let login_key = std::fs::read_to_string(user_home.path().join(".config/bkg/credentials")).expect("credentials");
    let login_key: Value = serde_json::from_str(&login_key).expect("credentials JSON");
    let login_key = login_key[remote.as_str()].as_str().expect("the login's key").to_owned();
    expect(&api.client(&login_key).get("/api/v1/auth/whoami"), 200, "the login's key before logout");
    let logout = bkg_at(&api, user_home.path())
        .args(["--remote", &remote, "logout"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg logout");
    assert_eq!(code(&logout), 0, "{}", stderr(&logout));
    assert!(stderr(&logout).starts_with("bkg: revoked key_"), "{}", stderr(&logout));
    assert!(stderr(&logout).contains("bkg: logged out of "), "{}", stderr(&logout));
    expect(&api.client(&login_key).get("/api/v1/auth/whoami"), 401, "the login's key after logout");
    let after = bkg_at(&api, user_home.path())
        .args(["--remote", &remote, "keys", "ls"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg keys ls");
    assert_eq!(code(&after), 125);
    assert!(stderr(&after).contains("no API key for"), "{}", stderr(&after));

    // A key refused at login or at logout is said as the agent says it, not with `log in again`
    // (found by a new-user trial: `bkg login` with a wrong key said to run `bkg login`, and a
    // logout of a key revoked already said it could not be revoked).
    let garbage = bkg_fed(&api, user_home.path(), &remote, &["login", "--key-stdin"], b"bkg_sess_not-a-key\n");
    assert_eq!(code(&garbage), 125);
    assert_eq!(stderr(&garbage).lines().count(), 1, "{}", stderr(&garbage));
    assert!(!stderr(&garbage).contains("log in again"), "{}", stderr(&garbage));
    let again = bkg_fed(
        &api,
        user_home.path(),
        &remote,
        &["login", "--user", "cli-user"],
        b"a password for the cli
",
    );
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    let kept = std::fs::read_to_string(user_home.path().join(".config/bkg/credentials")).expect("credentials");
    let kept: Value = serde_json::from_str(&kept).expect("credentials JSON");
    let kept_id =
        api.client(kept[remote.as_str()].as_str().expect("the key")).get("/api/v1/auth/whoami").json()["key_id"]
            .as_str()
            .expect("its id")
            .to_owned();
    expect(&api.admin().post(&format!("/api/v1/auth/keys/{kept_id}/revoke"), &json!({})), 200, "revoke");
    let stale = bkg_at(&api, user_home.path())
        .args(["--remote", &remote, "logout"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg logout");
    assert_eq!(code(&stale), 0, "{}", stderr(&stale));
    assert!(stderr(&stale).contains("no longer taken by the agent"), "{}", stderr(&stale));
    assert!(!stderr(&stale).contains("log in again"), "{}", stderr(&stale));
    assert!(stderr(&stale).contains("bkg: logged out of "), "{}", stderr(&stale));

    // BKG_API_KEY wins over what is kept.
    let (_, session) = api.key("session", Some("elsewhere"));
    let whoami = bkg_at(&api, home.path())
        .args(["--remote", &remote, "login", "--key-stdin", "--json"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .stdin(Stdio::null())
        .output()
        .expect("bkg");
    assert_eq!(code(&whoami), 125, "no key on stdin: {}", stderr(&whoami));
    let overridden = bkg_at(&api, home.path())
        .args(["--remote", &remote, "keys", "ls", "--json"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .env("BKG_API_KEY", &session)
        .output()
        .expect("bkg");
    let overridden: Value = serde_json::from_slice(&overridden.stdout).expect("keys JSON");
    assert!(
        overridden.as_array().is_some_and(|keys| keys.len() == 1 && keys[0]["namespace"] == "elsewhere"),
        "{overridden}"
    );

    // In a session keyring of its own, `login` keeps the key in the kernel keyring (keyutils) and
    // writes no file.
    let keyring_home = tempfile::tempdir().expect("home");
    // `logout` at the end, in the same session: the key must not stay in the kernel's keyrings
    // after the test (found by a new-user trial: runs of this test left theirs behind).
    let script = format!(
        "printf '%s\\n' \"$KEY\" | {bkg} --remote {remote} login --key-stdin && {bkg} --remote {remote} keys ls --json \
         && {bkg} --remote {remote} logout",
        bkg = bkg_tests::bkg_bin().display()
    );
    let in_keyring = Command::new("python3")
        .arg(workspace().join("tests/api/new_session_keyring.py"))
        .args(["sh", "-c", &script])
        .env("HOME", keyring_home.path())
        .env("KEY", &key)
        .env_remove("BKG_API_KEY")
        .env_remove("BKG_CREDENTIAL_STORE")
        .output()
        .expect("python3");
    assert_eq!(code(&in_keyring), 0, "{}", stderr(&in_keyring));
    assert!(stderr(&in_keyring).contains("kernel keyring"), "{}", stderr(&in_keyring));
    assert!(!keyring_home.path().join(".config/bkg/credentials").exists());
    assert!(stdout(&in_keyring).contains(&id));
    // Invalidated keys (flag `i`) stay listed until the kernel's garbage collector takes them.
    let kept_keys = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    let left = kept_keys.lines().find(|line| {
        line.contains(&format!("keyring:{remote}@bkg"))
            && !line.split_whitespace().nth(1).is_some_and(|flags| flags.contains('i'))
    });
    assert_eq!(left, None, "logout left the key in a keyring");

    // In this test's own keyrings, whatever they are (CI's processes have no session keyring of
    // their own: the kernel stands in with the user's), the key kept is the next command's
    // (found by a new-user trial: login said it kept it in the keyring, and `keys ls` had none).
    let plain_home = tempfile::tempdir().expect("home");
    let mut login = bkg_at(&api, plain_home.path());
    login.args(["--remote", &remote, "login", "--key-stdin"]).env_remove("BKG_CREDENTIAL_STORE");
    let login = fed(login, format!("{key}\n").as_bytes());
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    let listed = bkg_at(&api, plain_home.path())
        .args(["--remote", &remote, "keys", "ls", "--json"])
        .env_remove("BKG_CREDENTIAL_STORE")
        .output()
        .expect("bkg keys ls");
    assert_eq!(code(&listed), 0, "the next command finds the kept key: {}", stderr(&listed));
    let logout = bkg_at(&api, plain_home.path())
        .args(["--remote", &remote, "logout"])
        .env_remove("BKG_CREDENTIAL_STORE")
        .output()
        .expect("bkg logout");
    assert_eq!(code(&logout), 0, "{}", stderr(&logout));

    // Rotating the very key kept for this agent keeps its new secret where the old one was
    // (here the file, though the keyring is not ruled out): the next command works, whatever
    // store it is told to read (found by a new-user trial: the new key went to a keyring the
    // next command could not read, and the old one in the file was used).
    let rotated =
        bkg_at(&api, home.path()).args(["--remote", &remote, "keys", "rotate", &id]).output().expect("rotate");
    assert_eq!(code(&rotated), 0, "{}", stderr(&rotated));
    assert!(stderr(&rotated).contains(&format!("the key kept for {remote}/ is the new one")), "{}", stderr(&rotated));
    let kept = std::fs::read_to_string(&file).expect("credentials file");
    let new_secret = stdout(&rotated).trim().to_owned();
    assert!(new_secret.starts_with("bkg_ns_") && kept.contains(&new_secret), "the file holds the new key");
    for store in ["file", "keyring"] {
        let after = bkg_at(&api, home.path())
            .args(["--remote", &remote, "keys", "ls"])
            .env("BKG_CREDENTIAL_STORE", store)
            .output()
            .expect("bkg keys ls");
        assert_eq!(code(&after), 0, "the kept key works after its own rotation ({store}): {}", stderr(&after));
    }
    // Rotate and revoke from the CLI: the old secret and then the key stop working.
    let rotated = bkg_at(&api, home.path()).args(["keys", "rotate", &id]).output().expect("bkg");
    assert_eq!(code(&rotated), 0, "{}", stderr(&rotated));
    let new_key = stdout(&rotated).trim().to_owned();
    assert!(new_key.starts_with("bkg_ns_") && new_key != key);
    expect(&api.client(&key).get("/api/v1/auth/whoami"), 401, "the rotated-away secret");
    let revoked = bkg_at(&api, home.path()).args(["keys", "revoke", &id]).output().expect("bkg");
    assert_eq!(code(&revoked), 0, "{}", stderr(&revoked));
    expect(&api.client(&new_key).get("/api/v1/auth/whoami"), 401, "the revoked key");
    // Again: said to be revoked already, not revoked again (found by a new-user trial).
    let again = bkg_at(&api, home.path()).args(["keys", "revoke", &id]).output().expect("bkg");
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stderr(&again).starts_with(&format!("bkg: {id} was already revoked (")), "{}", stderr(&again));
    // The key kept for the agent is that revoked one now: the refusal says how to get another
    // (found by a new-user trial: it said only that the key was revoked).
    let refused = bkg_at(&api, home.path())
        .args(["--remote", &remote, "keys", "ls"])
        .env("BKG_CREDENTIAL_STORE", "file")
        .output()
        .expect("bkg keys ls");
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!("; log in again: `bkg login --remote {remote} --user NAME`")),
        "{}",
        stderr(&refused)
    );
    let bad_role = bkg_at(&api, home.path()).args(["keys", "create", "--role", "root"]).output().expect("bkg");
    assert_eq!(code(&bad_role), 125);
    // An id is checked before it goes into a request's path (found by a new-user trial: this one
    // reached another endpoint, which said it did not take that method).
    let odd = bkg_at(&api, home.path()).args(["keys", "revoke", "key_x?role=admin"]).output().expect("bkg");
    assert_eq!(code(&odd), 125);
    assert_eq!(
        stderr(&odd),
        "bkg: `key_x?role=admin` is not a key id: give one as `bkg keys ls` lists it (key_ and hex)\n"
    );
    assert_eq!(stderr(&bad_role).lines().count(), 1, "{}", stderr(&bad_role));
}

/// What a key's creation or revocation did beyond what was asked is said (found by a new-user
/// trial): a lifetime cut to the making key's, and the keys a revocation took with it.
#[test]
fn a_keys_cut_lifetime_and_the_keys_its_revocation_takes_are_said() {
    let api = ApiAgent::start(&[]);
    let home = tempfile::tempdir().expect("home");
    let remote = format!("http://{}", api.address);
    let maker = bkg_at(&api, home.path())
        .args(["keys", "create", "--role", "namespace", "--namespace", "t", "--ttl", "30m", "--json"])
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&maker), 0, "{}", stderr(&maker));
    let maker: Value = serde_json::from_slice(&maker.stdout).expect("issued JSON");
    let (maker_id, maker_key) = (maker["id"].as_str().unwrap_or_default(), maker["key"].as_str().unwrap_or_default());
    let made = bkg_at(&api, home.path())
        .args(["--remote", &remote, "keys", "create", "--role", "model-access", "--namespace", "t", "--ttl", "1h"])
        .env("BKG_API_KEY", maker_key)
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    assert!(
        stderr(&made).contains("s, not the 3600s asked for: a key made with a key expires no later than that one"),
        "{}",
        stderr(&made)
    );
    let revoked = bkg_at(&api, home.path()).args(["keys", "revoke", maker_id]).output().expect("bkg keys revoke");
    assert_eq!(
        (code(&revoked), stderr(&revoked)),
        (0, format!("bkg: revoked {maker_id} and the 1 active key made with it\n"))
    );
}

#[test]
fn the_curl_examples_of_docs_api_md_run_against_a_real_agent() {
    let api = ApiAgent::start(&[]);
    let docs = std::fs::read_to_string(workspace().join("docs/api.md")).expect("docs/api.md");
    // Every ```sh block that uses curl is an example to run, in order, in one shell.
    let mut script = String::from("set -euo pipefail\n");
    let mut examples = 0;
    let mut in_block = false;
    let mut block = String::new();
    for line in docs.lines() {
        if !in_block && line.trim() == "```sh" {
            in_block = true;
            block.clear();
        } else if in_block && line.trim() == "```" {
            in_block = false;
            if block.contains("curl ") {
                examples += 1;
                script.push_str(&format!("echo '--- example {examples}' >&2\n{block}\n"));
            }
        } else if in_block {
            block.push_str(line);
            block.push('\n');
        }
    }
    assert!(examples >= 8, "docs/api.md has only {examples} curl examples");
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("BKG_URL", format!("http://{}", api.address))
        .env("BKG_API_KEY", &api.admin_key)
        .env("BKG_SOCKET", &api.agent.socket)
        .output()
        .expect("bash");
    assert_eq!(code(&output), 0, "an example failed:\n{}\n{}", stderr(&output), stdout(&output));
    api.agent.wait_idle();
}

#[test]
fn a_streamed_run_over_tcp_ends_at_its_timeout_while_the_client_stops_reading() {
    let api = ApiAgent::start(&[]);
    let body = json!({
        "language": "python",
        "code": "while True: print('x' * 4096)",
        "limits": { "timeout_ms": 2000 },
    });
    // A raw client that upgrades to the stream, then never reads a byte.
    let stalled = api.raw_run(&body, "Connection: upgrade\r\nUpgrade: bkg-stream/1\r\n");
    let deadline = Instant::now() + Duration::from_secs(25);
    let run = loop {
        let runs = api.admin().get("/api/v1/runs?limit=1").json();
        if let Some(run) = runs.get(0).filter(|run| !run["finished_at_ms"].is_null()) {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "the run did not end at its timeout: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run["killed_by"], "timeout", "{run}");
    drop(stalled);
}

#[test]
fn client_mistakes_are_422_naming_the_field_not_sandbox_failures() {
    let api = ApiAgent::start(&[]);
    let admin = api.admin();
    let long = "a".repeat(10_000);
    let cases = [
        (json!({ "language": "python", "code": "print(1)", "script_name": long }), "script_name"),
        (
            json!({ "language": "python", "code": "print(1)",
                    "files": [{ "path": long, "content_base64": "aGk=" }] }),
            "files",
        ),
        (json!({ "language": "python", "code": "print(1)", "env": { "A": "x\u{0}y" } }), "env"),
    ];
    for (body, field) in cases {
        let answer = admin.post("/api/v1/runs", &body);
        expect(&answer, 422, field);
        assert_eq!(answer.error_code(), "bad_request");
        let message = answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(field), "{field}: {message}");
    }
    // A sandbox whose environment could never be executed is refused when it is created.
    let answer =
        admin.post("/api/v1/sandboxes", &json!({ "name": "nul-env", "language": "python", "env": { "A": "x\u{0}y" } }));
    expect(&answer, 422, "a NUL in a sandbox's env");
    assert!(answer.text().contains("env"), "{}", answer.text());
    assert_eq!(admin.get("/api/v1/sandboxes").json().as_array().map(Vec::len), Some(0));
    // A query parameter a route does not take, or one that does not parse, is a 400 naming it:
    // a misspelt `limt` is not silently ignored.
    // Routes that read no query string refuse one too.
    let run = admin.post("/api/v1/runs", &python_run(None)).json();
    let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap_or_default());
    for (path, says) in [
        ("/api/v1/runs?limt=2", "the query string: limt: unknown parameter `limt`; this endpoint takes `limit`, "),
        ("/api/v1/runs?limit=x", "the query string: limit: invalid digit found in string"),
        (
            &format!("{run_path}?fields=id"),
            "the query string: fields: unknown parameter `fields`; this endpoint takes none",
        ),
        (&format!("{run_path}/files/out/a.txt?raw=1"), "the query string: raw: unknown parameter"),
        (
            "/api/v1/sandboxes/sb_none/logs?follw=true",
            "the query string: follw: unknown parameter `follw`; this endpoint takes `follow`",
        ),
    ] {
        let answer = admin.get(path);
        expect(&answer, 400, path);
        let message = answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.starts_with(says), "{path}: {message}");
    }
    expect(&admin.get(&format!("{run_path}?")), 200, "an empty query string");
    let refused = admin.send("POST", "/api/v1/runs?wait=false", Some(&python_run(None)), &[]);
    expect(&refused, 400, "POST /api/v1/runs with a query");
}

#[test]
fn a_plain_run_whose_caller_hangs_up_is_cancelled_not_left_to_its_timeout() {
    let api = ApiAgent::start(&[]);
    let body = json!({
        "language": "python",
        "code": "import time\nprint('started', flush=True)\ntime.sleep(50)",
        "limits": { "timeout_ms": 60_000 },
    });
    let caller = api.raw_run(&body, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = api.admin().get("/api/v1/runs?limit=1").json();
        if runs.get(0).is_some_and(|run| run["finished_at_ms"].is_null()) {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not start: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(caller);
    // Well before the script's 50 s sleep, let alone its 60 s timeout, could end it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let runs = api.admin().get("/api/v1/runs?limit=1").json();
        if let Some(run) = runs.get(0).filter(|run| !run["finished_at_ms"].is_null()) {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "the run went on after its caller hung up: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run["killed_by"], "cancelled", "{run}");
}

/// The session and model-access keys a namespace key made, and their refreshes, end with it:
/// a leaked namespace key that is revoked must not live on through them. An admin key's keys
/// are the namespaces' own and outlive it. An expired key stays expired (found by a new-user
/// trial: rotating one brought it back, and a namespace key's keys outlived its revocation).
#[test]
fn the_keys_a_namespace_key_made_end_with_it_and_an_expired_key_cannot_be_rotated() {
    let api = ApiAgent::start(&[]);
    let admin = api.admin();
    let (team_id, team) = api.key("namespace", Some("team"));
    let made = |maker: &str, body: Value| {
        let answer = api.client(maker).post("/api/v1/auth/keys", &body);
        expect(&answer, 201, "a key made with a key");
        let key = answer.json();
        (key["id"].as_str().unwrap_or_default().to_owned(), key["key"].as_str().unwrap_or_default().to_owned(), key)
    };
    let (_, session, shown) = made(&team, json!({ "role": "session", "name": "minted", "ttl_seconds": 1200 }));
    assert_eq!(shown["created_by_key"], team_id.as_str(), "{shown}");
    let (_, model, _) = made(&team, json!({ "role": "model-access" }));
    let refreshed = api.client(&session).send("POST", "/api/v1/auth/refresh", None, &[]);
    expect(&refreshed, 201, "refresh");
    assert_eq!(refreshed.json()["created_by_key"], team_id.as_str(), "a refresh continues the session");
    // Within the lifetime its maker gave it (was: --session-key-ttl again at each refresh).
    assert_eq!(refreshed.json()["expires_at_ms"], shown["expires_at_ms"], "{}", refreshed.text());
    let session = refreshed.json()["key"].as_str().unwrap_or_default().to_owned();
    expect(&api.client(&session).get("/api/v1/auth/whoami"), 200, "the refreshed session key");

    expect(&admin.post(&format!("/api/v1/auth/keys/{team_id}/revoke"), &json!({})), 200, "revoke the namespace key");
    expect(&api.client(&session).get("/api/v1/auth/whoami"), 401, "its session key, refreshed");
    expect(&api.client(&model).get("/api/v1/auth/whoami"), 401, "its model-access key");
    expect(&api.client(&session).send("POST", "/api/v1/auth/refresh", None, &[]), 401, "a refresh of it");

    let (other_admin_id, other_admin) = api.key("admin", None);
    let (_, team_again, _) = made(&other_admin, json!({ "role": "namespace", "namespace": "team" }));
    expect(&admin.post(&format!("/api/v1/auth/keys/{other_admin_id}/revoke"), &json!({})), 200, "revoke the admin key");
    expect(&api.client(&team_again).get("/api/v1/auth/whoami"), 200, "a namespace key an admin key made");

    let (short_id, short, _) = made(&team_again, json!({ "role": "session", "ttl_seconds": 1 }));
    std::thread::sleep(Duration::from_millis(1200));
    expect(&api.client(&short).get("/api/v1/auth/whoami"), 401, "an expired key");
    let rotated = admin.send("POST", &format!("/api/v1/auth/keys/{short_id}/rotate"), None, &[]);
    expect(&rotated, 409, "rotating an expired key");
    assert!(rotated.text().contains("has expired"), "{}", rotated.text());
}

/// A made-up method is no series of its own in /metrics, and a flood of keyless requests is not
/// a WARN line each (found by a new-user trial: 3,000 made-up methods added 800 KB to /metrics,
/// and as many lines to the log).
#[test]
fn made_up_methods_do_not_grow_the_metrics_nor_keyless_requests_the_log() {
    let api = ApiAgent::start(&[]);
    for attempt in 0..60 {
        let method = if attempt % 2 == 0 { "GET".to_owned() } else { format!("MADEUP{attempt}") };
        let refused = request(&api.address, &method, "/api/v1/runs", &[], b"");
        assert_eq!(refused.status, 401);
    }
    let warned = api
        .agent
        .log()
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("refused a request without a valid key"))
        .count();
    assert!((30..=32).contains(&warned), "{warned} WARN lines for 60 keyless requests");
    let metrics = api.admin().get("/metrics");
    expect(&metrics, 200, "metrics");
    assert!(!metrics.text().contains("MADEUP"), "{}", metrics.text());
    assert!(metrics.text().contains("method=\"other\""), "{}", metrics.text());
}

/// A session key made on the socket (`bkg keys create --role session`, as a member of the
/// socket's group makes one) keeps its expiry when refreshed: refreshed each hour it had lived on
/// for ever, after its maker had left the group (found by a new-user trial). A login's slides.
#[test]
fn a_session_key_made_on_the_socket_keeps_its_expiry_when_refreshed() {
    let api = ApiAgent::start(&[]);
    let made = api
        .agent
        .bkg()
        .args(["keys", "create", "--role", "session", "--namespace", "team", "--ttl", "10m", "--json"])
        .output();
    let made = made.expect("bkg keys create");
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let made: Value = serde_json::from_slice(&made.stdout).expect("json");
    let expiry = made["expires_at_ms"].as_u64().expect("an expiry");
    let mut secret = made["key"].as_str().unwrap_or_default().to_owned();
    for _ in 0..2 {
        let refreshed = api.client(&secret).send("POST", "/api/v1/auth/refresh", None, &[]);
        expect(&refreshed, 201, "refresh");
        assert_eq!(refreshed.json()["expires_at_ms"].as_u64(), Some(expiry), "{}", refreshed.text());
        secret = refreshed.json()["key"].as_str().unwrap_or_default().to_owned();
    }
}

/// A key's lifetime bounds what it makes and renews (found by a new-user trial: a namespace key
/// given 4 s minted a session key that, refreshed, ran code an hour later, and a key rotating
/// itself every 3 s never expired). An admin key's keys get their own lifetimes.
#[test]
fn a_short_lived_key_lives_on_neither_through_its_keys_nor_by_rotating_itself() {
    let api = ApiAgent::start(&[]);
    let admin = api.admin();
    let created = |client: &Client, body: Value| {
        let answer = client.post("/api/v1/auth/keys", &body);
        expect(&answer, 201, "create a key");
        answer.json()
    };
    let short = created(&admin, json!({ "role": "namespace", "namespace": "exp", "ttl_seconds": 3 }));
    let short_secret = short["key"].as_str().unwrap_or_default().to_owned();
    let short_expiry = short["expires_at_ms"].as_u64().expect("an expiry");
    let session = created(&api.client(&short_secret), json!({ "role": "session" }));
    assert_eq!(session["expires_at_ms"].as_u64(), Some(short_expiry), "capped at its maker's: {session}");
    let session_secret = session["key"].as_str().unwrap_or_default().to_owned();
    let refreshed = api.client(&session_secret).send("POST", "/api/v1/auth/refresh", None, &[]);
    expect(&refreshed, 201, "refresh");
    assert_eq!(refreshed.json()["expires_at_ms"].as_u64(), Some(short_expiry), "{}", refreshed.text());
    let session_secret = refreshed.json()["key"].as_str().unwrap_or_default().to_owned();
    let rotated = api.client(&short_secret).send(
        "POST",
        &format!("/api/v1/auth/keys/{}/rotate", short["id"].as_str().unwrap_or_default()),
        None,
        &[],
    );
    expect(&rotated, 200, "rotate itself");
    assert_eq!(rotated.json()["expires_at_ms"].as_u64(), Some(short_expiry), "a key rotating itself keeps its expiry");
    let short_secret = rotated.json()["key"].as_str().unwrap_or_default().to_owned();

    let wait = short_expiry.saturating_sub(bkg_now_ms()) + 300;
    std::thread::sleep(Duration::from_millis(wait));
    for (secret, what) in [(&short_secret, "the short-lived key"), (&session_secret, "the session key it made")] {
        expect(&api.client(secret).get("/api/v1/auth/whoami"), 401, what);
    }
    expect(&api.client(&session_secret).send("POST", "/api/v1/auth/refresh", None, &[]), 401, "a refresh of it");

    // An admin key's keys are the namespaces' own: their lifetimes are theirs.
    let long = created(&admin, json!({ "role": "namespace", "namespace": "exp", "ttl_seconds": 3600 }));
    assert!(long["expires_at_ms"].as_u64().is_some_and(|at| at > short_expiry + 3_000_000), "{long}");
}

fn bkg_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// A streamed run whose caller breaks the frame protocol ends with an `error` frame saying what
/// it sent, not a `result` that reads as a cancel of its own (found by a new-user trial).
#[test]
fn a_broken_stream_is_answered_with_an_error_frame_naming_the_bad_frame() {
    use std::io::{Read, Write};
    let api = ApiAgent::start(&[]);
    let body = json!({ "language": "python", "code": "import sys; sys.stdin.read()" });
    for (bad, said) in
        [([99u8, 0, 0, 0, 0], "unknown frame kind 99"), ([11, 0, 0, 0, 0], "a Stdout frame is the agent's")]
    {
        let mut caller = api.raw_run(&body, "Connection: upgrade\r\nUpgrade: bkg-stream/1\r\n");
        caller.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            caller.read_exact(&mut byte).expect("the answer's head");
            head.push(byte[0]);
        }
        assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        caller.write_all(&bad).expect("send the bad frame");
        let last = loop {
            let mut header = [0u8; 5];
            caller.read_exact(&mut header).expect("a frame");
            let mut payload = vec![0u8; u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize];
            caller.read_exact(&mut payload).expect("its payload");
            if matches!(header[0], 13 | 14) {
                break (header[0], String::from_utf8_lossy(&payload).into_owned());
            }
        };
        assert_eq!(last.0, 14, "an error frame: {}", last.1);
        assert!(last.1.contains(said) && last.1.contains("bad_request"), "{}", last.1);
    }
}

/// The OpenAPI document the agent serves says what its answers are: tar streams and kept files as
/// binary strings with their content types (they were arrays of integers), the run file's
/// `X-Bkg-Sha256`, and the gatekeeper's 408 and 503 on every operation, login and key creation
/// among them (found by a new-user trial).
#[test]
fn the_openapi_document_gives_binary_bodies_their_headers_and_the_gatekeepers_answers() {
    let api = ApiAgent::start(&[]);
    let answer = api.admin().get("/api/v1/openapi.json");
    expect(&answer, 200, "openapi.json");
    let document = answer.json();
    let paths = &document["paths"];
    let binary = json!({ "type": "string", "format": "binary" });
    let files = &paths["/api/v1/sandboxes/{id}/files"];
    assert_eq!(files["put"]["requestBody"]["content"]["application/x-tar"]["schema"], binary, "{files}");
    assert_eq!(files["get"]["responses"]["200"]["content"]["application/x-tar"]["schema"], binary, "{files}");
    let kept = &paths["/api/v1/runs/{id}/files/{path}"]["get"]["responses"]["200"];
    assert_eq!(kept["content"]["application/octet-stream"]["schema"], binary, "{kept}");
    assert!(kept["headers"]["X-Bkg-Sha256"].is_object(), "{kept}");
    for (path, method) in [("/api/v1/auth/login", "post"), ("/api/v1/auth/keys", "post"), ("/api/v1/runs", "post")] {
        let responses = &paths[path][method]["responses"];
        for status in ["408", "503"] {
            assert!(responses[status].is_object(), "{method} {path} leaves out {status}: {responses}");
        }
        assert!(responses["503"]["headers"]["Retry-After"].is_object(), "{method} {path}: {responses}");
    }
    let described = document["info"]["description"].as_str().unwrap_or_default();
    assert!(described.contains("405"), "{described}");
}

/// `Upgrade: bkg-stream/1` switches protocols only with `Connection: upgrade`, as RFC 9110 and
/// docs/api.md have it (found by a new-user trial: `curl -H 'Upgrade: bkg-stream/1'` got a 101,
/// and a client that had not asked for frames got them). Without it the run is a plain one.
#[test]
fn an_upgrade_header_without_the_connection_option_is_a_plain_run() {
    let api = ApiAgent::start(&[]);
    let body = json!({ "language": "python", "code": "print(6 * 7)" });
    for extra in ["Upgrade: bkg-stream/1\r\n", "Connection: keep-alive\r\nUpgrade: bkg-stream/1\r\n"] {
        let mut caller = api.raw_run(&body, extra);
        let answer = bkg_tests::http::read_answer(&mut caller);
        assert_eq!(answer.status, 200, "{extra:?}: {:?}", answer.headers);
        assert!(answer.header("bkg-run-id").is_none(), "{extra:?}: {:?}", answer.headers);
    }
    // The option among others, in any case, still asks for the stream.
    let mut caller = api.raw_run(&body, "Connection: keep-alive, Upgrade\r\nUpgrade: bkg-stream/1\r\n");
    let answer = bkg_tests::http::read_answer(&mut caller);
    assert_eq!(answer.status, 101, "{:?}", answer.headers);
}

/// A route that takes no body refuses one rather than drop it unread (found by a new-user trial:
/// `POST …/refresh` with `zzz not json` issued a key, `…/revoke` and `…/stop` with `garbage`
/// did their work, while `…/start` refused it); none, or `{}`, is taken.
#[test]
fn routes_that_take_no_body_refuse_one_and_do_nothing() {
    let api = ApiAgent::start(&[]);
    let (_, team_key) = api.key("namespace", Some("team"));
    let team = api.client(&team_key);
    let session = team.post("/api/v1/auth/keys", &json!({ "role": "session", "ttl_seconds": 600 }));
    expect(&session, 201, "session key");
    let session_key = session.json()["key"].as_str().unwrap_or_default().to_owned();
    let session_id = session.json()["id"].as_str().unwrap_or_default().to_owned();
    let created = team.post("/api/v1/sandboxes", &json!({ "name": "quiet", "language": "python" }));
    expect(&created, 201, "create");
    let sandbox = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let post_raw = |key: &str, path: &str, body: &[u8]| {
        request(&api.address, "POST", path, &[("Authorization", &format!("Bearer {key}"))], body)
    };
    let refused = |key: &str, path: &str, body: &[u8]| {
        let answer = post_raw(key, path, body);
        expect(&answer, 400, path);
        let message = answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("takes no body"), "{path}: {message}");
    };
    refused(&session_key, "/api/v1/auth/refresh", b"zzz not json");
    refused(&team_key, &format!("/api/v1/auth/keys/{session_id}/revoke"), b"garbage");
    refused(&team_key, &format!("/api/v1/auth/keys/{session_id}/rotate"), br#"{"ttl":5}"#);
    refused(&team_key, &format!("/api/v1/sandboxes/{sandbox}/stop"), b"garbage");
    refused(&team_key, "/api/v1/runs/run_0123/cancel", b"garbage");
    let whoami = api.client(&session_key).get("/api/v1/auth/whoami");
    expect(&whoami, 200, "the session key was neither refreshed nor revoked nor rotated");
    // No body, whitespace or `{}` are none.
    let stopped = post_raw(&team_key, &format!("/api/v1/sandboxes/{sandbox}/stop"), b" \n");
    expect(&stopped, 200, "stop with whitespace");
    let revoked = team.post(&format!("/api/v1/auth/keys/{session_id}/revoke"), &json!({}));
    expect(&revoked, 200, "revoke with {}");
    // A route that takes a body still says when it is no JSON.
    let started = post_raw(&team_key, &format!("/api/v1/sandboxes/{sandbox}/start"), b"garbage");
    expect(&started, 400, "start with garbage");
}

/// `HEAD` of a sandbox's files is refused with 405 and `Allow`: answered as `GET` it started the
/// sandbox for a transfer, with its run's records, to send nothing (found by a new-user trial:
/// `curl -sI …/files/list?path=.`). Other `GET` routes still answer `HEAD`.
#[test]
fn head_of_a_sandboxs_files_is_refused_and_starts_nothing() {
    let api = ApiAgent::start(&[]);
    let admin = api.admin();
    let created = admin.post("/api/v1/sandboxes", &json!({ "name": "heads", "language": "python" }));
    expect(&created, 201, "create");
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    for (path, allow) in [
        (format!("/api/v1/sandboxes/{id}/files?path="), "GET, PUT"),
        (format!("/api/v1/sandboxes/{id}/files/list?path=."), "GET"),
    ] {
        let answer = admin.send("HEAD", &path, None, &[]);
        assert_eq!(answer.status, 405, "HEAD {path}: {:?}", answer.headers);
        assert_eq!(answer.header("allow"), Some(allow), "HEAD {path}: {:?}", answer.headers);
    }
    assert_eq!(admin.send("HEAD", &format!("/api/v1/sandboxes/{id}"), None, &[]).status, 200);
    let runs = api.agent.bkg().args(["watch", "--json", "--kinds", "runs", "--no-follow"]).output().expect("bkg watch");
    assert_eq!(code(&runs), 0, "{}", stderr(&runs));
    assert_eq!(stdout(&runs), "", "HEAD started a run");
    // GET still transfers.
    expect(&admin.get(&format!("/api/v1/sandboxes/{id}/files/list?path=.")), 200, "list");
}

/// A path parameter whose `%` starts no escape is a 400, as a parameter that cannot be read is
/// (found by a new-user trial: `GET /api/v1/runs/run_%ZZ` was 404 "no run run_%ZZ"). Under
/// `/ui/`, the Web UI's own, an unknown page without a key is its 404, as docs/api.md says.
#[test]
fn a_broken_percent_escape_in_a_path_is_400_and_unknown_ui_pages_are_404() {
    let api = ApiAgent::start(&[]);
    let admin = api.admin();
    for path in [
        "/api/v1/runs/run_%ZZ",
        "/api/v1/runs/run_%4",
        "/api/v1/sandboxes/sb%/files/list",
        "/api/v1/runs/run_1/files/out%zz",
    ] {
        let answer = admin.get(path);
        expect(&answer, 400, path);
        assert!(answer.text().contains("percent-escape"), "{path}: {}", answer.text());
    }
    expect(&admin.get("/api/v1/runs/run_%41"), 404, "a well-formed escape is read");
    assert_eq!(api.anonymous().get("/ui/no-such-page").status, 404);
    expect(&api.anonymous().get("/api/v1/no-such-endpoint"), 401, "unknown API path without a key");
}

/// `bkg ARGS` at `home` on the socket, with `input` on stdin (a password, as a pipe gives it).
fn bkg_with_input(api: &ApiAgent, home: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut command = bkg_at(api, home);
    command.args(args);
    fed(command, input)
}

/// The names `bkg users ls --json` lists, as `bkg` on `home` asks (on the socket, or with `env`).
fn listed_users(api: &ApiAgent, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let listed = bkg_at(api, home).args(args).args(["users", "ls", "--json"]).envs(env.iter().copied()).output();
    let listed = listed.expect("bkg users ls");
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let users: Value = serde_json::from_str(&stdout(&listed)).expect("users as JSON");
    users.as_array().into_iter().flatten().filter_map(|user| user["username"].as_str().map(str::to_owned)).collect()
}

/// A user an admin removes is shut out for good: their password and session key get 401 and the
/// run their session key started is cancelled (found by a new-user trial: revoking a departed
/// user's session key lasted only until their next login). Only an admin lists or removes users.
#[test]
fn a_removed_user_is_shut_out_their_keys_revoked_and_their_runs_cancelled() {
    let api = ApiAgent::start(&[]);
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let remote = format!("http://{}", api.address);
    const PASSWORD: &str = "a long enough password";

    // Added on the socket, where root is an admin; the password from stdin, its newline dropped.
    let added = bkg_with_input(&api, home, &["users", "add", "ann", "--namespace", "lab"], b"a long enough password\n");
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    assert!(stderr(&added).contains("added user ann in namespace lab"), "{}", stderr(&added));
    let empty = bkg_with_input(&api, home, &["users", "add", "bob", "--namespace", "lab"], b"\n");
    assert_eq!(code(&empty), 125, "{}", stderr(&empty));
    assert_eq!(stderr(&empty), "bkg: the password (read from stdin) is empty\n");
    let login = json!({ "username": "ann", "password": PASSWORD });
    let logged_in = api.anonymous().post("/api/v1/auth/login", &login);
    expect(&logged_in, 201, "login");
    let session_key = logged_in.json()["key"].as_str().unwrap_or_default().to_owned();
    let session_id = logged_in.json()["info"]["id"].as_str().unwrap_or_default().to_owned();

    // Listed by name, on the socket and with an admin key over TCP.
    let table = bkg_at(&api, home).args(["users", "ls"]).output().expect("bkg users ls");
    assert_eq!(code(&table), 0, "{}", stderr(&table));
    let rows = stdout(&table);
    let first_row = rows.lines().nth(1).map(|row| row.split_whitespace().take(2).collect::<Vec<_>>());
    assert_eq!(first_row, Some(vec!["ann", "lab"]), "{rows}");
    let admin_env = [("BKG_API_KEY", api.admin_key.as_str())];
    assert_eq!(listed_users(&api, home, &["--remote", &remote], &admin_env), ["ann"]);

    // Nobody but an admin lists or removes users: not a namespace key, nor the user themselves.
    let (_, team_key) = api.key("namespace", Some("lab"));
    for key in [&team_key, &session_key] {
        expect(&api.client(key).get("/api/v1/auth/users"), 403, "list users");
        expect(&api.client(key).delete("/api/v1/auth/users/ann"), 403, "remove a user");
    }
    let refused = bkg_at(&api, home)
        .args(["--remote", &remote, "users", "rm", "ann"])
        .env("BKG_API_KEY", &team_key)
        .output()
        .expect("bkg users rm");
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).starts_with("bkg: only an admin may list or remove users"), "{}", stderr(&refused));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));

    // Removed while a run their session key started goes on: the run is cancelled at once.
    let run = remote_run_until_ready(&api, home, &session_key);
    let removed = bkg_at(&api, home).args(["users", "rm", "ann"]).output().expect("bkg users rm");
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    assert!(stderr(&removed).contains("removed user ann"), "{}", stderr(&removed));
    let ended = run.wait_with_output().expect("bkg exe ends");
    assert_eq!(code(&ended), 130, "{}", stderr(&ended));
    let runs = api.admin().get("/api/v1/runs?namespace=lab").json();
    let cancelled = runs.as_array().into_iter().flatten().filter(|run| run["killed_by"] == "cancelled").count();
    assert_eq!(cancelled, 1, "{runs}");

    // Shut out: the session key, and the old password as any wrong login is.
    expect(&api.client(&session_key).get("/api/v1/auth/whoami"), 401, "the removed user's session key");
    let again = api.anonymous().post("/api/v1/auth/login", &login);
    expect(&again, 401, "login with the old password");
    let unknown = api.anonymous().post("/api/v1/auth/login", &json!({ "username": "nobody", "password": PASSWORD }));
    assert_eq!(again.json(), unknown.json(), "a removed user's login is told what any wrong login is");
    assert!(listed_users(&api, home, &[], &[]).is_empty());
    let tail = bkg_at(&api, home).args(["audit", "tail", "-n", "20"]).output().expect("bkg audit tail");
    assert!(stdout(&tail).contains("user removed: ann"), "{}", stdout(&tail));
    assert!(stdout(&tail).contains(&format!("revoked key {session_id}")), "{}", stdout(&tail));

    // An unknown user: 404, and one line from bkg.
    expect(&api.admin().delete("/api/v1/auth/users/ann"), 404, "remove a removed user");
    let unknown = bkg_at(&api, home).args(["users", "rm", "ann"]).output().expect("bkg users rm");
    assert_eq!((code(&unknown), stderr(&unknown)), (125, "bkg: no user `ann`\n".to_owned()));

    // A removal whose sweep of the keys broke off (a store error after the user's row went) is
    // finished by asking again: the keys left are revoked, not answered with "no user".
    let added = bkg_with_input(&api, home, &["users", "add", "cy", "--namespace", "lab"], b"a long enough password\n");
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let logged_in = api.anonymous().post("/api/v1/auth/login", &json!({ "username": "cy", "password": PASSWORD }));
    expect(&logged_in, 201, "login");
    let cy_key = logged_in.json()["key"].as_str().unwrap_or_default().to_owned();
    rusqlite::Connection::open(api.agent.state_dir.join("state.db"))
        .expect("the agent's store")
        .execute("DELETE FROM users WHERE username = 'cy'", [])
        .expect("the user's row gone, their key not revoked");
    expect(&api.client(&cy_key).get("/api/v1/auth/whoami"), 200, "the key a broken-off removal left");
    let finished = bkg_at(&api, home).args(["users", "rm", "cy"]).output().expect("bkg users rm");
    assert_eq!(code(&finished), 0, "{}", stderr(&finished));
    expect(&api.client(&cy_key).get("/api/v1/auth/whoami"), 401, "the key after the removal was finished");
    api.agent.wait_idle();
}
