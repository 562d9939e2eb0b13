//! `bkgr`: runs the persistent sandboxes a project's `cave.yaml` declares, through the agent.

use std::process::ExitCode;

use bkg_cli::shared::{
    AgentClient, Bkgr as Args, CliError, Endpoint, LimitsFrom, Output, Outside, Printer, SUCCESS, Stdin, bkgr_command,
    define, definition, denial_lines, exit_code_of_run, exit_code_of_runs, limit_overrides, load_cave, load_cave_for,
    note_kept_files, project_dir, reason_line, run_streamed, unknown_sandbox,
};
use bkg_schema::LimitOverrides;
use bkg_schema::cave::SandboxSpec;
use bkg_schema::sandbox::{DetachedRun, ExecRequest, SandboxDefinition, SandboxInfo, sandbox_id};
use bkg_schema::units::format_size;

fn main() -> ExitCode {
    bkg_schema::environment::forget_empty_variables();
    let args: Args = match bkg_cli::shared::parse(bkgr_command()) {
        Ok(args) => args,
        Err(error) => return bkg_cli::shared::clap_error(error, "bkgr"),
    };
    bkg_cli::shared::run_to_exit("bkgr", run(args))
}

async fn run(args: Args) -> Result<i32, CliError> {
    let out = Printer::new("bkgr", false);
    // A project's sandboxes run on this machine's agent, beside the project and its volumes;
    // with `bkg` talking to a remote agent, running here instead would go unnoticed.
    if let Some(remote) = std::env::var_os("BKG_REMOTE") {
        return Err(CliError::usage(format!(
            "cave.yaml's sandboxes run on this machine's agent, and BKG_REMOTE is set ({}): unset it for bkgr \
             (`BKG_REMOTE= bkgr …`), or run code on the remote agent with `bkg exe`",
            remote.to_string_lossy()
        )));
    }
    // Before the names: a limit flag given no value took the next word (`bkgr --cpus web`), and
    // the refusal naming the flag explains what follows (found by a new-user trial).
    let flags = limit_overrides(&args.limits)?;
    let project = project_dir(args.dir.as_deref())?;
    // One sandbox runs whatever problems others have; all of them, only from a valid file.
    let cave = match &args.name {
        Some(name) => load_cave_for(&project, name, out)?,
        None => load_cave(&project)?,
    };
    let selected: Vec<(&String, &SandboxSpec)> = match &args.name {
        Some(name) => {
            let spec = cave.sandboxes.get(name).ok_or_else(|| unknown_sandbox(&cave, name))?;
            vec![(name, spec)]
        }
        None if cave.sandboxes.is_empty() => {
            return Err(CliError::usage("cave.yaml declares no sandbox: `bkg add NAME --type python` adds one"));
        }
        None => cave.sandboxes.iter().collect(),
    };

    // The flags hold for these runs only: the sandboxes keep cave.yaml's limits. But for
    // `--disk`: a disk grows for good, so the sandbox's definition says the size it now has;
    // and as a disk only grows, cave.yaml's larger one wins over a smaller flag (it is then what
    // the agent checks against its maximum, found by a new-user trial: `limits.disk: 50GiB`
    // above the maximum was let through by `--disk 1GiB`, and `bkg ls` promised it next time).
    let one_off = LimitOverrides { disk_bytes: None, ..flags };
    let mut runs = Vec::new();
    let mut left_out = Vec::new();
    for (name, spec) in &selected {
        let Some(command) = spec.scripts.get(&args.script) else {
            let known: Vec<&str> = spec.scripts.keys().map(String::as_str).collect();
            let has = match known.as_slice() {
                [] => "it has none: add one under `scripts:` in cave.yaml".to_owned(),
                known => format!("it has: {}", known.join(", ")),
            };
            let missing = format!("sandbox `{name}` has no script `{}` ({has})", args.script);
            // Named, it is the mistake; among all, a sandbox without the script is not run
            // (one with only a `test` script), as a Procfile runner runs what is declared.
            if args.name.is_some() {
                return Err(CliError::usage(missing));
            }
            left_out.push(missing);
            continue;
        };
        let mut definition = definition(&cave, &project, name, spec, Outside::allowed(args.allow_outside))?;
        definition.limits.disk_bytes = match (flags.disk_bytes, definition.limits.disk_bytes) {
            (Some(flag), Some(cave)) if cave > flag => {
                out.note(format_args!(
                    // Its disk may have grown past cave.yaml's by an earlier `--disk` (found by a
                    // trial: "which it gets" was said of a 300MiB disk).
                    "{name}: --disk {} is below cave.yaml's limits.disk, {}: a disk only grows, so it keeps the size \
                     it has, at least that (`bkg status {name}` shows it)",
                    format_size(flag),
                    format_size(cave)
                ));
                Some(cave)
            }
            (flag, cave) => flag.or(cave),
        };
        runs.push((definition, with_args(command, &args.args).map_err(|why| {
            CliError::usage(format!(
                "the arguments after -- have no one command to go to in script `{}` of `{name}`: {why}; write \"$@\" in \
                 it where they go",
                args.script
            ))
        })?));
    }

    if runs.is_empty() {
        return Err(CliError::usage(format!("no sandbox has a script `{}`: {}", args.script, left_out.join("; "))));
    }
    for missing in &left_out {
        out.note(format_args!("{missing}: left out"));
    }

    let endpoint = Endpoint::socket(args.socket.clone().unwrap_or_else(bkg_schema::paths::default_socket))?;
    let client = AgentClient::new(&endpoint)?;
    client.ensure_running().await?;
    for (definition, _) in &runs {
        let disk_flag = flags.disk_bytes.filter(|flag| definition.limits.disk_bytes == Some(*flag));
        define(&client, definition, out).await.map_err(|error| disk_flag_above_maximum(error, disk_flag))?;
    }
    let limits_from = LimitsFrom::CaveOrFlags(flags, &["cpus", "memory", "timeout", "disk"]);

    if args.detach {
        let mut codes = Vec::new();
        for (definition, command) in runs {
            let id = sandbox_id(&definition.project_dir, &definition.name);
            let request = ExecRequest { detach: true, limits: one_off, ..ExecRequest::command(command) };
            let detached: DetachedRun = match client.post_json(&format!("/api/v1/sandboxes/{id}/exec"), &request).await
            {
                Ok(detached) => detached,
                // One sandbox refused (busy, no room) leaves the others to start, each failure
                // said with its sandbox's name, the one named too (found by new-user trials: the
                // first refusal ended bkgr unnamed, and the sandboxes after it were not tried).
                Err(error) => {
                    out.note(format_args!("{}: {}", definition.name, error.message));
                    codes.push(error.code);
                    continue;
                }
            };
            codes.push(SUCCESS);
            out.line(format_args!("{}\t{}", definition.name, detached.run_id));
            // A detached run reads as "keeps running": its timeout is said, as it ends it (found
            // by a new-user trial: a server went away after the default minute, without a word).
            let info: Option<SandboxInfo> = client.get_found(&format!("/api/v1/sandboxes/{id}")).await?;
            let timeout_ms = one_off.timeout_ms.or(info.map(|info| info.limits.timeout_ms));
            if let Some(timeout_ms) = timeout_ms.filter(|ms| *ms != bkg_schema::NO_TIMEOUT_MS) {
                // Where the timeout came from (found by a new-user trial: `--timeout 1s` was said
                // to be cave.yaml's).
                let from = match one_off.timeout_ms {
                    Some(_) => "--timeout, for this run",
                    None => "`limits: {timeout: …}` in cave.yaml; `none` where the agent allows it",
                };
                out.note(format_args!(
                    "{}: its run ends at its timeout, {} ({from})",
                    definition.name,
                    bkg_schema::units::format_duration_ms(timeout_ms)
                ));
            }
        }
        return Ok(exit_code_of_runs(&codes));
    }

    // In the order each command wrote them, where they end up together (bkg exe's rule).
    let joined = bkg_cli::out::stdout_and_stderr_are_one();
    // One named sandbox runs in the foreground with our stdin; without a name every sandbox
    // runs at once, like a Procfile runner, each line after its sandbox's name.
    if let (Some(_), [(definition, command)]) = (&args.name, runs.as_slice()) {
        let result = exec(&client, (definition, one_off, joined), command, Output::Raw, Stdin::Relay).await?;
        if let Some(reason) = reason_line(&result, limits_from) {
            out.note(format_args!("{}: {reason}", definition.name));
        }
        for denial in denial_lines(&result) {
            out.note(format_args!("{}: {denial}", definition.name));
        }
        // What cave.yaml's `keep` kept, and how to fetch it, as `bkg exe` says (found by a
        // new-user trial: silent, not even the run's id).
        note_kept_files(out, &result, false);
        return Ok(exit_code_of_run(&result));
    }

    let width = runs.iter().map(|(definition, _)| definition.name.len()).max().unwrap_or(0);
    let mut tasks = tokio::task::JoinSet::new();
    for (definition, command) in runs {
        let client = AgentClient::new(&endpoint)?;
        let prefix = format!("{:<width$}", definition.name);
        tasks.spawn(async move {
            let outcome =
                exec(&client, (&definition, one_off, joined), &command, Output::Prefixed(prefix), Stdin::Empty).await;
            (definition.name, outcome)
        });
    }
    let mut codes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, outcome)) = joined else { continue };
        let code = match outcome {
            Ok(result) => {
                let code = exit_code_of_run(&result);
                match reason_line(&result, limits_from) {
                    Some(reason) => out.note(format_args!("{name}: {reason}")),
                    // Several sandboxes' codes come out as one: each failure is said with its own.
                    None if code != SUCCESS => out.note(format_args!("{name}: exited with {code}")),
                    None => {}
                }
                code
            }
            Err(error) => {
                out.note(format_args!("{name}: {}", error.message));
                error.code
            }
        };
        codes.push(code);
    }
    Ok(exit_code_of_runs(&codes))
}

