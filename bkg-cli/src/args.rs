//! The command-line grammar of `bkg` and `bkgr`, and the examples every `--help` ends with.
//!
//! Every clap struct lives here and this module uses no other of the crate: the commands read
//! their arguments from it, never the other way round.

use std::path::PathBuf;

use bkg_schema::Language;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// bkg runs untrusted Python and Node.js code in sandboxes with hard limits.
#[derive(Debug, Parser)]
#[command(name = "bkg", version, propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Default, Args)]
pub struct GlobalArgs {
    /// The agent's unix socket [default: /run/bkg/agent.sock]
    #[arg(long, global = true, env = "BKG_SOCKET", value_name = "PATH", help_heading = "Connection")]
    pub socket: Option<PathBuf>,
    /// Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket
    #[arg(long, global = true, env = "BKG_REMOTE", value_name = "URL", help_heading = "Connection")]
    pub remote: Option<String>,
    /// Verify an https --remote agent against the CA certificates in this PEM file instead of the system's roots
    #[arg(long, global = true, env = "BKG_CACERT", value_name = "FILE", help_heading = "Connection")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a script once in a temporary sandbox and return its output and exit code.
    #[command(after_help = "Exit codes: the script's own; 124 timeout; 137 killed by the memory or process limit; \
128+N killed by signal N; 130 cancelled (Ctrl-C; 143 on SIGTERM, 129 on SIGHUP); 143 the agent stopped; \
125 bkg failed (bad input, agent unreachable); 126 runtime not executable; 127 script not found.")]
    Exe(Box<ExeArgs>),
    /// Start, stop or inspect the local agent.
    Agent(AgentArgs),
    /// Write a cave.yaml and the .bkg/ state folder (asks on a terminal; flags and defaults otherwise).
    Init(InitArgs),
    /// Add a sandbox to cave.yaml, keeping its comments and order.
    Add(Box<AddArgs>),
    /// Check a cave.yaml against its schema and list every problem.
    Validate(ValidateArgs),
    /// List the project's persistent sandboxes (`--all`: every project's).
    Ls(LsArgs),
    /// Show one persistent sandbox: state, last run, limits, disk.
    Status(NameArgs),
    /// Print the output of a sandbox's latest run (`-f` follows it).
    Logs(LogsArgs),
    /// Open an interactive shell (or run a command) in a persistent sandbox, on a terminal.
    #[command(after_help = "Exit codes: the shell's own; 124 timeout; 137 killed by the memory or process limit; \
125 bkg failed (no terminal, agent unreachable, unknown sandbox).")]
    Shell(ShellArgs),
    /// Copy files and directories into or out of a persistent sandbox (NAME:PATH, relative to its /workspace).
    Cp(CpArgs),
    /// Run code in a session of a persistent sandbox: its variables, imports and cwd stay from one execution to the next.
    #[command(after_help = "Exit codes: 0 the code ran; 1 it raised (the traceback is on stderr) or its interpreter \
ended; 130 interrupted (143, 129 on SIGTERM, SIGHUP); 137 its interpreter was killed at the memory or process limit, 124 at the time limit; 125 bkg \
failed.")]
    Exec(ExecArgs),
    /// An interactive Python or Node prompt in a session of a persistent sandbox, with history.
    Repl(ReplArgs),
    /// Stop the run going on in one or more sandboxes (`--all`: every sandbox of the project).
    Stop(StopArgs),
    /// Remove sandboxes: their workspace, logs and their entry in cave.yaml.
    Rm(RmArgs),
    /// The history of runs: temporary and persistent, with their accounting.
    Runs(RunsArgs),
    /// Verify or follow the agent's signed audit log.
    Audit(AuditArgs),
    /// The sync of the agent's events to the shared bkg_db.
    Sync(SyncArgs),
    /// The shared bkg_db itself.
    Db(DbArgs),
    /// Keep an API key for a remote agent (--remote): log in with a password, or give a key.
    Login(LoginArgs),
    /// Forget the API key kept for a remote agent (--remote).
    Logout,
    /// Create, list, rotate and revoke API keys.
    Keys(KeysArgs),
    /// Add, list and remove the users who log in with a password (admins).
    Users(UsersArgs),
    /// The Python environments the agent built for runs' packages: list, prune.
    Envs(EnvsArgs),
    /// Secrets runs get as environment variables (`bkg exe --secret NAME`): set, list, remove.
    Secrets(SecretsArgs),
    /// Follow the changes to runs, sandboxes, keys and the audit log as they happen.
    Watch(WatchArgs),
    /// Open the agent's Web UI: print (or --open) a URL that logs in once.
    Ui(UiArgs),
    /// The versions of bkg and of the agent, their commits and build dates, the agent's protections.
    Version(VersionArgs),
    /// Check this host and its agent: each piece passes, warns or fails, with the fix.
    Doctor(DoctorArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(CompletionsArgs),
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): read once, into the printer.
    pub fn json(&self) -> bool {
        match self {
            Command::Exe(args) => args.json,
            Command::Validate(ValidateArgs { json, .. })
            | Command::Ls(LsArgs { json, .. })
            | Command::Status(NameArgs { json, .. })
            | Command::Stop(StopArgs { json, .. })
            | Command::Cp(CpArgs { json, .. })
            | Command::Exec(ExecArgs { json, .. })
            | Command::Rm(RmArgs { json, .. })
            | Command::Login(LoginArgs { json, .. })
            | Command::Version(VersionArgs { json })
            | Command::Watch(WatchArgs { json, .. })
            | Command::Ui(UiArgs { json, .. })
            | Command::Doctor(DoctorArgs { json, .. })
            | Command::Agent(AgentArgs { action: AgentAction::Status { json } })
            | Command::Runs(RunsArgs {
                action:
                    RunsAction::Ls { json, .. }
                    | RunsAction::Show { json, .. }
                    | RunsAction::Cancel { json, .. }
                    | RunsAction::Files { json, .. },
            })
            | Command::Audit(AuditArgs {
                action:
                    AuditAction::Verify(AuditVerifyArgs { json, .. }) | AuditAction::Tail(AuditTailArgs { json, .. }),
            })
            | Command::Sync(SyncArgs { action: SyncAction::Status { json } | SyncAction::Retry { json, .. } })
            | Command::Db(DbArgs { action: DbAction::Migrate { json } })
            | Command::Envs(EnvsArgs { action: EnvsAction::Ls { json } | EnvsAction::Prune { json, .. } })
            | Command::Secrets(SecretsArgs { action: SecretsAction::Ls { json, .. } })
            | Command::Keys(KeysArgs {
                action:
                    KeysAction::Create { json, .. }
                    | KeysAction::Ls { json }
                    | KeysAction::Rotate { json, .. }
                    | KeysAction::Revoke { json, .. }
                    | KeysAction::Rm { json, .. },
            })
            | Command::Users(UsersArgs { action: UsersAction::Ls { json } }) => *json,
            Command::Agent(_)
            | Command::Init(_)
            | Command::Add(_)
            | Command::Logs(_)
            | Command::Shell(_)
            | Command::Repl(_)
            | Command::Logout
            | Command::Secrets(_)
            | Command::Users(_)
            | Command::Completions(_) => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the hash chain and signatures; name the first bad line. Exit 0 intact, 1 tampered.
    Verify(AuditVerifyArgs),
    /// Print the newest records (`-f` follows).
    Tail(AuditTailArgs),
}

/// The resource limits of a run or a sandbox, as written on the command line (parsed later, so
/// a bad value gets bkg's own one-line error).
#[derive(Debug, Default, Args)]
pub struct LimitArgs {
    /// CPU limit in CPUs, e.g. 0.5 [default: 1]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Memory limit, swap included, e.g. 256MiB or 1.5GiB [default: 512MiB]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Wall-clock limit of a run, e.g. 10s or 1m30s [default: 60s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// Disk limit for /workspace and /tmp together, e.g. 1GiB [default: 500MiB]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub disk: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExeArgs {
    /// The script to run, or `-` to read the code from stdin.
    #[arg(value_name = "SCRIPT", required_unless_present = "code")]
    pub script: Option<String>,
    /// Arguments passed to the script; after the script, or after `--` when they look like bkg's flags.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Run this code instead of a file (needs --type); the arguments after it are the code's (after `--` when they look like bkg's flags).
    #[arg(short = 'c', long = "code", value_name = "CODE")]
    pub code: Option<String>,
    /// The language: python or node [default: from the file extension]
    #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = exe_language(), hide_possible_values = true)]
    pub language: Option<Language>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Set a variable in the sandbox; a bare NAME passes the host's value (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read variables from a file of KEY=VALUE lines (repeatable; -e wins).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Copy a host file into the sandbox, to /workspace/NAME or DEST; a directory's contents go to /workspace (or DEST), beside the script (repeatable).
    #[arg(short = 'f', long = "file", value_name = "SRC[:DEST]", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub files: Vec<String>,
    /// Keep this file or directory under /workspace as the run's files, besides
    /// /workspace/out, which is always kept (repeatable; `bkg runs files ID` fetches them).
    #[arg(long = "keep", value_name = "PATH")]
    pub keep: Vec<String>,
    /// Let the script reach these hosts through its proxy (comma-separated, repeatable);
    /// host.bkg.internal:PORT is this machine's loopback [default: no network at all]
    #[arg(long = "net", value_name = "HOST[:PORT],...", value_delimiter = ',')]
    pub net: Vec<String>,
    /// Forward a host port into the sandbox while the script runs (repeatable; loopback unless
    /// ADDRESS is given).
    #[arg(short = 'p', long = "publish", value_name = "[ADDRESS:]HOST_PORT:SANDBOX_PORT")]
    pub ports: Vec<String>,
    /// A Python package the script needs, as a requirement (`numpy`, `requests>=2`); installed
    /// once per distinct set and reused (repeatable).
    #[arg(long = "with", value_name = "REQUIREMENT")]
    pub with: Vec<String>,
    /// The requirements file to install from, besides the script's `# /// script` block [default: requirements.txt beside the script, if any and the script has no such block]
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// Give the script a secret (`bkg secrets set NAME`) as the variable NAME (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Bring back what the run wrote to /workspace/out/ into this host directory (made if missing).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Print one JSON object with the result and accounting instead of the output.
    #[arg(long, conflicts_with = "tty")]
    pub json: bool,
    /// Run the script on a pseudo-terminal: raw keys, colours, resize and Ctrl-C reach it (needs a terminal).
    #[arg(short = 'T', long = "tty")]
    pub tty: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The sandbox's name in cave.yaml (it must have run once, e.g. with `bkgr NAME`).
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Run this command line (with /bin/sh -c) on the terminal instead of an interactive shell.
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub command: Option<String>,
    /// Set a variable in the sandbox; a bare NAME passes the host's value (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// How long the shell may last, e.g. 30m [default: the sandbox's timeout]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// Run this program with these arguments (after `--`) instead of an interactive shell.
    #[arg(last = true, value_name = "PROGRAM", conflicts_with = "command")]
    pub program: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A host file or directory, or NAME:PATH in a sandbox.
    #[arg(value_name = "SRC")]
    pub source: String,
    /// A directory, on the host or NAME:PATH in a sandbox; made if missing.
    #[arg(value_name = "DEST")]
    pub dest: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print the copy's JSON answer ({"path", "files", "bytes", "links"}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox's name (in cave.yaml, or made with the API).
    pub name: String,
    /// The session to run in; made on first use.
    #[arg(short = 's', long, value_name = "S", default_value = "default")]
    pub session: String,
    /// The code to run [default: read from stdin].
    #[arg(short = 'c', long = "code", value_name = "CODE")]
    pub code: Option<String>,
    /// The session's language when it is made: python or node [default: the sandbox's].
    #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = language(), hide_possible_values = true)]
    pub language: Option<Language>,
    /// Interrupt what the session is running instead of running code.
    #[arg(long, conflicts_with = "code")]
    pub interrupt: bool,
    /// Restart the session's interpreter (its state is lost) instead of running code.
    #[arg(long, conflicts_with_all = ["code", "interrupt"])]
    pub restart: bool,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print each event of the execution as a line of JSON instead of the output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplArgs {
    /// The sandbox's name (in cave.yaml, or made with the API).
    pub name: String,
    /// The session to use; made on first use.
    #[arg(short = 's', long, value_name = "S", default_value = "default")]
    pub session: String,
    /// The session's language when it is made: python or node [default: the sandbox's].
    #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = language(), hide_possible_values = true)]
    pub language: Option<Language>,
    #[command(flatten)]
    pub project: ProjectArgs,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: AgentAction,
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Start the agent in the background (needs root).
    Start {
        /// Stay in the foreground and log to stderr.
        #[arg(long)]
        foreground: bool,
        /// The agent's state directory [default: /var/lib/bkg as root]
        #[arg(long, env = "BKG_STATE_DIR", value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Stop the agent and wait until it has exited: runs going on get 5 s, then are killed.
    Stop,
    /// Show whether the agent runs, and its limits and load. Exit 0 running, 1 not running, 125 it does not answer.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The sandboxes' names in cave.yaml.
    #[arg(value_name = "NAME", required_unless_present = "all")]
    pub names: Vec<String>,
    /// Stop every sandbox of the project that has a run going on.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print JSON: one object per sandbox, in an array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The sandboxes' names in cave.yaml.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Do not ask (required when stdin is not a terminal).
    #[arg(long)]
    pub force: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub action: RunsAction,
}

#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// The newest runs, newest first: id, type, start, outcome, wall and CPU time, peak memory.
    Ls {
        /// How many runs to list, 1 to 1000.
        #[arg(
            short = 'n',
            long,
            value_name = "N",
            default_value_t = 20,
            value_parser = runs_to_list,
            allow_negative_numbers = true
        )]
        limit: u32,
        /// Only the runs of this persistent sandbox: its name (this project's first) or its id.
        #[arg(long, value_name = "NAME")]
        sandbox: Option<String>,
        /// The runs older than this one: the next page after a listing's last run.
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        #[command(flatten)]
        project: ProjectArgs,
        /// Print JSON: an array of runs.
        #[arg(long)]
        json: bool,
    },
    /// One run with its limits and accounting.
    Show {
        /// The run's id (`bkg runs ls` lists them).
        #[arg(value_name = "ID")]
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ends a queued or running run, as Ctrl-C on its `bkg exe` does: its code gets SIGTERM,
    /// and SIGKILL after 5 s. Prints the run as recorded once it has ended.
    Cancel {
        /// The run's id (`bkg runs ls` lists them).
        #[arg(value_name = "ID")]
        id: String,
        /// Print JSON: the run, as `bkg runs show --json` prints it.
        #[arg(long)]
        json: bool,
    },
    /// The files a run kept (/workspace/out, --keep paths, long stdout/stderr): listed, or
    /// fetched into a directory.
    Files {
        /// The run's id (`bkg runs ls` lists them).
        #[arg(value_name = "ID")]
        id: String,
        /// Fetch the files into this directory (made if missing; existing files are never
        /// overwritten), each checked against its SHA-256.
        #[arg(short = 'o', long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Print JSON: {"run_id", "files": [{"path", "kind", "bytes", "sha256"}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print JSON: {"cli": {...}, "agent": {...} or null}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The project folder, created if missing [default: .]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Never ask: use the flags and defaults (also the case without a terminal or with CI set).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Overwrite an existing cave.yaml, keeping it as cave.yaml.bak.
    #[arg(long)]
    pub force: bool,
    /// The namespace [default: default]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Add a first sandbox with this name [default: none without prompts]
    #[arg(long, value_name = "NAME")]
    pub sandbox: Option<String>,
    /// The first sandbox's type: python or node [default: python]
    #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = language(), hide_possible_values = true)]
    pub language: Option<Language>,
    /// The first sandbox's start script [default: python main.py or node main.js]
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub start: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The sandbox's name: lowercase letters, digits and '-'.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The language: python or node.
    #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = language(), hide_possible_values = true)]
    pub language: Language,
    /// A script, NAME=COMMAND (repeatable) [default: start=python main.py or node main.js]
    #[arg(short = 's', long = "script", value_name = "NAME=CMD", allow_hyphen_values = true)]
    pub scripts: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Mount a project folder, read-only unless :rw (repeatable).
    #[arg(long = "volume", value_name = "HOST:GUEST[:ro|:rw]")]
    pub volumes: Vec<String>,
    /// The cave.yaml to edit [default: the project's]
    #[arg(long, value_name = "PATH", conflicts_with = "dir")]
    pub cave: Option<PathBuf>,
    /// The old name of --cave (`bkg exe --file` copies a file in); warns.
    #[arg(long, value_name = "PATH", hide = true, conflicts_with_all = ["cave", "dir"])]
    pub file: Option<PathBuf>,
    /// Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The file to check [default: the project's cave.yaml]
    #[arg(value_name = "FILE", conflicts_with = "dir")]
    pub file: Option<PathBuf>,
    /// Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print only one JSON object: {"file", "valid", "errors": [{"line", "pointer", "message"}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Every sandbox the agent knows, of every project.
    #[arg(long)]
    pub all: bool,
    /// Print JSON: an array of sandboxes.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The sandbox's name in cave.yaml.
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sandbox's name in cave.yaml.
    pub name: String,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Keep printing while the run goes on.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Start with the last N lines of the output.
    #[arg(short = 'n', long, value_name = "N", value_parser = whole_number::<usize>, allow_negative_numbers = true)]
    pub tail: Option<usize>,
    /// Lead each line with the time bkg read it (RFC 3339, UTC): when it was written, for lines that arrive with -f.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// List what the sandbox refused its recent runs (system calls, limits) instead of the output.
    #[arg(long, conflicts_with_all = ["follow", "tail", "timestamps"])]
    pub policy: bool,
    /// Print the output of this earlier run (one of the last 20; `bkg runs ls --sandbox NAME` lists them), not the newest's.
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["follow", "policy"])]
    pub run: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// Log files to verify, in this order [default: every file of STATE_DIR/audit/]
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The agent's public key: 64 hex digits or a file holding them [default: audit.pub beside the log's directory]
    #[arg(long, value_name = "HEX|FILE")]
    pub key: Option<String>,
    /// The agent's state directory [default: the running agent's, else /var/lib/bkg as root]
    #[arg(long, env = "BKG_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of a line on stderr.
    #[arg(long)]
    pub json: bool,
    /// Verify the chain as the shared bkg_db holds it (read through the agent), not the local files.
    #[arg(long, conflicts_with = "files")]
    pub from_db: bool,
}

