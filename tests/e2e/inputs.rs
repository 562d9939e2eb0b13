//! Bad input gets one clear line on stderr and a documented exit code, never a panic.

use bkg_tests::{Agent, AgentOptions, code, examples_dir, stderr, stdout};
use std::os::unix::process::CommandExt as _;

fn assert_one_line_error(output: &std::process::Output, expected_code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(code(output), expected_code, "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(err.starts_with("bkg: "), "got: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "got: {err}");
}

/// `bkg ARGS` with no agent to reach and an empty stdin: for what bkg refuses before it asks one.
fn bkg_without_an_agent(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bkg_tests::bkg_bin())
        .args(args)
        .env("BKG_SOCKET", "/nonexistent/agent.sock")
        .env("BKG_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bkg")
}

/// Files too big to travel in one request are refused before anything is sent, with the way
/// that has no such limit.
#[test]
fn files_over_the_request_limit_are_refused_with_bkg_cp_as_the_way() {
    let dir = tempfile::tempdir().expect("dir");
    let big = dir.path().join("big.bin");
    std::fs::File::create(&big).and_then(|file| file.set_len(49 * 1024 * 1024)).expect("a 49 MiB file");
    let output = std::process::Command::new(bkg_tests::bkg_bin())
        .args(["exe", "--type", "python", "-c", "pass", "--file"])
        .arg(&big)
        .env("BKG_SOCKET", dir.path().join("no-agent.sock"))
        .env("BKG_NO_AUTOSTART", "1")
        .output()
        .expect("bkg exe");
    assert_one_line_error(
        &output,
        125,
        "over the 64MiB one run may send: copy big files into a persistent sandbox with `bkg cp`",
    );
}

/// Code, an env file or a requirements file without end (`/dev/zero`) is refused once it holds
/// more than a run may send, having read no more (found by a new-user trial: bkg took gigabytes
/// before any check). Run under a 1 GiB address-space limit, so that reading it all fails.
#[test]
fn endless_inputs_are_refused_at_the_request_bound_not_read_whole() {
    for (args, said) in [
        (&["exe", "-t", "python", "/dev/zero"][..], "bkg: /dev/zero holds more than the 64MiB one run may send"),
        (&["exe", "-t", "python", "--env-file", "/dev/zero", "-c", "pass"][..], "it holds more than the 64MiB"),
        (&["exe", "-t", "python", "-r", "/dev/zero", "-c", "pass"][..], "it holds more than the 64MiB"),
    ] {
        let output = std::process::Command::new("sh")
            .args(["-c", "ulimit -v 1048576; exec \"$0\" \"$@\""])
            .arg(bkg_tests::bkg_bin())
            .args(args)
            .env("BKG_SOCKET", "/nonexistent/agent.sock")
            .env("BKG_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bkg");
        assert_one_line_error(&output, 125, said);
    }
}

/// `-e NAME` of a variable whose value here is not UTF-8 is refused in one line, not dropped
/// unsaid (found by a new-user trial: the code saw no such variable, and the run went on).
#[test]
fn a_variable_passed_on_whose_value_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt as _;
    let output = std::process::Command::new(bkg_tests::bkg_bin())
        .args(["exe", "-e", "WEIRD", "-t", "python", "-c", "pass"])
        .env("WEIRD", std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .env("BKG_SOCKET", "/nonexistent/agent.sock")
        .env("BKG_NO_AUTOSTART", "1")
        .output()
        .expect("bkg");
    assert_one_line_error(&output, 125, "--env: `WEIRD`'s value here is not UTF-8 text");
}

/// `-c CODE` after a script is refused, as python3 would give it to the script (found by a
/// new-user trial: `bkg exe tool.py -c conf.yaml` ran the conf file as Python); after `--` it is
/// the script's. Options after `-c CODE`'s first argument are said to be bkg's.
#[test]
fn code_after_a_script_is_refused_and_options_after_code_arguments_are_said() {
    let refused = bkg_without_an_agent(&["exe", "-t", "python", "tool.py", "-c", "print(1)"]);
    assert_one_line_error(&refused, 125, "-c comes after the script tool.py: give a script or -c CODE, not both");
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let tool = dir.path().join("tool.py");
    std::fs::write(&tool, "import sys\nprint(sys.argv[1:])\n").expect("tool.py");
    let given = agent.exe(&[tool.to_str().expect("utf-8"), "--", "-c", "conf.yaml"]);
    assert_eq!((code(&given), stdout(&given).as_str()), (0, "['-c', 'conf.yaml']\n"), "{}", stderr(&given));
    let taken = agent.exe(&["-t", "python", "-c", "import sys; print(sys.argv[1:])", "a", "--timeout", "30s"]);
    assert_eq!((code(&taken), stdout(&taken).as_str()), (0, "['a']\n"), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("`--timeout 30s` after a was taken as bkg's own"), "{}", stderr(&taken));
}

