use std::net::TcpListener;
use std::time::Duration;

use bkg_tests::{Agent, code, stdout};

#[test]
fn a_double_forked_daemon_is_gone_when_the_run_ends() {
    let agent = Agent::start();
    let (result, output) = agent.exe_json(&[
        "--type",
        "python",
        "-c",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n    os._exit(0)\ntime.sleep(0.3)\nprint('parent done')",
    ]);
    assert_eq!(code(&output), 0, "{result}");
    assert_eq!(result["stdout"], "parent done\n");
    // A run that found the pool still empty grew it: wait until it has shrunk back and the
    // surplus sandbox has been disposed of too, or that sandbox's processes would count.
    agent.wait_warm(1);
    agent.wait_idle();
    let survivors = agent.processes_outside_prepared_sandboxes();
    assert!(survivors.is_empty(), "sandbox processes outlived the run: {survivors:?}");
}

#[test]
fn the_hosts_loopback_is_unreachable() {
    let agent = Agent::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on host loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let script = format!(
        "import socket\ns = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)"
    );
    let output = agent.exe(&["--type", "python", "-c", &script]);
    assert_eq!(code(&output), 0);
    assert!(stdout(&output).starts_with("refused"), "got {}", stdout(&output));
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_err(), "the host listener saw a connection from the sandbox");
}

#[test]
fn no_route_to_the_outside_world() {
    let agent = Agent::start();
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import socket\nfor target in [('1.1.1.1', 53), ('10.0.0.1', 80)]:\n    s = socket.socket()\n    s.settimeout(2)\n    try:\n        s.connect(target)\n        print('connected')\n    except OSError as e:\n        print('unreachable')\nprint(sorted(n for _, n in socket.if_nameindex()))",
    ]);
    assert_eq!(stdout(&output), "unreachable\nunreachable\n['lo']\n");
}

#[test]
fn host_secrets_are_not_readable() {
    let agent = Agent::start();
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import os\nfor path in ['/etc/shadow', '/root', '/proc/1/root/etc/shadow', '/home']:\n    try:\n        if os.path.isdir(path):\n            os.listdir(path)\n        else:\n            open(path).read()\n        print(path, 'READABLE')\n    except OSError as e:\n        print(path, 'denied')",
    ]);
    assert_eq!(stdout(&output), "/etc/shadow denied\n/root denied\n/proc/1/root/etc/shadow denied\n/home denied\n");
}

#[test]
fn the_code_runs_unprivileged_in_its_own_namespaces() {
    let agent = Agent::start();
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import os, socket\nstatus = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\nprint(os.getuid(), os.getgid(), os.getpid() < 10)\nprint(status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip(), status['Seccomp'].strip())\nprint([line.split() for line in open('/proc/self/uid_map')])\nprint(socket.gethostname(), len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)",
    ]);
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "got {}", stdout(&output));
    assert_eq!(lines[0], "1000 1000 True");
    assert_eq!(lines[1], "0000000000000000 0000000000000000 1 2");
    // Three ids are mapped, each alone: root, the code's 1000 and nobody, each to a host id of
    // this agent's own range (docs/security.md, user namespace).
    let map: Vec<Vec<&str>> = lines[2]
        .trim_matches(['[', ']'])
        .split("], [")
        .map(|line| line.split(", ").map(|field| field.trim_matches('\'')).collect())
        .collect();
    let inside: Vec<(&str, &str)> = map.iter().map(|line| (line[0], line[2])).collect();
    assert_eq!(inside, [("0", "1"), ("1000", "1"), ("65534", "1")], "uid_map: {}", lines[2]);
    for line in &map {
        let host_uid: u32 = line[1].parse().expect("host uid");
        assert!(
            (agent.uid_base..agent.uid_base + 65_536).contains(&host_uid),
            "host uid {host_uid} outside the agent's range"
        );
    }
    assert_eq!(lines[3], "bkg True");
}

#[test]
fn only_workspace_and_tmp_are_writable() {
    let agent = Agent::start();
    let output = agent.exe(&[
        "--type",
        "python",
        "-c",
        "for path in ['/workspace/a', '/tmp/b', '/dev/shm/c', '/usr/x', '/etc/x', '/x', '/proc/sys/kernel/hostname']:\n    try:\n        open(path, 'w').write('x')\n        print(path, 'ok')\n    except OSError:\n        print(path, 'denied')",
    ]);
    assert_eq!(
        stdout(&output),
        "/workspace/a ok\n/tmp/b ok\n/dev/shm/c ok\n/usr/x denied\n/etc/x denied\n/x denied\n/proc/sys/kernel/hostname denied\n"
    );
}

#[test]
fn nothing_of_one_run_is_visible_to_the_next() {
    let agent = Agent::start();
    let first = agent.exe(&[
        "--type",
        "python",
        "-c",
        "open('/workspace/marker', 'w').write('x'); open('/tmp/marker', 'w').write('x')",
    ]);
    assert_eq!(code(&first), 0);
    let second = agent.exe(&[
        "--type",
        "python",
        "-c",
        "import os; print(os.listdir('/workspace'), os.path.exists('/tmp/marker'))",
    ]);
    assert_eq!(stdout(&second), "['main.py'] False\n");
}
