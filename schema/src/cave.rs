//! cave.yaml: a project's persistent sandboxes (docs/cave-yaml.md).
//!
//! `cave.schema.json` is the contract, checked by ajv in CI as well as here; the types below mirror
//! it, and [`CaveFile::check`] repeats every rule the types cannot carry, so a file that passes
//! one side passes the other (a test in bkg-cli holds the examples to that).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::sandbox::{is_dns_label, is_namespace_name};
use crate::units::{UnitError, parse_cpus, parse_duration_ms, parse_size};
use crate::{Language, LimitOverrides};

/// The JSON Schema of cave.yaml (draft 2020-12).
pub const SCHEMA: &str = include_str!("../cave.schema.json");

/// The file `bkg` and `bkgr` look for in the current folder.
pub const FILE_NAME: &str = "cave.yaml";

pub const DEFAULT_NAMESPACE: &str = "default";

/// What a namespace or sandbox name may be, for messages.
pub const NAME_RULE: &str =
    "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";
pub use crate::sandbox::NAMESPACE_RULE;
pub const SCRIPT_NAME_RULE: &str =
    "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters";
pub use crate::{ENV_KEY_RULE, is_env_key};
pub const VOLUME_RULE: &str = "HOST:GUEST[:ro|:rw], GUEST under /workspace";

/// A whole cave.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaveFile {
    /// The format version; only 1 exists.
    #[serde(deserialize_with = "version_one")]
    pub version: u32,
    #[serde(default = "default_namespace", deserialize_with = "string")]
    pub namespace: String,
    #[serde(deserialize_with = "mapping")]
    pub sandboxes: BTreeMap<String, SandboxSpec>,
}

/// One persistent sandbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    pub r#type: Language,
    #[serde(default, deserialize_with = "some_mapping")]
    pub limits: Option<CaveLimits>,
    /// Script name -> command line, run by `bkgr NAME SCRIPT`.
    #[serde(default, deserialize_with = "string_map")]
    pub scripts: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// `HOST:GUEST[:ro|:rw]`, see [`Volume::parse`].
    #[serde(default, deserialize_with = "string_list")]
    pub volumes: Vec<String>,
    /// The hosts its runs may reach (none without it).
    #[serde(default, deserialize_with = "some_mapping")]
    pub network: Option<CaveNetwork>,
    /// `[ADDRESS:]HOST_PORT:SANDBOX_PORT`, see [`crate::egress::PortMapping::parse`].
    #[serde(default, deserialize_with = "string_list")]
    pub ports: Vec<String>,
    /// What a detached run (`bkgr -d`) does when it fails.
    #[serde(default)]
    pub restart: crate::egress::RestartPolicy,
    /// The Python environment of its runs.
    #[serde(default, deserialize_with = "some_mapping")]
    pub python: Option<CavePython>,
    /// The Node.js environment of its runs.
    #[serde(default, deserialize_with = "some_mapping")]
    pub node: Option<CaveNode>,
    /// Names of secrets (`bkg secrets set`) given to its runs as environment variables.
    #[serde(default, deserialize_with = "string_list")]
    pub secrets: Vec<String>,
    /// Paths under /workspace kept as each run's files, with /workspace/out.
    #[serde(default, deserialize_with = "string_list")]
    pub keep: Vec<String>,
}

/// `node:` of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaveNode {
    /// A package.json, relative to the project directory; its package-lock.json is beside it.
    #[serde(default, deserialize_with = "some_string")]
    pub package: Option<String>,
}

/// `python:` of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CavePython {
    /// A requirements file, relative to the project directory.
    #[serde(default, deserialize_with = "some_string")]
    pub requirements: Option<String>,
}

/// `network:` of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaveNetwork {
    /// `HOST[:PORT]`, see [`crate::egress::NetRule::parse`].
    #[serde(default, deserialize_with = "string_list")]
    pub allow: Vec<String>,
}

/// Limits as written in the file; [`CaveLimits::to_overrides`] turns them into numbers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaveLimits {
    #[serde(default, deserialize_with = "present")]
    pub cpus: Option<CpuCount>,
    #[serde(default, deserialize_with = "some_string")]
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "some_string")]
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "some_string")]
    pub disk: Option<String>,
}

/// `cpus: 0.5` and `cpus: "0.5"` are both allowed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CpuCount {
    Number(f64),
    Text(String),
}

impl CpuCount {
    /// Thousandths of a CPU, as [`LimitOverrides::cpu_millis`] wants them.
    pub fn millis(&self) -> Result<u64, UnitError> {
        match self {
            // The schema's bounds; parse_cpus alone would round 0.0004 up to a valid 0.001.
            Self::Number(cpus) if *cpus > crate::units::MAX_CPUS => Err(UnitError::TooManyCpus(cpus.to_string())),
            Self::Number(cpus) if !(0.001..=crate::units::MAX_CPUS).contains(cpus) => {
                Err(UnitError::Cpus(cpus.to_string()))
            }
            Self::Number(cpus) => parse_cpus(&cpus.to_string()),
            Self::Text(text) => quantity(text, parse_cpus, UnitError::Cpus),
        }
    }
}

/// A limit as cave.yaml writes it, and what it parses to.
type WrittenLimit = (String, Result<u64, UnitError>);

impl CaveLimits {
    pub fn to_overrides(&self) -> Result<LimitOverrides, UnitError> {
        let [cpus, memory, timeout, disk] = self.parsed().map(|(_, value)| value.map(|(_, parsed)| parsed).transpose());
        Ok(LimitOverrides {
            cpu_millis: cpus?,
            memory_bytes: memory?,
            timeout_ms: timeout?,
            disk_bytes: disk?,
            pids: None,
        })
    }

    /// Each limit under its key, where it is set: as written (for messages) and parsed.
    fn parsed(&self) -> [(&'static str, Option<WrittenLimit>); 4] {
        let size = |text: &String| (text.clone(), quantity(text, parse_size, UnitError::Size));
        let cpus = |cpus: &CpuCount| {
            let written = match cpus {
                CpuCount::Number(number) => number.to_string(),
                CpuCount::Text(text) => text.clone(),
            };
            (written, cpus.millis())
        };
        [
            ("cpus", self.cpus.as_ref().map(cpus)),
            ("memory", self.memory.as_ref().map(size)),
            ("timeout", self.timeout.as_ref().map(|text| (text.clone(), duration(text)))),
            ("disk", self.disk.as_ref().map(size)),
        ]
    }
}

/// The unit parsers forgive surrounding spaces, signs and exponents, which the schema's patterns
/// refuse; refusing them here too keeps both verdicts the same.
fn quantity(
    text: &str,
    parse: fn(&str) -> Result<u64, UnitError>,
    refuse: fn(String) -> UnitError,
) -> Result<u64, UnitError> {
    let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, rest) = text.split_at(number_end);
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    if number.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(refuse(text.to_owned()));
    }
    parse(text)
}

/// A duration as the schema's pattern has it: one number with a unit, or several whole ones with
/// no blank inside a part and at most one between parts (`1m30s`, `1h 15m`).
fn duration(text: &str) -> Result<u64, UnitError> {
    if text == "none" {
        return Ok(crate::NO_TIMEOUT_MS);
    }
    match quantity(text, parse_duration_ms, UnitError::Duration) {
        Err(UnitError::Duration(_)) => {}
        other => return other,
    }
    let refuse = || UnitError::Duration(text.to_owned());
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        if parts > 0 {
            rest = rest.strip_prefix(' ').unwrap_or(rest);
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let letters = rest[digits..].find(|c: char| !c.is_ascii_alphabetic()).map_or(rest.len(), |end| digits + end);
        if digits == 0 || !matches!(&rest[digits..letters], "ms" | "s" | "sec" | "m" | "min" | "h" | "d") {
            return Err(refuse());
        }
        rest = &rest[letters..];
        parts += 1;
    }
    if parts < 2 {
        return Err(refuse());
    }
    parse_duration_ms(text)
}

/// A host folder mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Relative to the folder that holds cave.yaml, or absolute.
    pub host: PathBuf,
    /// An absolute path strictly under /workspace.
    pub guest: String,
    /// True unless the volume says `:rw`: untrusted code gets write access only when asked.
    pub read_only: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("`{0}` is not {VOLUME_RULE}")]
    Shape(String),
    #[error("the host path of a volume must not be empty")]
    Host(String),
    #[error("the guest path `{0}` must be under /workspace, without `.` or `..` parts or `//`")]
    Guest(String),
    #[error("`{0}` is not a volume mode: use ro or rw")]
    Mode(String),
}

impl Volume {
    /// Parses `HOST:GUEST[:ro|:rw]`.
    pub fn parse(text: &str) -> Result<Self, VolumeError> {
        let mut parts = text.split(':');
        let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
            return Err(VolumeError::Shape(text.to_owned()));
        };
        let mode = parts.next();
        if parts.next().is_some() {
            return Err(VolumeError::Shape(text.to_owned()));
        }
        // Whether the host path stays inside the project is bkgr's check when it runs the
        // sandbox (`--allow-outside` lifts it): the file itself may name any folder.
        if host.is_empty() {
            return Err(VolumeError::Host(host.to_owned()));
        }
        let guest_ok = guest
            .strip_prefix("/workspace/")
            .is_some_and(|rest| rest.split('/').all(|segment| !matches!(segment, "" | "." | "..")));
        if !guest_ok {
            return Err(VolumeError::Guest(guest.to_owned()));
        }
        let read_only = match mode {
            None | Some("ro") => true,
            Some("rw") => false,
            Some(other) => return Err(VolumeError::Mode(other.to_owned())),
        };
        Ok(Self { host: PathBuf::from(host), guest: guest.to_owned(), read_only })
    }
}

