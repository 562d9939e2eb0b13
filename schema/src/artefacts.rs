//! Files a run kept (docs/bkg-db.md, "Object storage"): what it wrote under `/workspace/out`
//! (or the paths it asked to keep), and its whole stdout and stderr when they were longer than
//! a result retains. Each is an object named by its SHA-256 in its namespace's part of the store.

use serde::{Deserialize, Serialize};

/// The directory under /workspace every temporary run keeps, when it has one.
pub const DEFAULT_KEEP: &str = "out";

/// The most paths one request may ask to keep.
pub const MAX_KEEP_PATHS: usize = 32;

/// What a kept file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunFileKind {
    /// A file the code wrote, its `path` relative to /workspace (`out/report.csv`).
    File,
    /// The run's whole stdout (`path` is `stdout`).
    Stdout,
    /// The run's whole stderr (`path` is `stderr`).
    Stderr,
}

impl RunFileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::File, Self::Stdout, Self::Stderr].into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One file a run kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunFile {
    /// Relative to /workspace for a file; `stdout` or `stderr` for the streams. Fetched at
    /// `GET /api/v1/runs/{id}/files/{path}`.
    pub path: String,
    pub kind: RunFileKind,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the content: the object's name in the store.
    pub sha256: String,
}

/// `GET /api/v1/runs/{id}/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunFiles {
    pub run_id: String,
    pub files: Vec<RunFile>,
}

/// Checks a path a request asks to keep: relative to /workspace (or absolute inside it), with
/// no `..` and not `stdout`/`stderr`, the names of the streams. Returns it relative to
/// /workspace, without `.` or empty parts (`./out//a.csv` is `out/a.csv`, as the shell takes it).
pub fn keep_path(path: &str) -> Result<String, String> {
    let inside = if path == "/workspace" { "" } else { path.strip_prefix("/workspace/").unwrap_or(path) };
    let parts: Vec<&str> = inside.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    let bad = parts.is_empty() || inside.starts_with('/') || inside.contains('\0') || parts.contains(&"..");
    if bad {
        return Err(format!("keep path `{path}` must name a file or directory under /workspace, without `..`"));
    }
    let relative = parts.join("/");
    if matches!(relative.as_str(), "stdout" | "stderr") {
        return Err(format!("keep path `{path}`: `stdout` and `stderr` are the names of the kept streams"));
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_paths_stay_under_the_workspace() {
        assert_eq!(keep_path("out"), Ok("out".to_owned()));
        assert_eq!(keep_path("/workspace/model/weights.bin"), Ok("model/weights.bin".to_owned()));
        assert_eq!(keep_path("data/"), Ok("data".to_owned()));
        assert_eq!(keep_path("./a"), Ok("a".to_owned()));
        assert_eq!(keep_path("/workspace/./out//a.csv"), Ok("out/a.csv".to_owned()));
        for bad in ["", "/", ".", "/etc/passwd", "../x", "a/../b", "/workspace/", "/workspace", "stdout", "./stderr"] {
            assert!(keep_path(bad).is_err(), "{bad}");
        }
    }
}