async fn exec(
    client: &AgentClient,
    (definition, limits, stderr_to_stdout): (&SandboxDefinition, LimitOverrides, bool),
    command: &str,
    output: Output,
    stdin: Stdin,
) -> Result<bkg_schema::RunResult, CliError> {
    let id = sandbox_id(&definition.project_dir, &definition.name);
    let request = ExecRequest { limits, stderr_to_stdout, ..ExecRequest::command(command) };
    run_streamed(
        client,
        &format!("/api/v1/sandboxes/{id}/exec"),
        &request,
        (output, Printer::new("bkgr", false)),
        stdin,
    )
    .await
}

/// The script's command with the arguments after `--`, each quoted for `/bin/sh -c`: its
/// positional parameters when it expands them (`"$@"`, `$*`), else appended to it. Appended to a
/// command that does not end on its one line they were run as a command of their own (after a
/// newline, `;` or `&`, as a YAML `|` block always ends in one) or lost (after a comment): found
/// by a new-user trial, so such a command is refused, with why.
fn with_args(command: &str, args: &[String]) -> Result<String, &'static str> {
    let quoted: String = args.iter().map(|arg| format!(" '{}'", arg.replace('\'', "'\\''"))).collect();
    if args.is_empty() {
        return Ok(command.to_owned());
    }
    let command = command.trim_end();
    let scan = ShellScan::of(command);
    if scan.expands_arguments {
        return Ok(format!("set --{quoted}\n{command}"));
    }
    match scan.end {
        _ if command.contains('\n') => Err("it is several lines"),
        End::Open => Err("it ends inside a quote or after a \\"),
        End::Comment => Err("it ends in a comment"),
        End::Operator => Err("it ends in an operator"),
        End::Word => Ok(format!("{command}{quoted}")),
    }
}

