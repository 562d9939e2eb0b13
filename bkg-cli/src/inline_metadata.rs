//! A Python script's own list of the packages it needs: inline script metadata (PEP 723), as
//! `uv run` and `pipx run` read it.
//!
//! ```python
//! # /// script
//! # dependencies = ["six==1.17.0"]
//! # ///
//! ```
//!
//! A block starts at a line `# /// TYPE` and ends at the last `# ///` of the comment lines
//! (`#` alone, or `# ` and text) that follow it without a break; its TOML is those lines less
//! their `# ` or `#`. Blocks of other types are not bkg's and are left alone.

use serde::Deserialize;

/// What a script's `script` block says that bkg acts on.
#[derive(Debug, Default, Deserialize)]
struct ScriptMetadata {
    #[serde(default)]
    dependencies: Vec<toml::Spanned<String>>,
    #[serde(rename = "requires-python")]
    requires_python: Option<toml::Spanned<String>>,
}

/// A script's `script` block: the packages it needs and the Python versions it runs on, whose
/// form is checked here (the agent checks them against its Python).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScriptBlock {
    pub dependencies: Vec<Dependency>,
    pub requires_python: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InlineMetadataError {
    #[error("its inline metadata has two `# /// script` blocks (lines {first} and {second}); keep one")]
    TwoBlocks { first: usize, second: usize },
    #[error("its `# /// script` block on line {line} has no closing `# ///` line")]
    Unclosed { line: usize },
    #[error(
        "line {line} ends its `# /// script` block before a `# ///`: each of the block's lines is `#` alone or `# ` and text"
    )]
    NotBlockLine { line: usize },
    #[error("its `# /// script` block is not valid on line {line}: {why}")]
    Invalid { line: usize, why: String },
    #[error("its `# /// script` block lists an empty dependency on line {line}; remove it or name a package")]
    EmptyDependency { line: usize },
    #[error("its `# /// script` block's requires-python on line {line}: {why}")]
    RequiresPython { line: usize, why: bkg_schema::requirements::PythonVersionError },
}

/// One dependency the block lists, with the script's line it is on.
#[derive(Debug, PartialEq, Eq)]
pub struct Dependency {
    pub line: usize,
    pub requirement: String,
}

/// `code`'s `script` block: `None` when it has none (then the requirements.txt beside it is
/// the script's list), else what it says, its dependencies perhaps none.
pub fn script_block(code: &str) -> Result<Option<ScriptBlock>, InlineMetadataError> {
    // A byte-order mark before the first line is the file's encoding, not part of the line:
    // Python skips it too.
    let code = code.strip_prefix('\u{feff}').unwrap_or(code);
    let lines: Vec<&str> = code.lines().collect();
    let mut found: Option<(usize, String)> = None;
    let mut index = 0;
    while index < lines.len() {
        let Some(kind) = lines[index].strip_prefix("# /// ").filter(|kind| is_block_type(kind)) else {
            index += 1;
            continue;
        };
        let opening = index + 1;
        let comments = lines[index + 1..].iter().take_while(|line| **line == "#" || line.starts_with("# ")).count();
        let closing = lines[index + 1..index + 1 + comments].iter().rposition(|line| *line == "# ///");
        let Some(closing) = closing else {
            if kind == "script" {
                // The line that ended the block's comments, when it is a comment of another
                // form (`#dependencies`, no blank after the `#`), is what to fix.
                let ended_by = index + 1 + comments;
                return Err(match lines.get(ended_by) {
                    Some(line) if line.starts_with('#') => InlineMetadataError::NotBlockLine { line: ended_by + 1 },
                    _ => InlineMetadataError::Unclosed { line: opening },
                });
            }
            index += 1;
            continue;
        };
        let body = &lines[index + 1..index + 1 + closing];
        if kind == "script" {
            if let Some((first, _)) = found {
                return Err(InlineMetadataError::TwoBlocks { first, second: opening });
            }
            let toml: Vec<&str> =
                body.iter().map(|line| line.strip_prefix("# ").unwrap_or_else(|| &line[1..])).collect();
            found = Some((opening, toml.join("\n")));
        }
        index += closing + 2;
    }
    let Some((opening, toml)) = found else { return Ok(None) };
    // The parser counts in the TOML, whose first line is the script's line after the opening.
    let line_at = |offset: usize| opening + 1 + toml[..offset.min(toml.len())].matches('\n').count();
    let metadata: ScriptMetadata = toml::from_str(&toml).map_err(|error| InlineMetadataError::Invalid {
        line: line_at(error.span().map_or(0, |span| span.start)),
        why: one_line(error.message()),
    })?;
    let dependencies: Vec<Dependency> = metadata
        .dependencies
        .into_iter()
        .map(|dependency| Dependency { line: line_at(dependency.span().start), requirement: dependency.into_inner() })
        .collect();
    if let Some(empty) = dependencies.iter().find(|dependency| dependency.requirement.trim().is_empty()) {
        return Err(InlineMetadataError::EmptyDependency { line: empty.line });
    }
    let requires_python = match metadata.requires_python {
        Some(wanted) => {
            let line = line_at(wanted.span().start);
            let wanted = wanted.into_inner();
            bkg_schema::requirements::python_versions(&wanted)
                .map_err(|why| InlineMetadataError::RequiresPython { line, why })?;
            Some(wanted.trim().to_owned())
        }
        None => None,
    };
    Ok(Some(ScriptBlock { dependencies, requires_python }))
}