/// A script name or an argument that is not UTF-8 cannot travel to the agent as text: one line
/// that shows its bytes, not clap's generic error and usage block (found by a new-user trial).
#[test]
fn an_argument_that_is_not_utf8_is_named_in_one_line() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join(std::ffi::OsStr::from_bytes(b"n\xffame.py"));
    std::fs::write(&script, "print(1)\n").expect("script");
    // A file's name is to be renamed; any other value given another way.
    for (args, way_out) in [
        (vec![script.as_os_str()], "; rename the file\n"),
        (
            vec![
                std::ffi::OsStr::new("-tpython"),
                std::ffi::OsStr::new("-c"),
                std::ffi::OsStr::new("pass"),
                std::ffi::OsStr::from_bytes(b"\xfe"),
            ],
            "; give the value another way (in a file, or on stdin)\n",
        ),
    ] {
        let output = std::process::Command::new(bkg_tests::bkg_bin())
            .arg("exe")
            .args(&args)
            .env("BKG_SOCKET", dir.path().join("no-agent.sock"))
            .env("BKG_NO_AUTOSTART", "1")
            .output()
            .expect("bkg exe");
        assert_one_line_error(&output, 125, "is not valid UTF-8: names, arguments and values go to the agent as text");
        assert!(stderr(&output).contains("\\xFF") || stderr(&output).contains("\\xFE"), "{}", stderr(&output));
        assert!(stderr(&output).ends_with(way_out), "{}", stderr(&output));
    }
}

/// A count or position below 0 is one line that says what the flag takes, not clap's "unexpected
/// argument" with advice to write `-- -1` (found by a new-user trial).
#[test]
fn a_negative_count_is_one_line_that_says_what_the_flag_takes() {
    for (args, said) in [
        (&["logs", "web", "-n", "-1"][..], "--tail: `-1` is not a whole number of 0 or more"),
        (&["audit", "tail", "-n", "-1"][..], "--lines: `-1` is not a whole number of 0 or more"),
        (&["watch", "--count", "-3"][..], "--count: `-3` is not a whole number of 0 or more"),
        (&["logs", "web", "-n", "ten"][..], "--tail: `ten` is not a whole number of 0 or more"),
        // Its range, for any value outside it (was: `-1` a whole number of 0 or more, then 0 refused).
        (&["runs", "ls", "--limit", "-1"][..], "--limit: `-1`: give 1 to 1000"),
        (&["runs", "ls", "--limit", "0"][..], "--limit: `0`: give 1 to 1000"),
    ] {
        let output = bkg_without_an_agent(args);
        assert_one_line_error(&output, 125, said);
    }
}

/// A script's arguments given to bkgr without `--` are one line with the command that gives them
/// (found by a new-user trial: only "unexpected argument").
#[test]
fn bkgr_names_the_dashes_a_script_s_arguments_go_after() {
    let output = std::process::Command::new(bkg_tests::bin_dir().join("bkgr"))
        .args(["api", "argv", "x", "y z"])
        .env("BKG_SOCKET", "/nonexistent/agent.sock")
        .env("BKG_NO_AUTOSTART", "1")
        .output()
        .expect("bkgr");
    assert_eq!(
        (code(&output), stderr(&output)),
        (
            125,
            "bkgr: unexpected argument `x`: a script's arguments go after `--`: bkgr api argv -- x 'y z'\n".to_owned()
        )
    );
    // A flag after the script is the script's too (found by a new-user trial); one before it is
    // bkgr's, and unknown.
    for (args, said) in [
        (&["api", "argv", "--x"][..], "a script's arguments go after `--`: bkgr api argv -- --x\n"),
        (&["api", "--x"][..], "`bkgr --help` lists what it takes\n"),
    ] {
        let output = std::process::Command::new(bkg_tests::bin_dir().join("bkgr"))
            .args(args)
            .env("BKG_SOCKET", "/nonexistent/agent.sock")
            .env("BKG_NO_AUTOSTART", "1")
            .output()
            .expect("bkgr");
        assert_eq!(code(&output), 125);
        assert!(stderr(&output).ends_with(said), "{}", stderr(&output));
    }
}

/// Code after a session's sandbox name, as `docker exec` takes its command, is one line with the
/// two ways to give it (found by a new-user trial: clap's "unexpected argument" and usage).
#[test]
fn code_after_the_name_of_bkg_exec_says_where_code_goes() {
    for args in [&["exec", "box", "print(1)"][..], &["exec", "box", "-c", "x = 1", "extra"]] {
        let output = bkg_without_an_agent(args);
        assert_one_line_error(&output, 125, "the code goes after -c (`bkg exec NAME -c 'print(1)'`) or on stdin");
    }
    // Installed under another name: clap's usage names the binary as it was called.
    let dir = tempfile::tempdir().expect("temp dir");
    let renamed = dir.path().join("bkg-renamed");
    std::os::unix::fs::symlink(bkg_tests::bkg_bin(), &renamed).expect("symlink");
    let output = std::process::Command::new(&renamed)
        .args(["exec", "box", "print(1)"])
        .env("BKG_SOCKET", "/nonexistent/agent.sock")
        .env("BKG_NO_AUTOSTART", "1")
        .output()
        .expect("bkg-renamed");
    assert_eq!(code(&output), 125, "{}", stderr(&output));
    assert!(stderr(&output).contains("the code goes after -c"), "{}", stderr(&output));
}

/// A secret's name is checked before its value is asked for: typed in (on a terminal, unshown)
/// only to hear the name was wrong, or refused as empty when the name was what was wrong
/// (found by a new-user trial: `bkg secrets set bad-name </dev/null` said the value was empty).
#[test]
fn a_bad_secret_name_is_said_before_the_value_is_read() {
    let output = bkg_without_an_agent(&["secrets", "set", "bad-name"]);
    assert_one_line_error(&output, 125, "secret name `bad-name` must be an environment variable name");
}