pub fn is_script_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A command needs something besides blanks.
pub fn is_command(command: &str) -> bool {
    command.chars().any(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// `text` as a YAML scalar that reads back as the same string: plain where YAML reads it so
/// (`python main.py`), double-quoted otherwise (`"true"`, `"a: b"`, `" x"`). A JSON string is a
/// valid YAML double-quoted scalar. For tools that edit cave.yaml as text.
pub fn yaml_scalar(text: &str) -> String {
    let plain_reads_back = !text.contains(['\n', '\r'])
        && yaml_serde::from_str::<yaml_serde::Value>(text).is_ok_and(|value| value.as_str() == Some(text));
    if plain_reads_back { text.to_owned() } else { serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}")) }
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// `version: 1` and `version: 1.0` are the same number to the schema, so they are here too.
fn version_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if number.as_u64() == Some(1) || number.as_f64() == Some(1.0) {
        Ok(1)
    } else {
        Err(de::Error::custom(format!("version {number} is not supported: use 1")))
    }
}

/// A key written with no value (`cpus:`) is null, which the schema refuses; plain `Option`
/// would take it as absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A string that was a string in the file. yaml_serde reads `true` or `512` into a `String` when
/// asked for one, where the schema sees a boolean or a number; asking for "anything" and
/// accepting only strings gives the schema's verdict.
struct Strict(String);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl Visitor<'_> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Strict, E> {
        Ok(Strict(text.to_owned()))
    }
}

fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Strict::deserialize(deserializer).map(|text| text.0)
}

fn some_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    string(deserializer).map(Some)
}

fn string_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map: BTreeMap<String, Strict> = mapping(deserializer)?;
    Ok(map.into_iter().map(|(key, value)| (key, value.0)).collect())
}

fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let list: Vec<Strict> = deserializer.deserialize_any(Only(PhantomData))?;
    Ok(list.into_iter().map(|text| text.0).collect())
}

/// A mapping that was a mapping in the file: yaml_serde reads a bare `limits:` (null) as an
/// empty one, where the schema sees null.
fn mapping<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_any(Only(PhantomData))
}

fn some_mapping<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    mapping(deserializer).map(Some)
}

/// Deserializes `T` from a mapping or a sequence only, never from a scalar or null.
struct Only<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::deserialize(de::value::SeqAccessDeserializer::new(seq))
    }
}

/// One problem in a cave.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaveError {
    /// 1-based line of the offending key or value, when the file has one.
    pub line: Option<usize>,
    /// JSON pointer of the offending value (`/sandboxes/api/limits/memory`); empty for the file.
    pub pointer: String,
    pub message: String,
}

impl CaveError {
    fn new(pointer: String, message: String) -> Self {
        Self { line: None, pointer, message }
    }

    /// `cave.yaml:7: /sandboxes/api/limits/memory: "lots" is not a valid size (...)`.
    pub fn render(&self, file: &str) -> String {
        let mut out = file.to_owned();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        if !self.pointer.is_empty() {
            out.push_str(&format!(": {}", self.pointer));
        }
        out.push_str(&format!(": {}", self.message));
        out
    }
}

/// Every problem found in one file, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveErrors {
    /// The file as the user named it.
    pub file: String,
    pub errors: Vec<CaveError>,
}

impl fmt::Display for CaveErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&error.render(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for CaveErrors {}

impl CaveErrors {
    /// The problems that lie in sandbox `name`.
    pub fn of_sandbox(&self, name: &str) -> CaveErrors {
        let errors = self.errors.iter().filter(|error| sandbox_of(&error.pointer).as_deref() == Some(name)).cloned();
        CaveErrors { file: self.file.clone(), errors: errors.collect() }
    }
}

/// Reads and checks a cave.yaml.
pub fn load(path: &Path) -> Result<CaveFile, CaveErrors> {
    let (text, file) = text_and_name(path)?;
    parse(&text, &file)
}

/// The text of the cave.yaml at `path` and the name its problems give it.
fn text_and_name(path: &Path) -> Result<(String, String), CaveErrors> {
    let file = path.display().to_string();
    match read_text(path) {
        Ok(text) => Ok((text, file)),
        Err(error) => {
            Err(CaveErrors { file, errors: vec![CaveError::new(String::new(), format!("cannot be read: {error}"))] })
        }
    }
}

/// The most a cave.yaml may hold: a project's sandboxes, each at most a definition the agent
/// takes (`MAX_DEFINITION_BODY_BYTES`), with room for comments.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The text of the cave.yaml at `path`. A pipe, a device or a socket is refused unread (a FIFO
/// would wait for a writer, `/dev/zero` never end: found by a new-user trial, with a cave.yaml
/// linked to them, as a repository may ship it), and so is a file over `MAX_FILE_BYTES`.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let too_big = |bytes: u64| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it holds {}, over the {} a cave.yaml may",
                crate::units::format_size(bytes),
                crate::units::format_size(MAX_FILE_BYTES)
            ),
        )
    };
    let meta = std::fs::metadata(path).map_err(|error| match std::fs::read_link(path) {
        Ok(target) if error.kind() == std::io::ErrorKind::NotFound => std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("it is a link to no file (it links to {})", target.display()),
        ),
        _ => error,
    })?;
    // A directory is left to the read below, whose error the callers explain.
    if !meta.is_file() && !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file (a pipe, a device or a socket)",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    // Where, as every other problem of the file is said (found by a new-user trial: "stream did
    // not contain valid UTF-8" sent the user through the whole file).
    String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|byte| **byte == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|byte| **byte != b'\n').count() + 1;
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line {line}, byte {column}: not UTF-8 text (save the file as UTF-8)"),
        )
    })
}

/// Checks the text of a cave.yaml against the schema and the rules of the types; `file` names it
/// in errors. Every problem is reported, each with its line where the text has one.
pub fn parse(text: &str, file: &str) -> Result<CaveFile, CaveErrors> {
    let fail = |errors| CaveErrors { file: file.to_owned(), errors };
    let text = without_bom(text);
    let value = to_json(text).map_err(|error| fail(vec![error]))?;
    if value.is_null() {
        let empty = "the file is empty: it needs at least `version: 1` and `sandboxes: {}`";
        return Err(fail(vec![CaveError::new(String::new(), empty.to_owned())]));
    }
    let mut errors = schema_errors(&value);
    if !errors.is_empty() {
        let accepted = rules_of_the_sandboxes_the_schema_accepts(value, &errors);
        errors.extend(accepted);
    } else {
        match serde_json::from_value::<CaveFile>(value) {
            Ok(cave) => {
                errors = cave.check();
                if errors.is_empty() {
                    return Ok(cave);
                }
            }
            // Only reachable if the types and the schema disagree, which the examples test guards.
            Err(error) => {
                errors.push(CaveError::new(String::new(), format!("accepted by the schema but not by bkg: {error}")))
            }
        }
    }
    for error in &mut errors {
        error.line = line_of(text, &error.pointer);
    }
    errors.sort_by(|a, b| (a.line, &a.pointer).cmp(&(b.line, &b.pointer)));
    errors.dedup();
    Err(fail(errors))
}

/// A cave.yaml read as far as it is valid: when every problem lies inside a sandbox, the file
/// without those sandboxes, so that work on the others goes on.
#[derive(Debug, Clone)]
pub struct InPart {
    pub cave: CaveFile,
    /// The sandboxes left out, each for a problem of its own.
    pub left_out: BTreeSet<String>,
    /// Every problem of the file, when one was left out.
    pub problems: Option<CaveErrors>,
}

impl InPart {
    /// Whether the file names sandbox `name`, valid or not.
    pub fn declares(&self, name: &str) -> bool {
        self.cave.sandboxes.contains_key(name) || self.left_out.contains(name)
    }
}

/// Reads and checks a cave.yaml as `parse_in_part` does.
pub fn load_in_part(path: &Path) -> Result<InPart, CaveErrors> {
    let (text, file) = text_and_name(path)?;
    parse_in_part(&text, &file)
}

/// `parse`, but a file whose problems all lie inside some sandboxes is taken without them; one
/// with a problem elsewhere (its form, `version`, `namespace`) is refused as `parse` refuses it.
pub fn parse_in_part(text: &str, file: &str) -> Result<InPart, CaveErrors> {
    let problems = match parse(text, file) {
        Ok(cave) => return Ok(InPart { cave, left_out: BTreeSet::new(), problems: None }),
        Err(problems) => problems,
    };
    let faulted: Option<BTreeSet<String>> = problems.errors.iter().map(|error| sandbox_of(&error.pointer)).collect();
    let Some(left_out) = faulted else { return Err(problems) };
    let Ok(mut value) = to_json(without_bom(text)) else { return Err(problems) };
    if let Some(sandboxes) = value.get_mut("sandboxes").and_then(Value::as_object_mut) {
        sandboxes.retain(|name, _| !left_out.contains(name));
    }
    if !schema_errors(&value).is_empty() {
        return Err(problems);
    }
    match serde_json::from_value::<CaveFile>(value) {
        Ok(cave) if cave.check().is_empty() => Ok(InPart { cave, left_out, problems: Some(problems) }),
        _ => Err(problems),
    }
}

/// `text` without the byte-order mark editors on some systems start UTF-8 files with: YAML
/// allows one there, but the parser takes one before a key for the start of a second document.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The name of the sandbox a problem's pointer lies in (`/sandboxes/NAME/...`), if it lies in one.
fn sandbox_of(pointer: &str) -> Option<String> {
    pointer.strip_prefix("/sandboxes/")?.split('/').next().map(unescaped)
}