#[derive(Debug, Args)]
pub struct AuditTailArgs {
    /// How many of the last records to print.
    #[arg(
        short = 'n',
        long = "lines",
        value_name = "N",
        default_value_t = 10,
        value_parser = whole_number::<usize>,
        allow_negative_numbers = true
    )]
    pub lines: usize,
    /// Keep printing records as they are written, across file rotation.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The agent's state directory [default: the running agent's, else /var/lib/bkg as root]
    #[arg(long, env = "BKG_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the records' JSON lines as written.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(subcommand)]
    pub action: SyncAction,
}

#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Backlog, parked events, last success and last error of the sync to bkg_db. Exit 0
    /// healthy or not configured, 1 when the last attempt failed or events are parked.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ship parked events again (all of them, or the one with sequence number SEQ), once what
    /// bkg_db refused is fixed.
    Retry {
        /// The parked event's sequence number, as `bkg sync status` lists it.
        #[arg(value_parser = whole_number::<u64>, allow_negative_numbers = true)]
        seq: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub action: DbAction,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply bkg_db's schema migrations now (the agent also applies them when it connects).
    Migrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Log in as this user; the password is read from stdin (asked for on a terminal).
    #[arg(long, value_name = "NAME", conflicts_with = "key_stdin")]
    pub user: Option<String>,
    /// Read an existing API key from stdin instead.
    #[arg(long)]
    pub key_stdin: bool,
    /// Print what the agent says of the key as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EnvsArgs {
    #[command(subcommand)]
    pub action: EnvsAction,
}

