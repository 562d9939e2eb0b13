//! What the CLI tests share: a program on a real pseudo-terminal.

use std::fs;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The terminal side of a pseudo-terminal: what the program printed so far, and a way to type.
pub struct Terminal {
    master: fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
    seen: usize,
    /// How long to wait after a match before typing: a prompt may switch the terminal to raw
    /// mode just after it printed.
    settle: Duration,
}

impl Terminal {
    /// Starts `command` with stdin, stdout and stderr on a new pseudo-terminal of `columns`.
    pub fn spawn(mut command: Command, columns: u16, settle: Duration) -> (Self, Child) {
        let size = nix::pty::Winsize { ws_row: 40, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let side = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let child = command
            .stdin(side(&pty.slave))
            .stdout(side(&pty.slave))
            .stderr(side(&pty.slave))
            .spawn()
            .expect("the program starts");
        // Only the child may hold the terminal side, so reading ends when the child is gone.
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
        (Self { master, screen, seen: 0, settle }, child)
    }

    /// Waits until `text` appears after what was already matched.
    pub fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(self.seen..).and_then(|rest| rest.find(text)) {
                self.seen += at + text.len();
                std::thread::sleep(self.settle);
                return;
            }
            assert!(Instant::now() < deadline, "no {text:?} on the terminal:\n{screen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    pub fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
        self.master.flush().expect("flush");
    }
}
