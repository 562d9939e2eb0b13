//! `cargo run -p xtask -- env-doc` (`make env-doc`): docs/env.md, every flag of bkg, bkgr and
//! bkg-agent and every environment variable the code reads, with its default and meaning.
//!
//! Flags and their variables come from the clap commands the binaries parse with. Variables read
//! in code (`std::env::var("…")`, `var_os`, a `const …: &str` passed to them, `try_from_env`)
//! are found in the sources; each needs its entry in [`READ_IN_CODE`], and an entry the sources
//! no longer read fails the generation, so neither side can drift without the test noticing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The source trees of the shipped binaries (and their build script), where variables are read.
const SOURCES: [&str; 5] = ["bkg-agent/src", "bkg-cli/src", "bkgr/src", "schema/src", "scripts/build_info.rs"];

/// A variable read in code rather than through a clap `env`: what it does and its default.
struct Described {
    name: &'static str,
    default: &'static str,
    meaning: &'static str,
}

/// Every variable the sources read by name, apart from clap's `env = "…"`.
const READ_IN_CODE: &[Described] = &[
    Described {
        name: "BKG_ALLOW_MISSING_KERNEL_FEATURES",
        default: "unset",
        meaning: "tests only: `1` turns a missing kernel feature into a skip that says so instead of a failure",
    },
    Described {
        name: "BKG_ALLOW_HTTP",
        default: "unset",
        meaning: "`1`: let `--remote http://` reach a host that is not loopback (a tunnel, a network you trust); the key crosses it in clear",
    },
    Described {
        name: "BKG_API_KEY",
        default: "unset",
        meaning: "the API key for `--remote`; wins over the one `bkg login` kept",
    },
    Described {
        name: "BKG_CLIENT_TIMEOUT",
        default: "`10s`",
        meaning: "how long one call of bkg or bkgr waits for the agent to connect and answer (a duration)",
    },
    Described {
        name: "BKG_CREDENTIAL_STORE",
        default: "the kernel keyring",
        meaning: "`file`: keep `bkg login`'s keys only in `~/.config/bkg/credentials` (0600), never the keyring; `keyring` (or unset): the keyring when the process has a session keyring of its own and it gives back what it is given, else the file; any other value is refused",
    },
    Described {
        name: "BKG_LOG",
        default: "`info,rmcp=warn`",
        meaning: "the agent's log filter (tracing's `EnvFilter` syntax, e.g. `debug`, `bkg_agent::sync=trace`)",
    },
    Described {
        name: "BKG_NO_AUTOSTART",
        default: "unset",
        meaning: "set and not `0`: bkg never starts an agent when none answers (root's bkg otherwise does)",
    },
    Described {
        name: "BKG_REMOTE",
        default: "unset",
        meaning: "also read directly by bkgr, which runs a project on this machine's agent only: set, it refuses to run (exit 125)",
    },
    Described {
        name: "BKG_SOCKET",
        default: "`/run/bkg/agent.sock`",
        meaning: "also read directly where bkg or bkgr needs the default socket outside clap",
    },
    Described {
        name: "BKG_STATE_DIR",
        default: "`/var/lib/bkg` as root, else `$XDG_STATE_HOME/bkg`",
        meaning: "also read directly for the state dir of an agent that bkg starts by itself",
    },
    Described {
        name: "CAVE_OTEL_SAMPLING_RATE",
        default: "`1.0`",
        meaning: "the agent's trace sampling rate, 0.0 to 1.0; anything else and the agent does not start",
    },
    Described { name: "CI", default: "unset", meaning: "set and not empty: `bkg init` never prompts" },
    Described {
        name: "COLUMNS",
        default: "the terminal's width",
        meaning: "the width the tables of `ls`, `keys ls`, `runs ls` fit to",
    },
    Described {
        name: "HOME",
        default: "—",
        meaning: "where `~/.config/bkg/credentials` and `~/.local/state/bkg` are when the XDG variables are unset",
    },
    Described {
        name: "LISTEN_FDS",
        default: "unset",
        meaning: "systemd socket activation: the agent serves the socket handed over as fd 3 (docs/deployment.md)",
    },
    Described {
        name: "LISTEN_PID",
        default: "unset",
        meaning: "systemd socket activation: must be the agent's pid for `LISTEN_FDS` to count",
    },
    Described {
        name: "NO_COLOR",
        default: "unset",
        meaning: "set: the agent's log has no colour (bkg's help and errors drop theirs through their library)",
    },
    Described {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "unset (no export)",
        meaning: "export the agent's traces as OTLP/HTTP JSON to `ENDPOINT/v1/traces`",
    },
    Described {
        name: "OTEL_EXPORTER_OTLP_HEADERS",
        default: "unset",
        meaning: "`NAME=VALUE,…` headers sent with each trace export",
    },
    Described {
        name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        default: "unset",
        meaning: "the whole URL of the trace export; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`",
    },
    Described { name: "OTEL_SERVICE_NAME", default: "`bkg-agent`", meaning: "the `service.name` of exported traces" },
    Described {
        name: "SOURCE_DATE_EPOCH",
        default: "the commit's time",
        meaning: "build time: the build date `bkg version` and `bkg agent status` show (reproducible builds, docs/release.md)",
    },
    Described {
        name: "TERM",
        default: "`xterm-256color` in the sandbox",
        meaning: "passed into the sandbox's terminal by `bkg shell` and `bkg exe --tty` (not when `dumb`)",
    },
    Described {
        name: "XDG_CONFIG_HOME",
        default: "`~/.config`",
        meaning: "where bkg keeps `bkg/credentials` (an absolute path only)",
    },
    Described {
        name: "XDG_STATE_HOME",
        default: "`~/.local/state`",
        meaning: "where a non-root user's default state dir is (`bkg/`)",
    },
];

