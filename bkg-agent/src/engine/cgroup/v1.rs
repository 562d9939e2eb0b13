//! cgroup v1: one tree per hierarchy. A run cgroup is a directory of the same name in each
//! hierarchy whose controllers we use; co-mounted controllers (`cpu,cpuacct`) share one.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    CFS_PERIOD_US, CgroupDriver, CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, DRAIN_POLL, RunCgroup,
    child_dirs, create_new_dir, ensure_dir, keyed_u64, kill_members, kill_until_empty, pids_in, read_optional,
    read_text, read_u64, remove_cgroup_tree, remove_stale_runs, validate_component, write_if_present, write_value,
};

const MEMORY_LIMIT: &str = "memory.limit_in_bytes";
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
/// Freezing waits for every task to reach the refrigerator; one stuck in the kernel must not
/// stall killing, which stays safe without the freeze (see `kill_members`).
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// A mounted v1 hierarchy: its controllers as `/proc/self/cgroup` names them (`cpu`, `cpuacct`,
/// `name=systemd`, ...) and the agent's own cgroup directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controllers: Vec<String>,
    pub own_dir: PathBuf,
}

/// For each controller used, the index of its hierarchy in the driver's directory list.
#[derive(Debug, Clone, Copy)]
struct ControllerIndex {
    cpu: usize,
    cpuacct: usize,
    memory: usize,
    pids: usize,
    freezer: usize,
}

pub struct V1Driver {
    /// `<own>/<agent_dir>` in each hierarchy used, without duplicates.
    agent_dirs: Vec<PathBuf>,
    index: ControllerIndex,
}

impl V1Driver {
    /// Uses the hierarchies carrying cpu, cpuacct, memory, pids and freezer; all five must be
    /// present. Other hierarchies are left alone: a run stays in the agent's cgroup there.
    pub fn new(hierarchies: Vec<V1Hierarchy>, agent_dir: &str) -> Result<Self, CgroupError> {
        validate_component(agent_dir)?;
        let mut agent_dirs: Vec<PathBuf> = Vec::new();
        let mut index_of = |controller: &str| -> Result<usize, CgroupError> {
            let hierarchy = hierarchies
                .iter()
                .find(|hierarchy| hierarchy.controllers.iter().any(|name| name == controller))
                .ok_or_else(|| {
                    CgroupError::Layout(format!("no cgroup v1 hierarchy with the {controller} controller is mounted"))
                })?;
            let dir = hierarchy.own_dir.join(agent_dir);
            Ok(match agent_dirs.iter().position(|known| *known == dir) {
                Some(index) => index,
                None => {
                    agent_dirs.push(dir);
                    agent_dirs.len() - 1
                }
            })
        };
        let index = ControllerIndex {
            cpu: index_of("cpu")?,
            cpuacct: index_of("cpuacct")?,
            memory: index_of("memory")?,
            pids: index_of("pids")?,
            freezer: index_of("freezer")?,
        };
        Ok(Self { agent_dirs, index })
    }

    fn run_cgroup(&self, name: &OsStr) -> V1RunCgroup {
        V1RunCgroup { dirs: self.agent_dirs.iter().map(|dir| dir.join(name)).collect(), index: self.index }
    }
}

impl CgroupDriver for V1Driver {
    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        validate_component(name)?;
        limits.validate()?;
        for dir in &self.agent_dirs {
            ensure_dir(dir)?;
        }
        let run = self.run_cgroup(OsStr::new(name));
        for (made, dir) in run.dirs.iter().enumerate() {
            if let Err(error) = create_new_dir(dir) {
                // Undo only what we made: an existing directory belongs to another run.
                for dir in &run.dirs[..made] {
                    if let Err(cleanup) = remove_cgroup_tree(dir) {
                        tracing::warn!(error = %cleanup, "cannot undo a partly created run cgroup");
                    }
                }
                return Err(error);
            }
        }
        if let Err(error) = run.set_limits(limits) {
            if let Err(cleanup) = run.remove() {
                tracing::warn!(error = %cleanup, "cannot remove a run cgroup whose limits failed");
            }
            return Err(error);
        }
        Ok(Box::new(run))
    }

    fn remove_agent_dirs(&self) -> Result<(), CgroupError> {
        for dir in &self.agent_dirs {
            if dir.exists() {
                remove_cgroup_tree(dir)?;
            }
        }
        Ok(())
    }

    fn agent_dirs(&self) -> Vec<PathBuf> {
        self.agent_dirs.clone()
    }

    fn remove_stale(&self) -> Result<usize, CgroupError> {
        let mut names = Vec::new();
        for dir in &self.agent_dirs {
            for name in child_dirs(dir)? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        remove_stale_runs(names, |name| Box::new(self.run_cgroup(name)))
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }
}

