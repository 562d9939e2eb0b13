//! The docs against the code: links resolve, README.md links every doc, the commands every doc
//! shows in its shell blocks parse with the real command-line grammar, and docs/FEATURE_ORIGINS.md
//! names commits and tests that exist. (README.md's tour is also run for real against an agent:
//! tests/e2e/docs_readme.rs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// README.md, AGENTS.md and every docs/*.md, as paths relative to the repository.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned(), "AGENTS.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of `markdown` outside fenced code blocks (a link shown as code is not a link).
fn prose(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The targets of the `[text](target)` links of `markdown`, outside code.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(markdown) {
        // Inline code may show link syntax without being a link.
        let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (at, _) in line.match_indices("](") {
            if let Some(end) = line[at + 2..].find(')') {
                targets.push(line[at + 2..at + 2 + end].to_owned());
            }
        }
    }
    targets
}

/// Relative link targets resolved against the directory of `file`, without their `#fragment`.
fn relative_links(file: &str) -> Vec<(String, PathBuf)> {
    let dir = repo().join(file).parent().map(Path::to_path_buf).unwrap_or_else(repo);
    link_targets(&read(file))
        .into_iter()
        .filter(|target| !target.contains("://") && !target.starts_with('#') && !target.starts_with("mailto:"))
        .map(|target| {
            let path = target.split('#').next().unwrap_or_default().to_owned();
            (target, dir.join(path))
        })
        .collect()
}

#[test]
fn every_relative_link_of_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut count = 0;
    for file in markdown_files() {
        for (target, path) in relative_links(&file) {
            count += 1;
            if !path.exists() {
                broken.push(format!("{file}: ({target})"));
            }
        }
    }
    assert!(count > 20, "only {count} relative links found: is the link reader broken?");
    assert!(broken.is_empty(), "links to files that do not exist:\n{}", broken.join("\n"));
}

#[test]
fn readme_links_every_doc_agents_md_and_the_examples() {
    let linked: BTreeSet<PathBuf> =
        relative_links("README.md").into_iter().filter_map(|(_, path)| path.canonicalize().ok()).collect();
    let mut wanted: Vec<String> = markdown_files().into_iter().filter(|file| file != "README.md").collect();
    wanted.push("examples".to_owned());
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|file| repo().join(file).canonicalize().map_or(true, |path| !linked.contains(&path)))
        .collect();
    assert!(missing.is_empty(), "README.md does not link {missing:?}");
}

/// One shell word or operator of a command line.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Operator(String),
}

