//! `cargo run -p xtask -- completions|man [DIR]` (`make completions`, `make man`): the shell
//! completions and man pages of bkg, bkgr and bkg-agent, from the clap definitions the binaries
//! parse with; `env-doc [FILE]` (`make env-doc`): docs/env.md, their flags and every environment
//! variable the code reads. A test fails when the checked-in files differ from what this writes.

mod env_doc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

/// The shells whose completions are checked in (`bkg completions` prints the others too).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Each binary's command, and the man section of its page.
fn binaries() -> Vec<(clap::Command, &'static str)> {
    vec![
        (bkg_cli::args::bkg_command(), "1"),
        (bkg_cli::args::bkgr_command(), "1"),
        // A daemon: section 8, which also keeps its page apart from `bkg agent`'s bkg-agent.1.
        (bkg_agent::daemon::AgentArgs::command(), "8"),
    ]
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes `completions/`: NAME.bash, _NAME and NAME.fish of each binary.
fn completions(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (mut command, _) in binaries() {
        let name = command.get_name().to_owned();
        for shell in SHELLS {
            written.push(clap_complete::generate_to(shell, &mut command, &name, dir)?);
        }
    }
    Ok(written)
}

/// Writes `docs/man/`: a page per command and subcommand (bkg.1, bkg-exe.1, bkg-agent-start.1, …).
fn man(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (mut command, section) in binaries() {
        command.build();
        pages(&command, section, dir, &mut written)?;
    }
    Ok(written)
}

fn pages(command: &clap::Command, section: &str, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let name = command.get_display_name().unwrap_or_else(|| command.get_name()).to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).title(name.to_uppercase()).section(section).render(&mut page)?;
    let path = dir.join(format!("{name}.{section}"));
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set() && sub.get_name() != "help") {
        pages(sub, section, dir, written)?;
    }
    Ok(())
}

/// Writes docs/env.md (or `path`).
fn env_doc(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let commands: Vec<clap::Command> = binaries().into_iter().map(|(command, _)| command).collect();
    let doc = env_doc::render(&repo(), &commands).map_err(std::io::Error::other)?;
    std::fs::write(path, doc)?;
    Ok(vec![path.to_owned()])
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let outcome = match task.as_str() {
        "completions" => completions(&args.next().map_or_else(|| repo().join("completions"), PathBuf::from)),
        "man" => man(&args.next().map_or_else(|| repo().join("docs/man"), PathBuf::from)),
        "env-doc" => env_doc(&args.next().map_or_else(|| repo().join("docs/env.md"), PathBuf::from)),
        _ => {
            eprintln!("xtask: give `completions [DIR]`, `man [DIR]` or `env-doc [FILE]`");
            return ExitCode::from(125);
        }
    };
    match outcome {
        Ok(written) => {
            eprintln!("xtask: wrote {} files", written.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("xtask: {task}: {error}");
            ExitCode::from(125)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `dir`, by name, with their content.
    fn contents(dir: &Path) -> std::collections::BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| {
                        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                        (entry.file_name().to_string_lossy().into_owned(), text)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check(task: fn(&Path) -> std::io::Result<Vec<PathBuf>>, checked_in: &Path, make: &str) {
        let fresh = tempfile::tempdir().expect("temp dir");
        task(fresh.path()).expect("generate");
        let (want, have) = (contents(fresh.path()), contents(checked_in));
        let differ: Vec<&String> = want
            .keys()
            .chain(have.keys())
            .filter(|name| want.get(*name) != have.get(*name))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(differ.is_empty(), "{} is out of date ({differ:?}): run `{make}`", checked_in.display());
    }

    #[test]
    fn checked_in_completions_match_the_code() {
        check(completions, &repo().join("completions"), "make completions");
    }

    #[test]
    fn checked_in_man_pages_match_the_code() {
        check(man, &repo().join("docs/man"), "make man");
    }

    #[test]
    fn checked_in_env_doc_matches_the_code() {
        let commands: Vec<clap::Command> = binaries().into_iter().map(|(command, _)| command).collect();
        let want = env_doc::render(&repo(), &commands).unwrap_or_else(|error| panic!("{error}"));
        let have = std::fs::read_to_string(repo().join("docs/env.md")).unwrap_or_default();
        assert!(want == have, "docs/env.md is out of date: run `make env-doc`");
    }

    #[test]
    fn the_libraries_env_md_names_are_still_built_in() {
        let lock = std::fs::read_to_string(repo().join("Cargo.lock")).expect("Cargo.lock");
        for (_, library, _) in env_doc::READ_BY_LIBRARIES {
            assert!(
                lock.contains(&format!("name = \"{library}\"\n")),
                "docs/env.md names {library}, no longer in Cargo.lock"
            );
        }
    }
}