struct V1RunCgroup {
    /// The run's directory in each hierarchy, in the driver's order.
    dirs: Vec<PathBuf>,
    index: ControllerIndex,
}

impl V1RunCgroup {
    fn file(&self, hierarchy: usize, name: &str) -> PathBuf {
        self.dirs[hierarchy].join(name)
    }

    /// Returns false when the freezer cgroup is missing, as in a half-created leftover.
    fn freeze(&self) -> Result<bool, CgroupError> {
        let state = self.file(self.index.freezer, "freezer.state");
        if !write_if_present(&state, "FROZEN")? {
            return Ok(false);
        }
        let deadline = Instant::now() + FREEZE_WAIT;
        // A failed read ends the wait rather than the kill, which must still thaw afterwards.
        while Instant::now() < deadline && matches!(read_optional(&state), Ok(Some(text)) if text.trim() != "FROZEN") {
            thread::sleep(DRAIN_POLL);
        }
        Ok(true)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        write_if_present(&self.file(self.index.freezer, "freezer.state"), "THAWED").map(drop)
    }
}

/// The kernel keeps `memory.memsw.limit_in_bytes >= memory.limit_in_bytes` after every single
/// write, so raising must lift memsw first and lowering must cut the memory limit first.
fn memory_write_order(current_limit: u64, new_limit: u64) -> [&'static str; 2] {
    if new_limit > current_limit { [MEMSW_LIMIT, MEMORY_LIMIT] } else { [MEMORY_LIMIT, MEMSW_LIMIT] }
}

