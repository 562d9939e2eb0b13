//! Python requirement lines as bkg takes them: the one rule for what a line may be and how it
//! is spelled in a set, applied by the agent to what a run sends (bkg-agent/src/envs.rs) and by
//! `bkg exe` to each of its sources first, so that a refusal names the file, the flag or the
//! script's line it came from.

/// How many requirement lines one run may name, and how long one may be.
pub const MAX_REQUIREMENTS: usize = 500;
pub const MAX_REQUIREMENT_BYTES: usize = 1000;

/// What is wrong with one requirement line. None of these repeats the line's text: a file given
/// by mistake (a `.env`) may hold a secret there, and a URL a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementProblem {
    #[error("has the option `{option}`: options are not taken, {instead}")]
    Option { option: String, instead: &'static str },
    #[error("is too long or has control characters")]
    Unreadable,
    #[error("is not a requirement ({0}; its text is not shown)")]
    NotARequirement(String),
    #[error("ends in `\\`, with no line to go on")]
    Unfinished,
}

/// A refused requirement: its line, counted from 1 in the lines given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("line {line} of the requirements {problem}")]
    Line { line: usize, problem: RequirementProblem },
    #[error("at most {MAX_REQUIREMENTS} requirements, not {0}")]
    TooMany(usize),
}

/// How long a `requires-python` may be.
pub const MAX_REQUIRES_PYTHON_BYTES: usize = 200;

/// What keeps code whose `requires-python` (PEP 723; a run request's `requires_python`) names
/// the Python versions it runs on from running on an agent's Python.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PythonVersionError {
    #[error("requires-python is {0} bytes long; at most {MAX_REQUIRES_PYTHON_BYTES}")]
    TooLong(usize),
    #[error("`{given}` is not a version specifier (`>=3.11`, `~=3.10`, `>=3.9,<4`): {why}")]
    NotASpecifier { given: String, why: String },
    #[error(
        "the code asks for Python {wanted} (requires-python) and this agent's is Python {have}: \
         change requires-python, or run it on an agent with such a Python"
    )]
    NotThisPython { wanted: String, have: String },
    #[error("the code asks for Python {wanted} (requires-python) and this agent cannot tell its Python's version")]
    UnknownPython { wanted: String },
}

/// The versions `text` names, a PEP 440 specifier set (`>=3.9,<4`; blanks around it ignored).
pub fn python_versions(text: &str) -> Result<pep440_rs::VersionSpecifiers, PythonVersionError> {
    if text.len() > MAX_REQUIRES_PYTHON_BYTES {
        return Err(PythonVersionError::TooLong(text.len()));
    }
    text.trim().parse().map_err(|error: pep440_rs::VersionSpecifiersParseError| {
        // Its message is the reason, then the text with a caret line under the fault.
        let shown = error.to_string();
        let why = shown.lines().next().unwrap_or_default();
        let why = why.strip_prefix("Failed to parse version: ").unwrap_or(why).trim_end_matches(':');
        let mut letters = why.chars();
        let why = letters.next().map(|first| first.to_lowercase().chain(letters).collect()).unwrap_or_default();
        PythonVersionError::NotASpecifier { given: text.trim().to_owned(), why }
    })
}

/// Whether code asking for `wanted` runs on the Python whose `--version` printed `runtime`
/// (`Python 3.11.2`; `None` when the agent found none).
pub fn check_python_version(wanted: &str, runtime: Option<&str>) -> Result<(), PythonVersionError> {
    let specifiers = python_versions(wanted)?;
    let wanted = wanted.trim().to_owned();
    let have = runtime.and_then(|printed| printed.trim().strip_prefix("Python ")).map(str::trim);
    let Some((have, version)) = have.and_then(|have| Some((have, have.parse::<pep440_rs::Version>().ok()?))) else {
        return Err(PythonVersionError::UnknownPython { wanted });
    };
    if specifiers.contains(&version) {
        Ok(())
    } else {
        Err(PythonVersionError::NotThisPython { wanted, have: have.to_owned() })
    }
}

