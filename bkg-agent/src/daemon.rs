//! Command line, start-up and shutdown of the agent.

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bkg_schema::{Language, Limits, parse_cpus, parse_duration_ms, parse_size};
use clap::Parser;
use tokio::sync::Notify;

use crate::auth::notice::{NoticeKey, Notifier};
use crate::auth::{AuthPolicy, RoleTable};
use bkg_schema::host::SecurityLevel;

use crate::auth::local::{DEFAULT_SOCKET_GROUP, LocalAccess, NamedGroup};
use crate::engine::capacity::{CapacityConfig, DiskBudget};
use crate::engine::host_check;
use crate::engine::{CleanedUp, Engine, EngineConfig};
use crate::local_socket::{SocketFile, SocketWatch};
use crate::metrics::Metrics;
use crate::server::{AppState, BodyBudget, PeerCheckedListener, UnixPeer, listen, router};
use crate::service::{AuthState, HealthProbe, Service, ServiceParts};
use crate::store::Store;
use crate::telemetry::Tracer;

/// The bkg agent: runs sandboxes for `bkg` and `bkgr` over a unix socket. Needs root.
#[derive(Debug, Parser)]
#[command(
    name = "bkg-agent",
    version,
    after_help = "Examples:\n  sudo bkg-agent --foreground\n  sudo bkg-agent --listen 127.0.0.1:7070 --max-memory 16GiB\n  \
                  sudo bkg-agent --state-dir /srv/bkg --db-url postgres://bkg@db/bkg_db"
)]
pub struct AgentArgs {
    /// Unix socket to serve the API on (mode 0660, group --socket-group; 0600 without one).
    #[arg(long, env = "BKG_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The socket's group: its members use bkg as themselves, each in a namespace of their own
    /// (--user-namespace). Default: `bkg` when that group exists, else none (root only).
    #[arg(long, value_name = "GROUP", env = "BKG_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Members of this group are admins on the socket, like root.
    #[arg(long, value_name = "GROUP", env = "BKG_ADMIN_GROUP")]
    pub admin_group: Option<String>,
    /// The namespace of a member of the socket's group; `{name}` is their login name (made a DNS
    /// label and given `-u<uid>` when it is not one as it stands).
    #[arg(long, value_name = "TEMPLATE", default_value = crate::auth::local::DEFAULT_NAMESPACE_TEMPLATE)]
    pub user_namespace: String,
    /// What one local user may ask for (repeatable): `cpus=`, `memory=`, `timeout=`, `disk=` cap
    /// each run; `sandboxes=N` the persistent sandboxes they keep; `disk-budget=SIZE` those
    /// sandboxes' disk limits summed.
    #[arg(long = "user-limit", value_name = "KEY=VALUE")]
    pub user_limits: Vec<String>,
    /// Directory for the run store and sandbox disk images.
    #[arg(long, env = "BKG_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stay in the foreground and log to stderr (without it the agent detaches and logs to
    /// STATE_DIR/agent.log).
    #[arg(long)]
    pub foreground: bool,
    /// Prepared sandboxes kept warm for default-sized runs when idle; the pool grows while runs
    /// find it empty and shrinks back when they stop (0 turns the pool off: each run's sandbox is
    /// prepared when it starts, its Python still forked from the zygote unless --zygote false).
    #[arg(long, default_value_t = 2, env = "BKG_WARM_POOL")]
    pub warm_pool: usize,
    /// Memory the warm pool's prepared sandboxes together may take as it grows with demand.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", env = "BKG_WARM_POOL_MEMORY")]
    pub warm_pool_memory: String,
    /// Fork sandboxes' Python interpreters from one initialised once (the zygote; what its forks
    /// share: docs/security.md), instead of starting one in each sandbox. Without a warm pool it
    /// starts at the first Python run.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, env = "BKG_ZYGOTE")]
    pub zygote: bool,
    /// Memory the zygote may take, as its own cgroup's limit: a generation that reaches it ends,
    /// and the next one starts.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", env = "BKG_ZYGOTE_MEMORY")]
    pub zygote_memory: String,
    /// Highest CPU count a run may ask for (below 1, also the default).
    #[arg(long, default_value = "available CPUs")]
    pub max_cpus: String,
    /// Highest memory limit a run may ask for (below 512MiB, also the default).
    #[arg(long, default_value = "8GiB")]
    pub max_memory: String,
    /// Highest timeout a run may ask for (below 60s, also the default); `none` lets persistent sandboxes run without one
    /// (`timeout: none` in cave.yaml, for services).
    #[arg(long, default_value = "1h")]
    pub max_timeout: String,
    /// What runs may reach through their proxy, at most (repeatable): HOST[:PORT], *.DOMAIN,
    /// `*` (every public host by name), an address (opens that internal address),
    /// host.bkg.internal[:PORT] (the host's loopback), or `none`. A run names its own hosts
    /// (`bkg exe --net`, cave.yaml); each must be within these.
    #[arg(long = "egress-allow", value_name = "RULE", default_value = "*", value_delimiter = ',')]
    pub egress_allow: Vec<String>,
    /// Highest disk limit a run may ask for (below 500MiB, also the default).
    #[arg(long, default_value = "10GiB")]
    pub max_disk: String,
    /// Python interpreter used for `python` runs.
    #[arg(long, default_value = "/usr/bin/python3", env = "BKG_PYTHON")]
    pub python: PathBuf,
    /// Node.js interpreter used for `node` runs.
    #[arg(long, default_value = "/usr/bin/node", env = "BKG_NODE")]
    pub node: PathBuf,
    /// The Python package index runs' packages are installed from (PEP 503 simple API): the
    /// only network an install sandbox has. A host name, or a loopback address for a mirror on
    /// this machine.
    #[arg(long, value_name = "URL", default_value = "https://pypi.org/simple", env = "BKG_PACKAGE_INDEX")]
    pub package_index: String,
    /// npm, which installs Node.js runs' packages (`npm ci`) in an install sandbox, run by --node.
    #[arg(long, default_value = "/usr/bin/npm", env = "BKG_NPM")]
    pub npm: PathBuf,
    /// The npm registry runs' Node.js packages are installed from: the only network a Node
    /// install sandbox has. A host name, or a loopback address for a mirror on this machine.
    #[arg(long, value_name = "URL", default_value = "https://registry.npmjs.org/", env = "BKG_NPM_REGISTRY")]
    pub npm_registry: String,
    /// Directory created beneath the agent's own cgroup for its sandboxes' cgroups.
    #[arg(long, default_value = "bkg", env = "BKG_CGROUP_DIR", value_parser = cgroup_dir)]
    pub cgroup_dir: String,
    /// First of the 65,536 host uids given to sandboxes (four per live sandbox), in decimal or
    /// hex (0x70000000); from 65536 to 4294901759, and overlapping no other agent's range.
    #[arg(long, default_value_t = 0x7000_0000, env = "BKG_UID_BASE", value_parser = parse_uid_base)]
    pub uid_base: u32,
    /// Also serve the API on TCP at ADDR:PORT; every request there needs an API key. An address
    /// other than loopback needs --tls-cert (or --plain-http-behind-proxy).
    #[arg(long, value_name = "ADDR:PORT", env = "BKG_LISTEN", value_parser = listen_address)]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve TLS on --listen with this certificate chain (PEM, leaf first); re-read on SIGHUP.
    #[arg(long, value_name = "PEM", env = "BKG_TLS_CERT", requires_all = ["listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); re-read with it on SIGHUP.
    #[arg(long, value_name = "PEM", env = "BKG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a --listen address other than loopback: only behind a proxy that
    /// terminates TLS, since API keys would otherwise cross the network in clear.
    #[arg(long, requires = "listen", conflicts_with = "tls_cert")]
    pub plain_http_behind_proxy: bool,
    /// Time a connection has to send a whole request head, also between requests on a kept-alive
    /// connection (and for the TLS handshake): slow or idle connections are closed after it.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub header_timeout: String,
    /// Time a request has to send its whole body (408 after it).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub body_timeout: String,
    /// Request bodies held in memory at once, all requests together (503 with Retry-After over it).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub body_budget: String,
    /// Open connections on the TCP listener; more are closed on arrival.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections on the unix socket, counted apart from TCP so the network can never
    /// take the local clients' room.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unix_connections: u32,
    /// The shared bkg_db (PostgreSQL URL, `sslmode=` for TLS): every event is synced there.
    #[arg(long, value_name = "URL", env = "BKG_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// Apply bkg_db's migrations with --db-url and exit, serving nothing: how the schema's owner
    /// upgrades a bkg_db whose agents log in as members of bkg_agent, which may not (needs no
    /// root).
    #[arg(long)]
    pub migrate_db: bool,
    /// Make (or give a new password to) the bkg_db login role of namespace NAMESPACE,
    /// `bkg_ns_NAMESPACE`, with the password read from stdin, using --db-url (the schema's
    /// owner's), and exit, serving nothing: the role sees only its namespace's rows.
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "migrate_db")]
    pub namespace_role: Option<String>,
    /// How long finished runs (and their logs) are kept, here and in bkg_db; the audit log is kept
    /// for ever.
    #[arg(long, value_name = "DURATION", default_value = "30d", env = "BKG_RETENTION")]
    pub retention: String,
    /// Another retention for one namespace (repeatable), e.g. `ci=7d`.
    #[arg(long = "retention-for", value_name = "NS=DURATION")]
    pub retention_for: Vec<String>,
    /// Where runs' kept files go: `s3://BUCKET[/PREFIX]` (an S3-compatible service, configured
    /// by the usual AWS_* variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) or a directory. Default: <state-dir>/objects.
    #[arg(long, value_name = "URL", env = "BKG_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// How much each namespace's kept files may take (distinct contents counted once).
    #[arg(long, value_name = "SIZE", default_value = crate::artefacts::DEFAULT_QUOTA)]
    pub artefact_quota: String,
    /// Another artefact quota for one namespace (repeatable), e.g. `ci=1GiB`.
    #[arg(long = "artefact-quota-for", value_name = "NS=SIZE")]
    pub artefact_quota_for: Vec<String>,
    /// Write the TCP address actually bound (useful with port 0) to this file.
    #[arg(long, value_name = "PATH", requires = "listen")]
    pub listen_address_file: Option<PathBuf>,
    /// POST a signed notice to this URL whenever a key rotates (repeatable; http:// or https://).
    #[arg(long = "webhook", value_name = "URL", requires = "webhook_secret_file")]
    pub webhooks: Vec<String>,
    /// The shared secret (at least 32 bytes) that signs rotation notices sent to webhooks and
    /// checks those peers send to /api/v1/auth/keys/rotated.
    #[arg(long, value_name = "PATH", env = "BKG_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Lifetime of admin keys.
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    pub admin_key_ttl: String,
    /// Lifetime of namespace keys.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub namespace_key_ttl: String,
    /// Lifetime of session keys (login, refresh).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub session_key_ttl: String,
    /// Lifetime of model-access keys.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub model_access_key_ttl: String,
    /// Requests per minute of each admin key on TCP.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_rate_limit: u32,
    /// Requests per minute of each namespace key on TCP.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub namespace_rate_limit: u32,
    /// Requests per minute of each session key on TCP.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_rate_limit: u32,
    /// Requests per minute of each model-access key on TCP.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub model_access_rate_limit: u32,
    /// Runs going on at once; more wait in the queue, a freed place going to the namespace
    /// with the fewest runs going. Sessions, services and terminals together take at most all
    /// but a quarter of them (one kept at least); one more is refused.
    #[arg(long, value_name = "N", default_value = "4 per CPU", env = "BKG_MAX_RUNNING_RUNS")]
    pub max_running_runs: String,
    /// Runs that may wait for a place; more are refused with 503 and Retry-After.
    #[arg(long, value_name = "N", default_value_t = 256, env = "BKG_MAX_QUEUED_RUNS")]
    pub max_queued_runs: usize,
    /// Disk all live sandboxes together (warm ones too) may be given, their disk limits summed;
    /// a run that would go over it is refused with 503 and Retry-After. The default is read at
    /// each sandbox: 80% of the state directory's free space and of what this agent's
    /// sandboxes hold, so other agents and writers on that filesystem shrink it.
    #[arg(long, value_name = "SIZE", default_value = "80% of the free space", env = "BKG_DISK_BUDGET")]
    pub disk_budget: String,
    /// How recent a successful run must be for /healthz to answer ok without running a tiny
    /// sandbox of its own to find out.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub health_interval: String,
    /// Run at this lower security level (`standard` or `degraded`) when the host gives no better;
    /// without it the agent starts only where the host gives `strict` (docs/compatibility.md).
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, env = "BKG_ALLOW_DEGRADED")]
    pub allow_degraded: Option<SecurityLevel>,
    /// Check the host (namespaces, cgroups, Landlock, seccomp, loop devices, runtimes, the state
    /// directory's filesystem), print the report as JSON and exit; needs no root (`bkg doctor`
    /// runs it).
    #[arg(long, hide = true)]
    pub check_host: bool,
    /// Print the API's OpenAPI document (YAML) and exit.
    #[arg(long, hide = true)]
    pub print_openapi: bool,
    /// Internal: the descriptor on which an agent started without --foreground tells the
    /// process that started it that it serves its socket (one byte), or, closed unwritten, that
    /// it failed to start.
    #[arg(long, value_name = "FD", hide = true)]
    pub ready_fd: Option<i32>,
}

