use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use bkg_tests::{Agent, code, examples_dir, stderr, stdout};

#[test]
fn hello_py_and_hello_js_print_their_output() {
    let agent = Agent::start();
    let python = agent.exe(&[examples_dir().join("hello.py").to_str().unwrap_or_default()]);
    assert_eq!(code(&python), 0, "stderr: {}", stderr(&python));
    assert!(stdout(&python).starts_with("hello from python 3."), "got {:?}", stdout(&python));

    let node = agent.exe(&[examples_dir().join("hello.js").to_str().unwrap_or_default()]);
    assert_eq!(code(&node), 0, "stderr: {}", stderr(&node));
    assert!(stdout(&node).starts_with("hello from node v"), "got {:?}", stdout(&node));
}

#[test]
fn the_scripts_exit_code_and_streams_come_back() {
    let agent = Agent::start();
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(7)",
    ]);
    assert_eq!(code(&output), 7);
    assert_eq!(stdout(&output), "to stdout\n");
    assert_eq!(stderr(&output), "to stderr\n", "no bkg line for the script's own exit code");

    let output = agent.exe(&["--type", "node", "-c", "process.exitCode = 3"]);
    assert_eq!(code(&output), 3);
}

#[test]
fn a_signal_that_kills_the_script_comes_back() {
    let agent = Agent::start();
    let (result, output) =
        agent.exe_json(&["--type", "python", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]);
    assert_eq!(result["signal"], 11);
    assert_eq!(result["exit_code"], serde_json::Value::Null);
    assert_eq!(result["killed_by"], serde_json::Value::Null);
    assert_eq!(code(&output), 128 + 11);
    assert!(stderr(&output).contains("signal 11"), "stderr: {}", stderr(&output));
}

#[test]
fn json_output_has_the_documented_fields() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&["--type", "python", "-c", "print('hi')"]);
    assert_eq!(code(&output), 0);
    for key in [
        "id",
        "exit_code",
        "signal",
        "killed_by",
        "wall_ms",
        "cpu_ms",
        "peak_memory_bytes",
        "disk_bytes_used",
        "stdout",
        "stderr",
        "stdout_bytes",
        "stderr_bytes",
        "truncated",
        "limits",
    ] {
        assert!(result.get(key).is_some(), "missing {key} in {result}");
    }
    assert_eq!(result["stdout"], "hi\n");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["truncated"], false);
    assert_eq!(result["limits"]["memory_bytes"], 512 * 1024 * 1024);
    assert!(result["peak_memory_bytes"].as_u64().unwrap_or(0) > 1024 * 1024);
    assert_eq!(stdout(&output).lines().count(), 1, "--json prints one line: {}", stdout(&output));
}

