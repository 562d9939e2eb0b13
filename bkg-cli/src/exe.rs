//! `bkg exe`: one run in a temporary sandbox, streamed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::Path;

use base64::Engine as _;
use bkg_schema::envs::NodePackages;
use bkg_schema::{FileUpload, Language, LimitOverrides, RunRequest};

use crate::args::ExeArgs;
use crate::client::AgentClient;
use crate::exit::{CliError, SCRIPT_NOT_FOUND};
use crate::out::Printer;
use crate::settings::Settings;
use crate::stream::{self, Output, Stdin};
use bkg_schema::egress::{NetRule, PortMapping};

pub async fn run(settings: &Settings, args: ExeArgs) -> Result<i32, CliError> {
    let argv: Vec<String> = std::env::args_os().map(|arg| arg.to_string_lossy().into_owned()).collect();
    // Said once the run has come back (a refusal stays one line).
    let taken = args.script.as_deref().and_then(|script| options_after_script(&argv, script, &args.args));
    let taken_after_script = args
        .script
        .as_deref()
        .zip(taken.as_deref())
        .map(|(script, taken)| taken_as_bkgs(script, taken, args.code.is_some()));
    // A refusal of an option bkg took after the script carries the way out too (found by a
    // trial: `bkg exe job.py --file x.txt` said only that x.txt does not exist).
    let with_way_out = |error: CliError| match &taken_after_script {
        Some(taken) => CliError::new(error.code, format!("{}; {taken}", error.message)),
        None => error,
    };
    // Before the script's checks: a limit flag given no value takes the next word as its value
    // (the script, another flag), and the refusal naming that flag is the one that explains what
    // follows (found by a new-user trial: `bkg exe --memory x.py` said "no code to run").
    let limit_taken = |flag: &str| {
        let given = |word: &str| word == flag || word.strip_prefix(flag).is_some_and(|rest| rest.starts_with('='));
        taken.as_deref().is_some_and(|taken| taken.split(' ').any(given))
    };
    let limits = crate::shared::limit_overrides(&args.limits).map_err(|refused| {
        match limit_taken(&format!("--{}", refused.limit)) {
            true => with_way_out(refused.error),
            false => refused.error,
        }
    })?;
    if let (Some(_), Some(script)) = (&args.code, &args.script) {
        refuse_code_after_a_script(&argv, script)?;
    }
    if args.tty {
        crate::terminal::require_terminal("bkg exe --tty")?;
    }
    let (request, stdin_is_code) = build_request(&args, limits, settings.out).map_err(with_way_out)?;
    if args.tty {
        let open = bkg_schema::terminal::TerminalOpen {
            size: crate::terminal::own_size(),
            term: crate::terminal::own_term(),
            request,
        };
        return crate::terminal::exe(settings, &open).await;
    }
    let client = AgentClient::new(&settings.endpoint()?)?;
    client.ensure_running().await?;

    let out = settings.out;
    let output = if out.is_json() { Output::Quiet } else { Output::Raw };
    let stdin = if stdin_is_code { Stdin::Empty } else { Stdin::ours() };
    let (result, not_written) =
        stream::run_keeping_out_dir(&client, "/api/v1/runs", &request, (output, out), stdin, args.output.as_deref())
            .await?;
    if out.is_json() {
        out.json(&result)?;
    }
    if let Some(reason) = stream::reason_line(&result, stream::LimitsFrom::Flags) {
        out.note(format_args!("{reason}"));
    }
    if !out.is_json() {
        crate::runs_cmd::note_kept_files(out, &result, args.output.is_some() && not_written.is_none());
    }
    for denial in stream::denial_lines(&result) {
        out.note(format_args!("{denial}"));
    }
    if let Some(taken) = &taken_after_script {
        out.note(format_args!("{taken}"));
    }
    let script = args.script.as_deref().filter(|script| args.code.is_none() && *script != "-");
    if let Some(hint) = script.and_then(|script| not_sent_hint(&result, Path::new(script))) {
        out.note(format_args!("{hint}"));
    }
    let code = crate::exit::of_run(&result);
    if let Some(error) = not_written {
        out.note(format_args!(
            "--output: {}; the run keeps its files: `bkg runs files {} --output DIR`",
            error.message, result.id
        ));
        // The run's own failure says more; a run that succeeded did not give what was asked.
        return Ok(if code == crate::exit::SUCCESS { crate::exit::BKG_FAILED } else { code });
    }
    Ok(code)
}

