//! The install sandbox: a run of `python -m pip install --target` (Python) or `npm ci` (Node.js)
//! whose only network is the package index (`relay.rs`) and whose one writable host directory
//! is the environment being built. pip comes with the host's Python runtime (Debian's
//! python3-pip) and npm with its Node.js, so no installer binary has to be bound in; `--target`
//! installs beside, never into, the runtime (and is not refused as an "externally managed"
//! install), and `npm ci --prefix` into the environment's own `node_modules`. Everything else of
//! it is an ordinary sandbox: the same plan, limits, seccomp and Landlock as any run.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bkg_schema::{Language, LimitOverrides, Limits, MIB};

use super::control::GoOrder;
use super::plan::{Additions, Owner, ProjectMounts, Volume, WORKSPACE};
use super::relay::RelayTarget;
use super::request::{PersistentRun, Place, RunError, ValidatedRun, cpu_count, sandbox_env};
use super::sandbox::PersistentDisk;
use super::{Engine, EngineError};

/// The agent-wide package index (`--package-index`): where installs download from, and the
/// relays and host names an install sandbox gets to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageIndex {
    pub url: String,
    pub relays: Vec<RelayTarget>,
    pub hosts: Vec<(String, Ipv4Addr)>,
}

/// Where PyPI keeps the files its index links to: reached as well when the index is PyPI's.
const PYPI_FILES: &str = "files.pythonhosted.org";

impl PackageIndex {
    /// The URL as anyone may see it: its user part (a password the index takes) as `***`
    /// (found by a new-user trial: every installing run was told the agent's index password).
    pub fn shown(&self) -> String {
        crate::envs::without_credentials(&self.url)
    }