#[test]
fn stdin_reaches_the_script() {
    let agent = Agent::start();
    let mut child = agent
        .bkg()
        .args([
            "exe",
            "--type",
            "python",
            "-c",
            "import sys\nname = input()\nrest = sys.stdin.read()\nprint('hello', name, len(rest))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn bkg");
    child.stdin.take().expect("stdin").write_all(b"world\nmore\nlines\n").expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(code(&output), 0);
    assert_eq!(stdout(&output), "hello world 11\n");
}

#[test]
fn code_from_stdin_with_a_dash() {
    let agent = Agent::start();
    let mut child = agent
        .bkg()
        .args(["exe", "-", "--type", "node"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn bkg");
    child.stdin.take().expect("stdin").write_all(b"console.log(6 * 7)").expect("write code");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(code(&output), 0);
    assert_eq!(stdout(&output), "42\n");
}

#[test]
fn output_is_streamed_while_the_script_runs() {
    let agent = Agent::start();
    // The script prints a line, then waits for ours: unless its first line reaches us while it
    // runs, we never answer, and its 20 s timeout ends it without a second line.
    let mut child = agent
        .bkg()
        .args([
            "exe",
            "--timeout",
            "20s",
            "--type",
            "python",
            "-c",
            "import sys\nprint('first', flush=True)\nsys.stdin.readline()\nprint('second')",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn bkg");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("first"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("answer the script");
    drop(stdin);
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("second"));
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn output_printed_line_by_line_arrives_whole_and_in_order() {
    let agent = Agent::start();
    // Each print is a write of its own (PYTHONUNBUFFERED): the agent sends the frames it has
    // queued together, and bkg writes the frames of one stream it has read together. Neither
    // may lose, reorder or mix up a line of either stream.
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import sys\nfor i in range(200000): print(i)\nprint('half', file=sys.stderr)\n\
         for i in range(200000, 300000): print(i)\nprint('end', file=sys.stderr)",
    ]);
    assert_eq!(code(&output), 0, "stderr: {}", stderr(&output));
    let expected: String = (0..300_000).map(|i| format!("{i}\n")).collect();
    assert!(stdout(&output) == expected, "{} bytes of stdout, {} expected", stdout(&output).len(), expected.len());
    assert_eq!(stderr(&output), "half\nend\n");
}

/// A reader that goes away (`bkg exe gen.py | head -1`) ends the run as it would end bare
/// `python3 gen.py | head -1`: the code's own stdout is closed, and its next print fails with
/// BrokenPipeError. Before, bkg dropped the output and the code printed on to its timeout.
#[test]
fn a_reader_that_goes_away_closes_the_codes_stdout_as_a_pipeline_does() {
    let agent = Agent::start();
    let mut child = agent
        .bkg()
        .args([
            "exe",
            "--timeout",
            "2m",
            "--type",
            "python",
            "-c",
            "import itertools\nfor i in itertools.count(): print(i)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bkg");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the first line");
    assert_eq!(first, "0\n");
    drop(stdout);
    let output = child.wait_with_output().expect("bkg");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("BrokenPipeError"), "the code's own error: {err}");
    assert!(matches!(output.status.code(), Some(1 | 120)), "the code's exit, not a timeout: {:?} {err}", output.status);
}

/// A stdout that cannot take the output for another reason than its reader's going (a full
/// disk: /dev/full) is said, and a run or command that would have exited 0 exits 125, as what
/// stdout holds is incomplete (was: exit 0 and nothing said: `bkg exe job.py > results.csv` on
/// a full disk looked like a success). A run's own failure keeps its exit code.
#[test]
fn a_stdout_that_cannot_be_written_is_said_and_fails_the_command() {
    let agent = Agent::start();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let said = "bkg: cannot write to stdout (No space left on device (os error 28)): what it holds is incomplete\n";
    for (code_, expected) in [("print('result')", 125), ("import sys\nprint('x' * 100000)\nsys.exit(3)", 3)] {
        let output = agent
            .bkg()
            .args(["exe", "--type", "python", "-c", code_])
            .stdout(full())
            .stderr(Stdio::piped())
            .output()
            .expect("bkg exe");
        assert_eq!((code(&output), stderr(&output).as_str()), (expected, said), "{code_}");
    }
    let listed =
        agent.bkg().args(["runs", "ls", "--json"]).stdout(full()).stderr(Stdio::piped()).output().expect("bkg");
    assert_eq!((code(&listed), stderr(&listed).as_str()), (125, said));
    // Help and version too, which clap writes.
    for args in [&["--version"][..], &["exe", "--help"]] {
        let shown = agent.bkg().args(args).stdout(full()).stderr(Stdio::piped()).output().expect("bkg");
        assert_eq!((code(&shown), stderr(&shown).as_str()), (125, said), "{args:?}");
    }
    // A raw log too (found by a second new-user trial).
    let project = tempfile::tempdir().expect("project");
    let cave = "version: 1\nsandboxes:\n  box:\n    type: python\n    scripts:\n      start: echo logged\n";
    std::fs::write(project.path().join("cave.yaml"), cave).expect("cave.yaml");
    let ran = agent.bkgr(project.path(), &["box"]);
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    let mut logs = agent.bkg();
    logs.args(["logs", "box"]).current_dir(project.path()).stdout(full()).stderr(Stdio::piped());
    let logs = logs.output().expect("bkg logs");
    assert_eq!((code(&logs), stderr(&logs).as_str()), (125, said));
    // The change feed too, which ends at once with where to resume: from before what it could
    // not write (found by a new-user trial: it went on silently, and a later resume position
    // skipped what had never been written).
    for follow in [false, true] {
        let mut watch = agent.bkg();
        watch.arg("watch").stdout(full()).stderr(Stdio::piped());
        if !follow {
            watch.arg("--no-follow");
        }
        let watch = watch.output().expect("bkg watch");
        assert_eq!(
            (code(&watch), stderr(&watch)),
            (
                125,
                "bkg: cannot write to stdout (No space left on device (os error 28)); resume with --since 0\n"
                    .to_owned()
            )
        );
    }
}

#[test]
fn arguments_env_and_files_reach_the_script() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "a,b\n1,2\n").expect("write data");
    let script = dir.path().join("job.py");
    std::fs::write(
        &script,
        "import os, sys\nprint(sys.argv[1:])\nprint(os.environ['GREETING'])\nprint(open('data.csv').read().strip())\nprint(open('/tmp/in/copy.csv').read().count(','))\nprint(os.getcwd(), 'SECRET' in os.environ)\n",
    )
    .expect("write script");
    // SAFETY-free: set a variable in the caller's env to prove the sandbox env is scrubbed.
    let output = agent
        .bkg()
        .arg("exe")
        .arg(&script)
        .args(["--env", "GREETING=hi there", "--file"])
        .arg(&data)
        .arg("--file")
        .arg(format!("{}:/tmp/in/copy.csv", data.display()))
        .args(["--", "one", "two words"])
        .env("SECRET", "agent-side")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(code(&output), 0, "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "['one', 'two words']\nhi there\na,b\n1,2\n2\n/workspace False\n");
}

#[test]
fn retained_output_is_capped_and_marked_truncated() {
    let agent = Agent::start();
    let (result, _) =
        agent.exe_json(&["--type", "python", "-c", "import sys; sys.stdout.write('x' * (3 * 1024 * 1024))"]);
    assert_eq!(result["stdout_bytes"], 3 * 1024 * 1024);
    assert_eq!(result["stdout"].as_str().map(str::len), Some(1024 * 1024));
    assert_eq!(result["truncated"], true);
}

/// A bkg option between the script and its arguments is bkg's, as documented; bkg says so, with
/// the way to give it to the script instead (found by a new-user trial: `conv.py -o out.csv`
/// made a directory `out.csv` without a word).
#[test]
fn an_option_taken_after_the_script_is_named_with_the_way_to_pass_it_on() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("conv.py"), "import sys\nprint(sys.argv[1:])\n").expect("conv.py");
    let taken = agent.bkg_in(dir.path(), &["exe", "conv.py", "--timeout", "30s", "in.csv"]);
    assert_eq!((code(&taken), stdout(&taken)), (0, "['in.csv']\n".to_owned()), "{}", stderr(&taken));
    assert_eq!(
        stderr(&taken),
        "bkg: `--timeout 30s` after conv.py was taken as bkg's own; to give it to the script, put `--` before it: bkg exe conv.py -- --timeout 30s …\n"
    );
    let passed = agent.bkg_in(dir.path(), &["exe", "conv.py", "--", "--timeout", "30s", "in.csv"]);
    assert_eq!(
        (code(&passed), stdout(&passed), stderr(&passed)),
        (0, "['--timeout', '30s', 'in.csv']\n".to_owned(), String::new())
    );
    // Refused, it still says so (found by a trial: only "No such file or directory").
    let refused = agent.bkg_in(dir.path(), &["exe", "conv.py", "--file", "in.csv"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).ends_with(
            "; `--file in.csv` after conv.py was taken as bkg's own; to give it to the script, put `--` before it: bkg exe conv.py -- --file in.csv …\n"
        ),
        "{}",
        stderr(&refused)
    );
    // And when clap refuses it before bkg sees it (found by a trial: only "not a language").
    let refused = agent.bkg_in(dir.path(), &["exe", "conv.py", "--type", "csv", "in.csv"]);
    assert_eq!(
        (code(&refused), stderr(&refused)),
        (
            125,
            "bkg: --type: `csv` is not a language: use python or node; `--type csv in.csv` after conv.py was taken as \
             bkg's own; to give it to the script, put `--` before it: bkg exe conv.py -- --type csv in.csv …\n"
                .to_owned()
        )
    );
    // Before the script, the flag is bkg's own and nothing more is said.
    let refused = agent.bkg_in(dir.path(), &["exe", "--type", "csv", "conv.py"]);
    assert_eq!(stderr(&refused), "bkg: --type: `csv` is not a language: use python or node\n");
}

