//! `bkg init`: writes a project's cave.yaml and its `.bkg/` state folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use bkg_schema::Language;
use bkg_schema::cave::{self, DEFAULT_NAMESPACE, FILE_NAME, NAME_RULE, is_command, yaml_scalar};
use bkg_schema::sandbox::is_dns_label;

use crate::args::InitArgs;
use crate::exit::{CliError, SUCCESS};
use crate::project::{NewSandbox, checked_name, write_atomically};
use crate::prompt::ask_line;
use crate::settings::Settings;

/// What the new cave.yaml holds.
struct Answers {
    namespace: String,
    first: Option<(String, NewSandbox)>,
}

const HEADER: &str = "\
# cave.yaml: this project's sandboxes, run with `bkgr NAME [SCRIPT]`.
# Each sandbox has a type (python or node) and may set limits, scripts, env and volumes.
# `bkg add NAME --type python` adds one; `bkg validate` checks this file.
# The format is described in bkg's docs/cave-yaml.md.
";

/// Typed at the sandbox prompt to start with no sandbox at all.
const NO_SANDBOX: &str = "none";

pub fn run(settings: &Settings, args: InitArgs) -> Result<i32, CliError> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join(FILE_NAME);
    if path.symlink_metadata().is_ok() && !args.force {
        return Err(CliError::usage(match crate::project::link_to_no_file(&path) {
            Some(said) => format!("{said}: use --force to replace the link (it is kept beside it)"),
            None => format!("{} already exists: use --force to overwrite it", path.display()),
        }));
    }
    let answers = if interactive(&args) { ask(&args)? } else { from_flags(&args)? };
    let text = render(&answers);
    // What init writes must pass `bkg validate`; a failure here is a bug, not bad input.
    if let Err(errors) = cave::parse(&text, FILE_NAME) {
        return Err(CliError::internal(format!(
            "refusing to write an invalid cave.yaml: {}",
            errors.to_string().replace('\n', "; ")
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|error| {
        let hint = if dir.is_file() { ": it is a file; give the project's directory (made if missing)" } else { "" };
        CliError::usage(format!("cannot create {}: {error}{hint}", dir.display()))
    })?;
    // --force replaces the file, and keeps the one it replaces beside it: nothing the user
    // wrote is lost (found by a new-user trial: it was gone without a word).
    // One the same as what is written needs no copy (found by a new-user trial: `.bak.1`s of
    // the default file).
    // A link is replaced, never written through: the file it leads to may be another project's
    // (found by a new-user trial), and one to nothing, a directory or itself has no text to keep.
    let existing = path.symlink_metadata().ok();
    let kept = match &existing {
        // Not followed: a link is no file here.
        Some(meta) if !meta.is_file() => Some(keep_beside(&path)?),
        Some(_) if bkg_schema::cave::read_text(&path).is_ok_and(|old| old == text) => None,
        Some(_) => Some(keep_beside(&path)?),
        None => None,
    };
    if existing.is_some_and(|meta| meta.file_type().is_symlink()) {
        std::fs::remove_file(&path)
            .map_err(|error| CliError::usage(format!("cannot replace the link {}: {error}", path.display())))?;
    }
    write_atomically(&path, &text)?;
    if let Some(kept) = kept {
        settings.out.note(format_args!("the cave.yaml it replaces is kept as {}", kept.display()));
    }
    make_state_dir(&dir)?;
    let first = match &answers.first {
        Some((name, sandbox)) => {
            let starter = crate::project::write_starter(&dir, name, sandbox)?;
            format!(" with sandbox `{name}` ({}){starter}", sandbox.language.as_str())
        }
        None => String::new(),
    };
    settings
        .out
        .note(format_args!("wrote {}{first}; add sandboxes with `bkg add NAME --type python|node`", path.display()));
    // bkg finds the nearest cave.yaml from where it runs: this one now hides the outer project
    // from here down.
    let outer = dir
        .canonicalize()
        .ok()
        .and_then(|dir| dir.parent().and_then(|parent| crate::project::find_cave_file(parent).ok().flatten()));
    if let Some(outer) = outer {
        settings.out.note(format_args!(
            "{} is inside the project of {}: bkg run from here down now finds this cave.yaml, not that one",
            dir.display(),
            outer.display()
        ));
    }
    Ok(SUCCESS)
}

/// Copies `path` (a link: the link) to the first free name of `cave.yaml.bak`, `cave.yaml.bak.1`, …
/// beside it.
fn keep_beside(path: &Path) -> Result<PathBuf, CliError> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let backup = (0..1000)
        .map(|index| match index {
            0 => path.with_file_name(format!("{name}.bak")),
            index => path.with_file_name(format!("{name}.bak.{index}")),
        })
        .find(|candidate| candidate.symlink_metadata().is_err())
        .ok_or_else(|| CliError::usage(format!("{}.bak … .bak.999 are all taken: remove some", path.display())))?;
    let cannot_keep = |error: std::io::Error| {
        CliError::usage(format!("cannot keep {} as {}: {error}", path.display(), backup.display()))
    };
    // A link is kept as the link it is; what is no file (a pipe, whose copy waited for a writer
    // for ever: found by a new-user trial) is moved aside.
    let kind = path.symlink_metadata().map_err(cannot_keep)?.file_type();
    match std::fs::read_link(path) {
        Ok(target) => std::os::unix::fs::symlink(target, &backup).map_err(cannot_keep)?,
        Err(_) if !kind.is_file() => std::fs::rename(path, &backup).map_err(cannot_keep)?,
        Err(_) => _ = std::fs::copy(path, &backup).map_err(cannot_keep)?,
    }
    Ok(backup)
}

/// Prompts only with someone to answer them: both ends on a terminal, and not asked to skip.
fn interactive(args: &InitArgs) -> bool {
    let ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
    !args.yes && !ci && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// `.bkg/` holds the sandboxes' state; its own `.gitignore` keeps it out of git without
/// touching the project's.
fn make_state_dir(dir: &Path) -> Result<(), CliError> {
    let state = bkg_schema::paths::ProjectLayout::new(dir).state_dir();
    let failed = |error: std::io::Error| CliError::usage(format!("cannot create {}: {error}", state.display()));
    std::fs::create_dir_all(&state).map_err(failed)?;
    std::fs::write(state.join(".gitignore"), "*\n").map_err(failed)
}

fn from_flags(args: &InitArgs) -> Result<Answers, CliError> {
    let namespace = checked_namespace(args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))?;
    let Some(name) = &args.sandbox else {
        if args.language.is_some() || args.start.is_some() {
            return Err(CliError::usage("--type and --start describe the first sandbox: add --sandbox NAME"));
        }
        return Ok(Answers { namespace, first: None });
    };
    let language = args.language.unwrap_or(Language::Python);
    let start = match &args.start {
        Some(command) => checked_start(command)?,
        None => NewSandbox::default_start(language),
    };
    Ok(Answers { namespace, first: Some((checked_name(name)?, sandbox(language, start))) })
}

/// Asks for what the flags left open; a flag's value is not asked again.
fn ask(args: &InitArgs) -> Result<Answers, CliError> {
    let _asking = crate::prompt::Asking::begin();
    let namespace = match &args.namespace {
        Some(namespace) => checked_namespace(namespace)?,
        None => ask_line("Namespace", DEFAULT_NAMESPACE, |text| match bkg_schema::sandbox::is_namespace_name(text) {
            true => Ok(()),
            false => Err(format!("use {}", bkg_schema::sandbox::NAMESPACE_RULE)),
        })?,
    };
    let name = match &args.sandbox {
        Some(name) => checked_name(name)?,
        None => ask_line(&format!("First sandbox (a name, or `{NO_SANDBOX}`)"), "app", |text| {
            if is_dns_label(text) { Ok(()) } else { Err(format!("use {NAME_RULE}")) }
        })?,
    };
    if name == NO_SANDBOX && args.sandbox.is_none() {
        return Ok(Answers { namespace, first: None });
    }
    let language = match args.language {
        Some(language) => language,
        // Typed (found by a new-user trial: `node` typed at a list was ignored, and Enter took
        // `python`).
        None => {
            let typed =
                ask_line("Type (python or node)", Language::Python.as_str(), |text| match Language::parse(text) {
                    Some(_) => Ok(()),
                    None => Err("use python or node".to_owned()),
                })?;
            Language::parse(&typed).unwrap_or(Language::Python)
        }
    };
    let start = match &args.start {
        Some(command) => checked_start(command)?,
        None => ask_line("Start script", &NewSandbox::default_start(language), |text| {
            if is_command(text) { Ok(()) } else { Err("the command must not be empty".to_owned()) }
        })?,
    };
    Ok(Answers { namespace, first: Some((name, sandbox(language, start))) })
}

fn sandbox(language: Language, start: String) -> NewSandbox {
    NewSandbox {
        language,
        limits: Vec::new(),
        scripts: vec![("start".to_owned(), start)],
        env: Vec::new(),
        volumes: Vec::new(),
    }
}

fn render(answers: &Answers) -> String {
    let mut text = format!("{HEADER}version: 1\nnamespace: {}\n", yaml_scalar(&answers.namespace));
    match &answers.first {
        Some((name, sandbox)) => {
            text.push_str("sandboxes:\n");
            text.push_str(&sandbox.render(name, "  ", "  ", "\n"));
        }
        None => text.push_str("sandboxes: {}\n"),
    }
    text
}

fn checked_namespace(namespace: &str) -> Result<String, CliError> {
    if bkg_schema::sandbox::is_namespace_name(namespace) {
        Ok(namespace.to_owned())
    } else {
        Err(CliError::usage(format!(
            "`{namespace}` is not a valid namespace: use {}",
            bkg_schema::sandbox::NAMESPACE_RULE
        )))
    }
}

fn checked_start(command: &str) -> Result<String, CliError> {
    if is_command(command) {
        Ok(command.to_owned())
    } else {
        Err(CliError::usage("--start: the command must not be empty"))
    }
}
