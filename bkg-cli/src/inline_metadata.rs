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

/// What a script's `script` block says that bkg acts on. `requires-python` is read so that a
/// wrong type there is an error as in other tools, but not checked: the sandbox's Python is the
/// host's (`bkg agent status` names it).
#[derive(Debug, Default, Deserialize)]
struct ScriptMetadata {
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(rename = "requires-python")]
    _requires_python: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InlineMetadataError {
    #[error("its inline metadata has two `# /// script` blocks (lines {first} and {second}); keep one")]
    TwoBlocks { first: usize, second: usize },
    #[error("its `# /// script` block on line {line} has no closing `# ///` line")]
    Unclosed { line: usize },
    #[error("its `# /// script` block is not valid on line {line}: {why}")]
    Invalid { line: usize, why: String },
    #[error("its `# /// script` block (line {line}) lists an empty dependency; remove it or name a package")]
    EmptyDependency { line: usize },
}

/// The dependencies of `code`'s `script` block: `None` when it has none (then the
/// requirements.txt beside it is the script's list), else the block's list, perhaps empty.
pub fn script_dependencies(code: &str) -> Result<Option<Vec<String>>, InlineMetadataError> {
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
                return Err(InlineMetadataError::Unclosed { line: opening });
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
    let Some((line, toml)) = found else { return Ok(None) };
    let metadata: ScriptMetadata = toml::from_str(&toml).map_err(|error| {
        // The parser counts in the TOML, the block's second line its first.
        let in_toml = error.span().map_or(0, |span| toml[..span.start.min(toml.len())].matches('\n').count());
        InlineMetadataError::Invalid { line: line + 1 + in_toml, why: one_line(error.message()) }
    })?;
    if metadata.dependencies.iter().any(|dependency| dependency.trim().is_empty()) {
        return Err(InlineMetadataError::EmptyDependency { line });
    }
    Ok(Some(metadata.dependencies))
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

    #[test]
    fn a_script_block_gives_its_dependencies() {
        let code = "#!/usr/bin/env python3\n# /// script\n# requires-python = \">=3.11\"\n# dependencies = [\n#   \"six==1.17.0\",\n#   \"requests>=2\",\n# ]\n# ///\nimport six\n";
        assert_eq!(script_dependencies(code), Ok(Some(vec!["six==1.17.0".to_owned(), "requests>=2".to_owned()])));
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
        assert_eq!(script_dependencies(code), Ok(Some(vec!["six".to_owned()])));
        // Indented: not a comment line at the start of a line.
        assert_eq!(script_dependencies("x = '''\n  # /// script\n  # ///\n'''\n"), Ok(None));
    }

    #[test]
    fn the_block_ends_at_the_last_closing_line_of_its_comments() {
        // PEP 723: a `# ///` inside the TOML (in a string) does not end it early.
        let code =
            "# /// script\n# dependencies = [\"six\"]\n# [tool.x]\n# note = \"\"\"\n# ///\n# \"\"\"\n# ///\nprint(1)\n";
        assert_eq!(script_dependencies(code), Ok(Some(vec!["six".to_owned()])));
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
            script_dependencies("# /// script\n# dependencies = [\"\"]\n# ///\n"),
            Err(InlineMetadataError::EmptyDependency { line: 1 })
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