/// bkg's reason starts a line of its own after output that left one unfinished (found by a
/// new-user trial: `progress 50%bkg: timed out after 1s (--timeout)`).
#[test]
fn the_reason_line_starts_a_line_of_its_own() {
    let agent = Agent::start();
    let code_text = "import sys, time\nsys.stderr.write('progress 50%')\nsys.stderr.flush()\ntime.sleep(30)";
    let timed_out = agent.exe(&["--timeout", "1s", "--type", "python", "-c", code_text]);
    assert_eq!(code(&timed_out), 124, "{}", stderr(&timed_out));
    assert_eq!(stderr(&timed_out), "progress 50%\nbkg: timed out after 1s (--timeout)\n");
    let whole = agent.exe(&[
        "--timeout",
        "1s",
        "--type",
        "python",
        "-c",
        "import sys, time\nprint('line', file=sys.stderr)\ntime.sleep(30)",
    ]);
    assert_eq!(stderr(&whole), "line\nbkg: timed out after 1s (--timeout)\n", "no blank line after a whole one");
    // Without a line of bkg's to follow, the script's stderr is passed on as it wrote it (found
    // by a new-user trial: a newline was added to its end, and to binary output too).
    for exit in [0, 3] {
        let code_text = format!("import sys\nsys.stderr.write('abc')\nsys.exit({exit})");
        let unfinished = agent.exe(&["--type", "python", "-c", &code_text]);
        assert_eq!((code(&unfinished), stderr(&unfinished)), (exit, "abc".to_owned()));
    }
}

