//! One sandbox seen from the agent: prepared ahead (disk image, cgroup, init waiting in its
//! namespaces), then given code once, then disposed of with proof that nothing is left.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

use super::capacity::DiskGrant;
use super::cgroup::{CgroupError, CgroupLimits, RunCgroup};
use super::control::{self, FromInit, ToInit};
use super::plan::{Additions, PlanInputs, ProjectMounts, Runtimes, SandboxPlan};
use super::{Engine, EngineError, IdSlot};
use crate::ids::new_id;

/// How long building a sandbox may take before the agent gives up on it.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);

/// A persistent sandbox's disk and project, as opposed to a fresh disk thrown away after the run.
#[derive(Debug, Clone)]
pub struct PersistentDisk {
    pub image: PathBuf,
    pub project: ProjectMounts,
}

pub struct PreparedSandbox {
    pub id: String,
    pub disk_bytes: u64,
    run_dir: PathBuf,
    disk_image: PathBuf,
    /// The loop device pid 1 attached the disk to (`FromInit::Ready`).
    disk_device: PathBuf,
    pub cgroup: Box<dyn RunCgroup>,
    /// The limits its cgroup holds.
    limits_held: CgroupLimits,
    /// Whether its cgroup still has the background CPU weight of a pool sandbox being prepared.
    background: bool,
    /// The runtime whose interpreter pid 1 started ahead (pool sandboxes, engine/prestart.rs).
    pub started_ahead: Option<bkg_schema::Language>,
    /// Host pid of the sandbox's pid 1: our child until `dispose` reaps it, so the pid cannot
    /// be reused before then and killing it is always safe.
    pid_one: Pid,
    pub control: control::ControlSocket,
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    host_ids: IdSlot,
    /// This sandbox's share of the agent's disk budget, returned when it is gone.
    _disk: DiskGrant,
    /// Its disk's use, with its persistent image's hold, kept until the sandbox is disposed of
    /// (`disk::DiskUse`); the disposal waits for the clones given out to be dropped.
    disk_use: super::disk::DiskUse,
    disk_users: super::disk::DiskUsers,
    /// Where a temporary disk image goes once the sandbox is gone: emptied, to the next
    /// sandbox of its size (`DiskTemplates::recycle`). `None` for a persistent one.
    recycle_into: Option<Arc<super::disk::DiskTemplates>>,
}

pub fn cgroup_limits(limits: &bkg_schema::Limits) -> CgroupLimits {
    CgroupLimits { cpu_millis: limits.cpu_millis, memory_bytes: limits.memory_bytes, pids_max: limits.pids }
}

fn nonblocking_pipe() -> Result<(OwnedFd, OwnedFd), EngineError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| EngineError::io("create pipe")(errno.into()))
}

/// A pipe for one of the code's standard streams, given to the code's host uid: a process may
/// open its stdin, stdout or stderr again by name (`/dev/stdout`, `> /dev/stderr` in a shell
/// script, `/proc/self/fd/1`) only when it owns the pipe, as it does one its shell made.
fn code_pipe(owner: u32) -> Result<(OwnedFd, OwnedFd), EngineError> {
    let (read, write) = nonblocking_pipe()?;
    nix::unistd::fchown(&read, Some(nix::unistd::Uid::from_raw(owner)), Some(nix::unistd::Gid::from_raw(owner)))
        .map_err(|errno| EngineError::io("give a pipe to the sandbox user")(errno.into()))?;
    Ok((read, write))
}

/// What a run's stdout and stderr pipes hold before the agent reads them. Node keeps what a
/// pipe did not take at once for later and drops it at `process.exit()`: with a pipe's default
/// 64 KiB, `bkg exe gen.js > out.json` kept 64 KiB of a 142 KB JSON, where bare node, writing to
/// the file itself, kept all of it (found by a new-user trial). The pages are taken as they are
/// written, and charged to the sandbox's memory.
const OUTPUT_PIPE_CAPACITY: i32 = 1 << 20;

/// A pipe for the code's stdout or stderr: a code pipe that holds `OUTPUT_PIPE_CAPACITY`.
fn output_pipe(owner: u32) -> Result<(OwnedFd, OwnedFd), EngineError> {
    let (read, write) = code_pipe(owner)?;
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_CAPACITY))
        .map_err(|errno| EngineError::io("size an output pipe")(errno.into()))?;
    Ok((read, write))
}

