//! Files into and out of sandboxes: `bkg cp` both ways (tar streams, confined to /workspace,
//! within the disk limit), `bkg exe --file DIR` and `bkg exe -o DIR`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bkg_tests::http::unix_request;
use bkg_tests::{Agent, code, stderr, stdout};
use serde_json::json;

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A project with sandbox `box` (python) defined on the agent by one run of its `start` script;
/// `extra` are more flags of `bkg add`.
fn project_with_box(agent: &Agent, extra: &[&str]) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    let init = agent.bkg_in(dir, &["init", "--yes"]);
    assert_eq!(code(&init), 0, "init: {}", stderr(&init));
    let mut add = vec!["add", "box", "--type", "python", "--script", "start=true", "--script", "show=cat \"$@\""];
    add.extend_from_slice(extra);
    let added = agent.bkg_in(dir, &add);
    assert_eq!(code(&added), 0, "add: {}", stderr(&added));
    let first = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&first), 0, "first run: {}", stderr(&first));
    project
}

/// Starts an upload of `payload/a.txt` (holding `text`) into `in/` of sandbox `id` on a raw
/// connection, sending the request and the archive's first `sent` bytes; returns the connection
/// and the whole archive, the rest of which is the test's to send, or not.
fn partial_upload(
    agent: &Agent,
    dir: &Path,
    id: &str,
    text: &str,
    sent: usize,
) -> (std::os::unix::net::UnixStream, Vec<u8>) {
    write(&dir.join("payload/a.txt"), text);
    let archive =
        Command::new("tar").args(["-C", "payload", "-cf", "-", "a.txt"]).current_dir(dir).output().expect("tar");
    assert!(archive.status.success());
    let mut upload = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let head = format!(
        "PUT /api/v1/sandboxes/{id}/files?path=in HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        archive.stdout.len()
    );
    upload.write_all(head.as_bytes()).expect("send head");
    upload.write_all(&archive.stdout[..sent]).expect("send the archive's start");
    (upload, archive.stdout)
}

/// The id of the one sandbox the agent has.
fn the_sandbox_id(agent: &Agent) -> String {
    let listed = unix_request(&agent.socket, "GET", "/api/v1/sandboxes", None).json();
    listed[0]["id"].as_str().expect("the sandbox's id").to_owned()
}

/// `bkg status box --json`'s last run (null when it has none).
fn last_run(agent: &Agent, dir: &Path) -> serde_json::Value {
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    status["last_run"].clone()
}

/// The newest run the agent lists for sandbox `id`.
fn newest_run(agent: &Agent, id: &str) -> serde_json::Value {
    let runs = unix_request(&agent.socket, "GET", &format!("/api/v1/runs?sandbox={id}&limit=1"), None).json();
    runs[0].clone()
}

/// The names in a `files/list` answer.
fn entry_names(listing: &serde_json::Value) -> Vec<String> {
    listing.as_array().into_iter().flatten().filter_map(|entry| entry["name"].as_str().map(str::to_owned)).collect()
}

