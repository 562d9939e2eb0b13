//! Ordinary programs behave inside as they do outside (docs/compatibility.md): pseudo-terminals,
//! service and protocol names, and switching to ids the code has no right to.

use bkg_tests::{Agent, code, stderr, stdout};

fn python(agent: &Agent, script: &str) -> String {
    let output = agent.exe(&["--type", "python", "-c", script]);
    assert_eq!(code(&output), 0, "stdout: {}\nstderr: {}", stdout(&output), stderr(&output));
    stdout(&output)
}

#[test]
fn a_pty_can_be_opened_and_talked_through_and_it_is_the_sandboxs_own() {
    let agent = Agent::start();
    let script = r#"
import os, pty, sys, termios
print(sorted(os.listdir("/dev/pts")))
main, follower = pty.openpty()
name = os.ttyname(follower)
print(name, os.isatty(follower))
os.write(main, b"hello\n")
print(os.read(follower, 100))
# A child on the pty as its controlling terminal sees it as /dev/tty, like pexpect does.
pid, fd = pty.fork()
if pid == 0:
    with open("/dev/tty", "w") as tty:
        tty.write("child on %s\n" % os.ttyname(0))
    os._exit(0)
os.waitpid(pid, 0)
chunks = b""
while True:
    try:
        chunk = os.read(fd, 100)
    except OSError:
        break
    if not chunk:
        break
    chunks += chunk
print(chunks.decode().strip())
"#;
    assert_eq!(
        python(&agent, script),
        "['ptmx']\n/dev/pts/0 True\nb'hello\\n'\nchild on /dev/pts/1\n",
        "the first pty of a fresh instance is 0: no host pty is visible"
    );
}

#[test]
fn service_and_protocol_names_resolve() {
    let agent = Agent::start();
    let script = r#"
import socket
print(socket.getservbyname("http"), socket.getservbyport(443), socket.getprotobyname("tcp"))
print(socket.getaddrinfo("localhost", "http", socket.AF_INET, socket.SOCK_STREAM)[0][4])
"#;
    assert_eq!(python(&agent, script), "80 https 6\n('127.0.0.1', 80)\n");
}

