//! The checks every request to run code passes before any sandbox is touched: limits, the
//! runtime, the script's name, uploads, arguments, environment and stdin. A client's mistake is
//! refused here, as `RunError::BadRequest` (422), never later as a sandbox failure.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use bkg_schema::egress::{NetRule, PortMapping};
use bkg_schema::sandbox::{ExecRequest, SandboxDefinition};
use bkg_schema::terminal::TerminalSize;
use bkg_schema::{ErrorCode, FileUpload, Limits, RunRequest};
use std::sync::Arc;

use super::control::{GoOrder, PlacedFile};
use super::egress::{NetworkPlan, proxy_env};
use super::plan::{Additions, NODE_ENV, Owner, PROJECT, PYTHON_ENV, ProjectMounts, SHIM_DIR, TMP, Volume, WORKSPACE};
use super::relay::RelayTarget;
use super::sandbox::PersistentDisk;
use super::{Engine, EngineError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    BadRequest(String),
    /// `others`: the limits after the first also above their maximum, each `(name, asked, allowed)`.
    #[error("{name} {asked} is above this agent's maximum of {allowed}{}; {fix}", also_above(.others))]
    LimitAboveMaximum {
        name: &'static str,
        asked: String,
        allowed: String,
        others: Vec<(&'static str, String, String)>,
        fix: String,
    },
    #[error("{0}")]
    RuntimeNotExecutable(String),
    #[error("{0}")]
    Busy(String),
    /// A host port the run is to forward cannot be bound (another process holds it).
    #[error("{0}")]
    PortUnusable(String),
    /// A network rule outside the agent's `--egress-allow`: only its admin can widen that.
    #[error("{0}")]
    EgressNotAllowed(String),
    /// The run's packages could not be installed: one line, then the installer's own error.
    #[error("{0}")]
    InstallFailed(String),
    /// The agent is at a capacity bound (queue, disk budget); the caller may retry later.
    #[error("{reason}")]
    Overloaded { reason: String, retry_after_secs: u32 },
    #[error(transparent)]
    Engine(EngineError),
}

impl From<EngineError> for RunError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Capacity(bound) => {
                Self::Overloaded { retry_after_secs: bound.retry_after_secs(), reason: bound.to_string() }
            }
            // Runs that end give their disks' room back, as with a spent disk budget.
            EngineError::Disk(full @ super::disk::DiskError::HostFull { .. }) => {
                Self::Overloaded { retry_after_secs: 5, reason: full.to_string() }
            }
            // The caller's limit, refused whenever it is asked: not a failure to try again (it was
            // a 503, found by a new-user trial).
            EngineError::Disk(smaller @ super::disk::DiskError::WouldShrink { .. }) => {
                Self::BadRequest(smaller.to_string())
            }
            other => Self::Engine(other),
        }
    }
}

impl From<super::capacity::CapacityError> for RunError {
    fn from(error: super::capacity::CapacityError) -> Self {
        EngineError::from(error).into()
    }
}

impl RunError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::LimitAboveMaximum { .. } => ErrorCode::LimitAboveMaximum,
            Self::RuntimeNotExecutable(_) => ErrorCode::RuntimeNotExecutable,
            Self::Busy(_) | Self::PortUnusable(_) => ErrorCode::Conflict,
            Self::EgressNotAllowed(_) => ErrorCode::Forbidden,
            Self::InstallFailed(_) => ErrorCode::InstallFailed,
            Self::Overloaded { .. } => ErrorCode::Unavailable,
            Self::Engine(_) => ErrorCode::SandboxFailed,
        }
    }
}

/// A request that passed every check, ready to be given to a sandbox.
#[derive(Debug)]
pub struct ValidatedRun {
    pub language: bkg_schema::Language,
    pub limits: Limits,
    /// The namespace the run belongs to: its sandbox's, or `default` for a temporary run.
    pub namespace: String,
    pub(super) order: GoOrder,
    pub(super) stdin: Option<Vec<u8>>,
    pub(super) persistent: Option<PersistentRun>,
    /// Paths under /workspace whose files the run keeps (artefacts/collect.rs), relative to it.
    pub(super) keep: Vec<String>,
    /// Hosts it may reach and ports forwarded into it; `None`: no network at all.
    pub(super) network: Option<NetworkPlan>,
    /// What the run's sandbox adds to the common root (its Python environment).
    pub(super) additions: Additions,
    /// The network an install sandbox gets: relays to its package index (`relay.rs`).
    pub(super) relay: Vec<RelayTarget>,
    /// Send /workspace/out/ back when the code has ended (`RunRequest::return_out_dir`).
    pub(super) return_out_dir: bool,
    /// How the run takes one of the `--max-running-runs` places (capacity.rs).
    pub(super) place: Place,
}

/// How a run takes one of the `--max-running-runs` places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// It waits for one, and ends by itself.
    OneShot,
    /// It waits for one and holds it as long as someone keeps it (a session, a service, a
    /// terminal): one of the `CapacityConfig::long_lived_max` places such runs may hold.
    LongLived,
    /// It never waits: the health probe's (`ValidatedRun::beside_the_queue`).
    BesideTheQueue,
}