/// The way on when the code failed for want of a file of the script's folder (or of the current
/// directory) that was not sent: only the script goes into the sandbox, where `python3 job.py`
/// would have found it beside (found by a trial: `import helper` of a sibling module, a data
/// file opened by a relative name, Node's `require('./helper')`).
fn not_sent_hint(result: &bkg_schema::RunResult, script: &Path) -> Option<String> {
    if result.exit_code == Some(0) {
        return None;
    }
    let folder = script.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let quoted = |text: &str, after: &str| {
        let start = text.find(after)? + after.len();
        let rest = &text[start..];
        let quote = rest.chars().next().filter(|quote| *quote == '\'' || *quote == '"')?;
        rest[1..].split(quote).next().map(str::to_owned)
    };
    let streamed = stream::output_tail();
    let output = if streamed.is_empty() { &result.stderr } else { &streamed };
    for line in output.lines().rev() {
        // (where on this host, how it is named in `--file`)
        let found: Option<(std::path::PathBuf, String)> =
            if let Some(module) = quoted(line, "ModuleNotFoundError: No module named ") {
                let top = module.split('.').next().unwrap_or_default().to_owned();
                let file = folder.join(format!("{top}.py"));
                let package = folder.join(&top);
                if file.is_file() {
                    Some((file, String::new()))
                } else if package.is_dir() {
                    Some((package, format!(":{top}")))
                } else {
                    None
                }
            } else if let Some(wanted) = quoted(line, "No such file or directory: ")
                .filter(|_| line.starts_with("FileNotFoundError"))
                .filter(|wanted| !wanted.starts_with('/'))
            {
                [Path::new(".").join(&wanted), folder.join(&wanted)]
                    .into_iter()
                    .find(|path| path.is_file())
                    .map(|path| (path, format!(":{wanted}")))
            } else if let Some(wanted) = quoted(line, "Cannot find module ").filter(|wanted| wanted.starts_with("./")) {
                let base = folder.join(wanted.trim_start_matches("./"));
                ["", ".js", ".cjs", ".mjs", ".json"]
                    .iter()
                    .map(|extension| std::path::PathBuf::from(format!("{}{extension}", base.display())))
                    .find(|path| path.is_file())
                    .map(|path| (path, String::new()))
            } else {
                None
            };
        // The names come from the code's output: one that climbs out, or would print controls
        // on the user's terminal, is no hint.
        let plain = |path: &Path| {
            path.components().all(|part| !matches!(part, std::path::Component::ParentDir))
                && !path.to_string_lossy().chars().any(char::is_control)
        };
        if let Some((path, place)) = found.filter(|(path, place)| plain(path) && plain(Path::new(place))) {
            let shown = path.strip_prefix(".").unwrap_or(&path).display().to_string();
            // Where `--file` puts a file by itself: /workspace under its own name (a folder's
            // files go into /workspace itself).
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let place = if path.is_file() && place == format!(":{name}") { String::new() } else { place };
            return Some(format!(
                "{shown} is on this host, but only the script goes into the sandbox: `bkg exe --file {shown}{place} {}` \
                 sends it too",
                script.display()
            ));
        }
    }
    None
}

/// What bkg says of `taken`, words after the script (or, with `-c`, after the code's first
/// argument) that it took as its own options: that it did, and the command that gives them to the
/// script instead.
pub fn taken_as_bkgs(script: &str, taken: &str, code: bool) -> String {
    if code {
        return format!(
            "`{taken}` after {script} was taken as bkg's own; to give it to the code, put `--` before it: \
             … -c CODE {script} -- {taken} …"
        );
    }
    // The script's name quoted, so that the command can be pasted (spaces in it, say).
    let quoted = shlex::try_quote(script).map_or_else(|_| script.to_owned(), |word| word.into_owned());
    format!(
        "`{taken}` after {script} was taken as bkg's own; to give it to the script, put `--` before it: \
         bkg exe {quoted} -- {taken} …"
    )
}

