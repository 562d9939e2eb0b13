//! The project around the current directory, and what `bkg init` and `bkg add` share: the YAML
//! they write and how they write it.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bkg_schema::Language;
use bkg_schema::cave::{CaveErrors, CaveFile, FILE_NAME, InPart, NAME_RULE, yaml_scalar as scalar};
use bkg_schema::sandbox::is_dns_label;

use crate::exit::CliError;
use crate::out::Printer;

/// The cave.yaml in `start` or the nearest directory above it. A directory that cannot be
/// looked into ends the search with its error: going past it could find another project's file.
pub(crate) fn find_cave_file(start: &Path) -> Result<Option<PathBuf>, CliError> {
    for dir in start.ancestors() {
        let candidate = dir.join(FILE_NAME);
        match std::fs::metadata(&candidate) {
            Ok(metadata) if metadata.is_file() => return Ok(Some(candidate)),
            // Not passed over for a project further up, whose file would then be used unnoticed
            // (found by a new-user trial: a FIFO named cave.yaml made `bkg ls` say there was none).
            Ok(_) => {
                return Err(CliError::usage(format!(
                    "cannot read {}: it is not a regular file (a pipe, a device, a socket or a directory)",
                    candidate.display()
                )));
            }
            // A link that leads nowhere is this directory's project file gone missing, not a
            // sign to look further up (found by a new-user trial: the project above was used,
            // and `bkg add` wrote into it).
            Err(_) if let Some(error) = link_to_nothing(&candidate) => return Err(error),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
            Err(error) => {
                return Err(CliError::usage(format!("cannot look for cave.yaml in {}: {error}", dir.display())));
            }
        }
    }
    Ok(None)
}

/// The refusal of a cave.yaml that is a link to nothing.
fn link_to_nothing(cave: &Path) -> Option<CliError> {
    link_to_no_file(cave).map(|said| CliError::usage(format!("{said}: put the file back, or remove the link")))
}

/// What `path` is, said, when it is a symbolic link whose target does not exist.
pub(crate) fn link_to_no_file(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    std::fs::metadata(path)
        .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
        .then(|| format!("{} is a link to no file (it links to {})", path.display(), target.display()))
}

/// The cave.yaml a command that reads or edits the file itself (`bkg validate`, `bkg add`)
/// takes when given no path: the project's around `-C DIR` or the current directory, as every
/// other command finds it (`DIR/cave.yaml` or `./cave.yaml` when it is there, or when there is
/// none to find, so the error names the file `bkg init` would write).
pub fn nearest_cave_file(dir: Option<&Path>) -> Result<PathBuf, CliError> {
    let Some(dir) = dir else {
        let here = PathBuf::from(FILE_NAME);
        if let Some(error) = link_to_nothing(&here) {
            return Err(error);
        }
        // One that is there, whatever it is, is this directory's: its reader says what is wrong.
        if here.symlink_metadata().is_ok() {
            return Ok(here);
        }
        let Ok(current) = std::env::current_dir() else { return Ok(here) };
        return Ok(find_cave_file(&current)?.unwrap_or(here));
    };
    let given = dir.join(FILE_NAME);
    if given.is_file() {
        return Ok(given);
    }
    if let Some(error) = link_to_nothing(&given) {
        return Err(error);
    }
    Ok(find_cave_file(&given_dir(dir)?)?.unwrap_or(given))
}

