//! The Web UI (docs/ui.md) over HTTP, as a browser would use it but without one: sessions and
//! their cookies, CSRF, the CSP on every page, output escaping, `bkg ui`'s one-time token, and
//! namespaces kept apart. The browser suite (tests/ui, Playwright) drives the same pages in
//! chromium.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bkg_tests::http::{Answer, request};
use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};
use serde_json::Value;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// An agent on loopback TCP.
fn agent_on_tcp() -> (Agent, String, tempfile::TempDir) {
    let files = tempfile::Builder::new().prefix("bkg-ui-").tempdir().expect("temp dir");
    let address_file = files.path().join("address");
    let args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--listen-address-file".to_owned(),
        address_file.display().to_string(),
    ];
    let agent = Agent::start_with(AgentOptions { extra_args: args, ..AgentOptions::default() });
    let deadline = Instant::now() + Duration::from_secs(10);
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(&address_file)
            && text.ends_with('\n')
        {
            break text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no TCP address written:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    (agent, address, files)
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect::<Vec<_>>().join("&")
}

/// A cookie jar and the requests of one browser.
struct Browser {
    address: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(address: &str) -> Self {
        Self { address: address.to_owned(), cookies: BTreeMap::new() }
    }

    fn send(&mut self, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Answer {
        let cookie = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ");
        let mut headers = extra.to_vec();
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        let answer = request(&self.address, method, path, &headers, body);
        for (name, value) in &answer.headers {
            if name.eq_ignore_ascii_case("set-cookie")
                && let Some((pair, _)) = value.split_once(';')
                && let Some((key, value)) = pair.split_once('=')
            {
                if value.is_empty() {
                    self.cookies.remove(key);
                } else {
                    self.cookies.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        answer
    }

    fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], b"")
    }

    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let body = form_encode(fields);
        self.send("POST", path, &[("Content-Type", "application/x-www-form-urlencoded")], body.as_bytes())
    }

    /// Logs in with the one-time token of a `bkg ui` URL.
    fn log_in_with_url(&mut self, url: &str) -> Answer {
        let token = url.split_once("#token=").map(|(_, token)| token.to_owned()).expect("a token in the URL");
        let csrf = csrf_of(&self.get("/ui/login"));
        self.post("/ui/login/token", &[("csrf", &csrf), ("token", &token)])
    }

    fn log_in_with_key(&mut self, key: &str) -> Answer {
        let csrf = csrf_of(&self.get("/ui/login"));
        self.post("/ui/login/key", &[("csrf", &csrf), ("key", key)])
    }
}

/// The CSRF token a page's forms carry.
fn csrf_of(answer: &Answer) -> String {
    let text = answer.text();
    let start =
        text.find("name=\"csrf\" value=\"").map(|at| at + 19).unwrap_or_else(|| panic!("no CSRF field in {text}"));
    text[start..].split('"').next().unwrap_or_default().to_owned()
}

fn launch(agent: &Agent) -> Value {
    let output = agent.bkg().args(["ui", "--json"]).output().expect("bkg ui");
    assert_eq!(code(&output), 0, "bkg ui: {}", stderr(&output));
    serde_json::from_str(stdout(&output).trim()).expect("bkg ui --json prints JSON")
}

fn namespace_key(agent: &Agent, namespace: &str) -> String {
    let created = agent
        .bkg()
        .args(["keys", "create", "--role", "namespace", "--namespace", namespace])
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
    stdout(&created).trim().to_owned()
}

fn created_sandbox(browser: &mut Browser, name: &str) -> String {
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    let answer = browser.post("/ui/sandboxes", &[("csrf", &csrf), ("name", name), ("language", "python")]);
    assert_eq!(answer.status, 303, "create: {}", answer.text());
    answer.header("location").unwrap_or_default().to_owned()
}

/// Runs `code` on the sandbox page at `page`; the answer is the SSE stream, whole.
fn run_code(browser: &mut Browser, page: &str, code: &str) -> String {
    let csrf = csrf_of(&browser.get(page));
    let answer = browser.post(&format!("{page}/run"), &[("csrf", &csrf), ("language", "python"), ("code", code)]);
    assert_eq!(answer.status, 200, "run: {}", answer.text());
    answer.text()
}

fn run_id_of(events: &str) -> String {
    let data = events.split("event: started\ndata: ").nth(1).expect("a started event");
    data.lines().next().unwrap_or_default().trim_matches('"').to_owned()
}

#[test]
fn the_token_of_bkg_ui_logs_in_once_and_a_loopback_listener_is_started_for_it() {
    // No --listen: `bkg ui` has the agent listen on loopback for the browser.
    let agent = Agent::start();
    assert_eq!(agent.status_json()["listeners"], serde_json::json!([]), "no TCP listener before `bkg ui`");
    let launched = launch(&agent);
    assert_eq!(launched["started_listener"], true, "{launched}");
    let url = launched["url"].as_str().unwrap_or_default().to_owned();
    let address = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    assert!(address.starts_with("127.0.0.1:"), "{url}");
    // The agent says it now takes keys on TCP (found by a new-user trial: nothing showed it).
    assert_eq!(
        agent.status_json()["listeners"],
        serde_json::json!([{ "url": format!("http://{address}"), "started_by": "bkg ui" }])
    );

    let mut browser = Browser::new(&address);
    let first = browser.log_in_with_url(&url);
    assert_eq!(first.status, 303, "{}", first.text());
    assert!(browser.cookies.contains_key("bkg_session"), "{:?}", first.headers);
    agent.wait_warm(1);
    let warm = agent.status_json()["warm_pool"][0]["id"].as_str().unwrap_or_default().to_owned();
    let admin = browser.get("/ui/admin");
    assert_eq!(admin.status, 200, "the token's session is the machine's admin");
    assert!(!warm.is_empty() && admin.text().contains(&warm), "the warm pool lists its sandbox {warm}");

    let mut other = Browser::new(&address);
    let second = other.log_in_with_url(&url);
    assert_eq!(second.status, 401, "a token works once: {}", second.text());
    assert!(!other.cookies.contains_key("bkg_session"));
    assert!(launch(&agent)["started_listener"] == false, "the second `bkg ui` reuses the listener");
}

