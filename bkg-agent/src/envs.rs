//! Dependency environments on disk (`bkg envs`). Each distinct Python requirement set, or Node.js
//! package.json with its lockfile (with the interpreter and the package index), is installed
//! once into `envs/LANGUAGE/ID/site`, `ID` being the hash of all three, and mounted read-only
//! into every run that asks for the same. A build happens in `envs/LANGUAGE/.build-ID` and
//! becomes `ID` by one rename when it succeeded, so a directory named `ID` is always complete;
//! builds a stopped agent left are removed at start. The install itself is a sandboxed run
//! (`engine/install.rs`), driven by `service/envs.rs`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bkg_schema::Language;
use bkg_schema::envs::{EnvInfo, NodePackages};
use bkg_schema::requirements;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::install::{InstallDirs, PackageIndex};

/// What is kept beside an environment's `site`.
const META_FILE: &str = "env.json";
/// Touched each time a run uses the environment; its mtime is the last use.
const USED_FILE: &str = "used";
const BUILD_PREFIX: &str = ".build-";

/// The public npm registry's host, whose URLs in a lock file npm rewrites to the registry given.
const NPM_PUBLIC_REGISTRY: &str = "registry.npmjs.org";

/// The largest package.json or package-lock.json a run may send.
const MAX_NODE_FILE_BYTES: usize = 8 * 1024 * 1024;

/// `line` with the user part of every URL in it (`https://user:token@host/…`) replaced by `***`:
/// what an environment shows (its listing, its audit line) never holds a password.
pub fn without_credentials(line: &str) -> String {
    let mut shown = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        shown.push_str(before);
        let authority_end = after.find(['/', '?', '#', ' ']).unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                shown.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    shown.push_str(rest);
    shown
}

/// What a run's environment is built from: what its id hashes, what the listing shows, and the
/// files the installer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRequest {
    pub language: Language,
    pub set: Vec<String>,
    pub shown: Vec<String>,
    pub files: Vec<(&'static str, String)>,
}

impl EnvRequest {
    /// A Python requirement set (as [`Environments::requirement_set`] gives it).
    pub fn python(set: Vec<String>) -> Self {
        let mut text = set.join("\n");
        text.push('\n');
        let shown = set.iter().map(|line| without_credentials(line)).collect();
        Self { language: Language::Python, shown, set, files: vec![("requirements.txt", text)] }
    }