fn parse_level(name: &str) -> Result<SecurityLevel, String> {
    SecurityLevel::parse(name).ok_or_else(|| format!("{name:?} is not a level: strict, standard or degraded"))
}

/// `--cgroup-dir`: one plain path component, checked before anything is written.
fn cgroup_dir(text: &str) -> Result<String, String> {
    crate::engine::cgroup::validate_component(text).map(|()| text.to_owned()).map_err(|error| error.to_string())
}

/// An error and its causes on one line, `context: cause: cause`, each said once: many of the
/// engine's errors already show their source in their own text (thiserror's `{0}` with
/// `#[from]`), which `{:#}` would print twice.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Prints what `--check-host` found; the exit code is 1 only when the report cannot be written.
fn print_host_report(args: &AgentArgs) -> ExitCode {
    let state_dir = args.state_dir.clone().unwrap_or_else(bkg_schema::paths::default_state_dir);
    let report = host_check::report(&host_check::probe(&args.python, &args.node, &state_dir));
    let written = serde_json::to_string_pretty(&report).map_err(anyhow::Error::from).and_then(|json| {
        std::io::Write::write_all(&mut std::io::stdout().lock(), format!("{json}\n").as_bytes())
            .context("write the report")
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bkg-agent: {error}");
            ExitCode::from(1)
        }
    }
}

