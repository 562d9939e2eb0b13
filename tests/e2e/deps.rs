//! Dependencies and secrets (issue 18): a script's packages installed once from a package index
//! (a local one, served on loopback from wheels scripts/setup.sh downloaded) in an install
//! sandbox, and reused by the next run; an install failure's one line and the installer's own
//! error; a secret that reaches the script and no file of the agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bkg_tests::{Agent, AgentOptions, code, examples_dir, stderr, stdout};

/// Where scripts/setup.sh keeps the wheels the tests serve.
const WHEELS: &str = "/var/cache/bkg-test-wheels";
const SIX_WHEEL: &str = "six-1.17.0-py2.py3-none-any.whl";
const NPM_TARBALL: &str = "bkg-left-pad-1.0.0.tgz";

/// A PEP 503 index on 127.0.0.1: `python3 -m http.server` over `ROOT/six/`, whose directory
/// listing is the project's page. Its request log is kept to count downloads.
/// README.md's tour installs from it too (docs_readme.rs).
pub(super) struct LocalIndex {
    server: Child,
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<String>>,
    _root: tempfile::TempDir,
}

impl LocalIndex {
    pub(super) fn start() -> Self {
        let wheel = Path::new(WHEELS).join(SIX_WHEEL);
        assert!(wheel.is_file(), "{} is missing: run scripts/setup.sh", wheel.display());
        let root = tempfile::Builder::new().prefix("bkg-index-").tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join("six")).expect("project dir");
        std::fs::copy(&wheel, root.path().join("six").join(SIX_WHEEL)).expect("copy the wheel");
        Self::serve(root)
    }

    /// `python3 -m http.server` over `root` on a free loopback port.
    fn serve(root: tempfile::TempDir) -> Self {
        let mut server = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the index");
        let mut first = String::new();
        BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut first).expect("its first line");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = first.split(" port ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("a port");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = std::sync::Arc::clone(&requests);
        let mut errors = server.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = errors.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                log.lock().expect("log").push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self { server, url: format!("http://127.0.0.1:{port}/"), requests, _root: root }
    }

    /// An npm registry on 127.0.0.1 serving one package, `bkg-left-pad` 1.0.0 (packed by the
    /// real `npm pack`): `NAME/index.html` is its document (the registry's `GET /NAME`, which
    /// the server answers by redirecting to `NAME/`), `NAME/-/NAME-1.0.0.tgz` its tarball.
    fn npm_registry() -> Self {
        use base64::Engine as _;
        use sha2::Digest as _;
        let root = tempfile::Builder::new().prefix("bkg-npm-").tempdir().expect("temp dir");
        let source = root.path().join("source");
        std::fs::create_dir(&source).expect("package dir");
        std::fs::write(source.join("package.json"), r#"{"name":"bkg-left-pad","version":"1.0.0","main":"index.js"}"#)
            .expect("package.json");
        std::fs::write(source.join("index.js"), "module.exports = (s, n) => String(s).padStart(n, '.');\n")
            .expect("index.js");
        let tarballs = root.path().join("bkg-left-pad").join("-");
        std::fs::create_dir_all(&tarballs).expect("tarball dir");
        let packed = Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&tarballs)
            .current_dir(&source)
            .env("npm_config_cache", root.path().join("cache"))
            .env("npm_config_update_notifier", "false")
            .output()
            .expect("npm pack");
        assert!(packed.status.success(), "npm pack: {}", stderr(&packed));
        let tarball = std::fs::read(tarballs.join(NPM_TARBALL)).expect("the packed tarball");
        let integrity =
            format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tarball)));
        let registry = Self::serve(root);
        let document = serde_json::json!({
            "name": "bkg-left-pad",
            "dist-tags": { "latest": "1.0.0" },
            "versions": { "1.0.0": {
                "name": "bkg-left-pad", "version": "1.0.0", "main": "index.js",
                "dist": { "tarball": format!("{}bkg-left-pad/-/{NPM_TARBALL}", registry.url), "integrity": integrity },
            }},
        });
        std::fs::write(registry._root.path().join("bkg-left-pad").join("index.html"), document.to_string())
            .expect("the package's document");
        registry
    }

    fn tarball_downloads(&self) -> usize {
        self.requests
            .lock()
            .expect("log")
            .lines()
            .filter(|line| line.contains(&format!("GET /bkg-left-pad/-/{NPM_TARBALL}")))
            .count()
    }

    fn wheel_downloads(&self) -> usize {
        self.requests
            .lock()
            .expect("log")
            .lines()
            .filter(|line| line.contains(&format!("GET /six/{SIX_WHEEL}")))
            .count()
    }
}

impl Drop for LocalIndex {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub(super) fn agent_with_index(index: &LocalIndex) -> Agent {
    Agent::start_with(AgentOptions {
        extra_args: vec!["--package-index".into(), index.url.clone()],
        ..AgentOptions::default()
    })
}

fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("bkg-deps-").tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let script = dir.path().join("main.py");
    (dir, script)
}

const WRITES_BESIDE_SIX: &str = "import six, os\n\
try:\n    open(os.path.join(os.path.dirname(six.__file__), 'planted.py'), 'w')\n    print('env writable')\n\
except OSError as error:\n    print('env read-only', error.errno)\n";

