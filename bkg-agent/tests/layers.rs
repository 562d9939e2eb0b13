//! The agent's layering, checked on its source (docs/architecture.md, "Invariants"): the
//! transports (HTTP in `server/`, MCP in `mcp.rs`, the Web UI in `ui/`) call the operations in
//! `service/` and never reach the engine, the store or the sync themselves; and only `service/`
//! decides who may do what.

use std::path::{Path, PathBuf};

/// Modules of the agent that only translate between a caller and the operations.
const TRANSPORTS: [&str; 4] = ["src/server.rs", "src/server", "src/mcp.rs", "src/ui"];

/// What a transport must not name.
const BELOW_THE_OPERATIONS: [&str; 5] =
    ["crate::engine", "crate::store", "crate::sync", "crate::feed", "crate::retention"];

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().flat_map(|entry| rust_files(&entry.path())).collect();
    files.retain(|file| file.extension().is_some_and(|extension| extension == "rs"));
    files.sort();
    files
}

/// Lines of code (comments left out) of `file` that contain any of `needles`.
fn offending_lines(file: &Path, needles: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| needles.iter().any(|needle| line.contains(needle)))
        .map(|(number, line)| format!("{}:{}: {}", file.display(), number + 1, line.trim()))
        .collect()
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn transports_never_reach_below_the_operations() {
    let root = crate_dir();
    let files: Vec<PathBuf> = TRANSPORTS.iter().flat_map(|module| rust_files(&root.join(module))).collect();
    assert!(files.len() >= 8, "the transports' files were not found under {}", root.display());
    let offending: Vec<String> = files.iter().flat_map(|file| offending_lines(file, &BELOW_THE_OPERATIONS)).collect();
    assert!(offending.is_empty(), "transports must go through service/:\n{}", offending.join("\n"));
}

#[test]
fn only_the_operations_decide_who_may_do_what() {
    let root = crate_dir().join("src");
    // `auth/` says who a caller is (role, namespace); `service/access.rs` what that allows.
    let allowed = [root.join("service"), root.join("auth")];
    let deciding = [".is_admin()", "Role::Admin =>", "require_admin(", "require_code_runner(", "reaches("];
    let offending: Vec<String> = rust_files(&root)
        .iter()
        .filter(|file| !allowed.iter().any(|dir| file.starts_with(dir)))
        .flat_map(|file| offending_lines(file, &deciding))
        .collect();
    assert!(offending.is_empty(), "permission checks belong in service/access.rs:\n{}", offending.join("\n"));
}