/// `--migrate-db`: one connection, the migrations, a line saying which database is where now. A
/// URL that can never connect is a usage error (exit 2), as it is for the agent itself; what
/// the server says is exit 1.
fn migrate_db(url: &str) -> ExitCode {
    if let Err(error) = crate::sync::check_url(url) {
        eprintln!("bkg-agent: --db-url: {error}");
        return ExitCode::from(USAGE_EXIT);
    }
    let target = crate::sync::describe_target(url);
    let migrated = on_bkg_db(url, async |client| crate::sync::migrate(client).await);
    match migrated {
        Ok(migrated) if migrated.version > migrated.latest => {
            println!(
                "bkg_db ({target}) is at schema version {}, newer than this agent's {}: nothing to apply",
                migrated.version, migrated.latest
            );
            ExitCode::SUCCESS
        }
        Ok(migrated) => {
            println!(
                "bkg_db ({target}) is at schema version {} ({} applied now)",
                migrated.version,
                migrated.applied.len()
            );
            ExitCode::SUCCESS
        }
        // The sync's errors say the server's message and the fix themselves, in one line.
        Err(error) => {
            eprintln!("bkg-agent: {error}");
            ExitCode::from(1)
        }
    }
}

/// One connection to bkg_db at `url` and `task` on it, on a runtime of its own (the flags that
/// do one thing with bkg_db and exit); an error as the sync says it, its fix included.
fn on_bkg_db<T>(
    url: &str,
    task: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, crate::sync::SyncError>,
) -> Result<T, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let mut client = crate::sync::connect(url).await.map_err(|error| error.to_string())?;
        task(&mut client).await.map_err(|error| error.to_string())
    })
}

/// `--namespace-role NAMESPACE`: the password from stdin (its first line), one connection, the
/// role made or its password changed (sent as a SCRAM verifier only), a line saying so. Exit 2
/// for what could never work (the URL, the name, no password), 1 for what the server says.
fn namespace_role(url: &str, namespace: &str) -> ExitCode {
    if !bkg_schema::sandbox::is_namespace_name(namespace) {
        eprintln!("bkg-agent: --namespace-role: `{namespace}` must be {}", bkg_schema::sandbox::NAMESPACE_RULE);
        return ExitCode::from(USAGE_EXIT);
    }
    if let Err(error) = crate::sync::check_url(url) {
        eprintln!("bkg-agent: --db-url: {error}");
        return ExitCode::from(USAGE_EXIT);
    }
    let mut password = String::new();
    if let Err(error) = std::io::stdin().read_line(&mut password) {
        eprintln!("bkg-agent: --namespace-role: cannot read the password from stdin: {error}");
        return ExitCode::from(USAGE_EXIT);
    }
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!(
            "bkg-agent: --namespace-role: give the role's password on stdin (`bkg-agent --namespace-role {namespace} < FILE`)"
        );
        return ExitCode::from(USAGE_EXIT);
    }
    // A login of the shared database: held to the rule of `bkg users add`'s passwords (found by
    // a new-user trial: one character was taken).
    let least = crate::auth::password::MIN_PASSWORD_CHARS;
    if password.chars().count() < least {
        eprintln!("bkg-agent: --namespace-role: the role's password must be at least {least} characters");
        return ExitCode::from(USAGE_EXIT);
    }
    let target = crate::sync::describe_target(url);
    let made = on_bkg_db(url, async |client| crate::sync::ensure_namespace_role(client, namespace, password).await);
    match made {
        Ok(role) => {
            println!("bkg_db ({target}): role {role} logs in with that password and sees namespace {namespace} only");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bkg-agent: {error}");
            ExitCode::from(1)
        }
    }
}

/// Refusing to start beside an agent that serves `socket` already, with the two ways on.
/// The lowest `--uid-base`: below it sandboxes would get the ids of the host's own users.
const UID_BASE_MIN: u32 = 65_536;
/// The highest `--uid-base`: its range must end below the invalid uid 2^32 - 1.
const UID_BASE_MAX: u32 = u32::MAX - crate::engine::lock::UID_RANGE;

/// The exit code of a flag combination the agent refuses (as clap's own usage errors).
const USAGE_EXIT: u8 = 2;

pub fn main() -> ExitCode {
    // Descriptors whoever started the agent left open stay the agent's: no sandbox init and no
    // zygote, a root process on the host too, inherits them (found by a new-user trial). The
    // agent itself still uses the ones it is given (`--ready-fd`, socket activation's).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    // reqwest is built without a provider of its own (no aws-lc): every TLS client of the agent
    // gets ring, the provider bkg_db's TLS builds, even one made without server/tls.rs's builder.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = match AgentArgs::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => error.exit(),
        // One line, as every other refusal of the agent's (clap's own is three).
        Err(error) => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            // The values a flag takes, which clap puts on a line of their own.
            let values = rendered.lines().map(str::trim).find(|line| line.starts_with("[possible values:"));
            let values = values.map(|values| format!(" {values}")).unwrap_or_default();
            // The flags a message ending in `:` names, indented on the lines after it (found by
            // a new-user trial: "the following required arguments were not provided:" alone).
            let named: Vec<&str> = rendered
                .lines()
                .skip(1)
                .take_while(|line| line.starts_with("  "))
                .map(str::trim)
                .filter(|_| first.ends_with(':'))
                .collect();
            let named = if named.is_empty() { String::new() } else { format!(" {}", named.join(", ")) };
            eprintln!(
                "bkg-agent: {}{named}{values} (`bkg-agent --help` lists the flags)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(USAGE_EXIT);
        }
    };
    if let Some(address) = args.listen
        && !address.ip().is_loopback()
        && args.tls_cert.is_none()
        && !args.plain_http_behind_proxy
    {
        eprintln!(
            "bkg-agent: --listen {address} is not a loopback address: serve TLS with --tls-cert and --tls-key, \
             or pass --plain-http-behind-proxy if a proxy terminates TLS in front of it"
        );
        return ExitCode::from(USAGE_EXIT);
    }
    if args.check_host {
        return print_host_report(&args);
    }
    if let Some(namespace) = &args.namespace_role {
        return match args.db_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => namespace_role(url, namespace),
            None => {
                eprintln!(
                    "bkg-agent: --namespace-role needs the bkg_db URL of the schema's owner in BKG_DB_URL (or --db-url)"
                );
                ExitCode::from(USAGE_EXIT)
            }
        };
    }
    if args.migrate_db {
        return match args.db_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => migrate_db(url),
            None => {
                eprintln!(
                    "bkg-agent: --migrate-db needs the bkg_db URL of the schema's owner in BKG_DB_URL (or --db-url)"
                );
                ExitCode::from(USAGE_EXIT)
            }
        };
    }
    if args.print_openapi {
        let written = crate::api_doc::yaml().map_err(anyhow::Error::from).and_then(|yaml| {
            std::io::Write::write_all(&mut std::io::stdout().lock(), yaml.as_bytes()).context("write the document")
        });
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bkg-agent: {}", one_line(&error));
                ExitCode::from(1)
            }
        };
    }
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not `eprintln!`, which panics when stderr's reader is gone (`LogWriter`).
            let _ =
                std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("bkg-agent: {}\n", one_line(&error)));
            if error.downcast_ref::<FlagValue>().is_some() { ExitCode::from(USAGE_EXIT) } else { ExitCode::from(1) }
        }
    }
}

/// The flag whose value could not be parsed, as the context of that error (or the whole
/// error, when it names the flag itself): a usage error (exit 2, docs/operations.md), as clap's
/// own are, where other start-up failures exit 1.
#[derive(Debug)]
struct FlagValue(String);

impl std::error::Error for FlagValue {}

impl std::fmt::Display for FlagValue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