/// A value over a secret's bound is refused with that bound, at any size (found by a new-user
/// trial: 50 MB were refused as a request body over 64KiB, 32,769 bytes with the bound), and a
/// name no secret can have is said to be that by `rm` too (was: "no secret `bad name`").
#[test]
fn a_secrets_value_over_its_bound_is_refused_with_the_bound_at_any_size() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    // `bkg secrets set NAME` with `value` on stdin; bkg stops reading past the bound, and the
    // rest of the pipe is then refused (EPIPE).
    let set_to = |name: &str, value: &[u8]| {
        let mut set = agent
            .bkg()
            .args(["secrets", "set", name])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bkg secrets set");
        let _ = std::io::Write::write_all(&mut set.stdin.take().expect("stdin"), value);
        set.wait_with_output().expect("bkg secrets set")
    };
    for bytes in [32 * 1024 + 1, 50_000_000] {
        let set = set_to("BIG", &vec![b'x'; bytes]);
        assert_one_line_error(&set, 125, "a secret's value must be at most 32768 bytes, without NUL bytes");
    }
    let rm = agent.bkg().args(["secrets", "rm", "bad name"]).output().expect("bkg secrets rm");
    assert_one_line_error(&rm, 125, "secret name `bad name` must be an environment variable name");
    // A value set over another says so: the one before cannot be read back.
    let set = |value: &str| set_to("TOKEN", value.as_bytes());
    let first = set("one");
    assert_eq!((code(&first), stderr(&first)), (0, "bkg: secret TOKEN set in namespace default\n".to_owned()));
    let second = set("two");
    assert_eq!(
        (code(&second), stderr(&second)),
        (0, "bkg: secret TOKEN set in namespace default (in place of the value it had)\n".to_owned())
    );
}

/// A positional number given as something else is one line naming it (found by a new-user
/// trial: `bkg sync retry abc` said `[SEQ]: invalid digit found in string`).
#[test]
fn a_positional_number_that_is_none_is_named_in_one_line() {
    let output = bkg_without_an_agent(&["sync", "retry", "abc"]);
    assert_one_line_error(&output, 125, "bkg: SEQ: `abc` is not a whole number of 0 or more");
    // An age past any is not told of an agent's maximum, which bounds limits, not ages.
    let output = bkg_without_an_agent(&["envs", "prune", "--unused-for", "99999999999999999h"]);
    assert_one_line_error(
        &output,
        125,
        "--unused-for: `99999999999999999h` is longer than any environment has been kept",
    );
}

/// A key that cannot be one and a credentials file that is none are said with what to do (found
/// by a new-user trial: the agent's "the Authorization header is not text", the parser's error).
#[test]
fn a_bad_key_or_credentials_file_is_said_with_the_fix() {
    let home = tempfile::tempdir().expect("home");
    let remote = |key: Option<&str>| {
        let mut command = std::process::Command::new(bkg_tests::bkg_bin());
        command
            .args(["--remote", "http://127.0.0.1:1", "runs", "ls"])
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("BKG_CREDENTIAL_STORE", "file");
        match key {
            Some(key) => command.env("BKG_API_KEY", key),
            None => command.env_remove("BKG_API_KEY"),
        };
        command.output().expect("bkg")
    };
    assert_one_line_error(&remote(Some("bkg_ns_é")), 125, "BKG_API_KEY holds characters no API key has");
    let file = home.path().join(".config/bkg/credentials");
    std::fs::create_dir_all(file.parent().expect("its directory")).expect("mkdir");
    std::fs::write(&file, "not JSON").expect("write");
    assert_one_line_error(&remote(None), 125, "move it aside and `bkg --remote URL login` again");
}

/// Found by a new-user trial: `--kinds ''` followed every kind, a number past the most a flag
/// takes was "not a whole number", a name with a newline broke the refusal's one line, and a
/// detached run's `--timeout` was said to be cave.yaml's.
#[test]
fn odd_values_are_refused_or_said_as_they_are() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let kinds = agent.bkg().args(["watch", "--kinds", " , "]).output().expect("bkg watch");
    assert_one_line_error(&kinds, 125, "--kinds: give one or more of runs, sandboxes, keys, audit");
    let alone = agent.bkg().args(["runs", "ls", "-C", "/tmp"]).output().expect("bkg runs ls");
    assert_one_line_error(&alone, 125, "-C /tmp says where --sandbox NAME's project is: give --sandbox NAME too");
    let since = agent.bkg().args(["watch", "--since", "18446744073709551616"]).output().expect("bkg watch");
    assert_one_line_error(&since, 125, "--since: `18446744073709551616` is too large");
    let nowhere = tempfile::tempdir().expect("a directory of no project");
    let newline = agent.bkg_in(nowhere.path(), &["status", "a\nb"]);
    assert_one_line_error(&newline, 125, "no sandbox `a\\nb` on the agent");

    let project = tempfile::tempdir().expect("project");
    std::fs::write(
        project.path().join("cave.yaml"),
        "version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: sleep 30\n",
    )
    .expect("cave.yaml");
    // An --output that cannot be a directory says what to do too.
    let output = agent.exe(&["-o", "/proc/nowhere", "--type", "python", "-c", "pass"]);
    assert_one_line_error(&output, 125, "--output /proc/nowhere: cannot make it a directory (");
    assert!(stderr(&output).ends_with(": give a directory that exists, or one bkg may make\n"), "{}", stderr(&output));
    let detached = agent.bkgr(project.path(), &["-d", "box", "--timeout", "5s"]);
    assert_eq!(code(&detached), 0, "{}", stderr(&detached));
    assert_eq!(stderr(&detached), "bkgr: box: its run ends at its timeout, 5s (--timeout, for this run)\n");
    let stopped = agent.bkg_in(project.path(), &["stop", "box"]);
    assert_eq!(code(&stopped), 0, "{}", stderr(&stopped));
}