/// The words of `argv` after the script that bkg took as its own options rather than the
/// script's arguments (`bkg exe conv.py -o out.csv in.csv`: `-o out.csv`), if any. Once the
/// script's first argument comes, the rest are the script's (args.rs), so bkg's own lie between
/// the script and its arguments. Code read from stdin (`-`) takes its options after it, as the
/// documented `bkg exe - --type node` does: those are bkg's and nothing is said.
fn options_after_script(argv: &[String], script: &str, script_args: &[String]) -> Option<String> {
    if script == "-" {
        return None;
    }
    let at = argv
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, word)| (word == script && argv[index + 1..].ends_with(script_args)).then_some(index))?;
    let between = &argv[at + 1..argv.len() - script_args.len()];
    let between = between.strip_suffix(&["--".to_owned()]).unwrap_or(between);
    (!between.is_empty()).then(|| between.join(" "))
}

/// `-c CODE` that comes after a script (`bkg exe tool.py -c conf.yaml`) is refused: python3
/// would give it to the script, and bkg would run CODE with the script's name as its argument
/// (found by a new-user trial: the conf file ran as Python).
fn refuse_code_after_a_script(argv: &[String], script: &str) -> Result<(), CliError> {
    let words = argv.iter().skip_while(|word| *word != "exe").skip(1);
    let is_code_flag = |word: &str| {
        word == "--code" || word.starts_with("--code=") || (word.starts_with("-c") && !word.starts_with("--"))
    };
    let mut script_seen = false;
    for word in words {
        if word == "--" {
            return Ok(());
        }
        if is_code_flag(word) {
            if !script_seen {
                return Ok(());
            }
            let quoted = shlex::try_quote(script).map_or_else(|_| script.to_owned(), |word| word.into_owned());
            return Err(CliError::usage(format!(
                "-c comes after the script {script}: give a script or -c CODE, not both; to give `-c …` to the \
                 script, put `--` before it: bkg exe {quoted} -- -c …"
            )));
        }
        script_seen |= word == script;
    }
    Ok(())
}

/// `--net`'s rules, each checked here for a one-line error before the agent sees them.
fn checked_net(rules: &[String]) -> Result<Vec<String>, CliError> {
    // Found by a new-user trial: `--net none` was a host named `none`, `--net ''` (a variable not
    // set) and `a,,b` were taken without a word.
    if rules.iter().any(|rule| rule.trim().is_empty()) {
        return Err(CliError::usage(
            "--net: a host is empty (`--net ''`, or `a,,b`): give hosts, or leave --net out for no network",
        ));
    }
    if rules.iter().any(|rule| rule.trim() == "none") {
        return Err(CliError::usage(
            "--net none: no network is the default, leave --net out (`none` would be a host of that name)",
        ));
    }
    let parsed = NetRule::parse_list(rules).map_err(|error| CliError::usage(format!("--net: {error}")))?;
    Ok(parsed.iter().map(ToString::to_string).collect())
}

fn checked_ports(ports: &[String]) -> Result<Vec<String>, CliError> {
    ports
        .iter()
        .map(|text| {
            PortMapping::parse(text)
                .map(|mapping| mapping.to_string())
                .map_err(|error| CliError::usage(format!("--publish: {error}")))
        })
        .collect()
}