/// The type rules' problems of what the schema accepts, so that one pass of `bkg validate` shows
/// every problem, not the schema's first and the rules' after a fix: the faulted keys of a
/// sandbox are left out, and a sandbox still faulted without them is not checked. A fault outside
/// the sandboxes (`version`, `namespace`, an unknown top-level key) is the schema's to say: the
/// sandboxes are then checked in an otherwise minimal document.
fn rules_of_the_sandboxes_the_schema_accepts(mut value: Value, schema_faults: &[CaveError]) -> Vec<CaveError> {
    let untyped: Vec<String> = value
        .get("sandboxes")
        .and_then(Value::as_object)
        .map(|sandboxes| {
            let untyped = sandboxes.iter().filter(|(_, sandbox)| sandbox.is_object() && sandbox.get("type").is_none());
            untyped.map(|(name, _)| name.clone()).collect()
        })
        .unwrap_or_default();
    // The faulted items of arrays (a volume, a port), each array's from its last back, so that
    // the rules still compare the others (two overlapping volumes beside an invalid one; found by
    // a new-user trial); the rules' pointers are put back onto the file's indices below.
    let mut removed_items: Vec<(String, usize)> =
        schema_faults.iter().filter_map(|fault| array_item(&value, &fault.pointer)).collect();
    removed_items.sort_by(|a, b| b.cmp(a));
    removed_items.dedup();
    for (array, index) in &removed_items {
        if let Some(items) = value.pointer_mut(array).and_then(Value::as_array_mut)
            && *index < items.len()
        {
            items.remove(*index);
        }
    }
    for fault in schema_faults {
        remove_key_at(&mut value, &fault.pointer);
    }
    if schema_faults.iter().any(|fault| !fault.pointer.starts_with("/sandboxes/")) {
        let Some(sandboxes) = value.get("sandboxes").filter(|sandboxes| sandboxes.is_object()).cloned() else {
            return Vec::new();
        };
        value = serde_json::json!({ "version": 1, "sandboxes": sandboxes });
    }
    // A sandbox written without a `type` (the schema has said so) is checked as one of the type
    // its keys suggest, so that its other problems are said in the same pass; one whose type is
    // wrong is not: its rules would speak of a guess against what it says.
    if let Some(sandboxes) = value.get_mut("sandboxes").and_then(Value::as_object_mut) {
        for name in &untyped {
            if let Some(sandbox) = sandboxes.get_mut(name).and_then(Value::as_object_mut) {
                let guessed = if sandbox.contains_key("node") { "node" } else { "python" };
                sandbox.insert("type".to_owned(), Value::String(guessed.to_owned()));
            }
        }
    }
    let mut still_faulted = Vec::new();
    for fault in schema_errors(&value) {
        match sandbox_of(&fault.pointer) {
            Some(sandbox) => still_faulted.push(sandbox),
            None => return Vec::new(),
        }
    }
    if let Some(sandboxes) = value.get_mut("sandboxes").and_then(Value::as_object_mut) {
        sandboxes.retain(|name, _| !still_faulted.contains(name));
    }
    let mut errors = serde_json::from_value::<CaveFile>(value).map(|cave| cave.check()).unwrap_or_default();
    for error in &mut errors {
        error.pointer = with_the_files_index(&error.pointer, &removed_items);
    }
    errors
}

/// The array (`/sandboxes/NAME/volumes`) and index of the item `pointer` names inside a sandbox,
/// if it names one of an array's items.
fn array_item(value: &Value, pointer: &str) -> Option<(String, usize)> {
    let (array, index) = pointer.rsplit_once('/')?;
    let index: usize = index.parse().ok()?;
    (array.starts_with("/sandboxes/") && array.matches('/').count() >= 3 && value.pointer(array)?.is_array())
        .then(|| (array.to_owned(), index))
}

/// `pointer` of an item of an array some of whose items were `removed` (array, index in the
/// file), with the index the item has in the file.
fn with_the_files_index(pointer: &str, removed: &[(String, usize)]) -> String {
    let Some((array, Ok(index))) = pointer.rsplit_once('/').map(|(array, index)| (array, index.parse::<usize>()))
    else {
        return pointer.to_owned();
    };
    let mut gone: Vec<usize> = removed.iter().filter(|(at, _)| at == array).map(|(_, index)| *index).collect();
    gone.sort_unstable();
    let mut original = index;
    for skipped in gone {
        if skipped <= original {
            original += 1;
        }
    }
    format!("{array}/{original}")
}

/// Removes the key `pointer` names inside a sandbox (`/sandboxes/NAME/KEY...`), if it is an
/// object's key; a sandbox itself or an array's item stays.
fn remove_key_at(value: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else { return };
    if parent.matches('/').count() < 2 {
        return;
    }
    if let Some(object) = value.pointer_mut(parent).and_then(Value::as_object_mut) {
        object.remove(&unescaped(key));
    }
}

/// Reads YAML into the JSON data model the schema speaks. Duplicate keys are refused here, since
/// JSON objects would silently keep the last.
pub fn to_json(text: &str) -> Result<Value, CaveError> {
    if let Some(duplicate) = find_duplicate(text) {
        return Err(duplicate);
    }
    let yaml: yaml_serde::Value = yaml_serde::from_str(text).map_err(|error| {
        let line = error.location().map(|location| location.line());
        // YAML indents with spaces only; the parser's own words do not say so (found by a
        // new-user trial: "found character that cannot start any token").
        let tab = line
            .and_then(|line| text.lines().nth(line.saturating_sub(1)))
            .is_some_and(|text| text.trim_start_matches(' ').starts_with('\t'));
        let hint = if tab { ": YAML indents with spaces, not tabs" } else { "" };
        CaveError { line, pointer: String::new(), message: format!("invalid YAML: {error}{hint}") }
    })?;
    serde_json::to_value(&yaml)
        .map_err(|error| CaveError::new(String::new(), format!("cannot be read as JSON data: {error}")))
}

struct CompiledSchema {
    document: Value,
    validator: jsonschema::Validator,
}

static COMPILED: LazyLock<Result<CompiledSchema, String>> = LazyLock::new(|| {
    let document: Value = serde_json::from_str(SCHEMA).map_err(|error| error.to_string())?;
    let validator = jsonschema::draft202012::new(&document).map_err(|error| error.to_string())?;
    Ok(CompiledSchema { document, validator })
});

/// What the JSON Schema alone says about a document (without lines: they need the text).
pub fn schema_errors(value: &Value) -> Vec<CaveError> {
    match &*COMPILED {
        Ok(schema) => {
            schema.validator.iter_errors(value).flat_map(|error| describe(&schema.document, &error)).collect()
        }
        Err(error) => {
            vec![CaveError::new(String::new(), format!("bkg's own cave.schema.json does not compile: {error}"))]
        }
    }
}

/// The rules of the schema's `$defs`, named for messages: (def, what it is, how to write it).
const RULES: [(&str, &str, &str); 8] = [
    ("dnsLabel", "name", NAME_RULE),
    ("size", "size", "a number with an optional unit, like 512MiB, 1GiB or 500M"),
    ("duration", "duration", "a number with an optional unit, like 500ms, 60s, 1m30s or 1h"),
    ("cpus", "CPU count", "a number from 0.01 to 4096, like 0.5, 1 or 2"),
    ("scriptName", "script name", SCRIPT_NAME_RULE),
    ("command", "command", "it must not be empty"),
    ("envKey", "variable name", ENV_KEY_RULE),
    ("volume", "volume", VOLUME_RULE),
];

/// What the flags' parser says of a duration written with a unit in capitals or as `M`.
fn duration_fix(text: &str) -> Option<String> {
    match crate::units::parse_duration_ms(text) {
        Err(error @ (crate::units::UnitError::UppercaseUnit { .. } | crate::units::UnitError::AmbiguousMonth(_))) => {
            Some(error.to_string())
        }
        _ => None,
    }
}

fn rule_of(schema_path: &str) -> Option<(&'static str, &'static str)> {
    let def = schema_path.strip_prefix("/$defs/")?.split('/').next()?;
    RULES.iter().find(|(name, _, _)| *name == def).map(|(_, what, how)| (*what, *how))
}

/// How much of a wrong value an error quotes: a file that is one long string (`bkg validate
/// /etc/passwd`) must not come back whole on one line.
const QUOTED_CHARS: usize = 60;

fn describe(schema: &Value, error: &jsonschema::ValidationError<'_>) -> Vec<CaveError> {
    let mut described = describe_in_full(schema, error);
    let full = error.instance().to_string();
    if full.chars().count() > QUOTED_CHARS {
        let cut: String = full.chars().take(QUOTED_CHARS).collect();
        for error in &mut described {
            error.message = error.message.replacen(&full, &format!("{cut}…"), 1);
        }
    }
    described
}