/// Splits a shell line as sh would for what the docs show: quotes, backslashes, comments, and
/// the operators `|`, `&&`, `;` and redirections.
fn shell_tokens(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let text = word.get_or_insert_with(String::new);
                for quoted in chars.by_ref() {
                    if quoted == '\'' {
                        break;
                    }
                    text.push(quoted);
                }
            }
            '"' => {
                let text = word.get_or_insert_with(String::new);
                while let Some(quoted) = chars.next() {
                    match quoted {
                        '"' => break,
                        '\\' => text.extend(chars.next()),
                        other => text.push(other),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '#' if word.is_none() => break,
            c if c.is_whitespace() => tokens.extend(word.take().map(Token::Word)),
            '|' | '&' | ';' | '<' | '>' => {
                // `2>&1`, `2> file`: the descriptor's number belongs to the redirection.
                let number = word.as_ref().is_some_and(|text| text.chars().all(|d| d.is_ascii_digit()));
                let mut operator = match word.take() {
                    Some(text) if number && (c == '>' || c == '<') => text,
                    Some(text) => {
                        tokens.push(Token::Word(text));
                        String::new()
                    }
                    None => String::new(),
                };
                operator.push(c);
                while let Some(&next) = chars.peek().filter(|next| "|&<>".contains(**next)) {
                    operator.push(next);
                    chars.next();
                }
                tokens.push(Token::Operator(operator));
            }
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    tokens.extend(word.map(Token::Word));
    tokens
}

/// `NAME=VALUE` before a command sets its environment.
fn is_assignment(word: &str) -> bool {
    word.split_once('=')
        .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// The simple commands of `line` that run bkg, bkgr or bkg-agent, as argv (sudo, variable
/// assignments and redirections taken off).
fn bkg_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut redirect_target = false;
    for token in shell_tokens(line).into_iter().chain([Token::Operator(";".to_owned())]) {
        match token {
            Token::Word(_) if redirect_target => redirect_target = false,
            Token::Word(word) => current.push(word),
            Token::Operator(operator) if operator.contains('>') || operator.contains('<') => {
                // `>&1` names its target inside the operator's next word all the same.
                redirect_target = true;
            }
            Token::Operator(_) => {
                let start =
                    current.iter().position(|word| word != "sudo" && !is_assignment(word)).unwrap_or(current.len());
                let argv = current.split_off(start);
                if argv.first().is_some_and(|program| ["bkg", "bkgr", "bkg-agent"].contains(&program.as_str())) {
                    commands.push(argv);
                }
                current.clear();
            }
        }
    }
    commands
}

/// The command lines of the ```sh blocks of `markdown`, and of the `$ ` lines of its ```console
/// blocks: what the docs offer to be typed. Plain ``` blocks are synopses and output.
fn block_commands(markdown: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut block: Option<&str> = None;
    // A line ending in `\` goes on in the next one.
    let mut continued = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(fence) = trimmed.strip_prefix("```") {
            block = if block.is_some() { None } else { Some(fence) };
            continued.clear();
            continue;
        }
        let typed = match block {
            Some("sh") => Some(trimmed),
            Some("console") if !continued.is_empty() => Some(trimmed),
            Some("console") => trimmed.strip_prefix("$ "),
            _ => None,
        };
        let Some(typed) = typed else { continue };
        if let Some(head) = typed.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let whole = std::mem::take(&mut continued) + typed;
        commands.extend(bkg_commands(&whole));
    }
    commands
}

/// The commands `markdown` shows that the real grammar refuses, each with clap's reason.
fn refused(commands: Vec<Vec<String>>, at_least: usize, what: &str) -> Vec<String> {
    assert!(commands.len() >= at_least, "{what}: only {} bkg commands: {commands:?}", commands.len());
    commands
        .into_iter()
        .filter_map(|argv| {
            let command = match argv[0].as_str() {
                "bkg" => bkg_cli::args::bkg_command(),
                "bkgr" => bkg_cli::args::bkgr_command(),
                _ => bkg_agent::daemon::AgentArgs::command(),
            };
            let reason = |error: clap::Error| error.to_string().lines().next().unwrap_or_default().to_owned();
            command.try_get_matches_from(&argv).err().map(|error| format!("{}: {}", argv.join(" "), reason(error)))
        })
        .collect()
}

#[test]
fn the_commands_of_the_readme_tour_parse() {
    let readme = read("README.md");
    let tour = readme.split("## 60-second tour").nth(1).expect("README.md has a \"60-second tour\" section");
    let tour = tour.split("\n## ").next().unwrap_or_default();
    let refused = refused(block_commands(tour), 10, "README.md's tour");
    assert!(refused.is_empty(), "README.md's tour shows commands bkg refuses:\n{}", refused.join("\n"));
}

#[test]
fn the_commands_of_every_doc_parse() {
    for file in markdown_files() {
        let at_least = match file.as_str() {
            "README.md" => 10,
            "docs/cli.md" => 12,
            "docs/deployment.md" => 5,
            _ => 0,
        };
        let refused = refused(block_commands(&read(&file)), at_least, &file);
        assert!(refused.is_empty(), "{file} shows commands bkg refuses:\n{}", refused.join("\n"));
    }
}

#[test]
fn shell_lines_are_split_as_sh_splits_them() {
    assert_eq!(
        bkg_commands(r#"printf '%s' "$T" | sudo bkg secrets set "A B" 2>&1 > out # note"#),
        vec![vec!["bkg".to_owned(), "secrets".into(), "set".into(), "A B".into()]]
    );
    assert_eq!(
        bkg_commands("bkg init --yes --sandbox api && bkgr api; echo bkg"),
        vec![
            vec!["bkg".to_owned(), "init".into(), "--yes".into(), "--sandbox".into(), "api".into()],
            vec!["bkgr".to_owned(), "api".into()]
        ]
    );
    assert_eq!(
        bkg_commands("BKG_LOG=debug bkg-agent --foreground"),
        vec![vec!["bkg-agent".to_owned(), "--foreground".into()]]
    );
}

/// The commits and the tests (`PATH` or `PATH::NAME`) named in docs/FEATURE_ORIGINS.md's table.
fn origins() -> (Vec<String>, Vec<String>) {
    let text = read("docs/FEATURE_ORIGINS.md");
    let (mut commits, mut tests) = (Vec::new(), Vec::new());
    for row in text.lines().filter(|line| line.starts_with('|') && !line.starts_with("|---")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let code = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
        if cells.len() == 4 && cells[2] != "landed in" {
            commits.extend(code(cells[2]));
            tests.extend(code(cells[3]));
        }
    }
    (commits, tests)
}

#[test]
fn feature_origins_name_commits_and_tests_that_exist() {
    let (commits, tests) = origins();
    assert!(
        commits.len() >= 25 && tests.len() >= 30,
        "FEATURE_ORIGINS.md: {} commits, {} tests",
        commits.len(),
        tests.len()
    );
    let mut problems = Vec::new();
    // A checkout without the project's whole history (an exported tree, a shallow clone) cannot
    // tell a wrong hash from one it lacks: there the hashes are checked for form only.
    let whole_history = std::process::Command::new("git")
        .args(["rev-parse", "--is-shallow-repository"])
        .current_dir(repo())
        .output()
        .is_ok_and(|answer| answer.status.success() && answer.stdout.starts_with(b"false"));
    if !whole_history {
        eprintln!("FEATURE_ORIGINS.md: no whole git history here; commit hashes are checked for form only");
    }
    for commit in &commits {
        if !whole_history {
            if commit.len() < 7 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!("`{commit}` is not a commit hash"));
            }
            continue;
        }
        // In the history of HEAD, not merely in the object store: a hash from a branch that was
        // cherry-picked (a helper's worktree) exists here but in no clone of main.
        let in_history = std::process::Command::new("git")
            .args(["merge-base", "--is-ancestor", commit, "HEAD"])
            .current_dir(repo())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run git")
            .success();
        if !in_history || commit.len() < 7 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            problems
                .push(format!("commit {commit} is not in the history of HEAD (a cherry-picked copy has another hash)"));
        }
    }
    for test in &tests {
        let (path, name) = test.split_once("::").map_or((test.as_str(), None), |(path, name)| (path, Some(name)));
        let Ok(source) = std::fs::read_to_string(repo().join(path))
            .or_else(|error| if repo().join(path).is_dir() { Ok(String::new()) } else { Err(error) })
        else {
            problems.push(format!("{path} does not exist"));
            continue;
        };
        if let Some(name) = name
            && !source.contains(&format!("fn {name}("))
            && !source.contains(&format!("def {name}("))
        {
            problems.push(format!("{path} has no test {name}"));
        }
    }
    assert!(problems.is_empty(), "docs/FEATURE_ORIGINS.md:\n{}", problems.join("\n"));
}