impl RunCgroup for V1RunCgroup {
    fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    fn join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|dir| dir.join("tasks")).collect()
    }

    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        let quota = limits.cpu_quota_us();
        write_value(&self.file(self.index.cpu, "cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
        write_value(&self.file(self.index.cpu, "cpu.cfs_quota_us"), &quota.to_string())?;

        let memory_bytes = limits.memory_bytes.to_string();
        // memsw exists only with swap accounting; setting it equal to the memory limit makes
        // the limit cover RAM and swap together, so a run cannot escape it by swapping.
        if self.file(self.index.memory, MEMSW_LIMIT).exists() {
            let current_limit = read_u64(&self.file(self.index.memory, MEMORY_LIMIT))?;
            for name in memory_write_order(current_limit, limits.memory_bytes) {
                write_value(&self.file(self.index.memory, name), &memory_bytes)?;
            }
        } else {
            write_value(&self.file(self.index.memory, MEMORY_LIMIT), &memory_bytes)?;
        }

        write_value(&self.file(self.index.pids, "pids.max"), &limits.pids_max.to_string())
    }

    fn set_background(&self, background: bool) -> Result<(), CgroupError> {
        // The kernel's least and default `cpu.shares`.
        let shares = if background { "2" } else { "1024" };
        write_value(&self.file(self.index.cpu, "cpu.shares"), shares)
    }

    fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        let oom_control = self.file(self.index.memory, "memory.oom_control");
        let oom_kills = match keyed_u64(&oom_control, &read_text(&oom_control)?, "oom_kill")? {
            Some(count) => count,
            // Before Linux 4.13 OOM kills are not counted. failcnt counts every time the limit
            // was hit, reclaim included, so it overstates, but it is never zero after an OOM.
            None => read_u64(&self.file(self.index.memory, "memory.failcnt"))?,
        };
        let pids_events = self.file(self.index.pids, "pids.events");
        let pids_limit_hits = match read_optional(&pids_events)? {
            Some(text) => keyed_u64(&pids_events, &text, "max")?.unwrap_or(0),
            None => 0,
        };
        Ok(CgroupUsage {
            cpu_nanos: read_u64(&self.file(self.index.cpuacct, "cpuacct.usage"))?,
            peak_memory_bytes: read_u64(&self.file(self.index.memory, "memory.max_usage_in_bytes"))?,
            oom_kills,
            pids_limit_hits,
        })
    }

    fn memory_now(&self) -> Result<u64, CgroupError> {
        read_u64(&self.file(self.index.memory, "memory.usage_in_bytes"))
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        pids_in(&self.dirs)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        kill_until_empty(&self.dirs, || {
            // Frozen tasks cannot fork, so the list cannot grow while we signal it. They die
            // only once thawed, so thaw even when signalling failed.
            let frozen = self.freeze()?;
            let killed = kill_members(&self.dirs);
            if frozen {
                self.thaw()?;
            }
            killed
        })
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            if let Err(error) = remove_cgroup_tree(dir) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::fs;
    use std::path::Path;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    const LIMITS: CgroupLimits = CgroupLimits { cpu_millis: 1500, memory_bytes: 256 << 20, pids_max: 64 };
    const UNLIMITED: &str = "9223372036854771712\n";

    /// A v1 layout under `root`, with cpu and cpuacct co-mounted or in hierarchies of their own.
    fn fake_hierarchies(root: &Path, co_mounted: bool) -> Result<Vec<V1Hierarchy>, Box<dyn Error>> {
        let mut groups: Vec<Vec<&str>> = vec![vec!["memory"], vec!["pids"], vec!["freezer"], vec!["name=systemd"]];
        if co_mounted {
            groups.push(vec!["cpu", "cpuacct"]);
        } else {
            groups.push(vec!["cpu"]);
            groups.push(vec!["cpuacct"]);
        }
        let mut hierarchies = Vec::new();
        for controllers in groups {
            let own_dir = root.join(controllers.join(",")).join("agent.scope");
            fs::create_dir_all(&own_dir)?;
            hierarchies.push(V1Hierarchy { controllers: controllers.into_iter().map(String::from).collect(), own_dir });
        }
        Ok(hierarchies)
    }

    /// mkdir in a tempdir yields an empty directory, so lay down the files the kernel would.
    fn fake_kernel_files(run: &V1RunCgroup) -> TestResult {
        for dir in &run.dirs {
            fs::create_dir_all(dir)?;
            fs::write(dir.join("cgroup.procs"), "")?;
        }
        let files = [
            (run.index.cpu, "cpu.cfs_period_us", "100000\n"),
            (run.index.cpu, "cpu.cfs_quota_us", "-1\n"),
            (run.index.cpuacct, "cpuacct.usage", "0\n"),
            (run.index.memory, MEMORY_LIMIT, UNLIMITED),
            (run.index.memory, MEMSW_LIMIT, UNLIMITED),
            (run.index.memory, "memory.max_usage_in_bytes", "0\n"),
            (run.index.memory, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
            (run.index.memory, "memory.failcnt", "0\n"),
            (run.index.pids, "pids.max", "max\n"),
            (run.index.pids, "pids.events", "max 0\n"),
            (run.index.freezer, "freezer.state", "THAWED\n"),
        ];
        for (hierarchy, name, content) in files {
            fs::write(run.file(hierarchy, name), content)?;
        }
        Ok(())
    }

    fn fake_run(root: &Path, co_mounted: bool) -> Result<V1RunCgroup, Box<dyn Error>> {
        let driver = V1Driver::new(fake_hierarchies(root, co_mounted)?, "bkg")?;
        let run = driver.run_cgroup(OsStr::new("run-1"));
        fake_kernel_files(&run)?;
        Ok(run)
    }

    #[test]
    fn limits_are_written_with_separate_cpu_and_cpuacct() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), false)?;
        assert_eq!(run.procs_paths().len(), 5);
        assert!(run.procs_paths().iter().all(|path| path.ends_with("bkg/run-1/cgroup.procs")));
        run.set_limits(&LIMITS)?;
        let read = |hierarchy, name| fs::read_to_string(run.file(hierarchy, name));
        assert_eq!(read(run.index.cpu, "cpu.cfs_period_us")?, "100000");
        assert_eq!(read(run.index.cpu, "cpu.cfs_quota_us")?, "150000");
        assert_eq!(read(run.index.memory, MEMORY_LIMIT)?, "268435456");
        assert_eq!(read(run.index.memory, MEMSW_LIMIT)?, "268435456");
        assert_eq!(read(run.index.pids, "pids.max")?, "64");
        Ok(())
    }

    #[test]
    fn co_mounted_cpu_and_cpuacct_share_one_directory() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), true)?;
        assert_eq!(run.index.cpu, run.index.cpuacct);
        assert_eq!(run.procs_paths().len(), 4);
        run.set_limits(&LIMITS)?;
        fs::write(run.file(run.index.cpuacct, "cpuacct.usage"), "123456789\n")?;
        assert_eq!(fs::read_to_string(run.file(run.index.cpu, "cpu.cfs_quota_us"))?, "150000");
        assert_eq!(run.usage()?.cpu_nanos, 123_456_789);
        Ok(())
    }

    #[test]
    fn without_swap_accounting_only_the_memory_limit_is_written() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), false)?;
        fs::remove_file(run.file(run.index.memory, MEMSW_LIMIT))?;
        run.set_limits(&LIMITS)?;
        assert_eq!(fs::read_to_string(run.file(run.index.memory, MEMORY_LIMIT))?, "268435456");
        assert!(!run.file(run.index.memory, MEMSW_LIMIT).exists());
        Ok(())
    }

    #[test]
    fn memsw_is_raised_first_and_lowered_last() {
        assert_eq!(memory_write_order(64 << 20, 128 << 20), [MEMSW_LIMIT, MEMORY_LIMIT]);
        assert_eq!(memory_write_order(128 << 20, 64 << 20), [MEMORY_LIMIT, MEMSW_LIMIT]);
        assert_eq!(memory_write_order(u64::MAX, 64 << 20), [MEMORY_LIMIT, MEMSW_LIMIT]);
    }

    #[test]
    fn usage_is_parsed_and_prefers_oom_kill_over_failcnt() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), false)?;
        fs::write(run.file(run.index.cpuacct, "cpuacct.usage"), "987654321\n")?;
        fs::write(run.file(run.index.memory, "memory.max_usage_in_bytes"), "4096000\n")?;
        fs::write(run.file(run.index.memory, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n")?;
        fs::write(run.file(run.index.memory, "memory.failcnt"), "950\n")?;
        fs::write(run.file(run.index.pids, "pids.events"), "max 7\n")?;
        let expected =
            CgroupUsage { cpu_nanos: 987_654_321, peak_memory_bytes: 4_096_000, oom_kills: 3, pids_limit_hits: 7 };
        assert_eq!(run.usage()?, expected);
        Ok(())
    }

    #[test]
    fn usage_falls_back_to_failcnt_on_old_kernels() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), false)?;
        fs::write(run.file(run.index.memory, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n")?;
        fs::write(run.file(run.index.memory, "memory.failcnt"), "5\n")?;
        assert_eq!(run.usage()?.oom_kills, 5);
        Ok(())
    }

    #[test]
    fn pids_merge_all_hierarchies_and_nested_cgroups() -> TestResult {
        let root = tempfile::tempdir()?;
        let run = fake_run(root.path(), false)?;
        fs::write(run.file(run.index.memory, "cgroup.procs"), "40\n12\n")?;
        fs::write(run.file(run.index.pids, "cgroup.procs"), "12\n")?;
        let nested = run.dirs[run.index.freezer].join("nested");
        fs::create_dir(&nested)?;
        fs::write(nested.join("cgroup.procs"), "7\n")?;
        assert_eq!(run.pids()?, vec![7, 12, 40]);
        Ok(())
    }

    #[test]
    fn every_needed_controller_must_be_mounted() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut hierarchies = fake_hierarchies(root.path(), true)?;
        hierarchies.retain(|hierarchy| !hierarchy.controllers.iter().any(|name| name == "freezer"));
        let error = V1Driver::new(hierarchies, "bkg").err().ok_or("a driver without freezer was accepted")?;
        assert!(error.to_string().contains("freezer"), "{error}");
        Ok(())
    }

    #[test]
    fn names_that_could_leave_the_agent_dir_are_refused() -> TestResult {
        let root = tempfile::tempdir()?;
        let hierarchies = fake_hierarchies(root.path(), true)?;
        assert!(matches!(V1Driver::new(hierarchies.clone(), "../up"), Err(CgroupError::InvalidName(_))));
        let driver = V1Driver::new(hierarchies, "bkg")?;
        for name in ["..", ".", "a/b", "", "/abs"] {
            assert!(matches!(driver.create(name, &LIMITS), Err(CgroupError::InvalidName(_))), "{name:?}");
        }
        Ok(())
    }
}
