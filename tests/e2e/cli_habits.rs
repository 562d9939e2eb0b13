//! The habits of docker and uv users, against a real agent: run history, `-e NAME`,
//! `--env-file`, compound durations, script arguments without `--`, `bkg version`, `stop --all`,
//! `logs --tail`, and bkgr's own limit flags and script arguments.

use std::process::{Command, Output, Stdio};

use bkg_tests::{Agent, bin_dir, code, stderr, stdout};

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("no JSON ({error}): {}\n{}", stdout(output), stderr(output)))
}

const ARGV_AND_ENV: &str = "import os, sys\nprint(sys.argv[1:])\nprint(os.environ.get('FROM_HOST'), os.environ.get('FROM_FILE'), os.environ.get('BOTH'))\n";

#[test]
fn env_from_the_host_and_a_file_args_without_dashes_and_compound_durations() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("argv.py");
    std::fs::write(&script, ARGV_AND_ENV).expect("write");
    // Saved with a byte-order mark, as Windows editors do: not part of the first name (found by
    // a new-user trial).
    std::fs::write(dir.path().join(".env"), "\u{feff}# comment\n\nFROM_FILE=file value\nBOTH=from file\n")
        .expect("write");
    let output = agent
        .bkg()
        .current_dir(dir.path())
        .env("FROM_HOST", "host value")
        .args(["exe", "-e", "FROM_HOST", "--env-file", ".env", "-e", "BOTH=from flag", "--timeout", "1m30s"])
        .args(["argv.py", "one", "--two", "-x"])
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "['one', '--two', '-x']\nhost value file value from flag\n");

    // bkg's own flags after the script still count as bkg's when they come first.
    let (result, output) = agent.exe_json(&["--timeout", "2m30s", script.to_str().expect("utf-8"), "a"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(result["limits"]["timeout_ms"], 150_000);
    assert_eq!(result["stdout"], "['a']\nNone None None\n");

    // `-e NAME` of a variable the host does not have sets nothing, as with docker.
    let output = agent
        .bkg()
        .env_remove("FROM_HOST")
        .args(["exe", "-e", "FROM_HOST", script.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(stdout(&output), "[]\nNone None None\n", "{}", stderr(&output));
}

#[test]
fn runs_ls_and_show_list_the_last_runs_with_their_accounting() {
    let agent = Agent::start();
    let (first, _) = agent.exe_json(&["--type", "python", "-c", "print(1)"]);
    let (second, _) = agent.exe_json(&["--type", "python", "-c", "import sys; sys.exit(3)"]);
    let dir = tempfile::tempdir().expect("temp dir");

    let listed = agent.bkg_in(dir.path(), &["runs", "ls", "--json", "--limit", "5"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let runs = json(&listed);
    assert_eq!(runs[0]["id"], second["id"], "newest first: {runs}");
    assert_eq!(runs[0]["exit_code"], 3);
    assert_eq!(runs[1]["id"], first["id"]);
    assert!(runs[1]["wall_ms"].as_u64().is_some() && runs[1]["cpu_ms"].as_u64().is_some(), "{runs}");
    assert!(runs[1]["sandbox_id"].is_null(), "a temporary run has no sandbox");

    // The next page starts after the last run listed.
    let second_id = second["id"].as_str().unwrap_or_default();
    let page = agent.bkg_in(dir.path(), &["runs", "ls", "--json", "--limit", "1", "--before", second_id]);
    assert_eq!(code(&page), 0, "{}", stderr(&page));
    assert_eq!(
        json(&page).as_array().map(|runs| runs.iter().map(|run| run["id"].clone()).collect::<Vec<_>>()),
        Some(vec![first["id"].clone()])
    );
    let first_id = first["id"].as_str().unwrap_or_default();
    let last = agent.bkg_in(dir.path(), &["runs", "ls", "--before", first_id]);
    assert_eq!((code(&last), stderr(&last)), (0, format!("bkg: no runs before {first_id}\n")));
    let unknown = agent.bkg_in(dir.path(), &["runs", "ls", "--before", "run_nope"]);
    assert_eq!(code(&unknown), 125, "{}", stderr(&unknown));
    assert_eq!(stderr(&unknown).lines().count(), 1, "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("no run run_nope"), "{}", stderr(&unknown));

    let table = agent.bkg_in(dir.path(), &["runs", "ls"]);
    let text = stdout(&table);
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains(second["id"].as_str().unwrap_or("?")) && text.contains("exit 3"), "{text}");

    let id = first["id"].as_str().unwrap_or_default();
    let shown = agent.bkg_in(dir.path(), &["runs", "show", id, "--json"]);
    assert_eq!(json(&shown)["id"], id);
    let shown = agent.bkg_in(dir.path(), &["runs", "show", id]);
    assert!(stdout(&shown).contains("outcome    exit 0"), "{}", stdout(&shown));

    let missing = agent.bkg_in(dir.path(), &["runs", "show", "run_nope"]);
    assert_eq!(code(&missing), 125);
    assert_eq!(stderr(&missing), "bkg: no run `run_nope` here: `bkg runs ls` lists the runs you may see\n");
}

#[test]
fn a_project_s_runs_logs_stop_and_bkgr_flags() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project");
    let dir = project.path();
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  a-rather-long-sandbox-name:\n    type: python\n    scripts:\n      start: python /project/lines.py\n      sleep: python -c 'import time; time.sleep(600)'\n  b:\n    type: python\n    scripts:\n      sleep: python -c 'import time; time.sleep(600)'\n  c:\n    type: python\n    limits: { timeout: 1s }\n    scripts:\n      sleep: python -c 'import time; time.sleep(600)'\n",
    )
    .expect("cave.yaml");
    std::fs::write(dir.join("lines.py"), "import sys\nfor i in range(5):\n    print('line', i)\nprint(sys.argv[1:])\n")
        .expect("lines.py");
    let long = "a-rather-long-sandbox-name";

    // Before its first run, logs names the sandbox, not its internal id.
    let early = agent.bkg_in(dir, &["logs", long]);
    assert_eq!(code(&early), 125);
    assert!(stderr(&early).starts_with(&format!("bkg: sandbox `{long}` has no output yet")), "{}", stderr(&early));

    // Script arguments after `--`, quoted for the shell.
    let run = agent.bkgr(dir, &[long, "start", "--", "it's", "$HOME"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    assert!(stdout(&run).ends_with("[\"it's\", '$HOME']\n"), "{}", stdout(&run));

    let tail = agent.bkg_in(dir, &["logs", long, "--tail", "2"]);
    assert_eq!(stdout(&tail), "line 4\n[\"it's\", '$HOME']\n");
    let stamped = agent.bkg_in(dir, &["logs", long, "-n", "1", "--timestamps"]);
    let line = stdout(&stamped);
    assert!(line.starts_with("20") && line.contains("Z [\"it's\""), "{line}");

    // bkgr's own --timeout overrides cave.yaml's, and its reason line names bkgr's flag.
    let timed = agent.bkgr(dir, &["b", "sleep", "--timeout", "1s"]);
    assert_eq!(code(&timed), 124, "{}", stderr(&timed));
    assert_eq!(stderr(&timed), "bkgr: b: timed out after 1s (--timeout)\n");
    // cave.yaml's own timeout is named as cave.yaml's.
    let timed = agent.bkgr(dir, &["c", "sleep"]);
    assert_eq!(code(&timed), 124, "{}", stderr(&timed));
    assert_eq!(stderr(&timed), "bkgr: c: timed out after 1s (limits.timeout in cave.yaml, or --timeout)\n");

    let history = agent.bkg_in(dir, &["runs", "ls", "--sandbox", long, "--json"]);
    let runs = json(&history);
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert!(runs[0]["sandbox_id"].as_str().is_some_and(|id| id.starts_with(long)), "{runs}");
    // By its id, the project's own sandbox is not said to be another's (found by a new-user
    // trial: "not in this project's cave.yaml: using sandbox … of" this project).
    let id = runs[0]["sandbox_id"].as_str().unwrap_or_default();
    let by_id = agent.bkg_in(dir, &["runs", "ls", "--sandbox", id, "--json"]);
    assert_eq!((code(&by_id), stderr(&by_id)), (0, String::new()));
    assert_eq!(json(&by_id).as_array().map(Vec::len), Some(1), "{}", stdout(&by_id));
    let unknown = agent.bkg_in(dir, &["runs", "ls", "--sandbox", "nope"]);
    assert_eq!(code(&unknown), 125, "a name cave.yaml lacks is not 'no runs yet': {}", stderr(&unknown));
    assert!(stderr(&unknown).starts_with("bkg: no sandbox `nope` in cave.yaml (it has: "), "{}", stderr(&unknown));

    // The table keeps the long name whole.
    let ls = agent.bkg().args(["ls"]).current_dir(dir).env("COLUMNS", "60").output().expect("bkg ls");
    assert!(stdout(&ls).contains(long), "{}", stdout(&ls));

    // stop --all stops what runs, and only that.
    for name in [long, "b"] {
        let detached = agent.bkgr(dir, &["-d", name, "sleep"]);
        assert_eq!(code(&detached), 0, "{}", stderr(&detached));
    }
    let stopped = agent.bkg_in(dir, &["stop", "--all", "--json"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let answers = json(&stopped);
    assert_eq!(answers.as_array().map(Vec::len), Some(2), "{answers}");
    assert!(answers.as_array().into_iter().flatten().all(|answer| answer["stopped"] == true), "{answers}");

    // `-C DIR` naming no project is an error, never a look for a sandbox of that name elsewhere
    // (the agent knows `b` of this project, and was found from anywhere).
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    std::fs::write(elsewhere.path().join("data.txt"), "data\n").expect("data.txt");
    let missing = dir.join("no-such-dir");
    for (given, says) in [(missing.as_path(), "no such directory"), (elsewhere.path(), "no cave.yaml in")] {
        let given = given.to_str().expect("utf-8");
        for args in [
            vec!["status", "-C", given, "b"],
            vec!["exec", "-C", given, "b", "-c", "1"],
            vec!["cp", "-C", given, "data.txt", "b:x"],
            vec!["logs", "-C", given, "b"],
        ] {
            let refused = agent.bkg_in(elsewhere.path(), &args);
            assert_eq!(code(&refused), 125, "{args:?}: {}", stderr(&refused));
            assert!(
                stderr(&refused).contains(says) && stderr(&refused).lines().count() == 1,
                "{args:?}: {}",
                stderr(&refused)
            );
        }
    }
    assert_eq!(code(&agent.bkg_in(elsewhere.path(), &["status", "b"])), 0, "without -C it is found by name");

    // A cave.yaml invalid as a whole: ls says why instead of listing; one whose problems are a
    // sandbox's lists the rest and says which was left out.
    std::fs::write(dir.join("cave.yaml"), "version: 2\nsandboxes:\n  b:\n    type: python\n").expect("cave.yaml");
    let ls = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&ls), 125);
    assert!(stderr(&ls).contains("cave.yaml:1: /version"), "{}", stderr(&ls));
    std::fs::write(dir.join("cave.yaml"), "version: 1\nsandboxes:\n  BAD:\n    type: ruby\n").expect("cave.yaml");
    let ls = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&ls), 0, "{}", stderr(&ls));
    assert!(stderr(&ls).contains("cave.yaml's sandbox `BAD` is invalid and left out"), "{}", stderr(&ls));
}

#[test]
fn version_names_both_sides() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let version = agent.bkg_in(dir.path(), &["version", "--json"]);
    assert_eq!(code(&version), 0, "{}", stderr(&version));
    let value = json(&version);
    assert_eq!(value["cli"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(value["agent"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(value["cli"]["commit"], value["agent"]["commit"], "{value}");
    assert!(value["agent"]["protections"].as_array().is_some_and(|list| list.iter().any(|p| p == "seccomp filter")));
    // An empty BKG_* variable counts as unset (schema/src/environment.rs): exported empty, as a
    // script does to turn one off, BKG_REMOTE leaves the local agent and BKG_TLS_CERT nothing.
    let unset = agent.bkg().current_dir(dir.path()).env("BKG_REMOTE", "").args(["version", "--json"]).output();
    let unset = unset.expect("bkg version");
    assert_eq!(code(&unset), 0, "{}", stderr(&unset));
    assert_eq!(json(&unset)["agent"]["version"], env!("CARGO_PKG_VERSION"));
    let agent_help = Command::new(bin_dir().join("bkg-agent")).env("BKG_TLS_CERT", "").arg("--print-openapi").output();
    let agent_help = agent_help.expect("bkg-agent --print-openapi");
    assert_eq!(code(&agent_help), 0, "{}", stderr(&agent_help));
    let text = agent.bkg_in(dir.path(), &["version"]);
    assert!(stdout(&text).starts_with("bkg        "), "{}", stdout(&text));

    // Without an agent the CLI's part is still there.
    let alone = Command::new(bin_dir().join("bkg"))
        .args(["--socket", "/nonexistent/agent.sock", "version", "--json"])
        .output()
        .expect("bkg version");
    assert_eq!(code(&alone), 0);
    assert!(json(&alone)["agent"].is_null());
}

/// Found by a trial: outside a project `bkg ls` said only to run `bkg init`, and `bkg logs` of a
/// run's id looked for a sandbox of that name.
#[test]
fn outside_a_project_ls_names_all_and_logs_of_a_run_id_names_runs_show() {
    let agent = Agent::start();
    let elsewhere = tempfile::tempdir().expect("a directory without a cave.yaml");
    let listed = agent.bkg_in(elsewhere.path(), &["ls"]);
    assert_eq!(code(&listed), 125, "{}", stderr(&listed));
    assert!(stderr(&listed).contains("or `bkg ls --all` lists every project's sandboxes"), "{}", stderr(&listed));
    let (result, _) = agent.exe_json(&["--type", "python", "-c", "print(1)"]);
    let id = result["id"].as_str().expect("the run's id");
    let logs = agent.bkg_in(elsewhere.path(), &["logs", id]);
    assert_eq!(code(&logs), 125, "{}", stderr(&logs));
    assert!(
        stderr(&logs).contains(&format!("`{id}` is a run's id, not a sandbox's: `bkg runs show {id}` shows that run")),
        "{}",
        stderr(&logs)
    );
}