fn max_limits(args: &AgentArgs) -> anyhow::Result<Limits> {
    let [cpus, memory, timeout, disk, _pids] = Limits::LEAST.named();
    // A maximum below the least a run may have would refuse every run; zero is one of those.
    let maximum = |text: &str,
                   (name, least, shown): bkg_schema::NamedLimit,
                   parse: fn(&str) -> Result<u64, bkg_schema::UnitError>| {
        let too_small =
            || FlagValue(format!("--max-{name}: `{text}` is too small: a run needs at least {}", shown(least)));
        match parse(text) {
            Ok(value) if value < least => Err(anyhow::Error::new(too_small())),
            Ok(value) => Ok(value),
            Err(bkg_schema::UnitError::Zero { .. }) => Err(anyhow::Error::new(too_small())),
            Err(error) => Err(anyhow::Error::new(error).context(FlagValue(format!("--max-{name}")))),
        }
    };
    let cpu_millis = if args.max_cpus == "available CPUs" {
        std::thread::available_parallelism().map(|n| n.get() as u64 * 1000).unwrap_or(1000)
    } else {
        maximum(&args.max_cpus, cpus, parse_cpus)?
    };
    Ok(Limits {
        cpu_millis,
        memory_bytes: maximum(&args.max_memory, memory, parse_size)?,
        timeout_ms: maximum(&args.max_timeout, timeout, parse_duration_ms)?,
        disk_bytes: maximum(&args.max_disk, disk, parse_size)?,
        pids: 4096,
    })
}

/// `--listen`'s value: an IP address and a port, or `localhost:PORT` for 127.0.0.1 (the one name
/// taken: any other would depend on what it resolves to at each start).
fn listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
        return Ok(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| format!("`{text}` is not ADDR:PORT: give an IP address and a port, like 127.0.0.1:7878"))
}

/// What the API needs from the flags and the environment, checked before anything starts.
struct ApiOptions {
    listen: Option<std::net::SocketAddr>,
    tls: Option<Arc<crate::server::tls::ReloadableCert>>,
    connections: ConnectionOptions,
    listen_address_file: Option<PathBuf>,
    policy: AuthPolicy,
    webhooks: Vec<String>,
    webhook_key: Option<NoticeKey>,
    sampling_rate: f64,
    db_url: Option<String>,
    retention: crate::retention::RetentionPolicy,
    package_index: crate::engine::install::PackageIndex,
    npm_registry: crate::engine::install::PackageIndex,
    local: LocalAccess,
    object_store: Option<String>,
    artefact_quota: crate::artefacts::QuotaPolicy,
}

/// Timeouts and caps of the listeners (server/listen.rs) and the body budget (server.rs).
struct ConnectionOptions {
    header_timeout: Duration,
    body_timeout: Duration,
    body_budget: usize,
    max_connections: usize,
    max_unix_connections: usize,
}

fn api_options(args: &AgentArgs) -> anyhow::Result<ApiOptions> {
    let sampling_rate =
        crate::telemetry::sampling_rate_from(std::env::var(crate::telemetry::SAMPLING_RATE_ENV).ok().as_deref())?;
    // A zero lifetime is refused by the parser itself.
    let ttl = |flag: &str, text: &str| -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(parse_duration_ms(text).with_context(|| FlagValue(format!("--{flag}")))?))
    };
    let policy = AuthPolicy {
        ttl: RoleTable {
            admin: ttl("admin-key-ttl", &args.admin_key_ttl)?,
            namespace: ttl("namespace-key-ttl", &args.namespace_key_ttl)?,
            session: ttl("session-key-ttl", &args.session_key_ttl)?,
            model_access: ttl("model-access-key-ttl", &args.model_access_key_ttl)?,
        },
        rate_per_minute: RoleTable {
            admin: args.admin_rate_limit,
            namespace: args.namespace_rate_limit,
            session: args.session_rate_limit,
            model_access: args.model_access_rate_limit,
        },
        user: crate::auth::local::UserPolicy::parse(&args.user_limits).map_err(|error| FlagValue(error.to_string()))?,
    };
    for url in &args.webhooks {
        let parsed = reqwest::Url::parse(url).with_context(|| FlagValue(format!("--webhook {url}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--webhook {url}: only http:// and https:// URLs are supported");
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::tls::ReloadableCert::load(cert, key)?),
        _ => None,
    };
    let connections = ConnectionOptions {
        header_timeout: ttl("header-timeout", &args.header_timeout)?,
        body_timeout: ttl("body-timeout", &args.body_timeout)?,
        body_budget: usize::try_from(parse_size(&args.body_budget).context(FlagValue("--body-budget".into()))?)
            .context(FlagValue("--body-budget".into()))?,
        max_connections: args.max_connections as usize,
        max_unix_connections: args.max_unix_connections as usize,
    };
    let webhook_key = match &args.webhook_secret_file {
        None => None,
        Some(path) => {
            let secret =
                std::fs::read(path).with_context(|| format!("read --webhook-secret-file {}", path.display()))?;
            let secret = secret.trim_ascii_end();
            Some(NoticeKey::new(secret).with_context(|| format!("--webhook-secret-file {}", path.display()))?)
        }
    };
    let package_index = crate::engine::install::PackageIndex::parse(&args.package_index)
        .map_err(|reason| anyhow::anyhow!("--package-index: {reason}"))?;
    let npm_registry = crate::engine::install::PackageIndex::parse(&args.npm_registry)
        .map_err(|reason| anyhow::anyhow!("--npm-registry: {reason}"))?;
    Ok(ApiOptions {
        package_index,
        npm_registry,
        listen: args.listen,
        tls,
        connections,
        listen_address_file: args.listen_address_file.clone(),
        policy,
        webhooks: args.webhooks.clone(),
        webhook_key,
        sampling_rate,
        db_url: match args.db_url.clone().filter(|url| !url.is_empty()) {
            // The URL is not repeated: it holds the password.
            Some(url) => Some(
                crate::sync::check_url(&url).map(|()| url).map_err(|error| FlagValue(format!("--db-url: {error}")))?,
            ),
            None => None,
        },
        retention: crate::retention::RetentionPolicy::parse(&args.retention, &args.retention_for)
            .map_err(|error| FlagValue(error.to_string()))?,
        local: local_access(args)?,
        object_store: args.object_store.clone().filter(|url| !url.is_empty()),
        // A flag's value it cannot take: a usage error, exit 2, as for every other flag.
        artefact_quota: crate::artefacts::QuotaPolicy::parse(&args.artefact_quota, &args.artefact_quota_for)
            .map_err(|error| FlagValue(error.to_string()))?,
    })
}