#[derive(Debug, Subcommand)]
pub enum EnvsAction {
    /// List the environments: id, size, last use and packages.
    Ls {
        /// Print the environments as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove environments no run is using (admins); a run that needs one builds it again.
    Prune {
        /// Only those no run has used for this long, e.g. 7d.
        #[arg(long, value_name = "DURATION")]
        unused_for: Option<String>,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub action: SecretsAction,
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Set a secret; its value is read from stdin (one trailing newline is dropped).
    Set {
        #[arg(value_name = "NAME")]
        name: String,
        /// The namespace [default: your key's, or `default`]
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// List the secrets' names (never their values).
    Ls {
        /// The namespace [default: your key's, or `default`]
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// Print the names as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
        /// The namespace [default: your key's, or `default`]
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// admin, namespace, session or model-access.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// The namespace the key is confined to (every role but admin).
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// A label for people.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Lifetime, e.g. 12h, 7d [default: the role's]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Print the key and its description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the keys you may manage (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret and print it; the old one stops working at once.
    Rotate {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it is refused from its next request on.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a key for good: refused at once and gone from `bkg keys ls` (a revoked one stays
    /// listed); the audit log keeps its history.
    Rm {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub action: UsersAction,
}

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Add a user who logs in (`bkg login --user NAME`) to one namespace; the password is read
    /// from stdin (one trailing newline is dropped), or asked for, not shown, on a terminal.
    Add {
        /// A DNS label (a-z, 0-9, -).
        #[arg(value_name = "NAME")]
        name: String,
        /// The namespace the user's session keys are confined to.
        #[arg(long, value_name = "NS")]
        namespace: String,
    },
    /// List the users (never their passwords).
    Ls {
        /// Print the users as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user: their password goes, and every key of theirs still active is revoked.
    Rm {
        /// The user's name, as `bkg users ls` lists it.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// Run the sandboxes of a bkg project (cave.yaml): SCRIPT of sandbox NAME, or the `start`
/// script of every sandbox at once.
#[derive(Debug, Parser)]
#[command(
    name = "bkgr",
    version,
    after_help = "Exit codes: as `bkg exe` (the script's own, 124, 137, 130, 125, 126, 127); with several sandboxes, the first failure's, or 130 after Ctrl-C."
)]
pub struct Bkgr {
    /// The sandbox to run [default: every sandbox, each with its `start` script]
    pub name: Option<String>,
    /// The script of the sandbox to run.
    #[arg(default_value = "start")]
    pub script: String,
    /// Extra arguments for the script (after `--`): appended to its command line, or its "$@".
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Leave the run(s) going under the agent and return at once (`bkg logs NAME -f` follows).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]
    #[arg(short = 'C', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Allow volumes whose host path is outside the project.
    #[arg(long)]
    pub allow_outside: bool,
    #[command(flatten, next_help_heading = "Limits (over cave.yaml's)")]
    pub limits: LimitArgs,
    /// The agent's unix socket.
    #[arg(long, env = "BKG_SOCKET", value_name = "PATH", help_heading = "Connection")]
    pub socket: Option<PathBuf>,
}

/// Examples at the end of each command's `--help`, by the command's path below `bkg`. A test
/// checks that every command has some.
const EXAMPLES: &[(&str, &str)] = &[
    ("", "bkg exe hello.py\n  bkg init --yes --sandbox web && bkgr web\n  bkg runs ls"),
    (
        "exe",
        "bkg exe job.py input.csv --verbose\n  bkg exe --memory 1.5GiB --timeout 1m30s -e API_TOKEN --env-file .env job.py\n  \
         echo 'print(6 * 7)' | bkg exe - --type python\n  bkg exe --tty game.py\n  bkg exe --file src/ src/main.py -o results/",
    ),
    ("agent", "sudo bkg agent start\n  bkg agent status --json\n  bkg agent stop"),
    ("agent start", "sudo bkg agent start\n  sudo bkg agent start --foreground --state-dir /srv/bkg"),
    ("agent stop", "bkg agent stop\n  bkg --socket /tmp/bkg.sock agent stop"),
    ("agent status", "bkg agent status\n  bkg agent status --json | jq .max_limits"),
    ("init", "bkg init\n  bkg init my-app --yes --sandbox web --type node --start 'node server.js'"),
    (
        "add",
        "bkg add web --type python\n  bkg add worker --type node --script start='node worker.js' --memory 1GiB\n  \
         bkg add api -t python --volume data:/workspace/data:rw -C ~/my-app",
    ),
    ("validate", "bkg validate\n  bkg validate deploy/cave.yaml --json"),
    ("ls", "bkg ls\n  bkg ls --all --json"),
    ("status", "bkg status web\n  bkg status web --json -C ~/my-app"),
    ("logs", "bkg logs web\n  bkg logs web -f --timestamps\n  bkg logs web --tail 20\n  bkg logs web --policy"),
    ("shell", "bkg shell web\n  bkg shell web --timeout 30m -e DEBUG=1\n  bkg shell web -c 'python3 -m pdb main.py'"),
    ("cp", "bkg cp data.csv web:in\n  bkg cp ./src web:app\n  bkg cp web:out/report.pdf .\n  bkg cp web:out ./results"),
    (
        "exec",
        "bkg exec web -c 'x = 41'\n  bkg exec web -c 'x + 1'\n  bkg exec web --session plots -c 'import math; math.pi'\n  \
         bkg exec web --interrupt",
    ),
    ("repl", "bkg repl web\n  bkg repl web --session scratch --type node"),
    ("stop", "bkg stop web\n  bkg stop web worker\n  bkg stop --all"),
    ("rm", "bkg rm web\n  bkg rm web worker --force"),
    ("runs", "bkg runs ls\n  bkg runs ls --sandbox web --limit 5\n  bkg runs show run_19bc0a1f2e3d4c5b"),
    ("runs ls", "bkg runs ls\n  bkg runs ls --sandbox web --limit 5\n  bkg runs ls --json | jq '.[0].wall_ms'"),
    ("runs show", "bkg runs show run_19bc0a1f2e3d4c5b\n  bkg runs show run_19bc0a1f2e3d4c5b --json"),
    ("runs cancel", "bkg runs cancel run_19bc0a1f2e3d4c5b\n  bkg runs cancel run_19bc0a1f2e3d4c5b --json"),
    ("runs files", "bkg runs files run_19bc0a1f2e3d4c5b\n  bkg runs files run_19bc0a1f2e3d4c5b --output results/"),
    ("envs", "bkg envs ls\n  sudo bkg envs prune --unused-for 7d"),
    ("envs ls", "bkg envs ls\n  bkg envs ls --json"),
    ("envs prune", "sudo bkg envs prune\n  sudo bkg envs prune --unused-for 7d --json"),
    (
        "secrets",
        "printf %s \"$TOKEN\" | bkg secrets set API_TOKEN\n  bkg secrets ls\n  bkg exe --secret API_TOKEN job.py",
    ),
    (
        "secrets set",
        "printf %s \"$TOKEN\" | bkg secrets set API_TOKEN\n  bkg secrets set DB_PASSWORD --namespace team-a < password.txt",
    ),
    ("secrets ls", "bkg secrets ls\n  bkg secrets ls --json"),
    ("secrets rm", "bkg secrets rm API_TOKEN"),
    ("audit", "sudo bkg audit verify\n  sudo bkg audit tail -f"),
    (
        "audit verify",
        "sudo bkg audit verify\n  bkg audit verify audit-0001.jsonl --key audit.pub\n  bkg audit verify --from-db",
    ),
    ("audit tail", "sudo bkg audit tail\n  sudo bkg audit tail -n 50 --json\n  sudo bkg audit tail -f"),
    ("sync", "bkg sync status\n  bkg sync status --json\n  bkg sync retry"),
    ("sync status", "bkg sync status\n  bkg sync status --json"),
    ("sync retry", "bkg sync retry        # every parked event\n  bkg sync retry 42     # the one with seq 42"),
    ("db", "bkg db migrate\n  bkg db migrate --json"),
    ("db migrate", "bkg db migrate\n  bkg db migrate --json"),
    (
        "login",
        "bkg --remote https://10.0.0.5:7070 login --user alice\n  \
         echo \"$KEY\" | bkg --remote https://10.0.0.5:7070 login --key-stdin",
    ),
    ("logout", "bkg --remote https://10.0.0.5:7070 logout"),
    ("keys", "sudo bkg keys create --role admin\n  bkg keys ls\n  bkg keys rotate key_19bc0a1f"),
    (
        "keys create",
        "sudo bkg keys create --role admin\n  bkg keys create --role namespace --namespace team-a --ttl 7d --name ci",
    ),
    ("keys ls", "bkg keys ls\n  bkg --remote https://10.0.0.5:7070 keys ls --json"),
    ("keys rotate", "bkg keys rotate key_19bc0a1f\n  bkg keys rotate key_19bc0a1f --json"),
    ("keys revoke", "bkg keys revoke key_19bc0a1f\n  bkg keys revoke key_19bc0a1f --json"),
    ("keys rm", "bkg keys rm key_19bc0a1f\n  bkg keys rm key_19bc0a1f --json"),
    (
        "users",
        "printf %s \"$PASSWORD\" | sudo bkg users add alice --namespace team-a\n  sudo bkg users ls\n  sudo bkg users rm alice",
    ),
    (
        "users add",
        "printf %s \"$PASSWORD\" | sudo bkg users add alice --namespace team-a\n  sudo bkg users add bob --namespace team-b",
    ),
    ("users ls", "sudo bkg users ls\n  bkg --remote https://10.0.0.5:7070 users ls --json"),
    ("users rm", "sudo bkg users rm alice\n  bkg --remote https://10.0.0.5:7070 users rm alice"),
    (
        "watch",
        "bkg watch\n  bkg watch --json --kinds runs --namespace team-a\n  bkg watch --since 1200 --count 50\n  bkg watch --no-follow --json",
    ),
    ("ui", "bkg ui\n  bkg ui --open\n  bkg ui --json"),
    ("version", "bkg version\n  bkg version --json"),
    (
        "doctor",
        "sudo bkg doctor\n  bkg doctor --json | jq '.checks[] | select(.status != \"pass\")'\n  sudo bkg doctor --tls-cert /etc/bkg/cert.pem",
    ),
    (
        "completions",
        "bkg completions bash > /etc/bash_completion.d/bkg\n  bkg completions zsh > \"${fpath[1]}/_bkg\"\n  \
         bkg completions fish > ~/.config/fish/completions/bkg.fish",
    ),
];

const BKGR_EXAMPLES: &str =
    "bkgr\n  bkgr web test -- -k smoke\n  bkgr web --timeout 10m --memory 2GiB\n  bkgr -d && bkg logs web -f";

/// The text that `--help` ends with: what was there, then the examples.
fn with_examples(command: clap::Command, examples: &str) -> clap::Command {
    let before = command.get_after_help().map(|text| format!("{text}\n\n")).unwrap_or_default();
    command.after_help(format!("{before}Examples:\n  {examples}"))
}

fn add_examples(mut command: clap::Command, path: &str) -> clap::Command {
    if let Some((_, examples)) = EXAMPLES.iter().find(|(key, _)| *key == path) {
        command = with_examples(command, examples);
    }
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for name in names {
        let sub_path = if path.is_empty() { name.clone() } else { format!("{path} {name}") };
        command = command.mut_subcommand(&name, |sub| add_examples(sub, &sub_path));
    }
    command
}

/// The whole `bkg` command, examples included: what parses, completes and makes man pages.
pub fn bkg_command() -> clap::Command {
    add_examples(Cli::command(), "")
}

/// `--type`'s value: python or node (or an alias, `Language::parse`), offered as those two to
/// help and shell completion.
#[derive(Clone, Copy)]
struct LanguageParser(fn(&str) -> Result<Language, String>);

impl clap::builder::TypedValueParser for LanguageParser {
    type Value = Language;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Language, clap::Error> {
        self.0.parse_ref(command, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new([Language::Python, Language::Node].into_iter().map(|language| language.as_str().into())))
    }
}

fn language_named(text: &str) -> Result<Language, String> {
    Language::parse(text).ok_or_else(|| format!("`{text}` is not a language: use python or node"))
}

fn language() -> LanguageParser {
    LanguageParser(language_named)
}

/// `bkg exe --type`'s value. A path there is most likely Docker's `-t` (a terminal), typed out of
/// habit.
fn exe_language() -> LanguageParser {
    LanguageParser(|text| {
        language_named(text).map_err(|error| match text.contains(['.', '/']) {
            true => format!("{error} (-t is the language; the script comes after it, and a terminal is -T)"),
            false => error,
        })
    })
}

/// The whole `bkgr` command, examples included. Its limit flags default to cave.yaml's limits.
pub fn bkgr_command() -> clap::Command {
    let mut command = with_examples(Bkgr::command(), BKGR_EXAMPLES);
    for (flag, help) in [
        ("cpus", "CPU limit in CPUs, e.g. 0.5 [default: cave.yaml's limits.cpus, else 1]"),
        ("memory", "Memory limit, swap included, e.g. 1.5GiB [default: cave.yaml's limits.memory, else 512MiB]"),
        ("timeout", "Wall-clock limit of the run, e.g. 1m30s [default: cave.yaml's limits.timeout, else 60s]"),
        (
            "disk",
            "Disk limit of the sandbox, e.g. 1GiB; a disk grown by it keeps its size [default: cave.yaml's limits.disk, else 500MiB]",
        ),
    ] {
        command = command.mut_arg(flag, |arg| arg.help(help));
    }
    command
}

/// A count or a position given to a flag: a whole number, 0 or more. Said so when it is not:
/// clap alone took `-1` for a flag and suggested `-- -1` (found by a new-user trial).
fn whole_number<T: std::str::FromStr>(given: &str) -> Result<T, String> {
    given.parse().map_err(|_| match !given.is_empty() && given.bytes().all(|byte| byte.is_ascii_digit()) {
        // Digits only: a number past the most this takes (found by a new-user trial: it was told
        // it was no whole number).
        true => format!("`{given}` is too large"),
        false => format!("`{given}` is not a whole number of 0 or more"),
    })
}

/// How many runs `bkg runs ls` lists: 1 to the agent's most (found by a new-user trial: `-1` was
/// told "a whole number of 0 or more", and then 0 "give 1 to 1000").
fn runs_to_list(given: &str) -> Result<u32, String> {
    let most = bkg_schema::MAX_LISTED_RUNS;
    given.parse().ok().filter(|count| (1..=most).contains(count)).ok_or_else(|| format!("`{given}`: give 1 to {most}"))
}

/// Parses our own command line into `T` by `command`.
pub fn parse<T: FromArgMatches>(command: clap::Command) -> Result<T, clap::Error> {
    let mut command = command;
    // A global given through the environment (BKG_SOCKET) counts as an argument to clap, so a
    // bare `bkg` would be "requires a subcommand" instead of the help it shows without one.
    if std::env::args_os().len() <= 1 && command.is_arg_required_else_help_set() {
        let help = command.render_help().to_string();
        return Err(clap::Error::raw(ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, help));
    }
    let given: Vec<_> = std::env::args_os().collect();
    // clap's own error names no argument and adds a usage line (found by a new-user trial).
    if let Some(bytes) = given.iter().skip(1).find(|arg| arg.to_str().is_none()) {
        // Renaming is the way out for a file's name only (found by a new-user trial: an argument
        // was told to rename a file).
        let way_out = match std::path::Path::new(bytes).symlink_metadata() {
            Ok(_) => "rename the file",
            Err(_) => "give the value another way (in a file, or on stdin)",
        };
        let message =
            format!("{bytes:?} is not valid UTF-8: names, arguments and values go to the agent as text; {way_out}\n");
        return Err(clap::Error::raw(ErrorKind::InvalidUtf8, message));
    }
    let unbuilt = command.clone();
    let matches = match command.try_get_matches_from_mut(&given) {
        Ok(matches) => matches,
        // clap's usage line names every argument it was given, those from the environment too
        // (`Usage: bkg exe --socket <PATH> <SCRIPT>` with BKG_SOCKET set): the same error without
        // the environment shows the user's own command line. Help is left as it is: it shows
        // what the environment gives on purpose.
        Err(error)
            if !matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let said = flag_taken_as_a_value(&unbuilt, &given)
                .or_else(|| code_after_exec_name(&error))
                .or_else(|| script_arguments_without_dashes(&error, &unbuilt, &given))
                .or_else(|| exe_without_a_script(&error, &unbuilt, &given))
                .or_else(|| empty_value(&error, &given))
                .or_else(|| unknown_argument(&error));
            let said = match said {
                Some(said) => said,
                None => match without_environment(unbuilt.clone()).try_get_matches_from(&given) {
                    Err(plain) if plain.kind() == error.kind() => plain,
                    _ => error,
                },
            };
            return Err(refused_after_script(said, &unbuilt, &given));
        }
        Err(error) if error.kind() == ErrorKind::DisplayHelp => match help_after_script(&unbuilt, &given) {
            Some(rewritten) => command.try_get_matches_from_mut(&rewritten)?,
            None => return Err(error),
        },
        Err(error) => return Err(error),
    };
    T::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

/// A flag of bkg's that clap refused after `bkg exe`'s script (`bkg exe conv.py --type csv`, where
/// `python3 conv.py --type csv` gives it to the script): the refusal in one line, with the way to
/// give what follows the script to it, as bkg's own refusals of such flags say it (exe.rs; found
/// by a new-user trial). `error` as it is when nothing follows a script.
fn refused_after_script(error: clap::Error, command: &clap::Command, given: &[std::ffi::OsString]) -> clap::Error {
    let Some(exe) = given.iter().position(|word| word == "exe") else { return error };
    // The script is the word at which what was given so far parses, as the script.
    let script_of = |at: usize| {
        let matches = command.clone().try_get_matches_from(&given[..=at]).ok()?;
        let exe_matches = matches.subcommand_matches("exe")?;
        let script = exe_matches.get_one::<String>("script").filter(|script| given[at] == script.as_str())?;
        Some((script.clone(), exe_matches.contains_id("code")))
    };
    let Some((at, (script, code))) = (exe + 1..given.len()).find_map(|at| Some((at, script_of(at)?))) else {
        return error;
    };
    let after: Vec<String> = given[at + 1..]
        .iter()
        .map(|word| word.to_string_lossy().into_owned())
        .take_while(|word| word != "--")
        .collect();
    // Code read from stdin (`-`) takes bkg's options after it, as documented (exe.rs).
    if script == "-" || after.is_empty() {
        return error;
    }
    let text = crate::out::clap_error_text(&error);
    let refusal = text.lines().next().unwrap_or_default();
    let way_out = crate::exe::taken_as_bkgs(&script, &after.join(" "), code);
    clap::Error::raw(error.kind(), format!("{refusal}; {way_out}\n"))
}

/// `bkg exec NAME 'print(1)'`, code after the name as `docker exec` takes its command: one line
/// with the two ways to give it, instead of clap's "unexpected argument" and usage block (found by
/// a new-user trial).
fn code_after_exec_name(error: &clap::Error) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    let in_exec = matches!(error.get(ContextKind::Usage), Some(ContextValue::StyledStr(usage))
        if usage.to_string().contains(" exec "));
    let positional =
        matches!(error.get(ContextKind::InvalidArg), Some(ContextValue::String(arg)) if !arg.starts_with('-'));
    (error.kind() == ErrorKind::UnknownArgument && in_exec && positional).then(|| {
        clap::Error::raw(
            ErrorKind::UnknownArgument,
            "the code goes after -c (`bkg exec NAME -c 'print(1)'`) or on stdin (`bkg exec NAME < cell.py`), \
             not after the sandbox's name\n",
        )
    })
}

/// `bkgr NAME SCRIPT ARG`: a script's arguments go after `--`, as its usage says: one line with
/// the command as given and `--` in its place (found by a new-user trial: only "unexpected
/// argument", where `bkg exe` shows the way).
fn script_arguments_without_dashes(
    error: &clap::Error,
    command: &clap::Command,
    given: &[std::ffi::OsString],
) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    use clap::parser::ValueSource;
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let Some(ContextValue::StyledStr(usage)) = error.get(ContextKind::Usage) else { return None };
    let usage = usage.to_string();
    // bkgr's: a name and a script of its own (bkg's commands have theirs under subcommands).
    let takes = |id: &str| command.get_arguments().any(|known| known.get_id() == id);
    if error.kind() != ErrorKind::UnknownArgument || !(takes("name") && takes("script")) {
        return None;
    }
    // As it was called (installed under another name, say).
    let program = usage.trim_start().trim_start_matches("Usage:").split_whitespace().next()?;
    // The word refused, after which what came before parses with a name and a script given: a
    // flag there (`bkgr app args --x`) is the script's as much as a word is.
    let at = given.iter().enumerate().skip(1).find_map(|(at, word)| {
        let word = word.to_str()?;
        (word == arg || word.strip_prefix(arg.as_str()).is_some_and(|rest| rest.starts_with('='))).then_some(at)
    })?;
    let before = command.clone().try_get_matches_from(&given[..at]).ok()?;
    let given_here = |id: &str| before.value_source(id) == Some(ValueSource::CommandLine);
    if !(given_here("name") && given_here("script")) {
        return None;
    }
    let quoted = |words: &[std::ffi::OsString]| {
        let words = words.iter().map(|word| word.to_string_lossy().into_owned());
        shlex::try_join(words.collect::<Vec<_>>().iter().map(String::as_str)).ok()
    };
    let (before, after) = (quoted(&given[1..at])?, quoted(&given[at..])?);
    Some(clap::Error::raw(
        ErrorKind::UnknownArgument,
        format!("unexpected argument `{arg}`: a script's arguments go after `--`: {program} {before} -- {after}\n"),
    ))
}

/// An argument the command does not take: one line that names it, a similar one when there is,
/// and the help that lists the command's, instead of clap's usage block and its tip to put `--`
/// before it, which turns an option into the script's name or a value (found by a new-user
/// trial: `bkg add web --with six` was told to write `-- --with`).
fn unknown_argument(error: &clap::Error) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let Some(ContextValue::StyledStr(usage)) = error.get(ContextKind::Usage) else { return None };
    let usage = usage.to_string();
    let command: Vec<&str> = usage
        .trim_start()
        .trim_start_matches("Usage:")
        .split_whitespace()
        .take_while(|word| !word.starts_with(['[', '<', '-']))
        .collect();
    let similar = match error.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(similar)) => format!(" (did you mean `{similar}`?)"),
        _ => String::new(),
    };
    let command = command.join(" ");
    // Before any command: a command's flag given where git and make take theirs (`bkg -C DIR
    // ls`; found by a new-user trial).
    let message = match command.as_str() {
        "bkg" if similar.is_empty() => format!(
            "unexpected argument `{arg}`: it is not one of {command}'s own flags; a command's come after the \
             command (`{command} COMMAND {arg} …`), and `{command} --help` lists {command}'s own"
        ),
        _ => format!("unexpected argument `{arg}`{similar}: `{command} --help` lists what it takes"),
    };
    Some(clap::Error::raw(ErrorKind::UnknownArgument, format!("{message}\n")))
}

/// A flag given an empty value (`-o ''`) or none (`-o` last): one line that names the flag, instead
/// of clap's "none was supplied" (not what `''` is) and its second line (found by a new-user trial).
fn empty_value(error: &clap::Error, given: &[std::ffi::OsString]) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else { return None };
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    if error.kind() != ErrorKind::InvalidValue || !value.is_empty() {
        return None;
    }
    // A value that starts with `-` is read as a flag of its own (found by a new-user trial:
    // `--with '-e .'` was said to be missing).
    let flag = arg.split(' ').next().unwrap_or(arg);
    // The flag's use whose next word starts with `-`, wherever it is (it may be given twice).
    let next = given
        .windows(2)
        .filter(|pair| pair[0] == flag)
        .filter_map(|pair| pair[1].to_str())
        .find(|next| next.starts_with('-') && next.len() > 1);
    let message = match next {
        // A requirement is never an option of pip's, which `-e .` and `-r FILE` are: the way
        // round clap would only lead to the agent's refusal of them (found by a new-user trial).
        Some(next) if flag == "--with" => format!(
            "--with takes a requirement (a name and version, or a URL): `{next}` starts with `-`, as an option of \
             pip's does, and pip's options are not taken\n"
        ),
        Some(next) => format!(
            "{flag} needs a value: `{next}` after it starts with `-` and was read as a flag; to give it as the \
             value, write {flag}={}\n",
            shlex::try_quote(next).unwrap_or_else(|_| next.into())
        ),
        None => format!("{arg} needs a value, and it was empty or missing\n"),
    };
    Some(clap::Error::raw(ErrorKind::InvalidValue, message))
}