#[test]
fn a_requirements_file_beside_the_script_is_installed_once_and_reused() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let example = examples_dir().join("python-deps").join("main.py");
    let script = example.to_str().expect("utf-8 path");

    let first = agent.exe(&[script]);
    assert_eq!(code(&first), 0, "{}\n{}", stderr(&first), agent.log());
    assert_eq!(stdout(&first), "six 1.17.0 from /opt/bkg/python\n");
    assert!(stderr(&first).contains("bkg: installing 1 Python package into environment"), "{}", stderr(&first));
    assert_eq!(index.wheel_downloads(), 1);

    let second = agent.exe(&[script]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(stdout(&second), "six 1.17.0 from /opt/bkg/python\n");
    assert!(!stderr(&second).contains("installing"), "the second run installed again: {}", stderr(&second));
    assert_eq!(index.wheel_downloads(), 1, "the second run downloaded the wheel again");

    // A requirements file of the same set (its own order, comments) or `--with` is the same
    // environment, and it is read-only (EROFS).
    let (_dir, script) =
        project(&[("main.py", WRITES_BESIDE_SIX), ("requirements.txt", "# pinned\nsix==1.17.0 # http\n")]);
    let own_file = agent.exe(&[script.to_str().expect("utf-8 path")]);
    assert_eq!((code(&own_file), stdout(&own_file).as_str()), (0, "env read-only 30\n"), "{}", stderr(&own_file));
    let with = agent.exe(&["--with", "six==1.17.0", "-c", "import six; print(six.__version__)", "--type", "python"]);
    assert_eq!((code(&with), stdout(&with).as_str()), (0, "1.17.0\n"), "{}", stderr(&with));
    assert_eq!(index.wheel_downloads(), 1);

    let listed = agent.bkg().args(["envs", "ls", "--json"]).output().expect("bkg envs ls");
    let envs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(envs.as_array().map(Vec::len), Some(1), "{envs}");
    assert_eq!(envs[0]["requirements"], serde_json::json!(["six==1.17.0"]));
    assert!(envs[0]["bytes"].as_u64().is_some_and(|bytes| bytes > 10_000), "{envs}");

    // A run without requirements does not see the environment (the host's own six, older, is
    // what it imports).
    let plain = agent.exe(&["-c", "import os; print(os.path.exists('/opt/bkg/python'))", "--type", "python"]);
    assert_eq!((code(&plain), stdout(&plain).as_str()), (0, "False\n"), "{}", stderr(&plain));

    let pruned = agent.bkg().args(["envs", "prune", "--json"]).output().expect("bkg envs prune");
    let pruned: serde_json::Value = serde_json::from_slice(&pruned.stdout).expect("json");
    assert_eq!(pruned["removed"].as_array().map(Vec::len), Some(1), "{pruned}");
    // The build and the prune are audited: the environment's id and set.
    let details: Vec<serde_json::Value> = agent
        .audit_records()
        .into_iter()
        .filter(|record| record["action"] == "config.changed")
        .map(|record| record["details"].clone())
        .filter(|details| details.get("env_built").is_some() || details.get("envs_pruned").is_some())
        .collect();
    assert_eq!(
        details,
        [
            serde_json::json!({ "env_built": envs[0]["id"], "requirements": ["six==1.17.0"] }),
            serde_json::json!({ "envs_pruned": [envs[0]["id"]] }),
        ]
    );
    let listed = agent.bkg().args(["envs", "ls", "--json"]).output().expect("bkg envs ls");
    assert_eq!(stdout(&listed).trim(), "[]");
}