/// `-C DIR` made absolute: a directory that exists, else one line (found by a new-user trial: a
/// file given as DIR was taken as the directory it is in by some commands and not by others).
fn given_dir(dir: &Path) -> Result<PathBuf, CliError> {
    let shown = dir.display();
    match dir.canonicalize() {
        Ok(found) if found.is_dir() => Ok(found),
        Ok(_) => Err(CliError::usage(format!("-C {shown}: not a directory"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(CliError::usage(format!("-C {shown}: no such directory")))
        }
        Err(error) => Err(CliError::usage(format!("-C {shown}: {error}"))),
    }
}

/// The project around the current directory (or `--dir`): its absolute directory.
pub fn project_dir(dir: Option<&Path>) -> Result<PathBuf, CliError> {
    find_project(dir)?.map_err(NoProject::into_error)
}

/// Why a command found no project around it.
#[derive(Debug)]
pub enum NoProject {
    /// No cave.yaml in this directory or any above it.
    NoCaveFile { searched_from: PathBuf },
    /// The current directory cannot be read (removed under the shell, say).
    NoCurrentDir(CliError),
    /// The search found this directory's project file, or a directory on the way, unusable (a
    /// cave.yaml that is no file, a link to nothing, a directory that cannot be looked into).
    Unusable(CliError),
}

impl NoProject {
    pub fn into_error(self) -> CliError {
        match self {
            NoProject::NoCaveFile { searched_from } => {
                CliError::usage(format!("no cave.yaml in {} or above: run `bkg init` first", searched_from.display()))
            }
            NoProject::NoCurrentDir(error) | NoProject::Unusable(error) => error,
        }
    }
}

/// The project around `dir` (or the current directory), or why there is none; `Err` only where
/// `dir` itself cannot be read.
fn find_project(dir: Option<&Path>) -> Result<Result<PathBuf, NoProject>, CliError> {
    let start = match dir {
        Some(dir) => given_dir(dir)?,
        None => match std::env::current_dir().and_then(|start| start.canonicalize()) {
            Ok(start) => start,
            Err(error) => {
                let error = CliError::usage(format!("cannot read the current directory: {error}"));
                return Ok(Err(NoProject::NoCurrentDir(error)));
            }
        },
    };
    Ok(match find_cave_file(&start) {
        Ok(Some(cave)) => Ok(cave.parent().map(Path::to_path_buf).unwrap_or(start)),
        Ok(None) => Err(NoProject::NoCaveFile { searched_from: start }),
        Err(error) => Err(NoProject::Unusable(error)),
    })
}

/// The project a command acts in when it can act outside one too: `Ok(Err(why))` when no
/// cave.yaml is around the current directory (the command then looks agent-wide), but a
/// `-C DIR` that names no project, or a project file that cannot be used, is an error, never a
/// silent look elsewhere (found by a new-user trial: in a project whose cave.yaml linked to
/// nothing, `bkg rm --force NAME` removed another project's sandbox of that name).
pub fn project_if_any(dir: Option<&Path>) -> Result<Result<PathBuf, NoProject>, CliError> {
    match find_project(dir)? {
        Err(why) if dir.is_some() => Err(why.into_error()),
        Err(NoProject::Unusable(error)) => Err(error),
        found => Ok(found),
    }
}

/// A name `cave` does not declare, with the names it does.
pub fn unknown_sandbox(cave: &CaveFile, name: &str) -> CliError {
    let known: Vec<&str> = cave.sandboxes.keys().map(String::as_str).collect();
    match known.is_empty() {
        true => CliError::usage(format!(
            "no sandbox `{name}` in cave.yaml (it declares none: `bkg add {name} --type python` adds one, or `--type node`)"
        )),
        false => CliError::usage(format!("no sandbox `{name}` in cave.yaml (it has: {})", known.join(", "))),
    }
}

/// Why sandbox `name` of the project at `project` has nothing to show: its cave.yaml does not
/// declare it, or else `otherwise` (it has not run yet).
/// `otherwise` says it has not run, given the command that runs it (`run_command`).
pub fn missing_sandbox(project: &Path, name: &str, otherwise: impl FnOnce(&str) -> String) -> CliError {
    // A cave.yaml that does not load cannot say: its problems are what to fix first.
    match load_cave(project) {
        Ok(cave) => match cave.sandboxes.get(name) {
            Some(spec) => CliError::usage(otherwise(&run_command(name, spec))),
            None => unknown_sandbox(&cave, name),
        },
        Err(problems) => problems,
    }
}

/// The command that runs sandbox `name` once: `bkgr NAME` runs its `start` script, so one
/// without it is run by another of its scripts, or by a command of the user's (`bkg exec`).
fn run_command(name: &str, spec: &bkg_schema::cave::SandboxSpec) -> String {
    if spec.scripts.contains_key("start") {
        return format!("`bkgr {name}`");
    }
    match spec.scripts.keys().next() {
        Some(script) => format!("`bkgr {name} {script}`"),
        // Not `bkg exec`: a session's output is not the sandbox's log.
        None => format!("a script of its own (`scripts:` in cave.yaml) and `bkgr {name} SCRIPT`"),
    }
}

/// The cave.yaml of `project`, checked: an invalid one is refused with its problems.
pub fn load_cave(project: &Path) -> Result<CaveFile, CliError> {
    bkg_schema::cave::load(&project.join("cave.yaml")).map_err(|errors| cave_problems(&errors))
}

/// The cave.yaml of `project` as far as it is valid: its sandboxes with problems left out, when
/// only sandboxes have any; refused with its problems otherwise.
pub fn load_cave_in_part(project: &Path) -> Result<InPart, CliError> {
    bkg_schema::cave::load_in_part(&project.join("cave.yaml")).map_err(|errors| cave_problems(&errors))
}

/// The cave.yaml of `project` for work on sandbox `name` alone: one whose problems all lie in
/// other sandboxes is used without them, said in a note (found by a new-user trial: one invalid
/// sandbox kept `bkg cp`, `bkg exec` and `bkgr` from every other); refused with `name`'s own
/// problems when it has some (not the others': found by a new-user trial), with all of them when
/// the file has others.
pub fn load_cave_for(project: &Path, name: &str, out: Printer) -> Result<CaveFile, CliError> {
    let part = load_cave_in_part(project)?;
    if let Some(problems) = part.problems.as_ref().filter(|_| part.left_out.contains(name)) {
        return Err(cave_problems(&problems.of_sandbox(name)));
    }
    note_left_out(out, &part);
    Ok(part.cave)
}

/// Says which sandboxes of cave.yaml were left out for their problems, if any were.
pub fn note_left_out(out: Printer, part: &InPart) {
    if part.left_out.is_empty() {
        return;
    }
    let names: Vec<String> = part.left_out.iter().map(|name| format!("`{name}`")).collect();
    let (them, are) = if names.len() == 1 { ("sandbox", "is") } else { ("sandboxes", "are") };
    out.note(format_args!(
        "cave.yaml's {them} {} {are} invalid and left out (`bkg validate` says why)",
        names.join(", ")
    ));
}

fn cave_problems(errors: &CaveErrors) -> CliError {
    CliError::usage(errors.to_string().trim_end().to_owned())
}

/// Whether `after` says all that `before` says but for sandbox `name`: what an edit of one entry
/// (`bkg add`, `bkg rm`) must leave alone before it is written.
pub fn same_but_for(before: &CaveFile, after: &CaveFile, name: &str) -> bool {
    before.version == after.version
        && before.namespace == after.namespace
        && sandboxes_but(before, name) == sandboxes_but(after, name)
}

/// The sandboxes of `file` but `name`, in order.
fn sandboxes_but<'a>(file: &'a CaveFile, name: &str) -> Vec<(&'a String, &'a bkg_schema::cave::SandboxSpec)> {
    file.sandboxes.iter().filter(|(key, _)| *key != name).collect()
}

/// A sandbox about to be written, its entries in the order the user gave them.
#[derive(Debug)]
pub struct NewSandbox {
    pub language: Language,
    /// (key, value as YAML), in the schema's order: cpus, memory, timeout, disk.
    pub limits: Vec<(&'static str, String)>,
    pub scripts: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub volumes: Vec<String>,
}

impl NewSandbox {
    /// The start script every new sandbox gets unless it names its own.
    pub fn default_start(language: Language) -> String {
        format!("{} {}", language.as_str(), language.default_script_name())
    }

    /// The block-style YAML of `name: {...}`: the name at `indent`, each level `step` deeper.
    pub fn render(&self, name: &str, indent: &str, step: &str, newline: &str) -> String {
        let one = format!("{indent}{step}");
        let two = format!("{one}{step}");
        let mut out = format!("{indent}{}:{newline}", scalar(name));
        out.push_str(&format!("{one}type: {}{newline}", self.language.as_str()));
        let mut section = |key: &str, entries: Vec<(&str, String)>| {
            if !entries.is_empty() {
                out.push_str(&format!("{one}{key}:{newline}"));
                for (name, value) in entries {
                    out.push_str(&format!("{two}{}: {value}{newline}", scalar(name)));
                }
            }
        };
        section("limits", self.limits.iter().map(|(key, value)| (*key, value.clone())).collect());
        section("scripts", quoted(&self.scripts));
        section("env", quoted(&self.env));
        if !self.volumes.is_empty() {
            out.push_str(&format!("{one}volumes:{newline}"));
            for volume in &self.volumes {
                out.push_str(&format!("{two}- {}{newline}", scalar(volume)));
            }
        }
        out
    }
}

fn quoted(entries: &[(String, String)]) -> Vec<(&str, String)> {
    entries.iter().map(|(name, value)| (name.as_str(), scalar(value))).collect()
}

/// Edits cave.yaml at `path` under a lock: `edit` gets the file's text as it is now and gives
/// the new text, or `None` to leave it. Two `bkg add` or `bkg rm` at once edit one after the
/// other; without the lock each wrote its own edit of the same old text and the last one won
/// (found by a new-user trial: of four sandboxes added at once, one was in the file, and each
/// command said it had added its own). The lock is on the file's directory, as each edit
/// replaces the file itself (`write_atomically`); where the directory cannot be opened, the edit
/// goes on unlocked.
pub fn edit_locked<T>(
    path: &Path,
    read: impl FnOnce(std::io::Error) -> CliError,
    edit: impl FnOnce(&str) -> Result<(Option<String>, T), CliError>,
) -> Result<T, CliError> {
    let (prepared, outcome) = prepare_edit_locked(path, read, edit)?;
    if let Some(prepared) = prepared {
        prepared.finish()?;
    }
    Ok(outcome)
}

/// `edit_locked` up to the moment the file is replaced: the new text is written beside it and
/// the lock held until [`PreparedEdit::finish`] puts it in place. `bkg rm` deletes a sandbox
/// in between, so that a cave.yaml it cannot write stops it before the sandbox's data goes.
pub fn prepare_edit_locked<T>(
    path: &Path,
    read: impl FnOnce(std::io::Error) -> CliError,
    edit: impl FnOnce(&str) -> Result<(Option<String>, T), CliError>,
) -> Result<(Option<PreparedEdit>, T), CliError> {
    let (_, dir) = resolved(path);
    let lock = std::fs::File::open(&dir)
        .ok()
        .and_then(|dir| nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).ok());
    let text = bkg_schema::cave::read_text(path).map_err(read)?;
    let (edited, outcome) = edit(&text)?;
    let prepared = match edited {
        Some(edited) => Some(PreparedEdit { write: PreparedWrite::new(path, &edited)?, _lock: lock }),
        None => None,
    };
    Ok((prepared, outcome))
}

/// An edit of cave.yaml ready to be put in place, its directory still locked.
pub struct PreparedEdit {
    write: PreparedWrite,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl PreparedEdit {
    pub fn finish(self) -> Result<(), CliError> {
        self.write.finish()
    }
}

/// The file `path` names, links followed, and the directory that holds it: where an edit locks
/// and where its replacement is written.
fn resolved(path: &Path) -> (PathBuf, PathBuf) {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (target, dir)
}

/// Replaces `path` with `text` all at once: a reader sees the old file or the new one, never
/// half of it. A replaced file keeps its permissions, owner and group; a symbolic link stays
/// one, and the file it leads to is replaced. Where this user cannot give the new file the old
/// one's owner and group, the file is rewritten in place instead (not all at once).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    PreparedWrite::new(path, text)?.finish()
}

/// `write_atomically` in two steps: everything that can fail before the file is replaced is
/// done by [`PreparedWrite::new`], the new text written and synced beside it (or, to be
/// rewritten in place, the file opened for writing).
struct PreparedWrite {
    path: PathBuf,
    target: PathBuf,
    how: Replacement,
}

enum Replacement {
    Renamed(tempfile::NamedTempFile),
    InPlace(std::fs::File, String),
}

impl PreparedWrite {
    fn new(path: &Path, text: &str) -> Result<Self, CliError> {
        let failed = |error: std::io::Error| write_failed(path, error);
        let (target, dir) = resolved(path);
        let existing = std::fs::metadata(&target).ok();
        let mut file = tempfile::Builder::new()
            .prefix(".cave.yaml.")
            .suffix(".tmp")
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(failed)?;
        let prepared = |how| Ok(Self { path: path.to_path_buf(), target: target.clone(), how });
        if let Some(existing) = &existing {
            use std::os::unix::fs::MetadataExt;
            let made = file.as_file().metadata().map_err(failed)?;
            let owned = (made.uid(), made.gid()) == (existing.uid(), existing.gid())
                || std::os::unix::fs::fchown(file.as_file(), Some(existing.uid()), Some(existing.gid())).is_ok();
            if !owned {
                drop(file);
                let opened = std::fs::OpenOptions::new().write(true).open(&target).map_err(failed)?;
                return prepared(Replacement::InPlace(opened, text.to_owned()));
            }
            file.as_file().set_permissions(existing.permissions()).map_err(failed)?;
        }
        file.write_all(text.as_bytes()).map_err(failed)?;
        file.as_file().sync_all().map_err(failed)?;
        prepared(Replacement::Renamed(file))
    }

    fn finish(self) -> Result<(), CliError> {
        let failed = |error: std::io::Error| write_failed(&self.path, error);
        match self.how {
            Replacement::Renamed(file) => file.persist(&self.target).map(drop).map_err(|error| failed(error.error)),
            Replacement::InPlace(mut file, text) => {
                file.set_len(0).and_then(|()| file.write_all(text.as_bytes())).map_err(failed)
            }
        }
    }
}

/// Says the error without the name of the temporary file it happened to (`… at path
/// ".cave.yaml.W4uijw.tmp"`), and what to do where the directory is not this user's to write
/// (found by a trial).
fn write_failed(path: &Path, error: std::io::Error) -> CliError {
    // tempfile's error wraps the system's with the path, and keeps only its kind.
    let error = match error.raw_os_error() {
        None if error.get_ref().is_some() => std::io::Error::from(error.kind()),
        _ => error,
    };
    let fix = match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ": its directory must be one you may write in"
        }
        _ => "",
    };
    CliError::usage(format!("cannot write {}: {error}{fix}", path.display()))
}