#[test]
fn cp_copies_a_directory_in_and_back_out_and_the_sandbox_sees_it() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    write(&dir.join("src/helper.py"), "VALUE = 42\n");
    write(&dir.join("src/deep/er/data.txt"), "deep data\n");
    write(&dir.join("src/run.sh"), "#!/bin/sh\n");
    for (path, mode) in [("src/run.sh", 0o755), ("src/helper.py", 0o644), ("src/deep", 0o750)] {
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::symlink("helper.py", dir.join("src/link.py")).expect("symlink");
    // A file's time goes in and comes back as it was (found by a new-user trial: uploads were
    // dated now).
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(dir.join("src/helper.py"))
        .expect("open")
        .set_modified(long_ago)
        .expect("date");

    let uploaded = agent.bkg_in(dir, &["cp", "--json", "src", "box:in"]);
    assert_eq!(code(&uploaded), 0, "cp in: {}", stderr(&uploaded));
    let answer: serde_json::Value = serde_json::from_slice(&uploaded.stdout).expect("cp --json");
    assert_eq!(answer["path"], "/workspace/in");
    assert_eq!((&answer["files"], &answer["links"]), (&3.into(), &1.into()), "three files and a link: {answer}");

    let shown =
        agent.bkgr(dir, &["box", "show", "--", "/workspace/in/src/deep/er/data.txt", "/workspace/in/src/link.py"]);
    assert_eq!(code(&shown), 0, "stderr: {}", stderr(&shown));
    assert_eq!(stdout(&shown), "deep data\nVALUE = 42\n", "the sandbox reads what was uploaded, the link too");

    let back = dir.join("back");
    let downloaded = agent.bkg_in(dir, &["cp", "box:in/src", back.to_str().expect("utf-8")]);
    assert_eq!(code(&downloaded), 0, "cp out: {}", stderr(&downloaded));
    // It says what it wrote, and where: DEST is the directory the copy went into.
    assert!(
        stderr(&downloaded).contains(&format!("3 files and 1 symbolic link, 31B, into {}/", back.display())),
        "{}",
        stderr(&downloaded)
    );
    assert_eq!(std::fs::read_to_string(back.join("src/deep/er/data.txt")).expect("read"), "deep data\n");
    assert_eq!(std::fs::read_link(back.join("src/link.py")).expect("link"), Path::new("helper.py"));
    let modified = std::fs::metadata(back.join("src/helper.py")).and_then(|meta| meta.modified()).expect("mtime");
    assert_eq!(modified, long_ago, "the file's time made the round trip");
    // Modes make the round trip unchanged (the agent's own umask is 077).
    for (path, mode) in [("src/run.sh", 0o755), ("src/helper.py", 0o644), ("src/deep", 0o750)] {
        let got = std::fs::metadata(back.join(path)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(got, mode, "{path}: {got:o}");
    }

    // A download's answer ends only once the sandbox is free: the next call never finds it busy.
    for attempt in 0..5 {
        let one = agent.bkg_in(dir, &["cp", "--json", "box:in/src/helper.py", back.to_str().expect("utf-8")]);
        assert_eq!(code(&one), 0, "cp one file, attempt {attempt}: {}", stderr(&one));
        let answer: serde_json::Value = serde_json::from_slice(&one.stdout).expect("cp --json");
        let whole = serde_json::json!({ "path": back.display().to_string(), "files": 1, "bytes": 11, "links": 0 });
        assert_eq!(answer, whole);
        assert_eq!(std::fs::read_to_string(back.join("helper.py")).expect("read"), "VALUE = 42\n");
    }

    // A link given as the source is copied as itself, under its own name: under its target's
    // it replaced the file it points to with a link to itself.
    let linked = agent.bkg_in(dir, &["cp", "src/link.py", "box:in/src"]);
    assert_eq!(code(&linked), 0, "cp a link: {}", stderr(&linked));
    assert_eq!(stderr(&linked), "bkg: a symbolic link (link.py -> helper.py), into box:/workspace/in/src/\n");
    let shown = agent.bkgr(dir, &["box", "show", "--", "/workspace/in/src/link.py", "/workspace/in/src/helper.py"]);
    assert_eq!((code(&shown), stdout(&shown)), (0, "VALUE = 42\nVALUE = 42\n".to_owned()), "{}", stderr(&shown));

    let missing = agent.bkg_in(dir, &["cp", "box:no/such", back.to_str().expect("utf-8")]);
    assert_eq!(code(&missing), 125);
    assert!(stderr(&missing).contains("/workspace/no/such does not exist"), "{}", stderr(&missing));
    // A host side that cannot be: one line that says what to give instead.
    for (args, says) in [
        (["cp", "no-such.txt", "box:"], "no-such.txt does not exist"),
        (["cp", "/dev/null", "box:"], "/dev/null is not a file or a directory"),
        (["cp", "box:in/src/helper.py", "src/helper.py"], "src/helper.py is a file: give a directory"),
        (["cp", "box:in/src/helper.py", "-"], "not standard input or output"),
        (["cp", "-", "box:in"], "not standard input or output"),
    ] {
        let refused = agent.bkg_in(dir, &args);
        assert_eq!(code(&refused), 125, "{args:?}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "{args:?}: {}", stderr(&refused));
    }
    assert!(!dir.join("-").exists(), "no directory named - was made");
    assert_eq!(std::fs::read_to_string(dir.join("src/helper.py")).expect("read"), "VALUE = 42\n");
    // A pipe inside a directory is refused before anything is sent (was: by the agent, after
    // what came before it was written).
    write(&dir.join("withfifo/a.txt"), "a\n");
    assert!(Command::new("mkfifo").arg(dir.join("withfifo/fifo")).status().expect("mkfifo").success());
    let piped = agent.bkg_in(dir, &["cp", "withfifo", "box:in"]);
    assert_eq!(code(&piped), 125, "{}", stderr(&piped));
    assert!(stderr(&piped).contains("withfifo/fifo is not a file, a directory or a link"), "{}", stderr(&piped));
    let listed = unix_request(
        &agent.socket,
        "GET",
        &format!("/api/v1/sandboxes/{}/files/list?path=in", the_sandbox_id(&agent)),
        None,
    );
    assert!(!listed.text().contains("withfifo"), "{}", listed.text());

    // A host file where the copy needs a directory: the line says why it failed.
    write(&dir.join("clash/src"), "a file\n");
    let clash = agent.bkg_in(dir, &["cp", "box:in/src", "clash"]);
    assert_eq!(code(&clash), 125, "{}", stderr(&clash));
    assert!(stderr(&clash).contains("os error"), "the cause is named: {}", stderr(&clash));
}

/// An upload whose client stops sending (suspended, stalled) ends after `--body-timeout` of
/// silence with 408, keeps nothing half-written, and gives the sandbox back (it held it for
/// ever, `bkg stop` included).
/// `bkg logs --run` of a file transfer says it keeps no log (found by a new-user trial: it was
/// told the logs of the last 20 runs are kept, of the newest run).
#[test]
fn the_log_of_a_file_transfer_is_said_to_be_none() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    write(&dir.join("note.txt"), "n\n");
    let copied = agent.bkg_in(dir, &["cp", "note.txt", "box:"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    let transfer = newest_run(&agent, &the_sandbox_id(&agent));
    assert_eq!(transfer["file_transfer"], true, "{transfer}");
    let run = transfer["id"].as_str().expect("an id");
    let logs = agent.bkg_in(dir, &["logs", "box", "--run", run]);
    let said =
        format!("bkg: run {run} was a file transfer (`bkg cp`), which keeps no log: `bkg runs show {run}` shows it\n");
    assert_eq!((code(&logs), stderr(&logs)), (125, said));
}

#[test]
fn a_stalled_upload_ends_at_the_body_timeout_and_frees_its_sandbox() {
    let agent = Agent::start_with(bkg_tests::AgentOptions {
        extra_args: vec!["--body-timeout".into(), "2s".into()],
        ..bkg_tests::AgentOptions::default()
    });
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let id = the_sandbox_id(&agent);
    // A header and part of the file,
    let (mut upload, _) = partial_upload(&agent, dir, &id, &"x".repeat(4096), 1024);
    // then nothing: the answer comes by itself.
    upload.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("read timeout");
    let mut answer = String::new();
    let _ = upload.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let again = agent.bkgr(dir, &["box", "show", "--", "/workspace/in/a.txt"]);
    assert_eq!(code(&again), 1, "the sandbox runs again, and nothing of the file is there: {}", stderr(&again));
    assert!(stderr(&again).contains("No such file"), "{}", stderr(&again));
}

/// A file's name may take all 255 bytes a name has: the name it is written under first is
/// short (it was the file's own name and a suffix, so 244 bytes and more were refused); and any
/// bytes, UTF-8 or not.
#[test]
fn a_file_whose_name_takes_255_bytes_or_is_not_utf8_is_copied_as_named() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let name = "n".repeat(255);
    write(&dir.join("long").join(&name), "long name\n");
    let uploaded = agent.bkg_in(dir, &["cp", "long", "box:in"]);
    assert_eq!(code(&uploaded), 0, "{}", stderr(&uploaded));
    let shown = agent.bkgr(dir, &["box", "show", "--", &format!("/workspace/in/long/{name}")]);
    assert_eq!((code(&shown), stdout(&shown)), (0, "long name\n".to_owned()), "{}", stderr(&shown));
    // A name that is not UTF-8 makes the round trip byte for byte (was: U+FFFD in its place).
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
    write(&dir.join("odd").join(odd), "odd name\n");
    let uploaded = agent.bkg_in(dir, &["cp", "odd", "box:in"]);
    assert_eq!(code(&uploaded), 0, "{}", stderr(&uploaded));
    let back = dir.join("back");
    let downloaded = agent.bkg_in(dir, &["cp", "box:in/odd", back.to_str().expect("utf-8")]);
    assert_eq!(code(&downloaded), 0, "{}", stderr(&downloaded));
    let names: Vec<std::ffi::OsString> =
        std::fs::read_dir(back.join("odd")).expect("odd").map(|entry| entry.expect("entry").file_name()).collect();
    assert_eq!(names, vec![odd.to_os_string()]);
}

#[test]
fn paths_that_leave_the_workspace_are_refused() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    write(&dir.join("file.txt"), "x\n");
    // A link the sandbox could have made itself, pointing out of /workspace.
    std::fs::create_dir_all(dir.join("trap")).expect("mkdir");
    std::os::unix::fs::symlink("/etc", dir.join("trap/escape")).expect("symlink");
    let planted = agent.bkg_in(dir, &["cp", "trap", "box:"]);
    assert_eq!(code(&planted), 0, "a link is copied as a link: {}", stderr(&planted));

    for (dest, says) in [
        ("box:../up", "has `..`"),
        ("box:in/../../up", "has `..`"),
        ("box:/etc", "is absolute"),
        ("box:trap/escape", "leads out of /workspace, through a symbolic link pointing outside it or into a volume"),
        ("box:trap/escape/cron.d", "leads out of /workspace"),
    ] {
        let refused = agent.bkg_in(dir, &["cp", "file.txt", dest]);
        assert_eq!(code(&refused), 125, "cp into {dest}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "cp into {dest}: {}", stderr(&refused));
    }
    let host = dir.join("host");
    for source in ["box:trap/escape/passwd", "box:../", "box:/etc/passwd"] {
        let refused = agent.bkg_in(dir, &["cp", source, host.to_str().expect("utf-8")]);
        assert_eq!(code(&refused), 125, "cp from {source}: {}", stderr(&refused));
        assert!(!host.join("passwd").exists(), "nothing of the host came back");
    }
    assert!(!Path::new("/etc/file.txt").exists(), "nothing was written through the link");
}

#[test]
fn a_refused_upload_is_answered_with_its_refusal_however_much_is_still_to_send() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    // The agent refuses the destination from the request's head, long before this is sent.
    let big = std::fs::File::create(dir.join("big.bin")).expect("create");
    big.set_len(48 * 1024 * 1024).expect("size");
    for dest in ["box:../up", "box:/etc"] {
        let refused = agent.bkg_in(dir, &["cp", "big.bin", dest]);
        assert_eq!(code(&refused), 125, "cp into {dest}: {}", stderr(&refused));
        assert!(!stderr(&refused).contains("cannot reach the agent"), "cp into {dest}: {}", stderr(&refused));
    }
}

/// Listing a sandbox whose runs start and end back to back (what every transfer does first:
/// hold the sandbox) may find a run that ends before it can be used, or an idle sandbox that a
/// run takes first. Either is only the gap between two runs, which the agent looks past: no
/// listing may fail (before, one in about a hundred was a 409, and CI's API fuzzing met a 500).
#[test]
fn listings_succeed_while_runs_start_and_end_back_to_back() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    write(&dir.join("kept.txt"), "kept\n");
    let uploaded = agent.bkg_in(dir, &["cp", "kept.txt", "box:"]);
    assert_eq!(code(&uploaded), 0, "cp in: {}", stderr(&uploaded));
    let id = the_sandbox_id(&agent);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU32::new(0));
    let cycling = {
        let (socket, id, stop, started) = (agent.socket.clone(), id.clone(), Arc::clone(&stop), Arc::clone(&started));
        std::thread::spawn(move || {
            let mut busy = 0u32;
            let exec = json!({"command": "true", "detach": true});
            while !stop.load(Ordering::Relaxed) {
                match unix_request(&socket, "POST", &format!("/api/v1/sandboxes/{id}/exec"), Some(&exec)).status {
                    202 => _ = started.fetch_add(1, Ordering::Relaxed),
                    409 => busy += 1,
                    other => panic!("a detached exec answered {other}"),
                }
            }
            busy
        })
    };
    let mut answers = std::collections::BTreeMap::<u16, u32>::new();
    let mut unexpected = Vec::new();
    // At least 300 listings, and on until 20 runs have started and ended between them: a
    // machine busy with other work starts fewer runs in the same time (beside a build, 11 in 300).
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut listings = 0;
    while listings < 300 || (started.load(Ordering::Relaxed) < 20 && std::time::Instant::now() < patience) {
        listings += 1;
        // Room between transfers for the runs to go on.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let answer = unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{id}/files/list"), None);
        *answers.entry(answer.status).or_default() += 1;
        if answer.status != 200 {
            unexpected.push(answer.text());
        } else {
            assert!(entry_names(&answer.json()).contains(&"kept.txt".to_owned()), "{}", answer.text());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let busy = cycling.join().expect("the cycling thread");
    let started = started.load(Ordering::Relaxed);
    assert!(started >= 20, "runs kept starting meanwhile ({started} started, {busy} found it busy)");
    assert!(unexpected.is_empty(), "answers by status {answers:?}; not 200: {unexpected:?}");
}

/// A transfer into an idle sandbox holds it with a run of its own. That run is the transfer's:
/// while it goes on, a run of the sandbox is refused with what holds it (not "stop it first");
/// it ends as a success and is listed with the runs, and `bkg logs` and `bkg status` go on
/// showing the sandbox's own last run.
#[test]
fn a_transfer_holds_an_idle_sandbox_without_taking_the_place_of_its_runs() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python", "--script", "start=echo hello from box"]);
    assert_eq!(code(&added), 0, "add: {}", stderr(&added));
    let first = agent.bkgr(dir, &["box"]);
    assert_eq!((code(&first), stdout(&first)), (0, "hello from box\n".to_owned()), "{}", stderr(&first));
    let id = the_sandbox_id(&agent);
    let own_run = last_run(&agent, dir)["id"].clone();
    assert!(own_run.is_string(), "bkgr's run is the last run");

    // An upload whose body this test sends in two parts: the sandbox is held in between.
    let (mut upload, archive) = partial_upload(&agent, dir, &id, "uploaded\n", 512);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{id}"), None).json()["current_run"].is_null() {
        assert!(std::time::Instant::now() < deadline, "the upload never held the sandbox");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let refused = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("busy with a file transfer"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains("stop it first"), "{}", stderr(&refused));
    upload.write_all(&archive[512..]).expect("send the rest");
    let mut answer = String::new();
    upload.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let logs = agent.bkg_in(dir, &["logs", "box"]);
    assert_eq!(code(&logs), 0, "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "hello from box\n", "the log is still the sandbox's own last run's");
    assert_eq!(last_run(&agent, dir)["id"], own_run, "the transfer's run is not the sandbox's last run");
    let transfer = newest_run(&agent, &id);
    assert_ne!(transfer["id"], own_run, "the transfer's run is listed: {transfer}");
    assert_eq!(transfer["exit_code"], 0, "the transfer's run ended as a success: {transfer}");
    assert_eq!(transfer["file_transfer"], true, "the record says what the run was: {transfer}");
    let listed = agent.bkg_in(dir, &["runs", "ls", "--sandbox", "box"]);
    let row = stdout(&listed).lines().nth(1).map(str::to_owned).unwrap_or_default();
    assert!(row.split_whitespace().nth(2) == Some("cp"), "the newest run's type is cp: {}", stdout(&listed));
    let shown = agent.bkg_in(dir, &["exec", "box", "-c", "print(open('/workspace/in/a.txt').read(), end='')"]);
    assert_eq!(stdout(&shown), "uploaded\n", "{}", stderr(&shown));
}

/// A download through a run that ends before the download does keeps the sandbox's disk
/// mounted (its open files); the sandbox's next run waits for it instead of mounting the same
/// disk image a second time (two mounts of one ext4 image corrupt it).
#[test]
fn the_next_run_waits_for_a_download_that_outlasts_its_run_instead_of_mounting_the_disk_twice() {
    let agent = Agent::start();
    let project = project_with_box(
        &agent,
        &["--script", "nap=sleep 2", "--script", "fill=head -c 8M /dev/zero > /workspace/big.bin"],
    );
    let dir = project.path();
    let filled = agent.bkgr(dir, &["box", "fill"]);
    assert_eq!(code(&filled), 0, "{}", stderr(&filled));
    let id = the_sandbox_id(&agent);
    let napping = agent.bkgr(dir, &["-d", "box", "nap"]);
    assert_eq!(code(&napping), 0, "{}", stderr(&napping));

    // The download starts in the napping run; reading only its start, the test leaves the agent
    // blocked on a full socket with the file open.
    let mut download = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let head =
        format!("GET /api/v1/sandboxes/{id}/files?path=big.bin HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    download.write_all(head.as_bytes()).expect("send the request");
    let mut start = [0u8; 4096];
    download.read_exact(&mut start).expect("read the download's start");
    assert!(start.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&start[..100]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{id}"), None).json()["current_run"].is_null()
    {
        assert!(std::time::Instant::now() < deadline, "the nap never ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let workspaces = agent.state_dir.join("workspaces");
    let next = std::thread::scope(|scope| {
        let next = scope.spawn(|| agent.bkgr(dir, &["box", "show", "--", "/workspace/big.bin"]));
        // Longer than the napping sandbox's disposal waits for its loop device once nothing
        // holds it (engine/sandbox.rs `dispose`), so that a disposal not waiting for the
        // download would give up on the disk meanwhile.
        std::thread::sleep(std::time::Duration::from_secs(4));
        let devices = bkg_tests::loop_devices_under(&workspaces);
        assert!(devices.len() <= 1, "the sandbox's disk is attached twice: {devices:?}");
        assert!(!next.is_finished(), "the next run did not wait for the download");
        let mut rest = Vec::new();
        download.read_to_end(&mut rest).expect("read the rest of the download");
        let received = start.len() + rest.len();
        assert!(received > 8 * 1024 * 1024, "the whole file came: {received} bytes");
        next.join().expect("the next run's thread")
    });
    assert_eq!(code(&next), 0, "the next run went on once the download was done: {}", stderr(&next));
    assert_eq!(next.stdout.len(), 8 * 1024 * 1024);

    // The napping run's disposal waited for the download instead of giving up on its disk: every
    // run of the sandbox has its cleanup confirmed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let runs = unix_request(&agent.socket, "GET", &format!("/api/v1/runs?sandbox={id}"), None).json();
        let listed = runs.as_array().map(Vec::len).unwrap_or_default();
        let confirmed = runs.as_array().into_iter().flatten().filter(|run| run["cleaned_up"] == true).count();
        if listed >= 3 && confirmed == listed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a run's cleanup was never confirmed: {runs}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!agent.log().contains("cleanup incomplete"), "{}", agent.log());
}

/// Sandboxes are per project: where cave.yaml declares a name its own sandbox has not run yet,
/// `bkg cp` and `bkg exec` make that one, as bkgr would, and never take another project's
/// sandbox of that name; `bkg ls` lists it as not created until then.
#[test]
fn cp_and_exec_make_the_projects_own_sandbox_never_another_projects_of_the_same_name() {
    let agent = Agent::start();
    let first = project_with_box(&agent, &[]);
    let first_id = the_sandbox_id(&agent);
    let second = tempfile::tempdir().expect("second project");
    let dir = second.path();
    assert_eq!(code(&agent.bkg_in(dir, &["init", "--yes"])), 0);
    let added = agent.bkg_in(dir, &["add", "box", "--type", "python"]);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    write(&dir.join("mine.txt"), "the second project's\n");
    let listed = agent.bkg_in(dir, &["ls"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    assert!(stdout(&listed).contains("not created"), "{}", stdout(&listed));
    // A cave.yaml that cannot be read cannot say which sandbox it means: refused, as bkgr does.
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    write(&dir.join("cave.yaml"), &format!("{cave}colour: 1\n"));
    for attempt in
        [agent.bkg_in(dir, &["cp", "mine.txt", "box:"]), agent.bkg_in(dir, &["exec", "box", "-c", "print(1)"])]
    {
        assert_eq!(code(&attempt), 125, "{}", stderr(&attempt));
        assert!(stderr(&attempt).contains("colour"), "the file's problem is named: {}", stderr(&attempt));
    }
    write(&dir.join("cave.yaml"), &cave);
    let copied = agent.bkg_in(dir, &["cp", "mine.txt", "box:"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    let read = agent.bkg_in(dir, &["exec", "box", "-c", "print(open('mine.txt').read(), end='')"]);
    assert_eq!((code(&read), stdout(&read).as_str()), (0, "the second project's\n"), "{}", stderr(&read));
    let listed = agent.bkg_in(dir, &["ls"]);
    assert!(!stdout(&listed).contains("not created"), "{}", stdout(&listed));
    let files = unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{first_id}/files/list"), None).json();
    assert!(files.is_array(), "{files}");
    assert!(!entry_names(&files).contains(&"mine.txt".to_owned()), "the first project's sandbox got it: {files}");
    drop(first);
}

/// A disk only grows: a disk limit lowered in cave.yaml below the disk a sandbox has leaves the
/// disk as it is, and bkgr, bkg exec and bkg cp go on with it, its files with it (was: refused,
/// and with it every plain bkgr after a `bkgr --disk` had grown cave.yaml's disk).
#[test]
fn a_disk_limit_lowered_below_the_disk_leaves_the_disk_as_it_is() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &["--disk", "64MiB"]);
    let dir = project.path();
    let exec = agent.bkg_in(dir, &["exec", "box", "-c", "open('/workspace/kept.txt', 'w').write('mine')"]);
    assert_eq!(code(&exec), 0, "{}", stderr(&exec));
    let stop = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stop), 0, "the session ends: {}", stderr(&stop));
    let cave = std::fs::read_to_string(dir.join("cave.yaml")).expect("cave.yaml");
    assert!(cave.contains("disk: 64MiB"), "{cave}");
    std::fs::write(dir.join("cave.yaml"), cave.replace("disk: 64MiB", "disk: 32MiB")).expect("edit cave.yaml");
    let lowered = agent.bkgr(dir, &["box", "show", "--", "/workspace/kept.txt"]);
    assert_eq!((code(&lowered), stdout(&lowered).as_str()), (0, "mine"), "{}", stderr(&lowered));
    assert_eq!(last_run(&agent, dir)["limits"]["disk_bytes"], 64 * 1024 * 1024, "the run had the disk as it is");
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    // Said, with what to do (found by a new-user trial: 64MiB shown against 32MiB without a word).
    let note = "bkg: box: its disk is 64MiB, above cave.yaml's 32MiB: a disk only grows; `bkg rm box` starts over";
    assert!(stderr(&status).starts_with(note), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["limits"]["disk_bytes"], 64 * 1024 * 1024, "{status}");
    let exec = agent.bkg_in(dir, &["exec", "box", "-c", "print(open('/workspace/kept.txt').read())"]);
    assert_eq!((code(&exec), stdout(&exec).as_str()), (0, "mine\n"), "{}", stderr(&exec));
    assert!(!stderr(&exec).contains("goes on as bkgr last gave it"), "nothing was refused: {}", stderr(&exec));
    let copied = agent.bkg_in(dir, &["cp", "box:kept.txt", "copied"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(dir.join("copied/kept.txt")).expect("the copy"), "mine");
}

/// A disk grown by one run's flag keeps its size, and later runs that name no disk limit run
/// on it as it is (they were refused: "the disk limit 500MiB is below the 600MiB ..."), and
/// `bkg status` shows it.
#[test]
fn a_disk_grown_by_a_flag_keeps_its_size_for_the_runs_after() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let grown = agent.bkgr(dir, &["box", "--disk", "600MiB"]);
    assert_eq!(code(&grown), 0, "{}", stderr(&grown));
    let after = agent.bkgr(dir, &["box", "show", "--", "/etc/hostname"]);
    assert_eq!(code(&after), 0, "{}", stderr(&after));
    assert_eq!(last_run(&agent, dir)["limits"]["disk_bytes"], 600 * 1024 * 1024, "the run had the disk as it is");
    // And its sandbox says so (it showed the default 500MiB).
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["limits"]["disk_bytes"], 600 * 1024 * 1024, "{status}");
}

/// A disk grown by a flag over cave.yaml's own `disk`: the flag asked again runs, and so do
/// plain `bkgr`, `bkg exec` and `bkg cp`, on the disk as it is (while bkgr's other limit flags
/// hold for one run only, a grown disk stays grown, and its sandbox says so; a plain `bkgr` was
/// refused, "the disk limit 64MiB is below the 128MiB …", found by a new-user trial).
#[test]
fn a_disk_grown_by_a_flag_over_cave_yaml_s_own_stays_usable() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &["--disk", "64MiB"]);
    let dir = project.path();
    for _ in 0..2 {
        let grown = agent.bkgr(dir, &["box", "--disk", "128MiB"]);
        assert_eq!(code(&grown), 0, "{}", stderr(&grown));
    }
    let plain = agent.bkgr(dir, &["box"]);
    assert_eq!(code(&plain), 0, "{}", stderr(&plain));
    assert_eq!(last_run(&agent, dir)["limits"]["disk_bytes"], 128 * 1024 * 1024, "the run had the disk as it is");
    let status = agent.bkg_in(dir, &["status", "box"]);
    assert!(
        !stderr(&status).contains("changed in cave.yaml"),
        "cave.yaml's 64MiB is no change to apply: {}",
        stderr(&status)
    );
    let status = agent.bkg_in(dir, &["status", "box", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["limits"]["disk_bytes"], 128 * 1024 * 1024, "{status}");
    let exec = agent.bkg_in(dir, &["exec", "box", "-c", "open('/workspace/kept.txt', 'w').write('mine')"]);
    assert_eq!(code(&exec), 0, "{}", stderr(&exec));
    let copied = agent.bkg_in(dir, &["cp", "box:kept.txt", "copied"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(dir.join("copied/kept.txt")).expect("the copy"), "mine");
}

#[test]
fn an_upload_larger_than_the_disk_says_the_disk_is_full_and_leaves_what_was_there() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &["--disk", "32MiB"]);
    let dir = project.path();
    write(&dir.join("small/big.bin"), "the first version\n");
    // By id: the record itself changes as its cleanup is noted.
    let own_run = last_run(&agent, dir)["id"].clone();
    let first = agent.bkg_in(dir, &["cp", "small/big.bin", "box:"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    // Bytes, not a sparse file: an upload leaves zeros as holes, which take no room.
    std::fs::write(dir.join("big.bin"), vec![b'x'; 64 * 1024 * 1024]).expect("write");
    let full = agent.bkg_in(dir, &["cp", "big.bin", "box:"]);
    assert_eq!(code(&full), 125, "{}", stderr(&full));
    assert!(stderr(&full).contains("disk is full"), "{}", stderr(&full));
    let id = the_sandbox_id(&agent);
    assert_eq!(newest_run(&agent, &id)["exit_code"], 1, "the transfer's run failed with it");
    assert_eq!(last_run(&agent, dir)["id"], own_run, "transfers' runs are not the sandbox's last run");
    // The file already there is whole, nothing of the failed one is left, and the disk has
    // its room back; the sandbox is free again and still works.
    let after = agent.bkgr(dir, &["box", "show", "--", "/workspace/big.bin"]);
    assert_eq!(code(&after), 0, "{}", stderr(&after));
    assert_eq!(stdout(&after), "the first version\n");
    let files = unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{id}/files/list"), None).json();
    assert_eq!(entry_names(&files), ["big.bin"], "{files}");
    let again = agent.bkg_in(dir, &["cp", "small/big.bin", "box:again.bin"]);
    assert_eq!(code(&again), 0, "the disk has room again: {}", stderr(&again));
}

#[test]
fn exe_file_dir_puts_siblings_beside_the_script_and_output_brings_out_back() {
    let agent = Agent::start();
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path();
    write(&dir.join("app/helper.py"), "def greet():\n    return 'hello from helper'\n");
    write(&dir.join("app/pkg/__init__.py"), "NAME = 'pkg'\n");
    write(
        &dir.join("app/main.py"),
        "import helper, pkg\nprint(helper.greet(), pkg.NAME)\nopen('out/result.txt', 'w').write('made in the sandbox\\n')\n",
    );
    let results = dir.join("results");
    let run = agent
        .bkg()
        .args(["exe", "--file", "app", "app/main.py", "-o"])
        .arg(&results)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&run), 0, "stderr: {}", stderr(&run));
    assert_eq!(stdout(&run), "hello from helper pkg\n");
    assert_eq!(std::fs::read_to_string(results.join("result.txt")).expect("result"), "made in the sandbox\n");
    // Found by a new-user trial: the note told how to fetch the file `-o` had just brought.
    assert!(!stderr(&run).contains("bkg runs files"), "stderr: {}", stderr(&run));
}

/// `--file DIR/` follows a link only to a place inside DIR (found by a new-user trial: a
/// repository's link to a file outside handed that file to the code); a link to a directory
/// around it is not gone round; a name that is not UTF-8 and two uploads to one place are
/// refused with what to do, not lost or overwritten without a word.
#[test]
fn exe_file_dir_keeps_links_inside_it_and_refuses_what_it_cannot_send() {
    use std::os::unix::ffi::OsStrExt;
    let agent = Agent::start();
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path();
    write(&dir.join("secret.txt"), "outside\n");
    write(&dir.join("repo/data/values.txt"), "inside\n");
    write(
        &dir.join("repo/main.py"),
        "print(open('near.txt').read(), end='')\nprint(open('alias/values.txt').read(), end='')\n",
    );
    std::os::unix::fs::symlink("data/values.txt", dir.join("repo/near.txt")).expect("link");
    std::os::unix::fs::symlink("data", dir.join("repo/alias")).expect("link");
    std::os::unix::fs::symlink("..", dir.join("repo/data/up")).expect("link");
    let exe = |args: &[&str]| {
        agent.bkg().arg("exe").args(args).current_dir(dir).stdin(Stdio::null()).output().expect("bkg exe")
    };

    let run = exe(&["--file", "repo/", "repo/main.py"]);
    assert_eq!(code(&run), 0, "stderr: {}", stderr(&run));
    assert_eq!(stdout(&run), "inside\ninside\n");

    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("repo/creds")).expect("link");
    let leaking = exe(&["--file", "repo/", "repo/main.py"]);
    assert_eq!(code(&leaking), 125, "stdout: {}", stdout(&leaking));
    assert!(
        stderr(&leaking).contains("is a link to") && stderr(&leaking).contains("outside repo/"),
        "{}",
        stderr(&leaking)
    );
    assert!(!stdout(&leaking).contains("outside"));
    std::fs::remove_file(dir.join("repo/creds")).expect("unlink");

    std::fs::write(dir.join("repo").join(std::ffi::OsStr::from_bytes(b"\xffbad")), "x").expect("odd name");
    let odd = exe(&["--file", "repo/", "repo/main.py"]);
    assert_eq!(code(&odd), 125);
    assert!(stderr(&odd).contains("is not UTF-8"), "{}", stderr(&odd));
    std::fs::remove_file(dir.join("repo").join(std::ffi::OsStr::from_bytes(b"\xffbad"))).expect("unlink");

    write(&dir.join("d1/same.txt"), "one\n");
    write(&dir.join("d2/same.txt"), "two\n");
    let twice = exe(&["--file", "d1/", "--file", "d2/", "-t", "python", "-c", "print(open('same.txt').read())"]);
    assert_eq!(code(&twice), 125, "stdout: {}", stdout(&twice));
    assert!(stderr(&twice).contains("/workspace/same.txt is given twice"), "{}", stderr(&twice));
}

/// A run ended by its process limit takes its sandbox's pid 1 with it, which would have sent
/// /workspace/out/ back: `-o` then writes the files the run kept of it (found by a new-user
/// trial: the directory stayed empty without a word).
#[test]
fn output_brings_out_back_after_the_process_limit_ended_the_run() {
    let agent = Agent::start();
    let work = tempfile::tempdir().expect("dir");
    let results = work.path().join("results");
    let forking = "import os\nos.makedirs('out/deep', exist_ok=True)\nopen('out/deep/result.txt', 'w').write('kept\\n')\n\
                   while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let run = agent
        .bkg()
        .args(["exe", "--timeout", "30s", "-t", "python", "-c", forking, "-o"])
        .arg(&results)
        .stdin(Stdio::null())
        .output()
        .expect("bkg exe");
    assert_eq!(code(&run), 137, "stderr: {}", stderr(&run));
    assert!(stderr(&run).contains("process limit"), "{}", stderr(&run));
    assert_eq!(std::fs::read_to_string(results.join("deep/result.txt")).expect("the file"), "kept\n");
}

/// `-o` brings back no symbolic link the code made (one could point anywhere on the host), and
/// a DIR it cannot use is refused before a run is asked for: none is recorded.
#[test]
fn output_leaves_links_out_and_a_bad_dir_runs_nothing() {
    let agent = Agent::start();
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path();
    let results = dir.join("results");
    let linking = "import os\nos.symlink('/etc/hostname', 'out/host')\nos.symlink('data.txt', 'out/near')\n\
                   open('out/data.txt', 'w').write('data\\n')\n";
    let run = agent.bkg().args(["exe", "-t", "python", "-c", linking, "-o"]).arg(&results).output().expect("bkg exe");
    assert_eq!(code(&run), 0, "stderr: {}", stderr(&run));
    assert_eq!(std::fs::read_to_string(results.join("data.txt")).expect("the file"), "data\n");
    for link in ["host", "near"] {
        assert!(std::fs::symlink_metadata(results.join(link)).is_err(), "{link} was brought back");
    }
    let run_ids = || {
        let runs = unix_request(&agent.socket, "GET", "/api/v1/runs", None).json();
        runs.as_array().into_iter().flatten().map(|run| run["id"].to_string()).collect::<Vec<_>>()
    };
    let runs_before = run_ids();
    write(&dir.join("a-file"), "mine\n");
    for bad in [dir.join("a-file"), std::path::PathBuf::from("/proc/nope")] {
        let refused =
            agent.bkg().args(["exe", "-t", "python", "-c", "print('ran')", "-o"]).arg(&bad).output().expect("bkg exe");
        assert_eq!(code(&refused), 125, "{}", stderr(&refused));
        assert!(stderr(&refused).starts_with("bkg: --output "), "{}", stderr(&refused));
        assert_eq!(stdout(&refused), "", "nothing ran");
    }
    assert_eq!(run_ids(), runs_before, "no run was asked for");

    // A file DIR cannot take (a directory of that name is there): the run's result and exit
    // code still come, with a line that says what was not written and where the files are
    // kept; a run that succeeded is then 125 (found by a new-user trial: 125 and no result).
    let clash = dir.join("clash");
    std::fs::create_dir_all(clash.join("a.txt")).expect("a directory where a file goes");
    for (exit, code_expected) in [(3, 3), (0, 125)] {
        let writing = format!("open('out/a.txt', 'w').write('A')\nraise SystemExit({exit})");
        let run = agent
            .bkg()
            .args(["exe", "--json", "-t", "python", "-c", &writing, "-o"])
            .arg(&clash)
            .output()
            .expect("bkg exe");
        assert_eq!(code(&run), code_expected, "{}", stderr(&run));
        let result: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the run's JSON");
        assert_eq!(result["exit_code"], exit, "{result}");
        let said = stderr(&run);
        assert!(said.contains("--output: ") && said.contains(&clash.join("a.txt").display().to_string()), "{said}");
        assert!(
            said.contains(&format!("`bkg runs files {} --output DIR`", result["id"].as_str().unwrap_or("?"))),
            "{said}"
        );
    }
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(output.status.success());
    stdout(&output).split_whitespace().next().unwrap_or_default().to_owned()
}

/// The agent's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("VmHWM value") * 1024
}

