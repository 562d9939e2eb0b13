//! cgroup v2: one tree; a run cgroup is `<own>/<agent_dir>/<name>`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::slice;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    CFS_PERIOD_US, CgroupDriver, CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, RunCgroup, child_dirs,
    create_new_dir, ensure_dir, keyed_u64, kill_members, kill_until_empty, parse_u64, pids_in, read_optional,
    read_text, remove_cgroup_tree, remove_stale_runs, validate_component, write_if_present, write_raw, write_value,
};

pub const WANTED_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

pub struct V2Driver {
    own_dir: PathBuf,
    agent_dir: PathBuf,
    /// Leaf beside `agent_dir` that takes the processes of our own cgroup when they stand in
    /// the way of enabling controllers; it is still beneath our own cgroup.
    evacuation_dir: PathBuf,
    /// The wanted controllers our own cgroup offers; limits of the others are skipped.
    enabled: Vec<&'static str>,
}

impl V2Driver {
    /// Creates `<own_dir>/<agent_dir>` and enables in it, and in `own_dir`, whichever of cpu,
    /// memory and pids `own_dir` offers. Missing ones are not an error here (a cgroup2 mount
    /// without controllers serves for tests); see [`V2Driver::unavailable_controllers`].
    pub fn new(own_dir: PathBuf, agent_dir: &str) -> Result<Self, CgroupError> {
        validate_component(agent_dir)?;
        let offered = read_text(&own_dir.join("cgroup.controllers"))?;
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let driver = Self {
            agent_dir: own_dir.join(agent_dir),
            evacuation_dir: own_dir.join(format!("{agent_dir}-self")),
            enabled: WANTED_CONTROLLERS.into_iter().filter(|wanted| offered.contains(wanted)).collect(),
            own_dir,
        };
        driver.enable_in_own_cgroup()?;
        driver.prepare_agent_dir()?;
        Ok(driver)
    }

    /// Controllers this driver cannot limit with because our own cgroup does not offer them.
    pub fn unavailable_controllers(&self) -> Vec<&'static str> {
        WANTED_CONTROLLERS.into_iter().filter(|wanted| !self.enabled.contains(wanted)).collect()
    }

    fn enable_in_own_cgroup(&self) -> Result<(), CgroupError> {
        let control = self.own_dir.join("cgroup.subtree_control");
        let Some(request) = enable_request(&read_text(&control)?, &self.enabled) else {
            return Ok(());
        };
        match write_raw(&control, &request) {
            Ok(()) => Ok(()),
            // A non-root cgroup cannot both hold processes and pass controllers to children.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                self.evacuate_own_processes()?;
                write_value(&control, &request)
            }
            Err(source) => Err(CgroupError::Write { path: control, value: request, source }),
        }
    }

    fn evacuate_own_processes(&self) -> Result<(), CgroupError> {
        ensure_dir(&self.evacuation_dir)?;
        let target = self.evacuation_dir.join("cgroup.procs");
        let own_procs = read_text(&self.own_dir.join("cgroup.procs"))?;
        for pid in own_procs.lines().map(str::trim).filter(|pid| !pid.is_empty()) {
            match write_raw(&target, pid) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Write { path: target, value: pid.to_owned(), source });
                }
            }
        }
        tracing::info!(
            leaf = %self.evacuation_dir.display(),
            "moved the processes of the agent's cgroup into a leaf so controllers can be enabled"
        );
        Ok(())
    }

    fn prepare_agent_dir(&self) -> Result<(), CgroupError> {
        ensure_dir(&self.agent_dir)?;
        let control = self.agent_dir.join("cgroup.subtree_control");
        match enable_request(&read_text(&control)?, &self.enabled) {
            Some(request) => write_value(&control, &request),
            None => Ok(()),
        }
    }

    fn run_cgroup(&self, name: &OsStr) -> V2RunCgroup {
        V2RunCgroup { dir: self.agent_dir.join(name), enabled: self.enabled.clone(), sampled_peak: AtomicU64::new(0) }
    }
}

