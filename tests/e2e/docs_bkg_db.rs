//! The shell blocks of docs/bkg-db.md, run as they are written against a real PostgreSQL and a
//! real agent.

use std::path::Path;
use std::process::{Command, Stdio};

use bkg_tests::{bin_dir, code, stderr, stdout};

use super::bkg_db::{Postgres, agent_with_db_and_tcp, print_one, wait_synced};

/// The bodies of the ```sh blocks of `markdown`, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_commands_of_docs_bkg_db_md_work() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bkg-db.md");
    let blocks = shell_blocks(&std::fs::read_to_string(docs).expect("docs/bkg-db.md"));
    assert!(blocks.len() >= 4, "docs/bkg-db.md has only {} shell blocks", blocks.len());

    let postgres = Postgres::start();
    let url = postgres.url();
    let files = tempfile::tempdir().expect("temp dir");
    let (agent, _, address) = agent_with_db_and_tcp(&url, files.path());
    let output = agent.bkg().args(["keys", "create", "--role", "namespace", "--namespace", "research"]).output();
    let output = output.expect("bkg keys create");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let key = stdout(&output).trim().to_owned();
    for remote in [true, false] {
        print_one(&agent, remote.then_some((address.as_str(), key.as_str())));
    }
    wait_synced(&agent);

    let port = url.rsplit(':').next().and_then(|rest| rest.split('/').next()).expect("a port in the URL");
    let namespace_url = format!("postgres://bkg_ns_research:research-password@127.0.0.1:{port}/postgres");
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    // The backup block's URLs: the superuser makes the database to restore into, owned by the
    // owner of docs/operations.md, whose role this cluster has too.
    postgres.query("CREATE ROLE bkg_owner NOLOGIN");
    let restored_url = url.replace("/postgres?", "/bkg_db_restored?");
    for block in blocks {
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .env("BKG_DB_URL", &url)
            .env("BKG_NS_URL", &namespace_url)
            .env("SUPERUSER_URL", &url)
            .env("RESTORED_URL", &restored_url)
            .env("BKG_SOCKET", &agent.socket)
            .env("BKG_NO_AUTOSTART", "1")
            .env("TMPDIR", files.path())
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        assert_eq!(code(&output), 0, "docs/bkg-db.md block failed:\n{block}\n{}{}", stdout(&output), stderr(&output));
    }
}