#[test]
fn a_gibibyte_goes_in_and_out_unchanged_while_the_agent_stays_small() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &["--disk", "1536MiB"]);
    let dir = project.path();
    // 1 GiB of bytes that do not repeat within a chunk: no compression or sparseness helps.
    let source = dir.join("big.bin");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&source).expect("create"));
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1024 * 1024];
        for _ in 0..1024 {
            for byte in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            file.write_all(&block).expect("write");
        }
    }
    let uploaded = agent.bkg_in(dir, &["cp", "--json", "big.bin", "box:data"]);
    assert_eq!(code(&uploaded), 0, "cp in: {}", stderr(&uploaded));
    let answer: serde_json::Value = serde_json::from_slice(&uploaded.stdout).expect("cp --json");
    assert_eq!(answer["bytes"], 1u64 << 30);
    let back = dir.join("back");
    let downloaded = agent.bkg_in(dir, &["cp", "box:data/big.bin", back.to_str().expect("utf-8")]);
    assert_eq!(code(&downloaded), 0, "cp out: {}", stderr(&downloaded));
    assert_eq!(sha256(&back.join("big.bin")), sha256(&source), "the same bytes came back");
    let peak = peak_rss(agent.pid());
    assert!(peak < 100 * 1024 * 1024, "the agent's peak RSS was {peak} bytes");
}

