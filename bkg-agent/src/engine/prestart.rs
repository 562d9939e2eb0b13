//! A prestarted interpreter: pid 1 of a pool sandbox starts the code's process when the sandbox
//! is prepared, locked down as any code is, running Python or Node with a loader (`prestart.py`,
//! `prestart.cjs`) that waits for the run's order. A run that fits takes it: its script starts
//! without waiting for the interpreter's own start-up. One that does not (another runtime, a
//! terminal, a start-up environment of its own) gets a fresh process, as without it. Each
//! sandbox still serves one run, and each prestarted interpreter belongs to one sandbox. Python's
//! is a fork of the zygote (engine/zygote.rs) when one serves: forks of one generation share
//! its address layout and hash seed (docs/security.md, "the zygote").

use bkg_schema::Language;
use serde::{Deserialize, Serialize};

use super::control::GoOrder;
use super::plan::WORKSPACE;

/// What pid 1 prestarts: the runtime, its interpreter and the environment it starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrestartPlan {
    pub language: Language,
    pub interpreter: String,
    pub env: Vec<(String, String)>,
}

/// The loaders' sources; the descriptors they read their order from and report on are filled in.
const PYTHON_LOADER: &str = include_str!("prestart.py");
const NODE_LOADER: &str = include_str!("prestart.cjs");
/// Where Node's loader is written for its preload. It stays for the whole run: NODE_OPTIONS'
/// `--require` holds for every thread, so each `Worker` the script starts preloads it again
/// (and finds it inert). Deleted once loaded, it made every Worker of a prestarted run fail
/// with "Cannot find module". Not in /workspace, which is the user's own.
const NODE_LOADER_PATH: &str = "/tmp/.bkg-prestart.cjs";
/// Node's main module until the order names the script (nothing is there).
const NODE_PLACEHOLDER: &str = "/workspace/.bkg-main";

impl PrestartPlan {
    /// The prestarted process's command line, given the descriptor the order comes on and the
    /// one it tells it is waiting on: Python's loader (without its comments) on the command
    /// line, or Node with its placeholder main module.
    pub fn argv(&self, order_fd: i32, ready_fd: i32) -> Vec<String> {
        match self.language {
            Language::Python => vec![self.interpreter.clone(), "-c".into(), python_loader(order_fd, ready_fd, "None")],
            Language::Node => vec![self.interpreter.clone(), NODE_PLACEHOLDER.into()],
        }
    }

    /// The zygote's command line (engine/zygote.rs): Python's loader, which loads `library` and
    /// serves forks, its order and report at the places its forks put them. `None` for Node,
    /// which has no zygote, or a library path that is not UTF-8.
    pub fn zygote_argv(&self, library: &std::path::Path) -> Option<Vec<String>> {
        if self.language != Language::Python {
            return None;
        }
        let library = serde_json::to_string(library.to_str()?).ok()?;
        let loader = python_loader(super::zygote::ORDER_FD, super::zygote::READY_FD, &library);
        Some(vec![self.interpreter.clone(), "-c".into(), loader])
    }

