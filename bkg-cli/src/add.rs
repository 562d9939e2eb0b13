//! `bkg add`: adds a sandbox to cave.yaml. It is a text edit, not a re-serialisation, so the
//! user's comments, order and layout survive; the edited text is checked before it replaces the
//! file.

use std::collections::BTreeSet;

use bkg_schema::cave::{
    self, ENV_KEY_RULE, FILE_NAME, SCRIPT_NAME_RULE, Volume, is_command, is_env_key, is_script_name, yaml_scalar,
};

use crate::args::AddArgs;
use crate::exit::{CliError, SUCCESS};
use crate::project::{NewSandbox, checked_name};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: AddArgs) -> Result<i32, CliError> {
    let out = settings.out;
    let name = checked_name(&args.name)?;
    let sandbox = new_sandbox(&args)?;
    if args.file.is_some() {
        out.note(format_args!("`bkg add --file` is deprecated: use --cave (as `bkg exe --file` copies a file in)"));
    }
    let path = match args.cave.or(args.file) {
        Some(path) => path,
        None => crate::project::nearest_cave_file(args.dir.as_deref())?,
    };
    let file = path.display().to_string();
    let unreadable = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            // `bkg init` writes a cave.yaml where it runs: a file of another name is not its to
            // make (found by a new-user trial).
            let fix = match (path.file_name(), path.parent().filter(|dir| !dir.as_os_str().is_empty())) {
                (Some(name), Some(dir)) if name == FILE_NAME => {
                    format!("create it with `bkg init` in {}", dir.display())
                }
                (Some(name), None) if name == FILE_NAME => "create it with `bkg init`".to_owned(),
                _ => format!("give --cave a file that exists (`bkg init` writes a {FILE_NAME})"),
            };
            CliError::usage(format!("{file} does not exist: {fix}"))
        } else {
            CliError::usage(format!("cannot read {file}: {error}"))
        }
    };
    let project = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let made = crate::project::edit_locked(&path, unreadable, |text| {
        // Its problems as `bkg validate` and `bkg rm` say them: one `bkg:` line each.
        let before =
            cave::parse(text, &file).map_err(|errors| CliError::usage(errors.to_string().trim_end().to_owned()))?;
        if before.sandboxes.contains_key(&name) {
            return Err(CliError::usage(format!(
                "sandbox `{name}` already exists in {file}: pick another name, or change its entry there"
            )));
        }
        let edited = insert(text, &name, &sandbox)
            .map_err(|reason| CliError::usage(format!("cannot add to {file}: {reason}; add the sandbox by hand")))?;
        let after = cave::parse(&edited, &file).map_err(|errors| {
            CliError::usage(format!(
                "the new sandbox would make {file} invalid: {}",
                errors.to_string().replace('\n', "; ")
            ))
        })?;
        // The edit must add this one sandbox and change nothing else the file says.
        if !after.sandboxes.contains_key(&name) || !crate::project::same_but_for(&before, &after, &name) {
            return Err(CliError::internal(format!(
                "cannot add to {file} without changing its other entries; add the sandbox by hand"
            )));
        }
        // Before cave.yaml is written: a folder that cannot be made leaves the file as it was.
        let mut said = Vec::new();
        for volume in &sandbox.volumes {
            said.extend(volume_folder(project, volume)?);
        }
        Ok((Some(edited), said))
    })?;
    let starter = crate::project::write_starter(project, &name, &sandbox)?;
    out.note(format_args!("added sandbox `{name}` ({}) to {file}{starter}", sandbox.language.as_str()));
    for said in made {
        out.note(format_args!("{said}"));
    }
    Ok(SUCCESS)
}