/// One shape per array: a run record and a key have every field, set or not (found by two
/// new-user trials: `queued`, `file_transfer`, `denials` and `created_by_key` came and went).
#[test]
fn json_records_have_every_field_set_or_not() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let ran = agent.exe(&["--type", "python", "-c", "pass"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    let runs = agent.bkg().args(["runs", "ls", "--json"]).output().expect("bkg runs ls");
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs JSON");
    let run = &runs[0];
    for (field, unset) in [
        ("queued", serde_json::json!(false)),
        ("file_transfer", serde_json::json!(false)),
        ("denials", serde_json::json!([])),
        ("network_denials", serde_json::json!([])),
    ] {
        assert_eq!(run.get(field), Some(&unset), "{field}: {run}");
    }
    let made = agent.bkg().args(["keys", "create", "--role", "session", "--namespace", "t"]).output().expect("create");
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let keys = agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).expect("keys JSON");
    assert_eq!(keys[0].get("created_by_key"), Some(&serde_json::Value::Null), "{keys}");
}

#[test]
fn a_missing_script_is_127() {
    let agent = Agent::start();
    assert_one_line_error(&agent.exe(&["/nonexistent/script.py"]), 127, "script not found: /nonexistent/script.py");
}

#[test]
fn bad_flags_and_limits_are_125() {
    let agent = Agent::start();
    let hello = examples_dir().join("hello.py");
    let hello = hello.to_str().unwrap_or_default();
    let examples = examples_dir();
    let examples = examples.to_str().unwrap_or_default();
    let project = tempfile::tempdir().expect("dir");
    std::fs::write(project.path().join("main.py"), "print(1)\n").expect("main.py");
    let project = project.path().to_str().unwrap_or_default().to_owned();
    let with_main =
        format!("{project} is a directory: give the script in it (`bkg exe --file {project} {project}/main.py`");
    // Found by a new-user trial: files larger than the disk were told only that they did not fit.
    let big = tempfile::NamedTempFile::new().expect("file");
    big.as_file().set_len(20 << 20).expect("a 20 MiB file");
    let big = big.path().to_str().unwrap_or_default().to_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["--type", "python", &project], &with_main),
        (
            &["--disk", "16MiB", "--file", &big, hello],
            "the script and its files come to 20.0MiB, which do not fit: the sandbox's disk is 16MiB: give fewer \
             files, or ask for a larger disk limit",
        ),
        // Found by a new-user trial: it was refused by the installer's log, after a wait.
        (
            &["--with", "bad name!!", hello],
            "--with is not a requirement (after the name `bad` comes what is not a version",
        ),
        // Found by a new-user trial: for `/tmp` it suggested sending all of /tmp.
        (&["--type", "python", examples], "is a directory: give a script file"),
        (&["--type", "ruby", "-c", "puts 1"], "--type: `ruby` is not a language: use python or node"),
        (
            &["-t", hello],
            "is not a language: use python or node (-t is the language; the script comes after it, and a terminal is -T)",
        ),
        (&["-c", "print(1)"], "need --type"),
        (&[""], "the script's path is empty: give a file, like `bkg exe hello.py`"),
        (&["-o", "", hello], "--output <DIR> needs a value, and it was empty or missing"),
        (&["--net", "none", hello], "--net none: no network is the default, leave --net out"),
        (
            &["-p", "18704:8000", "-p", "0.0.0.0:18704:8000", hello],
            "host port 0.0.0.0:18704 is forwarded twice: `127.0.0.1:18704:8000` and `0.0.0.0:18704:8000`",
        ),
        (&["--net", "", hello], "--net: a host is empty"),
        (&["--net", "pypi.org,,example.org", hello], "--net: a host is empty"),
        (&["--memory", "0", hello], "--memory: `0` is too small: the least is 16MiB"),
        (&["--memory", "8MiB", hello], "--memory: `8MiB` is too small: the least is 16MiB"),
        (&["--cpus", "0.005", hello], "--cpus: `0.005` is too small: the least is 0.01"),
        (&["--memory", "lots", hello], "--memory: `lots` is not a size"),
        (&["--timeout", "-1", hello], "--timeout: `-1` is not a duration"),
        // Found by a trial: `1M` asked for a month (humantime's), `10S` said only "not a duration".
        (&["--timeout", "1M", hello], "--timeout: `1M` is ambiguous: write `m` or `min` for minutes, `d` for days"),
        (&["--timeout", "10S", hello], "--timeout: `10S` is not a duration: write its unit in lowercase, `10s`"),
        (&["--cpus", "0", hello], "--cpus"),
        (
            &["--memory", "1TiB", hello],
            "memory 1TiB is above this agent's maximum of 8GiB; ask for less, or have the agent started with a higher --max-memory",
        ),
        (
            &["--timeout", "2h", hello],
            "timeout 2h is above this agent's maximum of 1h; ask for less, or have the agent started with a higher --max-timeout",
        ),
        (&["--timeout", "none", hello], "timeout none is only for persistent sandboxes (cave.yaml, bkgr)"),
        (&["--memory", "10TB", hello], "memory 10TB is above this agent's maximum of 8GiB"),
        (&["--env", "1X=y", hello], "--env: `1X` is not a variable name"),
        (&["--env-file", "/nonexistent/.env", hello], "--env-file /nonexistent/.env"),
        (&["--file", "/nonexistent/data", hello], "--file /nonexistent/data"),
        (&["--file", "/etc/hostname:../escape", hello], "must be inside /workspace or /tmp"),
        (&["--file", "/etc/hostname:", hello], "--file /etc/hostname:: give the place in /workspace after `:`"),
    ];
    for (args, needle) in cases {
        assert_one_line_error(&agent.exe(args), 125, needle);
    }
    // The agent says the same to a request that did not come through bkg's flags.
    let request = serde_json::json!({ "language": "python", "code": "pass", "limits": { "memory_bytes": 8 << 20 } });
    let refused = bkg_tests::http::unix_request(&agent.socket, "POST", "/api/v1/runs", Some(&request));
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(refused.text().contains("memory limit 8MiB is too small: the least is 16MiB"), "{}", refused.text());
}