    /// Checks an index URL: http or https, with a host that is a name or a loopback address
    /// (the sandbox's relay listens on its own loopback).
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{text}` must be an http or https URL"));
        }
        let port = url.port_or_known_default().ok_or_else(|| format!("`{text}` has no port"))?;
        let mut names = Vec::new();
        let mut relays = Vec::new();
        match url.host() {
            Some(url::Host::Ipv4(address)) if address.is_loopback() => {
                relays.push(RelayTarget { host: address.to_string(), port, inside: address });
            }
            Some(url::Host::Domain("localhost")) => {
                relays.push(RelayTarget { host: "localhost".into(), port, inside: Ipv4Addr::LOCALHOST });
            }
            Some(url::Host::Domain(name)) => {
                names.push((name.to_owned(), port));
                if name == "pypi.org" {
                    names.push((PYPI_FILES.to_owned(), 443));
                }
            }
            _ => return Err(format!("`{text}`: the index must be named by a host name or a loopback IPv4 address")),
        }
        let mut hosts = Vec::new();
        for (number, (name, port)) in names.into_iter().enumerate() {
            // 127.0.0.2 onwards: 127.0.0.1 stays the sandbox's own localhost.
            let inside = Ipv4Addr::new(127, 0, 0, 2 + number as u8);
            hosts.push((name.clone(), inside));
            relays.push(RelayTarget { host: name, port, inside });
        }
        Ok(Self { url: text.to_owned(), relays, hosts })
    }
}

/// The directories of one environment's build: `project/` (read-only at /project: Python's
/// requirements.txt), `site/` (the environment, written at /workspace/site; Node's package.json
/// and lockfile, beside the `node_modules` npm makes), `disk.img`, `logs/`.
pub struct InstallDirs {
    pub work: PathBuf,
}

impl InstallDirs {
    pub fn project(&self) -> PathBuf {
        self.work.join("project")
    }

    pub fn site(&self) -> PathBuf {
        self.work.join("site")
    }
}

/// Where the environment being built is written, inside.
const SITE: &str = "/workspace/site";

/// The requirements pip reads, inside: the `requirements.txt` envs.rs writes into [`PROJECT`](super::plan::PROJECT).
pub const REQUIREMENTS_FILE: &str = "/project/requirements.txt";

/// An install may take longer than a run's default minute; the agent's maximum still bounds it.
/// Its disk is the agent's default, or the run's own when that is larger (`INSTALL_LIMITS
/// .disk_bytes` is replaced): pip stages the whole environment in the sandbox's /tmp before
/// moving it to the target, so that bounds an environment's size, and a run given a larger
/// disk (`--disk`) may install larger packages.
const INSTALL_LIMITS: Limits =
    Limits { cpu_millis: 1000, memory_bytes: 1024 * MIB, timeout_ms: 600_000, disk_bytes: 0, pids: 256 };

/// The install sandbox's limits: [`INSTALL_LIMITS`], its disk the agent's default or the run's
/// when larger, all within the agent's maximum and the caps of the caller whose run needs it
/// (found by a new-user trial: a local user capped at 256 MiB and 10 s had installs of 1 GiB
/// and 10 minutes go on after their Ctrl-C).
fn install_limits(agent_max: &Limits, default_disk: u64, run_disk: u64, caller_caps: &LimitOverrides) -> Limits {
    let max = agent_max.at_most(&agent_max.with(caller_caps));
    Limits { disk_bytes: default_disk.max(run_disk), ..INSTALL_LIMITS }.at_most(&max)
}

impl Engine {
    /// The run that installs `dirs`' packages into its `site/` from `index`.
    pub fn install_run(
        &self,
        language: Language,
        dirs: &InstallDirs,
        index: &PackageIndex,
        namespace: &str,
        id: &str,
        (run_disk_bytes, caller_caps): (u64, &LimitOverrides),
    ) -> Result<ValidatedRun, RunError> {
        let interpreter = self.interpreter(language)?.to_string_lossy().into_owned();
        let limits =
            install_limits(&self.config.max_limits, self.config.default_limits.disk_bytes, run_disk_bytes, caller_caps);
        let root = Owner { uid: 0, gid: 0 };
        let npm = self.config.npm.to_string_lossy();
        let argv: Vec<String> = match language {
            Language::Python => [
                interpreter.as_str(),
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--progress-bar",
                "off",
                "--index-url",
                &index.url,
                "--target",
                SITE,
                "-r",
                REQUIREMENTS_FILE,
            ]
            .map(str::to_owned)
            .to_vec(),
            // No package's own install scripts run: what is installed is files, never code run
            // with the install's network.
            // The system's CA store, as pip uses, not Node's own bundle: an npm registry behind a
            // private or intercepting CA is reached as the host's trust says.
            Language::Node => [
                interpreter.as_str(),
                "--use-openssl-ca",
                &npm,
                "ci",
                "--prefix",
                SITE,
                "--registry",
                &index.url,
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
                // Each download as it happens, as pip says each package: npm's default level is
                // silent until its summary, minutes later on a slow registry.
                "--loglevel",
                "http",
                "--cache",
                "/tmp/npm-cache",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        Ok(ValidatedRun {
            language,
            limits,
            namespace: namespace.to_owned(),
            order: GoOrder {
                argv,
                env: sandbox_env(&Default::default())?,
                cwd: WORKSPACE.into(),
                files: Vec::new(),
                clear: Vec::new(),
                cpus: cpu_count(limits.cpu_millis),
                terminal: None,
                dirs: Vec::new(),
                hold_after_exit: false,
                stderr_to_stdout: false,
            },
            stdin: None,
            persistent: Some(PersistentRun {
                sandbox_id: id.to_owned(),
                disk: PersistentDisk {
                    image: dirs.work.join("disk.img"),
                    project: ProjectMounts {
                        dir: dirs.project(),
                        owner: root,
                        // Nothing of the project is hidden: it holds the requirements only.
                        state_dir: dirs.work.clone(),
                        volumes: vec![Volume { host: dirs.site(), guest: SITE.into(), read_only: false, owner: root }],
                    },
                },
                log_dir: Some(dirs.work.join("logs")),
                for_transfer: false,
            }),
            additions: Additions { hosts: index.hosts.clone(), ..Additions::default() },
            relay: index.relays.clone(),
            // An install keeps no files and has no network but its relays to the index.
            keep: Vec::new(),
            network: None,
            return_out_dir: false,
            place: Place::OneShot,
        })
    }

    /// Makes the directories of an install in `work`, with the installer's `files`: in
    /// `project/` for pip, in `site/` for npm (whose `ci --prefix` reads them there).
    pub fn make_install_dirs(
        work: &Path,
        language: Language,
        files: &[(&'static str, String)],
    ) -> Result<InstallDirs, EngineError> {
        let dirs = InstallDirs { work: work.to_path_buf() };
        for dir in [dirs.project(), dirs.site(), work.join("logs")] {
            std::fs::create_dir_all(&dir).map_err(EngineError::io(format!("create {}", dir.display())))?;
        }
        // Runs of any sandbox user read the environment: it is theirs to read, never to write
        // (mounted read-only), whatever the agent's umask made it.
        let readable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dirs.site(), readable).map_err(EngineError::io("make the environment readable"))?;
        let into = match language {
            Language::Python => dirs.project(),
            Language::Node => dirs.site(),
        };
        for (name, text) in files {
            let file = into.join(name);
            std::fs::write(&file, text).map_err(EngineError::io(format!("write {}", file.display())))?;
        }
        Ok(dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's maxima by default (`--max-*`).
    const AGENT_MAX: Limits = Limits {
        cpu_millis: 2000,
        memory_bytes: 8192 * MIB,
        timeout_ms: 3_600_000,
        disk_bytes: 10_240 * MIB,
        pids: 256,
    };

    #[test]
    fn an_install_has_the_default_disk_or_the_runs_larger_one_within_the_maximum() {
        let mib = |n: u64| n * MIB;
        let max = AGENT_MAX;
        let disk = |run: u64| install_limits(&max, mib(500), run, &LimitOverrides::default()).disk_bytes;
        assert_eq!(disk(mib(64)), mib(500));
        assert_eq!(disk(mib(3072)), mib(3072));
        assert_eq!(disk(mib(20_480)), mib(10_240));
    }

    #[test]
    fn an_install_is_held_to_the_caps_of_the_caller_who_needs_it() {
        let max = AGENT_MAX;
        let uncapped = install_limits(&max, 500 * MIB, 500 * MIB, &LimitOverrides::default());
        assert_eq!(uncapped, Limits { disk_bytes: 500 * MIB, ..INSTALL_LIMITS });
        let caps = LimitOverrides {
            cpu_millis: Some(500),
            memory_bytes: Some(256 * MIB),
            timeout_ms: Some(10_000),
            disk_bytes: Some(300 * MIB),
            pids: None,
        };
        let capped = install_limits(&max, 500 * MIB, 64 * MIB, &caps);
        assert_eq!(
            capped,
            Limits { cpu_millis: 500, memory_bytes: 256 * MIB, timeout_ms: 10_000, disk_bytes: 300 * MIB, pids: 256 }
        );
        // A cap above the agent's own maximum is no way past it.
        let low_max = Limits { memory_bytes: 128 * MIB, ..max };
        assert_eq!(install_limits(&low_max, 500 * MIB, 0, &caps).memory_bytes, 128 * MIB);
    }

    #[test]
    fn pip_reads_the_requirements_file_the_project_directory_is_given() {
        use crate::engine::plan::PROJECT;
        let written = crate::envs::EnvRequest::python(vec!["six".into()]);
        let name = written.files.first().map(|(name, _)| *name);
        assert_eq!(Some(REQUIREMENTS_FILE), name.map(|name| format!("{PROJECT}/{name}")).as_deref());
    }

    #[test]
    fn a_loopback_index_is_relayed_at_its_own_address_and_pypi_with_its_file_host() {
        let local = PackageIndex::parse("http://127.0.0.1:8123/simple/");
        assert_eq!(
            local.map(|index| index.relays),
            Ok(vec![RelayTarget { host: "127.0.0.1".into(), port: 8123, inside: Ipv4Addr::LOCALHOST }])
        );
        let pypi = PackageIndex::parse("https://pypi.org/simple");
        let Ok(pypi) = pypi else { panic!("PyPI's URL must parse") };
        assert_eq!(
            pypi.hosts,
            [("pypi.org".into(), Ipv4Addr::new(127, 0, 0, 2)), (PYPI_FILES.into(), Ipv4Addr::new(127, 0, 0, 3))]
        );
        assert!(pypi.relays.iter().all(|relay| relay.port == 443));
        assert!(PackageIndex::parse("http://10.0.0.5/simple").is_err());
        assert!(PackageIndex::parse("ftp://mirror/simple").is_err());
    }
}