/// `bkg exe` with neither a script nor `-c`: one line with the three ways to give the code,
/// instead of clap's usage block, which names the script alone (found by a new-user trial). When
/// a flag given no value of its own took the script as its value (`bkg exe --memory x.py`), that
/// is the line (found by a new-user trial).
fn exe_without_a_script(
    error: &clap::Error,
    command: &clap::Command,
    given: &[std::ffi::OsString],
) -> Option<clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    let in_exe = matches!(error.get(ContextKind::Usage), Some(ContextValue::StyledStr(usage))
        if usage.to_string().contains("bkg exe "));
    let script_missing = matches!(error.get(ContextKind::InvalidArg), Some(ContextValue::Strings(args))
        if args.iter().any(|arg| arg == "<SCRIPT>"));
    (error.kind() == ErrorKind::MissingRequiredArgument && in_exe && script_missing).then(|| {
        let message = match script_taken_as_a_value(command, given) {
            Some((flag, script)) => format!(
                "no code to run: {flag} took `{script}` as its value; give {flag} a value of its own before the script\n"
            ),
            None => "no code to run: give a script (`bkg exe hello.py`), or `-c CODE` or `-` (stdin) with `--type \
                     python` or `--type node`\n"
                .to_owned(),
        };
        clap::Error::raw(ErrorKind::MissingRequiredArgument, message)
    })
}