#[test]
fn a_file_without_a_known_extension_needs_a_type() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("job.rb");
    std::fs::write(&script, "print(1)").expect("write");
    let given = script.to_str().unwrap_or_default();
    assert_one_line_error(&agent.exe(&[given]), 125, &format!("cannot tell the language of `{given}`"));
    let output = agent.exe(&["--type", "python", script.to_str().unwrap_or_default()]);
    assert_eq!(code(&output), 0, "stderr: {}", stderr(&output));
    // A `#!` line tells it, as it would tell the kernel.
    let tool = dir.path().join("tool");
    std::fs::write(&tool, "#!/usr/bin/env node\nconsole.log(typeof require)").expect("write");
    let output = agent.exe(&[tool.to_str().unwrap_or_default()]);
    assert_eq!((code(&output), stdout(&output)), (0, "function\n".to_owned()), "stderr: {}", stderr(&output));
    // One that names another interpreter is told so (found by a new-user trial: it was told to
    // add --type, as if the language were unknown).
    let ruby = dir.path().join("gem-tool");
    std::fs::write(&ruby, "#!/usr/bin/env ruby\nputs 1").expect("write");
    let given = ruby.to_str().unwrap_or_default();
    assert_one_line_error(
        &agent.exe(&[given]),
        125,
        &format!("`{given}`'s #! line names ruby, which bkg does not run: bkg runs python and node"),
    );
}

#[test]
fn no_agent_is_125_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(bkg_tests::bkg_bin())
        .args(["exe", examples_dir().join("hello.py").to_str().unwrap_or_default()])
        .env("BKG_SOCKET", dir.path().join("nobody.sock"))
        .env("BKG_NO_AUTOSTART", "1")
        .output()
        .expect("run bkg");
    assert_one_line_error(&output, 125, "no agent is running at");
    assert!(stderr(&output).contains("bkg agent start"));
    // Found by a new-user trial: these said hyper's "client error (Connect): No such file or
    // directory (os error 2)".
    for command in [&["keys", "ls"][..], &["secrets", "ls"], &["envs", "ls"]] {
        let output = std::process::Command::new(bkg_tests::bkg_bin())
            .args(command)
            .env("BKG_SOCKET", dir.path().join("nobody.sock"))
            .env("BKG_NO_AUTOSTART", "1")
            .output()
            .expect("run bkg");
        assert_one_line_error(&output, 125, "no agent is running at");
    }
    // Found by a new-user trial: a user other than root was told `sudo bkg agent start`, which
    // leaves BKG_SOCKET behind and starts the machine's agent instead.
    let socket = dir.path().join("nobody.sock");
    let as_nobody = bkg_tests::bkg_as_nobody(&socket, &["runs", "ls"]).output().expect("run bkg");
    let start = format!("`sudo bkg --socket {} agent start`", socket.display());
    assert!(stderr(&as_nobody).contains(&start), "{}", stderr(&as_nobody));
}

/// The agent checks its runtimes at start (tests/e2e/host.rs); one that goes away later is 126.
#[test]
fn a_runtime_that_cannot_be_executed_is_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let python = dir.path().join("python3");
    std::fs::write(&python, "#!/bin/sh\necho Python 3.99.0\n").expect("write the stand-in runtime");
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let agent = Agent::start_with(AgentOptions {
        extra_args: vec!["--python".into(), python.to_str().unwrap_or_default().into()],
        ..AgentOptions::default()
    });
    std::fs::remove_file(&python).expect("remove the runtime");
    assert_one_line_error(
        &agent.exe(&[examples_dir().join("hello.py").to_str().unwrap_or_default()]),
        126,
        python.to_str().unwrap_or_default(),
    );
}