/// Variables read by a library bkg uses, not by its own code: the library named must still be
/// in Cargo.lock (the test checks), since the sources cannot show these reads.
pub const READ_BY_LIBRARIES: &[(&str, &str, &str)] = &[
    (
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP (every AWS_*)",
        "object_store",
        "the S3 service of `--object-store s3://…`",
    ),
    (
        "CLICOLOR, CLICOLOR_FORCE, NO_COLOR",
        "anstyle-query",
        "colour of clap's help and errors in bkg, bkgr and bkg-agent",
    ),
    (
        "NO_COLOR, CLICOLOR, CLICOLOR_FORCE",
        "console",
        "nothing bkg shows: its password prompts (dialoguer) have no colour",
    ),
    (
        "SSL_CERT_FILE, SSL_CERT_DIR",
        "rustls-native-certs",
        "the system's CA certificates for `--remote https://…`, webhooks and bkg_db TLS",
    ),
];

/// Reads whose variable name is only known at run time, each with where it is and why.
const DYNAMIC: &[(&str, &str, &str)] = &[(
    "bkg-cli/src/exe.rs",
    "key",
    "`bkg exe -e KEY` (and a bare `KEY` in `--env-file`) passes the host's value of KEY, as docker does",
)];

/// One flag of one command.
struct Flag {
    command: String,
    flag: String,
    env: Option<String>,
    default: String,
    meaning: String,
}

/// Every flag (non-positional argument) of `command` and its subcommands, by command path.
/// Global flags are taken where they are declared: clap copies them down only when it builds.
fn flags(command: &clap::Command, path: &str, found: &mut Vec<Flag>) {
    for arg in command.get_arguments().filter(|arg| !arg.is_positional()) {
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => format!("`-{short}, --{long}`"),
            (None, Some(long)) => format!("`--{long}`"),
            (Some(short), None) => format!("`-{short}`"),
            (None, None) => continue,
        };
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        let (meaning, stated_default) = split_default(&help);
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
        let default = if !defaults.is_empty() {
            format!("`{}`", defaults.join(","))
        } else if let Some(stated) = stated_default {
            stated
        } else if !arg.get_action().takes_values() {
            "off".to_owned()
        } else {
            "—".to_owned()
        };
        // Hidden flags are read all the same: bkg's own calls (`--check-host`) and old names.
        let hidden = if arg.is_hide_set() { " (hidden from --help)" } else { "" };
        found.push(Flag {
            command: path.to_owned(),
            flag,
            env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
            default,
            meaning: format!("{meaning}{hidden}"),
        });
    }
    for sub in command.get_subcommands() {
        flags(sub, &format!("{path} {}", sub.get_name()), found);
    }
}