/// Found by a trial: `--file main.py` beside `-c` was refused as replacing "the script", which
/// the user never gave: `-c` code runs from /workspace/main.py.
#[test]
fn a_file_where_c_code_runs_from_is_refused_naming_the_code() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("main.py"), "data = 1\n").expect("main.py");
    let refused = agent.bkg_in(dir.path(), &["exe", "--file", "main.py", "--type", "python", "-c", "print(1)"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(
            "file /workspace/main.py would replace the code, which runs from there as it has no file name of its own: \
             give the file another place (`--file SRC:data/main.py`)"
        ),
        "{}",
        stderr(&refused)
    );
    let placed = agent.bkg_in(
        dir.path(),
        &["exe", "--file", "main.py:data/main.py", "--type", "python", "-c", "print(open('data/main.py').read())"],
    );
    assert_eq!((code(&placed), stdout(&placed)), (0, "data = 1\n\n".to_owned()), "{}", stderr(&placed));
}

/// Found by a trial: a script that imports a module beside it, or opens a data file by a
/// relative name, failed inside with nothing said of `--file`, where `python3 job.py` finds them.
/// bkg now names the file and the command that sends it, which then works.
#[test]
fn a_file_beside_the_script_that_was_not_sent_is_named_with_the_file_flag() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("src/pkg")).expect("src/pkg");
    std::fs::write(dir.path().join("src/helper.py"), "X = 41\n").expect("helper.py");
    std::fs::write(dir.path().join("src/pkg/__init__.py"), "Y = 1\n").expect("pkg");
    std::fs::write(dir.path().join("src/main.py"), "import helper\nprint(helper.X + 1)\n").expect("main.py");
    std::fs::write(dir.path().join("src/usepkg.py"), "import pkg\nprint(pkg.Y)\n").expect("usepkg.py");
    std::fs::write(dir.path().join("data.txt"), "data\n").expect("data.txt");
    std::fs::write(dir.path().join("read.py"), "print(open('data.txt').read(), end='')\n").expect("read.py");
    for (script, suggested, printed) in [
        ("src/main.py", "bkg exe --file src/helper.py src/main.py", "42\n"),
        ("src/usepkg.py", "bkg exe --file src/pkg:pkg src/usepkg.py", "1\n"),
        ("read.py", "bkg exe --file data.txt read.py", "data\n"),
    ] {
        let failed = agent.bkg_in(dir.path(), &["exe", script]);
        assert_eq!(code(&failed), 1, "{script}: {}", stderr(&failed));
        assert!(
            stderr(&failed).contains(&format!("only the script goes into the sandbox: `{suggested}` sends it too")),
            "{script}: {}",
            stderr(&failed)
        );
        let words: Vec<&str> = suggested.split(' ').skip(1).collect();
        let sent = agent.bkg_in(dir.path(), &words);
        assert_eq!((code(&sent), stdout(&sent)), (0, printed.to_owned()), "{suggested}: {}", stderr(&sent));
    }
}