/// The requirement set of `lines` as it is keyed: trimmed, without blanks and comments, each
/// in its normal spelling (`normal_requirement`), sorted, each once. Options are refused: the
/// index and the install's flags are the agent's.
pub fn requirement_set(lines: &[String]) -> Result<Vec<String>, RequirementError> {
    let mut set: Vec<String> = Vec::new();
    let mut continued = String::new();
    for (index, line) in lines.iter().enumerate() {
        let refused = |problem| RequirementError::Line { line: index + 1, problem };
        // A byte-order mark (Windows editors) is not part of the first requirement.
        let line = line.trim_start_matches('\u{feff}');
        let line = line.split_once(" #").map_or(line, |(before, _)| before).trim();
        // A line ending in `\` goes on on the next, as pip reads it (pip-compile writes them).
        if let Some(first_part) = line.strip_suffix('\\') {
            continued.push_str(first_part);
            continued.push(' ');
            continue;
        }
        let joined;
        let line = if continued.is_empty() {
            line
        } else {
            continued.push_str(line);
            joined = std::mem::take(&mut continued);
            joined.trim()
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_REQUIREMENT_BYTES || line.chars().any(char::is_control) {
            return Err(refused(RequirementProblem::Unreadable));
        }
        check_form(line).map_err(refused)?;
        set.push(normal_requirement(line));
    }
    if !continued.trim().is_empty() {
        return Err(RequirementError::Line { line: lines.len(), problem: RequirementProblem::Unfinished });
    }
    set.sort();
    set.dedup();
    if set.len() > MAX_REQUIREMENTS {
        return Err(RequirementError::TooMany(set.len()));
    }
    Ok(set)
}

/// A requirement line's project name and what follows it; none for a URL or a path
/// (`https://…`, `git+…`, `./dir`), which name no project first.
pub fn project_name(line: &str) -> Option<(&str, &str)> {
    let name_end =
        line.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    (!name.is_empty() && !rest.starts_with([':', '/', '+'])).then_some((name, rest))
}

/// The prefixes of a requirement fetched from version control, as pip writes them.
pub const VCS_SCHEMES: [&str; 4] = ["git+", "hg+", "svn+", "bzr+"];

/// Where a requirement says to fetch it from, when it says: the URL of `name @ URL` (PEP 508),
/// or the whole of a line that is a URL or a path (pip's form), up to a marker.
pub fn direct_reference(line: &str) -> Option<&str> {
    let reference = match project_name(line) {
        Some((_, rest)) => {
            let rest = rest.trim_start();
            // Extras come before the `@`.
            let rest = match rest.strip_prefix('[') {
                Some(extras) => extras.split_once(']')?.1.trim_start(),
                None => rest,
            };
            rest.strip_prefix('@')?.trim_start()
        }
        None => line,
    };
    reference.split([' ', ';']).next().filter(|target| !target.is_empty())
}

/// An option line (`-r other.txt`, `--index-url …`, `-e …`) or a requirement with an option
/// after it (`--hash=…`, as pip-compile writes them), and after a project name (PEP 508)
/// nothing, its extras, a version, a marker or a URL: a line like `bad name!!` is refused here,
/// in one line, rather than by the installer's log after a wait; a line that is neither that
/// nor a URL or a path (`API_KEY=…`, `root:x:0:0:…`: a file given as requirements that is not
/// one) is refused before the installer could print it into the run's record (both found by
/// new-user trials). The option is named, the rest of the line is not.
fn check_form(line: &str) -> Result<(), RequirementProblem> {
    let first = line.split_whitespace().next().unwrap_or_default();
    let option =
        if first.starts_with('-') { Some(first) } else { line.split_whitespace().find(|word| word.starts_with("--")) };
    if let Some(option) = option {
        let option = option.split('=').next().unwrap_or(option);
        let option = if option.starts_with("--") { option } else { option.get(..2).unwrap_or(option) };
        // What to do instead depends on the option.
        let instead = match option {
            "-r" | "--requirement" | "-c" | "--constraint" => {
                "give the requirements of the file it names instead, each on its own (a line, or --with)"
            }
            "-e" | "--editable" => "name the package as a requirement (a URL or a name and version)",
            "--hash" => {
                "the agent chooses the installer's; drop it (`uv export --no-hashes`, or pip-compile without --generate-hashes)"
            }
            _ => "the agent chooses the index and the installer's options (--package-index)",
        };
        return Err(RequirementProblem::Option { option: option.to_owned(), instead });
    }
    let not_a_requirement = |what: String| RequirementProblem::NotARequirement(what);
    let Some((name, rest)) = project_name(line) else {
        let url_or_path = line.contains("://")
            || line.starts_with(['.', '/', '~'])
            || VCS_SCHEMES.iter().chain(&["file:"]).any(|scheme| line.starts_with(scheme));
        return if url_or_path { Ok(()) } else { Err(not_a_requirement("neither a name nor a URL or a path".into())) };
    };
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(not_a_requirement("a package's name starts with a letter or a digit".into()));
    }
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('[') {
        Some(extras) => {
            let names = extras.split_once(']').map(|(inside, after)| (inside.trim(), after.trim_start()));
            match names {
                Some((inside, after)) if inside.is_empty() || inside.split(',').all(|extra| is_name(extra.trim())) => {
                    after
                }
                _ => return Err(not_a_requirement(format!("the extras after `{name}` are not names in `[…]`"))),
            }
        }
        None => rest,
    };
    if let Some(url) = rest.strip_prefix('@') {
        let (url, marker) =
            url.trim_start().split_once(" ;").map_or((url.trim(), None), |(url, marker)| (url.trim(), Some(marker)));
        if url.is_empty() {
            return Err(not_a_requirement(format!("no URL after `{name} @`")));
        }
        return marker.map_or(Ok(()), |marker| check_marker(marker).map_err(not_a_requirement));
    }
    let (specifiers, marker) =
        rest.split_once(';').map_or((rest, None), |(specifiers, marker)| (specifiers, Some(marker)));
    check_specifiers(name, specifiers.trim()).map_err(not_a_requirement)?;
    marker.map_or(Ok(()), |marker| check_marker(marker).map_err(not_a_requirement))
}