/// A `.js` script under a package.json of `"type": "module"` is an ES module, as Node takes it
/// outside (found by a new-user trial: it ran as CommonJS, `require` defined).
#[test]
fn a_js_script_under_a_module_package_is_an_es_module() {
    let agent = Agent::start();
    let project = tempfile::tempdir().expect("project");
    std::fs::write(project.path().join("package.json"), r#"{"name": "x", "type": "module"}"#).expect("package.json");
    std::fs::create_dir(project.path().join("src")).expect("src");
    let script = project.path().join("src/main.js");
    std::fs::write(&script, "console.log(typeof require, import.meta.url)\n").expect("main.js");
    let output = agent.exe(&[script.to_str().expect("utf-8")]);
    assert_eq!(
        (code(&output), stdout(&output).as_str()),
        (0, "undefined file:///workspace/main.js\n"),
        "{}",
        stderr(&output)
    );
}

/// The system says what it is, as outside (found by a new-user trial: `/etc/os-release` was
/// missing, and `platform.freedesktop_os_release()` failed).
#[test]
fn the_os_release_is_the_hosts() {
    let agent = Agent::start();
    let script = "import platform\nprint(platform.freedesktop_os_release()['ID'])\n";
    let outside = std::process::Command::new("python3").args(["-c", script]).output().expect("python3");
    assert_eq!(python(&agent, script), String::from_utf8_lossy(&outside.stdout));
}

#[test]
fn switching_to_nobody_or_root_fails_with_eperm_as_it_does_outside() {
    let agent = Agent::start();
    let script = r#"
import os, subprocess, sys
print(open("/proc/self/uid_map").read().split("\n")[:2] == open("/proc/self/gid_map").read().split("\n")[:2])
print([line.split()[0] for line in open("/proc/self/uid_map")])
for call, arg in [(os.setuid, 65534), (os.setgid, 65534), (os.setuid, 0)]:
    try:
        call(arg)
        print(call.__name__, arg, "worked")
    except OSError as error:
        print(call.__name__, arg, error.strerror)
open("f", "w").close()
for uid in (65534, 0):
    try:
        os.chown("f", uid, -1)
    except OSError as error:
        print("chown", uid, error.strerror)
# An id nobody mapped answers EINVAL: the one place the sandbox differs (docs/compatibility.md).
try:
    os.setuid(4242)
except OSError as error:
    print("setuid 4242", error.strerror)
os.chown("f", 1000, 1000)
try:
    subprocess.run([sys.executable, "-c", "pass"], user="nobody")
except PermissionError as error:
    print("subprocess user=nobody", error.strerror)
print(os.stat("/usr/bin/env").st_uid)
"#;
    assert_eq!(
        python(&agent, script),
        "True\n['0', '1000', '65534']\nsetuid 65534 Operation not permitted\nsetgid 65534 Operation not permitted\n\
         setuid 0 Operation not permitted\nchown 65534 Operation not permitted\nchown 0 Operation not permitted\n\
         setuid 4242 Invalid argument\nsubprocess user=nobody Operation not permitted\n65534\n"
    );
}

#[test]
fn a_syscall_outside_the_seccomp_allowlist_gets_enosys_and_ordinary_ones_work() {
    let agent = Agent::start();
    // listmount (458, Linux 6.8) is in no group of the allowlist: it must answer ENOSYS like
    // an older kernel, with null arguments that any kernel would reject otherwise (EFAULT).
    let script = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
result = libc.syscall(458, 0, 0, 0, 0)
print(result, errno.errorcode[ctypes.get_errno()])
print(os.getpid() > 0, len(os.listdir("/")) > 0)
"#;
    assert_eq!(python(&agent, script), "-1 ENOSYS\nTrue True\n");
}

/// A difference docs/compatibility.md states: the run ends with its script, so a child still
/// running then ends with the sandbox and what it would have printed later is not there.
#[test]
fn a_child_still_running_when_the_script_exits_ends_with_the_sandbox() {
    let agent = Agent::start();
    let script = "import os, time\nif os.fork() == 0:\n    time.sleep(2)\n    print('child late', flush=True)\n    os._exit(0)\nprint('parent done')";
    assert_eq!(python(&agent, script), "parent done\n");
}

/// Node writes to a pipe as it can and drops the rest at `process.exit()`; bare node writing to
/// a file keeps everything. A run's stdout is a pipe to the agent, whatever the client's is: with
/// a pipe's default 64 KiB, `bkg exe gen.js > out.json` kept 64 KiB of the JSON (found by a
/// new-user trial). What a script writes at once up to the pipe's size reaches the file.
#[test]
fn a_node_script_s_output_written_just_before_process_exit_reaches_the_file_whole() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("gen.js");
    std::fs::write(
        &script,
        "const rows = []; for (let i = 0; i < 20000; i++) rows.push({ i, s: 'x'.repeat(20) });\n\
         console.log(JSON.stringify(rows)); process.exit(0);\n",
    )
    .expect("gen.js");
    let bare_path = dir.path().join("bare.json");
    let bare_file = std::fs::File::create(&bare_path).expect("bare.json");
    let bare = std::process::Command::new("node")
        .arg(&script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(bare_file)
        .status();
    assert_eq!(bare.expect("node").code(), Some(0));
    let bare = std::fs::read(&bare_path).expect("bare.json");
    assert!(bare.len() > 700_000, "{}", bare.len());
    for round in 0..3 {
        let out_path = dir.path().join(format!("out{round}.json"));
        let file = std::fs::File::create(&out_path).expect("out.json");
        let status = agent.bkg().args(["exe", script.to_str().expect("utf-8")]).stdout(file).status().expect("bkg exe");
        assert_eq!(status.code(), Some(0));
        let written = std::fs::read(&out_path).expect("out.json");
        assert_eq!(written.len(), bare.len(), "round {round}");
        assert!(written == bare, "round {round}: the bytes differ");
    }
}

/// The dynamic loader reads `LD_PRELOAD` before any of the interpreter's code: a run that sets it
/// gets an interpreter of its own, not the zygote's fork, which had loaded its libraries already
/// (found by a new-user trial: the preload was silently not there).
#[test]
fn ld_preload_given_to_a_run_is_loaded_as_bare() {
    let agent = Agent::start();
    let library = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0";
    assert!(std::path::Path::new(library).exists(), "{library}: part of Debian 12's libc6");
    let maps = "print('malloc_debug' in open('/proc/self/maps').read())";
    for _ in 0..2 {
        assert_eq!(python(&agent, maps), "False\n");
        let preloaded = agent.exe(&["-e", &format!("LD_PRELOAD={library}"), "--type", "python", "-c", maps]);
        assert_eq!((code(&preloaded), stdout(&preloaded).as_str()), (0, "True\n"), "{}", stderr(&preloaded));
    }
}