/// The audit log is read from this host's files: a file that is not there is named (not the key
/// that would sit beside it), and `--remote` is refused rather than ignored.
#[test]
fn audit_commands_name_a_missing_file_and_refuse_remote() {
    let bkg = |args: &[&str]| {
        std::process::Command::new(bkg_tests::bkg_bin()).args(args).env_remove("BKG_REMOTE").output().expect("run bkg")
    };
    assert_one_line_error(
        &bkg(&["audit", "verify", "/nonexistent/audit-1.jsonl"]),
        125,
        "cannot read /nonexistent/audit-1.jsonl",
    );
    // A --key path that is not there is said to be no file (found by a new-user trial).
    let state = tempfile::tempdir().expect("state");
    std::fs::create_dir(state.path().join("audit")).expect("audit dir");
    std::fs::write(state.path().join("audit/audit-000001.jsonl"), "").expect("a log file");
    // The key looked for beside a log given as a file is named as a path without `..` (found by
    // a new-user trial: `./../audit.pub`).
    let log = state.path().join("audit/audit-000001.jsonl");
    let no_key = bkg(&["audit", "verify", log.to_str().expect("utf-8")]);
    let canonical = std::fs::canonicalize(state.path()).expect("canonical");
    assert_one_line_error(&no_key, 125, &format!("cannot read the audit key {}/audit.pub:", canonical.display()));
    let state = state.path().to_str().expect("utf-8");
    assert_one_line_error(
        &bkg(&["audit", "verify", "--key", "/nonexistent/audit.pub", "--state-dir", state]),
        125,
        "an audit public key is 64 hex digits (/nonexistent/audit.pub is no file either)",
    );
    let remote = ["--remote", "http://127.0.0.1:9"];
    assert_one_line_error(&bkg(&[&remote[..], &["audit", "tail"]].concat()), 125, "run it on the remote agent's host");
    assert_one_line_error(&bkg(&[&remote[..], &["audit", "verify"]].concat()), 125, "--from-db --key HEX");
    // With no agent on a socket of its own to say its state directory, the default one's log is
    // not read in its place (found by a new-user trial: an unrelated log was reported intact).
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = |args: &[&str]| {
        std::process::Command::new(bkg_tests::bkg_bin())
            .args(args)
            .env("BKG_SOCKET", dir.path().join("nobody.sock"))
            .env_remove("BKG_STATE_DIR")
            .output()
            .expect("run bkg")
    };
    for command in [["audit", "verify"], ["audit", "tail"]] {
        assert_one_line_error(&silent(&command), 125, "to say where its audit log is: give --state-dir DIR");
    }
}

/// A key's lifetime is whole seconds within its role's: the refusals name the flag and the limit.
#[test]
fn a_keys_ttl_is_refused_with_the_flag_and_the_roles_lifetime() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let create = |ttl: &str| {
        agent
            .bkg()
            .args(["keys", "create", "--role", "session", "--namespace", "team", "--ttl", ttl])
            .output()
            .expect("bkg keys create")
    };
    assert_one_line_error(&create("500ms"), 125, "--ttl 500ms: keys expire in whole seconds, at least 1s");
    assert_one_line_error(
        &create("2h"),
        125,
        "a lifetime of 2h (ttl_seconds, bkg keys create --ttl) is above the session role's 1h (the agent's \
         --session-key-ttl): ask for 1h or less",
    );
    let made = create("30s");
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    assert!(stderr(&made).contains("expires in 30s"), "{}", stderr(&made));
    let no_namespace = agent.bkg().args(["keys", "create", "--role", "session"]).output().expect("bkg keys create");
    assert_one_line_error(&no_namespace, 125, "needs a namespace (`namespace`, bkg keys create --namespace NS)");
}

/// Without --state-dir the audit commands read the log of the agent on the socket, wherever its
/// state directory is, as `bkg doctor` finds it.
#[test]
fn audit_commands_find_the_running_agents_log() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let tail = agent.bkg().args(["audit", "tail", "-n", "2", "--json"]).output().expect("bkg audit tail");
    assert_eq!(code(&tail), 0, "{}", stderr(&tail));
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 2, "{}", String::from_utf8_lossy(&tail.stdout));
    let verify = agent.bkg().args(["audit", "verify"]).output().expect("bkg audit verify");
    assert_eq!(code(&verify), 0, "{}", stderr(&verify));
    assert!(stderr(&verify).contains("chain intact"), "{}", stderr(&verify));
}

/// An agent that accepts connections and does not answer (stopped, hung) cannot say where its log
/// is: another log is not read in its stead (found by a new-user trial: `bkg audit verify`
/// vouched for the machine agent's log, 3 records, for a stopped agent's with 9).
#[test]
fn audit_commands_refuse_to_guess_the_log_of_an_agent_that_does_not_answer() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let pid = i32::try_from(agent.pid()).expect("pid");
    // SAFETY: kill(2) of the agent this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "stop the test's own agent");
    let outputs: Vec<_> = [["audit", "verify"], ["audit", "tail"]]
        .iter()
        .map(|command| {
            agent.bkg().args(command).env("BKG_CLIENT_TIMEOUT", "1s").env_remove("BKG_STATE_DIR").output().expect("bkg")
        })
        .collect();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "let it go on");
    for output in &outputs {
        assert_one_line_error(output, 125, "did not answer");
        assert!(stderr(output).contains("to say where its audit log is: give --state-dir DIR"), "{}", stderr(output));
    }
}