/// How a default sandbox (no persistent disk, nothing added) is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    /// For the warm pool, ahead of any run: at idle priority (`SandboxPlan::background`), with
    /// an interpreter started ahead, of the language the latest runs call for
    /// (`pool::LanguageMix`).
    Ahead,
    /// For a run of this language that found the pool empty and waits: at normal priority,
    /// with its interpreter started ahead as well, so the run still takes a zygote's fork
    /// rather than a cold start.
    ForWaitingRun(bkg_schema::Language),
    /// Nothing ahead: the code starts its own interpreter when the run begins.
    Plain,
}

impl PreparedSandbox {
    pub async fn prepare(
        engine: &Arc<Engine>,
        disk_bytes: u64,
        persistent: Option<&PersistentDisk>,
        additions: &Additions,
    ) -> Result<Self, EngineError> {
        Self::prepare_as(engine, disk_bytes, (persistent, additions), Preparation::Plain).await
    }

    /// A default sandbox (no persistent disk, nothing added), prepared as `preparation` says.
    pub async fn prepare_default(
        engine: &Arc<Engine>,
        disk_bytes: u64,
        preparation: Preparation,
    ) -> Result<Self, EngineError> {
        Self::prepare_as(engine, disk_bytes, (None, &Additions::default()), preparation).await
    }

    async fn prepare_as(
        engine: &Arc<Engine>,
        disk_bytes: u64,
        (persistent, additions): (Option<&PersistentDisk>, &Additions),
        preparation: Preparation,
    ) -> Result<Self, EngineError> {
        let id = new_id("sbx");
        let run_dir = engine.runs_dir().join(&id);
        // Emptied disk images kept for reuse hold host space, which a budget that follows the
        // free space counts as taken.
        let disk = match engine.capacity.grant_disk(disk_bytes) {
            Err(_) if engine.capacity.budget_follows_free_space() && engine.disks.remove_spares() > 0 => {
                engine.capacity.grant_disk(disk_bytes)?
            }
            granted => granted?,
        };
        let ids = engine.ids.allocate()?;
        let result =
            Self::build(engine, &id, &run_dir, disk_bytes, (persistent, additions, preparation), ids, disk).await;
        if let Err(error) = &result {
            tracing::warn!(sandbox = %id, %error, "preparing a sandbox failed");
            // Whatever was made for the failed attempt goes; the cgroup was removed by `build`.
            let _ = tokio::fs::remove_dir_all(&run_dir).await;
        }
        result
    }