/// Turns the command line into a request, reading the script and uploads. The flag says whether
/// stdin was consumed as the code.
fn build_request(args: &ExeArgs, limits: LimitOverrides, out: Printer) -> Result<(RunRequest, bool), CliError> {
    let json = out.is_json();
    // With -c there is no script file: every positional argument is the script's.
    let script_args: Vec<String> = match (&args.code, &args.script) {
        (Some(_), Some(first)) => std::iter::once(first.clone()).chain(args.args.iter().cloned()).collect(),
        _ => args.args.clone(),
    };
    let script = if args.code.is_some() { None } else { args.script.as_deref() };
    let (code, script_name, stdin_is_code) = match (&args.code, script) {
        (Some(code), _) => (code.clone(), None, false),
        (None, Some("-")) => {
            if std::io::stdin().is_terminal() {
                return Err(CliError::usage(
                    "`bkg exe -` reads the code from stdin, but stdin is a terminal: pipe the code in",
                ));
            }
            let bytes = read_at_most_a_request(std::io::stdin().lock())
                .map_err(|error| CliError::usage(format!("cannot read the code from stdin: {error}")))?
                .ok_or_else(|| over_a_request("the code on stdin"))?;
            let code = String::from_utf8(bytes).map_err(|_| {
                CliError::usage(
                    "the code on stdin is not UTF-8 text: bkg sends code as text; convert it from its encoding (`iconv -f LATIN1 -t UTF-8`, say)",
                )
            })?;
            (code, None, true)
        }
        // `bkg exe ''` said "script not found: " and nothing after it (found by a new-user trial).
        (None, Some("")) => {
            return Err(CliError::usage("the script's path is empty: give a file, like `bkg exe hello.py`"));
        }
        (None, Some(path)) => {
            let code = match std::fs::File::open(path).and_then(read_at_most_a_request) {
                Ok(None) => return Err(over_a_request(path)),
                Ok(Some(bytes)) => {
                    String::from_utf8(bytes).map_err(|_| {
                        CliError::usage(format!(
                            "{path} is not UTF-8 text: bkg sends code as text; convert it from its encoding (`iconv -f LATIN1 -t UTF-8 {path}`, say) and drop a `coding:` line"
                        ))
                    })?
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CliError::new(SCRIPT_NOT_FOUND, format!("script not found: {path}")));
                }
                Err(_) if Path::new(path).is_dir() => {
                    let dir = path.trim_end_matches('/');
                    // The way to run a project directory, shown with its own entry script: for
                    // a directory without one (`/tmp`) it would send all of it for nothing.
                    let entry = ["main.py", "__main__.py", "main.js", "index.js"]
                        .into_iter()
                        .find(|name| Path::new(dir).join(name).is_file());
                    return Err(CliError::usage(match entry {
                        Some(entry) => format!(
                            "{dir} is a directory: give the script in it (`bkg exe --file {dir} {dir}/{entry}` sends the rest beside it)"
                        ),
                        None => format!("{dir} is a directory: give a script file"),
                    }));
                }
                Err(error) => return Err(CliError::usage(format!("cannot read {path}: {error}"))),
            };
            let name = Path::new(path).file_name().map(|name| name.to_string_lossy().into_owned());
            (code, name, false)
        }
        (None, None) => return Err(CliError::usage("give a script, `-` for stdin, or -c CODE")),
    };

    let language = match (args.language, script_name.as_deref()) {
        (Some(language), _) => language,
        (None, Some(name)) => Language::from_file_name(name).or_else(|| Language::from_shebang(&code)).ok_or_else(|| {
            // As given: `<(…)`'s file name alone is a bare number (found by a new-user trial).
            let name = args.script.as_deref().filter(|given| *given != "-").unwrap_or(name);
            CliError::usage(match bkg_schema::shebang_program(&code) {
                Some(program) => format!(
                    "`{name}`'s #! line names {program}, which bkg does not run: bkg runs python and node \
                     (add --type python or --type node for code in one of them)"
                ),
                None => format!(
                    "cannot tell the language of `{name}` from its extension or a #! line: add --type python or --type node"
                ),
            })
        })?,
        (None, None) => return Err(CliError::usage("-c and - need --type python or --type node")),
    };

    let mut env = BTreeMap::new();
    for path in &args.env_files {
        let text = read_text_at_most_a_request(path).map_err(|error| {
            let fix = match error.kind() {
                std::io::ErrorKind::InvalidData => {
                    ": it is not UTF-8 text; convert it from its encoding (`iconv -f LATIN1 -t UTF-8`, say)"
                }
                std::io::ErrorKind::NotFound => ": give a file of KEY=VALUE lines",
                _ => "",
            };
            CliError::usage(format!("--env-file {}: {error}{fix}", path.display()))
        })?;
        for (number, line) in text.lines().enumerate() {
            // A byte-order mark (Windows editors) is not part of the first name.
            let line = line.trim_start_matches('\u{feff}').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = format!("--env-file {}:{}", path.display(), number + 1);
            if let Some((key, value)) = env_entry(line, &place)? {
                env.insert(key, value);
            }
        }
    }
    for pair in &args.env {
        if let Some((key, value)) = env_entry(pair, "--env")? {
            env.insert(key, value);
        }
    }

    // The script travels as the code: a directory that holds it does not send it twice.
    let script_file = script.filter(|path| *path != "-").and_then(|path| Path::new(path).canonicalize().ok());
    let mut files = Vec::new();
    for spec in &args.files {
        files.extend(read_uploads(spec, script_file.as_deref())?);
    }
    if language == Language::Node
        && let Some(script) = script_file.as_deref()
    {
        files.extend(module_type_of(script, &files));
    }
    let sent: usize = code.len() + files.iter().map(|file| file.content_base64.len()).sum::<usize>();
    if sent > bkg_schema::MAX_REQUEST_BODY_BYTES {
        return Err(CliError::usage(format!(
            "the code and its --file uploads come to {} as sent (the files in base64), over the {} one run may send: copy big files into a persistent sandbox with `bkg cp` (streamed, no such limit)",
            bkg_schema::units::format_size(sent as u64),
            bkg_schema::units::format_size(bkg_schema::MAX_REQUEST_BODY_BYTES as u64)
        )));
    }
    let shown_script = script.filter(|script| *script != "-").unwrap_or("the code");
    let block = match language {
        Language::Python => crate::inline_metadata::script_block(&code)
            .map_err(|error| CliError::usage(format!("{shown_script}: {error}")))?,
        Language::Node => None,
    };
    let requires_python = block.as_ref().and_then(|block| block.requires_python.clone());
    let requirements =
        requirements(args, (script, shown_script), block.map(|block| block.dependencies), language, out)?;
    let node_packages = node_packages(script, language)?;

    Ok((
        RunRequest {
            language,
            code,
            script_name,
            args: script_args,
            env,
            files,
            limits,
            stdin_base64: None,
            namespace: None,
            keep: args.keep.clone(),
            network: checked_net(&args.net)?,
            ports: checked_ports(&args.ports)?,
            requirements,
            requires_python,
            node_packages,
            secrets: args.secrets.clone(),
            return_out_dir: args.output.is_some(),
            // In the order the code wrote them, where they end up together; `--json` gives
            // the two apart.
            stderr_to_stdout: !args.tty && !json && crate::out::stdout_and_stderr_are_one(),
        },
        stdin_is_code,
    ))
}