    /// The environment the interpreter starts with: the plan's, and for Node the preload of
    /// its loader (which takes it out of the environment again).
    pub fn start_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        if self.language == Language::Node {
            env.push(("NODE_OPTIONS".into(), format!("--require {NODE_LOADER_PATH}")));
        }
        env
    }

    /// The file pid 1 writes before it starts the interpreter, if its loader is one (Node's).
    pub fn loader_file(&self, order_fd: i32, ready_fd: i32) -> Option<(&'static str, String)> {
        (self.language == Language::Node).then(|| {
            let placeholder = format!("'{NODE_PLACEHOLDER}'");
            (NODE_LOADER_PATH, with_descriptors(NODE_LOADER, order_fd, ready_fd).replace("PLACEHOLDER", &placeholder))
        })
    }

    /// Whether `order` can be given to the prestarted interpreter with nothing for the script
    /// to tell: the same interpreter running a script of the workspace, no terminal, the same
    /// environment where the interpreter reads it at start-up, and nothing in the workspace
    /// that its start-up would have read (Python's user site-packages under `$HOME`).
    pub fn fits(&self, order: &GoOrder) -> bool {
        let runs_a_script = match order.argv.as_slice() {
            [interpreter, script, ..] => {
                *interpreter == self.interpreter && script.starts_with(&format!("{WORKSPACE}/"))
            }
            _ => false,
        };
        let language = self.language;
        // `TZ` too for Python: the C library reads it once, at the interpreter's first local time
        // (found by a new-user trial: `-e TZ=Asia/Tokyo` gave a zygote's fork UTC).
        // The dynamic loader's and the C library's own (`LD_PRELOAD`, `GLIBC_TUNABLES`,
        // `MALLOC_ARENA_MAX`) are read before any of the interpreter's code (found by a new-user
        // trial: `-e LD_PRELOAD=…` did nothing in a zygote's fork).
        let read_at_start = |key: &str| {
            let common = ["LC_", "LD_", "MALLOC_"].iter().any(|prefix| key.starts_with(prefix))
                || ["LANG", "HOME", "TZ", "GLIBC_TUNABLES"].contains(&key);
            common
                || match language {
                    Language::Python => key.starts_with("PYTHON"),
                    Language::Node => {
                        ["NODE_", "UV_", "OPENSSL_", "SSL_CERT_"].iter().any(|prefix| key.starts_with(prefix))
                    }
                }
        };
        let start_env = |env: &[(String, String)]| {
            let mut wanted: Vec<(String, String)> = env.iter().filter(|(key, _)| read_at_start(key)).cloned().collect();
            wanted.sort();
            wanted
        };
        let user_site = format!("{WORKSPACE}/.local");
        let touches_user_site = order
            .files
            .iter()
            .map(|file| &file.path)
            .chain(&order.dirs)
            .any(|path| path == &user_site || path.starts_with(&format!("{user_site}/")));
        runs_a_script && order.terminal.is_none() && start_env(&order.env) == start_env(&self.env) && !touches_user_site
    }
}

/// Python's loader without its comments, its descriptors and zygote library (a Python
/// expression: `None`, or the path as a string literal) filled in.
fn python_loader(order_fd: i32, ready_fd: i32, zygote: &str) -> String {
    let loader: String = PYTHON_LOADER
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    with_descriptors(&loader, order_fd, ready_fd).replace("ZYGOTE", zygote)
}

fn with_descriptors(loader: &str, order_fd: i32, ready_fd: i32) -> String {
    loader.replace("ORDER_FD", &order_fd.to_string()).replace("READY_FD", &ready_fd.to_string())
}