/// A flag given no value that took the next flag as its value (`bkg add web --memory --cpus 1`):
/// clap then refuses what follows, where this names the flag (found by a new-user trial).
fn flag_taken_as_a_value(command: &clap::Command, given: &[std::ffi::OsString]) -> Option<clap::Error> {
    let (current, values) = flags_with_values(command, given)?;
    let (flag, value) = values.into_iter().find(|(_, value)| current.get_arguments().any(|arg| names(arg, value)))?;
    Some(clap::Error::raw(
        ErrorKind::InvalidValue,
        format!("{flag} took `{value}` as its value: give {flag} a value of its own\n"),
    ))
}

/// The flag of `bkg exe` and the word after it that names a script (an existing file, a Python
/// or JavaScript file name, `-`), which clap gave the flag as its value.
fn script_taken_as_a_value(command: &clap::Command, given: &[std::ffi::OsString]) -> Option<(String, String)> {
    let (current, values) = flags_with_values(command, given)?;
    if current.get_name() != "exe" {
        return None;
    }
    values.into_iter().find_map(|(flag, value)| {
        let a_script = value == "-"
            || [".py", ".js", ".mjs", ".cjs"].iter().any(|extension| value.ends_with(extension))
            || std::path::Path::new(value).is_file();
        a_script.then(|| (flag.to_owned(), value.to_owned()))
    })
}