/// Away from any project, a sandbox is the one of that name the agent shows the caller: `bkg
/// exec` finds it, and so do `bkg status`, `bkg logs` and `bkg stop`, which end the session
/// exec left (as its own hints say); an unknown name says neither place has it.
#[test]
fn outside_a_project_the_commands_find_the_agents_sandbox_by_name() {
    let agent = Agent::start();
    let _project = project_with_box(&agent, &[]);
    let elsewhere = tempfile::tempdir().expect("a directory without cave.yaml");
    let away = elsewhere.path();
    let exec = agent.bkg_in(away, &["exec", "box", "-c", "print(40 + 2)"]);
    assert_eq!((code(&exec), stdout(&exec).as_str()), (0, "42\n"), "{}", stderr(&exec));
    for command in [&["status", "box"][..], &["logs", "box"]] {
        let found = agent.bkg_in(away, command);
        assert_eq!(code(&found), 0, "{command:?}: {}", stderr(&found));
    }
    let stopped = agent.bkg_in(away, &["stop", "box", "--json"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    assert_eq!(stdout(&stopped), "[{\"name\":\"box\",\"stopped\":true}]\n", "the session ended");
    let unknown = agent.bkg_in(away, &["stop", "nobox"]);
    assert_eq!(code(&unknown), 125);
    assert!(
        stderr(&unknown).starts_with("bkg: no sandbox `nobox` on the agent, and no cave.yaml in "),
        "{}",
        stderr(&unknown)
    );
    // A cave.yaml that cannot be read is the refusal, not taken for none: the agent's sandbox of
    // that name elsewhere is left alone (found by a new-user trial: `bkg rm --force` removed it).
    let unreadable = tempfile::tempdir().expect("a directory");
    assert!(Command::new("mkfifo").arg(unreadable.path().join("cave.yaml")).status().expect("mkfifo").success());
    for command in [&["stop", "nobox"][..], &["exec", "nobox", "-c", "1"], &["stop", "box"], &["status", "box"]] {
        let refused = agent.bkg_in(unreadable.path(), command);
        assert_eq!(code(&refused), 125, "{command:?}");
        assert!(
            stderr(&refused).starts_with("bkg: cannot read ")
                && stderr(&refused)
                    .ends_with("cave.yaml: it is not a regular file (a pipe, a device, a socket or a directory)\n"),
            "{command:?}: {}",
            stderr(&refused)
        );
    }
    // Nor does `bkgr` there, which finds no cave.yaml: the hint is the project (was: `bkgr nobox`).
    let unknown = agent.bkg_in(away, &["exec", "nobox", "-c", "1"]);
    assert_eq!(code(&unknown), 125);
    assert!(
        stderr(&unknown).trim_end().ends_with(
            "or above: run this in the project that declares it (or give `-C DIR`), or create the sandbox with the API"
        ),
        "{}",
        stderr(&unknown)
    );
}

/// A named pipe has no content to copy: `bkg cp` out of a sandbox leaves it out and says so,
/// alone or in a directory beside files (was: "0 files, 0B" and exit 0, nothing said), as an
/// upload of one is refused.
#[test]
fn a_download_says_it_left_out_the_named_pipes() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let made = agent.bkg_in(dir, &["exec", "box", "-c", "import os\nos.makedirs('/workspace/d')\nos.mkfifo('/workspace/d/pipe')\nopen('/workspace/d/file', 'w').write('x')"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let alone = agent.bkg_in(dir, &["cp", "box:d/pipe", "alone"]);
    assert_eq!(code(&alone), 0, "{}", stderr(&alone));
    assert!(
        stderr(&alone).contains("left out 1 named pipe (pipe): a pipe has no content to copy"),
        "{}",
        stderr(&alone)
    );
    assert!(!dir.join("alone/pipe").exists(), "no pipe made on the host");
    let tree = agent.bkg_in(dir, &["cp", "box:d", "tree"]);
    assert_eq!(code(&tree), 0, "{}", stderr(&tree));
    assert!(stderr(&tree).contains("left out 1 named pipe (d/pipe)"), "{}", stderr(&tree));
    assert!(stderr(&tree).contains("1 file, 1B"), "{}", stderr(&tree));
    assert_eq!(std::fs::read_to_string(dir.join("tree/d/file")).expect("the file"), "x");
    assert!(std::fs::symlink_metadata(dir.join("tree/d/pipe")).is_err(), "no pipe made on the host");
}

/// `NAME:link/` is the directory the link leads to, as `cp -r link/ DEST` reads it: copied as a
/// directory under the link's name (was: the link itself); `NAME:link` is still the link.
#[test]
fn a_link_to_a_directory_named_with_a_trailing_slash_is_copied_as_the_directory() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let made = agent.bkg_in(dir, &["exec", "box", "-c", "import os\nos.makedirs('/workspace/inner')\nopen('/workspace/inner/a.txt', 'w').write('a')\nos.symlink('inner', '/workspace/link')"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let followed = agent.bkg_in(dir, &["cp", "box:link/", "followed"]);
    assert_eq!(code(&followed), 0, "{}", stderr(&followed));
    assert!(std::fs::symlink_metadata(dir.join("followed/link")).expect("link/").is_dir(), "a directory");
    assert_eq!(std::fs::read_to_string(dir.join("followed/link/a.txt")).expect("its file"), "a");
    let kept = agent.bkg_in(dir, &["cp", "box:link", "kept"]);
    assert_eq!(code(&kept), 0, "{}", stderr(&kept));
    assert_eq!(std::fs::read_link(dir.join("kept/link")).expect("a link"), Path::new("inner"));
}

/// A sandbox whose project was moved away keeps its workspace: a copy out of it (by its id, as
/// `bkg ls --all` shows it) says the project is gone and how to reach the files again, and
/// works once the project is back (found by a new-user trial: `project directory … does not
/// exist`, with `bkg rm`, which deletes the files, the only command that still worked).
#[test]
fn a_sandbox_whose_project_moved_away_says_how_to_reach_its_files() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let made = agent.bkg_in(dir, &["exec", "box", "-c", "open('/workspace/keep.txt', 'w').write('data')"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let stopped = agent.bkg_in(dir, &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
    let id = bkg_schema::sandbox::sandbox_id(&dir.to_string_lossy(), "box");
    let moved = dir.with_extension("moved");
    std::fs::rename(dir, &moved).expect("move the project away");
    let away = tempfile::tempdir().expect("a directory without cave.yaml");
    let refused = agent.bkg_in(away.path(), &["cp", &format!("{id}:keep.txt"), "out"]);
    std::fs::rename(&moved, dir).expect("move the project back");
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        format!(
            "bkg: sandbox `box`'s project directory {} is gone (moved or deleted): put the project back there to \
             run the sandbox or copy its files; its workspace is kept until `bkg rm {id}`\n",
            dir.display()
        )
    );
    let copied = agent.bkg_in(away.path(), &["cp", &format!("{id}:keep.txt"), "out"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(away.path().join("out/keep.txt")).expect("the copy"), "data");
    // The hint names the id: run in another project with a `box` of its own, it removes this
    // sandbox and leaves that project's (was: `bkg rm box`, which removed that one and its
    // cave.yaml entry; found by a new-user trial).
    let other = project_with_box(&agent, &[]);
    let other_id = bkg_schema::sandbox::sandbox_id(&other.path().to_string_lossy(), "box");
    let removed = agent.bkg_in(other.path(), &["rm", "--force", &id]);
    assert_eq!(code(&removed), 0, "{}", stderr(&removed));
    let sandboxes = unix_request(&agent.socket, "GET", "/api/v1/sandboxes", None).json();
    let ids: Vec<&str> = sandboxes.as_array().into_iter().flatten().filter_map(|info| info["id"].as_str()).collect();
    assert_eq!(ids, [other_id.as_str()], "only the other project's box is left");
    let cave = std::fs::read_to_string(other.path().join("cave.yaml")).expect("the other cave.yaml");
    assert!(cave.contains("box:"), "the other project's entry stays: {cave}");
}

/// A file that grows while `bkg cp` reads it is refused with one line naming it, and the sandbox
/// gets none of the copy (found by a new-user trial: the client sent more than the file's header
/// said, and the agent's error quoted the file's lines as a header it could not read).
#[test]
fn an_upload_of_a_file_that_grows_while_it_is_read_is_refused_by_name() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let log = dir.join("grow/log.txt");
    write(&log, &"line that was there first\n".repeat(2 * 1024 * 1024));
    let writing = Arc::new(AtomicBool::new(true));
    let appender = {
        let (writing, log) = (writing.clone(), log.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).expect("open the log");
            let mut line = 0u64;
            while writing.load(Ordering::Relaxed) {
                line += 1;
                file.write_all(format!("line {line} appended while copying\n").as_bytes()).expect("append");
            }
        })
    };
    let copied = agent.bkg_in(dir, &["cp", "grow", "box:in"]);
    writing.store(false, Ordering::Relaxed);
    appender.join().expect("the appender");
    assert_eq!(code(&copied), 125, "{}", stderr(&copied));
    assert_eq!(
        stderr(&copied),
        "bkg: grow/log.txt changed while it was copied (it grew): copy it again once nothing writes to it; the \
         sandbox got none of this copy\n"
    );
    let listed = agent.bkgr(dir, &["box", "show", "--", "/workspace/in/grow/log.txt"]);
    assert_eq!(code(&listed), 1, "nothing of the copy is in the sandbox: {}", stderr(&listed));
}

/// A procfs file reports a size of 0 whatever it holds: it is read whole and copied as read
/// (was: the tar stream broken, the agent quoting the file's content).
#[test]
fn a_procfs_file_is_copied_whole() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let copied = agent.bkg_in(dir, &["cp", "/proc/self/status", "box:in"]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    let shown = agent.bkgr(dir, &["box", "show", "--", "/workspace/in/status"]);
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    assert!(stdout(&shown).starts_with("Name:"), "{}", stdout(&shown));
    assert!(stdout(&shown).contains("\nPid:"), "{}", stdout(&shown));
}

/// The `.bkg-download-PID` files in `dir`.
fn download_stagings(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok);
    names
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".bkg-download-"))
        .collect()
}