/// What a run in a persistent sandbox adds: the sandbox it belongs to, its disk and where its
/// log goes (`None`: it keeps none).
#[derive(Debug)]
pub(super) struct PersistentRun {
    pub(super) sandbox_id: String,
    pub(super) disk: PersistentDisk,
    pub(super) log_dir: Option<PathBuf>,
    /// Whether the run only holds the sandbox for a file transfer (`ValidatedRun::for_transfer`).
    pub(super) for_transfer: bool,
}

impl ValidatedRun {
    pub fn sandbox_id(&self) -> Option<&str> {
        self.persistent.as_ref().map(|persistent| persistent.sandbox_id.as_str())
    }

    /// Makes this the run a file transfer holds an idle sandbox with: its output is nobody's,
    /// so it keeps no log (`bkg logs` goes on showing the sandbox's own last run), and it is not
    /// the sandbox's last run (`Store::last_run_of`).
    pub fn for_transfer(&mut self) {
        self.without_log();
        if let Some(persistent) = &mut self.persistent {
            persistent.for_transfer = true;
        }
    }

    /// Keeps no log of this run: `bkg logs` goes on showing the sandbox's last run that has one.
    fn without_log(&mut self) {
        if let Some(persistent) = &mut self.persistent {
            persistent.log_dir = None;
        }
    }

    /// Makes this a run that never waits for a place: the health probe's, which must answer
    /// while runs fill every place (found by a new-user trial: idle sessions held all of them
    /// and `/healthz` hung for as long). It is one tiny run at a time (`HealthProbe`), counted
    /// among those going on while it runs.
    pub(super) fn beside_the_queue(&mut self) {
        self.place = Place::BesideTheQueue;
    }

    pub fn is_for_transfer(&self) -> bool {
        self.persistent.as_ref().is_some_and(|persistent| persistent.for_transfer)
    }

    /// Mounts a built Python environment read-only at `PYTHON_ENV`, importable and with its
    /// commands on PATH.
    pub fn use_python_env(&mut self, dir: PathBuf) {
        self.additions.python_env = Some(dir);
        let env = &mut self.order.env;
        let path = env.iter().find(|(key, _)| key == "PATH").map(|(_, value)| value.clone()).unwrap_or_default();
        let python_path =
            env.iter().find(|(key, _)| key == "PYTHONPATH").map(|(_, value)| format!("{PYTHON_ENV}:{value}"));
        env.retain(|(key, _)| key != "PATH" && key != "PYTHONPATH");
        env.push(("PATH".into(), format!("{PYTHON_ENV}/bin:{path}")));
        env.push(("PYTHONPATH".into(), python_path.unwrap_or_else(|| PYTHON_ENV.into())));
    }

    /// Mounts a built Node.js environment read-only at `NODE_ENV`: `require` finds its packages
    /// through `NODE_PATH`, and their commands are on `PATH`.
    pub fn use_node_env(&mut self, dir: PathBuf) {
        self.additions.node_env = Some(dir);
        let env = &mut self.order.env;
        let path = env.iter().find(|(key, _)| key == "PATH").map(|(_, value)| value.clone()).unwrap_or_default();
        let modules = format!("{NODE_ENV}/node_modules");
        let node_path = env.iter().find(|(key, _)| key == "NODE_PATH").map(|(_, value)| format!("{modules}:{value}"));
        env.retain(|(key, _)| key != "PATH" && key != "NODE_PATH");
        env.push(("PATH".into(), format!("{modules}/.bin:{path}")));
        env.push(("NODE_PATH".into(), node_path.unwrap_or(modules)));
    }

    /// Refuses now a host port to forward that another process holds: a detached run would
    /// fail only as it starts, after its caller was told it runs (and a service would then be
    /// restarted for ever). The run itself binds it again (engine/egress.rs).
    pub fn check_ports_free(&self) -> Result<(), RunError> {
        for mapping in self.network.iter().flat_map(|plan| &plan.ports) {
            let host = std::net::SocketAddr::new(mapping.address, mapping.host_port);
            if let Err(source) = std::net::TcpListener::bind(host) {
                let taken = super::egress::EgressError::PortTaken { host, source };
                return Err(RunError::PortUnusable(taken.to_string()));
            }
        }
        Ok(())
    }

    /// Adds environment variables that must not be checked against the caller's rules again
    /// (secret values, checked when they were set); each replaces a variable of its name. One
    /// that names a proxy is refused in a run given network, as `with_proxy` refuses it.
    pub fn add_env(&mut self, variables: Vec<(String, String)>) -> Result<(), RunError> {
        if self.network.as_ref().is_some_and(|plan| !plan.allow.is_empty()) {
            refuse_proxy_variables(variables.iter().map(|(key, _)| key.as_str()), "secret")?;
        }
        for (key, value) in variables {
            self.order.env.retain(|(existing, _)| *existing != key);
            self.order.env.push((key, value));
        }
        Ok(())
    }