/// The `cgroup.subtree_control` write enabling what `wanted` lists beyond `active`, if anything.
fn enable_request(active: &str, wanted: &[&str]) -> Option<String> {
    let active: Vec<&str> = active.split_whitespace().collect();
    let missing: Vec<String> =
        wanted.iter().filter(|name| !active.contains(name)).map(|name| format!("+{name}")).collect();
    (!missing.is_empty()).then(|| missing.join(" "))
}

impl CgroupDriver for V2Driver {
    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        validate_component(name)?;
        limits.validate()?;
        // Someone may have removed the agent directory since we started; recreate it.
        self.prepare_agent_dir()?;
        let run = self.run_cgroup(OsStr::new(name));
        create_new_dir(&run.dir)?;
        if let Err(error) = run.set_limits(limits) {
            if let Err(cleanup) = run.remove() {
                tracing::warn!(error = %cleanup, "cannot remove a run cgroup whose limits failed");
            }
            return Err(error);
        }
        Ok(Box::new(run))
    }

    fn remove_agent_dirs(&self) -> Result<(), CgroupError> {
        if self.agent_dir.exists() {
            remove_cgroup_tree(&self.agent_dir)?;
        }
        Ok(())
    }

    fn agent_dirs(&self) -> Vec<PathBuf> {
        vec![self.agent_dir.clone()]
    }

    fn remove_stale(&self) -> Result<usize, CgroupError> {
        remove_stale_runs(child_dirs(&self.agent_dir)?, |name| Box::new(self.run_cgroup(name)))
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }
}

struct V2RunCgroup {
    dir: PathBuf,
    enabled: Vec<&'static str>,
    /// Highest memory.current seen, standing in for memory.peak before Linux 5.19.
    sampled_peak: AtomicU64,
}

impl V2RunCgroup {
    fn controls(&self, controller: &str) -> bool {
        self.enabled.contains(&controller)
    }

    fn peak_memory(&self) -> Result<u64, CgroupError> {
        let peak = self.dir.join("memory.peak");
        if let Some(text) = read_optional(&peak)? {
            return parse_u64(&peak, &text);
        }
        let current = self.dir.join("memory.current");
        if let Some(text) = read_optional(&current)? {
            self.sampled_peak.fetch_max(parse_u64(&current, &text)?, Ordering::Relaxed);
        }
        Ok(self.sampled_peak.load(Ordering::Relaxed))
    }

    /// A counter from a flat-keyed events file; zero when the controller is not enabled.
    fn event_count(&self, file: &str, key: &str) -> Result<u64, CgroupError> {
        let path = self.dir.join(file);
        match read_optional(&path)? {
            Some(text) => Ok(keyed_u64(&path, &text, key)?.unwrap_or(0)),
            None => Ok(0),
        }
    }
}

impl RunCgroup for V2RunCgroup {
    fn procs_paths(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }

    fn join_files(&self) -> Vec<PathBuf> {
        self.procs_paths()
    }

    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        let quota = limits.cpu_quota_us();
        if self.controls("cpu") {
            write_value(&self.dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
        }
        if self.controls("memory") {
            write_value(&self.dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            // Absent without swap accounting; where present, no swap keeps memory_bytes the
            // whole budget, as memsw does on v1.
            write_if_present(&self.dir.join("memory.swap.max"), "0")?;
        }
        if self.controls("pids") {
            write_value(&self.dir.join("pids.max"), &limits.pids_max.to_string())?;
        }
        Ok(())
    }

    fn set_background(&self, background: bool) -> Result<(), CgroupError> {
        if !self.controls("cpu") {
            return Ok(());
        }
        // The kernel's least and default `cpu.weight`.
        write_value(&self.dir.join("cpu.weight"), if background { "1" } else { "100" })
    }

    fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        // cpu.stat's usage_usec is kept for every cgroup, cpu controller or not.
        let cpu_stat = self.dir.join("cpu.stat");
        let usage_usec = keyed_u64(&cpu_stat, &read_text(&cpu_stat)?, "usage_usec")?
            .ok_or_else(|| CgroupError::Parse { path: cpu_stat.clone(), detail: "no usage_usec line".into() })?;
        Ok(CgroupUsage {
            cpu_nanos: usage_usec.saturating_mul(1000),
            peak_memory_bytes: self.peak_memory()?,
            oom_kills: self.event_count("memory.events", "oom_kill")?,
            pids_limit_hits: self.event_count("pids.events", "max")?,
        })
    }