/// Found by a new-user trial: a model-access key was signed in and sent to a page that refused
/// it, whose only link led back to it. It is refused at the login, saying why.
#[test]
fn a_model_access_key_is_refused_at_the_login_with_the_reason() {
    let (agent, address, _files) = agent_on_tcp();
    let created = agent
        .bkg()
        .args(["keys", "create", "--role", "model-access", "--namespace", "team-a"])
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
    let mut browser = Browser::new(&address);
    let answer = browser.log_in_with_key(stdout(&created).trim());
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(answer.text().contains("a model-access key opens no page of the Web UI"), "{}", answer.text());
    assert!(!browser.cookies.contains_key("bkg_session"), "no session for it");
    assert_eq!(
        agent.status_json()["listeners"],
        serde_json::json!([{ "url": format!("http://{address}"), "started_by": "--listen" }])
    );
}

/// Found by a new-user trial: a session whose key was revoked went back to the login page
/// without a word. The login page says why.
#[test]
fn a_session_ended_by_its_keys_revocation_says_so_on_the_login_page() {
    let (agent, address, _files) = agent_on_tcp();
    let created = agent
        .bkg()
        .args(["keys", "create", "--role", "namespace", "--namespace", "team-a", "--json"])
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).expect("key JSON");
    let (key, id) = (created["key"].as_str().unwrap_or_default(), created["id"].as_str().unwrap_or_default());
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_key(key).status, 303);
    assert_eq!(browser.get("/ui/sandboxes").status, 200);
    let revoked = agent.bkg().args(["keys", "revoke", id]).output().expect("bkg keys revoke");
    assert_eq!(code(&revoked), 0, "{}", stderr(&revoked));
    let answer = browser.get("/ui/sandboxes");
    assert_eq!((answer.status, answer.header("location")), (303, Some("/ui/login?ended=key")));
    let login = browser.get("/ui/login?ended=key");
    assert!(login.text().contains("Your session ended: the key it was signed in with was revoked"), "{}", login.text());
    // Its cookie went with it: the next page is the plain login, not a session "not known"
    // (found by a new-user trial: every page after the first said the agent had restarted).
    assert!(!browser.cookies.contains_key("bkg_session"), "{:?}", browser.cookies);
    let again = browser.get("/ui/runs");
    assert_eq!((again.status, again.header("location")), (303, Some("/ui/login")));

    // A session cookie this agent does not know (it restarted: sessions live in its memory) is
    // said too (found by a new-user trial: the login page gave no reason).
    browser.cookies.insert("bkg_session".into(), "no-such-session".into());
    let answer = browser.get("/ui/sandboxes");
    assert_eq!((answer.status, answer.header("location")), (303, Some("/ui/login?ended=unknown")));
    let login = browser.get("/ui/login?ended=unknown");
    assert!(login.text().contains("Your session is not known to this agent: it was restarted"), "{}", login.text());
}