/// A user who may not use the agent's socket is told so, and who can change it, by every
/// command (found by a new-user trial: `bkg keys ls` and `bkg secrets ls` said hyper's
/// "client error (Connect): Permission denied", `bkg audit tail` that no agent answered).
#[test]
fn every_command_tells_a_user_who_may_not_use_the_socket_why() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    // The agent's socket is root's, mode 0600, in a directory only root may enter.
    for command in [&["keys", "ls"][..], &["secrets", "ls"], &["envs", "ls"], &["audit", "tail"], &["runs", "ls"]] {
        let output = bkg_tests::bkg_as_nobody(&agent.socket, command).gid(65534).output().expect("bkg as nobody");
        assert_one_line_error(&output, 125, "you may not ");
        assert!(!stderr(&output).contains("os error"), "{command:?}: {}", stderr(&output));
    }
}

/// An id or name too long for a URL is said to be that, not an agent out of reach (found by a
/// new-user trial: "cannot reach the agent at …: Parsed Url is not a valid Uri").
#[test]
fn an_id_too_long_for_a_url_is_said_to_be_too_long() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let long = format!("run_{}", "a".repeat(100_000));
    let output = agent.bkg().args(["runs", "show", &long]).output().expect("bkg");
    assert_one_line_error(&output, 125, "a name or id given is too long to send to the agent");
    // A name refused for its form is not repeated whole.
    let output = agent.bkg().args(["secrets", "rm", &"A".repeat(100_000)]).output().expect("bkg");
    assert_one_line_error(&output, 125, "must be an environment variable name");
    assert!(stderr(&output).len() < 400, "{}", stderr(&output));
}