    fn memory_now(&self) -> Result<u64, CgroupError> {
        let current = self.dir.join("memory.current");
        parse_u64(&current, &read_text(&current)?)
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        pids_in(slice::from_ref(&self.dir))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let dirs = slice::from_ref(&self.dir);
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() {
            // cgroup.kill (Linux 5.14) kills the whole subtree inside the kernel, without
            // racing forks or recycled pids.
            return kill_until_empty(dirs, || write_value(&kill_file, "1"));
        }
        // A frozen cgroup cannot fork while we signal it, and v2 delivers SIGKILL to frozen
        // tasks, so they die without thawing.
        let freeze_file = self.dir.join("cgroup.freeze");
        let frozen = write_if_present(&freeze_file, "1")?;
        let killed = kill_until_empty(dirs, || kill_members(dirs));
        if frozen {
            write_if_present(&freeze_file, "0")?;
        }
        killed
    }

    fn remove(&self) -> Result<(), CgroupError> {
        remove_cgroup_tree(&self.dir)
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

    /// An own cgroup offering `controllers`, with the agent directory already made: mkdir in
    /// a tempdir does not produce the control files the driver reads.
    fn fake_own_cgroup(root: &Path, controllers: &str) -> Result<PathBuf, Box<dyn Error>> {
        let own_dir = root.join("agent.service");
        fs::create_dir_all(own_dir.join("bkg"))?;
        fs::write(own_dir.join("cgroup.controllers"), controllers)?;
        fs::write(own_dir.join("cgroup.subtree_control"), "")?;
        fs::write(own_dir.join("bkg/cgroup.subtree_control"), "")?;
        Ok(own_dir)
    }

    fn fake_run(driver: &V2Driver) -> Result<V2RunCgroup, Box<dyn Error>> {
        let run = driver.run_cgroup(OsStr::new("run-1"));
        fs::create_dir(&run.dir)?;
        let files = [
            ("cgroup.procs", ""),
            ("cpu.max", "max 100000\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "0\n"),
            ("memory.peak", "0\n"),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"),
            ("pids.max", "max\n"),
            ("pids.events", "max 0\n"),
        ];
        for (name, content) in files {
            fs::write(run.dir.join(name), content)?;
        }
        Ok(run)
    }

    #[test]
    fn controllers_are_enabled_in_own_and_agent_cgroup() -> TestResult {
        let root = tempfile::tempdir()?;
        let own_dir = fake_own_cgroup(root.path(), "cpuset cpu io memory hugetlb pids rdma\n")?;
        let driver = V2Driver::new(own_dir.clone(), "bkg")?;
        assert!(driver.unavailable_controllers().is_empty());
        assert_eq!(fs::read_to_string(own_dir.join("cgroup.subtree_control"))?, "+cpu +memory +pids");
        assert_eq!(fs::read_to_string(own_dir.join("bkg/cgroup.subtree_control"))?, "+cpu +memory +pids");
        Ok(())
    }

    #[test]
    fn controllers_already_enabled_are_not_requested_again() {
        assert_eq!(enable_request("cpu io memory pids\n", &WANTED_CONTROLLERS), None);
        assert_eq!(enable_request("memory\n", &WANTED_CONTROLLERS).as_deref(), Some("+cpu +pids"));
    }

    #[test]
    fn missing_controllers_are_reported_not_fatal() -> TestResult {
        let root = tempfile::tempdir()?;
        let own_dir = fake_own_cgroup(root.path(), "cpu io\n")?;
        let driver = V2Driver::new(own_dir.clone(), "bkg")?;
        assert_eq!(driver.unavailable_controllers(), vec!["memory", "pids"]);
        assert_eq!(fs::read_to_string(own_dir.join("bkg/cgroup.subtree_control"))?, "+cpu");
        Ok(())
    }

    #[test]
    fn limits_are_written_in_v2_syntax() -> TestResult {
        let root = tempfile::tempdir()?;
        let driver = V2Driver::new(fake_own_cgroup(root.path(), "cpu memory pids")?, "bkg")?;
        let run = fake_run(&driver)?;
        run.set_limits(&LIMITS)?;
        let read = |name| fs::read_to_string(run.dir.join(name));
        assert_eq!(read("cpu.max")?, "150000 100000");
        assert_eq!(read("memory.max")?, "268435456");
        assert_eq!(read("memory.swap.max")?, "0");
        assert_eq!(read("pids.max")?, "64");
        assert_eq!(run.procs_paths(), vec![run.dir.join("cgroup.procs")]);
        Ok(())
    }

    #[test]
    fn an_enabled_controller_without_its_file_is_an_error() -> TestResult {
        let root = tempfile::tempdir()?;
        let driver = V2Driver::new(fake_own_cgroup(root.path(), "cpu memory pids")?, "bkg")?;
        let run = fake_run(&driver)?;
        fs::remove_file(run.dir.join("pids.max"))?;
        assert!(matches!(run.set_limits(&LIMITS), Err(CgroupError::Write { .. })));
        Ok(())
    }

    #[test]
    fn without_controllers_create_makes_the_directory_and_skips_limits() -> TestResult {
        let root = tempfile::tempdir()?;
        let own_dir = fake_own_cgroup(root.path(), "")?;
        let driver = V2Driver::new(own_dir.clone(), "bkg")?;
        let run = driver.create("run-1", &LIMITS)?;
        assert_eq!(run.procs_paths(), vec![own_dir.join("bkg/run-1/cgroup.procs")]);
        assert_eq!(fs::read_dir(own_dir.join("bkg/run-1"))?.count(), 0);
        assert_eq!(fs::read_to_string(own_dir.join("cgroup.subtree_control"))?, "");
        Ok(())
    }

    #[test]
    fn usage_is_parsed() -> TestResult {
        let root = tempfile::tempdir()?;
        let driver = V2Driver::new(fake_own_cgroup(root.path(), "cpu memory pids")?, "bkg")?;
        let run = fake_run(&driver)?;
        fs::write(run.dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")?;
        fs::write(run.dir.join("memory.peak"), "8388608\n")?;
        fs::write(run.dir.join("memory.events"), "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")?;
        fs::write(run.dir.join("pids.events"), "max 9\n")?;
        let expected =
            CgroupUsage { cpu_nanos: 1_500_000, peak_memory_bytes: 8_388_608, oom_kills: 1, pids_limit_hits: 9 };
        assert_eq!(run.usage()?, expected);
        fs::write(run.dir.join("memory.current"), "4194304\n")?;
        assert_eq!(run.memory_now()?, 4_194_304);
        Ok(())
    }

    #[test]
    fn peak_memory_is_sampled_from_memory_current_before_5_19() -> TestResult {
        let root = tempfile::tempdir()?;
        let driver = V2Driver::new(fake_own_cgroup(root.path(), "cpu memory pids")?, "bkg")?;
        let run = fake_run(&driver)?;
        fs::remove_file(run.dir.join("memory.peak"))?;
        fs::write(run.dir.join("memory.current"), "5000\n")?;
        assert_eq!(run.usage()?.peak_memory_bytes, 5000);
        fs::write(run.dir.join("memory.current"), "3000\n")?;
        assert_eq!(run.usage()?.peak_memory_bytes, 5000);
        Ok(())
    }
}