    async fn build(
        engine: &Arc<Engine>,
        id: &str,
        run_dir: &Path,
        disk_bytes: u64,
        (persistent, additions, preparation): (Option<&PersistentDisk>, &Additions, Preparation),
        ids: IdSlot,
        disk: DiskGrant,
    ) -> Result<Self, EngineError> {
        let background = preparation == Preparation::Ahead;
        use super::plan::{RUN_DIR_DISK, RUN_DIR_IMAGE, RUN_DIR_ROOT};
        // A temporary sandbox takes the directory of one gone before it, its image emptied, if
        // one is kept (`DiskTemplates::recycle`).
        let recycled = persistent.is_none() && engine.disks.take_spare(run_dir, disk_bytes).await;
        if !recycled {
            for dir in [run_dir.join(RUN_DIR_ROOT), run_dir.join(RUN_DIR_DISK)] {
                tokio::fs::create_dir_all(&dir).await.map_err(EngineError::io(format!("create {}", dir.display())))?;
            }
        }
        let disk_image = match persistent {
            Some(persistent) => {
                let owner = ids.ids().sandbox;
                engine
                    .disks
                    .with_host_room(|| super::disk::ensure_persistent_image(&persistent.image, disk_bytes, owner))
                    .await?;
                persistent.image.clone()
            }
            None => {
                let image = run_dir.join(RUN_DIR_IMAGE);
                if !recycled {
                    engine.disks.make_image(&image, disk_bytes).await?;
                }
                image
            }
        };

        let limits = cgroup_limits(&engine.config.default_limits);
        let cgroup = engine.cgroups.create(id, &limits)?;
        if background && let Err(error) = cgroup.set_background(true) {
            let _ = cgroup.remove();
            return Err(error.into());
        }
        let mut plan = SandboxPlan::new(
            &engine.host,
            PlanInputs {
                agent_pid: engine.agent_pid,
                run_dir: run_dir.to_path_buf(),
                disk_image: disk_image.clone(),
                runtimes: Runtimes { python: engine.config.python.clone(), node: engine.config.node.clone() },
                project: persistent.map(|p| p.project.clone()),
                hostname: "bkg".into(),
                ids: ids.ids(),
                cgroup_joins: cgroup.join_files(),
                additions: additions.clone(),
            },
        );
        plan.background = background;
        // A pool sandbox, and one for a run waiting for the pool, starts an interpreter ahead.
        let language = engine.prestart_language(preparation);
        // Ahead of any run, a moment's wait for a zygote being started saves starting a Python
        // here; a run waiting for this sandbox does not wait for it.
        if preparation == Preparation::Ahead && language == Some(bkg_schema::Language::Python) {
            engine.zygote_settled().await;
        }
        if let Some(language) = language
            && let Ok(prestart) = engine.prestart_plan(language)
        {
            plan.prestart = Some(prestart);
            if language == bkg_schema::Language::Python {
                plan.zygote = engine.zygote_socket();
            }
        }
        let started_ahead = plan.prestart.as_ref().map(|prestart| prestart.language);
        let zygote = plan.zygote.clone();
        let spawned = spawn_init(plan, engine.sandbox_init.as_deref(), &engine.init_spawner).await;
        if let Some(language) = language {
            engine.prepared(language);
        }
        match spawned {
            Ok(Spawned { pid_one, disk_device, control, stdin, stdout, stderr }) => {
                let (disk_use, disk_users) = super::disk::DiskUse::new();
                Ok(Self {
                    id: id.to_owned(),
                    disk_bytes,
                    run_dir: run_dir.to_path_buf(),
                    disk_image,
                    disk_device,
                    cgroup,
                    limits_held: limits,
                    background,
                    started_ahead,
                    pid_one,
                    control,
                    stdin: Some(stdin),
                    stdout,
                    stderr,
                    host_ids: ids,
                    _disk: disk,
                    disk_use,
                    disk_users,
                    recycle_into: persistent.is_none().then(|| Arc::clone(&engine.disks)),
                })
            }
            Err(error) => {
                if let (EngineError::Prepare { stage, .. }, Some(socket)) = (&error, &zygote)
                    && stage == super::init::ZYGOTE_SILENT
                {
                    engine.zygote_did_not_answer(socket);
                }
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = cgroup.kill_all();
                    cgroup.remove()
                })
                .await;
                Err(error)
            }
        }
    }

    /// Gives the cgroup `limits`, unless it holds them already: most runs take the defaults a
    /// sandbox is made with, and writing eight cgroup files again is on the run's waiting path.
    /// A pool sandbox's cgroup gets the default CPU weight back.
    pub fn apply_limits(&mut self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        if *limits != self.limits_held {
            self.cgroup.set_limits(limits)?;
            self.limits_held = *limits;
        }
        if self.background {
            self.cgroup.set_background(false)?;
            self.background = false;
        }
        Ok(())
    }

    /// Host pid of the sandbox's pid 1, whose namespaces are the sandbox's.
    pub fn pid_one(&self) -> i32 {
        self.pid_one.as_raw()
    }

    /// Why this prepared sandbox can no longer take a run, if it cannot: its pid 1 has ended
    /// (killed from outside) or its cgroup is gone (removed by someone else).
    pub fn broken(&self) -> Option<&'static str> {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        // WNOWAIT leaves an ended pid 1 unreaped: `dispose` reaps it, and until then its pid
        // cannot be reused.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid_one), flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(_) => return Some("its pid 1 has ended"),
        }
        if !self.cgroup.procs_paths().iter().all(|procs| procs.exists()) {
            return Some("its cgroup is gone");
        }
        None
    }

    /// Keeps `hold` of its persistent disk image until it is disposed of.
    pub fn keep_disk_hold(&mut self, hold: Option<super::disk::DiskHold>) {
        self.disk_use.hold_image(hold);
    }

    /// Its disk's use, for what may keep the disk open beyond it.
    pub fn disk_use(&self) -> super::disk::DiskUse {
        self.disk_use.clone()
    }

    /// How the agent reaches this sandbox's files and processes while it lives.
    pub fn access(&self) -> super::handle::SandboxAccess {
        super::handle::SandboxAccess { pid_one: self.pid_one.as_raw(), owner: self.host_ids.ids().sandbox }
    }

    /// Ends every process of the sandbox now: killing pid 1 makes the kernel kill the rest of
    /// its pid namespace.
    pub fn kill(&self) {
        if let Err(errno) = nix::sys::signal::kill(self.pid_one, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(sandbox = %self.id, %errno, "could not kill pid 1");
        }
    }

    /// Asks the run's code to end (SIGTERM to its process group, as `docker stop` signals a
    /// container's): the agent is stopping, or a caller stopped the run, and the code may end
    /// cleanly within the grace. The group, not the process alone: a script's command runs under
    /// a shell (engine/request.rs), and the code's process leads its own group (engine/init.rs
    /// makes it a session leader). Code on a terminal is hung up instead (SIGHUP, as when a
    /// terminal closes): an interactive shell ignores SIGTERM but ends on SIGHUP, handing it on
    /// to its jobs (found by a new-user trial: a `bkg shell` whose client was killed, or stopped
    /// with the agent, held its sandbox for the whole grace).
    pub fn ask_code_to_end(&self, on_terminal: bool) {
        let Some(code) = code_pid(self.pid_one()) else { return };
        let signal = match on_terminal {
            true => nix::sys::signal::Signal::SIGHUP,
            false => nix::sys::signal::Signal::SIGTERM,
        };
        if let Err(errno) = nix::sys::signal::killpg(Pid::from_raw(code), signal) {
            tracing::warn!(sandbox = %self.id, %errno, %signal, code, "could not ask the code to end");
        }
        // A closing terminal's hangup continues the group too (the kernel's `tty_vhangup`): a
        // shell stopped by job control would otherwise keep the hangup pending through the grace.
        if on_terminal {
            let _ = nix::sys::signal::killpg(Pid::from_raw(code), nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// Closes the agent's end of the code's stdout, the only reader it has: the code's next write
    /// to it fails (EPIPE, SIGPIPE), as in a pipeline whose reader went away. What is read from
    /// `stdout` after is an end of file.
    pub fn close_stdout(&mut self) -> Result<(), EngineError> {
        let (ended, writer) = nonblocking_pipe()?;
        drop(writer);
        self.stdout = pipe::Receiver::from_owned_fd(set_nonblocking(ended)?).map_err(EngineError::io("stdout pipe"))?;
        Ok(())
    }

    /// What the sandbox's disk holds now, seen from the agent through pid 1's root: the code may
    /// free space again before it exits, so the end report alone can miss a full disk, and a run
    /// the agent ends itself gets no end report.
    pub fn workspace_usage(&self) -> Option<super::disk::DiskFill> {
        super::disk::usage_at(&format!("/proc/{}/root{}", self.pid_one, super::plan::WORKSPACE))
    }

    /// Kills what is left, reaps pid 1, removes the cgroup, waits for the loop device to be
    /// released and deletes the sandbox's directory. Returns whether all of it is confirmed gone.
    /// The sandbox's /workspace, held open from before the code runs so that its files can be
    /// kept after the run, however it ended (artefacts/collect.rs).
    pub fn open_workspace(&self) -> std::io::Result<crate::artefacts::collect::Workspace> {
        crate::artefacts::collect::Workspace::open(self.pid_one.as_raw())
    }

    pub async fn dispose(self) -> bool {
        self.kill();
        drop(self.control);
        let pid_one = self.pid_one;
        let _ = tokio::task::spawn_blocking(move || {
            while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(pid_one, None) {}
        })
        .await;
        let id = self.id.clone();
        let cgroup = self.cgroup;
        // Nothing should be left once pid 1 is gone.
        let cgroup_removed =
            tokio::task::spawn_blocking(move || super::cgroup::empty_and_remove(cgroup.as_ref())).await;
        let cgroup_removed = match cgroup_removed {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(sandbox = %id, %error, "cgroup not removed");
                false
            }
            Err(_) => false,
        };

        // A file transfer that outlasts the run keeps the disk's files open: the device can be
        // freed only after it ends.
        let mut users = self.disk_users;
        drop(self.disk_use);
        if users.any() {
            tracing::debug!(sandbox = %id, "disposal waits for a file transfer to close the disk");
        }
        users.gone().await;
        // The kernel frees the device once the sandbox's mount namespace, the disk's only user,
        // is gone, which may be just after pid 1 is reaped; nothing announces it.
        let mut loop_released = false;
        for _ in 0..200 {
            if !super::loopdev::is_backed_by(&self.disk_device, &self.disk_image) {
                loop_released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !loop_released {
            tracing::warn!(sandbox = %id, "loop device still attached");
        }
        let recycled = match &self.recycle_into {
            Some(disks) if loop_released && holds_only_what_build_made(&self.run_dir).await => {
                disks.recycle(&self.run_dir, super::plan::RUN_DIR_IMAGE, self.disk_bytes).await
            }
            _ => false,
        };
        let dir_removed = recycled
            || match tokio::fs::remove_dir_all(&self.run_dir).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(sandbox = %id, %error, "sandbox directory not removed");
                    false
                }
            };
        cgroup_removed && loop_released && dir_removed
    }
}

/// Whether a temporary sandbox's directory holds what `PreparedSandbox::build` made and
/// nothing more (its mount points empty), so that the next sandbox may take it as it is.
async fn holds_only_what_build_made(run_dir: &Path) -> bool {
    use super::plan::{RUN_DIR_DISK, RUN_DIR_IMAGE, RUN_DIR_ROOT};
    let run_dir = run_dir.to_path_buf();
    let names = |dir: &Path| -> Option<Vec<String>> {
        let mut names = std::fs::read_dir(dir)
            .ok()?
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?;
        names.sort_unstable();
        Some(names)
    };
    tokio::task::spawn_blocking(move || {
        let mut made = [RUN_DIR_DISK, RUN_DIR_IMAGE, RUN_DIR_ROOT].map(String::from).to_vec();
        made.sort_unstable();
        names(&run_dir) == Some(made)
            && [RUN_DIR_ROOT, RUN_DIR_DISK]
                .iter()
                .all(|mount_point| names(&run_dir.join(mount_point)) == Some(Vec::new()))
    })
    .await
    .unwrap_or(false)
}

struct Spawned {
    pid_one: Pid,
    disk_device: PathBuf,
    control: control::ControlSocket,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

/// Starts a sandbox's init (engine/init.rs) as `init_program` (`Engine::sandbox_init`), or as
/// the agent's own binary again (`bkg-agent __sandbox-init`) without one.
async fn spawn_init(
    plan: SandboxPlan,
    init_program: Option<&Path>,
    spawner: &InitSpawner,
) -> Result<Spawned, EngineError> {
    let (stdin_read, stdin_write) = code_pipe(plan.ids.sandbox)?;
    let (stdout_read, stdout_write) = output_pipe(plan.ids.sandbox)?;
    let (stderr_read, stderr_write) = output_pipe(plan.ids.sandbox)?;
    let (mut agent_end, init_end) =
        std::os::unix::net::UnixStream::pair().map_err(EngineError::io("create control socket"))?;

    let mut command = match init_program {
        Some(program) => std::process::Command::new(program),
        None => {
            let mut own = std::process::Command::new("/proc/self/exe");
            // `ps` shows it by the agent's name, not as /proc/self/exe.
            if let Some(name) = std::env::args_os().next() {
                own.arg0(name);
            }
            own
        }
    };
    // `__sandbox-init` is what tells a sandbox init from other processes (`ps`, the tests)
    // either way. The init's stdin is its end of the control socket, and the sandbox's stdin
    // comes with the plan (engine/init.rs, `main`): with no code of ours to run between fork and
    // exec, the standard library starts it by posix_spawn, which neither copies the agent's page
    // tables nor leaves the agent copy-on-write faults for every page it writes next.
    command
        .arg("__sandbox-init")
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(OwnedFd::from(init_end)))
        .stdout(Stdio::from(stdout_write))
        .stderr(Stdio::from(stderr_write));
    let mut init = spawner.spawn(command).await.map_err(EngineError::io("start the sandbox init"))?;
    // A few KiB into an empty socket buffer: this does not block.
    let sent =
        control::write_with_fd_blocking(&mut agent_end, &ToInit::Prepare(Box::new(plan)), stdin_read.as_raw_fd());
    drop(stdin_read);

    agent_end.set_nonblocking(true).map_err(EngineError::io("control socket"))?;
    let mut control =
        control::ControlSocket::new(UnixStream::from_std(agent_end).map_err(EngineError::io("control socket"))?);
    let mut pid_one = None;
    let handshake = async {
        sent?;
        let first = control.read::<FromInit>().await?;
        let FromInit::Forked { pid } = first else {
            return Ok(first);
        };
        pid_one = Some(Pid::from_raw(pid));
        control.read::<FromInit>().await
    };
    let reply = tokio::time::timeout(PREPARE_TIMEOUT, handshake).await;
    let handshake_failed = |message: String| EngineError::Prepare { stage: "handshake".into(), message };
    let built = match (reply, pid_one) {
        (Ok(Ok(FromInit::Ready { disk_device })), Some(pid)) => Ok((pid, disk_device)),
        (Ok(Ok(FromInit::Ready { .. })), None) => Err(handshake_failed("pid 1 was not reported".into())),
        (Ok(Ok(FromInit::Failed { stage, message })), _) => Err(EngineError::Prepare { stage, message }),
        (Ok(Ok(other)), _) => Err(handshake_failed(format!("unexpected {other:?}"))),
        (Ok(Err(error)), _) => Err(handshake_failed(error.to_string())),
        (Err(_), _) => Err(handshake_failed("timed out".into())),
    };
    let (pid_one, disk_device) = match built {
        Ok(built) => built,
        Err(error) => {
            let _ = init.start_kill();
            let _ = init.wait().await;
            if let Some(pid) = pid_one {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)).await;
            }
            return Err(error);
        }
    };
    // The outer init exits as soon as it has reported pid 1: reap it now rather than leave a
    // zombie for as long as the sandbox waits in the pool.
    let _ = init.wait().await;

    let stdin = pipe::Sender::from_owned_fd(set_nonblocking(stdin_write)?).map_err(EngineError::io("stdin pipe"))?;
    let stdout =
        pipe::Receiver::from_owned_fd(set_nonblocking(stdout_read)?).map_err(EngineError::io("stdout pipe"))?;
    let stderr =
        pipe::Receiver::from_owned_fd(set_nonblocking(stderr_read)?).map_err(EngineError::io("stderr pipe"))?;
    Ok(Spawned { pid_one, disk_device, control, stdin, stdout, stderr })
}