/// The Python requirements of the run: the script's own list (its `# /// script` block,
/// crate::inline_metadata), else the lines of a requirements.txt beside it; then those of
/// `--requirements FILE` and each `--with`. Each source is checked on its own first
/// (bkg_schema::requirements, the agent's rule), so that a refusal names its file, line or flag.
fn requirements(
    args: &ExeArgs,
    (script, shown_script): (Option<&str>, &str),
    declared: Option<Vec<crate::inline_metadata::Dependency>>,
    language: Language,
    out: Printer,
) -> Result<Vec<String>, CliError> {
    let mut lines = Vec::new();
    let beside_script = script
        .filter(|script| *script != "-" && language == Language::Python)
        .map(|script| Path::new(script).with_file_name(REQUIREMENTS_FILE))
        .filter(|path| path.exists());
    match (declared, beside_script) {
        (Some(declared), beside) => {
            if let Some(beside) = beside.filter(|_| args.requirements.is_none()) {
                out.note(format_args!(
                    "the script lists its own dependencies (`# /// script`): {} beside it is not read \
                     (give it with -r to install it too)",
                    beside.display()
                ));
            }
            for dependency in declared {
                let place = |_| format!("{shown_script} line {} (its `# /// script` block)", dependency.line);
                check(std::slice::from_ref(&dependency.requirement), place)?;
                lines.push(dependency.requirement);
            }
        }
        (None, Some(beside)) if args.requirements.is_none() => lines.extend(requirement_lines(&beside)?),
        (None, _) => {}
    }
    if let Some(file) = &args.requirements {
        lines.extend(requirement_lines(file)?);
    }
    // An empty one is most likely a variable that was not set (`--with "$PACKAGE"`).
    if args.with.iter().any(|requirement| requirement.trim().is_empty()) {
        return Err(CliError::usage("--with: a requirement is empty: give a package (`--with numpy`) or leave it out"));
    }
    for with in &args.with {
        check(std::slice::from_ref(with), |_| "--with".to_owned())?;
    }
    lines.extend(args.with.iter().cloned());
    if !lines.is_empty() && language != Language::Python {
        return Err(CliError::usage(
            "--with and requirements files are for Python scripts: a Node script's packages come from a package.json \
             and its lock file beside it",
        ));
    }
    Ok(lines)
}