/// Found by a new-user trial: reloading the page that showed a new key's secret issued, or
/// rotated, once more. The form's answer sends the browser to the keys page, which shows the
/// secret once; rotating the session's own key shows it in the answer, with the way back in.
#[test]
fn forms_issue_a_key_once_give_refused_input_back_and_the_audit_names_keys() {
    let (agent, address, _files) = agent_on_tcp();
    let created = agent
        .bkg()
        .args(["keys", "create", "--role", "admin", "--name", "the-admin", "--json"])
        .output()
        .expect("bkg keys create");
    assert_eq!(code(&created), 0, "bkg keys create: {}", stderr(&created));
    let created: Value = serde_json::from_slice(&created.stdout).expect("key JSON");
    let (key, own_id) = (created["key"].as_str().unwrap_or_default(), created["id"].as_str().unwrap_or_default());
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_key(key).status, 303);
    let count_keys = || {
        let listed = agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
        assert_eq!(code(&listed), 0, "bkg keys ls: {}", stderr(&listed));
        serde_json::from_slice::<Value>(&listed.stdout).expect("keys JSON").as_array().map(Vec::len).unwrap_or_default()
    };
    let before = count_keys();

    let csrf = csrf_of(&browser.get("/ui/keys"));
    let issued = browser.post(
        "/ui/keys",
        &[("csrf", &csrf), ("role", "namespace"), ("namespace", "team-a"), ("name", "from-the-form"), ("ttl", "")],
    );
    assert_eq!((issued.status, issued.header("location")), (303, Some("/ui/keys")), "{}", issued.text());
    let shown = browser.get("/ui/keys");
    assert_eq!(shown.status, 200);
    assert!(shown.text().contains("Copy it now: it is shown only this once.") && shown.text().contains("bkg_ns_"));
    let reloaded = browser.get("/ui/keys");
    assert!(!reloaded.text().contains("bkg_ns_"), "a reload shows the secret again: {}", reloaded.text());
    assert_eq!(count_keys(), before + 1, "one key issued, however often the page is loaded");
    // An expired key is offered for neither rotating (409) nor revoking (found by a new-user trial).
    let brief = agent
        .bkg()
        .args(["keys", "create", "--role", "session", "--namespace", "team-a", "--ttl", "1s", "--json"])
        .output()
        .expect("bkg keys create");
    let brief: Value = serde_json::from_slice(&brief.stdout).expect("key JSON");
    let brief = brief["id"].as_str().unwrap_or_default().to_owned();
    bkg_tests::eventually("the brief key to expire", || {
        let page = browser.get("/ui/keys").text();
        match page.contains(&format!("/ui/keys/{brief}/rotate")) {
            true => Err("still offered for rotating".to_owned()),
            false => Ok(()),
        }
    });
    let page = browser.get("/ui/keys").text();
    assert!(page.contains(&brief) && !page.contains(&format!("/ui/keys/{brief}/revoke")), "{page}");

    // A refused form comes back as it was sent (found by a new-user trial: it came back empty).
    let csrf = csrf_of(&reloaded);
    let refused = browser.post(
        "/ui/keys",
        &[("csrf", &csrf), ("role", "session"), ("namespace", ""), ("name", "nightly-ci"), ("ttl", "soon")],
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    let text = refused.text();
    assert!(text.contains(r#"value="nightly-ci""#) && text.contains(r#"value="soon""#), "{text}");
    assert!(text.contains(r#"<option value="session" selected>"#), "{text}");
    assert!(text.contains("lifetime: `soon` is not a duration: use one like 12h, 7d or 30d"), "{text}");
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    let refused = browser.post(
        "/ui/sandboxes",
        &[("csrf", &csrf), ("name", "web"), ("language", "node"), ("memory", "lots"), ("env", "A=1")],
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    let text = refused.text();
    assert!(text.contains(r#"value="web""#) && text.contains(r#"value="lots""#), "{text}");
    assert!(text.contains(r#"<option value="node" selected>"#) && text.contains(">A=1</textarea>"), "{text}");
    // A limit above the agent's maximum names the form's field, not cave.yaml or the agent's flags.
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    let refused = browser
        .post("/ui/sandboxes", &[("csrf", &csrf), ("name", "big"), ("language", "python"), ("memory", "1000GiB")]);
    assert_eq!(refused.status, 422, "{}", refused.text());
    let text = refused.text();
    assert!(text.contains("ask for at most that in the Memory field"), "{text}");
    assert!(!text.contains("--max-") && !text.contains("cave.yaml"), "{text}");

    // The audit page names the key a key record is about (found by a new-user trial: blank).
    let audit = browser.get("/ui/admin/audit?action=key.created");
    assert!(audit.text().contains(&format!("<td>{own_id}</td>")), "{}", audit.text());

    let csrf = csrf_of(&reloaded);
    let rotated = browser.post(&format!("/ui/keys/{own_id}/rotate"), &[("csrf", &csrf)]);
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let text = rotated.text();
    assert!(text.contains("shown only this once") && text.contains("bkg_admin_"), "{text}");
    assert!(text.contains("It was the key of this session, which has ended"), "{text}");
    // A signed-out page: no navigation of the session, its cookie cleared (found by a new-user
    // trial: it still looked signed in).
    assert!(!text.contains("Log out") && !browser.cookies.contains_key("bkg_session"), "{text}");
    let next = browser.get("/ui/keys");
    assert_eq!((next.status, next.header("location")), (303, Some("/ui/login")));

    // A visit to a form's address gets a page saying so (found by a new-user trial: raw JSON).
    let mut visitor = Browser::new(&address);
    let visited = visitor.get(&format!("/ui/keys/{own_id}/rotate"));
    assert_eq!(visited.status, 405);
    assert!(visited.text().contains("This address is a form's action"), "{}", visited.text());
}

#[test]
fn session_cookies_are_http_only_same_site_strict_and_logout_ends_the_session_on_the_agent() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    let answer = browser.log_in_with_key(&namespace_key(&agent, "team-a"));
    assert_eq!(answer.status, 303, "{}", answer.text());
    let cookie = answer
        .headers
        .iter()
        .find(|(name, value)| name.eq_ignore_ascii_case("set-cookie") && value.starts_with("bkg_session="))
        .map(|(_, value)| value.clone())
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.split("; ").any(|part| part == flag), "{flag} missing: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP on loopback cannot carry a Secure cookie: {cookie}");

    let session = browser.cookies.get("bkg_session").cloned().unwrap_or_default();
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    assert_eq!(browser.post("/ui/logout", &[("csrf", &csrf)]).status, 303);
    // The old cookie, replayed, is worth nothing: the agent forgot the session.
    let mut replay = Browser::new(&address);
    replay.cookies.insert("bkg_session".into(), session);
    let answer = replay.get("/ui/sandboxes");
    assert_eq!((answer.status, answer.header("location")), (303, Some("/ui/login?ended=unknown")));
}

#[test]
fn a_state_changing_request_without_the_csrf_token_is_refused() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_key(&namespace_key(&agent, "team-a")).status, 303);
    let _ = browser.get("/ui/sandboxes");
    for fields in [vec![], vec![("csrf", "0000")]] {
        let mut with = fields.clone();
        with.extend([("name", "forged"), ("language", "python")]);
        let answer = browser.post("/ui/sandboxes", &with);
        assert_eq!(answer.status, 403, "{}", answer.text());
    }
    let list = browser.get("/ui/sandboxes").text();
    assert!(!list.contains("forged"), "no sandbox was made");
    // Nor may a login form be posted without the login cookie's token.
    let mut fresh = Browser::new(&address);
    assert_eq!(fresh.post("/ui/login/key", &[("key", "bkg_ns_x")]).status, 403);
}

#[test]
fn every_page_carries_the_strict_csp_and_refuses_framing() {
    let agent = Agent::start();
    let url = launch(&agent)["url"].as_str().unwrap_or_default().to_owned();
    let address = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(&url).status, 303);
    let sandbox = created_sandbox(&mut browser, "csp");
    let run = run_id_of(&run_code(&mut browser, &sandbox, "print(1)"));
    let pages = [
        "/ui/login".to_owned(),
        "/ui/sandboxes".to_owned(),
        sandbox.clone(),
        format!("{sandbox}/notebook"),
        format!("{sandbox}/terminal"),
        "/ui/runs".to_owned(),
        format!("/ui/runs/{run}"),
        "/ui/keys".to_owned(),
        "/ui/admin".to_owned(),
        "/ui/admin/namespaces".to_owned(),
        "/ui/admin/sync".to_owned(),
        "/ui/admin/audit?action=sandbox.created".to_owned(),
        "/ui/admin/audit?verify=1".to_owned(),
        "/ui/no-such-page".to_owned(),
        "/ui/assets/app.js".to_owned(),
        "/ui/assets/favicon.svg".to_owned(),
    ];
    for page in pages {
        let answer = browser.get(&page);
        assert!(answer.status == 200 || page.contains("no-such"), "{page}: {}", answer.status);
        assert_eq!(answer.header("content-security-policy"), Some(CSP), "{page}");
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{page}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"), "{page}");
        assert!(!answer.text().contains("<script>"), "{page} has an inline script");
    }
    // A mistyped address keeps a signed-in user's navigation (found by a new-user trial: none).
    let missing = browser.get("/ui/no-such-page");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("There is no such page.") && missing.text().contains("Log out"),
        "{}",
        missing.text()
    );
    // Whatever the method, and under the assets too (found by a new-user trial: a POST was told
    // it was a form's action, and an unknown asset was an empty 404).
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    for path in ["/ui/no-such-page", "/ui/admin/nope"] {
        let answer = browser.post(path, &[("csrf", &csrf)]);
        assert_eq!(answer.status, 404, "POST {path}: {}", answer.text());
        assert!(answer.text().contains("There is no such page."), "POST {path}: {}", answer.text());
    }
    let asset = browser.get("/ui/assets/nope.css");
    assert_eq!(asset.status, 404);
    assert!(asset.text().contains("There is no such page."), "{}", asset.text());
    // Every page names its icon, which comes without a session (found by a new-user trial: the
    // browser asked for /favicon.ico, which the API answers 401).
    let mut stranger = Browser::new(&address);
    assert!(
        stranger
            .get("/ui/login")
            .text()
            .contains(r#"<link rel="icon" type="image/svg+xml" href="/ui/assets/favicon.svg">"#)
    );
    let icon = stranger.get("/ui/assets/favicon.svg");
    assert_eq!((icon.status, icon.header("content-type")), (200, Some("image/svg+xml")));
    let asked = stranger.get("/favicon.ico");
    assert_eq!((asked.status, asked.header("location")), (308, Some("/ui/assets/favicon.svg")));
    // The agent's own address, typed into a browser, leads to the UI (was: the API's 401 JSON).
    let root = stranger.get("/");
    assert_eq!((root.status, root.header("location")), (303, Some("/ui/")));
    // The UI's root, with or without its slash, as a person types it.
    for root in ["/ui", "/ui/"] {
        let answer = browser.get(root);
        assert_eq!((answer.status, answer.header("location")), (303, Some("/ui/sandboxes")), "{root}");
        assert_eq!(answer.header("content-security-policy"), Some(CSP), "{root}");
    }
    let verified = browser.get("/ui/admin/audit?verify=1").text();
    assert!(verified.contains("Intact: "), "the audit log verifies: {verified}");
    // One file is "1 file" (was: "1 files"; found by a new-user trial).
    assert!(verified.contains(" records in 1 file, "), "{verified}");
    // An address edited by hand gets the error page, naming what it cannot read (was: axum's
    // plain text for `limit=abc`, and a value of no outcome taken as no filter).
    let unreadable = browser.get("/ui/runs?limit=abc");
    assert_eq!(unreadable.status, 400);
    assert_eq!(unreadable.header("content-security-policy"), Some(CSP));
    assert!(unreadable.text().contains("cannot read (limit: invalid digit found in string)"), "{}", unreadable.text());
    for query in ["outcome=bogus", "language=ruby"] {
        let answer = browser.get(&format!("/ui/runs?{query}"));
        assert_eq!(answer.status, 400, "{query}");
        assert!(answer.text().contains("an outcome or a language there is none of"), "{query}: {}", answer.text());
    }
    // So does a form sent without a field it needs (was: axum's plain-text 422; found by a
    // new-user trial).
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    let unreadable = browser.post("/ui/sandboxes", &[("csrf", &csrf), ("name", "no-language")]);
    assert_eq!(unreadable.status, 422);
    assert_eq!(unreadable.header("content-security-policy"), Some(CSP));
    assert!(
        unreadable
            .text()
            .contains("This form came without a value it needs, or with one it cannot read (missing field `language`)"),
        "{}",
        unreadable.text()
    );
}

/// Found by a new-user trial: a run the agent ended said "killed by cancelled" or "killed: timeout".
#[test]
fn a_run_the_agent_ended_says_how_in_words() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(launch(&agent)["url"].as_str().unwrap_or_default()).status, 303);
    let csrf = csrf_of(&browser.get("/ui/sandboxes"));
    let created =
        browser.post("/ui/sandboxes", &[("csrf", &csrf), ("name", "slow"), ("language", "python"), ("timeout", "1s")]);
    assert_eq!(created.status, 303, "{}", created.text());
    let page = created.header("location").unwrap_or_default().to_owned();
    let events = run_code(&mut browser, &page, "import time\ntime.sleep(30)\n");
    assert!(events.contains(r#""killed":"stopped at its time limit""#), "{events}");
    let run = browser.get(&format!("/ui/runs/{}", run_id_of(&events)));
    assert!(run.text().contains("stopped at its time limit"), "{}", run.text());
    assert!(!run.text().contains("killed: timeout"), "{}", run.text());
    let terminal = browser.get(&format!("{page}/terminal"));
    assert!(terminal.text().contains("&quot;cancelled&quot;:&quot;cancelled&quot;"), "{}", terminal.text());
}

/// Found by a new-user trial: the runs pages said "failed" of a run a signal ended, and only the
/// limit of one whose script still gave its exit code (a child killed for its memory), where
/// `bkg runs` says "signal 11" and "memory, exit 3".
#[test]
fn a_run_s_outcome_names_its_signal_and_the_exit_code_after_a_limit() {
    let (agent, address, _files) = agent_on_tcp();
    let run = |args: &[&str]| {
        let output = agent.bkg().args(["exe", "--json", "--type", "python"]).args(args).output().expect("bkg exe");
        let result: Value = serde_json::from_slice(&output.stdout).expect("bkg exe --json");
        result["id"].as_str().expect("the run's id").to_owned()
    };
    let signalled = run(&["-c", "import os\nos.kill(os.getpid(), 11)"]);
    let child_killed = run(&[
        "--memory",
        "64MiB",
        "-c",
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'x = bytearray(256 << 20)'])\nsys.exit(3)",
    ]);
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(launch(&agent)["url"].as_str().unwrap_or_default()).status, 303);
    let list = browser.get("/ui/runs").text();
    for (id, words) in [(&signalled, "signal 11"), (&child_killed, "killed at its memory limit, exit 3")] {
        assert!(browser.get(&format!("/ui/runs/{id}")).text().contains(words), "{id}: {words}");
        assert!(list.contains(words), "the list says {words}: {list}");
    }
}

/// Found by a new-user trial: the runs page filtered by sandbox id only and showed the newest
/// 100 runs with no way to older ones, ignoring `before=` where the API answers 422.
#[test]
fn the_runs_page_filters_by_sandbox_name_and_pages_to_older_runs() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(launch(&agent)["url"].as_str().unwrap_or_default()).status, 303);
    let first = created_sandbox(&mut browser, "first");
    let second = created_sandbox(&mut browser, "second");
    let runs: Vec<String> =
        ["print(1)", "print(2)"].iter().map(|code| run_id_of(&run_code(&mut browser, &first, code))).collect();
    let other = run_id_of(&run_code(&mut browser, &second, "print(3)"));
    let page = browser.get("/ui/runs?sandbox=first&limit=1");
    assert_eq!(page.status, 200, "{}", page.text());
    let text = page.text();
    assert!(text.contains(&runs[1]) && !text.contains(&runs[0]) && !text.contains(&other), "{text}");
    let older = format!("/ui/runs?sandbox=first&amp;limit=1&amp;before={}", runs[1]);
    assert!(text.contains(&older), "{text}");
    let next = browser.get(&older.replace("&amp;", "&")).text();
    assert!(next.contains(&runs[0]) && !next.contains(&runs[1]) && !next.contains(&other), "{next}");
    let unknown = browser.get("/ui/runs?before=run_nope");
    assert_eq!(unknown.status, 422, "{}", unknown.text());
    assert!(unknown.text().contains("there is no run run_nope here to list older runs from"), "{}", unknown.text());
}