/// A script that lists its own dependencies (PEP 723's `# /// script` block, as `uv run`
/// reads it) gets them; a requirements.txt beside it is then not read, and the note says so; a
/// broken block is refused before anything runs.
#[test]
fn a_script_that_lists_its_own_dependencies_gets_them() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let declares = "# /// script\n# requires-python = \">=3.8\"\n# dependencies = [\n#   \"six==1.17.0\",\n# ]\n# ///\n\
                    import six\nprint(six.__version__)\n";
    let (_dir, script) = project(&[("main.py", declares), ("requirements.txt", "no-such-package-bkg==1.0\n")]);
    let run = agent.exe(&[script.to_str().expect("utf-8 path")]);
    assert_eq!((code(&run), stdout(&run).as_str()), (0, "1.17.0\n"), "{}", stderr(&run));
    let note = "the script lists its own dependencies (`# /// script`): ";
    assert!(stderr(&run).lines().any(|line| line.starts_with(&format!("bkg: {note}"))), "{}", stderr(&run));
    assert_eq!(index.wheel_downloads(), 1);
    let listed = agent.bkg().args(["envs", "ls", "--json"]).output().expect("bkg envs ls");
    let envs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(envs[0]["requirements"], serde_json::json!(["six==1.17.0"]), "{envs}");

    // The same code on stdin is read the same way.
    let mut command = agent.bkg();
    command.args(["exe", "--type", "python", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("bkg exe -");
    child.stdin.take().expect("stdin").write_all(declares.as_bytes()).expect("write the code");
    let piped = child.wait_with_output().expect("bkg exe -");
    assert_eq!((code(&piped), stdout(&piped).as_str()), (0, "1.17.0\n"), "{}", stderr(&piped));

    let (_dir, broken) = project(&[("main.py", "# /// script\n# dependencies = \"six\"\n# ///\nprint('ran')\n")]);
    let refused = agent.exe(&[broken.to_str().expect("utf-8 path")]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(stdout(&refused), "", "the script must not run");
    let said = format!("bkg: {}: its `# /// script` block is not valid on line 2: ", broken.display());
    assert!(stderr(&refused).starts_with(&said) && stderr(&refused).lines().count() == 1, "{}", stderr(&refused));
    // A listed dependency that is not a requirement is named by the script's line, its text not
    // shown (found by a new-user trial: "line 1 of the requirements … is the file a requirements file?").
    let secret = "# /// script\n# dependencies = [\n#   \"six==1.17.0\",\n#   \"API_KEY=hunter2\",\n# ]\n# ///\n";
    let (_dir, leaky) = project(&[("main.py", secret)]);
    let refused = agent.exe(&[leaky.to_str().expect("utf-8 path")]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    let said = format!("bkg: {} line 4 (its `# /// script` block) is not a requirement (", leaky.display());
    assert!(stderr(&refused).starts_with(&said), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains("hunter2"), "{}", stderr(&refused));
}

/// A script's `requires-python` (PEP 723) is checked against the agent's Python before it runs,
/// as `uv run` checks it: versions it is not are refused with both named; a specifier that is
/// not one is refused naming the script's line; versions it is run the script.
#[test]
fn a_script_s_requires_python_is_checked_against_the_agent_s_python() {
    let agent = Agent::start();
    let status = agent.bkg().args(["agent", "status", "--json"]).output().expect("bkg agent status");
    let info: serde_json::Value = serde_json::from_slice(&status.stdout).expect("agent status json");
    let python = info["runtimes"]
        .as_array()
        .and_then(|runtimes| runtimes.iter().find(|runtime| runtime["language"] == "python"))
        .and_then(|runtime| runtime["version"].as_str())
        .and_then(|version| version.strip_prefix("Python "))
        .expect("the agent names its Python")
        .to_owned();
    let block = |wanted: &str| {
        format!("# /// script\n# dependencies = []\n# requires-python = \"{wanted}\"\n# ///\nprint('ran')\n")
    };

    let (_dir, fits) = project(&[("main.py", &block(&format!("=={python}")))]);
    let run = agent.exe(&[fits.to_str().expect("utf-8 path")]);
    assert_eq!((code(&run), stdout(&run).as_str()), (0, "ran\n"), "{}", stderr(&run));

    let (_dir, too_new) = project(&[("main.py", &block(">=99"))]);
    let refused = agent.exe(&[too_new.to_str().expect("utf-8 path")]);
    assert_eq!((code(&refused), stdout(&refused).as_str()), (125, ""), "{}", stderr(&refused));
    let said = format!(
        "bkg: the code asks for Python >=99 (requires-python) and this agent's is Python {python}: change \
         requires-python, or run it on an agent with such a Python\n"
    );
    assert_eq!(stderr(&refused), said);

    let (_dir, broken) = project(&[("main.py", &block("3.11"))]);
    let refused = agent.exe(&[broken.to_str().expect("utf-8 path")]);
    assert_eq!((code(&refused), stdout(&refused).as_str()), (125, ""), "{}", stderr(&refused));
    let said = format!(
        "bkg: {}: its `# /// script` block's requires-python on line 3: `3.11` is not a version specifier",
        broken.display()
    );
    assert!(stderr(&refused).starts_with(&said) && stderr(&refused).lines().count() == 1, "{}", stderr(&refused));
}

/// A project whose sandbox `pk` requires a package no index has, with `more` of its definition.
fn needing_a_missing_package(more: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project");
    std::fs::write(project.path().join("requirements.txt"), "no-such-package-bkg==1.0\n").expect("requirements");
    std::fs::write(
        project.path().join("cave.yaml"),
        format!(
            "version: 1\nsandboxes:\n  pk:\n    type: python\n    python:\n      requirements: requirements.txt\n{more}"
        ),
    )
    .expect("cave.yaml");
    project
}

/// Found by a new-user trial: `bkg exec` and `bkg repl` in a sandbox whose packages cannot be
/// installed said only that the interpreter had ended (the repl even that a fresh one was
/// ready). They give the installer's error and exit 125, as bkgr does.
#[test]
fn a_session_whose_packages_fail_to_install_says_so() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let project = needing_a_missing_package("");
    let exec = agent.bkg_in(project.path(), &["exec", "pk", "-c", "print('ran')"]);
    assert_eq!((code(&exec), stdout(&exec)), (125, String::new()), "{}", stderr(&exec));
    assert!(
        stderr(&exec).contains("bkg: installing 1 Python package failed (pip exited with code 1)"),
        "{}",
        stderr(&exec)
    );
    assert!(stderr(&exec).contains("No matching distribution found for no-such-package-bkg==1.0"), "{}", stderr(&exec));
    let mut repl = agent.bkg();
    repl.current_dir(project.path()).args(["repl", "pk"]).stdin(Stdio::piped());
    let mut repl =
        repl.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("repl");
    repl.stdin.take().expect("stdin").write_all(b"print(1)\n").expect("cell");
    let repl = repl.wait_with_output().expect("repl");
    assert_eq!(code(&repl), 125, "{}", stderr(&repl));
    assert!(stderr(&repl).contains("No matching distribution found"), "{}", stderr(&repl));
    assert!(!stderr(&repl).contains("interpreter is ready"), "{}", stderr(&repl));
}

#[test]
fn an_install_failure_is_one_line_with_the_installers_error_below() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let failed = agent.exe(&["--with", "no-such-package-bkg==1.0", "-c", "print('ran')", "--type", "python"]);
    assert_eq!(code(&failed), 125, "{}", stderr(&failed));
    assert_eq!(stdout(&failed), "", "the script must not run");
    let text = stderr(&failed);
    let error = text.lines().find(|line| line.contains(" failed ")).unwrap_or_default();
    assert_eq!(error, "bkg: installing 1 Python package failed (pip exited with code 1); the installer said:");
    assert!(text.contains("No matching distribution found for no-such-package-bkg==1.0"), "{text}");
    // The run never got a sandbox, so nothing of it is left: its record says so.
    agent.wait_idle();
    let runs = bkg_tests::http::unix_request(&agent.socket, "GET", "/api/v1/runs", None).json();
    assert_eq!(runs[0]["cleaned_up"], true, "{runs}");

    // A requirement pip cannot parse: its exception, not the traceback pip prints with it.
    // (A marker that does not parse, `numpy; rm`, no longer reaches it: bkg refuses it first.)
    let malformed = agent.exe(&["--with", "numpy; rm", "-c", "1", "--type", "python"]);
    assert_eq!(code(&malformed), 125, "{}", stderr(&malformed));
    assert!(stderr(&malformed).contains("not an environment marker"), "{}", stderr(&malformed));
    let unevaluable = agent.exe(&["--with", "six; python_version ~= '3'", "-c", "1", "--type", "python"]);
    assert_eq!(code(&unevaluable), 125, "{}", stderr(&unevaluable));
    assert!(stderr(&unevaluable).contains("Undefined"), "{}", stderr(&unevaluable));
    assert!(!stderr(&unevaluable).contains("Traceback"), "{}", stderr(&unevaluable));
    // pip names the line of its requirements file, which is the install sandbox's, not the user's.
    let unparsable = agent.exe(&["--with", "six~=1", "-c", "1", "--type", "python"]);
    assert_eq!(code(&unparsable), 125, "{}", stderr(&unparsable));
    let said = "bkg: ERROR: Invalid requirement: 'six~=1' (from line 1 of the requirements)";
    assert!(stderr(&unparsable).lines().any(|line| line == said), "{}", stderr(&unparsable));

    let options = agent.exe(&["--with=--index-url=http://elsewhere/simple", "-c", "1", "--type", "python"]);
    assert_eq!(code(&options), 125);
    assert!(stderr(&options).contains("options are not taken"), "{}", stderr(&options));
    // What the install sandbox could not fetch, as it reaches the index alone, is refused before
    // an install starts (it failed at pip's network error, after its retries).
    for (requirement, said) in [
        (
            "six @ https://example.org/six-1.17.0-py2.py3-none-any.whl",
            "its URL is on example.org, which the install sandbox cannot reach",
        ),
        ("git+https://github.com/benjaminp/six.git", "installs from version control are not taken"),
        ("./six", "names a file of this machine"),
    ] {
        let refused = agent.exe(&["--with", requirement, "-c", "1", "--type", "python"]);
        assert_eq!(code(&refused), 125, "{}", stderr(&refused));
        assert!(stderr(&refused).contains(said), "{}", stderr(&refused));
        assert!(!stderr(&refused).contains("installing"), "{}", stderr(&refused));
    }
    let listed = agent.bkg().args(["envs", "ls", "--json"]).output().expect("bkg envs ls");
    assert_eq!(stdout(&listed).trim(), "[]", "a failed install leaves no environment");

    // A requirement's URL with a password: pip names it as given when it fails, and neither
    // what the caller sees nor any record keeps the password (found by a new-user trial).
    let password = "PWLEAK-bkg-31f7";
    // From the agent's own index, which answers 404 at once (a closed port has pip retry).
    let missing = index.url.replacen("://", &format!("://tokuser:{password}@"), 1);
    let with = format!("six @ {}/no-such/six-9.9.9-py2.py3-none-any.whl", missing.trim_end_matches('/'));
    let leaked = agent.exe(&["--with", &with, "-c", "1", "--type", "python"]);
    assert_eq!(code(&leaked), 125, "{}", stderr(&leaked));
    assert!(stderr(&leaked).contains("://***@127.0.0.1:"), "{}", stderr(&leaked));
    assert!(!stderr(&leaked).contains(password), "{}", stderr(&leaked));
    agent.wait_idle();
    assert_eq!(files_containing(&agent.state_dir, password.as_bytes()), Vec::<PathBuf>::new());

    // Found by a new-user trial: a file given as requirements that is not one (a .env here) went
    // to the installer, whose error put its secret into the audit log and the run's record.
    let secret = "sk-live-bkg-7d1e";
    let dotenv = tempfile::NamedTempFile::new().expect("a .env");
    std::fs::write(dotenv.path(), format!("# settings\nAPI_KEY={secret}\n")).expect("write the .env");
    let dotenv_path = dotenv.path().to_str().unwrap_or_default();
    let refused = agent.exe(&["-r", dotenv_path, "-c", "1", "--type", "python"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    let said = format!("{dotenv_path} line 2 is not a requirement (after the name `API_KEY` comes `=`");
    let said = said.as_str();
    assert!(stderr(&refused).contains(said), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains(secret), "{}", stderr(&refused));
    agent.wait_idle();
    assert_eq!(files_containing(&agent.state_dir, secret.as_bytes()), Vec::<PathBuf>::new());
}

/// The agent's own index URL may hold a password (`--package-index https://user:token@…`):
/// what a run is told of an install shows it as `***`, and no file of the agent's keeps it
/// (found by a new-user trial: every run that installed was told it).
#[test]
fn the_password_of_the_agents_index_is_never_shown() {
    let index = LocalIndex::start();
    let password = "IDXPW-bkg-5e21";
    let url = index.url.replacen("://", &format!("://idxuser:{password}@"), 1);
    let agent =
        Agent::start_with(AgentOptions { extra_args: vec!["--package-index".into(), url], ..AgentOptions::default() });
    let run = agent.exe(&["--with", "six==1.17.0", "-c", "import six; print(six.__version__)", "--type", "python"]);
    assert_eq!((code(&run), stdout(&run).as_str()), (0, "1.17.0\n"), "{}", stderr(&run));
    assert!(stderr(&run).contains(" from http://***@127.0.0.1:"), "{}", stderr(&run));
    assert!(!stderr(&run).contains(password), "{}", stderr(&run));
    assert!(!agent.log().contains(password), "{}", agent.log());
    agent.wait_idle();
    assert_eq!(files_containing(&agent.state_dir, password.as_bytes()), Vec::<PathBuf>::new());
}

/// An index the agent cannot reach is said as that, not as what the installer makes of a closed
/// connection (TLS, a proxy) (found by a new-user trial).
#[test]
fn an_index_the_agent_cannot_reach_is_named_as_the_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/simple");
    let agent =
        Agent::start_with(AgentOptions { extra_args: vec!["--package-index".into(), url], ..AgentOptions::default() });
    let failed = agent.exe(&["--with", "six==1.17.0", "--type", "python", "-c", "print('ran')"]);
    assert_eq!(code(&failed), 125, "{}", stderr(&failed));
    let said = format!("the agent cannot reach 127.0.0.1:{port}, where its packages come from: ");
    let first = stderr(&failed).lines().find(|line| line.contains(" failed ")).unwrap_or_default().to_owned();
    assert!(first.contains(&said), "{}", stderr(&failed));
    // Nothing of the installer's retries after it (found by a new-user trial: ten lines of pip's
    // TLS errors sent the user after certificates).
    let said = stderr(&failed);
    assert!(!said.contains("Retrying") && !said.contains("the installer said"), "{said}");
}

/// An install the agent's stop cuts short (its index accepts connections and never answers, so
/// pip waits) is the agent's stop, not a failed install of the run's packages.
#[test]
fn an_install_cut_short_by_the_agents_stop_is_not_a_failed_install() {
    let (mut agent, _silent, mut run, mut said) = installing_from_a_silent_index();
    agent.stop();
    let mut rest = String::new();
    said.read_to_string(&mut rest).expect("the rest of stderr");
    let status = run.wait().expect("bkg exe");
    assert_eq!(status.code(), Some(125), "{rest}");
    assert!(rest.contains("the agent is shutting down"), "{rest}");
    assert!(!rest.contains("failed"), "{rest}");
}

/// Found by a new-user trial: a run whose packages another run was installing waited without a
/// word for as long as that took.
#[test]
fn a_run_waiting_for_another_runs_install_says_so() {
    let (mut agent, _silent, mut first, _first_said) = installing_from_a_silent_index();
    let (mut second, mut said) = run_needing_six(&agent);
    let mut line = String::new();
    said.read_line(&mut line).expect("the second run's first line");
    assert!(line.starts_with("bkg: waiting for environment "), "{line}");
    assert!(line.trim_end().ends_with(", which another run is installing"), "{line}");
    agent.stop();
    let _ = first.wait();
    let _ = second.wait();
}

/// An agent whose package index accepts connections and never answers (pip waits), the index,
/// and a `bkg exe` of code that needs a package, with its stderr, once it has said the install
/// began.
fn installing_from_a_silent_index() -> (Agent, std::net::TcpListener, Child, BufReader<std::process::ChildStderr>) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent index");
    let url = format!("http://127.0.0.1:{}/", silent.local_addr().expect("address").port());
    let agent =
        Agent::start_with(AgentOptions { extra_args: vec!["--package-index".into(), url], ..AgentOptions::default() });
    let (run, mut said) = run_needing_six(&agent);
    let mut first = String::new();
    said.read_line(&mut first).expect("the install's first line");
    assert!(first.starts_with("bkg: installing 1 Python package"), "{first}");
    (agent, silent, run, said)
}

/// A `bkg exe` of code that needs six, started, with its stderr.
fn run_needing_six(agent: &Agent) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut run = agent
        .bkg()
        .args(["exe", "--with", "six==1.17.0", "--type", "python", "-c", "print('ran')"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg exe");
    let said = BufReader::new(run.stderr.take().expect("stderr"));
    (run, said)
}

/// Every file under `dir` (the agent's state, its log) that contains `needle`. Sandbox disk
/// images are left out: they are the warm pool's fresh, empty disks, never records.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && path.file_name().is_some_and(|name| name != "disk.img")
            && std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_secret_reaches_the_script_and_no_record() {
    let agent = Agent::start();
    let value = "s3cr3t-bkg-7f1c9e";
    agent.set_secret("API_TOKEN", value);

    let listed = agent.bkg().args(["secrets", "ls"]).output().expect("bkg secrets ls");
    assert_eq!(stdout(&listed), "API_TOKEN\n");
    // The audit table says which change and who made it (found by a new-user trial: every
    // config.changed row read alike, with no actor).
    let tail = agent.bkg().args(["audit", "tail", "-n", "1"]).output().expect("bkg audit tail");
    let row = stdout(&tail).lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        row.contains(" config.changed ") && row.contains(" uid:0 ") && row.ends_with("secret set: API_TOKEN"),
        "{row}"
    );

    let run = agent.exe(&[
        "--secret",
        "API_TOKEN",
        "-c",
        "import os; print(os.environ['API_TOKEN'] == 's3cr3t-bkg-7f1c9e', len(os.environ['API_TOKEN']))",
        "--type",
        "python",
    ]);
    assert_eq!((code(&run), stdout(&run).as_str()), (0, "True 17\n"), "{}", stderr(&run));

    // Given a plain value too, the secret's would win without a word: refused.
    let both = agent.exe(&["--secret", "API_TOKEN", "-e", "API_TOKEN=plain", "-c", "1", "--type", "python"]);
    assert_eq!(code(&both), 125, "{}", stderr(&both));
    assert!(
        stderr(&both).contains("`API_TOKEN` is given both as a secret and as a plain variable"),
        "{}",
        stderr(&both)
    );

    let missing = agent.exe(&["--secret", "NOPE", "-c", "1", "--type", "python"]);
    assert_eq!(code(&missing), 125);
    assert!(stderr(&missing).contains("no secret `NOPE` in namespace `default`"), "{}", stderr(&missing));

    agent.wait_idle();
    // The agent's whole directory: state dir (store, audit log, sealed secrets, key) and its log.
    let leaks = files_containing(agent.dir.path(), value.as_bytes());
    assert!(leaks.is_empty(), "the secret's value is in {leaks:?}");
    assert!(agent.state_dir.join("secrets.json").is_file(), "the sealed store is where the docs say");

    let removed = agent.bkg().args(["secrets", "rm", "API_TOKEN"]).output().expect("bkg secrets rm");
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    // Setting and removing are audited, by name.
    let changes: Vec<serde_json::Value> = agent
        .audit_records()
        .into_iter()
        .filter(|record| record["action"] == "config.changed" && record["namespace"] == "default")
        .map(|record| record["details"].clone())
        .filter(|details| details.get("secret_set").is_some() || details.get("secret_removed").is_some())
        .collect();
    assert_eq!(
        changes,
        [serde_json::json!({ "secret_set": "API_TOKEN" }), serde_json::json!({ "secret_removed": "API_TOKEN" })]
    );
    let after = agent.exe(&["--secret", "API_TOKEN", "-c", "1", "--type", "python"]);
    assert_eq!(code(&after), 125);
}

/// A run given network reaches its hosts through bkg's proxy, named in its environment: a
/// proxy variable of the caller's, plain or secret, is refused in it. Was: a plain one dropped
/// without a word, a secret one put over the proxy, so the run's clients went past it and were
/// refused (found by a new-user trial). Without network the variable is the caller's.
#[test]
fn a_proxy_variable_of_the_callers_is_refused_in_a_run_given_network() {
    let agent = Agent::start();
    let refused = "is set by bkg in a run given network";
    let plain = agent.exe(&["-e", "HTTP_PROXY=http://10.9.9.9:1", "--net", "pypi.org:443", "-t", "python", "-c", "1"]);
    assert_eq!(code(&plain), 125, "{}", stderr(&plain));
    assert!(stderr(&plain).contains(&format!("env: `HTTP_PROXY` {refused}")), "{}", stderr(&plain));
    agent.set_secret("http_proxy", "http://10.9.9.9:1");
    let secret = agent.exe(&["--secret", "http_proxy", "--net", "pypi.org:443", "-t", "python", "-c", "1"]);
    assert_eq!(code(&secret), 125, "{}", stderr(&secret));
    assert!(stderr(&secret).contains(&format!("secret: `http_proxy` {refused}")), "{}", stderr(&secret));
    let offline = agent.exe(&[
        "--secret",
        "http_proxy",
        "-e",
        "HTTPS_PROXY=http://10.9.9.9:2",
        "-t",
        "python",
        "-c",
        "import os; print(os.environ['http_proxy'], os.environ['HTTPS_PROXY'])",
    ]);
    assert_eq!(stdout(&offline), "http://10.9.9.9:1 http://10.9.9.9:2\n", "{}", stderr(&offline));
}

/// `bkg secrets set NAME` with `value` on stdin.
/// A cave.yaml sandbox's requirements file is checked as `bkg exe` checks its own: the refusal
/// names the file and line, not the joined list's, and does not repeat the line.
#[test]
fn a_cave_yaml_requirement_that_is_not_one_is_named_by_its_file_and_line() {
    let agent = Agent::start();
    let (dir, _) = project(&[
        ("requirements.txt", "six==1.17.0\nexport API_KEY=hunter2\n"),
        (
            "cave.yaml",
            "version: 1\nsandboxes:\n  api:\n    type: python\n    python: { requirements: requirements.txt }\n    scripts:\n      start: \"true\"\n",
        ),
    ]);
    let refused = agent.bkgr(dir.path(), &["api"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    let file = dir.path().join("requirements.txt");
    let said = format!("bkgr: sandbox `api`: python.requirements {} line 2 is not a requirement (", file.display());
    assert!(stderr(&refused).starts_with(&said), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains("hunter2"), "{}", stderr(&refused));
}

#[test]
fn a_cave_yaml_sandbox_gets_its_requirements_and_secrets_and_keeps_its_files() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let value = "cave-s3cr3t-41d2";
    agent.set_secret("API_TOKEN", value);
    let (project, _) = project(&[
        (
            "cave.yaml",
            "version: 1\nsandboxes:\n  api:\n    type: python\n    python:\n      requirements: requirements.txt\n    \
             secrets: [API_TOKEN]\n    keep: [report.txt]\n    scripts:\n      start: python3 main.py\n",
        ),
        ("requirements.txt", "six==1.17.0\n"),
        (
            "main.py",
            "import os, six\nprint(six.__version__, six.__file__.startswith('/opt/bkg/python'), \
             os.environ['API_TOKEN'] == 'cave-s3cr3t-41d2')\nopen('/workspace/report.txt', 'w').write('kept\\n')\n",
        ),
    ]);
    let dir = project.path();

    let first = agent.bkgr(dir, &["api"]);
    assert_eq!(code(&first), 0, "{}\n{}", stderr(&first), agent.log());
    assert_eq!(stdout(&first), "1.17.0 True True\n");
    assert!(stderr(&first).contains("bkgr: installing 1 Python package"), "{}", stderr(&first));
    let second = agent.bkgr(dir, &["api"]);
    assert_eq!((code(&second), stdout(&second).as_str()), (0, "1.17.0 True True\n"), "{}", stderr(&second));
    assert!(!stderr(&second).contains("installing"), "the second run installed again: {}", stderr(&second));
    assert_eq!(index.wheel_downloads(), 1);

    // The run's kept file, named by bkgr as by `bkg exe` (found by a new-user trial: bkgr was
    // silent), and fetched as any run's.
    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    let run_id = runs[0]["id"].as_str().expect("the newest run").to_owned();
    let said = format!("bkgr: kept 1 file (5B): bkg runs files {run_id} --output DIR\n");
    assert!(stderr(&second).ends_with(&said), "{}", stderr(&second));
    let fetched = tempfile::tempdir().expect("temp dir");
    let into = fetched.path().join("files");
    let fetch = agent.bkg().args(["runs", "files", &run_id, "--output"]).arg(&into).output().expect("fetch");
    assert_eq!(code(&fetch), 0, "{}", stderr(&fetch));
    assert_eq!(std::fs::read_to_string(into.join("report.txt")).expect("report.txt"), "kept\n");

    agent.wait_idle();
    let leaks = files_containing(agent.dir.path(), value.as_bytes());
    assert!(leaks.is_empty(), "the secret's value is in {leaks:?}");

    // A secret that is not set is named before anything runs; python: on a node sandbox is refused.
    let api =
        "version: 1\nsandboxes:\n  api:\n    type: python\n    secrets: [MISSING]\n    scripts:\n      start: 'true'\n";
    std::fs::write(dir.join("cave.yaml"), api).expect("cave.yaml");
    let missing = agent.bkgr(dir, &["api"]);
    assert_eq!(code(&missing), 125, "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no secret `MISSING`"), "{}", stderr(&missing));
    // A sandbox not made yet is not made for it (was: it stayed, never run).
    let fresh = api.replace("  api:", "  fresh:");
    std::fs::write(dir.join("cave.yaml"), &fresh).expect("cave.yaml");
    let refused = agent.bkgr(dir, &["fresh"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("no secret `MISSING` in namespace `default`"), "{}", stderr(&refused));
    // In a namespace of the project's, the command that sets it names that namespace.
    let research = fresh.replace("version: 1\n", "version: 1\nnamespace: research\n");
    std::fs::write(dir.join("cave.yaml"), research).expect("cave.yaml");
    let elsewhere = agent.bkgr(dir, &["fresh"]);
    assert_eq!(code(&elsewhere), 125, "{}", stderr(&elsewhere));
    assert!(
        stderr(&elsewhere).contains(
            "no secret `MISSING` in namespace `research`: set it with `bkg secrets set --namespace research MISSING`"
        ),
        "{}",
        stderr(&elsewhere)
    );
    std::fs::write(dir.join("cave.yaml"), &fresh).expect("cave.yaml");
    let status = agent.bkg().args(["status", "fresh"]).current_dir(dir).output().expect("bkg status");
    assert_eq!(code(&status), 125, "{}", stderr(&status));
    std::fs::write(dir.join("cave.yaml"), api).expect("cave.yaml");
    let web = "  web:\n    type: node\n    python:\n      requirements: requirements.txt\n    scripts:\n      start: 'true'\n";
    std::fs::write(dir.join("cave.yaml"), format!("{api}{web}")).expect("cave.yaml");
    let node = agent.bkgr(dir, &["web"]);
    assert_eq!(code(&node), 125, "{}", stderr(&node));
    assert!(
        stderr(&node).contains("/sandboxes/web/python: only sandboxes of type python take it"),
        "{}",
        stderr(&node)
    );

    // Files cave.yaml names but the project lacks: each named, with what to do.
    let missing_files = "version: 1\nsandboxes:\n  req:\n    type: python\n    python: { requirements: nosuch.txt }\n\
                         \x20   scripts: { start: 'true' }\n  npm:\n    type: node\n    node: { package: package.json }\n\
                         \x20   scripts: { start: 'true' }\n  vol:\n    type: python\n    volumes: ['./nosuch:/workspace/data']\n\
                         \x20   scripts: { start: 'true' }\n";
    std::fs::write(dir.join("cave.yaml"), missing_files).expect("cave.yaml");
    std::fs::write(dir.join("package.json"), r#"{"name":"x","dependencies":{"left-pad":"1"}}"#).expect("package.json");
    for (sandbox, said) in [
        ("req", "python.requirements"),
        ("npm", "make it with `npm install --package-lock-only` in"),
        ("vol", "create it, or fix the volume in cave.yaml"),
    ] {
        let refused = agent.bkgr(dir, &[sandbox]);
        assert_eq!(code(&refused), 125, "{}", stderr(&refused));
        let err = stderr(&refused);
        assert!(err.contains(said) && !err.contains("/./"), "{sandbox}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A package.json that names no packages needs no lockfile: nothing is installed, as for
    // `bkg exe` (found by a new-user trial).
    std::fs::write(dir.join("package.json"), r#"{"name":"x","version":"1.0.0"}"#).expect("package.json");
    let ran = agent.bkgr(dir, &["npm"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
}

#[test]
fn a_node_scripts_packages_are_installed_from_its_lockfile_once_and_reused() {
    let registry = LocalIndex::npm_registry();
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--npm-registry".into(), registry.url.clone()],
        ..AgentOptions::default()
    });
    let (project, _) = project(&[
        ("package.json", r#"{"name":"demo","version":"1.0.0","dependencies":{"bkg-left-pad":"^1.0.0"}}"#),
        (
            "main.js",
            "const pad = require('bkg-left-pad');\nconsole.log(pad('x', 4), require.resolve('bkg-left-pad'));\n\
             try { require('fs').writeFileSync(require.resolve('bkg-left-pad'), ''); console.log('env writable'); }\n\
             catch (error) { console.log('env', error.code); }\n",
        ),
    ]);
    let script = project.path().join("main.js");
    let script = script.to_str().expect("utf-8 path");

    // Without a lockfile there is nothing `npm ci` could install: one line saying how to make it.
    let unlocked = agent.exe(&[script]);
    assert_eq!(code(&unlocked), 125, "{}", stderr(&unlocked));
    assert!(stderr(&unlocked).contains("npm install --package-lock-only"), "{}", stderr(&unlocked));

    // The lockfile, made the way its user would, with the real npm against the same registry.
    let locked = Command::new("npm")
        .args(["install", "--package-lock-only", "--no-audit", "--no-fund", "--registry", &registry.url])
        .current_dir(project.path())
        .env("npm_config_cache", project.path().join(".npm-cache"))
        .env("npm_config_update_notifier", "false")
        .output()
        .expect("npm install");
    assert!(locked.status.success(), "npm install: {}", stderr(&locked));

    let first = agent.exe(&[script]);
    assert_eq!(code(&first), 0, "{}\n{}", stderr(&first), agent.log());
    assert_eq!(stdout(&first), "...x /opt/bkg/node/node_modules/bkg-left-pad/index.js\nenv EROFS\n");
    assert!(stderr(&first).contains("bkg: installing 1 Node package into environment"), "{}", stderr(&first));
    assert_eq!(registry.tarball_downloads(), 1);

    let second = agent.exe(&[script]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(stdout(&second), stdout(&first));
    assert!(!stderr(&second).contains("installing"), "the second run installed again: {}", stderr(&second));
    assert_eq!(registry.tarball_downloads(), 1, "the second run downloaded the package again");

    let listed = agent.bkg().args(["envs", "ls", "--json"]).output().expect("bkg envs ls");
    let envs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(envs.as_array().map(Vec::len), Some(1), "{envs}");
    assert_eq!(envs[0]["language"], "node");
    assert_eq!(envs[0]["requirements"], serde_json::json!(["bkg-left-pad@^1.0.0"]));

    // A cave.yaml sandbox naming the same package.json gets the same environment.
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  web:\n    type: node\n    node: { package: package.json }\n    \
         scripts:\n      start: node main.js\n",
    )
    .expect("cave.yaml");
    let persistent = agent.bkgr(project.path(), &["web"]);
    assert_eq!(code(&persistent), 0, "{}", stderr(&persistent));
    assert_eq!(stdout(&persistent), stdout(&first));
    assert!(!stderr(&persistent).contains("installing"), "{}", stderr(&persistent));
    assert_eq!(registry.tarball_downloads(), 1);
}

/// Ctrl-C while the run's packages install cancels the run at once (130, recorded cancelled);
/// the install goes on for the next run (was: bkg waited for the whole install, saying its code
/// had SIGTERM; found by a new-user trial). The index accepts connections and never answers,
/// so pip waits as long as the test needs.
#[test]
fn ctrl_c_during_an_install_cancels_the_run_at_once() {
    let (agent, _silent, mut run, mut said) = installing_from_a_silent_index();
    // SAFETY: kill(2) on a child this test spawned; no memory is involved.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    said.read_to_string(&mut rest).expect("the rest of stderr");
    let status = run.wait().expect("bkg exe");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(!rest.contains("SIGTERM"), "nothing of the code's signals: it never ran: {rest}");
    let listed = agent.bkg().args(["runs", "ls", "--json", "-n", "1"]).output().expect("bkg runs ls");
    let runs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("runs JSON");
    assert_eq!(runs[0]["killed_by"], "cancelled", "{runs}");
    assert!(!runs[0]["finished_at_ms"].is_null(), "{runs}");
}

/// `bkg logs` of a sandbox whose only run failed at its install says why it has no output (was:
/// "no output yet", as if it had never run; found by a new-user trial).
#[test]
fn the_log_of_a_sandbox_whose_install_failed_says_why_it_is_empty() {
    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let project = needing_a_missing_package("    scripts:\n      start: python -c 'print(1)'\n");
    let run = agent.bkgr(project.path(), &["pk"]);
    assert_eq!(code(&run), 125, "{}", stderr(&run));
    let logs = agent.bkg_in(project.path(), &["logs", "pk"]);
    assert_eq!(code(&logs), 125, "{}", stderr(&logs));
    let said = stderr(&logs);
    assert!(said.starts_with("bkg: sandbox `pk` has no output: pk's last run (run_"), "{said}");
    assert!(said.contains("failed: installing 1 Python package failed"), "{said}");
}