    /// A Node.js project's package.json and lockfile, checked: both JSON objects, the lockfile
    /// one `npm ci` reads; shown as the dependencies package.json names.
    pub fn node(packages: &NodePackages) -> Result<Self, EnvError> {
        let parse = |name: &str, text: &str| {
            if text.len() > MAX_NODE_FILE_BYTES {
                return Err(EnvError::Invalid(format!("{name} is larger than {} MiB", MAX_NODE_FILE_BYTES >> 20)));
            }
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(object)) => Ok(object),
                Ok(_) => Err(EnvError::Invalid(format!("{name} must be a JSON object"))),
                Err(error) => Err(EnvError::Invalid(format!("{name} is not JSON: {error}"))),
            }
        };
        let manifest = parse("package.json", &packages.package_json)?;
        let lock = parse("package-lock.json", &packages.package_lock)?;
        if !lock.contains_key("lockfileVersion") {
            return Err(EnvError::Invalid(
                "package-lock.json has no lockfileVersion: make it with `npm install`".into(),
            ));
        }
        let mut shown: Vec<String> = ["dependencies", "devDependencies", "optionalDependencies"]
            .iter()
            .filter_map(|field| manifest.get(*field).and_then(serde_json::Value::as_object))
            .flat_map(|dependencies| {
                dependencies
                    .iter()
                    .map(|(name, range)| without_credentials(&format!("{name}@{}", range.as_str().unwrap_or("*"))))
            })
            .collect();
        shown.sort();
        shown.dedup();
        Ok(Self {
            language: Language::Node,
            set: vec![packages.package_json.clone(), packages.package_lock.clone()],
            shown,
            files: vec![
                ("package.json", packages.package_json.clone()),
                ("package-lock.json", packages.package_lock.clone()),
            ],
        })
    }

    /// "1 Python package", "3 Node packages".
    pub fn described(&self) -> String {
        let language = match self.language {
            Language::Python => "Python",
            Language::Node => "Node",
        };
        match self.shown.len() {
            1 => format!("1 {language} package"),
            count => format!("{count} {language} packages"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EnvError {
    let path = path.to_path_buf();
    move |source| EnvError::Io { action, path, source }
}

#[derive(Debug, Serialize, Deserialize)]
struct EnvMeta {
    requirements: Vec<String>,
    created_at_ms: u64,
}

pub struct Environments {
    root: PathBuf,
    pub language: Language,
    pub index: PackageIndex,
    interpreter: PathBuf,
    /// One build per environment at a time: a second run of the same set waits for the first's.
    builds: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Runs using each environment now: a prune leaves those alone.
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

/// An environment held by a run until dropped.
pub struct InUse {
    id: String,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = in_use.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                in_use.remove(&self.id);
            }
        }
    }
}

impl Environments {
    /// Opens `STATE/envs/LANGUAGE`, removing builds an earlier agent left unfinished.
    pub fn open(
        state_dir: &Path,
        language: Language,
        index: PackageIndex,
        interpreter: PathBuf,
    ) -> Result<Self, EnvError> {
        let root = state_dir.join("envs").join(language.as_str());
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        for entry in std::fs::read_dir(&root).map_err(io("read", &root))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(BUILD_PREFIX) {
                std::fs::remove_dir_all(entry.path()).map_err(io("remove", &entry.path()))?;
            }
        }
        Ok(Self {
            root,
            language,
            index,
            interpreter,
            builds: Mutex::new(HashMap::new()),
            in_use: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The requirement set of `lines` as it is keyed (bkg_schema::requirements, the one rule).
    pub fn requirement_set(lines: &[String]) -> Result<Vec<String>, EnvError> {
        requirements::requirement_set(lines).map_err(|error| EnvError::Invalid(error.to_string()))
    }

    /// Refuses what an install could not fetch: the install sandbox reaches the package index
    /// alone (engine/install.rs), so a URL on another host, a version-control line or a local
    /// path otherwise failed only at pip's network error, after its retries.
    pub fn check_reachable(&self, set: &[String]) -> Result<(), EnvError> {
        let index = self.index.shown();
        for line in set {
            let Some(target) = requirements::direct_reference(line) else { continue };
            let shown = without_credentials(line);
            if requirements::VCS_SCHEMES.iter().any(|scheme| target.starts_with(scheme)) {
                return Err(EnvError::Invalid(format!(
                    "requirement `{shown}`: installs from version control are not taken: the install sandbox has no \
                     git and reaches only the package index ({index}); publish the package there"
                )));
            }
            let Ok(url) = url::Url::parse(target).map_err(|_| ()).and_then(|url| match url.scheme() {
                "http" | "https" => Ok(url),
                _ => Err(()),
            }) else {
                return Err(EnvError::Invalid(format!(
                    "requirement `{shown}`: a path or file URL names a file of this machine, which the install \
                     sandbox does not have; publish the package on the package index ({index})"
                )));
            };
            if let Some(place) = self.unreachable_place(&url) {
                return Err(EnvError::Invalid(format!(
                    "requirement `{shown}`: its URL is on {place}, which the install sandbox cannot reach: it \
                     reaches only the package index ({index}); put the file there, or name the package and version"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a package-lock.json whose packages `npm ci` would fetch from a host other than the
    /// registry's, which the install sandbox cannot reach, before the install: it failed only at
    /// npm's retries, in ten lines of them (found by a new-user trial).
    pub fn check_lock_reachable(&self, package_lock: &str) -> Result<(), EnvError> {
        let Ok(lock) = serde_json::from_str::<serde_json::Value>(package_lock) else { return Ok(()) };
        // lockfileVersion 2 and 3 list `packages`; 1 nests `dependencies`.
        let mut pending: Vec<(&str, &serde_json::Value)> = ["packages", "dependencies"]
            .iter()
            .filter_map(|field| lock.get(*field).and_then(serde_json::Value::as_object))
            .flat_map(|entries| entries.iter().map(|(name, entry)| (name.as_str(), entry)))
            .collect();
        while let Some((name, entry)) = pending.pop() {
            if let Some(nested) = entry.get("dependencies").and_then(serde_json::Value::as_object) {
                pending.extend(nested.iter().map(|(name, entry)| (name.as_str(), entry)));
            }
            let Some(resolved) = entry.get("resolved").and_then(serde_json::Value::as_str) else { continue };
            let Ok(url) = url::Url::parse(resolved) else { continue };
            // npm fetches the public registry's files from the registry it is given instead
            // (its `replace-registry-host`, `npmjs` by default).
            if !matches!(url.scheme(), "http" | "https") || url.host_str() == Some(NPM_PUBLIC_REGISTRY) {
                continue;
            }
            if let Some(place) = self.unreachable_place(&url) {
                let name = name.rsplit("node_modules/").next().unwrap_or(name);
                return Err(EnvError::Invalid(format!(
                    "package-lock.json: `{name}` is fetched from {place}, which the install sandbox cannot reach: it \
                     reaches only the npm registry ({}); run `npm install` against that registry to write the lock file \
                     again",
                    self.index.shown()
                )));
            }
        }
        Ok(())
    }

    /// `url`'s host (and port, when not the scheme's) when the install sandbox cannot reach it.
    fn unreachable_place(&self, url: &url::Url) -> Option<String> {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default();
        if self.index.relays.iter().any(|relay| relay.host == host && Some(relay.port) == port) {
            return None;
        }
        Some(url.port().map_or_else(|| host.to_owned(), |port| format!("{host}:{port}")))
    }

    /// The id of an environment: what it is built from, hashed.
    pub fn id_of(&self, set: &[String]) -> String {
        let mut hash = Sha256::new();
        hash.update(format!("{}={}\nindex={}\n", self.language.as_str(), self.interpreter.display(), self.index.url));
        for line in set {
            hash.update(line.as_bytes());
            hash.update(b"\n");
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// The `site` directory of a built environment, or `None` when it is not built.
    pub fn ready(&self, id: &str) -> Option<PathBuf> {
        let dir = self.root.join(id);
        dir.join(META_FILE).is_file().then(|| dir.join("site"))
    }

    /// Waits for any other build of `id`; the guard keeps others waiting until dropped.
    pub async fn build_turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.build_lock(id).lock_owned().await
    }

    /// The turn to build `id` at once, when no other build of it goes on.
    pub fn try_build_turn(&self, id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.build_lock(id).try_lock_owned().ok()
    }

    fn build_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut builds = self.builds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(builds.entry(id.to_owned()).or_default())
    }

    /// A fresh build directory for `id`, with the installer's files written into it.
    pub fn begin_build(&self, id: &str, files: &[(&'static str, String)]) -> Result<InstallDirs, EnvError> {
        let work = self.root.join(format!("{BUILD_PREFIX}{id}"));
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io("remove", &work))?;
        }
        crate::engine::Engine::make_install_dirs(&work, self.language, files)
            .map_err(|error| EnvError::Invalid(format!("preparing the install failed: {error}")))
    }

    /// Makes a successful build the environment `id` and returns its `site`.
    pub fn finish_build(
        &self,
        id: &str,
        dirs: InstallDirs,
        shown: &[String],
        now_ms: u64,
    ) -> Result<PathBuf, EnvError> {
        let meta = EnvMeta { requirements: shown.to_vec(), created_at_ms: now_ms };
        let meta_path = dirs.work.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|error| EnvError::Invalid(error.to_string()))?;
        std::fs::write(&meta_path, bytes).map_err(io("write", &meta_path))?;
        // What only the build needed goes; the environment is `site` and its record.
        for leftover in ["disk.img", "project", "logs"] {
            let path = dirs.work.join(leftover);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if let Err(error) = removed
                && error.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io("remove", &path)(error));
            }
        }
        let ready = self.root.join(id);
        std::fs::rename(&dirs.work, &ready).map_err(io("rename", &dirs.work))?;
        Ok(ready.join("site"))
    }

    /// Removes a failed build.
    pub fn abandon_build(&self, dirs: InstallDirs) {
        if let Err(error) = std::fs::remove_dir_all(&dirs.work) {
            tracing::warn!(dir = %dirs.work.display(), %error, "could not remove a failed install");
        }
    }

    /// Marks `id` as used by a run (now, and until the guard is dropped).
    pub fn hold(&self, id: &str) -> InUse {
        let used = self.root.join(id).join(USED_FILE);
        // Not built yet (NotFound): held against pruning all the same, and marked once built.
        if let Err(error) = std::fs::File::create(&used)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %used.display(), %error, "could not note an environment's use");
        }
        let mut in_use = self.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *in_use.entry(id.to_owned()).or_default() += 1;
        InUse { id: id.to_owned(), in_use: Arc::clone(&self.in_use) }
    }

    pub fn list(&self) -> Result<Vec<EnvInfo>, EnvError> {
        let mut envs = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io("read", &self.root))?.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let meta_path = entry.path().join(META_FILE);
            let Ok(bytes) = std::fs::read(&meta_path) else { continue };
            let Ok(meta) = serde_json::from_slice::<EnvMeta>(&bytes) else {
                tracing::warn!(file = %meta_path.display(), "an environment's record is unreadable");
                continue;
            };
            let last_used_at_ms = std::fs::metadata(entry.path().join(USED_FILE))
                .ok()
                .and_then(|used| used.modified().ok())
                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(meta.created_at_ms, |since| since.as_millis() as u64);
            envs.push(EnvInfo {
                id,
                language: self.language,
                requirements: meta.requirements,
                bytes: disk_usage(&entry.path()),
                created_at_ms: meta.created_at_ms,
                last_used_at_ms,
            });
        }
        envs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(envs)
    }

    /// Removes the environments no run is using that were last used before `before_ms`;
    /// returns their ids and the bytes freed.
    pub fn prune(&self, before_ms: u64) -> Result<(Vec<String>, u64), EnvError> {
        let mut removed = Vec::new();
        let mut freed = 0;
        for env in self.list()? {
            if env.last_used_at_ms > before_ms {
                continue;
            }
            let in_use = self.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if in_use.contains_key(&env.id) {
                continue;
            }
            // Renamed first, under the in-use lock: a run finds it complete or not at all.
            let dir = self.root.join(&env.id);
            let doomed = self.root.join(format!("{BUILD_PREFIX}{}-pruned", env.id));
            std::fs::rename(&dir, &doomed).map_err(io("rename", &dir))?;
            drop(in_use);
            std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?;
            freed += env.bytes;
            removed.push(env.id);
        }
        Ok((removed, freed))
    }
}

/// Bytes of disk the files under `dir` take.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()) + meta.blocks() * 512,
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_environment_is_keyed_by_both_files_and_shows_its_dependencies() {
        let packages = |manifest: &str, lock: &str| {
            EnvRequest::node(&NodePackages { package_json: manifest.into(), package_lock: lock.into() })
        };
        let lock = r#"{"lockfileVersion": 3, "packages": {}}"#;
        let request = packages(r#"{"dependencies": {"b": "^1"}, "devDependencies": {"a": "2.0.0"}}"#, lock);
        let Ok(request) = request else { panic!("a good pair: {request:?}") };
        assert_eq!(request.shown, ["a@2.0.0", "b@^1"]);
        assert_eq!(request.described(), "2 Node packages");
        assert_eq!(
            request.files.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["package.json", "package-lock.json"]
        );
        assert!(matches!(packages("[]", lock), Err(EnvError::Invalid(_))));
        assert!(matches!(packages("{}", "{}"), Err(EnvError::Invalid(message)) if message.contains("lockfileVersion")));
        assert!(matches!(packages("{", lock), Err(EnvError::Invalid(_))));
    }

    #[test]
    fn what_an_environment_shows_holds_no_password() {
        let request = EnvRequest::python(vec![
            "tinypkg @ https://user:s3cret@example.org/simple/tinypkg-1.0.whl".into(),
            "plain==1.0".into(),
            "git+https://token@github.com/a/b.git@v1 ; python_version > '3'".into(),
        ]);
        assert_eq!(
            request.shown,
            [
                "tinypkg @ https://***@example.org/simple/tinypkg-1.0.whl",
                "plain==1.0",
                "git+https://***@github.com/a/b.git@v1 ; python_version > '3'"
            ]
        );
        assert!(request.set[0].contains("s3cret"), "the installer still gets the real line");
    }

    #[test]
    fn a_requirement_the_install_sandbox_cannot_fetch_is_refused() {
        let envs = |index: &str| Environments {
            root: PathBuf::from("/nonexistent"),
            language: Language::Python,
            index: PackageIndex::parse(index).expect("an index"),
            interpreter: PathBuf::from("/usr/bin/python3"),
            builds: Mutex::new(HashMap::new()),
            in_use: Arc::new(Mutex::new(HashMap::new())),
        };
        let refused = |envs: &Environments, line: &str| {
            envs.check_reachable(&[line.to_owned()]).err().map(|error| error.to_string()).unwrap_or_default()
        };
        let pypi = envs("https://pypi.org/simple");
        assert!(pypi.check_reachable(&["six==1.17.0".into(), "requests[socks]>=2".into()]).is_ok());
        assert!(pypi.check_reachable(&["six @ https://files.pythonhosted.org/p/six.whl".into()]).is_ok());
        let elsewhere = refused(&pypi, "six @ https://user:s3cret@example.org/six.whl");
        assert!(elsewhere.contains("its URL is on example.org, which the install sandbox cannot reach"), "{elsewhere}");
        assert!(!elsewhere.contains("s3cret"), "{elsewhere}");
        assert!(
            refused(&pypi, "git+https://github.com/a/b.git").contains("installs from version control are not taken")
        );
        for path in ["./pkg", "/srv/pkg.whl", "file:///srv/pkg.whl", "six @ file:///srv/six.whl"] {
            assert!(refused(&pypi, path).contains("names a file of this machine"), "{path}");
        }
        // A loopback index: its own address and port, not another port.
        let local = envs("http://127.0.0.1:8080/simple");
        assert!(local.check_reachable(&["six @ http://127.0.0.1:8080/six/six.whl".into()]).is_ok());
        assert!(refused(&local, "six @ http://127.0.0.1:9090/six.whl").contains("on 127.0.0.1:9090, which"));
        // A lock file's packages: the public registry's URLs are rewritten by npm to the
        // registry given, others must be on it.
        let lock = |resolved: &str| {
            serde_json::json!({"lockfileVersion": 3, "packages": {"": {}, "node_modules/left-pad": {"resolved": resolved}}})
                .to_string()
        };
        let said = |envs: &Environments, text: String| {
            envs.check_lock_reachable(&text).err().map(|error| error.to_string()).unwrap_or_default()
        };
        assert!(local.check_lock_reachable(&lock("https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz")).is_ok());
        assert!(local.check_lock_reachable(&lock("http://127.0.0.1:8080/left-pad/-/left-pad-1.3.0.tgz")).is_ok());
        let elsewhere = said(&local, lock("https://example.org/left-pad-1.3.0.tgz"));
        assert!(
            elsewhere.starts_with("package-lock.json: `left-pad` is fetched from example.org, which"),
            "{elsewhere}"
        );
        let nested = serde_json::json!({"lockfileVersion": 1, "dependencies": {"a": {"dependencies":
            {"b": {"resolved": "https://example.org:8443/b.tgz"}}}}});
        assert!(said(&local, nested.to_string()).contains("`b` is fetched from example.org:8443"));
    }
}