/// Refuses the `lines` of one source as the agent would refuse them, but at the place `place`
/// names for the line's number in them.
pub(crate) fn check(lines: &[String], place: impl Fn(usize) -> String) -> Result<(), CliError> {
    use bkg_schema::requirements::{RequirementError, requirement_set};
    match requirement_set(lines) {
        Ok(_) => Ok(()),
        Err(RequirementError::Line { line, problem }) => Err(CliError::usage(format!("{} {problem}", place(line)))),
        Err(error) => Err(CliError::usage(error.to_string())),
    }
}

/// The lines of the requirements file `file`, checked.
fn requirement_lines(file: &Path) -> Result<Vec<String>, CliError> {
    let text = read_text_at_most_a_request(file).map_err(|error| {
        let why = match error.kind() {
            std::io::ErrorKind::InvalidData => "it is not UTF-8 text, as pip reads requirements".to_owned(),
            std::io::ErrorKind::NotFound => "there is no such file".to_owned(),
            std::io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
            _ => error.to_string(),
        };
        CliError::usage(format!("cannot read the requirements file {}: {why}", file.display()))
    })?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    check(&lines, |line| format!("{} line {line}", file.display()))?;
    Ok(lines)
}

/// The file of a script's Python requirements, looked for beside it.
const REQUIREMENTS_FILE: &str = "requirements.txt";

/// A `.js` script is an ES module when the nearest package.json above it says `"type":
/// "module"`, as Node decides: that word goes with it, as /workspace/package.json, unless a
/// package.json is uploaded already (found by a new-user trial: such a script ran as CommonJS in
/// the sandbox, `require` defined, where bare it is not).
fn module_type_of(script: &Path, files: &[FileUpload]) -> Option<FileUpload> {
    let uploaded = files.iter().any(|file| matches!(file.path.as_str(), "package.json" | "/workspace/package.json"));
    if script.extension() != Some("js".as_ref()) || uploaded {
        return None;
    }
    let manifest = script.ancestors().skip(1).map(|dir| dir.join("package.json")).find(|path| path.is_file())?;
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    (value.get("type")?.as_str()? == "module").then(|| FileUpload {
        path: "package.json".into(),
        content_base64: base64::engine::general_purpose::STANDARD.encode(br#"{"type":"module"}"#),
        executable: false,
    })
}

/// A Node script's packages: the package.json beside it, when it names dependencies, with its
/// package-lock.json (what `npm ci` installs, so the same lockfile is the same environment).
fn node_packages(script: Option<&str>, language: Language) -> Result<Option<NodePackages>, CliError> {
    let Some(script) = script.filter(|script| *script != "-" && language == Language::Node) else {
        return Ok(None);
    };
    let manifest = Path::new(script).with_file_name("package.json");
    let Ok(package_json) = std::fs::read_to_string(&manifest) else { return Ok(None) };
    let names_dependencies = names_dependencies(&package_json).map_err(|error| {
        CliError::usage(format!(
            "{} beside the script is not JSON ({error}): fix it, or move it away if the script needs no packages",
            manifest.display()
        ))
    })?;
    if !names_dependencies {
        return Ok(None);
    }
    let lockfile = manifest.with_file_name("package-lock.json");
    let package_lock = std::fs::read_to_string(&lockfile).map_err(|error| {
        CliError::usage(format!(
            "{} names dependencies but {} cannot be read ({error}): make it with `npm install --package-lock-only`",
            manifest.display(),
            lockfile.display()
        ))
    })?;
    Ok(Some(NodePackages { package_json, package_lock }))
}

/// Whether the package.json `text` names packages to install: only then is there an environment
/// to build, and a package-lock.json needed for it.
pub(crate) fn names_dependencies(text: &str) -> Result<bool, serde_json::Error> {
    let parsed: serde_json::Value = serde_json::from_str(text)?;
    Ok(["dependencies", "devDependencies", "optionalDependencies"]
        .iter()
        .any(|field| parsed.get(field).and_then(serde_json::Value::as_object).is_some_and(|deps| !deps.is_empty())))
}

/// `KEY=VALUE`, or a bare `KEY` that takes the host's value (skipped when the host has none, as
/// docker does).
pub(crate) fn env_entry(entry: &str, place: &str) -> Result<Option<(String, String)>, CliError> {
    let (key, value) = match entry.split_once('=') {
        Some((key, value)) => (key, Some(value.to_owned())),
        None => (entry, None),
    };
    if !bkg_schema::cave::is_env_key(key) {
        return Err(CliError::usage(format!(
            "{place}: `{key}` is not a variable name: use KEY=VALUE or KEY ({})",
            bkg_schema::cave::ENV_KEY_RULE
        )));
    }
    let value = match value {
        Some(value) => value,
        None => match std::env::var(key) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            // Not dropped unsaid (found by a new-user trial: the code saw no such variable).
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(CliError::usage(format!(
                    "{place}: `{key}`'s value here is not UTF-8 text, and a run's environment is text: give it as \
                     {key}=VALUE"
                )));
            }
        },
    };
    Ok(Some((key.to_owned(), value)))
}