/// A key whose secret stdout does not take is deleted again, not left active with nobody
/// holding it; a key's secret given for its id is not repeated (found by a new-user trial).
#[test]
fn a_key_whose_secret_cannot_be_printed_is_not_left_active() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let create = agent
        .bkg()
        .args(["keys", "create", "--role", "admin", "--name", "lost"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("bkg keys create");
    assert_one_line_error(&create, 125, "the key's secret could not be written to stdout (No space left on device");
    assert!(stderr(&create).contains("was deleted again: run the command again"), "{}", stderr(&create));
    let listed = agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
    assert_eq!(stdout(&listed).trim(), "[]", "{}", stderr(&listed));

    let made =
        agent.bkg().args(["keys", "create", "--role", "namespace", "--namespace", "t"]).output().expect("create");
    let secret = stdout(&made).trim().to_owned();
    assert!(secret.starts_with("bkg_ns_"), "{secret}");
    let revoke = agent.bkg().args(["keys", "revoke", &secret]).output().expect("bkg keys revoke");
    assert_one_line_error(&revoke, 125, "`bkg_ns_… (a key's secret, not shown)` is not a key id");
    // Nor where a run id is asked for (found by a new-user trial).
    assert!(!stderr(&revoke).contains(&secret), "{}", stderr(&revoke));
    let shown = agent.bkg().args(["runs", "show", &secret]).output().expect("bkg runs show");
    assert_one_line_error(&shown, 125, "`bkg_ns_… (a key's secret, not shown)`");
    assert!(!stderr(&shown).contains(&secret), "{}", stderr(&shown));
}

/// `bkg audit tail` tells a key deleted from one revoked (found by a new-user trial: a deletion
/// read as a revocation; the record is `key.revoked` with `deleted: true`).
#[test]
fn audit_tail_tells_a_deleted_key_from_a_revoked_one() {
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let made = |name: &str| {
        let output = agent
            .bkg()
            .args(["keys", "create", "--role", "namespace", "--namespace", "t", "--name", name, "--json"])
            .output()
            .expect("bkg keys create");
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        let key: serde_json::Value = serde_json::from_slice(&output.stdout).expect("key JSON");
        key["id"].as_str().expect("an id").to_owned()
    };
    let (revoked, deleted) = (made("to-revoke"), made("to-delete"));
    let revoke = agent.bkg().args(["keys", "revoke", &revoked]).output().expect("bkg keys revoke");
    assert_eq!(code(&revoke), 0, "{}", stderr(&revoke));
    // `bkg keys rm` (found by a new-user trial: the CLI had no way to delete a key).
    let rm = agent.bkg().args(["keys", "rm", &deleted]).output().expect("bkg keys rm");
    assert_eq!((code(&rm), stderr(&rm)), (0, format!("bkg: deleted {deleted}\n")));
    let listed = agent.bkg().args(["keys", "ls", "--json"]).output().expect("bkg keys ls");
    let listed = stdout(&listed);
    assert!(
        listed.contains(&revoked) && !listed.contains(&deleted),
        "a revoked key stays listed, a deleted one not: {listed}"
    );
    let again = agent.bkg().args(["keys", "rm", &deleted]).output().expect("bkg keys rm");
    assert_eq!(code(&again), 125, "{}", stderr(&again));
    let tail = agent.bkg().args(["audit", "tail", "-n", "4"]).output().expect("bkg audit tail");
    assert_eq!(code(&tail), 0, "{}", stderr(&tail));
    let shown = stdout(&tail);
    assert!(
        shown.contains(&format!("revoked key {revoked}")) && shown.contains(&format!("deleted key {deleted}")),
        "{shown}"
    );
    // And which key each creation made (found by a new-user trial: `-`).
    assert!(
        shown.contains(&format!("created namespace key {revoked}"))
            && shown.contains(&format!("created namespace key {deleted}")),
        "{shown}"
    );
}

/// A followed audit log's rows line up under its header, also those with a run after a backlog
/// without one (found by a new-user trial: the columns were as wide as the first rows' cells).
#[test]
fn audit_tail_follow_keeps_its_columns_for_later_rows() {
    use std::io::BufRead;
    let agent = Agent::start_with(AgentOptions { warm_pool: 0, ..AgentOptions::default() });
    let mut follow = agent
        .bkg()
        .args(["audit", "tail", "-n", "1", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("bkg audit tail -f");
    let mut lines = std::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let header = lines.next().and_then(Result::ok).expect("the header");
    let ran = agent.exe(&["--type", "python", "-c", "pass"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    let finished = lines.map_while(Result::ok).find(|line| line.contains(" exit 0 in ")).expect("the run's end");
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(header.find("RUN"), finished.find("run_"), "{header}\n{finished}");
    assert_eq!(header.find("OUTCOME"), finished.find("exit 0 in "), "{header}\n{finished}");
}

/// `--file SRC:DIR/` puts the file in that directory under its own name, as `cp` would (was: a
/// sandbox that failed at 'start' writing /workspace/DIR/).
#[test]
fn a_file_given_a_directory_lands_in_it_under_its_name() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "in sub\n").expect("write");
    let spec = format!("{}:sub/", data.display());
    let ran = agent.exe(&["--file", &spec, "--type", "python", "-c", "print(open('sub/data.txt').read(), end='')"]);
    assert_eq!((code(&ran), stdout(&ran)), (0, "in sub\n".to_owned()), "{}", stderr(&ran));
}

/// `bkg add`'s limit flags are checked as `bkg exe`'s are, each named with its least and hint
/// (was: the least was said of a line of a cave.yaml that was never written), and cave.yaml is
/// left as it was.
#[test]
fn bkg_add_names_a_limit_flag_below_its_least() {
    let project = tempfile::tempdir().expect("project");
    let bkg = |args: &[&str]| {
        std::process::Command::new(bkg_tests::bkg_bin())
            .args(args)
            .current_dir(project.path())
            .env("BKG_SOCKET", "/nonexistent/agent.sock")
            .env("BKG_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bkg")
    };
    assert_eq!(code(&bkg(&["init", "--yes"])), 0);
    let before = std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml");
    assert_one_line_error(
        &bkg(&["add", "z", "--type", "python", "--memory", "64"]),
        125,
        "--memory: `64` is too small: the least is 16MiB (a number without a unit is bytes: `64MiB`?)",
    );
    // Not told to become a value refused in turn (was: `0MiB`?, `12MiB`?).
    for number in ["0", "12"] {
        let output = bkg(&["add", "z", "--type", "python", "--memory", number]);
        assert_one_line_error(&output, 125, &format!("--memory: `{number}` is too small: the least is 16MiB"));
        assert!(stderr(&output).ends_with(" (a number without a unit is bytes)\n"), "{}", stderr(&output));
    }
    // A variable without a value is not taken from this shell, as cave.yaml would keep it.
    assert_one_line_error(
        &bkg(&["add", "z", "--type", "python", "-e", "TOKEN"]),
        125,
        "--env `TOKEN` is not KEY=VALUE: cave.yaml keeps the value, so give it (`-e TOKEN=\"$TOKEN\"` copies",
    );
    assert_eq!(std::fs::read_to_string(project.path().join("cave.yaml")).expect("cave.yaml"), before);
    // An invalid cave.yaml is said in one line, as `bkg validate` and `bkg rm` say it (was: the
    // problem without `bkg:`, then a second line; found by a new-user trial).
    std::fs::write(project.path().join("cave.yaml"), "version: 1\nsandboxes:\n  a:\n    type: ruby\n").expect("write");
    assert_one_line_error(
        &bkg(&["add", "z", "--type", "python"]),
        125,
        "cave.yaml:4: /sandboxes/a/type: \"ruby\" is not one of [\"python\",\"node\"]",
    );
}

/// `bkg users` refuses a name that is no username, a bad namespace and an empty password before
/// it asks the agent anything (and before the password is typed in for nothing).
#[test]
fn bkg_users_refuses_bad_names_and_an_empty_password_in_one_line() {
    for (args, said) in [
        (&["users", "rm", "ann/keys"][..], "`ann/keys` is not a username: a username is a DNS label"),
        (&["users", "add", "Ann", "--namespace", "lab"][..], "`Ann` is not a username"),
        (&["users", "add", "ann", "--namespace", "Lab"][..], "--namespace `Lab` must be"),
        (&["users", "add", "ann", "--namespace", "lab"][..], "the password (read from stdin) is empty"),
    ] {
        assert_one_line_error(&bkg_without_an_agent(args), 125, said);
    }
}