/// A project or extra name (PEP 508): letters and digits, with `-`, `_` and `.` between them.
fn is_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The version operators of PEP 440, longest first.
const VERSION_OPERATORS: [&str; 8] = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"];

/// What follows a project name before its marker: nothing, or version specifiers (`>=2,<3`),
/// perhaps in parentheses.
fn check_specifiers(name: &str, text: &str) -> Result<(), String> {
    let text = match text.strip_prefix('(') {
        Some(inner) => inner.strip_suffix(')').ok_or_else(|| format!("the versions after `{name}` have no `)`"))?,
        None => text,
    };
    if text.trim().is_empty() {
        return Ok(());
    }
    for specifier in text.split(',').map(str::trim) {
        let version = VERSION_OPERATORS.iter().find_map(|operator| specifier.strip_prefix(operator)).map(str::trim);
        let readable = version.is_some_and(|version| {
            !version.is_empty()
                && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-'))
        });
        if readable {
            continue;
        }
        return Err(match specifier.get(..1) {
            Some(first @ ("=" | "!" | "~")) if version.is_none() => {
                format!("after the name `{name}` comes `{first}`, no version operator (`==`, `>=`, `~=`)")
            }
            _ => format!(
                "after the name `{name}` comes what is not a version (`{name}==1.2`), extras (`{name}[extra]`), \
                 a marker (`; python_version >= \"3.9\"`) or a URL (`{name} @ https://…`)"
            ),
        });
    }
    Ok(())
}

/// The variables an environment marker may compare (PEP 508, and the older dotted names pip
/// still reads).
const MARKER_VARIABLES: [&str; 18] = [
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
    "os.name",
    "sys.platform",
    "platform.version",
    "platform.machine",
    "platform.python_implementation",
    "python_implementation",
];

/// An environment marker (PEP 508): comparisons of a variable or a quoted string with another,
/// joined by `and` and `or`, in parentheses or not. pip answered a broken one with a traceback
/// of a thousand characters, after an install sandbox had started (found by a new-user trial).
fn check_marker(text: &str) -> Result<(), String> {
    let refused = || {
        "after `;` comes what is not an environment marker (`python_version >= \"3.9\"`, \
         `sys_platform == \"linux\"`, joined by `and` or `or`)"
            .to_owned()
    };
    let tokens = marker_tokens(text).ok_or_else(refused)?;
    let mut parser = MarkerParser { tokens: &tokens, next: 0 };
    match parser.or_expression() {
        Some(()) if parser.next == tokens.len() => Ok(()),
        _ => Err(refused()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum MarkerToken<'a> {
    Open,
    Close,
    Text,
    Operator,
    Word(&'a str),
}

/// The tokens of a marker; none when a character fits no token (an unclosed quote, `$`).
fn marker_tokens(text: &str) -> Option<Vec<MarkerToken<'_>>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(first) = rest.chars().next() {
        let taken = match first {
            '(' => (MarkerToken::Open, 1),
            ')' => (MarkerToken::Close, 1),
            '\'' | '"' => (MarkerToken::Text, rest[1..].find(first)? + 2),
            '<' | '>' | '=' | '!' | '~' => {
                let operator = VERSION_OPERATORS.iter().find(|operator| rest.starts_with(**operator))?;
                (MarkerToken::Operator, operator.len())
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let end =
                    rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))).unwrap_or(rest.len());
                (MarkerToken::Word(&rest[..end]), end)
            }
            _ => return None,
        };
        tokens.push(taken.0);
        rest = rest[taken.1..].trim_start();
    }
    Some(tokens)
}

