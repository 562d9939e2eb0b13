//! The compatibility suite (docs/compatibility.md): CPython's own test modules and a set of Node
//! scripts run outside, as an unprivileged user, and inside a sandbox through `bkg exe`. A module
//! that passes outside must pass inside; the Node scripts must print the same in both places.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bkg_tests::{Agent, code, stderr, stdout};

/// CPython 3.11 test modules that run in seconds, covering processes, signals, threads, sockets,
/// ptys, files, locale, time, multiprocessing and asyncio. Whole-package `test_asyncio` takes
/// minutes, so two of its modules stand for it.
const CPYTHON_MODULES: &[&str] = &[
    "test_os",
    "test_posix",
    "test_subprocess",
    "test_signal",
    "test_threadsignals",
    "test_threading",
    "test_thread",
    "test_socket",
    "test_select",
    "test_epoll",
    "test_poll",
    "test_pty",
    "test_openpty",
    "test_fileio",
    "test_file",
    "test_fcntl",
    "test_mmap",
    "test_shutil",
    "test_tempfile",
    "test_pathlib",
    "test_locale",
    "test_time",
    "test_resource",
    "test_pwd",
    "test_grp",
    "test_getpass",
    "test_multiprocessing_main_handling",
    "test_asyncio.test_subprocess",
    "test_asyncio.test_sock_lowlevel",
];

/// Where Debian's libpython3.11-testsuite puts the modules (scripts/setup.sh installs it).
const CPYTHON_TESTS: &str = "/usr/lib/python3.11/test";

const PYTHON: &str = "/usr/bin/python3";
const NODE: &str = "/usr/bin/node";
const MARK: &str = "BKG-COMPAT ";

fn suite_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat").join(name)
}

/// A directory `nobody` may work in, holding a copy of `script`.
fn outside_workdir(script: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("bkg-compat-").tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod temp dir");
    let copy = dir.path().join(script);
    std::fs::copy(suite_file(script), &copy).expect("copy the script");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod script");
    dir
}

/// Runs `program script args` as nobody, with an empty environment but PATH, HOME and TMPDIR.
fn outside(program: &str, script: &str, args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = outside_workdir(script);
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"])
        .arg(format!("HOME={}", dir.path().display()))
        .arg(format!("TMPDIR={}", dir.path().display()))
        .arg(program)
        .arg(script)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    (output, dir)
}

/// Runs `script args` in a sandbox with the limits the issue names.
fn inside(agent: &Agent, script: &str, args: &[&str]) -> Output {
    let script = suite_file(script);
    let mut argv = vec!["--cpus", "2", "--memory", "2GiB", "--timeout", "20m", "--disk", "1GiB", "-e", "LANG=C.UTF-8"];
    argv.push(script.to_str().expect("utf-8 path"));
    argv.push("--");
    argv.extend(args);
    agent.exe(&argv)
}

/// The JSON after the `BKG-COMPAT ` line of a run.
fn report(output: &Output, place: &str) -> serde_json::Value {
    let text = stdout(output);
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(MARK))
        .unwrap_or_else(|| panic!("no report {place} (exit {}):\n{text}\n{}", code(output), stderr(output)));
    serde_json::from_str(line).expect("report JSON")
}

#[test]
fn cpython_test_modules_that_pass_outside_pass_inside() {
    assert!(
        Path::new(CPYTHON_TESTS).join("test_os.py").exists(),
        "{CPYTHON_TESTS} is missing: install libpython3.11-testsuite (scripts/setup.sh)"
    );
    let agent = Agent::start();
    let (inside_output, (outside_output, _dir)) = std::thread::scope(|scope| {
        let outside_run = scope.spawn(|| outside(PYTHON, "cpython.py", CPYTHON_MODULES));
        let inside_output = inside(&agent, "cpython.py", CPYTHON_MODULES);
        (inside_output, outside_run.join().expect("outside run"))
    });
    let outside_results = report(&outside_output, "outside");
    let inside_results = report(&inside_output, "inside");
    let passed = |results: &serde_json::Value, module: &str| results[module].as_bool() == Some(true);
    let passed_outside: Vec<&str> =
        CPYTHON_MODULES.iter().copied().filter(|module| passed(&outside_results, module)).collect();
    assert!(
        passed_outside.len() >= 25,
        "only {passed_outside:?} pass outside; the comparison needs at least 25:\n{}",
        stderr(&outside_output)
    );
    let broken: Vec<&str> = passed_outside.iter().copied().filter(|module| !passed(&inside_results, module)).collect();
    assert!(broken.is_empty(), "pass outside but not inside: {broken:?}\n{}", stderr(&inside_output));
}

#[test]
fn node_scripts_print_the_same_inside_as_outside() {
    let agent = Agent::start();
    let (outside_output, _dir) = outside(NODE, "node.js", &[]);
    let outside_lines = report(&outside_output, "outside");
    let inside_lines = report(&inside(&agent, "node.js", &[]), "inside");
    assert_eq!(inside_lines, outside_lines);
}