fn describe_in_full(schema: &Value, error: &jsonschema::ValidationError<'_>) -> Vec<CaveError> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let at = error.instance_path().as_str();
    let schema_path = error.schema_path().as_str();
    let instance = error.instance();
    let message = match error.kind() {
        Kind::AdditionalProperties { unexpected } => {
            let known = known_keys(schema, schema_path);
            return unexpected
                .iter()
                .map(|key| {
                    CaveError::new(
                        child(at, key),
                        format!("additional property {key:?} is not allowed (known keys: {known})"),
                    )
                })
                .collect();
        }
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            return vec![CaveError::new(child(at, name), format!("required key {property} is missing"))];
        }
        Kind::PropertyNames { error: inner } => {
            let name = inner.instance();
            let (what, how) = match rule_of(inner.schema_path().as_str()) {
                Some(("name", how)) => ("sandbox name", how),
                Some(rule) => rule,
                None => ("key", ""),
            };
            return vec![CaveError::new(
                child(at, name.as_str().unwrap_or_default()),
                format!("{name} is not a valid {what} ({})", rule_text(how, inner)),
            )];
        }
        Kind::Pattern { .. } => match rule_of(schema_path) {
            // `0s`, `0MiB`: the form is right; the value is below the limit's least.
            Some(("duration" | "size", _)) if let Some(least) = zero_limit(at, instance) => least,
            // `10S`, `1M`: the fix the flags' parser gives (found by a trial: cave.yaml said only
            // "not a valid duration" where `--timeout 10S` says to write `10s`).
            Some(("duration", _)) if let Some(fix) = instance.as_str().and_then(duration_fix) => fix,
            // A namespace is a name with a shorter bound (its bkg_db role must fit PostgreSQL's).
            Some(("name", _)) if at == "/namespace" => {
                format!("{instance} is not a valid namespace ({NAMESPACE_RULE})")
            }
            Some((what, how)) => {
                format!("{instance} is not a valid {what} ({})", rule_text(how, error))
            }
            // The def's description says the rule in words; its pattern is noise to a person.
            None => match description_of(schema, schema_path) {
                Some(description) => format!("{instance} is not valid here: {}", lowercase_first(description)),
                None => error.to_string(),
            },
        },
        Kind::Enum { options } => format!("{instance} is not one of {options}"),
        Kind::Minimum { limit } => format!("{instance} is too small: the least is {limit}"),
        Kind::Maximum { limit } => format!("{instance} is too large: the most is {limit}"),
        // A key the sandbox's type does not take (`python:` for node): the def says why.
        Kind::Not { .. } => match description_of(schema, schema_path) {
            Some(description) => description.trim_end_matches('.').to_owned(),
            None => error.to_string(),
        },
        // `version: "1"`: the right value, quoted into a string.
        Kind::Constant { expected_value } if instance.as_str() == Some(expected_value.to_string().as_str()) => {
            format!("{instance} is a string: write {expected_value}, without quotes")
        }
        Kind::Constant { expected_value } => {
            format!("{instance} is not supported: it must be {expected_value}")
        }
        // Not a cave.yaml at all (`bkg validate /etc/passwd`, a list, a bare word).
        Kind::Type { .. } if at.is_empty() && !instance.is_null() => {
            let read_as = match instance.as_ref() {
                Value::String(_) => "one string",
                Value::Array(_) => "a list",
                Value::Number(_) => "a number",
                _ => "a true or false",
            };
            format!(
                "{instance} is not a cave.yaml: the file reads as {read_as}, where a mapping of `version:`, `namespace:` and `sandboxes:` belongs"
            )
        }
        // `sandboxes:` with nothing after it: YAML reads null, not an empty mapping (or list).
        Kind::Type { kind: jsonschema::error::TypeKind::Single(jsonschema::JsonType::Object) }
            if instance.is_null() =>
        {
            let key = at.rsplit('/').next().unwrap_or_default();
            format!("`{key}:` is empty (null): give its entries, or write `{key}: {{}}` for none")
        }
        Kind::Type { kind: jsonschema::error::TypeKind::Single(jsonschema::JsonType::Array) } if instance.is_null() => {
            let key = at.rsplit('/').next().unwrap_or_default();
            format!("`{key}:` is empty (null): give its entries, or write `{key}: []` for none")
        }
        // `timeout: 60`: YAML makes it a number, where a size or a duration is a string.
        Kind::Type { .. } if instance.is_number() && matches!(rule_of(schema_path), Some(("duration" | "size", _))) => {
            // As the string of the same number would read: seconds, or bytes; unless that is
            // below the limit's least, where an example of it would be refused in turn.
            let is_duration = matches!(rule_of(schema_path), Some(("duration", _)));
            let as_written =
                instance.as_u64().map(|number| if is_duration { number.saturating_mul(1000) } else { number });
            let least = at.rsplit_once('/').and_then(|(_, key)| least_of(key));
            let (what, example) = match (is_duration, as_written) {
                (true, _) => ("duration", format!("\"{instance}s\"")),
                (false, Some(bytes)) => ("size", format!("\"{}\"", crate::units::format_size(bytes))),
                (false, None) => ("size", "\"512MiB\"".to_owned()),
            };
            match (as_written, least) {
                // Said as a number first (found by a new-user trial: "512 is too small" read as
                // if a larger bare number would do).
                (Some(value), Some((_, floor, shown))) if value < floor => format!(
                    "{instance} is a number: write the {what} with its unit, as a string of at least \"{}\"",
                    shown(floor)
                ),
                _ => format!("{instance} is a number: write the {what} with its unit, as a string like {example}"),
            }
        }
        // `PORT: 8080`, `DEBUG: true` under `env:`: YAML reads a number or a boolean, where a
        // variable's value is a string.
        Kind::Type { kind: jsonschema::error::TypeKind::Single(jsonschema::JsonType::String) }
            if instance.is_number() || instance.is_boolean() =>
        {
            format!("{instance} is not a string: quote it (\"{instance}\") to have it as text")
        }
        _ => match rule_of(schema_path) {
            Some((what, how)) => format!("{error} (a {what}: {how})"),
            None => error.to_string(),
        },
    };
    vec![CaveError::new(at.to_owned(), message)]
}

/// The least limit `key` (`memory`) may be, as `Limits::LEAST` names it.
fn least_of(key: &str) -> Option<crate::NamedLimit> {
    crate::Limits::LEAST.named().into_iter().find(|(name, _, _)| *name == key)
}

/// For a limit at `at` (`/sandboxes/NAME/limits/KEY`) written as zero in a valid form (`0s`,
/// `0 MiB`): that it is too small, with the limit's least.
fn zero_limit(at: &str, instance: &Value) -> Option<String> {
    let (_, key) = at.rsplit_once('/')?;
    let text = instance.as_str()?;
    let parse = match key {
        "timeout" => crate::units::parse_duration_ms,
        "memory" | "disk" => crate::units::parse_size,
        _ => return None,
    };
    let Err(UnitError::Zero { .. }) = parse(text) else { return None };
    let (_, least, shown) = least_of(key)?;
    Some(format!("`{text}` is too small: the least is {}", shown(least)))
}

/// The broken rule in words (`how`), or as the schema states it where it has none: a pattern
/// is noise beside words a person reads.
fn rule_text(how: &str, error: &jsonschema::ValidationError<'_>) -> String {
    match error.kind() {
        _ if !how.is_empty() => how.to_owned(),
        jsonschema::error::ValidationErrorKind::Pattern { pattern } => format!("pattern \"{pattern}\""),
        _ => error.to_string(),
    }
}