/// SIGTERM (or Ctrl-C) during a download takes away the file being written and ends bkg with
/// 143 (130) and one line (found by a new-user trial: bkg died of the signal, saying nothing, and
/// left the file's staging, hundreds of MB, in the directory).
#[test]
fn an_interrupted_download_takes_its_staging_away_and_says_so() {
    let agent = Agent::start();
    let project = project_with_box(
        &agent,
        &["--disk", "1GiB", "--script", "fill=head -c 512M /dev/urandom > /workspace/big.bin"],
    );
    let dir = project.path();
    let filled = agent.bkgr(dir, &["box", "fill"]);
    assert_eq!(code(&filled), 0, "{}", stderr(&filled));
    let back = dir.join("back");
    let mut download = agent
        .bkg()
        .args(["cp", "box:big.bin", back.to_str().expect("utf-8")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bkg cp");
    // Once the file is being written beside its place.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while download_stagings(&back).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the download never began writing");
        assert!(download.try_wait().expect("try_wait").is_none(), "the download ended before it was interrupted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) on a child this test spawned; no memory is involved.
    unsafe { libc::kill(download.id() as i32, libc::SIGTERM) };
    let mut said = String::new();
    download.stderr.take().expect("stderr").read_to_string(&mut said).expect("stderr");
    let status = download.wait().expect("bkg cp");
    assert_eq!(status.code(), Some(143), "{said}");
    assert_eq!(
        said,
        format!(
            "bkg: the download was interrupted: the files of it already in {} are kept, the one being written was \
             removed\n",
            back.display()
        )
    );
    assert_eq!(download_stagings(&back), Vec::<String>::new(), "no staging left");
    assert!(!back.join("big.bin").exists(), "no half file in its place");
}

/// A download removes the stagings that a bkg killed with SIGKILL left in the directories it
/// writes into: only `.bkg-download-PID` files of processes that are gone, never a file of
/// another name or of a bkg still downloading.
#[test]
fn a_download_removes_the_stagings_dead_downloads_left() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let made = agent.bkg_in(dir, &["exec", "box", "-c", "open('/workspace/kept.txt', 'w').write('new')"]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let back = dir.join("back");
    let mut ended = Command::new("true").spawn().expect("true");
    let gone = ended.id();
    ended.wait().expect("true");
    let alive = std::process::id();
    let stale = format!(".bkg-download-{gone}");
    let kept = [format!(".bkg-download-{alive}"), ".bkg-download-notes".to_owned(), format!(".bkg-download-0{gone}")];
    for name in kept.iter().chain([&stale]) {
        write(&back.join(name), "left");
    }
    let copied = agent.bkg_in(dir, &["cp", "box:kept.txt", back.to_str().expect("utf-8")]);
    assert_eq!(code(&copied), 0, "{}", stderr(&copied));
    assert_eq!(std::fs::read_to_string(back.join("kept.txt")).expect("the copy"), "new");
    assert!(!back.join(&stale).exists(), "the dead download's staging is removed");
    for name in &kept {
        assert!(back.join(name).exists(), "{name} is not a dead download's: kept");
    }
}

/// Found by a trial: a download opened each entry by its path from /workspace, so a tree whose
/// paths are longer than the kernel takes (4096 bytes) broke off on the agent's side, and one
/// two thousand directories deep overflowed the stack of the agent's thread and ended the agent.
/// Entries are now opened from their directory's descriptor, up to 256 directories deep.
#[test]
fn a_download_sends_paths_longer_than_the_kernel_takes_and_refuses_a_tree_too_deep() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let made = agent.bkg_in(
        dir,
        &[
            "exec",
            "box",
            "-c",
            "import os\nfor top, levels, width in (('long', 45, 100), ('deep', 2000, 1)):\n    os.chdir('/workspace')\n    \
             os.mkdir(top); os.chdir(top)\n    for level in range(levels):\n        name = str(level % 10) * width\n        \
             os.mkdir(name); os.chdir(name)\n    open('f', 'w').write(top)\n\
             open('/workspace/small.txt', 'w').write('small')",
        ],
    );
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let id = the_sandbox_id(&agent);

    let long = unix_request(&agent.socket, "GET", &format!("/api/v1/sandboxes/{id}/files?path=long"), None);
    assert_eq!(long.status, 200, "{}", long.text());
    std::fs::write(dir.join("long.tar"), &long.body).expect("keep the stream");
    let listed = Command::new("tar").args(["-tf", "long.tar"]).current_dir(dir).output().expect("tar");
    assert!(listed.status.success(), "a whole tar stream: {}", String::from_utf8_lossy(&listed.stderr));
    let deepest = String::from_utf8_lossy(&listed.stdout).lines().map(str::len).max().unwrap_or(0);
    assert!(deepest > 4500, "the file 45 levels of 100 bytes down is in the stream (longest path {deepest} bytes)");
    let copied = agent.bkg_in(dir, &["cp", "box:long", "long-back"]);
    assert_eq!(code(&copied), 125, "{}", stderr(&copied));
    assert!(
        stderr(&copied).contains("more than this host takes: copy a directory further down"),
        "{}",
        stderr(&copied)
    );

    let deep = agent.bkg_in(dir, &["cp", "box:deep", "deep-back"]);
    assert_eq!(code(&deep), 125, "{}", stderr(&deep));
    assert!(stderr(&deep).contains("the agent stopped sending the download before its end"), "{}", stderr(&deep));
    assert!(agent.log().contains("is more than 256 directories deep"), "the agent's log says why");
    let small = agent.bkg_in(dir, &["cp", "box:small.txt", "small"]);
    assert_eq!(code(&small), 0, "the agent still serves: {}", stderr(&small));
    assert_eq!(std::fs::read_to_string(dir.join("small/small.txt")).expect("the small file"), "small");
}

/// Found by a trial: `-o` brought a file with a name that is not UTF-8 and bkg then said it was
/// "not kept", of the run's own store; it now says so of the run.
#[test]
fn output_brings_a_name_that_is_not_utf8_and_says_the_run_did_not_keep_it() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let ran = agent.bkg_in(
        dir.path(),
        &["exe", "-o", "back", "--type", "python", "-c", "open(b'/workspace/out/bad\\xffname', 'wb').write(b'x')"],
    );
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    use std::os::unix::ffi::OsStrExt;
    let brought = dir.path().join("back").join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    assert_eq!(std::fs::read(&brought).expect("the file -o brought"), b"x");
    assert!(stderr(&ran).contains("bkg: not kept with the run: out/bad"), "{}", stderr(&ran));
}

/// A download onto a full host disk says the disk is full, not only that tar failed to unpack
/// (found by a new-user trial), and keeps nothing half-written.
#[test]
fn a_download_onto_a_full_disk_says_so() {
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let tiny = dir.path().join("tiny");
    std::fs::create_dir(&tiny).expect("mkdir");
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1M", "bkg-test"]).arg(&tiny).status();
    assert!(status.is_ok_and(|status| status.success()), "mount a 1 MiB tmpfs");
    let _mounted = Mounted(tiny.clone());
    let code_text = "open('/workspace/out/big.bin', 'wb').write(b'x' * (4 << 20))";
    let full = agent.exe(&["-o", tiny.to_str().expect("utf-8"), "--type", "python", "-c", code_text]);
    assert_eq!(code(&full), 125, "{}", stderr(&full));
    assert!(stderr(&full).contains("No space left on device"), "{}", stderr(&full));
    let left: Vec<_> = std::fs::read_dir(&tiny).expect("tiny").collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Ctrl-C during an upload ends bkg with a word and the signal's exit code, as during a download
/// (found by a new-user trial: bkg died of the signal, silent), and the sandbox gets none of it.
#[test]
fn an_interrupted_upload_says_so_and_places_nothing() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let big = std::fs::File::create(dir.join("big.bin")).expect("create");
    big.set_len(400 * 1024 * 1024).expect("size");
    let mut copy = agent.bkg();
    let copy = copy.args(["cp", "big.bin", "box:in"]).current_dir(dir).stderr(Stdio::piped()).spawn().expect("bkg cp");
    // Once bkg has read more of the file than its chunks in flight hold, the agent is taking the
    // upload: stopped there, it holds bkg in the middle of sending.
    let read_bytes = |pid: u32| {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        io.lines().find_map(|line| line.strip_prefix("rchar: ")?.parse::<u64>().ok()).unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while read_bytes(copy.id()) < 16 << 20 {
        assert!(std::time::Instant::now() < deadline, "bkg cp never started sending");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let agent_pid = i32::try_from(agent.pid()).expect("pid");
    let copy_pid = i32::try_from(copy.id()).expect("pid");
    // SAFETY: kill(2) of the agent and the bkg this test started.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGSTOP) }, 0, "stop the test's own agent");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(copy_pid, libc::SIGINT) }, 0, "Ctrl-C");
    let output = copy.wait_with_output().expect("bkg cp");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGCONT) }, 0, "let it go on");
    assert_eq!(
        (code(&output), stderr(&output)),
        (
            130,
            "bkg: the upload was interrupted: the agent places an upload only once all of it has arrived, so the \
             sandbox has all of it or none\n"
                .to_owned()
        )
    );
    let listed = agent.bkgr(dir, &["box", "show", "--", "/workspace/in/big.bin"]);
    assert_eq!(code(&listed), 1, "nothing of the file is there: {}", stderr(&listed));
}