/// `SRC[:DEST]`: a host file and where it goes (default: its name, in /workspace), or a
/// directory whose files go, with their subdirectories, into /workspace (or DEST): beside the
/// script, so that it can import them. A link in the directory is followed only to a place
/// inside it (a repository's link to `~/.aws` must not hand its files to the code); a name
/// that is not UTF-8 is refused, since the request carries names as text.
fn read_uploads(spec: &str, script: Option<&Path>) -> Result<Vec<FileUpload>, CliError> {
    let (source, destination) = match spec.split_once(':') {
        Some((source, "")) => {
            return Err(CliError::usage(format!(
                "--file {spec}: give the place in /workspace after `:` ({source}:DEST), or leave the `:` out"
            )));
        }
        Some((source, destination)) => (source, Some(destination)),
        None => (spec, None),
    };
    let path = Path::new(source);
    let metadata = std::fs::metadata(path).map_err(|error| CliError::usage(format!("--file {source}: {error}")))?;
    if !metadata.is_dir() {
        return Ok(vec![read_upload(source, destination)?]);
    }
    let failed = |path: &Path, error: std::io::Error| CliError::usage(format!("--file {}: {error}", path.display()));
    let root = path.canonicalize().map_err(|error| failed(path, error))?;
    let mut uploads = Vec::new();
    let mut read_bytes = 0;
    let mut pending =
        vec![(path.to_path_buf(), root.clone(), destination.map(std::path::PathBuf::from).unwrap_or_default())];
    while let Some((dir, real_dir, inside)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|error| failed(&dir, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| failed(&dir, error))?;
            let host = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(CliError::usage(format!(
                    "--file {source}: the name of {} is not UTF-8, and a run's files are named in UTF-8: rename it, \
                     or copy it into a persistent sandbox with `bkg cp`",
                    host.display()
                )));
            };
            let name = inside.join(file_name);
            let real = host.canonicalize().map_err(|error| failed(&host, error))?;
            if !real.starts_with(&root) {
                return Err(CliError::usage(format!(
                    "--file {source}: {} is a link to {}, outside {source}: give it its own --file if the code \
                     should have it",
                    host.display(),
                    real.display()
                )));
            }
            let kind = std::fs::metadata(&real).map_err(|error| failed(&host, error))?;
            if kind.is_dir() {
                // A link to the directory it is in, or to one around it, would go round for ever.
                if !real_dir.starts_with(&real) {
                    pending.push((host, real, name));
                }
            } else if kind.is_file() && Some(real.as_path()) != script {
                let (host, name) = (host.to_string_lossy().into_owned(), name.to_string_lossy().into_owned());
                let upload = read_upload(&host, Some(&name))?;
                read_bytes += upload.content_base64.len();
                uploads.push(upload);
                // Past what one run may send, the caller refuses it anyway: read no further.
                if read_bytes > bkg_schema::MAX_REQUEST_BODY_BYTES {
                    return Ok(uploads);
                }
            }
        }
    }
    Ok(uploads)
}