/// `A path …` as `a path …`, to follow a colon.
fn lowercase_first(text: &str) -> String {
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    // A word written in capitals (`HOST[:PORT]`, `IP`) stays as it is.
    if text.chars().nth(1).is_some_and(char::is_uppercase) {
        return text.to_owned();
    }
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// The description of the innermost `$defs` entry of `schema_path`.
fn description_of<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a str> {
    let (_, def) = schema_path.rsplit_once("/$defs/")?;
    let def = def.split('/').next()?;
    schema.pointer(&format!("/$defs/{def}/description"))?.as_str()
}

/// The keys an object may have, from the `properties` beside the `additionalProperties: false`
/// that refused one.
fn known_keys(schema: &Value, schema_path: &str) -> String {
    let parent = schema_path.strip_suffix("/additionalProperties").unwrap_or(schema_path);
    schema
        .pointer(&format!("{parent}/properties"))
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn child(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// A JSON pointer's segment as the key it names (`child` escapes it).
fn unescaped(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn pointer_to(segments: &[&str]) -> String {
    segments.iter().fold(String::new(), |pointer, segment| child(&pointer, segment))
}

impl CaveFile {
    /// The rules of the schema that serde's types do not carry: names, limits, commands, volumes.
    pub fn check(&self) -> Vec<CaveError> {
        let mut errors = Vec::new();
        let mut fail = |segments: &[&str], message: String| {
            errors.push(CaveError::new(pointer_to(segments), message));
        };
        if !is_namespace_name(&self.namespace) {
            fail(&["namespace"], format!("`{}` is not a valid namespace ({NAMESPACE_RULE})", self.namespace));
        }
        // Each sandbox's host ports, to find one two sandboxes forward.
        let mut forwarded: Vec<(String, crate::egress::PortMapping, String)> = Vec::new();
        for (name, sandbox) in &self.sandboxes {
            if !is_dns_label(name) {
                fail(&["sandboxes", name], format!("`{name}` is not a valid sandbox name ({NAME_RULE})"));
            }
            for (key, parsed) in sandbox.limits.iter().flat_map(CaveLimits::parsed) {
                let Some((written, parsed)) = parsed else { continue };
                match (parsed, least_of(key)) {
                    // Too small to be a size at all (`0.1` bytes): the limit's own floor says more.
                    (Err(UnitError::Zero { text, .. }), Some((_, floor, shown))) => fail(
                        &["sandboxes", name, "limits", key],
                        format!("`{text}` is too small: the least is {}", shown(floor)),
                    ),
                    (Err(error), _) => fail(&["sandboxes", name, "limits", key], error.to_string()),
                    // As written: the value shown in units (`16.0MiB`) may round up to the least.
                    (Ok(value), Some((_, floor, shown))) if value < floor => fail(
                        &["sandboxes", name, "limits", key],
                        format!("`{written}` is too small: the least is {}", shown(floor)),
                    ),
                    _ => {}
                }
            }
            for (script, command) in &sandbox.scripts {
                if !is_script_name(script) {
                    fail(
                        &["sandboxes", name, "scripts", script],
                        format!("`{script}` is not a valid script name ({SCRIPT_NAME_RULE})"),
                    );
                }
                if !is_command(command) {
                    fail(&["sandboxes", name, "scripts", script], "the command is empty".to_owned());
                }
            }
            let given_network = sandbox.network.as_ref().is_some_and(|network| !network.allow.is_empty());
            let env_bytes = crate::env_bytes(&sandbox.env);
            if env_bytes > crate::MAX_ENV_BYTES {
                fail(
                    &["sandboxes", name, "env"],
                    format!(
                        "the variables take {}, over the {} a sandbox's may (names and values together): give large \
                         data as a file of the project (a volume, or bkg cp) and its path in a variable",
                        crate::units::format_size(env_bytes as u64),
                        crate::units::format_size(crate::MAX_ENV_BYTES as u64)
                    ),
                );
            }
            for key in sandbox.env.keys() {
                if !is_env_key(key) {
                    fail(
                        &["sandboxes", name, "env", key],
                        format!("`{key}` is not a valid variable name ({ENV_KEY_RULE})"),
                    );
                } else if let Some(why) = crate::egress::refused_with_network(key).filter(|_| given_network) {
                    fail(&["sandboxes", name, "env", key], why);
                }
            }
            // Each well-formed one with its index.
            let mut volumes = Vec::new();
            for (index, volume) in sandbox.volumes.iter().enumerate() {
                match Volume::parse(volume) {
                    Ok(parsed) => volumes.push((index, parsed)),
                    Err(error) => fail(&["sandboxes", name, "volumes", &index.to_string()], error.to_string()),
                }
            }
            // Their places are compared among the well-formed ones: an invalid volume must not hide
            // two that overlap (found by a new-user trial).
            let overlapping =
                crate::sandbox::overlapping_volumes(volumes.iter().map(|(_, volume)| volume.guest.as_str()))
                    .into_iter()
                    .map(|(earlier, later)| (volumes[earlier].0, volumes[later].0));
            for (earlier, later) in overlapping {
                fail(
                    &["sandboxes", name, "volumes", &later.to_string()],
                    format!(
                        "`{}` is at or inside `{}`: give each volume a place of its own",
                        sandbox.volumes[later], sandbox.volumes[earlier]
                    ),
                );
            }
            for (index, rule) in sandbox.network.iter().flat_map(|network| network.allow.iter()).enumerate() {
                let at = ["sandboxes", name, "network", "allow", &index.to_string()];
                // As `bkg exe --net none` is refused (found by a new-user trial: it was taken as a
                // host of that name).
                if rule.trim().eq_ignore_ascii_case("none") {
                    fail(
                        &at,
                        "`none` would be a host of that name: no network is the default, leave network out".into(),
                    );
                } else if let Err(error) = crate::egress::NetRule::parse(rule) {
                    fail(&at, error.to_string());
                }
            }
            for (index, port) in sandbox.ports.iter().enumerate() {
                if let Err(error) = crate::egress::PortMapping::parse(port) {
                    fail(&["sandboxes", name, "ports", &index.to_string()], error.to_string());
                }
            }
            // Among the valid ones: an invalid entry must not hide a port taken twice (found by
            // a new-user trial).
            let valid: Vec<String> =
                sandbox.ports.iter().filter(|port| crate::egress::PortMapping::parse(port).is_ok()).cloned().collect();
            if let Err(error @ crate::egress::EgressError::PortTwice { .. }) =
                crate::egress::PortMapping::parse_all(&valid)
            {
                fail(&["sandboxes", name, "ports"], error.to_string());
            }
            // Two sandboxes cannot both listen there: the second to start would fail at once,
            // and, started detached, only after `bkgr -d` had said it was running.
            for (index, text) in sandbox.ports.iter().enumerate() {
                let Ok(mapping) = crate::egress::PortMapping::parse(text) else { continue };
                let clash = forwarded.iter().find(|(other, seen, _)| {
                    other != name
                        && seen.host_port == mapping.host_port
                        && (seen.address == mapping.address
                            || seen.address.is_unspecified()
                            || mapping.address.is_unspecified())
                });
                if let Some((other, _, first)) = clash {
                    fail(
                        &["sandboxes", name, "ports", &index.to_string()],
                        format!(
                            "host port {} is forwarded by sandbox `{other}` too (`{first}`): give each sandbox a port of its own",
                            mapping.host_port
                        ),
                    );
                }
                forwarded.push((name.clone(), mapping, text.clone()));
            }
            // The agent refuses it too (bkg-agent/src/service/secrets.rs); said here, it is said
            // by `bkg validate` and before bkgr asks for anything.
            for (index, secret) in sandbox.secrets.iter().enumerate() {
                if sandbox.env.contains_key(secret) {
                    fail(
                        &["sandboxes", name, "secrets", &index.to_string()],
                        format!("`{secret}` is given both as a secret and as a plain variable (env:): give it one way"),
                    );
                } else if let Some(why) = crate::egress::refused_with_network(secret).filter(|_| given_network) {
                    fail(&["sandboxes", name, "secrets", &index.to_string()], why);
                }
            }
            // The schema's pythonOnly and nodeOnly.
            for (key, present, language) in [
                ("python", sandbox.python.is_some(), Language::Python),
                ("node", sandbox.node.is_some(), Language::Node),
            ] {
                if present && sandbox.r#type != language {
                    fail(&["sandboxes", name, key], format!("only sandboxes of type {key} take it"));
                }
            }
        }
        errors
    }
}

/// Brackets the pointer of a repeated key in the error [`NoDuplicates`] raises.
const DUPLICATE: &str = "bkg-cave-duplicate";

/// yaml_serde refuses a repeated key too, but at the line of its mapping and without a pointer;
/// this walk fails on the repeated key itself.
fn find_duplicate(text: &str) -> Option<CaveError> {
    let error =
        (NoDuplicates { pointer: String::new() }).deserialize(yaml_serde::Deserializer::from_str(text)).err()?;
    let message = error.to_string();
    let (_, rest) = message.split_once(DUPLICATE)?;
    let (pointer, _) = rest.split_once(DUPLICATE)?;
    let key = pointer.rsplit('/').next().unwrap_or_default();
    Some(CaveError {
        line: error.location().map(|location| location.line()),
        pointer: pointer.to_owned(),
        message: format!("duplicate key \"{}\": the first one would be lost", unescaped(key)),
    })
}

struct NoDuplicates {
    pointer: String,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("YAML")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key_seed(Unique { seen: &mut seen, pointer: &self.pointer })? {
            map.next_value_seed(NoDuplicates { pointer: child(&self.pointer, &key) })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while seq.next_element_seed(NoDuplicates { pointer: child(&self.pointer, &index.to_string()) })?.is_some() {
            index += 1;
        }
        Ok(())
    }

    // Scalars cannot hold a duplicate; anything else odd is left for the real parse to report.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A mapping key that must not have been seen before in its mapping.
struct Unique<'a> {
    seen: &'a mut std::collections::BTreeSet<String>,
    pointer: &'a str,
}

impl Unique<'_> {
    fn insert<E: de::Error>(self, key: String) -> Result<String, E> {
        if self.seen.insert(key.clone()) {
            Ok(key)
        } else {
            Err(E::custom(format!("{DUPLICATE}{}{DUPLICATE}", child(self.pointer, &key))))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        self.insert(key.to_owned())
    }

    fn visit_u64<E: de::Error>(self, key: u64) -> Result<String, E> {
        self.insert(key.to_string())
    }

    fn visit_i64<E: de::Error>(self, key: i64) -> Result<String, E> {
        self.insert(key.to_string())
    }

    fn visit_bool<E: de::Error>(self, key: bool) -> Result<String, E> {
        self.insert(key.to_string())
    }
}

/// Marks the error [`Seek`] raises on purpose, to tell it from the file's own problems.
const FOUND: &str = "bkg-cave-found";

/// The line of the key (or, in a list, the item) a JSON pointer names. yaml_serde keeps no
/// positions in its values, but an error raised while a node is deserialized carries that node's
/// position, so [`Seek`] walks the document and fails on purpose where the pointer leads.
fn line_of(text: &str, pointer: &str) -> Option<usize> {
    let segments: Vec<String> = pointer.split('/').skip(1).map(unescaped).collect();
    // A missing required key has no line: its nearest existing ancestor stands in.
    (1..=segments.len()).rev().find_map(|len| {
        match (Seek { path: &segments[..len] }).deserialize(yaml_serde::Deserializer::from_str(text)) {
            Err(error) if error.to_string().contains(FOUND) => error.location().map(|location| location.line()),
            _ => None,
        }
    })
}

/// Follows `path` through mappings and sequences; an empty path means "fail here".
struct Seek<'a> {
    path: &'a [String],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.path.is_empty() { deserializer.deserialize_any(Here) } else { deserializer.deserialize_any(self) }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Ok(());
        };
        while let Some(found) = map.next_key_seed(Key { name: first, last: rest.is_empty() })? {
            if found {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Ok(());
        };
        let Ok(index) = first.parse::<usize>() else {
            return Ok(());
        };
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek { path: rest }).map(|_| ())
    }
}

/// Fails on whatever node it is given: serde's default for every kind of node is an error that
/// quotes `expecting`.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FOUND)
    }
}

/// A mapping key compared with one pointer segment; the last segment fails on its key, so the
/// line is the key's.
struct Key<'a> {
    name: &'a str,
    last: bool,
}

impl Key<'_> {
    fn matches<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match (key == self.name, self.last) {
            (true, true) => Err(E::custom(FOUND)),
            (matched, _) => Ok(matched),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        self.matches(key)
    }

    // JSON has only string keys, so `1:` and `true:` became "1" and "true".
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.matches(&key.to_string())
    }

    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.matches(&key.to_string())
    }

    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.matches(&key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_is_refused_naming_where() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"version: 1\nsandboxes:\n  a:\n    type: python # caf\xe9\n").expect("write");
        let error = read_text(&path).expect_err("not UTF-8");
        assert_eq!(error.to_string(), "line 4, byte 23: not UTF-8 text (save the file as UTF-8)");
        std::fs::write(&path, "version: 1 # café\n").expect("write");
        assert_eq!(read_text(&path).expect("UTF-8"), "version: 1 # café\n");
    }

    const GOOD: &str = "\
# a comment
version: 1
namespace: demo
sandboxes:
  api:
    type: python
    limits: { cpus: 0.5, memory: 256MiB, timeout: 30s, disk: 1GiB }
    scripts:
      start: python main.py
    env: { MODE: dev }
    volumes:
      - ./src:/workspace/src:ro
      - data:/workspace/data:rw
  web:
    type: node