/// How a command line ends, for what is appended to it.
#[derive(Debug, PartialEq)]
enum End {
    /// A word, a closing quote or an escaped character: what follows is more words.
    Word,
    /// `;`, `&`, `|`, `<` or `>`: what follows is another command, or a file.
    Operator,
    /// A comment: what follows is part of it.
    Comment,
    /// Inside a quote, or after a `\`.
    Open,
}

/// What the shell's quoting says of a command, read as `sh` reads it (here-documents aside, whose
/// bodies are read as commands are).
struct ShellScan {
    /// `$@`, `${@…}`, `$*` or `${*…}` outside single quotes and comments.
    expands_arguments: bool,
    end: End,
}

impl ShellScan {
    fn of(command: &str) -> Self {
        #[derive(PartialEq)]
        enum In {
            Plain,
            Single,
            Double,
            Comment,
        }
        let mut state = In::Plain;
        let mut expands_arguments = false;
        let mut end = End::Word;
        let mut at_word_start = true;
        let mut chars = command.chars().peekable();
        while let Some(char) = chars.next() {
            match state {
                In::Comment if char == '\n' => (state, end) = (In::Plain, End::Operator),
                In::Comment => {}
                In::Single if char == '\'' => (state, end) = (In::Plain, End::Word),
                In::Single => {}
                In::Double | In::Plain if char == '\\' => {
                    end = match chars.next() {
                        Some(_) => End::Word,
                        None => End::Open,
                    };
                    at_word_start = false;
                    continue;
                }
                In::Double | In::Plain if char == '$' => {
                    let _ = chars.next_if_eq(&'{');
                    expands_arguments |= chars.peek().is_some_and(|next| matches!(next, '@' | '*'));
                    if state == In::Plain {
                        end = End::Word;
                    }
                }
                In::Double if char == '"' => (state, end) = (In::Plain, End::Word),
                In::Double => {}
                In::Plain => match char {
                    '#' if at_word_start => state = In::Comment,
                    '\'' => (state, end) = (In::Single, End::Open),
                    '"' => (state, end) = (In::Double, End::Open),
                    ';' | '&' | '|' | '<' | '>' | '\n' => end = End::Operator,
                    char if char.is_whitespace() => {}
                    _ => end = End::Word,
                },
            }
            at_word_start = state == In::Plain && (char.is_whitespace() || matches!(char, ';' | '&' | '|' | '(' | ')'));
        }
        let end = match state {
            In::Comment => End::Comment,
            In::Single | In::Double => End::Open,
            In::Plain => end,
        };
        Self { expands_arguments, end }
    }
}