struct MarkerParser<'t, 'a> {
    tokens: &'t [MarkerToken<'a>],
    next: usize,
}

impl MarkerParser<'_, '_> {
    fn take(&mut self, token: &MarkerToken<'_>) -> bool {
        let taken = self.tokens.get(self.next) == Some(token);
        self.next += usize::from(taken);
        taken
    }

    fn or_expression(&mut self) -> Option<()> {
        self.and_expression()?;
        while self.take(&MarkerToken::Word("or")) {
            self.and_expression()?;
        }
        Some(())
    }

    fn and_expression(&mut self) -> Option<()> {
        self.comparison()?;
        while self.take(&MarkerToken::Word("and")) {
            self.comparison()?;
        }
        Some(())
    }

    fn comparison(&mut self) -> Option<()> {
        if self.take(&MarkerToken::Open) {
            self.or_expression()?;
            return self.take(&MarkerToken::Close).then_some(());
        }
        self.value()?;
        let operator = self.take(&MarkerToken::Operator)
            || self.take(&MarkerToken::Word("in"))
            || (self.take(&MarkerToken::Word("not")) && self.take(&MarkerToken::Word("in")));
        operator.then_some(())?;
        self.value()
    }

    fn value(&mut self) -> Option<()> {
        let value = match self.tokens.get(self.next)? {
            MarkerToken::Text => true,
            MarkerToken::Word(word) => MARKER_VARIABLES.contains(word),
            _ => false,
        };
        self.next += usize::from(value);
        value.then_some(())
    }
}