/// A run going on can be cancelled from its page, as `bkg runs cancel` does; the page of an
/// ended run has no such form, and another namespace's user is told it is not found.
#[test]
fn a_run_going_on_is_cancelled_from_its_page() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(launch(&agent)["url"].as_str().unwrap_or_default()).status, 303);
    let running = agent.start_long_run();
    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    let runs: Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    let id = runs[0]["id"].as_str().expect("the run's id").to_owned();
    let page = format!("/ui/runs/{id}");
    let going = browser.get(&page);
    assert!(going.text().contains("Cancel this run"), "{}", going.text());
    // Going on: nothing finished, nothing counted yet (found by a new-user trial: "never", "0 B").
    assert!(going.text().contains("<dd>not yet</dd>"), "{}", going.text());
    assert!(going.text().contains("counted when the run ends"), "{}", going.text());

    let mut stranger = Browser::new(&address);
    assert_eq!(stranger.log_in_with_key(&namespace_key(&agent, "team-b")).status, 303);
    let csrf = csrf_of(&stranger.get("/ui/runs"));
    assert_eq!(stranger.post(&format!("{page}/cancel"), &[("csrf", &csrf)]).status, 404);

    let cancelled = browser.post(&format!("{page}/cancel"), &[("csrf", &csrf_of(&going))]);
    assert_eq!((cancelled.status, cancelled.header("location")), (303, Some(page.as_str())), "{}", cancelled.text());
    let ended = running.wait_with_output().expect("bkg exe ends");
    assert_eq!(code(&ended), 130, "{}", stderr(&ended));
    let shown = browser.get(&page).text();
    assert!(shown.contains("cancelled") && !shown.contains("Cancel this run"), "{shown}");
    assert!(shown.contains("(<code>bkg exe</code>) went to its caller"), "{shown}");
    // Asked again once it has ended, the page shows how it ended.
    let csrf = csrf_of(&browser.get(&page));
    let again = browser.post(&format!("{page}/cancel"), &[("csrf", &csrf)]);
    assert_eq!((again.status, again.header("location")), (303, Some(page.as_str())), "{}", again.text());
}