fn start(args: AgentArgs) -> anyhow::Result<()> {
    // Taken first, so that every way out below closes it: the parent waiting on it learns then.
    let ready = args.ready_fd.map(take_ready_fd).transpose()?;
    // Configuration errors come first, before root or the state directory are looked at.
    let api = api_options(&args)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the agent needs root to create namespaces, cgroups and loop devices; start it with sudo");
    }
    // A socket systemd made (bkg-agent.socket) is served as it is; its path replaces --socket.
    let activated = crate::activation::take_passed_socket().context("systemd socket activation")?;
    let socket = match &activated {
        Some(passed) => passed.path.clone(),
        None => args.socket.clone().unwrap_or_else(bkg_schema::paths::default_socket),
    };
    // Sandboxes are prepared from other working directories (their pid 1's): a relative state
    // directory would name nothing there.
    let state_dir = args.state_dir.clone().unwrap_or_else(bkg_schema::paths::default_state_dir);
    let state_dir = std::path::absolute(&state_dir)
        .with_context(|| format!("make the state directory {} absolute", state_dir.display()))?;
    // Disk images, logs and the store hold callers' code and output: nothing the agent makes
    // is for other local users.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // A start refused before it wrote anything there (another agent's cgroup directory or uids,
    // a flag's value) leaves no empty state directory of its own behind (found by a new-user
    // trial); one that holds anything, the log of a refused background start say, stays.
    let made_state_dir = !state_dir.exists();
    // Flags' values are checked before anything is made or changed, so that a bad one is a usage
    // error (2) of the command that was given it, not of the agent it would start in the
    // background, and leaves the directories given as they were (found by new-user trials: 1,
    // then a state directory made 0700 and its parents left made).
    let flags = FlagValues {
        max: max_limits(&args)?,
        warm_pool_memory: parse_size(&args.warm_pool_memory).context(FlagValue("--warm-pool-memory".into()))?,
        zygote_memory: parse_size(&args.zygote_memory).context(FlagValue("--zygote-memory".into()))?,
        capacity: capacity_config(&args.max_running_runs, args.max_queued_runs, &args.disk_budget, &state_dir)?,
        egress_policy: egress_policy(&args.egress_allow)?,
        health_interval: Duration::from_millis(
            parse_duration_ms(&args.health_interval).context(FlagValue("--health-interval".into()))?,
        ),
    };
    let started = start_in(args, flags, api, ready, activated, socket, state_dir.clone());
    if started.is_err() && made_state_dir {
        let _ = std::fs::remove_dir(&state_dir);
    }
    started
}

/// The values of the agent's flags that are parsed beyond what clap does.
struct FlagValues {
    max: Limits,
    warm_pool_memory: u64,
    zygote_memory: u64,
    capacity: CapacityConfig,
    egress_policy: Vec<bkg_schema::egress::NetRule>,
    health_interval: Duration,
}

/// `start` once its state directory is known: made, checked and used.
fn start_in(
    args: AgentArgs,
    flags: FlagValues,
    api: ApiOptions,
    ready: Option<OwnedFd>,
    activated: Option<crate::activation::Activated>,
    socket: PathBuf,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let FlagValues { max, warm_pool_memory, zygote_memory, capacity, egress_policy, health_interval } = flags;
    // A maximum below a default lowers the default with it: `--max-memory 256MiB` is how an
    // operator gives every run less.
    let defaults = Limits::DEFAULT.at_most(&max);
    // A file in its place is said as such (found by a new-user trial: "File exists (os error 17)").
    if state_dir.exists() && !state_dir.is_dir() {
        anyhow::bail!("--state-dir {} is a file, not a directory: give a directory", state_dir.display());
    }
    std::fs::create_dir_all(&state_dir).with_context(|| format!("create state directory {}", state_dir.display()))?;
    // Refused before it is made private: another user's directory is left as it was (found by a
    // new-user trial: it was made 0700, then refused).
    refuse_foreign_state_dir(&state_dir)?;
    std::fs::set_permissions(&state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("make {} private", state_dir.display()))?;
    // Before any thread exists (the probe forks) and before detaching, so a host that lacks a
    // piece is told on the terminal that started the agent.
    let host = host_check::report(&host_check::probe(&args.python, &args.node, &state_dir));
    let security_level = host_check::admit(&host, args.allow_degraded.unwrap_or(SecurityLevel::Strict))?;

    // systemd supervises an activated agent: it stays in the foreground, logging to the journal.
    if !args.foreground && activated.is_none() {
        return detach(&state_dir, &socket);
    }

    tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && nix::unistd::isatty(std::io::stderr()).unwrap_or(false))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BKG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    if security_level < SecurityLevel::Strict {
        tracing::warn!(level = %security_level, "running below the strict security level, as --allow-degraded allows");
    }
    for check in host.checks.iter().filter(|check| check.name == bkg_schema::host::STATE_DIR_FS_CHECK) {
        if check.status != bkg_schema::host::CheckStatus::Pass {
            tracing::warn!(fix = check.fix.as_deref().unwrap_or_default(), "{}", check.found);
        }
    }

    let config = EngineConfig {
        state_dir: state_dir.clone(),
        default_limits: defaults,
        max_limits: max,
        python: args.python,
        node: args.node,
        npm: args.npm,
        warm_pool: args.warm_pool,
        warm_pool_memory,
        zygote: args.zygote,
        zygote_memory,
        uid_base: args.uid_base,
        cgroup_dir: args.cgroup_dir,
        capacity,
        security_level,
        runtimes: host.runtimes,
        egress_policy: std::sync::Arc::new(egress_policy),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    let activated = activated.map(|passed| passed.listener);
    runtime.block_on(serve(config, socket, activated, api, health_interval, ready))
}

/// The `--ready-fd` descriptor, made close-on-exec so that no sandbox init inherits it.
fn take_ready_fd(fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_SETFD on a descriptor number only sets its flags (or fails with EBADF when the
    // number is not open); nothing is read or written through it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        bail!("--ready-fd {fd} is not an open descriptor");
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process to own by
    // the parent that started it (`detach`); nothing else here uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn egress_policy(rules: &[String]) -> anyhow::Result<Vec<bkg_schema::egress::NetRule>> {
    // Said as the usage errors they are (found by a new-user trial: an empty value, a variable
    // not set, was taken as `none`, and `none,*` exited 1).
    if rules.iter().any(|rule| rule.trim().is_empty()) {
        return Err(FlagValue(
            "--egress-allow: a rule is empty (`''`, or `a,,b`): give rules, or `none` for no network at all".into(),
        )
        .into());
    }
    let none = rules.iter().any(|rule| rule.trim() == "none");
    let rules: Vec<String> = rules.iter().filter(|rule| rule.trim() != "none").cloned().collect();
    if none && !rules.is_empty() {
        return Err(FlagValue(format!(
            "--egress-allow none allows nothing: give it alone, not beside {}",
            rules.join(",")
        ))
        .into());
    }
    bkg_schema::egress::NetRule::parse_list(&rules).context(FlagValue("--egress-allow".into()))
}

fn capacity_config(
    max_running: &str,
    max_queued: usize,
    disk_budget: &str,
    state_dir: &Path,
) -> anyhow::Result<CapacityConfig> {
    let max_running = if max_running == "4 per CPU" {
        std::thread::available_parallelism().map(|n| n.get() * 4).unwrap_or(4)
    } else {
        max_running
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .context(FlagValue("--max-running-runs must be a number above 0".into()))?
    };
    // The free space is read as the engine starts (its pool's bound) and at each grant.
    let disk_budget = if disk_budget == "80% of the free space" {
        DiskBudget::FreeShare(state_dir.to_path_buf())
    } else {
        DiskBudget::Fixed(parse_size(disk_budget).context(FlagValue("--disk-budget".into()))?)
    };
    Ok(CapacityConfig { max_running, max_queued, disk_budget })
}

/// Who may use the socket: the group named by --socket-group (which must exist), else `bkg` if
/// it exists; the admin group, which must exist when named.
fn local_access(args: &AgentArgs) -> anyhow::Result<LocalAccess> {
    let socket_group = match &args.socket_group {
        Some(name) => Some(NamedGroup::require(name).context(FlagValue("--socket-group".into()))?),
        None => NamedGroup::find(DEFAULT_SOCKET_GROUP)?,
    };
    let admin_group = match &args.admin_group {
        Some(name) => Some(NamedGroup::require(name).context(FlagValue("--admin-group".into()))?),
        None => None,
    };
    Ok(LocalAccess::new(socket_group, admin_group, &args.user_namespace)?)
}

/// Starts `bkg-agent --foreground` in its own session, logging to STATE_DIR/agent.log, and
/// returns once it serves its socket: it says so on a pipe (`--ready-fd`), whose end without a
/// word means it failed to start. Its own one-line reason, from the log, is the error then.
/// The state directory holds keys, code and output: one another user owns could be read or
/// replaced by them, whatever its mode. The store's own files, made under an older umask or by
/// hand, are made private too (SQLite gives its -wal and -shm files the store's mode).
fn refuse_foreign_state_dir(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(state_dir).with_context(|| format!("inspect {}", state_dir.display()))?.uid();
    let uid = nix::unistd::geteuid().as_raw();
    if owner != uid {
        anyhow::bail!(
            "the state directory {} belongs to uid {owner}, not to the agent's uid {uid}: chown it to the agent's \
             user, or give another --state-dir",
            state_dir.display()
        );
    }
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = state_dir.join(name);
        if path.symlink_metadata().is_ok_and(|meta| meta.is_file() && meta.mode() & 0o077 != 0) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("make {} private", path.display()))?;
        }
    }
    Ok(())
}