/// A requirement line as pip reads it, spelled one way, so that `Six`, `six` and `SIX` or
/// `six == 1.16` and `six==1.16` key one environment: the project name as PEP 503 normalizes it
/// (lowercase, each run of `-`, `_` and `.` one `-`), and the blanks of a version specifier
/// dropped. A line that names a URL (`name @ URL`, `git+…`) or has environment markers (`;`) keeps
/// everything after its name as written: blanks separate words there.
fn normal_requirement(line: &str) -> String {
    let Some((name, rest)) = project_name(line) else {
        return line.to_owned();
    };
    let mut normal = String::with_capacity(line.len());
    let mut in_separators = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separators {
                normal.push('-');
            }
            in_separators = true;
        } else {
            normal.push(c.to_ascii_lowercase());
            in_separators = false;
        }
    }
    // `six@URL` and `six @ URL` are one requirement: the `@` is spelled with a blank each side.
    let direct = rest.split_once('@').filter(|(before, _)| {
        let before = before.trim();
        before.is_empty() || (before.starts_with('[') && before.ends_with(']'))
    });
    if let Some((extras, reference)) = direct {
        normal.extend(extras.chars().filter(|c| !c.is_whitespace()));
        normal.push_str(" @ ");
        normal.push_str(reference.trim());
    } else if rest.contains(';') {
        normal.push_str(rest);
    } else {
        normal.extend(rest.chars().filter(|c| !c.is_whitespace()));
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_python_is_checked_against_the_agent_s_python() {
        let python = Some("Python 3.11.2");
        for fits in [">=3.8", "  >=3.11 ", "~=3.11", "==3.11.*", ">=3.9,<4", "!=3.10.*", "", "==3.11.2"] {
            assert_eq!(check_python_version(fits, python), Ok(()), "{fits}");
        }
        for (wanted, have) in [(">=3.12", "3.11.2"), ("<3.11", "3.11.2"), ("==3.10.*", "3.11.2")] {
            let refused = check_python_version(wanted, python);
            assert_eq!(refused, Err(PythonVersionError::NotThisPython { wanted: wanted.into(), have: have.into() }));
        }
        let said = check_python_version(">=3.12", python).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(said.contains("Python >=3.12") && said.contains("Python 3.11.2"), "{said}");
        for broken in [">=3.x", "3.11", ">=", ">=3.9;<4"] {
            let refused = check_python_version(broken, python);
            assert!(
                matches!(&refused, Err(PythonVersionError::NotASpecifier { why, .. }) if !why.is_empty() && !why.contains('\n')),
                "{broken}: {refused:?}"
            );
        }
        let long = format!(">={}", "9".repeat(MAX_REQUIRES_PYTHON_BYTES));
        assert_eq!(check_python_version(&long, python), Err(PythonVersionError::TooLong(long.len())));
        assert_eq!(
            check_python_version(">=3.8", None),
            Err(PythonVersionError::UnknownPython { wanted: ">=3.8".into() })
        );
        assert_eq!(
            check_python_version(">=3.8", Some("not python")),
            Err(PythonVersionError::UnknownPython { wanted: ">=3.8".into() })
        );
    }

    #[test]
    fn versions_extras_and_markers_are_read_as_pep_508_writes_them() {
        let checked = |line: &str| check_form(line).map_err(|problem| problem.to_string());
        for good in [
            "six",
            "six==1.17.0",
            "six ==1.17.0, !=1.16.*",
            "six (>=1,<2)",
            "six===1.0+local",
            "requests[socks, security]>=2",
            "six; python_version >= '3.8' and (sys_platform == \"linux\" or os_name != 'nt')",
            "six ; 'linux' in sys_platform",
            "six; extra not in 'a b'",
            "six @ https://h/six.whl ; python_version > '3'",
            "https://h/six.whl",
        ] {
            assert_eq!(checked(good), Ok(()), "{good}");
        }
        // Each went to pip, which answered with a traceback (found by a new-user trial).
        for (bad, said) in [
            ("six==1.17.0; hunter2", "not an environment marker"),
            ("six; python_version >=", "not an environment marker"),
            ("six; python_version >= '3", "not an environment marker"),
            ("six; (python_version > '3'", "not an environment marker"),
            ("six; os_name = 'nt'", "not an environment marker"),
            ("six[=1.17", "the extras after `six` are not names"),
            ("six[a b]", "the extras after `six` are not names"),
            ("six==", "what is not a version"),
            ("six==1.0 $", "what is not a version"),
            ("six (>=1", "have no `)`"),
            ("six @ ", "no URL after `six @`"),
        ] {
            let problem = checked(bad).err().unwrap_or_default();
            assert!(problem.contains(said), "{bad}: {problem}");
            assert!(!problem.contains("hunter2"), "{problem}");
        }
    }

    #[test]
    fn where_a_requirement_says_to_fetch_it_from() {
        assert_eq!(direct_reference("six==1.17.0"), None);
        assert_eq!(direct_reference("six ; python_version > '3'"), None);
        assert_eq!(direct_reference("six @ https://h/six.whl ; python_version > '3'"), Some("https://h/six.whl"));
        assert_eq!(direct_reference("six[extra]@https://h/six.whl"), Some("https://h/six.whl"));
        assert_eq!(direct_reference("git+https://github.com/a/b.git@v1"), Some("git+https://github.com/a/b.git@v1"));
        assert_eq!(direct_reference("./local/pkg"), Some("./local/pkg"));
    }

    #[test]
    fn a_set_is_keyed_whatever_its_order_blanks_and_comments_and_options_are_refused() {
        let set = |lines: &[&str]| requirement_set(&lines.iter().map(|line| line.to_string()).collect::<Vec<_>>());
        let first = set(&["numpy==2.1.3", "", "# tools", "requests>=2 # http", "numpy==2.1.3"]);
        let second = set(&["requests>=2", "numpy==2.1.3"]);
        assert_eq!(first.ok(), second.ok());
        // A file saved with a byte-order mark is the same set.
        assert_eq!(set(&["\u{feff}requests>=2\r", "numpy==2.1.3"]).ok(), set(&["requests>=2", "numpy==2.1.3"]).ok());
        // One package spelled several ways is one set (found by a new-user trial: each built an
        // environment of its own).
        assert_eq!(
            set(&["Six == 1.16", "Zope.Interface>=5, <6"]).ok(),
            set(&["six==1.16", "zope-interface>=5,<6"]).ok()
        );
        assert_eq!(set(&["typing__extensions"]).ok(), Some(vec!["typing-extensions".to_owned()]));
        // A URL's `@` with or without blanks (found by a new-user trial: two environments).
        assert_eq!(
            set(&["Six@https://h/six.whl", "six @ https://h/six.whl"]).ok(),
            Some(vec!["six @ https://h/six.whl".to_owned()])
        );
        assert_eq!(
            set(&["six[A] @https://h/six.whl ; python_version > '3'"]).ok(),
            Some(vec!["six[A] @ https://h/six.whl ; python_version > '3'".to_owned()])
        );
        // Blanks stay where they separate words: markers, URLs and VCS lines are kept as written.
        for kept in
            ["pkg @ https://example.org/pkg-1.0.whl", "git+https://github.com/a/b.git@v1", "https://example.org/x.whl"]
        {
            assert_eq!(set(&[kept]).ok(), Some(vec![kept.to_owned()]));
        }
        assert_eq!(
            set(&["Attrs ; python_version >= '3.8'"]).ok(),
            Some(vec!["attrs ; python_version >= '3.8'".to_owned()])
        );
        assert!(matches!(set(&["--index-url http://evil/simple"]), Err(RequirementError::Line { .. })));
        assert!(matches!(set(&["-e ."]), Err(RequirementError::Line { .. })));
        // Each refusal says what to do instead of that option (found by a new-user trial: `-r`
        // was told about the index).
        let said = |line: &str| set(&[line]).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(
            said("-r other.txt").contains("give the requirements of the file it names instead"),
            "{}",
            said("-r x")
        );
        assert!(said("--index-url http://evil/simple").contains("--package-index"));
        // A line that is not a requirement is refused before anything is installed, its text not
        // repeated (`export API_KEY=…`, found by a new-user trial, printed the key).
        assert_eq!(
            said("bad name!!"),
            "line 1 of the requirements is not a requirement (after the name `bad` comes what is not a version \
             (`bad==1.2`), extras (`bad[extra]`), a marker (`; python_version >= \"3.9\"`) or a URL \
             (`bad @ https://…`); its text is not shown)"
        );
        assert!(!said("export API_KEY=hunter2").contains("hunter2"));
        // Nor is an option's value: an index URL may hold a password.
        for line in
            ["--index-url https://user:hunter2@evil.example/simple", "-e git+https://u:hunter2@h/x/y", "-ehunter2"]
        {
            assert!(!said(line).contains("hunter2") && said(line).contains("has the option `-"), "{}", said(line));
        }
        for good in
            ["six", "six [x]", "six ( >=1 )", "six;python_version>'3'", "six ~= 1.0", "six!=1", "six<2", "./dir"]
        {
            assert!(set(&[good]).is_ok(), "{good}");
        }
        // Found by a new-user trial: a file that is not a requirements file (a .env, /etc/shadow)
        // went to the installer, whose error put its lines into the run's record. Refused, and
        // its text is not repeated.
        for (line, what) in [
            ("API_KEY=sk-live-SECRET123", "after the name `API_KEY` comes `=`, no version operator"),
            ("_apt:*:20228:0:99999:7:::", "neither a name nor a URL or a path"),
            ("root:x:0:0:root:/root:/bin/bash", "neither a name nor a URL or a path"),
            ("TOKEN: abc-SECRET", "neither a name nor a URL or a path"),
            ("_private==1", "a package's name starts with a letter or a digit"),
        ] {
            let error = said(line);
            assert!(error.starts_with("line 1 of the requirements is not a requirement ("), "{error}");
            assert!(error.contains(what), "{line}: {error}");
            assert!(!error.contains("SECRET") && !error.contains("20228") && !error.contains("abc"), "{error}");
        }
        assert_eq!(
            said("API_KEY=x"),
            "line 1 of the requirements is not a requirement (after the name `API_KEY` comes `=`, no version operator \
             (`==`, `>=`, `~=`); its text is not shown)"
        );
        // pip-compile's lines: continued with `\`, pinned with hashes (options, refused by name).
        assert_eq!(set(&["six \\", "  ==1.17.0"]).ok(), Some(vec!["six==1.17.0".to_owned()]));
        let hashed = set(&[
            "six==1.17.0 \\",
            "    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
        ]);
        let hashed = hashed.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(
            hashed.starts_with("line 2 of the requirements has the option `--hash`: options are not taken"),
            "{hashed}"
        );
        assert!(!hashed.contains("4721f3"), "{hashed}");
        assert!(said("six==1.17.0 --hash=sha256:ab").contains("`uv export --no-hashes`"));
        assert!(matches!(set(&["six \\"]), Err(RequirementError::Line { .. })));
    }
}
