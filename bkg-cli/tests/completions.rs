//! The completions and man pages as a user meets them: `bkg completions bash` sourced in a real
//! bash on a pseudo-terminal, Tab pressed; `man -l` on a checked-in page.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BKG: &str = env!("CARGO_BIN_EXE_bkg");

/// An interactive bash on a new pseudo-terminal, and what it printed so far.
struct Bash {
    master: fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
    seen: usize,
    child: std::process::Child,
}

impl Bash {
    fn start() -> Self {
        let size = nix::pty::Winsize { ws_row: 40, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let side = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let child = Command::new("bash")
            .args(["--norc", "--noprofile", "-i"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "dumb")
            .env("PS1", "$ ")
            .env("INPUTRC", "/dev/null")
            .stdin(side(&pty.slave))
            .stdout(side(&pty.slave))
            .stderr(side(&pty.slave))
            .spawn()
            .expect("bash starts");
        drop(pty.slave);
        let master = fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup");
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                sink.lock().expect("screen").extend_from_slice(&buffer[..n]);
            }
        });
        Self { master, screen, seen: 0, child }
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
        self.master.flush().expect("flush");
    }

    /// Waits until `text` appears after what was already matched.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned();
            if let Some(at) = screen.get(self.seen..).and_then(|rest| rest.find(text)) {
                self.seen += at + text.len();
                return;
            }
            assert!(Instant::now() < deadline, "no {text:?} on the terminal:\n{screen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bash {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("bkg.bash");
    let generated = Command::new(BKG).args(["completions", "bash"]).output().expect("bkg completions");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    fs::write(&script, &generated.stdout).expect("write the script");

    let mut bash = Bash::start();
    bash.expect("$ ");
    bash.type_keys(&format!("source {} && echo sourced\r", script.display()));
    bash.expect("sourced");
    bash.expect("$ ");
    bash.type_keys("bkg e\t");
    bash.expect("bkg exe ");
    // Ctrl-U clears the line for the next try.
    bash.type_keys("\x15bkg exe --me\t");
    bash.expect("bkg exe --memory ");
    bash.type_keys("\x15exit\r");
}

#[test]
fn the_man_pages_render() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man/bkg-exe.1");
    let output = Command::new("man").arg("-l").arg(&page).env("MANPAGER", "cat").env("MANWIDTH", "100").output();
    let output = output.expect("man runs (scripts/setup.sh installs man-db)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("bkg-exe") && text.contains("--memory") && text.contains("Examples:"), "{text}");
}
