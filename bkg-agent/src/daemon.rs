//! Command line, start-up and shutdown of the agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bkg_schema::{Limits, parse_cpus, parse_duration_ms, parse_size};
use clap::Parser;
use tokio::sync::Notify;

use crate::engine::{Engine, EngineConfig};
use crate::server::{AppState, PeerCheckedListener, router};
use crate::store::Store;

/// The bkg agent: runs sandboxes for `bkg` and `bkgr` over a unix socket. Needs root.
#[derive(Debug, Parser)]
#[command(name = "bkg-agent", version)]
pub struct AgentArgs {
    /// Unix socket to serve the API on (mode 0600).
    #[arg(long, env = "BKG_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Directory for the run store and sandbox disk images.
    #[arg(long, env = "BKG_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stay in the foreground and log to stderr (without it the agent detaches and logs to
    /// STATE_DIR/agent.log).
    #[arg(long)]
    pub foreground: bool,
    /// Prepared sandboxes kept warm for default-sized runs (0 turns the pool off).
    #[arg(long, default_value_t = 2, env = "BKG_WARM_POOL")]
    pub warm_pool: usize,
    /// Highest CPU count a run may ask for.
    #[arg(long, default_value = "available CPUs")]
    pub max_cpus: String,
    /// Highest memory limit a run may ask for.
    #[arg(long, default_value = "8GiB")]
    pub max_memory: String,
    /// Highest timeout a run may ask for.
    #[arg(long, default_value = "1h")]
    pub max_timeout: String,
    /// Highest disk limit a run may ask for.
    #[arg(long, default_value = "10GiB")]
    pub max_disk: String,
    /// Python interpreter used for `python` runs.
    #[arg(long, default_value = "/usr/bin/python3", env = "BKG_PYTHON")]
    pub python: PathBuf,
    /// Node.js interpreter used for `node` runs.
    #[arg(long, default_value = "/usr/bin/node", env = "BKG_NODE")]
    pub node: PathBuf,
    /// Directory created beneath the agent's own cgroup for its sandboxes' cgroups.
    #[arg(long, default_value = "bkg", env = "BKG_CGROUP_DIR")]
    pub cgroup_dir: String,
    /// First host uid given to sandboxes; each live sandbox takes two above it.
    #[arg(long, default_value_t = 0x7000_0000, env = "BKG_UID_BASE")]
    pub uid_base: u32,
}

pub fn main() -> ExitCode {
    let args = AgentArgs::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bkg-agent: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn max_limits(args: &AgentArgs) -> anyhow::Result<Limits> {
    let cpus = if args.max_cpus == "available CPUs" {
        std::thread::available_parallelism().map(|n| n.get() as u64 * 1000).unwrap_or(1000)
    } else {
        parse_cpus(&args.max_cpus).context("--max-cpus")?
    };
    Ok(Limits {
        cpu_millis: cpus,
        memory_bytes: parse_size(&args.max_memory).context("--max-memory")?,
        timeout_ms: parse_duration_ms(&args.max_timeout).context("--max-timeout")?,
        disk_bytes: parse_size(&args.max_disk).context("--max-disk")?,
        pids: 4096,
    })
}

fn start(args: AgentArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the agent needs root to create namespaces, cgroups and loop devices; start it with sudo");
    }
    let socket = args.socket.clone().unwrap_or_else(bkg_schema::paths::default_socket);
    let state_dir = args.state_dir.clone().unwrap_or_else(bkg_schema::paths::default_state_dir);
    let max = max_limits(&args)?;
    let mut defaults = Limits::DEFAULT;
    defaults.cpu_millis = defaults.cpu_millis.min(max.cpu_millis);
    if let Some((name, default, allowed)) = defaults.first_above(&max) {
        bail!("the default {name} limit {default} is above the configured maximum {allowed}");
    }
    // Disk images, logs and the store hold callers' code and output: nothing the agent makes
    // is for other local users.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&state_dir).with_context(|| format!("create state directory {}", state_dir.display()))?;
    std::fs::set_permissions(&state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("make {} private", state_dir.display()))?;

    if !args.foreground {
        return detach(&state_dir, &socket);
    }

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && nix::unistd::isatty(std::io::stderr()).unwrap_or(false))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BKG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let config = EngineConfig {
        state_dir: state_dir.clone(),
        default_limits: defaults,
        max_limits: max,
        python: args.python,
        node: args.node,
        warm_pool: args.warm_pool,
        uid_base: args.uid_base,
        cgroup_dir: args.cgroup_dir,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    runtime.block_on(serve(config, socket))
}

/// Starts `bkg-agent --foreground` in its own session, logging to STATE_DIR/agent.log, and
/// returns once its socket answers.
fn detach(state_dir: &Path, socket: &Path) -> anyhow::Result<()> {
    let log_path = state_dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut command = std::process::Command::new("/proc/self/exe");
    command.args(std::env::args_os().skip(1)).arg("--foreground");
    command.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("start the agent in the background")?;
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            println!("{}", child.id());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited ({status}) during start-up; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("the agent did not answer on {} within 5 s; see {}", socket.display(), log_path.display())
}

async fn serve(config: EngineConfig, socket: PathBuf) -> anyhow::Result<()> {
    let state_dir = config.state_dir.clone();
    // Refuse early if another agent serves this socket: its sandboxes are not ours to clean.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!("another agent is already listening on {}", socket.display());
    }
    let store = Store::open(&state_dir.join("state.db")).context("open the run store")?;
    let engine = Engine::new(config).context("start the sandbox engine")?;
    // Bound last: a socket that accepts means an agent that has cleaned up and can run.
    let listener = bind_socket(&socket)?;

    let (cleanup_tx, mut cleanup_rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    engine.on_cleanup(cleanup_tx);
    let cleanup_store = store.clone();
    tokio::spawn(async move {
        while let Some((run_id, confirmed)) = cleanup_rx.recv().await {
            if let Err(error) = cleanup_store.run_cleaned_up(&run_id, confirmed).await {
                tracing::error!(%error, run = %run_id, "could not record the cleanup");
            }
        }
    });
    engine.refill();

    let shutdown = Arc::new(Notify::new());
    let state =
        AppState { engine: Arc::clone(&engine), store, socket: socket.clone(), shutdown: Arc::clone(&shutdown) };
    tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), cgroups = %engine.cgroup_version(), "agent ready");

    let signals = async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            () = shutdown.notified() => {}
        }
        Ok::<(), std::io::Error>(())
    };
    axum::serve(PeerCheckedListener::new(listener), router(state))
        .with_graceful_shutdown(async move {
            if let Err(error) = signals.await {
                tracing::error!(%error, "signal handling failed");
            }
        })
        .await
        .context("serve the API")?;

    tracing::info!("shutting down");
    engine.drain().await;
    for _ in 0..100 {
        if engine.active_runs() == 0 && engine.cleanups_pending() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.remove_cgroup_dirs();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Binds the socket with mode 0600, replacing a stale socket file but never a live agent's.
fn bind_socket(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("another agent is already listening on {}", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("remove stale socket {}", socket.display()))?;
    }
    // The socket must never exist with a wider mode, not even for a moment.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(socket);
    nix::sys::stat::umask(previous);
    bound.with_context(|| format!("bind {}", socket.display()))
}