fn detach(state_dir: &Path, socket: &Path) -> anyhow::Result<()> {
    let log_path = state_dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create the start-up pipe")?;
    // dup clears close-on-exec: this copy is the agent's. Nothing else is started meanwhile
    // (no thread exists yet), so no other process inherits it.
    let inherited = nix::unistd::dup(&ready_write).context("create the start-up pipe")?;
    let mut command = std::process::Command::new("/proc/self/exe");
    // `ps` shows the agent by the name it was started with, not as /proc/self/exe.
    if let Some(name) = std::env::args_os().next() {
        std::os::unix::process::CommandExt::arg0(&mut command, name);
    }
    command
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .arg("--ready-fd")
        .arg(inherited.as_raw_fd().to_string());
    command.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let spawned = command.spawn().context("start the agent in the background");
    drop((ready_write, inherited));
    let mut child = spawned?;
    let mut ready = [nix::poll::PollFd::new(ready_read.as_fd(), nix::poll::PollFlags::POLLIN)];
    let answered = loop {
        match nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(START_PATIENCE_MS)) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => break result.context("wait for the agent to start")? > 0,
        }
    };
    if !answered {
        bail!(
            "the agent (pid {}) did not serve {} within {} s; see {}",
            child.id(),
            socket.display(),
            START_PATIENCE_MS / 1000,
            log_path.display()
        );
    }
    if nix::unistd::read(&ready_read, &mut [0u8; 1]).context("wait for the agent to start")? == 1 {
        println!("{}", child.id());
        return Ok(());
    }
    let status = child.wait().context("wait for the agent to start")?;
    let reason = std::fs::read(&log_path).ok().and_then(|log| {
        let written = String::from_utf8_lossy(log.get(log_start as usize..)?).into_owned();
        written.lines().rev().find_map(|line| line.strip_prefix("bkg-agent: ").map(str::to_owned))
    });
    match reason {
        Some(reason) => bail!("{reason} (see {})", log_path.display()),
        None => bail!("the agent exited ({status}) during start-up; see {}", log_path.display()),
    }
}

/// How long a detaching agent's parent waits for it to serve: start-up removes what an earlier
/// agent left, which may take a while on a crowded host.
const START_PATIENCE_MS: u16 = 60_000;