/// The order as the loader reads it: every field ends with a NUL; `1` when the code's stderr is
/// to be its stdout's pipe (else empty), the working directory, the count of arguments, the
/// arguments, then the environment as `KEY=VALUE`. Arguments and values hold no NUL (the agent
/// refuses them).
pub fn encode(order: &GoOrder) -> Vec<u8> {
    let mut bytes = Vec::new();
    let count = order.argv.len().to_string();
    let joined = if order.stderr_to_stdout { "1" } else { "" };
    let fields = [joined, order.cwd.as_str(), count.as_str()].into_iter().chain(order.argv.iter().map(String::as_str));
    for field in fields {
        bytes.extend_from_slice(field.as_bytes());
        bytes.push(0);
    }
    for (key, value) in &order.env {
        bytes.extend_from_slice(format!("{key}={value}").as_bytes());
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::control::PlacedFile;

    fn plan() -> PrestartPlan {
        PrestartPlan {
            language: Language::Python,
            interpreter: "/usr/bin/python3".into(),
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("PYTHONUNBUFFERED".into(), "1".into()),
                ("HOME".into(), WORKSPACE.into()),
            ],
        }
    }

    fn order(argv: &[&str], env: &[(&str, &str)]) -> GoOrder {
        GoOrder {
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            env: env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
            cwd: WORKSPACE.into(),
            files: Vec::new(),
            clear: Vec::new(),
            dirs: Vec::new(),
            hold_after_exit: false,
            cpus: 1,
            terminal: None,
            stderr_to_stdout: false,
        }
    }

    const START_ENV: [(&str, &str); 2] = [("PYTHONUNBUFFERED", "1"), ("HOME", "/workspace")];

    #[test]
    fn a_script_run_with_the_same_start_up_environment_fits() {
        let plan = plan();
        let env = [START_ENV[0], START_ENV[1], ("PATH", "/bin"), ("SECRET", "x")];
        assert!(plan.fits(&order(&["/usr/bin/python3", "/workspace/main.py", "-v", ""], &env)));
    }

    #[test]
    fn what_python_reads_at_start_up_must_be_the_same() {
        let plan = plan();
        let script = ["/usr/bin/python3", "/workspace/main.py"];
        assert!(!plan.fits(&order(&script, &[START_ENV[0]])), "HOME missing");
        assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("PYTHONPATH", "/opt")])));
        assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("TZ", "Asia/Tokyo")])));
        assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("LC_ALL", "C")])));
        assert!(!plan.fits(&order(&script, &[("PYTHONUNBUFFERED", "0"), START_ENV[1]])));
        for loaders in
            [("LD_PRELOAD", "/x.so"), ("GLIBC_TUNABLES", "glibc.malloc.perturb=170"), ("MALLOC_ARENA_MAX", "1")]
        {
            assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], loaders])), "{loaders:?}");
        }
    }

    #[test]
    fn other_runtimes_sessions_terminals_and_user_site_packages_do_not_fit() {
        let plan = plan();
        let env = START_ENV;
        assert!(!plan.fits(&order(&["/usr/bin/node", "/workspace/main.js"], &env)));
        assert!(!plan.fits(&order(&["/usr/bin/python3", "-u", "/runner.py"], &env)));
        assert!(!plan.fits(&order(&["/usr/bin/python3"], &env)));
        let mut with_terminal = order(&["/usr/bin/python3", "/workspace/main.py"], &env);
        with_terminal.terminal = Some(bkg_schema::terminal::TerminalSize { rows: 24, cols: 80 });
        assert!(!plan.fits(&with_terminal));
        let mut with_site = order(&["/usr/bin/python3", "/workspace/main.py"], &env);
        with_site.files.push(PlacedFile {
            path: "/workspace/.local/lib/python3.11/site-packages/x.pth".into(),
            content_base64: String::new(),
            mode: 0o644,
        });
        assert!(!plan.fits(&with_site));
    }

    #[test]
    fn the_order_is_nul_terminated_fields_with_an_argument_count() {
        let mut order = order(&["/usr/bin/python3", "/workspace/a.py", ""], &[("A", "1=2")]);
        assert_eq!(encode(&order), b"\x00/workspace\x003\x00/usr/bin/python3\x00/workspace/a.py\x00\x00A=1=2\x00");
        order.stderr_to_stdout = true;
        assert!(encode(&order).starts_with(b"1\x00/workspace\x00"));
    }

    /// Both loaders give stderr to stdout's pipe themselves (prestart.py, prestart.cjs).
    #[test]
    fn a_run_whose_stderr_is_its_stdout_fits_python_and_node() {
        let mut python = order(&["/usr/bin/python3", "/workspace/main.py"], &START_ENV);
        python.stderr_to_stdout = true;
        assert!(plan().fits(&python));
        let node = PrestartPlan { language: Language::Node, interpreter: "/usr/bin/node".into(), ..plan() };
        let mut script = order(&["/usr/bin/node", "/workspace/main.js"], &START_ENV);
        script.stderr_to_stdout = true;
        assert!(node.fits(&script));
    }

    #[test]
    fn node_fits_node_runs_with_its_own_start_up_environment() {
        let plan = PrestartPlan { language: Language::Node, interpreter: "/usr/bin/node".into(), ..plan() };
        let script = ["/usr/bin/node", "/workspace/main.mjs", "x"];
        assert!(plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("PATH", "/bin")])));
        assert!(!plan.fits(&order(&["/usr/bin/python3", "/workspace/main.py"], &START_ENV)));
        assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("NODE_PATH", "/opt/bkg/node")])));
        assert!(!plan.fits(&order(&script, &[START_ENV[0], START_ENV[1], ("TZ", "UTC")])));
        let start_env = plan.start_env();
        assert!(start_env.contains(&("NODE_OPTIONS".into(), format!("--require {NODE_LOADER_PATH}"))));
        assert_eq!(plan.argv(3, 4), ["/usr/bin/node", NODE_PLACEHOLDER]);
        let (path, loader) = plan.loader_file(3, 4).unwrap_or_default();
        assert_eq!(path, NODE_LOADER_PATH);
        assert!(loader.contains("fs.readSync(3,") && loader.contains("fs.writeSync(4,"), "{loader}");
        assert!(loader.contains(&format!("const placeholder = '{NODE_PLACEHOLDER}';")), "{loader}");
    }

    #[test]
    fn the_loader_gets_its_descriptors_and_loses_its_comments() {
        let argv = plan().argv(7, 9);
        assert_eq!(argv[..2], ["/usr/bin/python3", "-c"]);
        assert!(argv[2].contains("os.read(7, 65536)") && argv[2].contains("os.write(9, b\"1\")"), "{}", argv[2]);
        assert!(!argv[2].lines().any(|line| line.trim_start().starts_with('#')));
        assert_eq!(plan().loader_file(7, 9), None, "Python's loader is on its command line");
    }
}