/// A block's type: letters, digits and `-`.
fn is_block_type(kind: &str) -> bool {
    !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The TOML parser's message, on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_dependencies(code: &str) -> Result<Option<Vec<Dependency>>, InlineMetadataError> {
        script_block(code).map(|block| block.map(|block| block.dependencies))
    }

    #[test]
    fn requires_python_is_given_on_once_its_form_is_checked() {
        let block = |code: &str| script_block(code).map(|block| block.and_then(|block| block.requires_python));
        assert_eq!(block("# /// script\n# requires-python = \" >=3.11 \"\n# ///\n"), Ok(Some(">=3.11".into())));
        assert_eq!(block("# /// script\n# dependencies = []\n# ///\n"), Ok(None));
        let broken = block("import os\n# /// script\n# dependencies = []\n# requires-python = \"3.11\"\n# ///\n");
        assert!(
            matches!(
                &broken,
                Err(InlineMetadataError::RequiresPython {
                    line: 4,
                    why: bkg_schema::requirements::PythonVersionError::NotASpecifier { .. }
                })
            ),
            "{broken:?}"
        );
        let said = broken.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(said.contains("line 4") && said.contains("`3.11` is not a version specifier"), "{said}");
        // TOML's number, not a string: as other tools, an error.
        assert!(matches!(
            block("# /// script\n# requires-python = 3.11\n# ///\n"),
            Err(InlineMetadataError::Invalid { line: 2, .. })
        ));
    }

    #[test]
    fn a_script_block_gives_its_dependencies() {
        let code = "#!/usr/bin/env python3\n# /// script\n# requires-python = \">=3.11\"\n# dependencies = [\n#   \"six==1.17.0\",\n#   \"requests>=2\",\n# ]\n# ///\nimport six\n";
        let listed = script_dependencies(code).map(|found| {
            found.map(|list| {
                list.into_iter().map(|dependency| (dependency.line, dependency.requirement)).collect::<Vec<_>>()
            })
        });
        assert_eq!(listed, Ok(Some(vec![(5, "six==1.17.0".to_owned()), (6, "requests>=2".to_owned())])));
        // A byte-order mark before the block is the file's, as Python reads it.
        assert!(matches!(script_dependencies(&format!("\u{feff}{code}")), Ok(Some(list)) if list.len() == 2));
    }

    #[test]
    fn no_block_is_none_and_an_empty_list_is_an_empty_list() {
        assert_eq!(script_dependencies("import os\n# a comment\n"), Ok(None));
        assert_eq!(script_dependencies("# /// script\n# dependencies = []\n# ///\n"), Ok(Some(vec![])));
        assert_eq!(script_dependencies("# /// script\n#\n# ///\n"), Ok(Some(vec![])));
    }

    #[test]
    fn other_block_types_and_blocks_in_strings_are_left_alone() {
        let code = "# /// pyproject\n# [run]\n# ///\n\n# /// script\n# dependencies = [\"six\"]\n# ///\n";
        assert!(
            matches!(script_dependencies(code), Ok(Some(list)) if list == [Dependency { line: 6, requirement: "six".into() }])
        );
        // Indented: not a comment line at the start of a line.
        assert_eq!(script_dependencies("x = '''\n  # /// script\n  # ///\n'''\n"), Ok(None));
    }

    #[test]
    fn the_block_ends_at_the_last_closing_line_of_its_comments() {
        // PEP 723: a `# ///` inside the TOML (in a string) does not end it early.
        let code =
            "# /// script\n# dependencies = [\"six\"]\n# [tool.x]\n# note = \"\"\"\n# ///\n# \"\"\"\n# ///\nprint(1)\n";
        assert!(
            matches!(script_dependencies(code), Ok(Some(list)) if list == [Dependency { line: 2, requirement: "six".into() }])
        );
    }

    #[test]
    fn broken_blocks_are_errors_that_say_where() {
        assert_eq!(
            script_dependencies("print(1)\n# /// script\n# dependencies = []\nprint(2)\n"),
            Err(InlineMetadataError::Unclosed { line: 2 })
        );
        assert_eq!(
            script_dependencies("# /// script\n# ///\nimport os\n# /// script\n# ///\n"),
            Err(InlineMetadataError::TwoBlocks { first: 1, second: 4 })
        );
        assert_eq!(
            script_dependencies("# /// script\n# dependencies = [\n#  \"six\",\n#  \"\",\n# ]\n# ///\n"),
            Err(InlineMetadataError::EmptyDependency { line: 4 })
        );
        // Found by a new-user trial: a line without the blank after `#` was called an unclosed block.
        assert_eq!(
            script_dependencies("# /// script\n#dependencies = [\"six\"]\n# ///\n"),
            Err(InlineMetadataError::NotBlockLine { line: 2 })
        );
        let invalid = script_dependencies("# /// script\n# dependencies = \"six\"\n# ///\n");
        assert!(
            matches!(&invalid, Err(InlineMetadataError::Invalid { line: 2, why }) if why.contains("invalid type") && !why.contains('\n')),
            "{invalid:?}"
        );
        let unparsable = script_dependencies(
            "import os\n# /// script\n# requires-python = \">=3.8\"\n# dependencies = [six]\n# ///\n",
        );
        assert!(matches!(&unparsable, Err(InlineMetadataError::Invalid { line: 4, .. })), "{unparsable:?}");
    }
}