/// The deepest subcommand `given` names, and each of its flags given there that takes a value,
/// with the word clap gives it as that value; up to `--`, and in `bkg exe` up to the script:
/// everything after it is the script's (found by a trial: the script's own `--memory --cpus` were
/// blamed for bkg's refusal of another flag).
fn flags_with_values<'a>(
    command: &'a clap::Command,
    given: &'a [std::ffi::OsString],
) -> Option<(&'a clap::Command, Vec<(&'a str, &'a str)>)> {
    let mut current = command;
    let mut start = 1;
    for (index, word) in given.iter().enumerate().skip(1) {
        if let Some(sub) = word.to_str().and_then(|word| current.find_subcommand(word)) {
            current = sub;
            start = index + 1;
        }
    }
    let known = |word: &str| current.get_arguments().find(|arg| names(arg, word));
    let script_takes_the_rest = current.get_arguments().any(clap::Arg::is_trailing_var_arg_set);
    let mut words = given.get(start..)?.iter().map_while(|word| word.to_str()).take_while(|word| *word != "--");
    let mut values = Vec::new();
    while let Some(word) = words.next() {
        match known(word) {
            Some(flag) if flag.get_action().takes_values() => match words.next() {
                Some(value) => values.push((word, value)),
                None => break,
            },
            Some(_) => {}
            None if script_takes_the_rest && !word.starts_with('-') => break,
            None => {}
        }
    }
    Some((current, values))
}