/// Makes the project folder a new volume shares, if it is missing: `bkgr NAME` would refuse the
/// volume until it exists (found by a new-user trial: `bkg add api --volume data:/workspace/data`
/// was taken, and the sandbox could not run). A folder outside the project is only named: what
/// lies there is not the project's to make.
fn volume_folder(project: &std::path::Path, volume: &str) -> Result<Option<String>, CliError> {
    let Ok(volume) = bkg_schema::cave::Volume::parse(volume) else { return Ok(None) };
    let host = project.join(&volume.host);
    if std::fs::symlink_metadata(&host).is_ok() {
        return Ok(None);
    }
    // Inside as bkgr judges it, links followed: the nearest part that exists, resolved, is in
    // the project (found by a new-user trial: a link in the path made the folder outside).
    let existing = host.ancestors().find(|part| part.exists()).and_then(|part| std::fs::canonicalize(part).ok());
    let project_dir = std::fs::canonicalize(project).ok();
    let lexically_inside = volume
        .host
        .components()
        .all(|part| matches!(part, std::path::Component::Normal(_) | std::path::Component::CurDir));
    let inside = lexically_inside
        && matches!((&existing, &project_dir), (Some(existing), Some(project)) if existing.starts_with(project));
    // Said in full: a volume's path is taken from the project's directory, which is not the
    // current one in a subdirectory (found by a new-user trial: `./vol` typed in `sub/` made
    // the project's `vol`, and the note named only `./vol`).
    let full: std::path::PathBuf = project_dir.as_deref().unwrap_or(project).join(&volume.host).components().collect();
    let shown = match volume.host.is_absolute() {
        true => full.display().to_string(),
        false => format!("{} ({}, from the project's directory)", volume.host.display(), full.display()),
    };
    if !inside {
        return Ok(Some(format!(
            "{shown} does not exist, and is not the project's to make: `bkgr` refuses the volume until it does (one \
             outside the project needs `bkgr --allow-outside`)"
        )));
    }
    std::fs::create_dir_all(&host)
        .map_err(|error| CliError::usage(format!("cannot make the volume's folder {shown}: {error}")))?;
    Ok(Some(format!("made the volume's folder {shown}")))
}

/// Checks every flag before the file is touched: one line for the first bad one.
fn new_sandbox(args: &AddArgs) -> Result<NewSandbox, CliError> {
    let language = args.language;
    // As `bkg exe` checks them, the least with its hint included (was: the least was said of a
    // line of the cave.yaml that would have been written; found by a new-user trial).
    crate::shared::limit_overrides(&args.limits)?;
    let flags = &args.limits;
    let given = [("cpus", &flags.cpus), ("memory", &flags.memory), ("timeout", &flags.timeout), ("disk", &flags.disk)];
    let limits = given
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
        // A checked CPU count is digits and a dot: written bare it is a YAML number.
        .map(|(key, value)| (key, if key == "cpus" { value.clone() } else { yaml_scalar(value) }))
        .collect();

    let mut scripts = Vec::new();
    for script in &args.scripts {
        let Some((name, command)) = script.split_once('=') else {
            return Err(CliError::usage(format!("--script `{script}` is not NAME=COMMAND")));
        };
        if !is_script_name(name) {
            return Err(CliError::usage(format!(
                "--script: `{name}` is not a valid script name: use {SCRIPT_NAME_RULE}"
            )));
        }
        if !is_command(command) {
            return Err(CliError::usage(format!("--script {name}: the command is empty")));
        }
        scripts.push((name.to_owned(), command.to_owned()));
    }
    if scripts.is_empty() {
        scripts.push(("start".to_owned(), NewSandbox::default_start(language)));
    }
    once_each("--script", &scripts)?;

    let mut env = Vec::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            if !is_env_key(pair) {
                return Err(CliError::usage(format!("--env `{pair}` is not KEY=VALUE")));
            }
            // Unlike `bkg exe -e NAME`, not taken from this shell: cave.yaml would keep the
            // value, and a secret's belongs in `bkg secrets` (found by a new-user trial).
            return Err(CliError::usage(format!(
                "--env `{pair}` is not KEY=VALUE: cave.yaml keeps the value, so give it (`-e {pair}=\"${pair}\"` \
                 copies this shell's; a secret goes in `bkg secrets set {pair}` and cave.yaml's `secrets:`)"
            )));
        };
        if !is_env_key(key) {
            return Err(CliError::usage(format!("--env: `{key}` is not a valid variable name: use {ENV_KEY_RULE}")));
        }
        env.push((key.to_owned(), value.to_owned()));
    }
    once_each("--env", &env)?;

    for volume in &args.volumes {
        Volume::parse(volume).map_err(|error| CliError::usage(format!("--volume: {error}")))?;
    }
    Ok(NewSandbox { language, limits, scripts, env, volumes: args.volumes.clone() })
}