async fn serve(
    config: EngineConfig,
    socket: PathBuf,
    activated: Option<std::os::unix::net::UnixListener>,
    api: ApiOptions,
    health_interval: Duration,
    ready: Option<OwnedFd>,
) -> anyhow::Result<()> {
    let state_dir = config.state_dir.clone();
    // The handlers go first: a SIGTERM during start-up (the socket may accept before the agent
    // serves) must take the clean way out below, not the default death that leaves sandboxes.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("handle SIGTERM")?;
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("handle SIGINT")?;
    // Refuse early if another agent serves this socket: its sandboxes are not ours to clean. An
    // activated agent's socket answers already: systemd holds it, and queues connections until
    // the agent accepts them below.
    let owns_socket_file = activated.is_none();
    if owns_socket_file && socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(crate::local_socket::already_listening(&socket));
    }
    let owner = bkg_schema::paths::lock_holder_record(std::process::id(), &state_dir);
    let socket_lock =
        crate::engine::lock::lock_socket(std::path::Path::new(crate::engine::lock::LOCK_DIR), &socket, &owner)?;
    // Before any file of the state directory is written: a refused agent leaves none.
    let claim = Engine::claim_host(&config, &owner).context("start the sandbox engine")?;
    let audit = crate::audit::AuditLog::open(&state_dir).context("open the audit log")?;
    let agent_id = audit.public_key().agent_id();
    let store_path = state_dir.join("state.db");
    let store =
        Store::open(&store_path, audit).with_context(|| format!("open the run store {}", store_path.display()))?;
    let artefacts = Arc::new(
        crate::artefacts::Artefacts::open(api.object_store.as_deref(), &state_dir, api.artefact_quota.clone())
            .context("open the object store of runs' files")?,
    );
    let (engine, leftovers_removed) = Engine::new(config, claim).context("start the sandbox engine")?;
    // Runs a crash or kill left open are closed before this agent starts any of its own.
    let interrupted = store
        .close_interrupted_runs(leftovers_removed, crate::ids::now_ms())
        .await
        .context("close the runs a previous agent left unfinished")?;
    if !interrupted.is_empty() {
        tracing::warn!(runs = interrupted.len(), "closed runs a previous agent left unfinished as interrupted");
    }
    // Bound last: a socket that accepts means an agent that has cleaned up and can run.
    let connections = &api.connections;
    let tcp_cap = listen::fit_connection_caps(connections.max_connections, connections.max_unix_connections);
    let tls = match &api.tls {
        Some(cert) => {
            crate::server::tls::reload_on_hangup(Arc::clone(cert)).context("handle SIGHUP")?;
            Some(cert.acceptor()?)
        }
        None => None,
    };
    // TCP first: a port taken stops the start before the socket file exists.
    let tcp_listener = match api.listen {
        Some(address) => {
            let tcp = tokio::net::TcpListener::bind(address).await.with_context(|| {
                format!(
                    "listen on {address} (is another agent or program there? `ss -ltnp` says; or give another --listen)"
                )
            })?;
            let bound = tcp.local_addr().context("the TCP listener's address")?;
            if let Some(path) = &api.listen_address_file {
                std::fs::write(path, format!("{bound}\n")).with_context(|| format!("write {}", path.display()))?;
            }
            let scheme = if tls.is_some() { "https" } else { "plain http" };
            tracing::info!(address = %bound, scheme, max_connections = tcp_cap, "serving the API on TCP (API keys required)");
            Some(tcp)
        }
        None => None,
    };
    // A start that fails from here on leaves no socket file behind for clients to find (the
    // socket file goes with the last holder); systemd keeps an activated socket, to start the
    // agent again on the next connection.
    let (listener, socket_file) = match activated {
        Some(passed) => (tokio::net::UnixListener::from_std(passed).context("serve the socket systemd passed")?, None),
        None => {
            let (file, listener) = SocketFile::bind(&socket, api.local.socket_group.as_ref())?;
            (listener, Some(file))
        }
    };
    let watch = socket_file.as_ref().and_then(|file| {
        SocketWatch::new(Arc::clone(file))
            .map_err(
                |error| tracing::warn!(%error, "cannot watch the socket file: if it is deleted, restart the agent"),
            )
            .ok()
    });
    if let Some(group) = &api.local.socket_group {
        tracing::info!(group = %group.name, "members of the socket's group use the agent as themselves");
        use std::os::unix::fs::MetadataExt;
        // Members pass through a directory open to others, or through one of their group's that
        // lets its group through (found by a new-user trial: 0710 root:GROUP was warned about).
        let passes = |meta: &std::fs::Metadata| {
            meta.mode() & 0o001 != 0 || (meta.gid() == group.gid && meta.mode() & 0o010 != 0)
        };
        let parent = socket.parent().and_then(|parent| std::fs::metadata(parent).ok());
        if parent.is_some_and(|meta| !passes(&meta)) {
            tracing::warn!(
                socket = %socket.display(),
                "the socket's directory is closed to the group's members: they cannot reach the socket (chmod 755 \
                 it, or chgrp {} it and chmod 710 it)",
                group.name
            );
        }
    }

    let (cleanup_tx, mut cleanup_rx) = tokio::sync::mpsc::unbounded_channel::<CleanedUp>();
    engine.on_cleanup(cleanup_tx);
    let cleanup_store = store.clone();
    tokio::spawn(async move {
        // Each cleanup stays pending (shutdown waits for it) until it is recorded here.
        while let Some(CleanedUp { run_id, confirmed, pending }) = cleanup_rx.recv().await {
            if let Err(error) = cleanup_store.run_cleaned_up(&run_id, confirmed).await {
                tracing::error!(%error, run = %run_id, "could not record the cleanup");
            }
            drop(pending);
        }
    });
    engine.refill();

    let mut metrics = Metrics::default();
    metrics.count_warm_replacements(engine.warm_replaced.clone());
    let shutdown = Arc::new(Notify::new());
    let notifier = Notifier::new(api.webhooks, api.webhook_key).context("build the webhook client")?;
    // Every start is in the audit trail with the configuration it runs under.
    let retention = api.retention.recorded();
    let configuration = bkg_schema::audit::AgentConfig {
        default_limits: engine.config.default_limits,
        max_limits: engine.config.max_limits,
        warm_pool: engine.config.warm_pool as u64,
        max_running_runs: Some(engine.config.capacity.max_running as u64),
        max_queued_runs: Some(engine.config.capacity.max_queued as u64),
        disk_budget: engine.capacity.disk_budget().ok(),
        cgroups: engine.cgroup_version(),
        listen: api.listen.map(|address| address.to_string()),
        bkg_db: api.db_url.is_some(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        security_level: Some(engine.config.security_level),
        retention: Some(retention.clone()),
    };
    let configuration = bkg_schema::audit::AuditEvent::new(
        bkg_schema::audit::AGENT_ACTOR,
        bkg_schema::audit::Details::ConfigChanged(bkg_schema::audit::ConfigChanged::AgentStarted(Box::new(
            configuration,
        ))),
    );
    store.note(configuration).await.context("record the configuration in the audit log")?;

    if let Some(url) = &api.db_url
        && crate::sync::has_password(url)
        && std::env::args().any(|arg| arg == "--db-url" || arg.starts_with("--db-url="))
    {
        tracing::warn!(
            "--db-url holds a password, which every local user can read in this process's command line \
             (/proc/PID/cmdline): give the URL in BKG_DB_URL instead (docs/operations.md)"
        );
    }
    // The outbox keeps every event until bkg_db has it; a bkg_db that is down only delays it.
    let sync = api.db_url.as_ref().map(|url| {
        let handle = Arc::new(crate::sync::SyncWorker::spawn(store.clone(), crate::sync::SyncConfig::new(url.clone())));
        let (outbox, waker) = (store.clone(), Arc::clone(&handle));
        tokio::spawn(async move {
            loop {
                outbox.outbox_grew().await;
                waker.wake();
            }
        });
        tokio::spawn(audit_sync_failures(store.clone(), Arc::clone(&handle)));
        (handle, url.clone())
    });
    crate::retention::spawn(
        store.clone(),
        api.retention,
        sync.as_ref().map(|(handle, url)| (url.clone(), agent_id, handle.migrated())),
        Arc::clone(&artefacts),
    );
    let feed = crate::feed::Feed::start(store.clone(), api.db_url.clone());
    let service = Service::new(ServiceParts {
        feed: Arc::clone(&feed),
        engine: Arc::clone(&engine),
        store,
        artefacts: Arc::clone(&artefacts),
        metrics: Arc::new(metrics),
        auth: AuthState::new(api.policy, notifier, api.local.clone()),
        health: HealthProbe::new(health_interval),
        sync: sync.clone(),
        shutdown: Arc::clone(&shutdown),
        socket: socket.clone(),
        socket_activated: !owns_socket_file,
        envs: Arc::new(
            crate::envs::Environments::open(
                &state_dir,
                Language::Python,
                api.package_index.clone(),
                engine.config.python.clone(),
            )
            .context("open the Python environments")?,
        ),
        node_envs: Arc::new(
            crate::envs::Environments::open(
                &state_dir,
                Language::Node,
                api.npm_registry.clone(),
                engine.config.node.clone(),
            )
            .context("open the Node.js environments")?,
        ),
        secrets: crate::secrets::SecretStore::new(&state_dir),
        retention,
    });
    // Services the last agent's stop or crash ended go on, beside the first requests.
    tokio::spawn({
        let (service, access) = (Arc::clone(&service), api.local.clone());
        async move { service.resume_services(&access).await }
    });
    let state = AppState {
        service,
        tracer: Tracer::from_env(api.sampling_rate),
        bodies: Arc::new(BodyBudget::new(api.connections.body_budget, api.connections.body_timeout)),
        ui: Arc::new(crate::ui::UiState::default()),
        mcp_calls: Arc::default(),
    };
    tracing::info!(
        socket = %socket.display(),
        state_dir = %state_dir.display(),
        cgroups = %engine.cgroup_version(),
        security_level = %engine.config.security_level,
        object_store = %artefacts.location,
        "agent ready"
    );
    if let Some(ready) = ready {
        // The parent may be gone (killed while it waited): then nobody needs the word.
        let _ = nix::unistd::write(&ready, b"1");
    }

    // Which signal stopped the agent; none when the API did (which recorded its own line).
    let signals = async move {
        tokio::select! {
            _ = terminate.recv() => Some("SIGTERM"),
            _ = interrupt.recv() => Some("SIGINT"),
            () = shutdown.notified() => None,
        }
    };
    // Both listeners stop on the same signal; runs get SHUTDOWN_GRACE to end by themselves.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let grace_engine = Arc::clone(&engine);
    let stop_record = Arc::clone(&state.service);
    tokio::spawn(async move {
        if let Some(signal) = signals.await
            && let Err(error) = stop_record.note_stop(bkg_schema::audit::AGENT_ACTOR.into(), signal).await
        {
            tracing::error!(%error, "could not record the stop in the audit log");
        }
        grace_engine.close();
        // Streams of the change feed end, or the listeners would wait for them forever.
        feed.stop();
        let _ = stopping_tx.send(true);
        tokio::select! {
            () = grace_engine.idle() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::info!(runs = grace_engine.active_runs(), "the shutdown grace is over: ending the runs still going");
                grace_engine.kill_runs();
            }
        }
    });
    let metrics = Arc::clone(&state.service.metrics);
    let ui = Arc::clone(&state.ui);
    let service = Arc::clone(&state.service);
    let app = router(state);
    let header_timeout = api.connections.header_timeout;
    let tcp_address = match &tcp_listener {
        Some(tcp) => Some((tcp.local_addr().context("the TCP listener's address")?, tls.is_some())),
        None => None,
    };
    if let Some((address, tls)) = tcp_address {
        let scheme = if tls { "https" } else { "http" };
        service.note_listener(bkg_schema::TcpListenerInfo {
            url: format!("{scheme}://{address}"),
            started_by: "--listen".into(),
        });
    }
    let _ = ui.listening.set(crate::ui::launch::Listening {
        tcp: tcp_address,
        app: app.clone(),
        metrics: Arc::clone(&metrics),
        header_timeout,
        stopping: stopping_rx.clone(),
    });
    let tcp_server = tcp_listener.map(|tcp| {
        let config = listen::ListenerConfig { name: "tcp", max_connections: tcp_cap, header_timeout, tls };
        let (app, metrics, stopping) = (app.clone(), Arc::clone(&metrics), stopping_rx.clone());
        tokio::spawn(listen::serve(tcp, app, config, metrics, |address: std::net::SocketAddr| address, stopping))
    });
    let unix = listen::ListenerConfig {
        name: "unix",
        max_connections: api.connections.max_unix_connections,
        header_timeout,
        tls: None,
    };
    listen::serve(
        PeerCheckedListener::new(listener, api.local, watch),
        app,
        unix,
        metrics,
        |principal| UnixPeer { principal },
        stopping_rx,
    )
    .await;
    if let Some(tcp_server) = tcp_server
        && let Err(error) = tcp_server.await
    {
        tracing::error!(%error, "the TCP listener's task failed");
    }

    tracing::info!("shutting down");
    engine.drain().await;
    // Every run has been handed its result (the grace task ends those that outlive it) and
    // every sandbox is disposed of: only then are the cgroup directories empty and removable.
    let idle = tokio::time::timeout(SHUTDOWN_GRACE + CLEANUP_BOUND, engine.idle()).await.is_ok();
    if !idle {
        tracing::error!(
            runs = engine.active_runs(),
            cleanups = engine.cleanups_pending(),
            "runs or cleanups still going at shutdown"
        );
    }
    engine.remove_own_dirs();
    if idle {
        // Said, not only implied by the absence of an error: an operator reading the log after a
        // stop learns that nothing of the agent's is left.
        tracing::info!("stopped: every run has ended and every sandbox is disposed of");
    }
    if let Some((handle, _)) = sync
        && let Ok(handle) = Arc::try_unwrap(handle)
    {
        handle.stop().await;
    }
    drop(socket_file);
    // Released last: until here `bkg agent stop` waits for this agent (engine/lock.rs, `lock_socket`).
    drop(socket_lock);
    Ok(())
}