/// Whether `word` is `arg`'s long or short flag.
fn names(arg: &clap::Arg, word: &str) -> bool {
    arg.get_long().is_some_and(|long| word.strip_prefix("--") == Some(long))
        || arg.get_short().is_some_and(|short| word.strip_prefix('-') == Some(short.encode_utf8(&mut [0; 4])))
}

/// `bkg exe tool.py --help` asks the script for its help, as `python3 tool.py --help` does (found
/// by a new-user trial: bkg's help came instead and the script never ran): `given` with `--`
/// before the help flag when a script comes before it. None when the help is bkg's: no script,
/// or the flag before it.
fn help_after_script(command: &clap::Command, given: &[std::ffi::OsString]) -> Option<Vec<std::ffi::OsString>> {
    let exe = given.iter().position(|word| word == "exe")?;
    let help = exe + given[exe..].iter().position(|word| word == "--help" || word == "-h")?;
    let without: Vec<_> = given.iter().enumerate().filter(|(index, _)| *index != help).map(|(_, word)| word).collect();
    let matches = command.clone().try_get_matches_from(&without).ok()?;
    let (name, exe_matches) = matches.subcommand()?;
    if name != "exe" || exe_matches.contains_id("code") {
        return None;
    }
    let script = exe_matches.get_one::<String>("script")?;
    given[exe + 1..help].iter().any(|word| word == script.as_str()).then(|| {
        let mut rewritten = given[..help].to_vec();
        rewritten.push("--".into());
        rewritten.extend_from_slice(&given[help..]);
        rewritten
    })
}