";

    fn errors_of(text: &str) -> Vec<CaveError> {
        match parse(text, "cave.yaml") {
            Ok(cave) => panic!("accepted: {cave:?}"),
            Err(errors) => errors.errors,
        }
    }

    /// Found by a new-user trial: one sandbox with a bad limit kept `bkg cp`, `bkg exec` and
    /// `bkg rm` from every other sandbox of the project.
    #[test]
    fn a_file_whose_problems_lie_in_some_sandboxes_is_read_without_them() {
        let text = "version: 1\nsandboxes:\n  good:\n    type: python\n  bad:\n    type: python\n    limits: { memory: lots }\n  \
                    worse:\n    type: nodejs\n";
        let part = parse_in_part(text, "cave.yaml").expect("the good sandbox is valid");
        assert_eq!(part.cave.sandboxes.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(part.left_out.iter().collect::<Vec<_>>(), ["bad", "worse"]);
        assert!(part.declares("bad") && part.declares("good") && !part.declares("other"));
        let problems = part.problems.expect("the problems are kept");
        assert_eq!(problems.errors, errors_of(text));

        let whole = parse_in_part(GOOD, "cave.yaml").expect("valid");
        assert!(whole.left_out.is_empty() && whole.problems.is_none() && whole.cave.sandboxes.len() == 2);

        // A problem outside the sandboxes leaves nothing to go on with.
        let bad_version = "version: 2\nsandboxes:\n  good:\n    type: python\n";
        assert_eq!(
            parse_in_part(bad_version, "cave.yaml").map(|part| part.cave).err(),
            parse(bad_version, "cave.yaml").err()
        );
        let duplicate = "version: 1\nsandboxes:\n  good:\n    type: python\n  bad:\n    type: python\n    type: node\n";
        assert!(parse_in_part(duplicate, "cave.yaml").is_err());
    }

    /// Found by a new-user trial: the disk below its least was said only once `type` was back.
    #[test]
    fn a_sandbox_without_its_type_has_its_other_problems_said_in_the_same_pass() {
        let text = "version: 1\nsandboxes:\n  api:\n    typ: python\n    limits: { cpus: 0, disk: 10MiB }\n";
        let pointers: Vec<(String, String)> =
            errors_of(text).into_iter().map(|error| (error.pointer, error.message)).collect();
        let at = |pointer: &str| pointers.iter().any(|(at, _)| at == pointer);
        assert!(
            at("/sandboxes/api/type") && at("/sandboxes/api/typ") && at("/sandboxes/api/limits/cpus"),
            "{pointers:?}"
        );
        assert!(
            pointers
                .iter()
                .any(|(at, message)| at == "/sandboxes/api/limits/disk" && message.contains("the least is 16MiB")),
            "{pointers:?}"
        );
    }

    /// Found by a new-user trial: `bkg validate` took variables over what the agent takes, so
    /// every run of the sandbox was refused instead.
    #[test]
    fn variables_over_the_environment_bound_are_refused_at_their_sandbox() {
        let with = |bytes: usize| {
            format!("version: 1\nsandboxes:\n  a:\n    type: python\n    env:\n      BIG: \"{}\"\n", "x".repeat(bytes))
        };
        assert!(parse(&with(100_000), "cave.yaml").is_ok());
        let errors = errors_of(&with(crate::MAX_ENV_BYTES));
        let [error] = errors.as_slice() else { panic!("{errors:?}") };
        assert_eq!(error.pointer, "/sandboxes/a/env");
        assert!(error.message.contains("over the 128KiB a sandbox's may"), "{}", error.message);
    }

    /// Found by a new-user trial: a line indented with a tab got only the parser's "found
    /// character that cannot start any token".
    #[test]
    fn a_tab_in_the_indentation_is_named() {
        let errors = errors_of("version: 1\nsandboxes:\n\tapi:\n\t\ttype: python\n");
        let [error] = errors.as_slice() else { panic!("{errors:?}") };
        assert_eq!(error.line, Some(3));
        assert!(error.message.ends_with(": YAML indents with spaces, not tabs"), "{}", error.message);
    }

    /// Found by a new-user trial: `bkg validate /etc/passwd` printed the whole file on one line.
    #[test]
    fn a_file_that_is_no_mapping_says_so_and_quotes_only_the_start_of_a_long_value() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n".repeat(50);
        let errors = errors_of(&passwd);
        let [error] = errors.as_slice() else { panic!("{errors:?}") };
        assert!(error.message.starts_with("\"root:x:0:0:root:/root:/bin/bash daemon:x:1:1:daemon:/usr/sb… is not a cave.yaml: the file reads as one string"), "{}", error.message);
        assert!(error.message.len() < 200, "{}", error.message);
        let errors = errors_of("- a\n- b\n");
        assert!(errors[0].message.contains("reads as a list"), "{errors:?}");
        let long_env = format!("version: 1\nsandboxes:\n  a:\n    type: python\n    env: \"{}\"\n", "x".repeat(500));
        let errors = errors_of(&long_env);
        assert!(errors.iter().all(|error| error.message.len() < 150), "{errors:?}");
    }

    #[test]
    fn a_rule_that_starts_with_a_word_in_capitals_keeps_it() {
        assert_eq!(lowercase_first("HOST[:PORT], *.DOMAIN[:PORT]."), "HOST[:PORT], *.DOMAIN[:PORT]");
        assert_eq!(lowercase_first("A positive duration."), "a positive duration");
    }

    /// Found by a new-user trial: `bkg validate` passed it and `bkgr` then refused it.
    #[test]
    fn a_secret_given_as_a_plain_variable_too_is_an_error() {
        let text = "version: 1\nsandboxes:\n  api:\n    type: python\n    secrets: [API_TOKEN]\n    env: { API_TOKEN: plain }\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].pointer, "/sandboxes/api/secrets/0");
        assert!(errors[0].message.contains("both as a secret and as a plain variable"), "{errors:?}");
    }

    /// `bkgr` would be refused it: the proxy variables are bkg's in a sandbox given network.
    #[test]
    fn a_proxy_variable_of_a_sandbox_given_network_is_an_error() {
        let sandbox = "version: 1\nsandboxes:\n  api:\n    type: python\n    env: { HTTP_PROXY: http://x:1 }\n";
        assert!(parse(sandbox, "cave.yaml").is_ok(), "without network the variable is the sandbox's own");
        let errors = errors_of(&format!("{sandbox}    network: {{ allow: [pypi.org] }}\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].pointer, "/sandboxes/api/env/HTTP_PROXY");
        assert!(errors[0].message.contains("is set by bkg in a run given network"), "{errors:?}");
        let secret = "version: 1\nsandboxes:\n  api:\n    type: python\n    secrets: [http_proxy]\n    \
                      network: { allow: [pypi.org] }\n";
        let errors = errors_of(secret);
        assert_eq!(errors.iter().map(|error| error.pointer.as_str()).collect::<Vec<_>>(), ["/sandboxes/api/secrets/0"]);
    }

    #[test]
    fn limits_below_the_least_the_agent_takes_are_errors() {
        let text = GOOD.replace("cpus: 0.5, memory: 256MiB", "cpus: 0.005, memory: 8MiB");
        let messages: Vec<String> = errors_of(&text).into_iter().map(|error| error.message).collect();
        assert!(
            messages.iter().any(|message| message.contains("`8MiB` is too small: the least is 16MiB")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|message| message.contains("0.005 is too small: the least is 0.01")),
            "{messages:?}"
        );
        // A size too small to be a byte is measured against the limit's floor, not a byte's.
        let text = GOOD.replace("memory: 256MiB", "memory: \"0.1\"");
        let messages: Vec<String> = errors_of(&text).into_iter().map(|error| error.message).collect();
        assert_eq!(messages, ["`0.1` is too small: the least is 16MiB"]);
        // As written, not rounded up to the least in the message (found by a new-user trial).
        let text = GOOD.replace("memory: 256MiB", "memory: 15.99MiB");
        let messages: Vec<String> = errors_of(&text).into_iter().map(|error| error.message).collect();
        assert_eq!(messages, ["`15.99MiB` is too small: the least is 16MiB"]);
        // A bare number below the least is not told to become another value below it.
        for (written, number) in [("memory: 256MiB", "memory: 512"), ("disk: 1GiB", "disk: 0")] {
            let messages: Vec<String> =
                errors_of(&GOOD.replace(written, number)).into_iter().map(|error| error.message).collect();
            let value = number.split_once(": ").unwrap_or_default().1;
            assert_eq!(
                messages,
                [format!("{value} is a number: write the size with its unit, as a string of at least \"16MiB\"")]
            );
        }
        // Zero in a size's or a duration's own form is too small too, not malformed.
        for (written, said) in
            [("timeout: 30s", "timeout: 0s"), ("memory: 256MiB", "memory: 0MiB"), ("disk: 1GiB", "disk: 0 GiB")]
        {
            let (key, zero) = said.split_once(": ").unwrap_or_default();
            let least = if key == "timeout" { "1ms" } else { "16MiB" };
            let messages: Vec<String> =
                errors_of(&GOOD.replace(written, said)).into_iter().map(|error| error.message).collect();
            assert_eq!(messages, [format!("`{zero}` is too small: the least is {least}")]);
        }
    }

    #[test]
    fn a_size_or_duration_written_as_a_number_is_told_to_take_its_unit() {
        for (written, said) in [
            ("timeout: 30s", "60 is a number: write the duration with its unit, as a string like \"60s\""),
            ("memory: 256MiB", "536870912 is a number: write the size with its unit, as a string like \"512MiB\""),
        ] {
            let number = said.split_once(' ').map(|(number, _)| number).unwrap_or_default();
            let (key, _) = written.split_once(": ").unwrap_or_default();
            let text = GOOD.replace(written, &format!("{key}: {number}"));
            let messages: Vec<String> = errors_of(&text).into_iter().map(|error| error.message).collect();
            assert_eq!(messages, [said]);
        }
    }

    #[test]
    fn an_empty_mapping_key_is_told_how_to_say_none() {
        let messages: Vec<String> =
            errors_of("version: 1\nsandboxes:\n").into_iter().map(|error| error.message).collect();
        assert_eq!(messages, ["`sandboxes:` is empty (null): give its entries, or write `sandboxes: {}` for none"]);
        let messages: Vec<String> = errors_of("version: 1\nsandboxes:\n  a:\n    type: python\n    volumes:\n")
            .into_iter()
            .map(|error| error.message)
            .collect();
        assert_eq!(messages, ["`volumes:` is empty (null): give its entries, or write `volumes: []` for none"]);
    }

    #[test]
    fn the_rules_of_other_sandboxes_are_checked_beside_a_schema_error() {
        let text = GOOD
            .replace("    type: node\n", "    type: node\n    colour: red\n")
            .replace("memory: 256MiB", "memory: 8MiB");
        let messages: Vec<String> = errors_of(&text).into_iter().map(|error| error.message).collect();
        assert!(messages.iter().any(|message| message.contains("\"colour\" is not allowed")), "{messages:?}");
        assert!(messages.iter().any(|message| message.contains("`8MiB` is too small")), "{messages:?}");
        // In one sandbox too: its unknown key is left out and the rest checked.
        let same_sandbox = GOOD
            .replace("    type: python\n", "    type: python\n    colour: red\n")
            .replace("memory: 256MiB", "memory: 8MiB");
        let messages: Vec<String> = errors_of(&same_sandbox).into_iter().map(|error| error.message).collect();
        assert!(messages.iter().any(|message| message.contains("`8MiB` is too small")), "{messages:?}");
        // Nor do faults outside the sandboxes keep the sandboxes' rules from being checked.
        let top_level = GOOD.replace("version: 1", "version: 2\ncolour: red").replace("memory: 256MiB", "memory: 8MiB");
        let messages: Vec<String> = errors_of(&top_level).into_iter().map(|error| error.message).collect();
        assert!(messages.iter().any(|message| message.contains("must be 1")), "{messages:?}");
        assert!(messages.iter().any(|message| message.contains("`8MiB` is too small")), "{messages:?}");
        let quoted = GOOD.replace("version: 1", "version: \"1\"");
        let messages: Vec<String> = errors_of(&quoted).into_iter().map(|error| error.message).collect();
        assert_eq!(messages, ["\"1\" is a string: write 1, without quotes"]);
        // A sandbox whose type is wrong is not checked further: its rules would speak of a guess.
        let wrong_type = GOOD.replace("type: python", "type: ruby").replace("memory: 256MiB", "memory: 8MiB");
        let messages: Vec<String> = errors_of(&wrong_type).into_iter().map(|error| error.message).collect();
        assert!(messages.iter().any(|message| message.contains("ruby")), "{messages:?}");
        assert!(!messages.iter().any(|message| message.contains("8MiB")), "{messages:?}");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_no_problem() -> Result<(), CaveErrors> {
        let plain = "version: 1\nsandboxes:\n  a:\n    type: python\n";
        let marked = format!("\u{feff}{plain}");
        assert_eq!(parse(&marked, "cave.yaml")?, parse(plain, "cave.yaml")?);
        Ok(())
    }

    #[test]
    fn the_schema_compiles() {
        assert!(COMPILED.is_ok(), "{:?}", COMPILED.as_ref().err());
    }

    #[test]
    fn a_good_file_loads_with_its_limits_and_volumes() {
        let cave = parse(GOOD, "cave.yaml").unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(cave.namespace, "demo");
        let api = &cave.sandboxes["api"];
        assert_eq!(api.r#type, Language::Python);
        let limits = api.limits.as_ref().map(CaveLimits::to_overrides);
        assert_eq!(
            limits,
            Some(Ok(LimitOverrides {
                cpu_millis: Some(500),
                memory_bytes: Some(256 << 20),
                timeout_ms: Some(30_000),
                disk_bytes: Some(1 << 30),
                pids: None,
            }))
        );
        assert_eq!(
            Volume::parse(&api.volumes[1]),
            Ok(Volume { host: PathBuf::from("data"), guest: "/workspace/data".into(), read_only: false })
        );
        assert_eq!(cave.sandboxes["web"].scripts.len(), 0);
    }

    #[test]
    fn the_namespace_defaults() {
        let cave = parse("version: 1\nsandboxes: {}\n", "x.yaml");
        assert_eq!(cave.map(|cave| cave.namespace), Ok("default".to_owned()));
    }

    #[test]
    fn a_host_port_forwarded_twice_is_found_by_validate() {
        let text =
            "version: 1\nsandboxes:\n  api:\n    type: python\n    ports: [\"127.0.0.1:18777:8000\", \"18777:8001\"]\n";
        let errors = errors_of(text);
        let found: Vec<(&str, &str)> =
            errors.iter().map(|error| (error.pointer.as_str(), error.message.as_str())).collect();
        assert_eq!(
            found,
            [(
                "/sandboxes/api/ports",
                "host port 127.0.0.1:18777 is forwarded twice: `127.0.0.1:18777:8000` and `18777:8001`"
            )]
        );
    }

    #[test]
    fn a_host_port_forwarded_twice_is_found_beside_an_invalid_entry() {
        let text = "version: 1\nsandboxes:\n  api:\n    type: python\n    ports: [\"999.0.0.1:8080:80\", \"18777:8000\", \"18777:8001\"]\n";
        let errors = errors_of(text);
        let found: Vec<&str> = errors.iter().map(|error| error.pointer.as_str()).collect();
        assert_eq!(found, ["/sandboxes/api/ports", "/sandboxes/api/ports/0"], "{errors:?}");
    }

    #[test]
    fn a_host_port_two_sandboxes_forward_is_found_by_validate() {
        let text = "version: 1\nsandboxes:\n  a:\n    type: python\n    ports: [\"127.0.0.1:18777:8000\"]\n  b:\n    type: python\n    ports: [\"0.0.0.0:18777:8000\", \"18778:8000\"]\n  c:\n    type: python\n    ports: [\"127.0.0.2:18778:8000\"]\n";
        let errors = errors_of(text);
        let found: Vec<(&str, &str)> =
            errors.iter().map(|error| (error.pointer.as_str(), error.message.as_str())).collect();
        assert_eq!(
            found,
            [(
                "/sandboxes/b/ports/0",
                "host port 18777 is forwarded by sandbox `a` too (`127.0.0.1:18777:8000`): give each sandbox a port of its own"
            )],
            "another address of the same port is another socket: c keeps 18778"
        );
    }

    #[test]
    fn volumes_at_one_place_or_nested_are_found_by_validate() {
        let text = "version: 1\nsandboxes:\n  api:\n    type: python\n    volumes: [\"./data:/workspace/m\", \"./d2:/workspace/m/sub\", \"./d3:/workspace/m\"]\n";
        let errors = errors_of(text);
        let found: Vec<(&str, &str)> =
            errors.iter().map(|error| (error.pointer.as_str(), error.message.as_str())).collect();
        // Each one is named, not only the first (found by a new-user trial).
        assert_eq!(
            found,
            [
                (
                    "/sandboxes/api/volumes/1",
                    "`./d2:/workspace/m/sub` is at or inside `./data:/workspace/m`: give each volume a place of its own"
                ),
                (
                    "/sandboxes/api/volumes/2",
                    "`./d3:/workspace/m` is at or inside `./data:/workspace/m`: give each volume a place of its own"
                )
            ]
        );
    }

    /// An item the schema refuses (a volume outside /workspace, a port that is no port) does
    /// not hide what the rules find among the others, said at each item's index in the file
    /// (found by a new-user trial: the one refused item was all `bkg validate` said).
    #[test]
    fn an_invalid_item_does_not_hide_the_others_problems() {
        let text = "version: 1\nsandboxes:\n  a:\n    type: python\n    volumes: [\"./q:/etc\", \"./x:/workspace/m\", \"./y:/workspace/m/sub\"]\n    ports: [\"8080:80\"]\n  b:\n    type: python\n    ports: [bad, \"8080:81\"]\n";
        let pointers: Vec<String> = errors_of(text).into_iter().map(|error| error.pointer).collect();
        assert_eq!(
            pointers,
            ["/sandboxes/a/volumes/0", "/sandboxes/a/volumes/2", "/sandboxes/b/ports/0", "/sandboxes/b/ports/1"]
        );
        let messages: Vec<String> = errors_of(text).into_iter().map(|error| error.message).collect();
        assert_eq!(
            messages[1],
            "`./y:/workspace/m/sub` is at or inside `./x:/workspace/m`: give each volume a place of its own"
        );
        assert!(messages[3].starts_with("host port 8080 is forwarded by sandbox `a` too"), "{messages:?}");
    }

    #[test]
    fn a_rule_without_words_of_its_own_is_said_by_its_description_not_its_pattern() {
        let text = "version: 1\nsandboxes:\n  api:\n    type: python\n    keep: [/etc/passwd]\n    ports: [abc]\n";
        let messages: Vec<String> = errors_of(text).into_iter().map(|error| error.message).collect();
        assert_eq!(
            messages,
            [
                "\"/etc/passwd\" is not valid here: a path under /workspace, relative or starting with /workspace/, \
                 without '.' or '..' parts; not stdout or stderr",
                "\"abc\" is not valid here: [ADDRESS:]HOST_PORT:SANDBOX_PORT, or one PORT for both, each 1-65535; \
                 ADDRESS is 127.0.0.1 unless given",
            ]
        );
    }

    /// Found by a new-user trial: ports out of range were said only once the file's other
    /// problems were fixed, and editors checking against the schema took them.
    #[test]
    fn ports_out_of_range_are_the_schemas_to_refuse_in_the_same_pass_as_the_rest() {
        let text = "version: 1\nnamespace: Bad_NS\nsandboxes:\n  api:\n    type: python\n    colour: red\n    \
                    ports: ['0:80', '70000:80', '8080:0', '127.0.0.1:8080:80', '9090']\n    \
                    network: { allow: ['pypi.org:99999', 'pypi.org:0', 'pypi.org:443'] }\n";
        let pointers: Vec<String> = errors_of(text).into_iter().map(|error| error.pointer).collect();
        assert_eq!(
            pointers,
            [
                "/namespace",
                "/sandboxes/api/colour",
                "/sandboxes/api/ports/0",
                "/sandboxes/api/ports/1",
                "/sandboxes/api/ports/2",
                "/sandboxes/api/network/allow/0",
                "/sandboxes/api/network/allow/1",
            ]
        );
    }

    /// Found by a new-user trial: a namespace that is not a name was told the rule of sandbox
    /// names, at most 63 characters, where a namespace may have 56.
    #[test]
    fn a_bad_namespace_is_told_the_namespace_rule() {
        let errors = errors_of("version: 1\nnamespace: Default\nsandboxes: {}\n");
        let messages: Vec<&str> = errors.iter().map(|error| error.message.as_str()).collect();
        assert_eq!(messages, [format!("\"Default\" is not a valid namespace ({NAMESPACE_RULE})")]);
        assert!(NAMESPACE_RULE.ends_with(&format!("at most {} characters", crate::sandbox::MAX_NAMESPACE_LEN)));
    }

    /// Found by a trial: `timeout: 10S` was only "not a valid duration", where `--timeout 10S`
    /// is told to write `10s`.
    #[test]
    fn a_duration_in_capitals_or_as_m_gets_the_fix_the_flags_get() {
        for (written, said) in [
            ("10S", "`10S` is not a duration: write its unit in lowercase, `10s`"),
            ("1M", "`1M` is ambiguous: write `m` or `min` for minutes, `d` for days"),
            ("soon", "\"soon\" is not a valid duration (a number with an optional unit, like 500ms, 60s, 1m30s or 1h)"),
        ] {
            let errors = errors_of(&format!(
                "version: 1\nsandboxes:\n  a:\n    type: python\n    limits: {{ timeout: {written} }}\n"
            ));
            let messages: Vec<&str> = errors.iter().map(|error| error.message.as_str()).collect();
            assert_eq!(messages, [said]);
        }
    }

    #[test]
    fn none_is_no_host_of_network_allow() {
        let errors = errors_of("version: 1\nsandboxes:\n  a:\n    type: python\n    network: { allow: [none] }\n");
        let messages: Vec<&str> = errors.iter().map(|error| error.message.as_str()).collect();
        assert_eq!(messages, ["`none` would be a host of that name: no network is the default, leave network out"]);
    }

    #[test]
    fn every_error_is_reported_with_its_line_and_pointer() {
        let text = GOOD.replace("memory: 256MiB", "memory: lots").replace("type: node", "type: ruby\n    colour: red");
        let errors = errors_of(&text);
        let found: Vec<(Option<usize>, &str)> =
            errors.iter().map(|error| (error.line, error.pointer.as_str())).collect();
        assert_eq!(
            found,
            [
                (Some(7), "/sandboxes/api/limits/memory"),
                (Some(15), "/sandboxes/web/type"),
                (Some(16), "/sandboxes/web/colour"),
            ]
        );
        // The rule in words, without the schema's pattern beside them.
        assert_eq!(
            errors[0].render("cave.yaml"),
            "cave.yaml:7: /sandboxes/api/limits/memory: \"lots\" is not a valid size \
             (a number with an optional unit, like 512MiB, 1GiB or 500M)"
        );
        assert!(errors[1].message.contains(r#"is not one of ["python","node"]"#));
        assert!(errors[2].message.starts_with(r#"additional property "colour" is not allowed"#));
    }

    #[test]
    fn packages_secrets_and_kept_paths_are_checked_like_the_rest() {
        let good = "version: 1\nsandboxes:\n  api:\n    type: python\n    python: { requirements: req.txt }\n    \
                    secrets: [API_TOKEN]\n    keep: [report.txt, /workspace/out/, data/x]\n";
        let cave = parse(good, "cave.yaml").expect("a good file");
        let api = &cave.sandboxes["api"];
        assert_eq!(api.python.as_ref().and_then(|python| python.requirements.as_deref()), Some("req.txt"));
        assert_eq!((api.secrets.len(), api.keep.len()), (1, 3));
        let bad = "version: 1\nsandboxes:\n  api:\n    type: python\n    python: { packages: [six] }\n    \
                   secrets: [1BAD]\n    keep: [../up, stdout, a//b]\n";
        let pointers: Vec<String> = errors_of(bad).into_iter().map(|error| error.pointer).collect();
        assert_eq!(
            pointers,
            [
                "/sandboxes/api/python/packages",
                "/sandboxes/api/secrets/0",
                "/sandboxes/api/keep/0",
                "/sandboxes/api/keep/1",
                "/sandboxes/api/keep/2"
            ]
        );
    }

    #[test]
    fn names_items_and_missing_keys_have_lines() {
        let text = "version: 1\nsandboxes:\n  Bad_Name:\n    type: python\n  ok:\n    volumes:\n      - ./a:/workspace/a\n      - ./b:/etc\n";
        let errors = errors_of(text);
        let found: Vec<(Option<usize>, &str)> =
            errors.iter().map(|error| (error.line, error.pointer.as_str())).collect();
        assert_eq!(
            found,
            [(Some(3), "/sandboxes/Bad_Name"), (Some(5), "/sandboxes/ok/type"), (Some(8), "/sandboxes/ok/volumes/1"),]
        );
        let missing = errors_of("sandboxes: {}\n");
        assert_eq!(missing[0].pointer, "/version");
        assert_eq!(missing[0].line, None);
        assert_eq!(missing[0].render("c.yaml"), r#"c.yaml: /version: required key "version" is missing"#);
    }

    #[test]
    fn bad_yaml_and_duplicate_keys_are_one_error_with_a_line() {
        let errors = errors_of("version: 1\nsandboxes:\n  a: {type: python}\n  a: {type: node}\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(4));
        assert_eq!(errors[0].pointer, "/sandboxes/a");
        assert_eq!(errors[0].message, "duplicate key \"a\": the first one would be lost");
        let errors = errors_of("version: 1\nsandboxes: [\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("invalid YAML"));
    }

    #[test]
    fn limits_outside_the_patterns_are_refused_like_the_schema_does() {
        for (text, ok) in [
            ("512MiB", true),
            ("512 MiB", true),
            ("1.5g", true),
            (" 512MiB", false),
            ("+5MiB", false),
            ("512  MiB", false),
            ("0MiB", false),
            ("lots", false),
        ] {
            assert_eq!(quantity(text, parse_size, UnitError::Size).is_ok(), ok, "{text}");
        }
        for (text, ok) in [
            ("1m30s", true),
            ("1h 15m", true),
            ("2s500ms", true),
            ("2d", true),
            ("1d 12h", true),
            ("1m  30s", false),
            ("1 m30s", false),
            ("1m30", false),
            ("1m30x", false),
        ] {
            assert_eq!(duration(text).is_ok(), ok, "{text}");
        }
        // As `--timeout 2d` reads it (found by a new-user trial: cave.yaml refused days).
        assert_eq!(duration("2d"), parse_duration_ms("2d"));
        assert_eq!(duration("1d 12h"), Ok(36 * 3_600_000));
        assert!(CpuCount::Number(0.0004).millis().is_err());
        assert!(CpuCount::Number(5000.0).millis().is_err());
        assert_eq!(CpuCount::Text("0.25".into()).millis(), Ok(250));
        assert!(CpuCount::Text("1e3".into()).millis().is_err());
    }

    #[test]
    fn volumes_land_under_the_workspace() {
        assert_eq!(
            Volume::parse("./src:/workspace/src"),
            Ok(Volume { host: PathBuf::from("./src"), guest: "/workspace/src".into(), read_only: true })
        );
        for outside_the_project in ["/etc:/workspace/etc", "../up:/workspace/up:rw"] {
            assert!(Volume::parse(outside_the_project).is_ok(), "bkgr, not the file, decides on {outside_the_project}");
        }
        for bad in [
            "a:/workspace",
            "a:/workspace/",
            "a:/workspace/../etc",
            "a:/tmp/a",
            "a:/workspace/a:rx",
            "a:/workspace/a:ro:x",
            ":/workspace/a",
            "a",
        ] {
            assert!(Volume::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars_read_back_as_written() {
        for (text, written) in [
            ("python main.py", "python main.py"),
            ("python -m unittest", "python -m unittest"),
            ("true", "\"true\""),
            ("1", "\"1\""),
            ("a: b", "\"a: b\""),
            ("x # y", "\"x # y\""),
            (" x", "\" x\""),
            ("- x", "\"- x\""),
            ("two\nlines", "\"two\\nlines\""),
            ("", "\"\""),
        ] {
            assert_eq!(yaml_scalar(text), written);
            let back: Result<String, _> =
                yaml_serde::from_str(&format!("k: {written}")).map(|map: BTreeMap<String, String>| map["k"].clone());
            assert_eq!(back.ok().as_deref(), Some(text));
        }
    }

    #[test]
    fn names() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("api-2"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_script_name("test_all"));
        assert!(!is_script_name("_x"));
        assert!(is_env_key("_X1"));
        assert!(!is_env_key("1X"));
        assert!(!is_command(" \t"));
    }
}