pub fn checked_name(name: &str) -> Result<String, CliError> {
    if is_dns_label(name) {
        Ok(name.to_owned())
    } else {
        Err(CliError::usage(format!("`{name}` is not a valid sandbox name: use {NAME_RULE}")))
    }
}

/// What `write_starter` did, said after `added sandbox ...` (`bkg init`, `bkg add`).
pub enum Starter {
    /// The sandbox starts a command of its own.
    NotNeeded,
    Written(&'static str),
    /// The default start script was there already (another sandbox's starter, say): the new
    /// sandbox runs it too, which it must say, or `bkgr NEW` printing `hello from OLD` puzzles.
    AlreadyThere(&'static str),
}

impl std::fmt::Display for Starter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotNeeded => Ok(()),
            Self::Written(file) => write!(f, " and a starter {file}"),
            Self::AlreadyThere(file) => write!(f, "; it starts the {file} already there"),
        }
    }
}

/// With the default start script and no such file yet, writes one, so `bkgr` runs the new
/// project as it is.
pub fn write_starter(dir: &Path, name: &str, sandbox: &NewSandbox) -> Result<Starter, CliError> {
    let language = sandbox.language;
    let file = language.default_script_name();
    let path = dir.join(file);
    let is_default = sandbox
        .scripts
        .iter()
        .any(|(script, command)| script == "start" && *command == NewSandbox::default_start(language));
    if !is_default {
        return Ok(Starter::NotNeeded);
    }
    if path.symlink_metadata().is_ok() {
        return Ok(Starter::AlreadyThere(file));
    }
    let (comment, print) = match language {
        Language::Python => ("#", format!("print(\"hello from {name}\")")),
        Language::Node => ("//", format!("console.log(\"hello from {name}\");")),
    };
    let text = format!(
        "{comment} Run with `bkgr {name}`. It starts in /project, this folder, which the sandbox reads but\n\
         {comment} cannot change; write to /workspace (kept between runs) or /tmp (emptied each run).\n{print}\n"
    );
    std::fs::write(&path, text)
        .map_err(|error| CliError::usage(format!("cannot write {}: {error}", path.display())))?;
    Ok(Starter::Written(file))
}
