//! The completions and man pages as a user meets them: `bkg completions bash` sourced in a real
//! bash on a pseudo-terminal, Tab pressed; `man -l` on a checked-in page.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::Terminal;

const BKG: &str = env!("CARGO_BIN_EXE_bkg");

/// An interactive bash on a new pseudo-terminal, ended when dropped.
struct Bash {
    terminal: Terminal,
    child: std::process::Child,
}

impl Bash {
    fn start() -> Self {
        let mut command = Command::new("bash");
        command
            .args(["--norc", "--noprofile", "-i"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "dumb")
            .env("PS1", "$ ")
            .env("INPUTRC", "/dev/null");
        let (terminal, child) = Terminal::spawn(command, 200, Duration::ZERO);
        Self { terminal, child }
    }

    fn type_keys(&mut self, keys: &str) {
        self.terminal.type_keys(keys);
    }

    fn expect(&mut self, text: &str) {
        self.terminal.expect(text);
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
    bash.type_keys("bkg va\t");
    bash.expect("bkg validate ");
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