/// The page of a session's interpreter offers no cancel, which would be refused (it would take
/// the session's variables): it says what ends the session instead.
#[test]
fn a_sessions_interpreter_is_not_offered_for_cancelling() {
    let (agent, address, _files) = agent_on_tcp();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=true", "--disk", "64MiB"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let set = agent.bkg_in(dir, &["exec", "box", "-c", "x = 41"]);
    assert_eq!(code(&set), 0, "{}", stderr(&set));
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let run = status["current_run"].as_str().expect("the session's run").to_owned();

    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_url(launch(&agent)["url"].as_str().unwrap_or_default()).status, 303);
    let page = browser.get(&format!("/ui/runs/{run}")).text();
    assert!(page.contains("is the interpreter of session <code>default</code>"), "{page}");
    assert!(
        page.contains(&format!(
            "of sandbox <a href=\"/ui/sandboxes/{}\">box</a>",
            status["id"].as_str().unwrap_or("?")
        )),
        "{page}"
    );
    assert!(!page.contains("Cancel this run"), "{page}");
    let kept = agent.bkg_in(dir, &["exec", "box", "-c", "x + 1"]);
    assert_eq!((code(&kept), stdout(&kept)), (0, "42\n".to_owned()), "{}", stderr(&kept));
}

#[test]
fn markup_and_terminal_sequences_in_output_are_shown_as_text() {
    let (agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    assert_eq!(browser.log_in_with_key(&namespace_key(&agent, "team-a")).status, 303);
    let sandbox = created_sandbox(&mut browser, "escape");
    let events = run_code(
        &mut browser,
        &sandbox,
        "print('<script>alert(1)</script>')\nprint('\\x1b]0;title\\x07\\x1b[31mred\\x1b[0m')",
    );
    assert!(events.contains("event: result"), "{events}");
    // Streamed output is JSON strings (the page's script puts them in as text): no raw control
    // byte goes out.
    assert!(!events.contains('\u{1b}') && !events.contains('\u{7}'), "{events:?}");
    let page = browser.get(&format!("/ui/runs/{}", run_id_of(&events))).text();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("\u{241b}]0;title\u{2407}"), "the title sequence is shown: {page}");
    assert!(page.contains("<span class=\"ansi-1\">red</span>"), "colours are rendered: {page}");
    assert!(!page.contains('\u{1b}') && !page.contains('\u{7}'), "no control byte reaches the page");
}

