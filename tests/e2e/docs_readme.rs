//! README.md's "60-second tour", run as it is written against a real agent: one bash script of
//! its lines, in a directory holding a copy of examples/. The `--net` line is the one left out
//! (CI reaches no outside host); xtask/tests/docs.rs parses every line, that one included.

use std::path::Path;
use std::process::{Command, Stdio};

use bkg_tests::{bin_dir, code, examples_dir, stderr, stdout};

use super::deps::{LocalIndex, agent_with_index};

/// The body of the ```sh block of README.md's "60-second tour" section.
fn tour() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).expect("README.md");
    let section = readme.split("## 60-second tour").nth(1).expect("README.md has a \"60-second tour\" section");
    let block = section.split("```sh\n").nth(1).and_then(|rest| rest.split("\n```").next());
    block.expect("the tour has a ```sh block").to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("make dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let tour = tour();
    let (offline, online): (Vec<&str>, Vec<&str>) = tour.lines().partition(|line| !line.contains("--net "));
    assert_eq!(online.len(), 1, "the tour's lines that need an outside host: {online:?}");
    assert!(offline.len() >= 10, "the tour has only {} lines to run", offline.len());

    let index = LocalIndex::start();
    let agent = agent_with_index(&index);
    let dir = tempfile::Builder::new().prefix("bkg-tour-").tempdir().expect("temp dir");
    copy_dir(&examples_dir(), &dir.path().join("examples"));
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &offline.join("\n")])
        .current_dir(dir.path())
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(code(&output), 0, "the tour failed:\nstdout:\n{out}\nstderr:\n{err}\nagent:\n{}", agent.log());

    // What the tour's comments promise, in the order it promises it.
    let promised = [
        "hello from python",
        "42",
        "499999500000",
        "\"exit_code\":0",
        "1.17.0",
        "hello from api",
        "42",
        "api",
        "http",
        "run",
    ];
    let mut rest = out.as_str();
    for want in promised {
        let at = rest
            .find(want)
            .unwrap_or_else(|| panic!("the tour's output lacks {want:?} here:\n{rest}\n(all of it:\n{out})"));
        rest = &rest[at + want.len()..];
    }
    assert!(dir.path().join("demo/cave.yaml").is_file(), "bkg init wrote no demo/cave.yaml");
}
