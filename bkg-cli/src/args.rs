//! The command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// The agent's unix socket [default: /run/bkg/agent.sock as root]
    #[arg(long, global = true, env = "BKG_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket
    #[arg(long, global = true, env = "BKG_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Verify an https --remote agent against the CA certificates in this PEM file instead of the system's roots
    #[arg(long, global = true, env = "BKG_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a script once in a temporary sandbox and return its output and exit code.
    #[command(after_help = "Exit codes: the script's own; 124 timeout; 137 killed by the memory or process limit; \
130 cancelled; 125 bkg failed (bad input, agent unreachable); 126 runtime not executable; 127 script not found.")]
    Exe(Box<ExeArgs>),
    /// Start, stop or inspect the local agent.
    Agent(AgentArgs),
    /// Write a cave.yaml and the .bkg/ state folder (asks on a terminal; flags and defaults otherwise).
    Init(crate::init::InitArgs),
    /// Add a sandbox to cave.yaml, keeping its comments and order.
    Add(Box<crate::add::AddArgs>),
    /// Check a cave.yaml against its schema and list every problem.
    Validate(crate::validate::ValidateArgs),
    /// List the project's persistent sandboxes (`--all`: every project's).
    Ls(crate::manage::LsArgs),
    /// Show one persistent sandbox: state, last run, limits, disk.
    Status(crate::manage::NameArgs),
    /// Print the output of a sandbox's latest run (`-f` follows it).
    Logs(crate::manage::LogsArgs),
    /// Stop the run going on in a sandbox.
    Stop(crate::manage::NameArgs),
    /// Remove a sandbox: its workspace, logs and its entry in cave.yaml.
    Rm(crate::manage::RmArgs),
    /// Verify or follow the agent's signed audit log.
    Audit(AuditArgs),
    /// The sync of the agent's events to the shared bkg_db.
    Sync(crate::sync_cmd::SyncArgs),
    /// The shared bkg_db itself.
    Db(crate::sync_cmd::DbArgs),
    /// Keep an API key for a remote agent (--remote): log in with a password, or give a key.
    Login(crate::login_cmd::LoginArgs),
    /// Create, list, rotate and revoke API keys.
    Keys(crate::keys_cmd::KeysArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Check the hash chain and signatures; name the first bad line. Exit 0 intact, 1 tampered.
    Verify(crate::audit_cmd::AuditVerifyArgs),
    /// Print the newest records (`-f` follows).
    Tail(crate::audit_cmd::AuditTailArgs),
}

/// The resource limits of a run or a sandbox, as written on the command line (parsed later, so
/// a bad value gets bkg's own one-line error).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// CPU limit in CPUs, e.g. 0.5 [default: 1]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Memory limit, swap included, e.g. 256MiB [default: 512MiB]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Wall-clock limit of a run, e.g. 10s [default: 60s]
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
    /// Arguments passed to the script (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Run this code instead of a file (needs --type).
    #[arg(short = 'c', long = "code", value_name = "CODE", conflicts_with = "script")]
    pub code: Option<String>,
    /// The language: python or node [default: from the file extension]
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub language: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Copy a host file into the sandbox, to /workspace/NAME or DEST (repeatable).
    #[arg(short = 'f', long = "file", value_name = "SRC[:DEST]")]
    pub files: Vec<String>,
    /// Print one JSON object with the result and accounting instead of the output.
    #[arg(long)]
    pub json: bool,
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
    /// Stop the running agent; warm sandboxes are removed, running ones finish first.
    Stop,
    /// Show whether the agent runs, and its limits and load. Exit 0 running, 1 not running.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