/// A sparse file goes into the sandbox sparse, its zeros left holes, reads back the same, and
/// comes out sparse (found by a new-user trial: a 200 MiB sparse file took 200 MiB of the
/// sandbox's disk).
#[test]
fn a_sparse_file_stays_sparse_both_ways() {
    let agent = Agent::start();
    let project = project_with_box(&agent, &[]);
    let dir = project.path();
    let mut sparse = std::fs::File::create(dir.join("sparse.bin")).expect("create");
    sparse.write_all(b"head").expect("write");
    sparse.set_len(64 << 20).expect("size");
    drop(sparse);
    let uploaded = agent.bkg_in(dir, &["cp", "sparse.bin", "box:"]);
    assert_eq!(code(&uploaded), 0, "{}", stderr(&uploaded));
    let code_text = "import os\nst = os.stat('/workspace/sparse.bin')\n\
                     data = open('/workspace/sparse.bin', 'rb').read()\n\
                     print(st.st_size, st.st_blocks * 512 < (1 << 20), data == b'head' + bytes(len(data) - 4))";
    let shown = agent.bkg_in(dir, &["exec", "box", "-c", code_text]);
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    assert_eq!(stdout(&shown), format!("{} True True\n", 64 << 20));
    // And comes back sparse (found by a new-user trial: a download filled it in).
    let back = dir.join("back");
    let downloaded = agent.bkg_in(dir, &["cp", "box:sparse.bin", back.to_str().expect("utf-8")]);
    assert_eq!(code(&downloaded), 0, "{}", stderr(&downloaded));
    let meta = std::fs::metadata(back.join("sparse.bin")).expect("the download");
    assert_eq!(meta.len(), 64 << 20);
    let blocks = std::os::unix::fs::MetadataExt::blocks(&meta);
    assert!(blocks * 512 < 1 << 20, "{blocks} blocks");
    let mut head = [0u8; 4];
    std::fs::File::open(back.join("sparse.bin")).and_then(|mut file| file.read_exact(&mut head)).expect("read");
    assert_eq!(&head, b"head");
}