#[test]
fn a_user_of_one_namespace_gets_404_for_another_namespaces_sandbox_and_run() {
    let (agent, address, _files) = agent_on_tcp();
    let mut alice = Browser::new(&address);
    assert_eq!(alice.log_in_with_key(&namespace_key(&agent, "team-a")).status, 303);
    let sandbox = created_sandbox(&mut alice, "private");
    let events = run_code(&mut alice, &sandbox, "print(6*7)");
    assert!(events.contains("event: stdout\ndata: \"42"), "{events}");
    let run = format!("/ui/runs/{}", run_id_of(&events));
    assert_eq!(alice.get(&run).status, 200);

    let mut bob = Browser::new(&address);
    assert_eq!(bob.log_in_with_key(&namespace_key(&agent, "team-b")).status, 303);
    for path in [sandbox.clone(), run.clone()] {
        let answer = bob.get(&path);
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
        assert!(!answer.text().contains("private"), "nothing of it is shown");
    }
    let csrf = csrf_of(&bob.get("/ui/sandboxes"));
    assert_eq!(bob.post(&format!("{sandbox}/delete"), &[("csrf", &csrf)]).status, 404);
    assert_eq!(
        bob.post(&format!("{sandbox}/run"), &[("csrf", &csrf), ("language", "python"), ("code", "1")]).status,
        404
    );
    assert!(!bob.get("/ui/runs").text().contains(&run), "B's history does not list A's run");
    assert!(!bob.get("/ui/sandboxes").text().contains("private"));
    assert_eq!(alice.get(&sandbox).status, 200, "A's sandbox is still there");
}

#[test]
fn login_attempts_are_rate_limited_per_address() {
    let (_agent, address, _files) = agent_on_tcp();
    let mut browser = Browser::new(&address);
    for attempt in 1..=10 {
        let answer = browser.log_in_with_key("bkg_ns_not-a-key");
        assert_eq!(answer.status, 401, "attempt {attempt}: {}", answer.text());
    }
    let answer = browser.log_in_with_key("bkg_ns_not-a-key");
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert!(answer.text().contains("Too many login attempts"), "{}", answer.text());
}

/// Logs `browser` in with a key of `namespace` and makes a Python sandbox `name`; the answer is
/// the sandbox page's path.
fn user_with_sandbox(agent: &Agent, address: &str, namespace: &str, name: &str) -> (Browser, String) {
    let mut browser = Browser::new(address);
    assert_eq!(browser.log_in_with_key(&namespace_key(agent, namespace)).status, 303);
    let sandbox = created_sandbox(&mut browser, name);
    (browser, sandbox)
}

