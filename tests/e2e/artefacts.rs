//! Run artefacts (docs/bkg-db.md, "Object storage"): the files a run keeps round-trip through
//! the agent's object store, on the local filesystem and on a real S3-compatible server (moto's
//! server, installed by scripts/setup.sh, listening on loopback), streamed: the agent's peak RSS
//! stays under 100 MiB while a 200 MiB file goes in and out. A namespace role sees only its own
//! namespace's rows of `run_files` in bkg_db.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bkg_tests::{Agent, AgentOptions, code, stderr, stdout};

use crate::bkg_db::{Postgres, agent_with_db, wait_synced};

/// moto's S3 server on a loopback port of its own, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (scripts/setup.sh installs it)");
        let server = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Makes a bucket (moto's server takes an unsigned PUT).
    fn bucket(&self, name: &str) {
        let output = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{name}", self.endpoint)])
            .output()
            .expect("curl");
        assert!(output.status.success(), "create bucket {name}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The agent's configuration for this server: the usual AWS variables.
    fn agent_options(&self, bucket: &str, prefix: &str) -> AgentOptions {
        AgentOptions {
            extra_args: vec!["--object-store".into(), format!("s3://{bucket}/{prefix}")],
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "bkg-test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "bkg-test-secret".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
            ],
            ..AgentOptions::default()
        }
    }

    /// The keys under `prefix` in `bucket`, from the server's own listing.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let output = Command::new("curl")
            .args(["-sf", &format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint)])
            .output()
            .expect("curl");
        let listing = String::from_utf8_lossy(&output.stdout).into_owned();
        listing.split("<Key>").skip(1).filter_map(|rest| rest.split("</Key>").next()).map(str::to_owned).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes 200 MiB of varied bytes to /workspace/out/big.bin (and two small files), prints 1.5
/// MiB to stdout (more than a result keeps), and the big file's SHA-256 to stderr.
const WRITER: &str = r#"
import hashlib, os
os.makedirs("/workspace/out/nested", exist_ok=True)
digest = hashlib.sha256()
block = bytearray(1024 * 1024)
with open("/workspace/out/big.bin", "wb") as big:
    for i in range(200):
        block[0:8] = i.to_bytes(8, "little")
        block[-8:] = (i * 7919).to_bytes(8, "little")
        big.write(block)
        digest.update(block)
with open("/workspace/out/nested/small.txt", "w") as small:
    small.write("small\n")
os.symlink("/etc/hostname", "/workspace/out/link")
open(b"/workspace/out/\xffodd", "w").write("odd")
for n in range(30000):
    print(f"line {n:06d} " + "x" * 40)
import sys
print(digest.hexdigest(), file=sys.stderr)
"#;

fn sha256_of(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

/// The agent's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(agent: &Agent) -> u64 {
    let mut status = String::new();
    std::fs::File::open(format!("/proc/{}/status", agent.pid()))
        .and_then(|mut file| file.read_to_string(&mut status))
        .expect("the agent's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A run keeps 200 MiB under /workspace/out and its long stdout; both come back whole with the
/// same SHA-256, the agent's RSS stays under 100 MiB, and a link is not followed.
fn a_large_artefact_round_trips(agent: &Agent) -> serde_json::Value {
    let output = agent
        .bkg()
        .args(["exe", "--json", "--disk", "700MiB", "--timeout", "5m", "--type", "python", "-c", WRITER])
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&output), 0, "{}\n{}", stderr(&output), agent.log());
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the result's JSON");
    let written_digest = result["stderr"].as_str().unwrap_or_default().trim().to_owned();
    let run_id = result["id"].as_str().expect("a run id").to_owned();
    let files = result["files"].as_array().expect("the kept files").clone();
    let file = |path: &str| files.iter().find(|file| file["path"] == path).cloned();
    let big = file("out/big.bin").expect("out/big.bin kept");
    assert_eq!(big["bytes"], 200 * 1024 * 1024);
    assert_eq!(big["sha256"], written_digest.as_str());
    assert_eq!(file("out/nested/small.txt").expect("the nested file")["bytes"], 6);
    assert!(file("out/link").is_none(), "a symbolic link is never followed: {files:?}");
    let kept_stdout = file("stdout").expect("the long stdout kept");
    assert_eq!(kept_stdout["bytes"], result["stdout_bytes"]);
    assert_eq!(result["truncated"], true);
    assert!(result["files_not_kept"].as_str().is_some_and(|reason| reason.contains("out/link")), "{result}");
    // A name that is not UTF-8 cannot be named in the API: it is said to be left out, not lost.
    assert!(
        result["files_not_kept"]
            .as_str()
            .is_some_and(|reason| reason.contains("out/\u{fffd}odd: a name that is not UTF-8")),
        "{result}"
    );

    let listed = agent.bkg().args(["runs", "files", &run_id, "--json"]).output().expect("bkg runs files");
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("the listing's JSON");
    assert_eq!(listed["files"].as_array().map(Vec::len), Some(files.len()));

    let fetched = tempfile::tempdir().expect("temp dir");
    let into = fetched.path().join("artefacts");
    let fetch = agent.bkg().args(["runs", "files", &run_id, "--output"]).arg(&into).output().expect("fetch");
    assert_eq!(code(&fetch), 0, "{}", stderr(&fetch));
    assert!(stderr(&fetch).contains(&format!("fetched {} files", files.len())), "{}", stderr(&fetch));
    assert_eq!(sha256_of(&into.join("out/big.bin")), written_digest);
    assert_eq!(std::fs::read_to_string(into.join("out/nested/small.txt")).expect("small.txt"), "small\n");
    let whole_stdout = std::fs::read_to_string(into.join("stdout")).expect("the kept stdout");
    assert_eq!(whole_stdout.lines().count(), 30000);
    assert!(whole_stdout.ends_with(&format!("line 029999 {}\n", "x".repeat(40))));
    // Nothing the user has is overwritten.
    let again = agent.bkg().args(["runs", "files", &run_id, "--output"]).arg(&into).output().expect("fetch");
    assert_eq!(code(&again), 125, "{}", stderr(&again));
    assert!(stderr(&again).contains("nothing was overwritten"), "{}", stderr(&again));

    let peak = peak_rss_kib(agent);
    assert!(peak < 100 * 1024, "the agent's peak RSS was {peak} KiB");
    result
}

#[test]
fn a_200_mib_artefact_round_trips_on_the_filesystem_backend() {
    let agent = Agent::start();
    let result = a_large_artefact_round_trips(&agent);
    let digest = result["files"][0]["sha256"].as_str().expect("a digest").to_owned();
    let object = agent.state_dir.join("objects/default/sha256").join(&digest[..2]).join(&digest);
    assert!(object.is_file(), "{} is the object", object.display());
}

#[test]
fn a_200_mib_artefact_round_trips_on_an_s3_server() {
    let s3 = S3Server::start();
    s3.bucket("bkg-artefacts");
    let agent = Agent::start_with(s3.agent_options("bkg-artefacts", "team/runs"));
    let result = a_large_artefact_round_trips(&agent);
    let keys = s3.keys("bkg-artefacts", "team/runs/default/sha256/");
    for file in result["files"].as_array().expect("files") {
        let digest = file["sha256"].as_str().expect("a digest");
        assert!(keys.iter().any(|key| key.ends_with(digest)), "{digest} in {keys:?}");
    }
    assert!(agent.state_dir.join("objects").read_dir().is_err(), "nothing on the local backend");
}

#[test]
fn the_same_content_is_stored_once_and_a_run_with_nothing_to_keep_keeps_nothing() {
    let agent = Agent::start();
    let keep = "import os\nos.makedirs('/workspace/results', exist_ok=True)\nopen('/workspace/results/r.txt','w').write('same')";
    for _ in 0..2 {
        let output = agent.exe(&["--keep", "results", "--type", "python", "-c", keep]);
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        assert!(stderr(&output).contains("kept 1 file ("), "{}", stderr(&output));
    }
    let objects = agent.state_dir.join("objects/default/sha256");
    let count = std::fs::read_dir(&objects)
        .expect("objects")
        .flatten()
        .flat_map(|shard| std::fs::read_dir(shard.path()).into_iter().flatten().flatten().collect::<Vec<_>>());
    assert_eq!(count.count(), 1, "one object for the same content");

    let (result, _) = agent.exe_json(&["--type", "python", "-c", "print('nothing kept')"]);
    assert!(result.get("files").is_none(), "{result}");
    let refused = agent.exe(&["--keep", "../etc", "--type", "python", "-c", "pass"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("keep path `../etc`"), "{}", stderr(&refused));
}

/// A file the run cannot keep is named with its control characters escaped: its name is the
/// code's to choose (found by a new-user trial: a link named `a\nbkg: killed: …` printed a fake
/// line of bkg's own, and escape sequences reached the terminal).
#[test]
fn a_name_the_code_chose_cannot_fake_a_line_of_bkg_s_own() {
    let agent = Agent::start();
    let code_text = "import os\nos.makedirs('out')\n\
        os.symlink('/x', 'out/a\\nbkg: killed: memory limit of 512MiB reached (--memory)\\x1b[2J\\x9b6n')\n";
    let output = agent.exe(&["--type", "python", "-c", code_text]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let said = stderr(&output);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(!said.contains(['\u{1b}', '\u{9b}']), "{said:?}");
    assert!(
        said.starts_with(
            r"bkg: not kept with the run: out/a\nbkg: killed: memory limit of 512MiB reached (--memory)\u{1b}[2J\u{9b}6n: "
        ),
        "{said}"
    );
}

#[test]
fn a_namespace_over_its_quota_keeps_nothing_more_and_says_so() {
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--artefact-quota".into(), "1MiB".into()],
        ..AgentOptions::default()
    });
    let write = |size: usize| {
        format!(
            "import os\nos.makedirs('/workspace/out', exist_ok=True)\nopen('/workspace/out/f','wb').write(os.urandom({size}))"
        )
    };
    let (first, _) = agent.exe_json(&["--type", "python", "-c", &write(700 * 1024)]);
    assert_eq!(first["files"].as_array().map(Vec::len), Some(1), "{first}");
    let output = agent.exe(&["--type", "python", "-c", &write(700 * 1024)]);
    assert_eq!(code(&output), 0, "the run itself succeeds: {}", stderr(&output));
    assert!(stderr(&output).contains("artefact quota"), "{}", stderr(&output));
}

#[test]
fn a_namespace_role_sees_only_its_own_artefact_rows() {
    let postgres = Postgres::start();
    let agent = agent_with_db(&postgres.url());
    wait_synced(&agent);
    postgres.query(
        "CREATE ROLE bkg_ns_alpha LOGIN PASSWORD 'alpha-password'; GRANT bkg_namespace TO bkg_ns_alpha;
         INSERT INTO bkg_namespace_roles (role, namespace) VALUES ('bkg_ns_alpha', 'alpha')",
    );
    let code_keeping = |text: &str| {
        format!(
            "import os\nos.makedirs('/workspace/out', exist_ok=True)\nopen('/workspace/out/{text}.txt','w').write('{text}')"
        )
    };
    for namespace in ["alpha", "beta", "alpha"] {
        let request =
            serde_json::json!({"language": "python", "code": code_keeping(namespace), "namespace": namespace});
        let output = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&agent.socket)
            .args(["-H", "content-type: application/json", "-d", &request.to_string(), "http://bkg/api/v1/runs"])
            .output()
            .expect("curl");
        assert!(output.status.success(), "run in {namespace}: {}", stderr(&output));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the result");
        assert_eq!(result["files"][0]["path"], format!("out/{namespace}.txt"), "{result}");
    }
    wait_synced(&agent);
    assert_eq!(postgres.query("SELECT count(*) FROM run_files"), "3");
    let as_alpha = |sql: &str| postgres.query_as("bkg_ns_alpha", "alpha-password", sql);
    assert_eq!(as_alpha("SELECT string_agg(DISTINCT namespace, ',') FROM run_files"), "alpha");
    assert_eq!(as_alpha("SELECT count(*) FROM run_files"), "2");
    assert_eq!(as_alpha("SELECT count(*) FROM run_files WHERE namespace = 'beta'"), "0");
    // It reads, and writes none: the agents' records are theirs.
    let output = postgres.psql_as("bkg_ns_alpha", "alpha-password", "DELETE FROM run_files");
    assert!(!output.status.success(), "a namespace role may not delete run_files rows");
    assert_eq!(stdout(&output), "");
}