/// The agent's refusal of a disk above its maximum names cave.yaml's `limits.disk` as the fix
/// (engine/request.rs, `check_definition`); when `--disk` gave the size, the flag is what to
/// change (found by a new-user trial: the error sent the user to cave.yaml, which set no disk).
fn disk_flag_above_maximum(mut error: CliError, disk_flag: Option<u64>) -> CliError {
    const CAVE_FIX: &str = "; give the sandbox's limits.disk (cave.yaml's) at most that";
    if disk_flag.is_some()
        && let Some(at) = error.message.find(CAVE_FIX)
    {
        error.message.truncate(at);
        error.message.push_str(
            "; ask for less with --disk, or start the agent with a higher --max-disk (a disk keeps the size --disk \
             gives it)",
        );
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_the_shell() {
        assert_eq!(with_args("pytest", &[]), Ok("pytest".into()));
        assert_eq!(with_args("pytest", &["-k".into(), "it's $HOME".into()]), Ok("pytest '-k' 'it'\\''s $HOME'".into()));
    }

    #[test]
    fn arguments_go_to_the_one_command_or_to_the_positional_parameters() {
        let args = ["a b".to_owned()];
        assert_eq!(with_args("pytest -q\n", &args), Ok("pytest -q 'a b'".into()), "a YAML | block's newline");
        assert_eq!(
            with_args("echo first\nprintf %s \"$@\"\n", &args),
            Ok("set -- 'a b'\necho first\nprintf %s \"$@\"".into())
        );
        assert_eq!(with_args("echo first\npytest\n", &args), Err("it is several lines"));
        assert_eq!(with_args("python x.py # prints args", &args), Err("it ends in a comment"));
        assert_eq!(with_args("serve &", &args), Err("it ends in an operator"));
        assert_eq!(with_args("echo a >", &args), Err("it ends in an operator"));
        assert_eq!(with_args("make; make test", &args), Ok("make; make test 'a b'".into()));
        assert_eq!(with_args("echo '#' \"#\" a#b", &args), Ok("echo '#' \"#\" a#b 'a b'".into()));
        // Found by a new-user trial: quoted, escaped or in a comment, `$@` takes nothing.
        assert_eq!(with_args("echo '\"$@\"'", &args), Ok("echo '\"$@\"' 'a b'".into()));
        assert_eq!(with_args("echo \\$@", &args), Ok("echo \\$@ 'a b'".into()));
        assert_eq!(with_args("echo hi # pass \"$@\" later", &args), Err("it ends in a comment"));
        assert_eq!(with_args("printf '[%s]' \"$*\"", &args), Ok("set -- 'a b'\nprintf '[%s]' \"$*\"".into()));
        assert_eq!(
            with_args("for f in ${@}; do echo $f; done", &args),
            Ok("set -- 'a b'\nfor f in ${@}; do echo $f; done".into())
        );
        // An escaped operator is a word; an open quote or a last `\` is no end at all.
        assert_eq!(with_args("echo x\\;", &args), Ok("echo x\\; 'a b'".into()));
        assert_eq!(with_args("echo 'abc", &args), Err("it ends inside a quote or after a \\"));
        assert_eq!(with_args("echo abc \\", &args), Err("it ends inside a quote or after a \\"));
        // With nothing to append, any command runs as written.
        assert_eq!(with_args("echo first\npytest # all\n", &[]), Ok("echo first\npytest # all\n".into()));
    }
}