/// A key given twice would be a duplicate key in YAML.
fn once_each(flag: &str, entries: &[(String, String)]) -> Result<(), CliError> {
    let mut seen = BTreeSet::new();
    match entries.iter().find(|(key, _)| !seen.insert(key)) {
        Some((key, _)) => Err(CliError::usage(format!("{flag} `{key}` is given twice"))),
        None => Ok(()),
    }
}

/// The top-level `sandboxes:` line cut into its key and colon, its value, and its comment with
/// the blanks before it. None for any other line.
fn sandboxes_line(line: &str) -> Option<(&str, &str, &str)> {
    let after_key = ["sandboxes", "\"sandboxes\"", "'sandboxes'"].iter().find_map(|key| line.strip_prefix(key))?;
    let after_colon = after_key.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    if !(after_colon.is_empty() || after_colon.starts_with([' ', '\t'])) {
        return None;
    }
    let key_len = line.len() - after_colon.len();
    // A comment starts at a `#` after a blank; inside `{}` there is nothing to confuse it with.
    let comment_at = after_colon
        .char_indices()
        .find(|&(index, c)| c == '#' && after_colon[..index].ends_with([' ', '\t']))
        .map_or(after_colon.len(), |(index, _)| after_colon[..index].trim_end_matches([' ', '\t']).len());
    let (value, comment) = after_colon.split_at(comment_at);
    Some((&line[..key_len], value.trim(), comment))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Appends the sandbox to the end of the top-level `sandboxes:` block, in the file's own
/// indentation, spacing and line endings; `sandboxes: {}` becomes a block first.
fn insert(text: &str, name: &str, sandbox: &NewSandbox) -> Result<String, String> {
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    // Each line without its ending, with the byte offsets where it starts and where the next
    // one starts.
    let mut lines = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        lines.push((raw.trim_end_matches(['\n', '\r']), start, start + raw.len()));
        start += raw.len();
    }
    let (key_index, (key, value, comment)) = lines
        .iter()
        .enumerate()
        .find_map(|(index, (line, _, _))| sandboxes_line(line).map(|parts| (index, parts)))
        .ok_or("it has no top-level `sandboxes:` line")?;
    let (_, key_start, key_next) = lines[key_index];
    let ends_with_newline = |offset: usize| text[..offset].ends_with('\n');

    if value.split_whitespace().collect::<String>() == "{}" {
        let mut out = text[..key_start].to_owned();
        out.push_str(key);
        out.push_str(comment);
        out.push_str(newline);
        out.push_str(&sandbox.render(name, "  ", "  ", newline));
        out.push_str(&text[key_next..]);
        return Ok(out);
    }
    if !value.is_empty() {
        return Err(format!(
            "its `sandboxes:` is written inline (`{value}`), and only a block of entries can be appended to"
        ));
    }

    // The block runs to the next line that starts at column 0 and is not a comment.
    let block: Vec<&(&str, usize, usize)> = lines[key_index + 1..]
        .iter()
        .take_while(|(line, _, _)| is_blank(line) || is_comment(line) || line.starts_with(' '))
        .collect();
    let entries: Vec<usize> = (0..block.len())
        .filter(|&index| {
            let line = block[index].0;
            line.starts_with(' ') && !is_blank(line) && !is_comment(line)
        })
        .collect();
    let (Some(&first), Some(&last)) = (entries.first(), entries.last()) else {
        return Err("its `sandboxes:` block has no entries to follow".to_owned());
    };
    let indent = indentation(block[first].0);
    let step = entries
        .iter()
        .map(|&index| indentation(block[index].0))
        .find(|&child| child > indent)
        .map_or(indent, |child| child - indent);
    // Entries separated by blank lines get one before the new entry too.
    let spaced = (1..block.len()).any(|index| {
        is_blank(block[index - 1].0)
            && !is_blank(block[index].0)
            && !is_comment(block[index].0)
            && indentation(block[index].0) == indent
    });
    // After the last indented line: a trailing comment at column 0 stays with what follows.
    let last_indented = (first..block.len())
        .rev()
        .find(|&index| block[index].0.starts_with(' ') && !is_blank(block[index].0))
        .unwrap_or(last);
    let at = block[last_indented].2;
    let mut out = text[..at].to_owned();
    if !ends_with_newline(at) {
        out.push_str(newline);
    }
    if spaced {
        out.push_str(newline);
    }
    out.push_str(&sandbox.render(name, &" ".repeat(indent), &" ".repeat(step), newline));
    out.push_str(&text[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bkg_schema::Language;

    use super::*;

    fn python(start: &str) -> NewSandbox {
        NewSandbox {
            language: Language::Python,
            limits: vec![("memory", "256MiB".to_owned())],
            scripts: vec![("start".to_owned(), start.to_owned())],
            env: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn added(text: &str) -> String {
        insert(text, "new", &python("python new.py")).unwrap_or_else(|reason| panic!("{reason}"))
    }

    #[test]
    fn an_empty_flow_mapping_becomes_a_block() {
        assert_eq!(
            added("version: 1\nsandboxes: {}  # none yet\nnamespace: x\n"),
            "version: 1\nsandboxes:  # none yet\n  new:\n    type: python\n    limits:\n      memory: 256MiB\n    scripts:\n      start: python new.py\nnamespace: x\n"
        );
    }

    #[test]
    fn the_files_indentation_spacing_and_line_endings_are_kept() {
        let text = "sandboxes:\r\n    a:\r\n        type: node\r\n\r\n    b:\r\n        type: node\r\n# about the version\r\nversion: 1";
        assert_eq!(
            added(text),
            "sandboxes:\r\n    a:\r\n        type: node\r\n\r\n    b:\r\n        type: node\r\n\r\n    new:\r\n        type: python\r\n        limits:\r\n            memory: 256MiB\r\n        scripts:\r\n            start: python new.py\r\n# about the version\r\nversion: 1"
        );
    }

    #[test]
    fn a_file_without_a_final_newline_gets_one() {
        assert_eq!(
            added("version: 1\nsandboxes:\n  a: {type: node}"),
            "version: 1\nsandboxes:\n  a: {type: node}\n  new:\n    type: python\n    limits:\n      memory: 256MiB\n    scripts:\n      start: python new.py\n"
        );
    }

    #[test]
    fn inline_mappings_are_not_rewritten() {
        let refused = insert("version: 1\nsandboxes: {a: {type: node}}\n", "new", &python("x"));
        assert!(refused.is_err());
        assert!(insert("version: 1\n", "new", &python("x")).is_err());
    }

    #[test]
    fn the_key_line_is_recognised_only_at_the_top_level() {
        assert_eq!(sandboxes_line("sandboxes:"), Some(("sandboxes:", "", "")));
        assert_eq!(sandboxes_line("'sandboxes' : {} # c"), Some(("'sandboxes' :", "{}", " # c")));
        assert_eq!(sandboxes_line("  sandboxes:"), None);
        assert_eq!(sandboxes_line("sandboxes2:"), None);
        assert_eq!(sandboxes_line("sandboxes:x"), None);
    }
}