/// The agent's log on stderr, whose reader may go away (`| tee` killed, a journal restarted):
/// a line that cannot be written is dropped, and the agent goes on (found by a new-user trial:
/// tracing-subscriber reported the failed write with `eprintln!`, which panicked on the closed
/// pipe, and the agent died with its runs and left its cgroups).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::Write::flush(&mut std::io::stderr().lock());
        Ok(())
    }
}

/// The agent's log without `BKG_LOG`: its own events, and the MCP library's warnings only (at
/// info it logs three lines of its own for every `/mcp` request, one naming itself as the client).
const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn";

/// How long runs may go on after the agent is asked to stop, before they are killed with
/// `killed_by: shutdown` (docs/cli.md, `bkg agent stop`): the grace a stopped run has.
const SHUTDOWN_GRACE: Duration = bkg_schema::STOP_GRACE;
/// How long disposing of the sandboxes may take after the grace, before the agent gives up
/// waiting and stops anyway (logging what is left).
const CLEANUP_BOUND: Duration = Duration::from_secs(20);

/// Puts a `sync.error` in the audit log when the sync starts failing, once per outage: each
/// record also lands in the outbox, so one per failed attempt would grow it while bkg_db is down.
async fn audit_sync_failures(store: Store, sync: Arc<crate::sync::SyncHandle<Store>>) {
    let mut failing = sync.failing();
    loop {
        // The worker gone (the agent stopping) ends the wait.
        if failing.wait_for(|failing| *failing).await.is_err() {
            return;
        }
        let failed = match sync.status().await {
            Ok(status) => bkg_schema::audit::SyncFailed { error: status.last_error, backlog: status.backlog },
            Err(error) => {
                bkg_schema::audit::SyncFailed { error: Some(format!("the sync's status: {error}")), backlog: 0 }
            }
        };
        let event = bkg_schema::audit::AuditEvent::new(
            bkg_schema::audit::AGENT_ACTOR,
            bkg_schema::audit::Details::SyncError(failed),
        );
        if let Err(error) = store.note(event).await {
            tracing::error!(%error, "could not record the sync failure in the audit log");
        }
        if failing.wait_for(|failing| !*failing).await.is_err() {
            return;
        }
    }
}

/// `--uid-base`: decimal, or hex with `0x`, as uids are often written.
fn parse_uid_base(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse::<u32>(),
    };
    let base = parsed.map_err(|error| format!("`{text}` is not a uid (decimal, or hex with 0x): {error}"))?;
    if !(UID_BASE_MIN..=UID_BASE_MAX).contains(&base) {
        return Err(format!("{base} is not in {UID_BASE_MIN}..={UID_BASE_MAX}"));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_keeps_the_mcp_library_to_its_warnings() {
        let filter = tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER).expect("a filter");
        assert_eq!(filter.to_string(), "rmcp=warn,info");
    }

    /// Found by a new-user trial: `--listen localhost:7878` was "invalid socket address syntax".
    #[test]
    fn listen_takes_an_ip_address_or_localhost_with_a_port() {
        assert_eq!(listen_address("localhost:7878"), Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 7878))));
        assert_eq!(listen_address("[::1]:7878"), "[::1]:7878".parse().map_err(|_| String::new()));
        assert_eq!(listen_address("0.0.0.0:0"), Ok(std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
        assert_eq!(listen_address("localhost:http"), Err("`http` is not a port".to_owned()));
        let refused = listen_address("agent.example:7878").err().unwrap_or_default();
        assert!(refused.contains("give an IP address and a port, like 127.0.0.1:7878"), "{refused}");
    }

    #[test]
    fn a_uid_base_is_decimal_or_hex_and_in_range() {
        assert_eq!(parse_uid_base("0x70000000"), Ok(0x7000_0000));
        assert_eq!(parse_uid_base("1879048192"), Ok(0x7000_0000));
        assert_eq!(parse_uid_base("0X10000"), Ok(65_536));
        for refused in ["5", "0xffffffff", "0xzz", "-1", ""] {
            assert!(parse_uid_base(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn egress_none_stands_alone() {
        let rules = |list: &[&str]| egress_policy(&list.iter().map(|rule| rule.to_string()).collect::<Vec<_>>());
        assert!(rules(&["none"]).is_ok_and(|rules| rules.is_empty()));
        assert!(rules(&["pypi.org"]).is_ok_and(|rules| rules.len() == 1));
        let mixed = rules(&["none", "pypi.org"]).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(mixed.contains("give it alone"), "{mixed}");
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cgroups: {0}")]
        Inner(#[from] std::io::Error),
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::other("\"../x\" is not usable");
        let error = anyhow::Error::from(Outer::from(io)).context("start the sandbox engine");
        assert_eq!(one_line(&error), "start the sandbox engine: cgroups: \"../x\" is not usable");
        let plain = anyhow::Error::from(std::io::Error::other("denied")).context("bind /run/bkg.sock");
        assert_eq!(one_line(&plain), "bind /run/bkg.sock: denied");
    }
}