/// Starts sandbox inits on a thread of its own. The standard library starts one by
/// posix_spawn, whose caller waits (uninterruptibly, as for vfork) until the child has exec'd,
/// about a millisecond: on a runtime worker that was a millisecond of one of the agent's few
/// workers taken from runs going on for every sandbox prepared (docs/testing.md, "Sandbox inits
/// started off the runtime's workers"). The thread lives as long as the agent, as the init's
/// parent-death signal follows the thread that started it: a blocking-pool thread (gone after
/// 10 s idle) would take its sandboxes with it.
pub(super) struct InitSpawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

type SpawnRequest = (std::process::Command, tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>);

impl InitSpawner {
    /// Starts the thread; the runtime it enters (the caller's) reaps what it starts.
    pub(super) fn start() -> Result<Self, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|error| EngineError::io("start the sandbox spawner thread")(std::io::Error::other(error)))?;
        let (requests, received) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                let _entered = runtime.enter();
                // Ends when the engine, and with it the sender, is gone.
                while let Ok((command, reply)) = received.recv() {
                    let _ = reply.send(tokio::process::Command::from(command).kill_on_drop(true).spawn());
                }
            })
            .map_err(EngineError::io("start the sandbox spawner thread"))?;
        Ok(Self { requests })
    }

    async fn spawn(&self, command: std::process::Command) -> std::io::Result<tokio::process::Child> {
        let (reply, spawned) = tokio::sync::oneshot::channel();
        let gone = || std::io::Error::other("the sandbox spawner thread has ended");
        self.requests.send((command, reply)).map_err(|_| gone())?;
        spawned.await.map_err(|_| gone())?
    }
}

fn set_nonblocking(fd: OwnedFd) -> Result<OwnedFd, EngineError> {
    let flags =
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| EngineError::io("pipe flags")(e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| EngineError::io("pipe flags")(e.into()))?;
    Ok(fd)
}

/// Host pid of the run's code in the sandbox whose pid 1 is `pid_one`: pid 1's one child.
pub fn code_pid(pid_one: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid_one}/task/{pid_one}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