/// Starts the notebook's session of the sandbox at `sandbox` (its page's path).
fn start_session(browser: &mut Browser, sandbox: &str) {
    let notebook = format!("{sandbox}/notebook");
    let page = browser.get(&notebook);
    assert!(page.text().contains("Start a session"), "{}", page.text());
    let csrf = csrf_of(&page);
    let started = browser.post(&format!("{notebook}/start"), &[("csrf", &csrf), ("language", "python")]);
    assert_eq!((started.status, started.header("location")), (303, Some(notebook.as_str())), "{}", started.text());
    assert!(browser.get(&notebook).text().contains("data-session=\"default\""), "the page runs cells in the session");
}

/// Runs a cell as the notebook's script does (its CSRF token in the header); the answer is the
/// stream's status and its `session` events.
fn run_cell(browser: &mut Browser, sandbox: &str, csrf: &str, code: &str) -> (u16, Vec<Value>, String) {
    let body = form_encode(&[("session", "default"), ("code", code)]);
    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("X-CSRF-Token", csrf)];
    let answer = browser.send("POST", &format!("{sandbox}/notebook/execute"), &headers, body.as_bytes());
    let text = answer.text();
    let events = text
        .split("\n\n")
        .filter(|block| block.starts_with("event: session\n"))
        .filter_map(|block| {
            let data: Vec<&str> = block.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect();
    (answer.status, events, text)
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["type"] == kind).collect()
}

#[test]
fn a_notebooks_cells_share_their_variables_until_the_session_restarts() {
    let (agent, address, _files) = agent_on_tcp();
    let (mut alice, sandbox) = user_with_sandbox(&agent, &address, "team-a", "book");
    let page = alice.get(&sandbox).text();
    for link in ["/notebook\"", "/terminal\""] {
        assert!(page.contains(&format!("href=\"{sandbox}{link}")), "the sandbox page links {link}: {page}");
    }
    start_session(&mut alice, &sandbox);
    let csrf = csrf_of(&alice.get(&format!("{sandbox}/notebook")));
    // The Run form, while the notebook's session holds the sandbox, says so in the page's terms
    // (found by a new-user trial: it named `bkg exec` and `bkg stop`).
    let beside = alice.post(&format!("{sandbox}/run"), &[("csrf", &csrf), ("language", "python"), ("code", "1")]);
    assert_eq!(beside.status, 409, "{}", beside.text());
    assert!(beside.text().contains("session holds it: run code in its Notebook"), "{}", beside.text());
    assert!(!beside.text().contains("bkg "), "{}", beside.text());

    let (status, first, text) = run_cell(&mut alice, &sandbox, &csrf, "x = 6*7");
    assert_eq!(status, 200, "{text}");
    assert_eq!(of_type(&first, "end").first().map(|end| &end["status"]), Some(&Value::from("ok")), "{text}");
    let (_, second, text) = run_cell(&mut alice, &sandbox, &csrf, "print(x)\nx + 1");
    let printed: String = of_type(&second, "stream").iter().filter_map(|event| event["text"].as_str()).collect();
    assert_eq!(printed, "42\n", "the second cell sees the first's variable: {text}");
    let result = of_type(&second, "result");
    assert_eq!(result.first().map(|event| &event["data"]["text/plain"]), Some(&Value::from("43")), "{text}");

    // Markup and terminal sequences travel as JSON strings, which the page puts in as text.
    let (_, _, text) = run_cell(&mut alice, &sandbox, &csrf, "print('<b>bold</b>\\x1b]0;title\\x07')");
    assert!(text.contains("<b>bold</b>\\u001b]0;title\\u0007"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "no raw control byte goes out: {text:?}");

    let (_, failed, text) = run_cell(&mut alice, &sandbox, &csrf, "1/0");
    assert_eq!(of_type(&failed, "error").first().map(|event| &event["name"]), Some(&Value::from("ZeroDivisionError")));
    assert_eq!(of_type(&failed, "end").first().map(|end| &end["status"]), Some(&Value::from("error")), "{text}");

    let restarted = alice.post(&format!("{sandbox}/notebook/restart"), &[("csrf", &csrf), ("session", "default")]);
    assert_eq!(restarted.status, 303, "{}", restarted.text());
    let (_, after, text) = run_cell(&mut alice, &sandbox, &csrf, "x");
    assert_eq!(of_type(&after, "error").first().map(|event| &event["name"]), Some(&Value::from("NameError")), "{text}");

    let ended = alice.post(&format!("{sandbox}/notebook/end"), &[("csrf", &csrf), ("session", "default")]);
    assert_eq!(ended.status, 303, "{}", ended.text());
    assert!(alice.get(&format!("{sandbox}/notebook")).text().contains("Start a session"), "the session is gone");
    let (status, _, text) = run_cell(&mut alice, &sandbox, &csrf, "1");
    assert_eq!(status, 404, "no session, no cell: {text}");
}

#[test]
fn a_notebook_refuses_forged_cells_and_other_namespaces() {
    let (agent, address, _files) = agent_on_tcp();
    let (mut alice, sandbox) = user_with_sandbox(&agent, &address, "team-a", "private-book");
    start_session(&mut alice, &sandbox);
    for forged in ["", "0000"] {
        let (status, events, text) = run_cell(&mut alice, &sandbox, forged, "import os; os.mkdir('/tmp/forged')");
        assert_eq!((status, events.len()), (403, 0), "a cell without the CSRF token is refused: {text}");
    }
    let csrf = csrf_of(&alice.get(&format!("{sandbox}/notebook")));
    let (_, events, text) = run_cell(&mut alice, &sandbox, &csrf, "import os; print(os.path.exists('/tmp/forged'))");
    let printed: String = of_type(&events, "stream").iter().filter_map(|event| event["text"].as_str()).collect();
    assert_eq!(printed, "False\n", "no forged cell ran: {text}");

    let mut bob = Browser::new(&address);
    assert_eq!(bob.log_in_with_key(&namespace_key(&agent, "team-b")).status, 303);
    let bobs = csrf_of(&bob.get("/ui/sandboxes"));
    for page in [format!("{sandbox}/notebook"), format!("{sandbox}/terminal")] {
        let answer = bob.get(&page);
        assert_eq!(answer.status, 404, "{page}: {}", answer.text());
        assert!(!answer.text().contains("private-book"), "nothing of it is shown");
    }
    let (status, events, text) = run_cell(&mut bob, &sandbox, &bobs, "print(x)");
    assert_eq!((status, events.len()), (404, 0), "{text}");
    for action in ["start", "restart", "interrupt", "end"] {
        let fields = [("csrf", bobs.as_str()), ("session", "default"), ("language", "python")];
        let answer = bob.post(&format!("{sandbox}/notebook/{action}"), &fields);
        assert_eq!(answer.status, 404, "{action}: {}", answer.text());
    }
    assert!(
        alice.get(&format!("{sandbox}/notebook")).text().contains("data-session=\"default\""),
        "A's session lives on"
    );
}

/// Opens the terminal page's WebSocket of the sandbox at `sandbox` as `browser`, with `origin`
/// as the handshake's `Origin` (none when `None`): the socket, or the status it was refused with.
fn open_terminal(
    browser: &Browser,
    sandbox: &str,
    origin: Option<&str>,
) -> Result<tungstenite::WebSocket<std::net::TcpStream>, u16> {
    use tungstenite::client::IntoClientRequest;
    let address = &browser.address;
    let mut request =
        format!("ws://{address}{sandbox}/terminal/socket").into_client_request().expect("a WebSocket request");
    let headers = request.headers_mut();
    if let Some(origin) = origin {
        headers.insert("Origin", origin.parse().expect("an Origin header"));
    }
    let cookie = browser.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ");
    if !cookie.is_empty() {
        headers.insert("Cookie", cookie.parse().expect("a Cookie header"));
    }
    let stream = std::net::TcpStream::connect(address).expect("connect to the agent");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("the handshake failed otherwise: {error}"),
    }
}