/// `command` with no argument read from the environment, in every subcommand.
fn without_environment(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| arg.env(None)).mut_subcommands(without_environment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        found.push(path.to_owned());
        for sub in command.get_subcommands() {
            let sub_path =
                if path.is_empty() { sub.get_name().to_owned() } else { format!("{path} {}", sub.get_name()) };
            paths(sub, &sub_path, found);
        }
    }

    #[test]
    fn every_command_has_examples() {
        bkg_command().debug_assert();
        bkgr_command().debug_assert();
        let mut found = Vec::new();
        paths(&Cli::command(), "", &mut found);
        let missing: Vec<&String> = found.iter().filter(|path| !EXAMPLES.iter().any(|(key, _)| key == path)).collect();
        assert!(missing.is_empty(), "commands without examples in args.rs EXAMPLES: {missing:?}");
    }

    #[test]
    fn help_after_a_script_is_the_scripts() {
        let rewritten = |words: &[&str]| {
            let given: Vec<std::ffi::OsString> = words.iter().map(Into::into).collect();
            help_after_script(&bkg_command(), &given)
                .map(|words| words.iter().map(|word| word.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(rewritten(&["bkg", "exe", "tool.py", "--help"]).as_deref(), Some("bkg exe tool.py -- --help"));
        assert_eq!(
            rewritten(&["bkg", "exe", "--memory", "1GiB", "exe", "-h", "x"]).as_deref(),
            Some("bkg exe --memory 1GiB exe -- -h x")
        );
        for bkgs in [&["bkg", "exe", "--help"][..], &["bkg", "exe", "-h", "tool.py"], &["bkg", "ls", "--help"]] {
            assert_eq!(rewritten(bkgs), None, "{bkgs:?}");
        }
        assert_eq!(rewritten(&["bkg", "exe", "-t", "python", "-c", "pass", "--help"]), None);
    }

    #[test]
    fn every_json_flag_reaches_the_printer() {
        let cases: &[&[&str]] = &[
            &["exe", "x.py", "--json"],
            &["agent", "status", "--json"],
            &["validate", "--json"],
            &["ls", "--json"],
            &["status", "web", "--json"],
            &["stop", "web", "--json"],
            &["rm", "web", "--json"],
            &["runs", "ls", "--json"],
            &["runs", "show", "run_1", "--json"],
            &["runs", "cancel", "run_1", "--json"],
            &["audit", "verify", "--json"],
            &["audit", "tail", "--json"],
            &["sync", "status", "--json"],
            &["sync", "retry", "--json"],
            &["db", "migrate", "--json"],
            &["login", "--key-stdin", "--json"],
            &["keys", "create", "--role", "admin", "--json"],
            &["keys", "ls", "--json"],
            &["keys", "rotate", "key_1", "--json"],
            &["keys", "revoke", "key_1", "--json"],
            &["keys", "rm", "key_1", "--json"],
            &["version", "--json"],
            &["watch", "--json"],
            &["doctor", "--json"],
            &["ui", "--json"],
            &["cp", "a.txt", "web:in", "--json"],
            &["exec", "web", "-c", "1", "--json"],
            &["runs", "files", "run_1", "--json"],
            &["envs", "ls", "--json"],
            &["envs", "prune", "--json"],
            &["secrets", "ls", "--json"],
            &["users", "ls", "--json"],
        ];
        for args in cases {
            let parse = |args: &[&str]| {
                let matches = bkg_command().try_get_matches_from(std::iter::once(&"bkg").chain(args)).expect("parses");
                Cli::from_arg_matches(&matches).expect("parses").command.json()
            };
            assert!(parse(args), "{args:?}");
            assert!(!parse(&args[..args.len() - 1]), "{args:?} without --json");
        }
        // Every command with a --json flag is among the cases.
        let mut found = Vec::new();
        paths(&Cli::command(), "", &mut found);
        let command = Cli::command();
        for path in found.iter().filter(|path| !path.is_empty()) {
            let sub = path.split(' ').try_fold(&command, |command, name| command.find_subcommand(name));
            let has_json = sub.is_some_and(|sub| sub.get_arguments().any(|arg| arg.get_id() == "json"));
            let covered = cases.iter().any(|args| args.join(" ").starts_with(path.as_str()));
            assert!(!has_json || covered, "`bkg {path} --json` is not checked");
        }
    }
}

/// `bkg watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print each change as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only this namespace's changes (an admin's filter; a namespace key sees only its own).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only these kinds of change, comma-separated: runs, sandboxes, keys, audit [default: all]
    #[arg(long, value_name = "LIST")]
    pub kinds: Option<String>,
    /// Start after this position (a change's `position`, or what an ended stream said to resume from) [default: 0, from the start]
    #[arg(long, value_name = "CURSOR", value_parser = whole_number::<u64>, allow_negative_numbers = true)]
    pub since: Option<u64>,
    /// Stop after this many changes.
    #[arg(long, value_name = "N", value_parser = whole_number::<u64>, allow_negative_numbers = true)]
    pub count: Option<u64>,
    /// Print the changes made so far and exit 0 instead of waiting for new ones.
    #[arg(long)]
    pub no_follow: bool,
}

/// `bkg ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Open the URL in the desktop's browser (xdg-open) besides printing it.
    #[arg(long)]
    pub open: bool,
    /// Print JSON: the URL and whether a listener was started for it.
    #[arg(long)]
    pub json: bool,
}

/// `bkg doctor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 every check passed or warned; 1 a check failed; 125 bkg doctor itself failed.")]
pub struct DoctorArgs {
    /// Print the report as JSON: {"status", "host_level", "agent_level", "checks": [...]}.
    #[arg(long)]
    pub json: bool,
    /// The agent's state directory [default: the running agent's, else BKG_STATE_DIR or the default]
    #[arg(long, value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// The Python interpreter the agent is (or will be) started with [default: the agent's]
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// The Node.js interpreter the agent is (or will be) started with [default: the agent's]
    #[arg(long, value_name = "PATH")]
    pub node: Option<PathBuf>,
    /// The TLS certificate (PEM, leaf first) the agent serves on --listen: its expiry is checked
    #[arg(long, value_name = "PEM", env = "BKG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
}