/// The help text as one line, and the `[default: …]` it states, if any (clap prints defaults
/// it knows itself; the others are written into the help).
fn split_default(help: &str) -> (String, Option<String>) {
    let one_line = help.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.rsplit_once("[default: ") {
        Some((before, after)) => {
            let (default, rest) = after.split_once(']').unwrap_or((after, ""));
            (format!("{}{}", before.trim_end(), rest).trim().to_owned(), Some(default.to_owned()))
        }
        None => (one_line, None),
    }
}

/// The `.rs` files of `SOURCES`, relative to `repo`.
fn source_files(repo: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, files)?;
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for source in SOURCES {
        let path = repo.join(source);
        if path.is_dir() { walk(&path, &mut files)? } else { files.push(path) }
    }
    files.sort();
    Ok(files)
}

/// What the sources read: variable name → files, and the names clap's `env = "…"` gives.
#[derive(Default)]
pub struct Reads {
    pub in_code: BTreeMap<String, BTreeSet<String>>,
    pub clap_env: BTreeSet<String>,
}

/// The text between `open`'s `(` and its matching `)`.
fn call_argument(text: &str) -> &str {
    let mut depth = 0usize;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return &text[..at],
            ')' => depth -= 1,
            _ => {}
        }
    }
    text
}

/// Finds every variable read in `SOURCES`. An argument that is neither a string literal nor a
/// `const` string, and is not listed in [`DYNAMIC`], is an error: a read the doc cannot name.
pub fn scan(repo: &Path) -> Result<Reads, String> {
    let files = source_files(repo).map_err(|error| format!("reading the sources: {error}"))?;
    let mut texts = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let relative = path.strip_prefix(repo).unwrap_or(&path).display().to_string();
        // Comments may name a read (`std::env::var("X")` in a doc comment) without making one.
        let code: String =
            text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        texts.push((relative, code));
    }
    let mut constants = BTreeMap::new();
    for (_, code) in &texts {
        for line in code.lines() {
            let Some((_, declaration)) = line.split_once("const ") else { continue };
            if let Some((name, value)) = declaration.split_once(": &str = \"")
                && let Some((value, _)) = value.split_once('"')
            {
                constants.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }
    let mut reads = Reads::default();
    for (file, code) in &texts {
        for pattern in ["env::var(", "env::var_os(", "try_from_env("] {
            for (at, _) in code.match_indices(pattern) {
                let argument = call_argument(&code[at + pattern.len()..]).trim();
                let name = if let Some(literal) = argument.strip_prefix('"') {
                    literal.trim_end_matches('"').to_owned()
                } else if let Some(value) = constants.get(argument.rsplit("::").next().unwrap_or(argument)) {
                    value.clone()
                } else if DYNAMIC.iter().any(|(path, expression, _)| *path == file.as_str() && *expression == argument)
                {
                    continue;
                } else {
                    return Err(format!("{file}: `{pattern}{argument})` reads a variable this task cannot name"));
                };
                reads.in_code.entry(name).or_default().insert(file.clone());
            }
        }
        for (at, _) in code.match_indices("env = \"") {
            let rest = &code[at + "env = \"".len()..];
            if let Some((name, _)) = rest.split_once('"') {
                reads.clap_env.insert(name.to_owned());
            }
        }
    }
    Ok(reads)
}

/// A table cell: no line breaks, no column separators.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// docs/env.md, from the binaries' commands and the sources of `repo`.
pub fn render(repo: &Path, binaries: &[clap::Command]) -> Result<String, String> {
    let reads = scan(repo)?;
    let mut all_flags: Vec<(String, Vec<Flag>)> = Vec::new();
    for command in binaries {
        let mut found = Vec::new();
        flags(command, command.get_name(), &mut found);
        all_flags.push((command.get_name().to_owned(), found));
    }
    // Variable → the flags that read it.
    let mut by_env: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for flag in all_flags.iter().flat_map(|(_, flags)| flags) {
        if let Some(env) = &flag.env {
            by_env.entry(env.clone()).or_default().push((
                format!("{} {}", flag.command, flag.flag),
                flag.default.clone(),
                flag.meaning.clone(),
            ));
        }
    }
    let walked: BTreeSet<&String> = by_env.keys().collect();
    let declared: BTreeSet<&String> = reads.clap_env.iter().collect();
    if walked != declared {
        return Err(format!(
            "the sources declare clap variables {declared:?} but the commands walked have {walked:?}: \
             is a binary missing from xtask's list?"
        ));
    }
    let described: BTreeMap<&str, &Described> = READ_IN_CODE.iter().map(|entry| (entry.name, entry)).collect();
    let undescribed: Vec<&String> =
        reads.in_code.keys().filter(|name| !described.contains_key(name.as_str())).collect();
    let unread: Vec<&&str> = described.keys().filter(|name| !reads.in_code.contains_key(**name)).collect();
    if !undescribed.is_empty() || !unread.is_empty() {
        return Err(format!(
            "xtask/src/env_doc.rs READ_IN_CODE is out of step with the sources: read but not described \
             {undescribed:?}, described but no longer read {unread:?}"
        ));
    }

    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "# Environment variables and flags\n\n\
         Generated from the code by `cargo run -p xtask -- env-doc` (`make env-doc`); do not edit by hand. \
         A test (`cargo test -p xtask`) fails when this file differs from what the code reads: a flag or \
         a variable added, removed or changed.\n\n\
         A flag wins over its variable. A `BKG_*` variable set to the empty string counts as unset \
         (schema/src/environment.rs): `BKG_REMOTE= bkg ls` talks to the local agent. [cli.md](cli.md) explains the commands, [operations.md](operations.md) running \
         the agent.\n\n\
         ## Environment variables\n\n\
         | variable | flag | default | meaning | read in |\n|---|---|---|---|---|"
    );
    let names: BTreeSet<&String> = by_env.keys().chain(reads.in_code.keys()).collect();
    for name in names {
        let clap_rows = by_env.get(name).map(Vec::as_slice).unwrap_or_default();
        let flag_list: Vec<&str> = clap_rows.iter().map(|(flag, _, _)| flag.as_str()).collect();
        let (default, meaning) = match (clap_rows.first(), described.get(name.as_str())) {
            (Some((_, default, meaning)), Some(entry)) => (default.clone(), format!("{meaning}; {}", entry.meaning)),
            (Some((_, default, meaning)), None) => (default.clone(), meaning.clone()),
            (None, Some(entry)) => (entry.default.to_owned(), entry.meaning.to_owned()),
            (None, None) => continue,
        };
        let files: Vec<String> =
            reads.in_code.get(name).into_iter().flatten().map(|file| format!("`{file}`")).collect();
        let read_in = if files.is_empty() { "clap".to_owned() } else { files.join(", ") };
        let _ = writeln!(
            doc,
            "| `{name}` | {} | {} | {} | {read_in} |",
            cell(&flag_list.join(", ")),
            cell(&default),
            cell(&meaning)
        );
    }
    let _ = writeln!(
        doc,
        "\nRead by libraries bkg is built with, not by its own code:\n\n| variables | library | for |\n|---|---|---|"
    );
    for (names, library, what) in READ_BY_LIBRARIES {
        let _ = writeln!(doc, "| {names} | `{library}` | {what} |");
    }
    let _ = writeln!(doc, "\nRead under a name only known at run time:\n");
    for (file, _, why) in DYNAMIC {
        let _ = writeln!(doc, "- {why} (`{file}`).");
    }
    for (binary, flags) in &all_flags {
        let _ = writeln!(
            doc,
            "\n## Flags of `{binary}`\n\n| command | flag | variable | default | meaning |\n|---|---|---|---|---|"
        );
        for flag in flags {
            let env = flag.env.as_ref().map(|env| format!("`{env}`")).unwrap_or_default();
            let _ = writeln!(
                doc,
                "| `{}` | {} | {env} | {} | {} |",
                flag.command,
                flag.flag,
                cell(&flag.default),
                cell(&flag.meaning)
            );
        }
    }
    Ok(doc)
}
