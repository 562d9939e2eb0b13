//! The values of a persistent sandbox's environment, which may be credentials: kept out of the
//! store, the audit log and bkg_db (they hold the names only), in `env.json` in the sandbox's own
//! directory `PROJECT/.bkg/sandboxes/NAME/`, mode 0600 and owned by the agent. That directory is
//! removed with the sandbox, and a sandbox never sees it (`/project/.bkg` is masked in it).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bkg_schema::sandbox::SandboxDefinition;

use super::StoreError;

fn path(definition: &SandboxDefinition) -> PathBuf {
    bkg_schema::paths::ProjectLayout::new(&definition.project_dir).env_file(&definition.name)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::SandboxEnv { action, path, source }
}

/// Writes the values of `definition`'s environment (removes the file when it has none), and
/// returns the definition as the store keeps it: every name, each with an empty value.
pub fn save(definition: &SandboxDefinition) -> Result<SandboxDefinition, StoreError> {
    let file = path(definition);
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
pub fn load(definition: &mut SandboxDefinition) -> Result<(), StoreError> {
    if definition.env.is_empty() {
        return Ok(());
    }
    let file = path(definition);
    let values: BTreeMap<String, String> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
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