/// The agent's next JSON message on a terminal, with the terminal's bytes up to it.
fn next_event(socket: &mut tungstenite::WebSocket<std::net::TcpStream>, screen: &mut Vec<u8>) -> Value {
    loop {
        match socket.read().expect("the terminal's next message") {
            tungstenite::Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            tungstenite::Message::Binary(bytes) => screen.extend_from_slice(&bytes),
            tungstenite::Message::Close(_) => return Value::Null,
            _ => {}
        }
    }
}

fn page_open(csrf: &str) -> tungstenite::Message {
    tungstenite::Message::text(serde_json::json!({ "csrf": csrf, "size": { "cols": 80, "rows": 24 } }).to_string())
}

#[test]
fn the_terminal_page_runs_a_shell_in_the_sandbox_for_its_own_pages_only() {
    let (agent, address, _files) = agent_on_tcp();
    let (mut alice, sandbox) = user_with_sandbox(&agent, &address, "team-a", "shell");
    let csrf = csrf_of(&alice.get(&format!("{sandbox}/terminal")));
    let own = format!("http://{address}");

    // Another site's page, or a handshake that names none, is refused before anything starts.
    for origin in [None, Some("http://evil.example"), Some("null")] {
        assert_eq!(open_terminal(&alice, &sandbox, origin).err(), Some(403), "origin {origin:?}");
    }
    // Without the session's cookie there is no terminal: the login page is where it is sent.
    assert_eq!(open_terminal(&Browser::new(&address), &sandbox, Some(&own)).err(), Some(303));
    // A user of another namespace gets what `bkg shell` would: not found.
    let mut bob = Browser::new(&address);
    assert_eq!(bob.log_in_with_key(&namespace_key(&agent, "team-b")).status, 303);
    assert_eq!(open_terminal(&bob, &sandbox, Some(&own)).err(), Some(404));
    // The page's first message must carry the session's CSRF token.
    let mut forged = open_terminal(&alice, &sandbox, Some(&own)).expect("the handshake of the own origin");
    forged.send(page_open("0000")).expect("send the first message");
    let refused = next_event(&mut forged, &mut Vec::new());
    assert_eq!(
        (&refused["type"], &refused["error"]["error"]["code"]),
        (&Value::from("error"), &Value::from("forbidden")),
        "{refused}"
    );

    let mut socket = open_terminal(&alice, &sandbox, Some(&own)).expect("the terminal");
    socket.send(page_open(&csrf)).expect("send the first message");
    let mut screen = Vec::new();
    let started = next_event(&mut socket, &mut screen);
    assert_eq!(started["type"], "started", "{started}");
    socket
        .send(tungstenite::Message::binary(b"echo $((6*7)) > /tmp/answer; cat /tmp/answer; exit 3\r".to_vec()))
        .expect("type");
    let ended = next_event(&mut socket, &mut screen);
    assert_eq!((&ended["type"], &ended["result"]["exit_code"]), (&Value::from("result"), &Value::from(3)), "{ended}");
    let screen = String::from_utf8_lossy(&screen);
    assert!(screen.lines().any(|line| line.trim_end_matches('\r') == "42"), "the command's output: {screen:?}");
}
