//! Persistent projects: `bkg init`, `bkg add`, `bkgr`, and managing the sandboxes.

use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;
use std::process::{Command, Stdio};

use bkg_tests::{Agent, code, eventually, stderr, stdout};

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A project directory holding `cave` as its cave.yaml.
fn project_with(cave: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    write(&project.path().join("cave.yaml"), cave);
    project
}

/// `bkg status NAME --json` in the project at `dir`.
fn status_of(agent: &Agent, dir: &Path, name: &str) -> serde_json::Value {
    let output = agent.bkg_in(dir, &["status", name, "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

#[test]
fn init_add_and_run_keeps_the_workspace_between_runs_and_rm_removes_it() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    let init = agent.bkg_in(dir, &["init", "--yes"]);
    assert_eq!(code(&init), 0, "init: {}", stderr(&init));
    let add = agent.bkg_in(dir, &["add", "api", "--type", "python", "--script", "start=python main.py"]);
    assert_eq!(code(&add), 0, "add: {}", stderr(&add));
    write(
        &dir.join("main.py"),
        "import os\npath = '/workspace/count'\nn = int(open(path).read()) + 1 if os.path.exists(path) else 1\nopen(path, 'w').write(str(n))\nprint('run', n)\n",
    );

    let first = agent.bkgr(dir, &[]);
    assert_eq!(code(&first), 0, "stderr: {}", stderr(&first));
    assert_eq!(stdout(&first), "api | run 1\n", "with no NAME every sandbox runs, prefixed");
    let second = agent.bkgr(dir, &["api"]);
    assert_eq!(code(&second), 0, "stderr: {}", stderr(&second));
    assert_eq!(stdout(&second), "run 2\n", "the workspace survived the first run");
    // The workspace is the agent's, in its state dir, never in the project (docs/cli.md).
    assert!(!dir.join(".bkg/sandboxes/api/disk.img").exists());
    let id = bkg_schema::sandbox::sandbox_id(&dir.to_string_lossy(), "api");
    let home = agent.state_dir.join("workspaces/default").join(&id);
    assert!(home.join("disk.img").exists(), "no image in {}", home.display());

    let ls = agent.bkg_in(dir, &["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("ls json");
    assert_eq!(listed[0]["name"], "api");
    assert_eq!(listed[0]["last_run"]["exit_code"], 0);
    // A sandbox cave.yaml no longer declares (`bkg init --force` wrote a new one) is said to be
    // so, with how it goes (found by a new-user trial: listed as if declared).
    let declared = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    write(&dir.join("cave.yaml"), "version: 1\nsandboxes: {}\n");
    let stale = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&stale), 0, "{}", stderr(&stale));
    assert!(stdout(&stale).contains("api"), "{}", stdout(&stale));
    assert_eq!(
        stderr(&stale),
        "bkg: api is not in cave.yaml (any more): the agent keeps its workspace and logs until `bkg rm api`\n"
    );
    write(&dir.join("cave.yaml"), &declared);

    let typo = agent.bkg_in(dir, &["rm", "api", "apj", "--force"]);
    assert_eq!(code(&typo), 125, "{}", stderr(&typo));
    assert!(stderr(&typo).contains("(it has: api)"), "the names it could have meant: {}", stderr(&typo));
    assert!(home.exists(), "a name that is nowhere refuses them all before any is removed");
    let rm = agent.bkg_in(dir, &["rm", "api", "--force", "--json"]);
    assert_eq!(code(&rm), 0, "rm: {}", stderr(&rm));
    let removed: serde_json::Value = serde_json::from_slice(&rm.stdout).expect("rm --json");
    assert_eq!(
        removed,
        serde_json::json!([{ "name": "api", "id": id, "removed": true }]),
        "one array, as stop --json prints"
    );
    assert!(!home.exists(), "its state is gone");
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert!(!cave.contains("api:"), "it is gone from cave.yaml:\n{cave}");
    assert!(cave.contains("\nsandboxes: {}\n"), "the last one leaves an empty mapping, not null:\n{cave}");
    let status = agent.bkg_in(dir, &["status", "api"]);
    assert_eq!(code(&status), 125);

    let validate = agent.bkg_in(dir, &["validate"]);
    assert_eq!(code(&validate), 0, "validate: {}", stderr(&validate));
    let nothing = agent.bkgr(dir, &[]);
    assert!(stderr(&nothing).contains("declares no sandbox"), "{}", stderr(&nothing));
    let again = agent.bkg_in(dir, &["add", "api", "--type", "python", "--script", "start=python -c 'print(7)'"]);
    assert_eq!(code(&again), 0, "add after rm: {}", stderr(&again));
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert!(cave.starts_with("# cave.yaml: this project's sandboxes"), "comments are kept:\n{cave}");
    let rerun = agent.bkgr(dir, &["api"]);
    assert_eq!(stdout(&rerun), "7\n", "stderr: {}", stderr(&rerun));
}

/// A temporary sandbox's disk is mounted without write barriers (its files never need to
/// survive a crash, and its code's `fsync` must not flush the host's disk); a persistent
/// sandbox's keeps them. Read from the mount table the code itself sees.
#[test]
fn only_a_persistent_sandbox_s_disk_flushes_the_host_s_disk() {
    const WORKSPACE_MOUNT: &str = "print([line.split(' - ')[1].strip() for line in open('/proc/self/mountinfo') if line.split()[4] == '/workspace'])";
    let agent = Agent::start();
    let temporary = agent.exe(&["-t", "python", "-c", WORKSPACE_MOUNT]);
    assert_eq!(code(&temporary), 0, "{}", stderr(&temporary));
    let options = stdout(&temporary);
    assert!(options.contains("ext4") && options.contains("nobarrier"), "bkg exe's /workspace: {options}");

    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    write(&dir.join("mounts.py"), &format!("{WORKSPACE_MOUNT}\n"));
    let add = agent.bkg_in(dir, &["add", "api", "--type", "python", "--script", "start=python /project/mounts.py"]);
    assert_eq!(code(&add), 0, "add: {}", stderr(&add));
    let persistent = agent.bkgr(dir, &["api"]);
    assert_eq!(code(&persistent), 0, "{}", stderr(&persistent));
    let options = stdout(&persistent);
    assert!(options.contains("ext4") && !options.contains("nobarrier"), "a project sandbox's /workspace: {options}");
}

/// cave.yaml kept as a link to a file elsewhere (a dotfiles repository), with a group of its
/// own: `bkg add` and `bkg rm` change the file it leads to and keep its mode, owner and group
/// (found by a new-user trial: the link became a file of root's group).
#[test]
fn a_linked_cave_yaml_stays_a_link_and_keeps_its_group() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    write(&dir.join("shared/real.yaml"), "version: 1\nnamespace: default\nsandboxes: {}\n");
    std::os::unix::fs::symlink("shared/real.yaml", dir.join("cave.yaml")).expect("link");
    let real = dir.join("shared/real.yaml");
    std::os::unix::fs::chown(&real, None, Some(1)).expect("chgrp");
    std::fs::set_permissions(&real, Permissions::from_mode(0o640)).expect("chmod");
    let absent = agent.bkg_in(dir, &["rm", "nothing", "--force"]);
    assert_eq!(
        stderr(&absent),
        "bkg: no sandbox `nothing` in cave.yaml (it declares none: `bkg add nothing --type python` adds one, or `--type node`)\n"
    );
    for args in [&["add", "one", "--type", "python"][..], &["add", "two", "--type", "node"], &["rm", "one", "--force"]]
    {
        let output = agent.bkg_in(dir, args);
        assert_eq!(code(&output), 0, "{args:?}: {}", stderr(&output));
    }
    assert!(std::fs::symlink_metadata(dir.join("cave.yaml")).expect("cave.yaml").file_type().is_symlink());
    let text = std::fs::read_to_string(&real).expect("real.yaml");
    assert!(text.contains("two:") && !text.contains("one:"), "{text}");
    let meta = std::fs::metadata(&real).expect("real.yaml");
    assert_eq!((meta.gid(), meta.mode() & 0o777), (1, 0o640));
    // Several at once: each comes out of cave.yaml (was: each edit made from the text read at
    // the start, so only the last name's stuck; found by a new-user trial).
    for name in ["three", "four"] {
        let added = agent.bkg_in(dir, &["add", name, "--type", "python"]);
        assert_eq!(code(&added), 0, "{}", stderr(&added));
    }
    let removed = agent.bkg_in(dir, &["rm", "--force", "two", "three", "four"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let text = std::fs::read_to_string(&real).expect("real.yaml");
    assert!(!["two:", "three:", "four:"].iter().any(|name| text.contains(name)), "{text}");
}

/// A comment at the first column between two entries is valid YAML, and `bkg rm` edits around
/// it: the other sandbox and the comment stay, and the file still reads (was: `sandboxes: {}`
/// was written above `b`, and every later command refused the file; found by a new-user trial).
#[test]
fn bkg_rm_keeps_a_comment_at_the_first_column_and_the_entries_after_it() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    write(
        &dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  a:\n    type: python\n# b is our important worker, keep it\n  b:\n    type: python\n",
    );
    let removed = agent.bkg_in(dir, &["rm", "a", "--force"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    assert_eq!(
        std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml"),
        "version: 1\nsandboxes:\n# b is our important worker, keep it\n  b:\n    type: python\n"
    );
    let listed = agent.bkg_in(dir, &["validate"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let removed = agent.bkg_in(dir, &["rm", "b", "--force"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    assert_eq!(
        std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml"),
        "version: 1\nsandboxes: {}\n# b is our important worker, keep it\n"
    );
}

fn piped(command: &mut Command) -> &mut Command {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped())
}

/// Found by a new-user trial: `bkg add` run several at once each said it had added its sandbox,
/// and one of them was in cave.yaml (each wrote its edit of the same old text). They edit one
/// after the other; and `bkg rm` of several at once leaves the rest.
#[test]
fn add_and_rm_run_at_once_each_keep_the_others_edits() {
    let agent = Agent::start();
    let project = project_with("version: 1\nnamespace: default\nsandboxes: {}\n");
    let dir = project.path();
    let names: Vec<String> = (0..8).map(|index| format!("box{index}")).collect();
    let adds: Vec<_> = names
        .iter()
        .map(|name| {
            let mut add = agent.bkg();
            add.current_dir(dir).args(["add", name, "--type", "python"]);
            piped(&mut add).spawn().expect("bkg add")
        })
        .collect();
    for add in adds {
        let output = add.wait_with_output().expect("bkg add");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
    }
    let listed = |text: &str| names.iter().filter(|name| text.contains(&format!("  {name}:"))).count();
    let text = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert_eq!(listed(&text), names.len(), "{text}");
    let removes: Vec<_> = names[..4]
        .iter()
        .map(|name| {
            let mut remove = agent.bkg();
            remove.current_dir(dir).args(["rm", "--force", name]);
            piped(&mut remove).spawn().expect("bkg rm")
        })
        .collect();
    for remove in removes {
        let output = remove.wait_with_output().expect("bkg rm");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
    }
    let text = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert_eq!(listed(&text), 4, "{text}");
    assert!(names[4..].iter().all(|name| text.contains(&format!("  {name}:"))), "{text}");
}

/// Found by a new-user trial: with cave.yaml broken, `bkg status NAME --json` printed the
/// status and exited 125, which scripts read as "nothing on stdout"; and a sandbox without a
/// `start` script was to be run with `bkgr NAME`, which refuses it for that.
#[test]
fn status_shows_the_agent_s_sandbox_beside_a_broken_cave_yaml_and_hints_a_command_that_runs() {
    let agent = Agent::start();
    let cave = "version: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: \"true\"\n  tool:\n    type: python\n    scripts:\n      build: \"true\"\n";
    let project = project_with(cave);
    let dir = project.path();
    let ran = agent.bkgr(dir, &["api"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    for (command, hint) in [
        (&["status", "tool"][..], "bkg: sandbox `tool` has not run yet in "),
        (&["logs", "tool"], "bkg: sandbox `tool` has no output yet in "),
    ] {
        let never = agent.bkg_in(dir, command);
        assert_eq!(code(&never), 125, "{}", stderr(&never));
        assert!(stderr(&never).starts_with(hint) && stderr(&never).contains("`bkgr tool build`"), "{}", stderr(&never));
    }
    write(&dir.join("cave.yaml"), &format!("{cave}  broken: [\n"));
    let status = agent.bkg_in(dir, &["status", "api", "--json"]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["name"], "api", "{status}");
    let text = agent.bkg_in(dir, &["status", "api"]);
    assert_eq!(code(&text), 0, "{}", stderr(&text));
    assert!(
        stderr(&text).contains("invalid YAML") && stderr(&text).contains("not compared with cave.yaml"),
        "{}",
        stderr(&text)
    );
}

/// Found by a new-user trial: with `BKG_REMOTE` set, `bkg` talked to the remote agent while
/// `bkgr` ran the project on the local one, without a word.
#[test]
fn bkgr_refuses_a_remote_agent_rather_than_run_here_unnoticed() {
    let agent = Agent::start();
    let project =
        project_with("version: 1\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: \"true\"\n");
    let output = Command::new(bkg_tests::bin_dir().join("bkgr"))
        .current_dir(project.path())
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .env("BKG_REMOTE", "http://127.0.0.1:9")
        .output()
        .expect("bkgr");
    assert_eq!(code(&output), 125, "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with(
            "bkgr: cave.yaml's sandboxes run on this machine's agent, and BKG_REMOTE is set (http://127.0.0.1:9)"
        ),
        "{}",
        stderr(&output)
    );
    assert_eq!(agent.bkg_in(project.path(), &["ls", "--json"]).stdout, b"[]\n", "nothing ran here");
}

/// Found by a new-user trial: a cave.yaml that is a FIFO made `bkg validate` wait forever, one
/// linked to `/dev/zero` read until memory ran out, and a huge one took most of a minute. Each
/// is refused at once with one line; `bkg add` leaves it be.
#[test]
fn a_cave_yaml_that_is_no_regular_file_or_is_huge_is_refused_unread() {
    let project = tempfile::tempdir().expect("project dir");
    let cave = project.path().join("cave.yaml");
    let make_fifo = Command::new("mkfifo").arg(&cave).status().expect("mkfifo");
    assert!(make_fifo.success());
    let refused = |args: &[&str], expected: &str| {
        let mut child = Command::new(bkg_tests::bkg_bin())
            .current_dir(project.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bkg");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("bkg {args:?} did not end");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("bkg");
        assert_eq!(code(&output), 125, "{}", stderr(&output));
        assert_eq!(stderr(&output), format!("bkg: cannot read cave.yaml: {expected}\n"));
    };
    let not_a_file = "it is not a regular file (a pipe, a device or a socket)";
    refused(&["validate"], not_a_file);
    refused(&["add", "api", "--type", "python"], not_a_file);
    // Commands that look for the project do not pass it over for one further up.
    // No agent is asked (nor started: bkgr reads the project first).
    let listed = Command::new(bkg_tests::bin_dir().join("bkgr"))
        .current_dir(project.path())
        .env("BKG_SOCKET", project.path().join("no-agent.sock"))
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("bkgr");
    assert_eq!(code(&listed), 125, "{}", stderr(&listed));
    assert!(stderr(&listed).contains("cave.yaml: it is not a regular file"), "{}", stderr(&listed));
    std::fs::remove_file(&cave).expect("remove the FIFO");
    std::os::unix::fs::symlink("/dev/zero", &cave).expect("link to /dev/zero");
    refused(&["validate"], not_a_file);
    std::fs::remove_file(&cave).expect("remove the link");
    std::fs::File::create(&cave).expect("create").set_len(20 * 1024 * 1024).expect("grow");
    refused(&["validate"], "it holds 20MiB, over the 16MiB a cave.yaml may");
}

/// Found by a new-user trial: `bkg add api --volume data:/workspace/data:rw` was taken without
/// `./data`, and `bkgr api` then refused the volume. The project's folder is made; one outside
/// the project is only named.
#[test]
fn add_makes_a_missing_volume_folder_of_the_project_and_the_sandbox_runs() {
    let agent = Agent::start();
    let project = project_with("version: 1\nnamespace: default\nsandboxes: {}\n");
    let dir = project.path();
    let added = agent.bkg_in(
        dir,
        &[
            "add",
            "api",
            "--type",
            "python",
            "--script",
            "start=ls -d /workspace/data",
            "--volume",
            "data:/workspace/data:rw",
        ],
    );
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let made = format!("bkg: made the volume's folder data ({}/data, from the project's directory)\n", dir.display());
    assert!(stderr(&added).contains(&made), "{}", stderr(&added));
    assert!(dir.join("data").is_dir());
    let ran = agent.bkgr(dir, &["api"]);
    assert_eq!((code(&ran), stdout(&ran)), (0, "/workspace/data\n".to_owned()), "{}", stderr(&ran));
    let outside = agent.bkg_in(dir, &["add", "other", "--type", "python", "--volume", "/nonexistent/x:/workspace/x"]);
    assert_eq!(code(&outside), 0, "{}", stderr(&outside));
    assert!(
        stderr(&outside).contains("/nonexistent/x does not exist, and is not the project's to make"),
        "{}",
        stderr(&outside)
    );
    assert!(!Path::new("/nonexistent").exists());
    // Through a link out of the project, nothing is made there (found by a trial of this fix).
    let elsewhere = tempfile::tempdir().expect("outside dir");
    std::os::unix::fs::symlink(elsewhere.path(), dir.join("link")).expect("link");
    let linked = agent.bkg_in(dir, &["add", "linked", "--type", "python", "--volume", "link/new:/workspace/new"]);
    assert_eq!(code(&linked), 0, "{}", stderr(&linked));
    assert!(
        stderr(&linked).contains("link/new (")
            && stderr(&linked)
                .contains(", from the project's directory) does not exist, and is not the project's to make"),
        "{}",
        stderr(&linked)
    );
    assert!(!elsewhere.path().join("new").exists());
    // A folder that cannot be made refuses the sandbox, and cave.yaml stays as it was.
    let before = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    write(&dir.join("afile"), "a file\n");
    let blocked = agent.bkg_in(dir, &["add", "blocked", "--type", "python", "--volume", "afile/sub:/workspace/sub"]);
    assert_eq!(code(&blocked), 125, "{}", stderr(&blocked));
    assert!(stderr(&blocked).contains("cannot make the volume's folder"), "{}", stderr(&blocked));
    assert_eq!(std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml"), before);
}

/// Found by a new-user trial: `bkg stop api nosuch` stopped api, then failed on nosuch; every
/// name is found first, as `bkg rm` does.
#[test]
fn stop_finds_every_name_before_it_stops_any() {
    let agent = Agent::start();
    let project =
        project_with("version: 1\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: sleep 600\n");
    let dir = project.path();
    let started = agent.bkgr(dir, &["-d", "api"]);
    assert_eq!(code(&started), 0, "{}", stderr(&started));
    let refused = agent.bkg_in(dir, &["stop", "api", "nosuch"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("nosuch"), "{}", stderr(&refused));
    assert_eq!(status_of(&agent, dir, "api")["state"], "running", "api was not stopped");
    // Named twice, it is stopped once: the second stop said "was not running" after the first
    // said "stopped" (found by a new-user trial).
    let stopped = agent.bkg_in(dir, &["stop", "api", "api"]);
    assert_eq!((code(&stopped), stderr(&stopped)), (0, "bkg: stopped api\n".to_owned()));
}

/// Found by a new-user trial: a sandbox with a volume outside the project was to be made with
/// `bkgr --allow-outside NAME`, which refuses a sandbox without a `start` script. The hint names
/// a script it has, and works.
#[test]
fn the_allow_outside_hint_names_a_script_the_sandbox_has() {
    let agent = Agent::start();
    let outside = tempfile::tempdir().expect("outside dir");
    let project = project_with(&format!(
        "version: 1\nsandboxes:\n  v:\n    type: python\n    volumes: [\"{}:/workspace/outside\"]\n    scripts:\n      build: \"true\"\n",
        outside.path().display()
    ));
    let dir = project.path();
    let refused = agent.bkg_in(dir, &["exec", "v", "-c", "1"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("make it once with `bkgr --allow-outside v build`"), "{}", stderr(&refused));
    let made = agent.bkgr(dir, &["--allow-outside", "v", "build"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let exec = agent.bkg_in(dir, &["exec", "v", "-c", "print(6 * 7)"]);
    assert_eq!((code(&exec), stdout(&exec)), (0, "42\n".to_owned()), "{}", stderr(&exec));
}

#[test]
fn rm_without_a_terminal_needs_force() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    write(
        &project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: python -c 'print(1)'\n",
    );
    let rm = agent.bkg_in(project.path(), &["rm", "api"]);
    assert_eq!(code(&rm), 125);
    assert!(stderr(&rm).contains("--force"), "{}", stderr(&rm));
    assert!(std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave").contains("api:"));
}

/// A definition above the agent's maximum is refused with the fix that applies to it: cave.yaml's
/// limit, not the run's flags, which hold for one run only (found by a new-user trial: "ask for
/// less" after `bkgr --timeout 10s`, which had asked for less).
#[test]
fn a_definition_above_the_maximum_names_cave_yamls_limit_as_the_fix() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  t:\n    type: python\n    limits: { timeout: 2h }\n    scripts:\n      start: 'true'\n",
    );
    let refused = agent.bkgr(project.path(), &["t", "--timeout", "10s"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(
            "timeout 2h is above this agent's maximum of 1h; give the sandbox's limits.timeout (cave.yaml's) at most that"
        ),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    // `--disk` is kept by the sandbox (a disk grows for good): above the maximum, the flag is the
    // fix, not cave.yaml, which sets no disk here.
    let too_big = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  d:\n    type: python\n    scripts:\n      start: 'true'\n",
    );
    let refused = agent.bkgr(too_big.path(), &["d", "--disk", "20TiB"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("disk 20TiB is above this agent's maximum"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("ask for less with --disk"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains("cave.yaml"), "{}", stderr(&refused));
    // Every limit above its maximum is said at once (found by a new-user trial: one per run).
    let several = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  m:\n    type: python\n    limits: { memory: 100GiB, timeout: 2h }\n    scripts:\n      start: 'true'\n",
    );
    let refused = agent.bkgr(several.path(), &["m"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        "bkgr: sandbox `m`: memory 100GiB is above this agent's maximum of 8GiB, and so is timeout 2h (at most 1h); give the \
         sandbox's limits.memory and limits.timeout (cave.yaml's) at most those, or have the agent started with a higher \
         --max-memory and --max-timeout\n"
    );
    let refused = agent.exe(&["--memory", "100GiB", "--timeout", "2h", "--type", "python", "-c", "pass"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        "bkg: memory 100GiB is above this agent's maximum of 8GiB, and so is timeout 2h (at most 1h); ask for less, \
         or have the agent started with a higher --max-memory and --max-timeout\n"
    );
    // cave.yaml's own disk above the maximum is refused whatever `--disk` says, as the other
    // limits are (found by a new-user trial: `--disk 1GiB` ran, and `bkg ls` then said cave.yaml's
    // 50GiB would apply at the next run, which the agent refuses).
    let cave_too_big = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  d:\n    type: python\n    limits: { disk: 20TiB }\n    scripts:\n      start: 'true'\n",
    );
    let refused = agent.bkgr(cave_too_big.path(), &["d", "--disk", "64MiB"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("disk 20TiB is above this agent's maximum"), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("give the sandbox's limits.disk (cave.yaml's) at most that"),
        "{}",
        stderr(&refused)
    );
    // A flag below cave.yaml's disk gets cave.yaml's (a disk only grows), and says so.
    let cave_disk = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  d:\n    type: python\n    limits: { disk: 64MiB }\n    scripts:\n      start: 'true'\n",
    );
    let ran = agent.bkgr(cave_disk.path(), &["d", "--disk", "32MiB"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    assert_eq!(
        stderr(&ran),
        "bkgr: d: --disk 32MiB is below cave.yaml's limits.disk, 64MiB: a disk only grows, so it keeps the size it has, at least that (`bkg status d` shows it)\n"
    );
    let status = agent.bkg_in(cave_disk.path(), &["status", "d", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["limits"]["disk_bytes"], 64 << 20, "{status}");
}

/// A package file cave.yaml names is read only inside the project, as a volume is, unless
/// `bkgr --allow-outside`: a cave.yaml from someone else must not send the agent your other files
/// (found by a new-user trial: `requirements: /etc/hostname` installed the package it named).
#[test]
fn package_files_outside_the_project_need_allow_outside() {
    let agent = Agent::start();
    let outside = tempfile::tempdir().expect("outside");
    write(&outside.path().join("creds.txt"), "");
    let project = project_with(&format!(
        "version: 1\nnamespace: default\nsandboxes:\n  far:\n    type: python\n    python: {{ requirements: {} }}\n    scripts:\n      start: 'true'\n  near:\n    type: python\n    python: {{ requirements: link.txt }}\n    scripts:\n      start: 'true'\n",
        outside.path().join("creds.txt").display()
    ));
    let dir = project.path();
    std::os::unix::fs::symlink(outside.path().join("creds.txt"), dir.join("link.txt")).expect("link");
    for name in ["far", "near"] {
        let refused = agent.bkgr(dir, &[name]);
        assert_eq!(code(&refused), 125, "{name}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("python.requirements"), "{name}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("reaches outside the project"), "{name}: {}", stderr(&refused));
        let exec = agent.bkg_in(dir, &["exec", name, "-c", "1"]);
        assert_eq!(code(&exec), 125, "{name}: {}", stderr(&exec));
        assert!(stderr(&exec).contains("reaches outside the project"), "{name}: {}", stderr(&exec));
    }
    let allowed = agent.bkgr(dir, &["--allow-outside", "far"]);
    assert_eq!(code(&allowed), 0, "{}", stderr(&allowed));
}

/// A definition too big for the agent is said with what makes it big (found by a new-user trial:
/// a 200 KB env value got "the request body is over the limit", naming nothing of cave.yaml);
/// and variables within the documented 128KiB reach the agent (found by a later trial: the
/// agent took definitions of 64KiB at most, so 100 KB of `env` could never run).
#[test]
fn a_definition_too_big_for_the_agent_names_what_makes_it_big() {
    let agent = Agent::start();
    let big = "x".repeat(100 * 1024);
    let project = project_with(&format!(
        "version: 1\nnamespace: default\nsandboxes:\n  big:\n    type: python\n    env: {{ DATA: {big} }}\n    scripts:\n      start: python3 -c 'import os; print(len(os.environ[\"DATA\"]))'\n"
    ));
    let ran = agent.bkgr(project.path(), &["big"]);
    assert_eq!((code(&ran), stdout(&ran)), (0, "102400\n".to_owned()), "{}", stderr(&ran));
    let scripts: String = (0..12).map(|index| format!("      s{index}: echo {big}\n")).collect();
    let project = project_with(&format!(
        "version: 1\nnamespace: default\nsandboxes:\n  big:\n    type: python\n    scripts:\n{scripts}"
    ));
    let refused = agent.bkgr(project.path(), &["big", "s0"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("its definition (cave.yaml's env, scripts and package lists) comes to"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
}

/// A cave.yaml whose `sandboxes:` is inline cannot be edited by `bkg rm`: it refuses before
/// anything goes (found by a new-user trial: the workspace went, cave.yaml kept the entry, and
/// rm said "removed").
#[test]
fn rm_refuses_an_inline_sandboxes_mapping_before_removing_anything() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes: { a: { type: python, scripts: { start: 'true' } }, b: { type: node } }\n",
    );
    let dir = project.path();
    let run = agent.bkgr(dir, &["a"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    for name in ["a", "b"] {
        let refused = agent.bkg_in(dir, &["rm", name, "--force", "--json"]);
        assert_eq!(code(&refused), 125, "{name}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("cannot edit"), "{name}: {}", stderr(&refused));
        assert!(refused.stdout.is_empty(), "{name}: nothing said removed");
    }
    assert_eq!(status_of(&agent, dir, "a")["name"], "a", "the sandbox that ran is still there");
}

/// A cave.yaml that cannot be written (its directory immutable, `chattr +i`, which stops root
/// too) stops `bkg rm` before the sandbox goes (found by a new-user trial: the workspace was
/// deleted first, then rm failed with "cannot write", exit 125, and `--json` said `[]`).
#[test]
fn rm_that_cannot_write_cave_yaml_removes_nothing() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: echo kept > /workspace/precious\n",
    );
    let dir = project.path();
    let run = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    struct Immutable<'a>(&'a Path);
    impl Drop for Immutable<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        }
    }
    let frozen = Command::new("chattr").arg("+i").arg(dir).status().expect("chattr");
    assert!(frozen.success(), "chattr +i");
    let immutable = Immutable(dir);
    let refused = agent.bkg_in(dir, &["rm", "box", "--force", "--json"]);
    drop(immutable);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("nothing was removed"), "{}", stderr(&refused));
    // Without the name of the temporary file it failed on, with what to do.
    assert!(stderr(&refused).contains("its directory must be one you may write in"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains(".cave.yaml."), "{}", stderr(&refused));
    let back = agent.bkg_in(dir, &["cp", "box:precious", "back"]);
    assert_eq!(code(&back), 0, "the workspace is still there: {}", stderr(&back));
    assert_eq!(std::fs::read_to_string(dir.join("back/precious")).expect("precious"), "kept\n");
    assert!(std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml").contains("box:"));
    let removed = agent.bkg_in(dir, &["rm", "box", "--force"]);
    assert_eq!(code(&removed), 0, "once it can be written: {}", stderr(&removed));
}

/// A deleted project leaves its sandbox (and its reserved disk) on the agent: from where no
/// cave.yaml is around, `bkg rm` finds it by name as `bkg stop` does, and by id.
#[test]
fn the_sandboxes_of_a_deleted_project_are_removed_by_name_or_id() {
    let agent = Agent::start();
    let nowhere = tempfile::tempdir().expect("a directory without cave.yaml");
    let ids = || -> Vec<String> {
        let listed = agent.bkg_in(nowhere.path(), &["ls", "--all", "--json"]);
        assert_eq!(code(&listed), 0, "{}", stderr(&listed));
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("ls JSON");
        listed.as_array().into_iter().flatten().map(|info| info["id"].as_str().unwrap_or("").to_owned()).collect()
    };
    for (name, by_id) in [("gone", false), ("also", true)] {
        let project = project_with(&format!(
            "version: 1\nnamespace: default\nsandboxes:\n  {name}:\n    type: python\n    scripts:\n      start: python -c 'print(1)'\n"
        ));
        let run = agent.bkgr(project.path(), &[name]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
        let id = status_of(&agent, project.path(), name)["id"].as_str().expect("id").to_owned();
        drop(project);
        assert!(ids().contains(&id));
        let target = if by_id { id.as_str() } else { name };
        let asked = agent.bkg_in(nowhere.path(), &["rm", target]);
        assert_eq!(code(&asked), 125, "{}", stderr(&asked));
        assert!(stderr(&asked).contains("--force"), "{}", stderr(&asked));
        let removed = agent.bkg_in(nowhere.path(), &["rm", target, "--force"]);
        assert_eq!(code(&removed), 0, "{}", stderr(&removed));
        // Given by its id, it is still called by its name.
        assert_eq!(stderr(&removed), format!("bkg: removed {name}\n"));
        let ids = ids();
        assert!(!ids.contains(&id), "{ids:?}");
    }
}

/// `bkg rm` in a project moved after its sandbox ran removes the cave.yaml entry, and says the
/// sandbox is still on the agent under the old directory, with what removes it (found by a
/// new-user trial: it answered `removed: true` with an id the agent never had).
#[test]
fn rm_in_a_moved_project_names_the_sandbox_left_under_the_old_directory() {
    let agent = Agent::start();
    let parent = tempfile::tempdir().expect("dir");
    let (old, new) = (parent.path().join("p5"), parent.path().join("p5m"));
    write(
        &old.join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  s2:\n    type: python\n    scripts:\n      start: python -c 'print(1)'\n",
    );
    let run = agent.bkgr(&old, &["s2"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let id = status_of(&agent, &old, "s2")["id"].as_str().expect("id").to_owned();
    std::fs::rename(&old, &new).expect("move the project");
    let removed = agent.bkg_in(&new, &["rm", "s2", "--force", "--json"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let answer: serde_json::Value = serde_json::from_slice(&removed.stdout).expect("rm JSON");
    assert_eq!(answer, serde_json::json!([{ "name": "s2", "id": null, "removed": true }]));
    assert!(
        stderr(&removed).contains(&format!("is still on the agent with its workspace: `bkg rm {id}` removes it")),
        "{}",
        stderr(&removed)
    );
    let gone = agent.bkg_in(&new, &["rm", &id, "--force"]);
    assert_eq!(code(&gone), 0, "{}", stderr(&gone));
}

/// Two projects' sandboxes of one name, asked for from where neither is: the error names both
/// ids with their projects (found by a new-user trial: it sent the user to `bkg ls --all`, whose
/// table shows no ids).
#[test]
fn a_name_two_projects_use_is_answered_with_both_ids() {
    let agent = Agent::start();
    let nowhere = tempfile::tempdir().expect("a directory without cave.yaml");
    let cave = "version: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: python -c 'print(1)'\n";
    let (first, second) = (project_with(cave), project_with(cave));
    let mut ids = Vec::new();
    for project in [&first, &second] {
        let run = agent.bkgr(project.path(), &["api"]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
        ids.push(status_of(&agent, project.path(), "api")["id"].as_str().expect("id").to_owned());
    }
    let asked = agent.bkg_in(nowhere.path(), &["status", "api"]);
    assert_eq!(code(&asked), 125, "{}", stderr(&asked));
    for (id, project) in ids.iter().zip([&first, &second]) {
        assert!(
            stderr(&asked).contains(&format!("{id} (of {}, namespace default)", project.path().display())),
            "{}",
            stderr(&asked)
        );
    }
    let by_id = agent.bkg_in(nowhere.path(), &["status", &ids[1], "--json"]);
    assert_eq!(code(&by_id), 0, "{}", stderr(&by_id));
}

#[test]
fn two_sandboxes_interleave_prefixed_output_and_the_failure_decides_the_exit_code() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  slow:\n    type: python\n    scripts:\n      start: python /project/slow.py\n  fails:\n    type: node\n    scripts:\n      start: node /project/fails.js\n",
    );
    let dir = project.path();
    write(&dir.join("slow.py"), "import time\nprint('slow 1')\ntime.sleep(1.5)\nprint('slow 2')\n");
    write(
        &dir.join("fails.js"),
        "console.log('fails 1');\nsetTimeout(() => { console.log('fails 2'); process.exit(3); }, 500);\n",
    );
    let output = agent.bkgr(dir, &[]);
    assert_eq!(code(&output), 3, "stdout: {} stderr: {}", stdout(&output), stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    let position = |wanted: &str| lines.iter().position(|line| line == wanted);
    for line in ["slow  | slow 1", "slow  | slow 2", "fails | fails 1", "fails | fails 2"] {
        assert!(position(line).is_some(), "missing {line:?} in {lines:?}");
    }
    assert!(position("fails | fails 2") < position("slow  | slow 2"), "output is interleaved live: {lines:?}");
    assert!(position("slow  | slow 1") < position("fails | fails 2"), "output is interleaved live: {lines:?}");
    // Each failure is said with its own code: one exit code cannot tell whose it was.
    assert!(stderr(&output).contains("bkgr: fails: exited with 3\n"), "{}", stderr(&output));
}

/// Ctrl-C is what the user did last: after it bkgr exits 130, though a sandbox failed before
/// (found by a new-user trial: it exited with that sandbox's 5).
#[test]
fn ctrl_c_after_a_failure_exits_130() {
    use std::io::BufRead;
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  slow:\n    type: python\n    scripts:\n      start: python -c 'import time; time.sleep(60)'\n  fails:\n    type: python\n    scripts:\n      start: python -c 'raise SystemExit(5)'\n",
    );
    let mut child = Command::new(bkg_tests::bin_dir().join("bkgr"))
        .current_dir(project.path())
        .env("BKG_SOCKET", &agent.socket)
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bkgr");
    let mut said = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("fails: exited with 5") {
        line.clear();
        assert!(said.read_line(&mut line).expect("stderr") > 0, "bkgr ended before the failure was said");
    }
    // SAFETY: kill(2) on the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(child.wait().expect("bkgr").code(), Some(130));
}

#[test]
fn detach_logs_and_stop() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  ticker:\n    type: python\n    limits: { timeout: 2m }\n    scripts:\n      start: python /project/ticker.py\n",
    );
    let dir = project.path();
    write(
        &dir.join("ticker.py"),
        "import time\nfor i in range(1000):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n",
    );
    let detached = agent.bkgr(dir, &["-d", "ticker"]);
    assert_eq!(code(&detached), 0, "stderr: {}", stderr(&detached));
    assert!(stdout(&detached).starts_with("ticker\trun_"), "{}", stdout(&detached));

    assert_eq!(status_of(&agent, dir, "ticker")["state"], "running");

    eventually("the log shows two ticks", || {
        let logs = stdout(&agent.bkg_in(dir, &["logs", "ticker"]));
        if logs.starts_with("tick 0\ntick 1\n") { Ok(()) } else { Err(logs) }
    });

    let busy = agent.bkgr(dir, &["ticker"]);
    assert_eq!(code(&busy), 125, "a second run of a running sandbox is refused");
    assert_eq!(stderr(&busy), "bkgr: sandbox `ticker` is already running: stop it first (`bkg stop ticker`)\n");
    // Detached, a refusal is said after the sandbox's name, as for `bkgr -d` of every sandbox.
    let busy = agent.bkgr(dir, &["-d", "ticker"]);
    assert_eq!(code(&busy), 125, "a second run of a running sandbox is refused");
    assert_eq!(
        (stdout(&busy).as_str(), stderr(&busy).as_str()),
        ("", "bkgr: ticker: sandbox `ticker` is already running: stop it first (`bkg stop ticker`)\n")
    );

    let stop = agent.bkg_in(dir, &["stop", "ticker"]);
    assert_eq!(code(&stop), 0);
    let status = status_of(&agent, dir, "ticker");
    assert_eq!(status["state"], "idle");
    assert_eq!(status["last_run"]["killed_by"], "cancelled");
}

#[test]
fn volumes_are_bound_as_declared_and_may_not_leave_the_project() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    write(&dir.join("data/in.txt"), "from the host\n");
    write(
        &dir.join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  reader:\n    type: python\n    volumes: [ \"./data:/workspace/data:ro\" ]\n    scripts:\n      start: cat /workspace/data/in.txt && (echo x > /workspace/data/new 2>/dev/null || echo read-only)\n",
    );
    let output = agent.bkgr(dir, &["reader"]);
    assert_eq!(stdout(&output), "from the host\nread-only\n", "stderr: {}", stderr(&output));

    let outside = tempfile::tempdir().expect("outside dir");
    write(
        &dir.join("cave.yaml"),
        &format!(
            "version: 1\nnamespace: default\nsandboxes:\n  reader:\n    type: python\n    volumes: [ \"{}:/workspace/data\" ]\n    scripts:\n      start: ls /workspace/data\n",
            outside.path().display()
        ),
    );
    let refused = agent.bkgr(dir, &["reader"]);
    assert_eq!(code(&refused), 125);
    assert!(stderr(&refused).contains("--allow-outside"), "{}", stderr(&refused));
    let allowed = agent.bkgr(dir, &["reader", "--allow-outside"]);
    assert_eq!(code(&allowed), 0, "stderr: {}", stderr(&allowed));
}

#[test]
fn a_missing_sandbox_or_script_is_one_clear_line() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    write(
        &project.path().join("cave.yaml"),
        "version: 1\nnamespace: default\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: python -V\n",
    );
    let missing = agent.bkgr(project.path(), &["web"]);
    assert_eq!(code(&missing), 125);
    assert_eq!(stderr(&missing), "bkgr: no sandbox `web` in cave.yaml (it has: api)\n");
    // The other commands that take a sandbox's name say the same, not that `web` has not run
    // yet or that bkgr would run it.
    for command in [
        &["logs", "web"][..],
        &["status", "web"],
        &["stop", "web"],
        &["exec", "web", "-c", "1"],
        &["cp", "cave.yaml", "web:"],
    ] {
        let missing = agent.bkg_in(project.path(), command);
        assert_eq!(code(&missing), 125, "{command:?}");
        assert_eq!(stderr(&missing), "bkg: no sandbox `web` in cave.yaml (it has: api)\n", "{command:?}");
    }
    let not_run = agent.bkg_in(project.path(), &["logs", "api"]);
    assert!(stderr(&not_run).contains("`bkgr api` runs it"), "{}", stderr(&not_run));
    // Stopping a declared sandbox that never ran leaves it as asked: not running.
    let stopped = agent.bkg_in(project.path(), &["stop", "api"]);
    assert_eq!((code(&stopped), stderr(&stopped).as_str()), (0, "bkg: sandbox `api` was not running\n"));
    // A cave.yaml that does not load cannot say whether it declares `api`: its problem is said,
    // not that it has no such sandbox.
    let cave = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    write(
        &project.path().join("cave.yaml"),
        &cave.replace("    type: python\n", "    type: python\n    colour: red\n"),
    );
    let broken_cave = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    // Every command says so (found by a new-user trial: `status` and `logs` advised `bkgr`);
    // `bkg rm api` takes the invalid entry out (an_invalid_sandbox_keeps_neither_the_others_…).
    for command in [&["stop", "api"][..], &["status", "api"], &["logs", "api"], &["status", "typo"]] {
        let broken = agent.bkg_in(project.path(), command);
        assert_eq!(code(&broken), 125, "{command:?}: {}", stderr(&broken));
        assert!(
            stderr(&broken).contains("/sandboxes/api/colour: additional property \"colour\" is not allowed"),
            "{command:?}: {}",
            stderr(&broken)
        );
    }
    assert_eq!(std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml"), broken_cave);
    write(&project.path().join("cave.yaml"), &cave);
    let no_script = agent.bkgr(project.path(), &["api", "test"]);
    assert_eq!(stderr(&no_script), "bkgr: sandbox `api` has no script `test` (it has: start)\n");
    // Without a name, a sandbox without the script is left out with a note; the others run.
    write(
        &project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: echo up\n  \
         web:\n    type: python\n    scripts:\n      test: echo tested\n",
    );
    let all = agent.bkgr(project.path(), &[]);
    assert_eq!(code(&all), 0, "{}", stderr(&all));
    assert!(stdout(&all).contains("up"), "{}", stdout(&all));
    assert_eq!(stderr(&all), "bkgr: sandbox `web` has no script `start` (it has: test): left out\n");
    write(
        &project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  web:\n    type: python\n    scripts:\n      test: echo tested\n",
    );
    let none = agent.bkgr(project.path(), &[]);
    assert_eq!(code(&none), 125, "{}", stderr(&none));
    assert!(stderr(&none).starts_with("bkgr: no sandbox has a script `start`: sandbox `web`"), "{}", stderr(&none));
    let nowhere = tempfile::tempdir().expect("empty dir");
    let no_project = agent.bkgr(nowhere.path(), &[]);
    assert_eq!(code(&no_project), 125);
    assert!(stderr(&no_project).contains("no cave.yaml"), "{}", stderr(&no_project));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read example").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_name() == ".bkg" {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn the_example_projects_run_in_their_sandboxes() {
    let agent = Agent::start();
    for (example, expected) in [
        ("python-worker", "worker | saved 3 results to /workspace/results.json"),
        ("node-script", "distinct words, table saved to /workspace/counts.json"),
        ("multi", "web | 3 orders rendered to /workspace/orders.html"),
    ] {
        let project = tempfile::tempdir().expect("project dir");
        copy_tree(&bkg_tests::examples_dir().join(example), project.path());
        let output = agent.bkgr(project.path(), &[]);
        assert_eq!(code(&output), 0, "{example}: stdout {} stderr {}", stdout(&output), stderr(&output));
        assert!(stdout(&output).contains(expected), "{example}: {}", stdout(&output));
    }
}

/// A project folder as `mktemp -d` or `umask 077` make it: mode 0700.
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("project dir");
    std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).expect("chmod");
    dir
}

/// Gives `path` and everything under it to `uid`, files 0600 and folders 0700.
fn make_private(path: &Path, uid: u32) {
    lchown(path, Some(uid), Some(uid)).expect("chown");
    let meta = std::fs::symlink_metadata(path).expect("stat");
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            make_private(&entry.path(), uid);
        }
    }
}

#[test]
fn the_project_bkg_init_makes_runs_as_generated() {
    let agent = Agent::start();
    for (language, name, start) in [("python", "app", "start: python main.py"), ("node", "web", "start: node main.js")]
    {
        // Owned by root, mode 0700: the sandbox user is not the owner.
        let project = private_dir();
        let dir = project.path();
        let init = agent.bkg_in(dir, &["init", "--yes", "--sandbox", name, "--type", language]);
        assert_eq!(code(&init), 0, "init: {}", stderr(&init));
        let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
        assert!(cave.contains(start), "{cave}");
        let output = agent.bkgr(dir, &[name]);
        assert_eq!(code(&output), 0, "{language}: stderr {}", stderr(&output));
        assert_eq!(stdout(&output), format!("hello from {name}\n"));
    }
}

#[test]
fn a_private_project_and_volume_read_and_write_as_their_owner_sees_them() {
    const OWNER: u32 = 1234;
    const STRANGER: u32 = 4321;
    let agent = Agent::start();
    // A project in a private home folder, as on Debian 12: neither can the sandbox user traverse.
    let home = private_dir();
    let dir = &home.path().join("app");
    std::fs::create_dir(dir).expect("project dir");
    let init = agent.bkg_in(dir, &["init", "--yes"]);
    assert_eq!(code(&init), 0, "init: {}", stderr(&init));
    let add = agent.bkg_in(dir, &["add", "app", "--type", "python", "--volume", "./vol:/workspace/vol:rw"]);
    assert_eq!(code(&add), 0, "add: {}", stderr(&add));
    write(
        &dir.join("main.py"),
        "import os\nimport helper\nprint(helper.greeting())\nprint(open('data/notes.txt').read().strip())\n\
         st = os.stat('main.py')\nprint('mine', st.st_uid, st.st_gid)\nprint('theirs', os.stat('secret.txt').st_uid)\n\
         try:\n    open('secret.txt').read()\n    print('read the secret')\nexcept PermissionError:\n    print('secret unreadable')\n\
         try:\n    open('new.txt', 'w')\nexcept OSError as error:\n    print('project', error.strerror)\n\
         print(open('/workspace/vol/in.txt').read().strip())\nopen('/workspace/vol/out.txt', 'w').write('from the sandbox')\n\
         try:\n    os.chmod('/workspace/vol/out.txt', 0o4755)\n    print('setuid allowed')\n\
         except PermissionError:\n    print('setuid refused')\n",
    );
    write(&dir.join("helper.py"), "def greeting():\n    return 'hello from helper'\n");
    write(&dir.join("data/notes.txt"), "private notes\n");
    write(&dir.join("vol/in.txt"), "from the volume\n");
    make_private(home.path(), OWNER);
    write(&dir.join("secret.txt"), "not yours\n");
    make_private(&dir.join("secret.txt"), STRANGER);

    let output = agent.bkgr(dir, &["app"]);
    assert_eq!(code(&output), 0, "stdout: {} stderr: {}", stdout(&output), stderr(&output));
    assert_eq!(
        stdout(&output),
        "hello from helper\nprivate notes\nmine 1000 1000\ntheirs 65534\nsecret unreadable\n\
         project Read-only file system\nfrom the volume\nsetuid refused\n"
    );
    let written = std::fs::metadata(dir.join("vol/out.txt")).expect("the sandbox wrote to the volume");
    assert_eq!((written.uid(), written.gid()), (OWNER, OWNER), "it lands on the host as the owner's");
    assert_eq!(written.mode() & 0o6000, 0, "and never setuid or setgid");
    let main = std::fs::metadata(dir.join("main.py")).expect("main.py");
    assert_eq!((main.uid(), main.mode() & 0o7777), (OWNER, 0o600), "the host's owner and modes stay");

    // `bkg exe` sends the script's bytes, read by the caller: a private script runs too.
    let script = dir.join("helper.py");
    let exe = agent.exe(&[script.to_str().expect("utf-8 path")]);
    assert_eq!(code(&exe), 0, "stderr: {}", stderr(&exe));
}

/// A ramfs mounted on a fresh folder for one test, unmounted when dropped.
struct Ramfs {
    dir: tempfile::TempDir,
}

impl Ramfs {
    fn mount() -> Self {
        let dir = private_dir();
        let status = Command::new("mount").args(["-t", "ramfs", "bkg-test"]).arg(dir.path()).status().expect("mount");
        assert!(status.success(), "mount a ramfs");
        Self { dir }
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_project_whose_filesystem_cannot_be_idmapped_is_refused_in_one_line() {
    let agent = Agent::start();
    // ramfs has no idmapped mounts.
    let ramfs = Ramfs::mount();
    let dir = ramfs.dir.path();
    let init = agent.bkg_in(dir, &["init", "--yes", "--sandbox", "app"]);
    assert_eq!(code(&init), 0, "init: {}", stderr(&init));
    let refused = agent.bkgr(dir, &["app"]);
    assert_eq!(code(&refused), 125, "stdout: {}", stdout(&refused));
    let line = stderr(&refused);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(&format!("show {} at /project", dir.display())), "{line}");
    assert!(line.contains("move it to a local filesystem such as ext4"), "{line}");
}

/// `bkg exec` sees cave.yaml as it is now, not as the last `bkgr` gave it; and giving the agent
/// a definition it has already (every bkgr does) is not stored or audited again.
/// A sandbox removed and made again under its name lists only its own runs, though it has the
/// same id (found by a new-user trial: the removed one's runs were listed as its, and its last
/// run was theirs).
#[test]
fn a_sandbox_made_again_lists_only_its_own_runs() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let dir = dir.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=true"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let runs_of_box = || {
        let listed = agent.bkg_in(dir, &["runs", "ls", "--sandbox", "box", "--json"]);
        assert_eq!(code(&listed), 0, "{}", stderr(&listed));
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("runs JSON");
        listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|run| run["id"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    for _ in 0..2 {
        let run = agent.bkgr(dir, &["box"]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
    }
    assert_eq!(runs_of_box().len(), 2);
    let removed = agent.bkg_in(dir, &["rm", "box", "--force"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=true"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let run = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let listed = runs_of_box();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["last_run"]["id"].as_str(), Some(listed[0].as_str()), "{status}");
}

/// What a sandbox opens is in its signed record: the hosts its runs may reach, the host ports it
/// listens on and the names of its secrets, never their values (found by a new-user trial: a
/// namespace key opened a host port and the record did not say so).
#[test]
fn a_sandbox_s_record_names_its_network_ports_and_secrets() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let dir = dir.path();
    agent.set_secret("DB_PASSWORD", "hunter2-value");
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=true"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    let opened =
        "    network:\n      allow: [example.com]\n    ports: [\"127.0.0.1:18765:8000\"]\n    secrets: [DB_PASSWORD]\n";
    write(&dir.join("cave.yaml"), &cave.replace("    scripts:\n", &format!("{opened}    scripts:\n")));
    let run = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let tail = agent.bkg().args(["audit", "tail", "-n", "100", "--json", "--state-dir"]).arg(&agent.state_dir).output();
    let tail = String::from_utf8_lossy(&tail.expect("bkg audit tail").stdout).into_owned();
    let created = tail.lines().find(|line| line.contains("\"sandbox.created\"")).expect("a sandbox.created record");
    let record: serde_json::Value = serde_json::from_str(created).expect("a JSON record");
    let details = &record["details"];
    assert_eq!(details["network"], serde_json::json!(["example.com"]), "{record}");
    assert_eq!(details["ports"], serde_json::json!(["127.0.0.1:18765:8000"]), "{record}");
    assert_eq!(details["secrets"], serde_json::json!(["DB_PASSWORD"]), "{record}");
    assert!(!tail.contains("hunter2-value"), "a secret's value in the audit log");
}

#[test]
fn exec_sees_an_edited_cave_yaml_and_an_unchanged_definition_is_not_audited_again() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--env", "MODE=one", "--script", "start=true"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    for _ in 0..2 {
        let run = agent.bkgr(dir, &["box"]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
    }
    // How many times the sandbox was recorded as created, and as given another definition.
    let definitions = || {
        let tail = agent
            .bkg()
            .args(["audit", "tail", "-n", "1000", "--json", "--state-dir"])
            .arg(&agent.state_dir)
            .output()
            .expect("bkg audit tail");
        let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
        (tail.matches("\"sandbox.created\"").count(), tail.matches("\"sandbox.updated\"").count())
    };
    assert_eq!(definitions(), (1, 0), "the second bkgr gave the same definition");

    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert!(cave.contains("MODE: one"), "{cave}");
    write(&dir.join("cave.yaml"), &cave.replace("MODE: one", "MODE: two"));
    let shown = agent.bkg_in(dir, &["exec", "box", "-c", "import os; print(os.environ['MODE'])"]);
    assert_eq!((code(&shown), stdout(&shown)), (0, "two\n".to_owned()), "{}", stderr(&shown));
    assert_eq!(definitions(), (1, 1), "the edited definition was given once, as an update");
}

/// `bkgr NAME --memory …` holds for that run (and a detached one's restarts) only: the
/// sandbox's limits stay cave.yaml's, in `bkg status` and for the next plain `bkgr`.
#[test]
fn limit_flags_of_bkgr_hold_for_that_run_only() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nsandboxes:\n  box:\n    type: python\n    limits: { memory: 128MiB }\n    scripts:\n      start: 'true'\n",
    );
    let dir = project.path();
    let status = || status_of(&agent, dir, "box");
    let mib = 1024 * 1024;
    for args in [&["box", "--memory", "256MiB"][..], &["-d", "box", "--memory", "256MiB"][..]] {
        let run = agent.bkgr(dir, args);
        assert_eq!(code(&run), 0, "{args:?}: {}", stderr(&run));
        // A detached run may not have begun yet when `bkgr -d` returns, so the agent's having
        // no run going on says nothing: the sandbox itself must be idle again.
        let info = eventually("the run ends", || {
            let info = status();
            if info["state"] == "idle" { Ok(info) } else { Err(info.to_string()) }
        });
        assert_eq!(info["limits"]["memory_bytes"], 128 * mib, "{args:?}: the sandbox's own: {info}");
        assert_eq!(info["last_run"]["limits"]["memory_bytes"], 256 * mib, "{args:?}: the run's: {info}");
    }
    let plain = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&plain), 0, "{}", stderr(&plain));
    assert_eq!(status()["last_run"]["limits"]["memory_bytes"], 128 * mib, "the next plain run has cave.yaml's");
}

/// `bkg status` shows what a sandbox's disk holds, not the host space reserved for all of it.
#[test]
fn status_shows_what_the_disk_holds() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: 'true'\n      \
         fill: python3 -c \"open('/workspace/f', 'wb').write(b'x' * (40 << 20))\"\n",
    );
    let dir = project.path();
    let held = |script: &str| {
        let run = agent.bkgr(dir, &["box", script]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
        agent.wait_idle();
        status_of(&agent, dir, "box")["disk_bytes_allocated"].as_u64().unwrap_or_default()
    };
    let mib = 1024 * 1024;
    let empty = held("start");
    assert!(empty < 16 * mib, "a fresh 500MiB disk holds {empty} bytes");
    let filled = held("fill");
    assert!(filled >= empty + 40 * mib && filled < 100 * mib, "after 40MiB written: {filled} bytes");
}

/// `bkg ls` and `bkg status` show the definition the agent was last given; when cave.yaml has
/// changed since, they say what and when it applies (found by a new-user trial: the old limits
/// were shown with no word).
#[test]
fn ls_and_status_say_when_cave_yaml_changed_since_the_last_run() {
    let agent = Agent::start();
    let project = project_with("version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: 'true'\n");
    let dir = project.path();
    let run = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let unchanged = agent.bkg_in(dir, &["status", "box"]);
    assert!(!stderr(&unchanged).contains("changed"), "{}", stderr(&unchanged));

    write(
        &dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  box:\n    type: node\n    limits:\n      memory: 256MiB\n    scripts:\n      start: 'true'\n",
    );
    let said = "box: changed in cave.yaml since its last run (type python → node, memory 512MiB → 256MiB); \
                applied at its next run (`bkgr box`)";
    for command in [&["status", "box"][..], &["ls"]] {
        let shown = agent.bkg_in(dir, command);
        assert_eq!(code(&shown), 0, "{}", stderr(&shown));
        assert!(stdout(&shown).contains("python"), "the agent's definition is shown: {}", stdout(&shown));
        assert!(stderr(&shown).contains(said), "{command:?}: {}", stderr(&shown));
    }
    let run = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    let applied = agent.bkg_in(dir, &["status", "box"]);
    assert!(stdout(&applied).contains("memory 256MiB"), "{}", stdout(&applied));
    assert!(!stderr(&applied).contains("changed"), "{}", stderr(&applied));
}

/// A name the project does not declare is looked for elsewhere by every command alike, and said
/// when found there; of several with that name, the one of the directory bkg runs in is taken,
/// also when its cave.yaml is gone (found by a new-user trial: `exec` used another project's
/// sandbox silently while `status` and `stop` refused it, and a project without its cave.yaml
/// was told to run bkg from its own directory).
#[test]
fn a_sandbox_of_another_project_is_named_when_used_and_the_own_directorys_comes_first() {
    let agent = Agent::start();
    let cave = "version: 1\nsandboxes:\n  api:\n    type: python\n    scripts:\n      start: 'true'\n";
    let (first, second) = (project_with(cave), project_with(cave));
    for project in [&first, &second] {
        let run = agent.bkgr(project.path(), &["api"]);
        assert_eq!(code(&run), 0, "{}", stderr(&run));
    }
    let other = project_with("version: 1\nsandboxes:\n  small:\n    type: python\n");
    std::fs::remove_file(second.path().join("cave.yaml")).expect("rm cave.yaml");

    // Two sandboxes named api: from the second's directory, its own.
    let own = agent.bkg_in(second.path(), &["status", "api", "--json"]);
    assert_eq!(code(&own), 0, "{}", stderr(&own));
    let info: serde_json::Value = serde_json::from_slice(&own.stdout).expect("status JSON");
    assert_eq!(info["project_dir"].as_str(), second.path().to_str(), "{info}");
    assert_eq!(info["has_project"], true, "{info}");
    // From a project with neither: the name is ambiguous.
    let ambiguous = agent.bkg_in(other.path(), &["status", "api"]);
    assert_eq!(code(&ambiguous), 125, "{}", stderr(&ambiguous));
    assert!(stderr(&ambiguous).contains("more than one sandbox is named `api`"), "{}", stderr(&ambiguous));

    // With one left, every command takes it, and says whose it is.
    let removed = agent.bkg_in(second.path(), &["rm", "api", "--force", "-C", first.path().to_str().expect("utf-8")]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let said = format!("`api` is not in this project's cave.yaml: using sandbox api of {}", second.path().display());
    // `runs ls --sandbox` too (found by a new-user trial: it knew the project's own only).
    for command in
        [&["status", "api"][..], &["exec", "api", "-c", "1"], &["stop", "api"], &["runs", "ls", "--sandbox", "api"]]
    {
        let output = agent.bkg_in(other.path(), command);
        assert_eq!(code(&output), 0, "{command:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(&said), "{command:?}: {}", stderr(&output));
    }
    let runs = agent.bkg_in(other.path(), &["runs", "ls", "--sandbox", "api", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    let id = bkg_schema::sandbox::sandbox_id(&second.path().to_string_lossy(), "api");
    assert!(
        runs.as_array().is_some_and(|runs| !runs.is_empty() && runs.iter().all(|run| run["sandbox_id"] == id.as_str())),
        "{runs}"
    );
}

/// A bkgr whose run another terminal stops says what may have stopped it, not just "cancelled".
#[test]
fn a_bkgr_stopped_from_elsewhere_says_what_can_stop_it() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=echo started; sleep 600"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let running = std::thread::scope(|scope| {
        let running = scope.spawn(|| agent.bkgr(dir, &["box"]));
        // Once the script says so, its shell has set its trap and waits for `sleep`: a stop
        // before that would end the shell itself, which then prints nothing.
        eventually("the script has started", || {
            let logs = agent.bkg_in(dir, &["logs", "box"]);
            if stdout(&logs).contains("started") { Ok(()) } else { Err(format!("{logs:?}")) }
        });
        let stopped = agent.bkg_in(dir, &["stop", "box"]);
        assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
        running.join().expect("bkgr's thread")
    });
    assert_eq!(code(&running), 130, "{}", stderr(&running));
    // The script's shell, whose command the stop ended with SIGTERM, says so first (as `sh -c` does
    // on a terminal); bkgr's own word is one line.
    assert_eq!(
        stderr(&running),
        "Terminated\nbkgr: box: stopped (`bkg stop`, `bkg rm` or `bkg runs cancel`, its API key was revoked, \
         rotated, deleted or expired, or its user was taken out of the agent's group)\n"
    );
}

/// `bkgr ARGS` in the project at `dir` with its stdout and stderr on one pipe: what it wrote
/// there, once it has succeeded.
fn bkgr_on_one_pipe(agent: &Agent, dir: &Path, args: &[&str]) -> String {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut bkgr = agent.bkgr_command(dir, args);
    bkgr.stdout(writer.try_clone().expect("dup the pipe")).stderr(writer);
    let mut child = bkgr.spawn().expect("bkgr");
    // Our copies of the pipe's writing end are in `bkgr`: closed, so that reading ends with it.
    drop(bkgr);
    let mut both = String::new();
    std::io::Read::read_to_string(&mut reader, &mut both).expect("bkgr's output");
    assert!(child.wait().expect("bkgr").success(), "{both}");
    both
}

/// `bkgr NAME 2>&1`: the command's stdout and stderr on one pipe come in the order it wrote
/// them, and its log keeps that order (was: in pieces of each stream; found by a new-user trial).
#[test]
fn bkgr_with_stdout_and_stderr_on_one_pipe_keeps_their_order_and_so_does_the_log() {
    let agent = Agent::start();
    let project =
        project_with("version: 1\nsandboxes:\n  mix:\n    type: python\n    scripts:\n      start: python mix.py\n");
    let dir = project.path();
    write(
        &dir.join("mix.py"),
        "import sys\nfor i in range(200):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n",
    );
    let both = bkgr_on_one_pipe(&agent, dir, &["mix"]);
    let expected: String = (0..200).map(|i| format!("out {i}\nerr {i}\n")).collect();
    assert_eq!(both, expected);
    let logs = agent.bkg_in(dir, &["logs", "mix"]);
    assert_eq!((code(&logs), stdout(&logs)), (0, expected.clone()), "{}", stderr(&logs));

    // Every sandbox at once, each line after its name (found by a second new-user trial).
    let both = bkgr_on_one_pipe(&agent, dir, &[]);
    let prefixed: String = expected.lines().map(|line| format!("mix | {line}\n")).collect();
    assert_eq!(both, prefixed);

    // Detached, its output is the log alone: one stream, in the order written.
    let detached = agent.bkgr(dir, &["-d", "mix"]);
    assert_eq!(code(&detached), 0, "{}", stderr(&detached));
    eventually("the detached run's end", || {
        let status = status_of(&agent, dir, "mix");
        match status["current_run"].is_null() {
            true => Ok(()),
            false => Err(status.to_string()),
        }
    });
    let logs = agent.bkg_in(dir, &["logs", "mix"]);
    assert_eq!((code(&logs), stdout(&logs)), (0, expected), "{}", stderr(&logs));
}

/// A persistent sandbox's disk image mounted on the host for one test (the agent done with it:
/// its loop device gone), unmounted when dropped.
struct MountedImage {
    dir: tempfile::TempDir,
}

impl MountedImage {
    fn mount(image: &Path) -> Self {
        eventually("the agent releases the disk", || {
            let found = Command::new("losetup").arg("-j").arg(image).output().map_err(|error| error.to_string())?;
            match found.stdout.is_empty() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&found.stdout).into_owned()),
            }
        });
        let dir = private_dir();
        let status = Command::new("mount").args(["-o", "loop"]).arg(image).arg(dir.path()).status().expect("mount");
        assert!(status.success(), "mount {}", image.display());
        Self { dir }
    }

    /// uid and gid on the disk of `path` (relative to the disk's root).
    fn owner_of(&self, path: &str) -> (u32, u32) {
        let meta = std::fs::symlink_metadata(self.dir.path().join(path)).expect("stat on the disk");
        (meta.uid(), meta.gid())
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A project with one python sandbox `keep` whose `write` script writes its argument's file in
/// /workspace and lists every file there with its owner as the code sees it.
fn keeping_project(agent: &Agent) -> (tempfile::TempDir, std::path::PathBuf) {
    let project = private_dir();
    let dir = project.path();
    let init = agent.bkg_in(dir, &["init", "--yes", "--sandbox", "keep", "--type", "python"]);
    assert_eq!(code(&init), 0, "init: {}", stderr(&init));
    write(
        &dir.join("write.py"),
        "import os, sys\nos.makedirs('/workspace/d', exist_ok=True)\nopen(f'/workspace/d/{sys.argv[1]}', 'a').write('x')\n\
         for name in sorted(os.listdir('/workspace/d')):\n    st = os.stat(f'/workspace/d/{name}')\n    print(name, st.st_uid, st.st_gid, open(f'/workspace/d/{name}').read())\n",
    );
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    write(&dir.join("cave.yaml"), &cave.replace("      start: python main.py", "      write: python write.py"));
    let id = bkg_schema::sandbox::sandbox_id(&dir.to_string_lossy(), "keep");
    let image = agent.state_dir.join("workspaces/default").join(id).join("disk.img");
    (project, image)
}

/// Each run of a persistent sandbox has its own host uid, yet its files are kept on the disk as
/// the sandbox user's (1000) whoever wrote them, and shown to every run as its own through an
/// idmapped mount: no run walks the workspace to hand the files over (docs/architecture.md).
#[test]
fn a_persistent_sandbox_s_files_stay_the_sandbox_user_s_on_its_disk_across_runs() {
    let agent = Agent::start();
    let (project, image) = keeping_project(&agent);
    let first = agent.bkgr(project.path(), &["keep", "write", "--", "a"]);
    assert_eq!((code(&first), stdout(&first).as_str()), (0, "a 1000 1000 x\n"), "{}", stderr(&first));
    let second = agent.bkgr(project.path(), &["keep", "write", "--", "a"]);
    assert_eq!(stdout(&second), "a 1000 1000 xx\n", "the second run writes the first's file: {}", stderr(&second));
    let upload = tempfile::tempdir().expect("upload dir");
    write(&upload.path().join("b"), "y");
    let cp = agent.bkg_in(project.path(), &["cp", &upload.path().join("b").to_string_lossy(), "keep:d"]);
    assert_eq!(code(&cp), 0, "cp: {}", stderr(&cp));
    let third = agent.bkgr(project.path(), &["keep", "write", "--", "c"]);
    assert_eq!(stdout(&third), "a 1000 1000 xx\nb 1000 1000 y\nc 1000 1000 x\n", "{}", stderr(&third));

    let disk = MountedImage::mount(&image);
    for path in ["workspace", "workspace/d", "workspace/d/a", "workspace/d/b", "workspace/d/c"] {
        assert_eq!(disk.owner_of(path), (1000, 1000), "{path} on the disk");
    }
}

/// An earlier agent handed a persistent workspace to each run's own uid, so its disk holds the
/// files of its last run's uid: the next sandbox gives them to the sandbox user once, and its
/// code can write them.
#[test]
fn a_workspace_an_earlier_agent_left_to_its_last_run_s_uid_is_handed_over_once() {
    let agent = Agent::start();
    let (project, image) = keeping_project(&agent);
    let first = agent.bkgr(project.path(), &["keep", "write", "--", "a"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    {
        let disk = MountedImage::mount(&image);
        let old_run = 4_000_123;
        for path in ["workspace", "workspace/d", "workspace/d/a"] {
            lchown(disk.dir.path().join(path), Some(old_run), Some(old_run)).expect("chown as an earlier agent did");
        }
    }
    let second = agent.bkgr(project.path(), &["keep", "write", "--", "a"]);
    assert_eq!((code(&second), stdout(&second).as_str()), (0, "a 1000 1000 xx\n"), "{}", stderr(&second));
    let disk = MountedImage::mount(&image);
    for path in ["workspace", "workspace/d", "workspace/d/a"] {
        assert_eq!(disk.owner_of(path), (1000, 1000), "{path} on the disk");
    }
}

/// A cave.yaml of one python sandbox `v` with a `sh` script and `volumes`.
fn volume_cave(volumes: &[&str]) -> String {
    let volumes = volumes.iter().map(|volume| format!("\"{volume}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "version: 1\nnamespace: default\nsandboxes:\n  v:\n    type: python\n    volumes: [ {volumes} ]\n    scripts:\n      sh: sh -c\n"
    )
}

/// `bkg cp NAME:. DIR` of a sandbox with a volume copies the rest and names the volume left out
/// (its files are the host's already); a copy into the volume is refused with where its files
/// are (was: the whole download refused, "leads out of /workspace"; found by a new-user trial).
#[test]
fn a_download_of_a_workspace_with_a_volume_leaves_the_volume_out_and_says_so() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    write(&dir.join("shared").join("host.txt"), "the host's");
    write(&dir.join("cave.yaml"), &volume_cave(&["./shared:/workspace/shared:rw"]));
    let made = agent.bkgr(dir, &["v", "sh", "--", "echo made > /workspace/own.txt"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let copied = agent.bkg_in(dir, &["cp", "v:.", "all"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(dir.join("all/own.txt")).expect("own.txt"), "made\n");
    assert!(!dir.join("all/shared").exists(), "the volume is not copied");
    assert!(
        stderr(&copied)
            .contains("bkg: left out all/shared: a volume mounted into the sandbox; its files are this host's"),
        "{}",
        stderr(&copied)
    );
    let into = agent.bkg_in(dir, &["cp", "cave.yaml", "v:shared"]);
    assert_eq!(code(&into), 125, "{}", stderr(&into));
    // The host's folder is named (found by a new-user trial: the refusal named a volume or a
    // link, and neither folder).
    let said = format!(
        "bkg: /workspace/shared is in volume /workspace/shared, this host's folder {}: copy into that folder instead\n",
        dir.join("shared").display()
    );
    assert_eq!(stderr(&into), said);
}

/// A persistent /workspace holds what earlier runs' code made, links among them, and pid 1
/// makes a volume's mount point there as root before the root is pivoted: a link on the way,
/// absolute or relative, is refused in one line and nothing is made where it points (was: the
/// host's folder it named got the missing folders, as root, and the volume was not mounted).
#[test]
fn a_link_the_code_left_on_a_volume_s_path_is_refused_and_nothing_is_made_through_it() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    let host = tempfile::tempdir().expect("a host folder");
    std::fs::create_dir(dir.join("data")).expect("the volume's folder");
    write(&dir.join("cave.yaml"), &volume_cave(&[]));
    let relative = format!("../../../../../../../../../..{}", host.path().display());
    let links = agent.bkgr(
        dir,
        &[
            "v",
            "sh",
            "--",
            &format!("ln -s {} /workspace/abs && ln -s {relative} /workspace/rel", host.path().display()),
        ],
    );
    assert_eq!(code(&links), 0, "{}", stderr(&links));
    for link in ["abs", "rel"] {
        write(&dir.join("cave.yaml"), &volume_cave(&[&format!("./data:/workspace/{link}/made/deeper:ro")]));
        let refused = agent.bkgr(dir, &["v", "sh", "--", "true"]);
        assert_eq!(code(&refused), 125, "{link}: {}", stderr(&refused));
        let said = stderr(&refused);
        assert!(
            said.contains(&format!("/workspace/{link} is a symbolic link")) && said.lines().count() == 1,
            "{link}: {said}"
        );
        assert!(!said.contains(&agent.state_dir.display().to_string()), "no path of the agent's: {said}");
        let made: Vec<_> = std::fs::read_dir(host.path()).expect("read the host folder").collect();
        assert!(made.is_empty(), "{link}: made on the host: {made:?}");
    }
}

/// The folders the init makes on the way to a volume inside /workspace are the sandbox user's,
/// as the code's own are: it may write in them, and remove them once the volume is gone.
/// `cp -a` of a file the code does not own works there as in /tmp: giving a file to another
/// id is refused with EPERM, which `cp` forgives, not with the EOVERFLOW of an id the
/// workspace's idmapped mount would not map.
#[test]
fn the_workspace_s_folders_above_a_volume_and_its_chowns_are_as_on_a_disk_of_the_code_s_own() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    std::fs::create_dir(dir.join("other")).expect("the volume's folder");
    write(&dir.join("cave.yaml"), &volume_cave(&["./other:/workspace/a/b/c"]));
    let script = "ls -lnd /workspace/a /workspace/a/b | cut -d' ' -f3,4; touch /workspace/a/file && mkdir /workspace/a/new && echo wrote; \
                  cp -a /etc/passwd /workspace/pw && echo copied; chown 0 /workspace/pw 2>&1 | sed 's/.*: //'; \
                  chgrp 65534 /workspace/pw 2>&1 | sed 's/.*: //'";
    let run = agent.bkgr(dir, &["v", "sh", "--", script]);
    assert_eq!(
        (code(&run), stdout(&run).as_str()),
        (0, "1000 1000\n1000 1000\nwrote\ncopied\nOperation not permitted\nOperation not permitted\n"),
        "{}",
        stderr(&run)
    );
    write(&dir.join("cave.yaml"), &volume_cave(&[]));
    let removed = agent.bkgr(dir, &["v", "sh", "--", "rm -r /workspace/a && echo removed"]);
    assert_eq!((code(&removed), stdout(&removed).as_str()), (0, "removed\n"), "{}", stderr(&removed));
}

/// A `:rw` volume lets the code change the project: a link it makes where another volume's
/// source was would lead that volume out of the project at the next run that does not define
/// the sandbox again (`bkg exec`, a service's restart, `bkg cp`). A volume's source reached
/// through a link is refused then, and nothing of where it leads is shown (was: the host folder
/// it named, mounted read-write, its files shown as the sandbox user's; found by a new-user
/// trial).
#[test]
fn a_link_the_code_makes_in_the_project_does_not_lead_a_volume_out_of_it() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    let outside = tempfile::tempdir().expect("a host folder");
    write(&outside.path().join("secret"), "not the sandbox's\n");
    std::fs::create_dir_all(dir.join("data/sub")).expect("the volumes' folders");
    write(&dir.join("cave.yaml"), &volume_cave(&["./data:/workspace/data:rw", "./data/sub:/workspace/sub:rw"]));
    let planted = agent.bkgr(
        dir,
        &[
            "v",
            "sh",
            "--",
            &format!("rm -r /workspace/data/sub && ln -s {} /workspace/data/sub", outside.path().display()),
        ],
    );
    assert_eq!(code(&planted), 0, "{}", stderr(&planted));
    assert!(dir.join("data/sub").is_symlink(), "the code made the link in the project");
    let exec = agent.bkg_in(dir, &["exec", "v", "-c", "print(open('/workspace/sub/secret').read())"]);
    assert_eq!(code(&exec), 125, "{}", stderr(&exec));
    assert!(!stdout(&exec).contains("not the sandbox's"), "{}", stdout(&exec));
    assert!(stderr(&exec).contains("is reached through a symbolic link now"), "{}", stderr(&exec));
    let cp = agent.bkg_in(dir, &["cp", "v:sub/secret", "copied"]);
    assert_eq!(code(&cp), 125, "{}", stderr(&cp));
    assert!(!dir.join("copied").exists());
    assert_eq!(std::fs::read_dir(outside.path()).expect("the host folder").count(), 1, "nothing made there");
}

/// A file volume's mount point: a named pipe the code left there is refused in one line (was:
/// pid 1 waited on it for a reader until the sandbox's preparation timed out), and the empty
/// file pid 1 makes for one is the sandbox user's, as the folders on its way are.
#[test]
fn a_file_volume_s_mount_point_is_a_file_of_the_sandbox_user_s_and_never_a_pipe() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    write(&dir.join("host.txt"), "from the host\n");
    write(&dir.join("cave.yaml"), &volume_cave(&[]));
    let piped = agent.bkgr(dir, &["v", "sh", "--", "mkfifo /workspace/pipe"]);
    assert_eq!(code(&piped), 0, "{}", stderr(&piped));
    write(&dir.join("cave.yaml"), &volume_cave(&["./host.txt:/workspace/pipe:ro"]));
    let refused = agent.bkgr(dir, &["v", "sh", "--", "true"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("/workspace/pipe is not a file"), "{}", stderr(&refused));
    write(&dir.join("cave.yaml"), &volume_cave(&["./host.txt:/workspace/deep/made.txt:ro"]));
    let shown = agent.bkgr(dir, &["v", "sh", "--", "cat /workspace/deep/made.txt"]);
    assert_eq!((code(&shown), stdout(&shown).as_str()), (0, "from the host\n"), "{}", stderr(&shown));
    write(&dir.join("cave.yaml"), &volume_cave(&[]));
    let left = agent.bkgr(
        dir,
        &["v", "sh", "--", "stat -c '%u %g %s' /workspace/deep/made.txt && echo mine > /workspace/deep/made.txt"],
    );
    assert_eq!((code(&left), stdout(&left).as_str()), (0, "1000 1000 0\n"), "{}", stderr(&left));
}

/// A volume mounted where an upload stages its files (`.bkg-upload_` and 23 hex digits) is the
/// host's folder: the next upload's removal of abandoned stagings leaves it alone (was: its
/// files named by digits were deleted on the host; found by a new-user trial).
#[test]
fn an_upload_never_removes_a_volume_s_files_as_an_abandoned_staging() {
    let agent = Agent::start();
    let project = private_dir();
    let dir = project.path();
    for name in ["1", "22", "keep"] {
        write(&dir.join("updir").join(name), name);
    }
    write(&dir.join("cave.yaml"), &volume_cave(&["./updir:/workspace/.bkg-upload_0123456789abcdef0123456:rw"]));
    let first = agent.bkgr(dir, &["v", "sh", "--", "true"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let cp = agent.bkg_in(dir, &["cp", "cave.yaml", "v:in"]);
    assert_eq!(code(&cp), 0, "{}", stderr(&cp));
    for name in ["1", "22", "keep"] {
        assert!(dir.join("updir").join(name).exists(), "{name} is still on the host");
    }
}

/// Found by a new-user trial: one sandbox with a bad limit in cave.yaml kept `bkgr`, `bkg exec`,
/// `bkg cp`, `bkg ls` and `bkg rm` from every other sandbox of the project, and from removing the
/// invalid one itself; each now goes on without it and says so.
#[test]
fn an_invalid_sandbox_keeps_neither_the_others_nor_its_own_removal_from_working() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  good:\n    type: python\n    scripts:\n      start: python -c 'print(6 * 7)'\n  bad:\n    type: python\n    limits: { memory: lots }\n",
    );
    let dir = project.path();
    let left_out = "bkg: cave.yaml's sandbox `bad` is invalid and left out (`bkg validate` says why)\n";
    let ran = agent.bkgr(dir, &["good"]);
    assert_eq!((code(&ran), stdout(&ran)), (0, "42\n".to_owned()), "{}", stderr(&ran));
    assert!(stderr(&ran).contains("cave.yaml's sandbox `bad` is invalid and left out"), "{}", stderr(&ran));
    let exec = agent.bkg_in(dir, &["exec", "good", "-c", "open('/workspace/made.txt', 'w').write('kept')"]);
    assert_eq!(code(&exec), 0, "{}", stderr(&exec));
    assert!(stderr(&exec).starts_with(left_out), "{}", stderr(&exec));
    let cp = agent.bkg_in(dir, &["cp", "good:made.txt", "copied"]);
    assert_eq!(code(&cp), 0, "{}", stderr(&cp));
    assert_eq!(std::fs::read_to_string(dir.join("copied/made.txt")).expect("copied"), "kept");
    let ls = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&ls), 0, "{}", stderr(&ls));
    assert!(stdout(&ls).contains("good") && stderr(&ls) == left_out, "{}{}", stdout(&ls), stderr(&ls));
    // One the agent has, made invalid, is left out too, not said to be gone (found by a new-user
    // trial: `bkg ls` told to `bkg rm` it, its workspace and all, over a typo).
    let valid = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    std::fs::write(dir.join("cave.yaml"), valid.replace("  good:\n", "  good:\n    colour: blue\n")).expect("write");
    let ls = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&ls), 0, "{}", stderr(&ls));
    assert!(stderr(&ls).contains("`good` are invalid and left out"), "{}", stderr(&ls));
    assert!(!stderr(&ls).contains("not in cave.yaml"), "{}", stderr(&ls));
    std::fs::write(dir.join("cave.yaml"), valid).expect("write");

    // The invalid one itself is refused with its problems, and all of them when asked for.
    for refused in [agent.bkgr(dir, &["bad"]), agent.bkgr(dir, &[]), agent.bkg_in(dir, &["exec", "bad", "-c", "pass"])]
    {
        assert_eq!(code(&refused), 125, "{}", stderr(&refused));
        assert!(
            stderr(&refused).contains("/sandboxes/bad/limits/memory: \"lots\" is not a valid size"),
            "{}",
            stderr(&refused)
        );
    }

    // Removing it edits cave.yaml, and what is left is valid again.
    let rm = agent.bkg_in(dir, &["rm", "--force", "bad"]);
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert!(!cave.contains("bad") && cave.contains("good:"), "{cave}");
    let validate = agent.bkg_in(dir, &["validate"]);
    assert_eq!(code(&validate), 0, "{}", stderr(&validate));

    // Of two invalid sandboxes, the one named is refused with its own problems only (found by a
    // new-user trial: `bkgr a` printed every invalid sandbox's).
    std::fs::write(
        dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  a:\n    type: python\n    limits: { memory: lots }\n  b:\n    type: ruby\n",
    )
    .expect("write");
    let refused = agent.bkgr(dir, &["a"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("/sandboxes/a/limits/memory"), "{}", stderr(&refused));
}

/// `bkg logs NAME --run RUN` with a run of another sandbox says whose it is, not that its log
/// is no longer kept (found by a new-user trial).
#[test]
fn a_run_of_another_sandbox_is_said_to_be_that_sandboxs() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nsandboxes:\n  a:\n    type: python\n    scripts:\n      start: echo a\n  b:\n    type: python\n    scripts:\n      start: echo b\n",
    );
    let dir = project.path();
    for name in ["a", "b"] {
        let ran = agent.bkgr(dir, &[name]);
        assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    }
    let run = status_of(&agent, dir, "a")["last_run"]["id"].as_str().expect("a's run").to_owned();
    let logs = agent.bkg_in(dir, &["logs", "b", "--run", &run]);
    assert_eq!(code(&logs), 125, "{}", stderr(&logs));
    assert_eq!(
        stderr(&logs),
        format!("bkg: run {run} is one of sandbox a's, not b's: `bkg logs a --run {run}` shows it\n")
    );
}

/// `-C DIR` is the project around DIR for every command, as `git -C` is: a subdirectory's
/// project for `bkg add` and `bkg validate` too, and a DIR that is a file or missing is one line
/// and 125 for all (found by a new-user trial: `bkgr`, `ls` and `status` took a file's directory,
/// `add` and `validate` would not look above DIR).
#[test]
fn dash_c_is_the_project_around_a_directory_for_every_command() {
    let agent = Agent::start();
    let project = project_with("version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: 'true'\n");
    let sub = project.path().join("sub/deep");
    std::fs::create_dir_all(&sub).expect("subdirectory");
    let file = project.path().join("main.py");
    write(&file, "print(1)\n");
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    let (sub, file) = (sub.to_str().expect("utf-8"), file.to_str().expect("utf-8"));

    let added = agent.bkg_in(elsewhere.path(), &["add", "more", "--type", "python", "-C", sub]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    let cave = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    assert!(cave.contains("  more:\n"), "{cave}");
    assert!(!Path::new(sub).join("cave.yaml").exists());
    let valid = agent.bkg_in(elsewhere.path(), &["validate", "-C", sub]);
    assert_eq!(code(&valid), 0, "{}", stderr(&valid));
    assert!(stderr(&valid).contains("cave.yaml: valid (2 sandboxes)"), "{}", stderr(&valid));

    for command in [
        vec!["ls", "-C", file],
        vec!["status", "box", "-C", file],
        vec!["validate", "-C", file],
        vec!["add", "other", "--type", "python", "-C", file],
    ] {
        let refused = agent.bkg_in(elsewhere.path(), &command);
        assert_eq!(code(&refused), 125, "{command:?}: {}", stderr(&refused));
        assert_eq!(stderr(&refused), format!("bkg: -C {file}: not a directory\n"), "{command:?}");
    }
    let refused = agent.bkgr(elsewhere.path(), &["-C", file, "box"]);
    assert_eq!((code(&refused), stderr(&refused)), (125, format!("bkgr: -C {file}: not a directory\n")));
    let missing = format!("{sub}/gone");
    let refused = agent.bkg_in(elsewhere.path(), &["add", "other", "--type", "python", "-C", &missing]);
    assert_eq!((code(&refused), stderr(&refused)), (125, format!("bkg: -C {missing}: no such directory\n")));
    let cave_after = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    assert_eq!(cave_after, cave, "a refused command changed cave.yaml");
}

/// Found by a trial: a volume's folder on the host made a file met the directory its earlier
/// runs had in the sandbox, and `bkgr` said "/workspace/m is not a file" while `bkg cp` said only
/// that the sandbox did not start for the transfer.
#[test]
fn a_volume_whose_folder_became_a_file_is_named_by_bkgr_and_by_cp() {
    let agent = Agent::start();
    let project = project_with(
        "version: 1\nnamespace: default\nsandboxes:\n  m:\n    type: python\n    volumes: [\"./shared:/workspace/m\"]\n    scripts:\n      start: 'true'\n",
    );
    let dir = project.path();
    std::fs::create_dir(dir.join("shared")).expect("the volume's folder");
    let first = agent.bkgr(dir, &["m"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    std::fs::remove_dir(dir.join("shared")).expect("remove the folder");
    std::fs::write(dir.join("shared"), "now a file\n").expect("a file in its place");
    let said =
        "/workspace/m is a directory in the sandbox where a file is to be shown (its source was a directory before)";
    let ran = agent.bkgr(dir, &["m"]);
    assert_eq!(code(&ran), 125, "{}", stderr(&ran));
    assert!(stderr(&ran).contains(said), "{}", stderr(&ran));
    let copied = agent.bkg_in(dir, &["cp", "cave.yaml", "m:in"]);
    assert_eq!(code(&copied), 125, "{}", stderr(&copied));
    assert!(
        stderr(&copied).contains("did not start for the transfer: preparing the sandbox failed at"),
        "{}",
        stderr(&copied)
    );
    assert!(stderr(&copied).contains(said), "{}", stderr(&copied));
}

/// A project moved elsewhere gets a new sandbox of each name, and bkg says where the old one's
/// files are, which it keeps under the old path (found by a new-user trial: the files looked lost
/// without a word); the old one is removed by its id.
#[test]
fn a_moved_project_is_told_where_its_sandbox_s_files_stayed() {
    let agent = Agent::start();
    let parent = tempfile::tempdir().expect("dir");
    let (old, new) = (parent.path().join("before"), parent.path().join("after"));
    write(
        &old.join("cave.yaml"),
        "version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: 'true'\n",
    );
    let first = agent.bkgr(&old, &["box"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let old_id = status_of(&agent, &old, "box")["id"].as_str().expect("an id").to_owned();
    std::fs::rename(&old, &new).expect("move the project");
    let said = format!(
        "the agent keeps a sandbox `box` ({old_id}) of {}, which is gone (moved or deleted): its files stay there until \
         `bkg rm {old_id}`, and the project put back at {} finds them\n",
        old.display(),
        old.display()
    );
    let listed = agent.bkg_in(&new, &["ls"]);
    assert_eq!((code(&listed), stderr(&listed)), (0, format!("bkg: `box` is not created here; {said}")));
    let made = agent.bkgr(&new, &["box"]);
    assert_eq!((code(&made), stderr(&made)), (0, format!("bkgr: sandbox `box` is new here; {said}")));
    let again = agent.bkgr(&new, &["box"]);
    assert_eq!((code(&again), stderr(&again)), (0, String::new()), "said once, when the new one is made");
    let removed = agent.bkg_in(&new, &["rm", &old_id, "--force"]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let listed = agent.bkg_in(&new, &["ls"]);
    assert_eq!(stderr(&listed), "");
}

/// The arguments after `--` reach a script written as a YAML `|` block (which ends in a newline),
/// go to a script of several lines through `"$@"`, and are refused in one line where they have
/// no one command to go to. Appended after the newline they ran as a command of their own, after
/// a comment they were lost (found by a new-user trial).
#[test]
fn bkgr_arguments_reach_block_scripts_and_are_refused_where_they_have_no_command() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project");
    let dir = project.path();
    write(
        &dir.join("cave.yaml"),
        "version: 1\nsandboxes:\n  m:\n    type: python\n    scripts:\n      block: |\n        python -c 'import sys; print(sys.argv[1:])'\n      \
         lines: |\n        echo first\n        python -c 'import sys; print(sys.argv[1:])' \"$@\"\n      \
         several: |\n        echo first\n        python -c 'import sys; print(sys.argv[1:])'\n      \
         commented: \"python -c 'import sys; print(sys.argv[1:])' # prints args\"\n",
    );
    let block = agent.bkgr(dir, &["m", "block", "--", "a b", "--verbose"]);
    assert_eq!((code(&block), stdout(&block).as_str()), (0, "['a b', '--verbose']\n"), "{}", stderr(&block));
    let lines = agent.bkgr(dir, &["m", "lines", "--", "a", "it's"]);
    assert_eq!((code(&lines), stdout(&lines).as_str()), (0, "first\n['a', \"it's\"]\n"), "{}", stderr(&lines));
    for (script, why) in [("several", "it is several lines"), ("commented", "it ends in a comment")] {
        let refused = agent.bkgr(dir, &["m", script, "--", "rm", "x"]);
        assert_eq!(code(&refused), 125, "{}", stderr(&refused));
        assert_eq!(
            stderr(&refused),
            format!(
                "bkgr: the arguments after -- have no one command to go to in script `{script}` of `m`: {why}; write \
                 \"$@\" in it where they go\n"
            )
        );
        assert_eq!(stdout(&refused), "");
    }
    let plain = agent.bkgr(dir, &["m", "several"]);
    assert_eq!((code(&plain), stdout(&plain).as_str()), (0, "first\n[]\n"), "{}", stderr(&plain));
}

/// A cave.yaml that links to a file gone missing is this directory's project, not a sign to look
/// further up: every command says so in one line, nothing is written to the project above, and
/// `bkg init --force` replaces the link, keeping it beside the new file (found by a new-user
/// trial: `bkg add` wrote into the project above, and init's `--force` failed on the link).
#[test]
fn a_cave_yaml_linking_to_nothing_is_named_and_the_project_above_is_left_alone() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project");
    let outer = project.path();
    let init = agent.bkg_in(outer, &["init", "--yes", "--sandbox", "x", "--type", "node"]);
    assert_eq!(code(&init), 0, "{}", stderr(&init));
    let outer_cave = std::fs::read_to_string(outer.join("cave.yaml")).expect("cave.yaml");
    let inner = outer.join("sub");
    std::fs::create_dir(&inner).expect("sub");
    std::os::unix::fs::symlink("gone.yaml", inner.join("cave.yaml")).expect("link");
    let said = format!("{}/cave.yaml is a link to no file (it links to gone.yaml)", inner.display());
    let deeper = inner.join("deeper");
    std::fs::create_dir(&deeper).expect("deeper");
    for (dir, args) in [&["ls"][..], &["add", "newbox", "--type", "python"], &["validate"]]
        .into_iter()
        .flat_map(|args| [(&inner, args), (&deeper, args)])
    {
        let refused = agent.bkg_in(dir, args);
        assert_eq!(code(&refused), 125, "{args:?}: {}", stderr(&refused));
        assert_eq!(stderr(&refused).lines().count(), 1, "{args:?}: {}", stderr(&refused));
        assert!(
            stderr(&refused).contains("is a link to no file (it links to gone.yaml)"),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    let run = agent.bkgr(&inner, &["x"]);
    assert_eq!(code(&run), 125, "{}", stderr(&run));
    assert!(stderr(&run).contains(&said), "{}", stderr(&run));
    assert_eq!(std::fs::read_to_string(outer.join("cave.yaml")).expect("cave.yaml"), outer_cave);
    // Nor does a command that takes a sandbox's name look for it agent-wide: another project's
    // sandbox of that name is left alone (it was removed by `bkg rm --force`).
    let elsewhere = tempfile::tempdir().expect("another project");
    let made = agent.bkg_in(elsewhere.path(), &["init", "--yes", "--sandbox", "uniq", "--type", "python"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let ran = agent.bkgr(elsewhere.path(), &["uniq"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    for args in [&["status", "uniq"][..], &["logs", "uniq"], &["stop", "uniq"], &["rm", "--force", "uniq"]] {
        let refused = agent.bkg_in(&inner, args);
        assert_eq!(
            (code(&refused), stderr(&refused)),
            (125, format!("bkg: {said}: put the file back, or remove the link\n")),
            "{args:?}"
        );
    }
    let still = agent.bkg_in(elsewhere.path(), &["status", "uniq"]);
    assert_eq!(code(&still), 0, "{}", stderr(&still));

    let init = agent.bkg_in(&inner, &["init", "--yes"]);
    assert_eq!(
        stderr(&init),
        "bkg: ./cave.yaml is a link to no file (it links to gone.yaml): use --force to replace the link (it is kept beside it)\n"
    );
    let forced = agent.bkg_in(&inner, &["init", "--yes", "--force"]);
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    assert_eq!(std::fs::read_link(inner.join("cave.yaml.bak")).expect("the link kept"), Path::new("gone.yaml"));
    assert!(inner.join("cave.yaml").symlink_metadata().expect("cave.yaml").is_file());

    // A link to another project's file, to a directory, to itself: replaced, what it leads to
    // untouched.
    let linked = tempfile::tempdir().expect("linked");
    let other_cave = elsewhere.path().join("cave.yaml");
    let other_text = std::fs::read_to_string(&other_cave).expect("the other cave.yaml");
    std::fs::create_dir(linked.path().join("dir")).expect("dir");
    std::os::unix::fs::symlink("loop", linked.path().join("loop")).expect("loop");
    for target in [other_cave.as_path(), Path::new("dir"), Path::new("loop")] {
        let cave = linked.path().join("cave.yaml");
        let _ = std::fs::remove_file(&cave);
        std::os::unix::fs::symlink(target, &cave).expect("link");
        let forced = agent.bkg_in(linked.path(), &["init", "--yes", "--force"]);
        assert_eq!(code(&forced), 0, "{target:?}: {}", stderr(&forced));
        assert!(cave.symlink_metadata().expect("cave.yaml").is_file(), "{target:?}");
        assert_eq!(std::fs::read_link(linked.path().join("cave.yaml.bak")).expect("the link kept"), target);
        std::fs::remove_file(linked.path().join("cave.yaml.bak")).expect("rm the kept link");
    }
    assert_eq!(std::fs::read_to_string(&other_cave).expect("the other cave.yaml"), other_text);
    // A pipe is moved aside, not copied (its copy waited for a writer for ever).
    let cave = linked.path().join("cave.yaml");
    std::fs::remove_file(&cave).expect("rm");
    assert!(Command::new("mkfifo").arg(&cave).status().expect("mkfifo").success());
    let forced = agent.bkg_in(linked.path(), &["init", "--yes", "--force"]);
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    let kept = linked.path().join("cave.yaml.bak").symlink_metadata().expect("the pipe kept");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&kept.file_type()));
}

/// bkgr's arguments go to the agent in the script's one command line: over the 128 KiB the
/// kernel takes in one argument, the run is refused as too long, not blamed on the runtime
/// (found by a new-user trial).
#[test]
fn bkgr_arguments_longer_than_the_kernel_takes_are_named_as_too_long() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project");
    write(
        &project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  m:\n    type: python\n    scripts:\n      start: echo\n",
    );
    let half = "a".repeat(70 * 1024);
    let output = agent.bkgr(project.path(), &["m", "--", &half, &half]);
    assert_eq!(code(&output), 126, "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "bkgr: the run's command line and environment are too long to start (Argument list too long (os error 7)): \
         the kernel takes at most 128KiB in one argument, and its stack's quarter in all\n"
    );
}
