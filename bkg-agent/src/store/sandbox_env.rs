//! The values of a persistent sandbox's environment, which may be credentials: kept out of the
//! store, the audit log and bkg_db (they hold the names only), in `env.json` in the sandbox's own
//! directory in the agent's state dir (`SandboxHome`), mode 0600 and owned by the agent. That
//! directory is removed with the sandbox, and a sandbox never sees it. A file an earlier agent
//! wrote in `PROJECT/.bkg/sandboxes/NAME/` is read when the new one is missing, if it is still
//! root's own (not a symlink, not a user's file).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bkg_schema::sandbox::SandboxDefinition;

use super::StoreError;

fn path(state_dir: &Path, definition: &SandboxDefinition) -> PathBuf {
    let id = bkg_schema::sandbox::sandbox_id(&definition.project_dir, &definition.name);
    bkg_schema::paths::SandboxHome::new(state_dir, &definition.namespace, &id).env_file()
}

/// An earlier agent's `env.json` in the project, if it is still root's own regular file.
fn read_legacy(definition: &SandboxDefinition) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let legacy = bkg_schema::paths::ProjectLayout::new(&definition.project_dir)
        .legacy_sandbox_dir(&definition.name)
        .join("env.json");
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(legacy).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != 0 || meta.nlink() != 1 {
        return None;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::SandboxEnv { action, path, source }
}

/// Writes the values of `definition`'s environment (removes the file when it has none), and
/// returns the definition as the store keeps it: every name, each with an empty value.
pub fn save(state_dir: &Path, definition: &SandboxDefinition) -> Result<SandboxDefinition, StoreError> {
    let file = path(state_dir, definition);
    if definition.env.is_empty() {
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io_error("remove", &file)(error)),
            _ => return Ok(definition.clone()),
        }
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let temporary = file.with_extension("json.new");
    let text = serde_json::to_vec(&definition.env)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    out.write_all(&text).and_then(|()| out.sync_all()).map_err(io_error("write", &temporary))?;
    std::fs::rename(&temporary, &file).map_err(io_error("replace", &file))?;
    let names = definition.env.keys().map(|name| (name.clone(), String::new())).collect();
    Ok(SandboxDefinition { env: names, ..definition.clone() })
}

/// Puts the values back into a definition read from the store. A value the store itself holds
/// (written before values were moved out) stands when the file has none.
pub fn load(state_dir: &Path, definition: &mut SandboxDefinition) -> Result<(), StoreError> {
    if definition.env.is_empty() {
        return Ok(());
    }
    let file = path(state_dir, definition);
    let values: BTreeMap<String, String> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => match read_legacy(definition) {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => BTreeMap::new(),
        },
        Err(error) => return Err(io_error("read", &file)(error)),
    };
    for (name, value) in &mut definition.env {
        match values.get(name) {
            Some(kept) => value.clone_from(kept),
            None if !value.is_empty() => {}
            // Still listed, stopped or removed: only a run would miss it, so it is said, not refused.
            None => tracing::warn!(sandbox = %definition.name, variable = %name, file = %file.display(),
                "the value of a sandbox's environment variable is missing; define the sandbox again"),
        }
    }
    Ok(())
}