    /// Runs the code on a pseudo-terminal of `size` (its stdin, stdout and stderr, and its
    /// controlling terminal) with `TERM` set to `term`.
    pub fn on_terminal(&mut self, size: TerminalSize, term: Option<String>) -> Result<(), RunError> {
        if size.cols == 0 || size.rows == 0 {
            return Err(RunError::BadRequest("a terminal needs at least one column and one row".into()));
        }
        let term = term.unwrap_or_else(|| DEFAULT_TERM.to_owned());
        if term.is_empty() || term.len() > 64 || !term.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(RunError::BadRequest(format!("TERM `{term}` is not a terminal type name")));
        }
        self.order.env.retain(|(key, _)| key != "TERM");
        self.order.env.push(("TERM".into(), term));
        self.order.terminal = Some(size);
        // It lasts as long as someone types into it.
        self.place = Place::LongLived;
        Ok(())
    }

    /// Whether the run's code is on a pseudo-terminal.
    pub fn has_terminal(&self) -> bool {
        self.order.terminal.is_some()
    }
}

/// `TERM` of a terminal run whose client does not say.
const DEFAULT_TERM: &str = "xterm-256color";

/// The limits after the first one above the maximum, as a refusal adds them to it.
pub(crate) fn also_above(others: &[(&'static str, String, String)]) -> String {
    let said: Vec<String> =
        others.iter().map(|(name, asked, allowed)| format!("{name} {asked} (at most {allowed})")).collect();
    match said.len() {
        0 => String::new(),
        1 => format!(", and so is {}", said[0]),
        _ => format!(", and so are {}", words(&said)),
    }
}

/// What to do about the limits `names` above their maximum: ask for less (a run's, `in_cave_yaml`
/// false) or give less in cave.yaml's `limits` (a sandbox's definition), or have the agent started with
/// higher maxima (`--max-cpus and --max-memory`; none for the number of processes, which no flag
/// raises).
fn limit_fix(names: &[&str], in_cave_yaml: bool) -> String {
    let flags: Vec<String> = names.iter().filter(|name| **name != "pids").map(|name| format!("--max-{name}")).collect();
    let less = match in_cave_yaml {
        true => {
            let keys = words(&names.iter().map(|name| format!("limits.{name}")).collect::<Vec<_>>());
            let that = if names.len() == 1 { "that" } else { "those" };
            format!("give the sandbox's {keys} (cave.yaml's) at most {that}")
        }
        false if flags.is_empty() => "ask for fewer".to_owned(),
        false => "ask for less".to_owned(),
    };
    match flags.is_empty() {
        true => less,
        false => format!("{less}, or have the agent started with a higher {}", words(&flags)),
    }
}

/// `a`, `a and b`, `a, b and c`.
fn words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Total size of files a request may place in the sandbox (they must also fit its disk).
const MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// The longest file name the sandbox's ext4 takes (NAME_MAX).
const MAX_NAME_BYTES: usize = 255;

/// The longest path the kernel takes (PATH_MAX, with its NUL).
const MAX_PATH_BYTES: usize = 4095;

use bkg_schema::MAX_ENV_BYTES;

impl Engine {
    /// The caller's limits on top of the defaults, refused (not clipped) above the maximum.
    pub fn resolve_limits(&self, overrides: &bkg_schema::LimitOverrides) -> Result<Limits, RunError> {
        let limits = self.config.default_limits.with(overrides);
        for (name, value) in [
            ("cpus", limits.cpu_millis),
            ("memory", limits.memory_bytes),
            ("timeout", limits.timeout_ms),
            ("disk", limits.disk_bytes),
            ("pids", limits.pids),
        ] {
            if value == 0 {
                return Err(RunError::BadRequest(format!("{name} limit must be greater than zero")));
            }
        }
        let mut above = limits.all_above(&self.config.max_limits);
        for (name, _, allowed) in &mut above {
            if limits.timeout_ms == bkg_schema::NO_TIMEOUT_MS && *name == "timeout" {
                allowed.push_str(" (it takes none only when started with --max-timeout none)");
            }
        }
        if !above.is_empty() {
            let names: Vec<&str> = above.iter().map(|(name, _, _)| *name).collect();
            let fix = limit_fix(&names, false);
            let (name, asked, allowed) = above.remove(0);
            return Err(RunError::LimitAboveMaximum { name, asked, allowed, others: above, fix });
        }
        // A disk larger than every sandbox's together could have is refused now, not queued for
        // a budget that can never hold it.
        let mut budget = self.capacity.disk_budget()?;
        // Emptied images kept for the next sandboxes hold host space, which a budget that follows
        // the free space counts as taken: given up before a run is refused for it (found by a
        // new-user trial: on a host with 1.1 GiB free, every default run after the first was
        // refused for ten seconds).
        if limits.disk_bytes > budget && self.capacity.budget_follows_free_space() && self.disks.remove_spares() > 0 {
            budget = self.capacity.disk_budget()?;
        }
        if limits.disk_bytes > budget {
            let size = bkg_schema::units::format_size;
            // Said so when nobody asked for it (found by a new-user trial: on a host short of
            // space, a plain run was refused a "500MiB" it never named).
            let asked = match overrides.disk_bytes {
                Some(_) => size(limits.disk_bytes),
                None => format!("{} (the default)", size(limits.disk_bytes)),
            };
            return Err(RunError::LimitAboveMaximum {
                name: "disk",
                asked,
                allowed: format!("{} (the agent's whole disk budget: {})", size(budget), self.capacity.budget_source()),
                others: Vec::new(),
                fix: format!("ask for less, or {}", self.capacity.budget_fix()),
            });
        }
        if let Some((name, asked, least)) = limits.first_below(&Limits::LEAST) {
            return Err(RunError::BadRequest(format!("{name} limit {asked} is too small: the least is {least}")));
        }
        Ok(limits)
    }

    /// Checks a persistent sandbox's definition when it is stored, so that a mistake in it is
    /// refused once, at the door, rather than by every run of the sandbox.
    pub fn check_definition(&self, definition: &SandboxDefinition) -> Result<(), RunError> {
        // The definition's own limits (cave.yaml's): a run's flags (`bkgr --timeout`) hold for
        // that run only and cannot make a definition above the maximum fit.
        self.resolve_limits(&definition.limits).map_err(|error| match error {
            RunError::LimitAboveMaximum { name, asked, allowed, others, .. } => {
                let names: Vec<&str> = std::iter::once(name).chain(others.iter().map(|(name, _, _)| *name)).collect();
                let fix = limit_fix(&names, true);
                RunError::LimitAboveMaximum { name, asked, allowed, others, fix }
            }
            other => other,
        })?;
        sandbox_env(&definition.env)?;
        self.network_plan(&definition.network, &definition.ports)?;
        kept_by_sandbox(&definition.keep)?;
        for (name, command) in &definition.scripts {
            if command.contains('\0') {
                return Err(RunError::BadRequest(format!("script `{name}` contains a NUL byte")));
            }
        }
        Ok(())
    }

    /// What a pool sandbox starts ahead for `language`: its interpreter with the environment
    /// every sandbox gets. The zygote starts with the same, so that its forks fit the same runs.
    pub(super) fn prestart_plan(
        &self,
        language: bkg_schema::Language,
    ) -> Result<super::prestart::PrestartPlan, RunError> {
        Ok(super::prestart::PrestartPlan {
            language,
            interpreter: self.interpreter(language)?.to_string_lossy().into_owned(),
            env: sandbox_env(&std::collections::BTreeMap::new()).unwrap_or_default(),
        })
    }

    pub(super) fn interpreter(&self, language: bkg_schema::Language) -> Result<&Path, RunError> {
        let interpreter = match language {
            bkg_schema::Language::Python => &self.config.python,
            bkg_schema::Language::Node => &self.config.node,
        };
        if nix::unistd::access(interpreter, nix::unistd::AccessFlags::X_OK).is_err() {
            return Err(RunError::RuntimeNotExecutable(format!(
                "the {} runtime {} is not executable on this host",
                language.as_str(),
                interpreter.display()
            )));
        }
        Ok(interpreter)
    }

    /// Whether code asking for the Python versions `wanted` (`requires_python`) may run here.
    fn check_python_version(&self, language: bkg_schema::Language, wanted: &str) -> Result<(), RunError> {
        if language != bkg_schema::Language::Python {
            return Err(RunError::BadRequest(format!(
                "requires_python is for Python code, and this run is {}",
                language.as_str()
            )));
        }
        let python = self.config.runtimes.iter().find(|runtime| runtime.language == language);
        bkg_schema::requirements::check_python_version(wanted, python.map(|runtime| runtime.version.as_str()))
            .map_err(|error| RunError::BadRequest(error.to_string()))
    }

    /// The run's network rules and forwarded ports, each rule within the agent's policy.
    pub fn network_plan(&self, allow: &[String], ports: &[String]) -> Result<Option<NetworkPlan>, RunError> {
        let allow = NetRule::parse_list(allow).map_err(|error| RunError::BadRequest(error.to_string()))?;
        let policy = &self.config.egress_policy;
        // The policy itself is not shown: it names internal addresses and the host's ports, which
        // are its admins' to know (found by a new-user trial: a local user was shown them all).
        if let Some(outside) = allow.iter().find(|rule| !policy.iter().any(|allowed| allowed.covers(rule))) {
            // A loopback address is most often the host's service meant (found by a new-user trial).
            let loopback = match outside.host {
                bkg_schema::egress::HostPattern::Address(address) if address.is_loopback() => {
                    format!("; this host's loopback is {}", NetRule::on_the_hosts_loopback(outside.port))
                }
                _ => String::new(),
            };
            return Err(RunError::EgressNotAllowed(format!(
                "network rule {outside} is outside this agent's egress policy; only its admin can widen it \
                 (bkg-agent --egress-allow){loopback}"
            )));
        }
        let mappings = PortMapping::parse_all(ports).map_err(|error| RunError::BadRequest(error.to_string()))?;
        if allow.is_empty() && mappings.is_empty() {
            return Ok(None);
        }
        Ok(Some(NetworkPlan { allow, policy: Arc::clone(policy), ports: mappings }))
    }

    pub fn validate(&self, request: RunRequest) -> Result<ValidatedRun, RunError> {
        // Said before any maximum: no agent takes it for a temporary run.
        if request.limits.timeout_ms == Some(bkg_schema::NO_TIMEOUT_MS) {
            return Err(RunError::BadRequest(
                "timeout none is only for persistent sandboxes (cave.yaml, bkgr); a run needs a timeout".into(),
            ));
        }
        let limits = self.resolve_limits(&request.limits)?;
        let network = self.network_plan(&request.network, &request.ports)?;
        let interpreter = self.interpreter(request.language)?;
        if let Some(wanted) = &request.requires_python {
            self.check_python_version(request.language, wanted)?;
        }

        let script_name =
            request.script_name.clone().unwrap_or_else(|| request.language.default_script_name().to_owned());
        if script_name.len() > MAX_NAME_BYTES {
            return Err(RunError::BadRequest(format!(
                "script_name is {} bytes long; a file name may have at most {MAX_NAME_BYTES}",
                script_name.len()
            )));
        }
        if script_name.is_empty()
            || script_name.contains('/')
            || script_name == "."
            || script_name == ".."
            || script_name.contains('\0')
        {
            return Err(RunError::BadRequest(format!("script_name `{script_name}` must be a plain file name")));
        }
        let script_path = format!("{WORKSPACE}/{script_name}");
        let mut files = vec![PlacedFile {
            path: script_path.clone(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(request.code.as_bytes()),
            mode: 0o644,
        }];
        let mut upload_bytes = request.code.len() as u64;
        for upload in &request.files {
            let (file, size) = place_upload(upload)?;
            if file.path == script_path {
                // Code without a file name of its own is placed there (found by a trial: `bkg exe
                // --file main.py -c …` was told of a script it never gave).
                let whose = match request.script_name {
                    Some(_) => "the script",
                    None => "the code, which runs from there as it has no file name of its own",
                };
                let name = file.path.rsplit('/').next().unwrap_or_default();
                return Err(RunError::BadRequest(format!(
                    "file {} would replace {whose}: give the file another place (`--file SRC:data/{name}`)",
                    file.path
                )));
            }
            if files.iter().any(|placed| placed.path == file.path) {
                return Err(RunError::BadRequest(format!(
                    "file {} is given twice: two uploads would go to the same place",
                    file.path
                )));
            }
            upload_bytes += size;
            files.push(file);
        }
        if upload_bytes > MAX_UPLOAD_BYTES.min(limits.disk_bytes) {
            let size = bkg_schema::units::format_size;
            let fix = if limits.disk_bytes < MAX_UPLOAD_BYTES {
                format!(
                    "the sandbox's disk is {}: give fewer files, or ask for a larger disk limit",
                    size(limits.disk_bytes)
                )
            } else {
                format!("at most {} are uploaded with a run: give fewer files", size(MAX_UPLOAD_BYTES))
            };
            return Err(RunError::BadRequest(format!(
                "the script and its files come to {}, which do not fit: {fix}",
                size(upload_bytes)
            )));
        }

        let mut argv = vec![interpreter.to_string_lossy().into_owned(), script_path];
        for arg in &request.args {
            if arg.contains('\0') {
                return Err(RunError::BadRequest("arguments cannot contain NUL bytes".into()));
            }
            argv.push(arg.clone());
        }

        Ok(ValidatedRun {
            language: request.language,
            limits,
            namespace: "default".into(),
            order: GoOrder {
                argv,
                env: with_proxy(sandbox_env(&request.env)?, network.as_ref())?,
                cwd: WORKSPACE.into(),
                files,
                clear: Vec::new(),
                dirs: if request.return_out_dir {
                    vec![format!("{WORKSPACE}/{}", super::run::OUT_DIR)]
                } else {
                    Vec::new()
                },
                hold_after_exit: request.return_out_dir,
                cpus: cpu_count(limits.cpu_millis),
                terminal: None,
                stderr_to_stdout: request.stderr_to_stdout,
            },
            stdin: decode_stdin(request.stdin_base64.as_deref())?,
            persistent: None,
            keep: keep_paths(&request.keep)?,
            network,
            additions: Additions::default(),
            relay: Vec::new(),
            return_out_dir: request.return_out_dir,
            place: Place::OneShot,
        })
    }

    /// A session's interpreter in place of a checked command (`validate_exec`): `runner`, the
    /// program `language`'s interpreter runs (`-c` / `-e`), for as long as the agent lets any
    /// run last.
    pub fn session_run(
        &self,
        mut validated: ValidatedRun,
        language: bkg_schema::Language,
        runner: &str,
    ) -> Result<ValidatedRun, RunError> {
        let interpreter = self.interpreter(language)?.to_string_lossy().into_owned();
        let flag = match language {
            bkg_schema::Language::Python => "-c",
            bkg_schema::Language::Node => "-e",
        };
        validated.order.argv = vec![interpreter, flag.into(), runner.into()];
        validated.language = language;
        validated.limits.timeout_ms = self.config.max_limits.timeout_ms;
        // Its stdout is the runner's events, not anyone's output (each execution's goes to its
        // caller).
        validated.without_log();
        validated.place = Place::LongLived;
        Ok(validated)
    }

    /// Where the agent keeps the disk image, environment and logs of persistent sandbox `id`.
    pub fn sandbox_home(&self, namespace: &str, sandbox_id: &str) -> bkg_schema::paths::SandboxHome {
        bkg_schema::paths::SandboxHome::new(&self.config.state_dir, namespace, sandbox_id)
    }

    /// The project directory on the agent of the sandboxes of `namespace` that have no project
    /// of their own (made through the API or MCP).
    pub fn scratch_project_dir(&self, namespace: &str) -> PathBuf {
        self.config.state_dir.join("namespaces").join(namespace)
    }

    /// A command in a persistent sandbox: `/bin/sh -c COMMAND` in its project, read-only at
    /// /project (so `python main.py` finds the project's main.py), with its kept /workspace and
    /// the project's volumes bound in. A sandbox without a project of its own starts in
    /// /workspace instead, the only place it has files.
    ///
    /// `mapped_owner` is the local user a sandbox runs for: their ids alone are shown as the
    /// sandbox user's in the project and every volume, whoever owns them, so the sandbox reads
    /// and writes there no more than that user could. Without one (admins), each path's owner is.
    pub fn validate_exec(
        &self,
        definition: &SandboxDefinition,
        exec: ExecRequest,
        mapped_owner: Option<Owner>,
    ) -> Result<ValidatedRun, RunError> {
        let limits = self.resolve_limits(&definition.limits)?;
        let language = exec.language.unwrap_or(definition.language);
        self.interpreter(language)?;
        if exec.command.trim().is_empty() || exec.command.contains('\0') {
            return Err(RunError::BadRequest("the command is empty or contains a NUL byte".into()));
        }
        let project_dir = PathBuf::from(&definition.project_dir);
        let project_owner = match mapped_owner {
            Some(owner) => owner,
            None => owner_of("project directory", &project_dir)?,
        };
        let layout = bkg_schema::paths::ProjectLayout::new(&project_dir);
        let sandbox_id = bkg_schema::sandbox::sandbox_id(&definition.project_dir, &definition.name);
        let home = self.sandbox_home(&definition.namespace, &sandbox_id);
        super::workspace::adopt_legacy_image(&project_dir, &definition.name, &home, self.config.uid_base)?;
        if let Some(&(earlier, later)) =
            bkg_schema::sandbox::overlapping_volumes(definition.volumes.iter().map(|volume| volume.guest.as_str()))
                .first()
        {
            return Err(RunError::BadRequest(format!(
                "volume {later} ({}) is at or inside volume {earlier} ({}): give each volume a place of its own",
                definition.volumes[later].guest, definition.volumes[earlier].guest
            )));
        }
        let volumes = definition
            .volumes
            .iter()
            .map(|volume| {
                let guest = Path::new(&volume.guest);
                let inside_workspace = guest.starts_with(WORKSPACE) && guest != Path::new(WORKSPACE);
                if !Path::new(&volume.host).is_absolute() || !inside_workspace || has_parent_dir(guest) {
                    return Err(RunError::BadRequest(format!(
                        "volume {}:{} must bind an absolute host path under /workspace",
                        volume.host, volume.guest
                    )));
                }
                Ok(Volume {
                    host: volume.host.clone().into(),
                    guest: guest.to_path_buf(),
                    read_only: volume.read_only,
                    owner: match mapped_owner {
                        Some(owner) => owner,
                        None => owner_of("volume source", Path::new(&volume.host))?,
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let network = self.network_plan(&definition.network, &definition.ports)?;
        let mut env = definition.env.clone();
        env.extend(exec.env);
        Ok(ValidatedRun {
            language,
            limits,
            namespace: definition.namespace.clone(),
            order: GoOrder {
                // The shell catches SIGTERM (a trap that does nothing), so that when a stop asks
                // the command's process group to end (`ask_code_to_end`) it waits for the command
                // to end as it chooses (a service saving its work) instead of dying first and
                // taking the sandbox with it. On the command's own line: its errors keep their
                // line numbers.
                argv: vec!["/bin/sh".into(), "-c".into(), format!("trap : TERM; {}", exec.command)],
                env: with_proxy(sandbox_env(&env)?, network.as_ref())?,
                cwd: if project_dir == self.scratch_project_dir(&definition.namespace) {
                    WORKSPACE.into()
                } else {
                    PROJECT.into()
                },
                files: Vec::new(),
                clear: vec![TMP.into(), "/dev/shm".into()],
                dirs: Vec::new(),
                hold_after_exit: false,
                cpus: cpu_count(limits.cpu_millis),
                terminal: None,
                // A detached run's output is its log alone, one stream: in the order written.
                stderr_to_stdout: exec.stderr_to_stdout || exec.detach,
            },
            stdin: decode_stdin(exec.stdin_base64.as_deref())?,
            persistent: Some(PersistentRun {
                sandbox_id,
                disk: PersistentDisk {
                    image: home.disk_image(),
                    project: ProjectMounts {
                        dir: project_dir,
                        owner: project_owner,
                        state_dir: layout.state_dir(),
                        volumes,
                    },
                },
                log_dir: Some(home.logs_dir()),
                for_transfer: false,
            }),
            keep: kept_by_sandbox(&definition.keep)?,
            network,
            additions: Additions::default(),
            relay: Vec::new(),
            return_out_dir: false,
            // A detached run is a service: it runs until stopped.
            place: if exec.detach { Place::LongLived } else { Place::OneShot },
        })
    }
}

/// A run with hosts to reach finds its proxy in the environment; a proxy variable of the
/// caller's is refused, as it would send the run's clients past the proxy, where nothing leads.
fn with_proxy(
    mut env: Vec<(String, String)>,
    network: Option<&NetworkPlan>,
) -> Result<Vec<(String, String)>, RunError> {
    if network.is_some_and(|plan| !plan.allow.is_empty()) {
        refuse_proxy_variables(env.iter().map(|(key, _)| key.as_str()), "env")?;
        env.extend(proxy_env());
    }
    Ok(env)
}

/// Refuses the caller's variable that names a proxy in a run given network: that run's proxy is
/// the agent's (engine/egress.rs `proxy_env`). `given` says how the variables came (`env`,
/// `secret`), for the message.
fn refuse_proxy_variables<'a>(mut keys: impl Iterator<Item = &'a str>, given: &str) -> Result<(), RunError> {
    match keys.find_map(bkg_schema::egress::refused_with_network) {
        Some(why) => Err(RunError::BadRequest(format!("{given}: {why}"))),
        None => Ok(()),
    }
}

/// The scrubbed environment every sandbox starts from, plus the caller's variables.
pub(super) fn sandbox_env(extra: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, RunError> {
    let path = format!("{SHIM_DIR}:/usr/local/bin:/usr/bin:/bin");
    let mut env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("HOME", WORKSPACE),
        ("TMPDIR", TMP),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
        // Output must reach the caller as it is written, not when a buffer fills.
        ("PYTHONUNBUFFERED", "1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let mut total = 0;
    for (key, value) in extra {
        if !bkg_schema::is_env_key(key) {
            return Err(RunError::BadRequest(format!(
                "env: `{}` is not a valid variable name ({})",
                key.escape_debug(),
                bkg_schema::ENV_KEY_RULE
            )));
        }
        if value.contains('\0') {
            return Err(RunError::BadRequest(format!("env: the value of `{key}` contains a NUL byte")));
        }
        total += bkg_schema::env_bytes([(key, value)]);
        if total > MAX_ENV_BYTES {
            return Err(RunError::BadRequest(format!(
                "env: the variables take more than {} (names and values together): give large data as a file \
                 (bkg exe --file, bkg cp) and its path in a variable",
                bkg_schema::units::format_size(MAX_ENV_BYTES as u64)
            )));
        }
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.clone()));
    }
    Ok(env)
}

fn decode_stdin(encoded: Option<&str>) -> Result<Option<Vec<u8>>, RunError> {
    encoded
        .map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| RunError::BadRequest("stdin_base64 is not valid base64".into()))
        })
        .transpose()
}

/// Who owns a project or volume on the host: the sandbox sees that owner's files as its own.
fn owner_of(what: &str, path: &Path) -> Result<Owner, RunError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Owner { uid: meta.uid(), gid: meta.gid() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(RunError::BadRequest(format!("{what} {} does not exist", path.display())))
        }
        Err(error) => Err(RunError::BadRequest(format!("cannot inspect {what} {}: {error}", path.display()))),
    }
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|component| matches!(component, Component::ParentDir))
}

/// Checks an upload's destination and content; returns where it goes and its size.
fn place_upload(upload: &FileUpload) -> Result<(PlacedFile, u64), RunError> {
    let requested = Path::new(&upload.path);
    let absolute = if requested.is_absolute() { requested.to_path_buf() } else { Path::new(WORKSPACE).join(requested) };
    let too_long = absolute.as_os_str().len() > MAX_PATH_BYTES
        || absolute.components().any(|component| component.as_os_str().len() > MAX_NAME_BYTES);
    if too_long {
        return Err(RunError::BadRequest(format!(
            "files: the path `{}…` is too long (at most {MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per name)",
            upload.path.chars().take(40).collect::<String>()
        )));
    }
    let escapes = has_parent_dir(&absolute);
    let allowed_root = [WORKSPACE, TMP].iter().any(|root| absolute.starts_with(root) && absolute != Path::new(root));
    if escapes || !allowed_root || upload.path.contains('\0') {
        return Err(RunError::BadRequest(format!(
            "files: destination `{}` must be inside /workspace or /tmp, without `..`",
            upload.path
        )));
    }
    let content = base64::engine::general_purpose::STANDARD
        .decode(&upload.content_base64)
        .map_err(|_| RunError::BadRequest(format!("files: content of `{}` is not valid base64", upload.path)))?;
    let mode = if upload.executable { 0o755 } else { 0o644 };
    Ok((
        PlacedFile {
            path: absolute.to_string_lossy().into_owned(),
            content_base64: upload.content_base64.clone(),
            mode,
        },
        content.len() as u64,
    ))
}

/// The whole CPUs a limit of `cpu_millis` reaches into: 1000 → 1, 1500 → 2.
pub(super) fn cpu_count(cpu_millis: u64) -> usize {
    usize::try_from(cpu_millis.div_ceil(1000)).unwrap_or(usize::MAX).max(1)
}

/// The paths a temporary run keeps: /workspace/out and those it asked for, relative to
/// /workspace, with any path inside another left out (its files are kept once).
/// What a persistent sandbox's run keeps as its files: its `keep` paths with /workspace/out, or,
/// without any (its /workspace stays between runs anyway), only its long output.
fn kept_by_sandbox(asked: &[String]) -> Result<Vec<String>, RunError> {
    match asked {
        [] => Ok(Vec::new()),
        asked => keep_paths(asked),
    }
}

fn keep_paths(asked: &[String]) -> Result<Vec<String>, RunError> {
    use bkg_schema::artefacts::{DEFAULT_KEEP, MAX_KEEP_PATHS, keep_path};
    if asked.len() > MAX_KEEP_PATHS {
        return Err(RunError::BadRequest(format!(
            "a run may keep at most {MAX_KEEP_PATHS} paths, not {}",
            asked.len()
        )));
    }
    let mut paths = vec![DEFAULT_KEEP.to_owned()];
    for path in asked {
        paths.push(keep_path(path).map_err(RunError::BadRequest)?);
    }
    paths.sort();
    paths.dedup();
    let inside = |path: &String, other: &String| path.starts_with(&format!("{other}/"));
    let all = paths.clone();
    paths.retain(|path| !all.iter().any(|other| inside(path, other)));
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(path: &str) -> FileUpload {
        FileUpload { path: path.into(), content_base64: "aGk=".into(), executable: false }
    }

    #[test]
    fn the_fix_for_limits_above_the_maximum_names_each_and_its_flag() {
        assert_eq!(limit_fix(&["pids"], false), "ask for fewer");
        assert_eq!(
            limit_fix(&["memory", "timeout"], false),
            "ask for less, or have the agent started with a higher --max-memory and --max-timeout"
        );
        assert_eq!(limit_fix(&["pids"], true), "give the sandbox's limits.pids (cave.yaml's) at most that");
        assert_eq!(
            limit_fix(&["cpus", "memory", "pids"], true),
            "give the sandbox's limits.cpus, limits.memory and limits.pids (cave.yaml's) at most those, or have \
             the agent started with a higher --max-cpus and --max-memory"
        );
    }

    #[test]
    fn uploads_land_in_workspace_or_tmp_only() {
        let placed = place_upload(&upload("data/in.csv")).map(|(file, _)| file.path).ok();
        assert_eq!(placed.as_deref(), Some("/workspace/data/in.csv"));
        let placed = place_upload(&upload("/tmp/x")).map(|(file, _)| file.path).ok();
        assert_eq!(placed.as_deref(), Some("/tmp/x"));
        for bad in ["../etc/passwd", "/etc/passwd", "/workspace/../etc/x", "/workspace", "/tmpfoo/x", "a/../../b"] {
            assert!(place_upload(&upload(bad)).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn overlong_paths_are_refused_with_the_field_named() {
        let long_name = "a".repeat(MAX_NAME_BYTES + 1);
        let deep = vec!["d"; 3000].join("/");
        for bad in [long_name.as_str(), deep.as_str()] {
            let refused = place_upload(&upload(bad));
            assert!(matches!(&refused, Err(RunError::BadRequest(message)) if message.starts_with("files:")));
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let bad = FileUpload { path: "x".into(), content_base64: "!!".into(), executable: false };
        assert!(place_upload(&bad).is_err());
    }

    #[test]
    fn env_values_with_nul_and_bad_names_are_refused() {
        let with = |key: &str, value: &str| BTreeMap::from([(key.to_owned(), value.to_owned())]);
        assert!(sandbox_env(&with("GOOD_1", "x")).is_ok());
        assert!(sandbox_env(&with("A", "x\0y")).is_err());
        assert!(sandbox_env(&with("1A", "x")).is_err());
        assert!(sandbox_env(&with("A=B", "x")).is_err());
        assert!(sandbox_env(&with("BIG", &"x".repeat(MAX_ENV_BYTES))).is_err());
    }

    #[test]
    fn a_run_keeps_out_and_the_paths_it_names_once() -> Result<(), RunError> {
        assert_eq!(keep_paths(&[])?, ["out"]);
        let asked = ["/workspace/out/x".to_owned(), "model".to_owned(), "model/a".to_owned(), "logs/".to_owned()];
        assert_eq!(keep_paths(&asked)?, ["logs", "model", "out"]);
        assert!(matches!(keep_paths(&["../etc".to_owned()]), Err(RunError::BadRequest(_))));
        Ok(())
    }
}