/// All of `source`, or `None` once it holds more than one run may send
/// (`MAX_REQUEST_BODY_BYTES`), having read no more than that (found by a new-user trial: `bkg exe
/// -t python /dev/zero`, and `--env-file` or `-r` of it, took gigabytes before any check).
fn read_at_most_a_request(source: impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let limit = bkg_schema::MAX_REQUEST_BODY_BYTES as u64;
    let mut bytes = Vec::new();
    source.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The UTF-8 text of file `path`, as `read_at_most_a_request` bounds it (`InvalidData` past the
/// bound too, or for text that is not UTF-8).
fn read_text_at_most_a_request(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::File::open(path).and_then(read_at_most_a_request)?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("it {}", more_than_a_request()))
    })?;
    String::from_utf8(bytes).map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
}

fn over_a_request(what: &str) -> CliError {
    CliError::usage(format!(
        "{what} {}: copy big files into a persistent sandbox with `bkg cp` (streamed, no such limit)",
        more_than_a_request()
    ))
}

/// What `read_at_most_a_request` refuses, in words.
fn more_than_a_request() -> String {
    format!(
        "holds more than the {} one run may send",
        bkg_schema::units::format_size(bkg_schema::MAX_REQUEST_BODY_BYTES as u64)
    )
}

fn read_upload(source: &str, destination: Option<&str>) -> Result<FileUpload, CliError> {
    let path = Path::new(source);
    let metadata = std::fs::metadata(path).map_err(|error| CliError::usage(format!("--file {source}: {error}")))?;
    if !metadata.is_file() {
        return Err(CliError::usage(format!("--file {source}: not a regular file or directory")));
    }
    if metadata.len() > bkg_schema::MAX_REQUEST_BODY_BYTES as u64 {
        return Err(over_a_request(&format!("--file {source}")));
    }
    let content = std::fs::read(path).map_err(|error| CliError::usage(format!("--file {source}: {error}")))?;
    let destination = match destination {
        // `hi.py:lib/` is a directory to put it in, as `cp` reads it.
        Some(directory) if directory.ends_with('/') => {
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            format!("{directory}{name}")
        }
        Some(destination) => destination.to_owned(),
        None => path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| CliError::usage(format!("--file {source}: has no file name")))?,
    };
    let executable = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0;
    Ok(FileUpload {
        path: destination,
        content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_bkg_took_after_the_script_are_named() {
        let taken = |line: &str, script: &str, args: &str| options_after_script(&words(line), script, &words(args));
        assert_eq!(taken("bkg exe conv.py -o out.csv in.csv", "conv.py", "in.csv"), Some("-o out.csv".to_owned()));
        assert_eq!(taken("bkg exe conv.py --json", "conv.py", ""), Some("--json".to_owned()));
        assert_eq!(taken("bkg exe --json conv.py in.csv --verbose", "conv.py", "in.csv --verbose"), None);
        assert_eq!(taken("bkg exe conv.py -- -o out.csv", "conv.py", "-o out.csv"), None);
        assert_eq!(
            taken("bkg exe -e X=1 conv.py conv.py", "conv.py", "conv.py"),
            None,
            "the script's own name as an argument"
        );
        assert_eq!(taken("bkg --json exe job.py", "job.py", ""), None);
        assert_eq!(taken("bkg exe - --type node", "-", ""), None, "the documented form for code on stdin");
    }
}
