//! How a command was asked to reach the agent and to print, resolved once from the global flags
//! and the environment into plain values: the client and the commands never see clap.

use std::path::PathBuf;
use std::time::Duration;

use crate::args::GlobalArgs;
use crate::exit::CliError;
use crate::out::Printer;

/// Overrides how long a call waits for the agent (a duration: `30s`, `2m`).
pub const TIMEOUT_ENV: &str = "BKG_CLIENT_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every `bkg` command is given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local agent's socket, its default applied (`--socket`, `BKG_SOCKET`).
    pub socket: PathBuf,
    /// `--remote URL` as given: checked only by a command that talks to the agent, so a bad one
    /// does not stop `bkg validate`.
    pub remote: Option<String>,
    /// `--cacert FILE`: the CA of an https remote agent.
    pub cacert: Option<PathBuf>,
    pub out: Printer,
}

impl Settings {
    pub fn new(global: GlobalArgs, out: Printer) -> Self {
        Self {
            socket: global.socket.unwrap_or_else(bkg_schema::paths::default_socket),
            remote: global.remote,
            cacert: global.cacert,
            out,
        }
    }

    /// `--remote`, checked: `None` on the local socket.
    pub fn remote_url(&self) -> Result<Option<reqwest::Url>, CliError> {
        self.remote.as_deref().map(crate::credentials::parse_remote).transpose()
    }

    /// The agent the command talks to: the remote one with the key kept for it, else the socket.
    pub fn endpoint(&self) -> Result<Endpoint, CliError> {
        match self.remote_url()? {
            Some(url) => {
                let key = crate::credentials::key_for(&url)?;
                Endpoint::remote(url, Some(key), self.cacert.clone())
            }
            None => Endpoint::socket(self.socket.clone()),
        }
    }
}

/// Where an agent is and how long to wait for it. Not `Debug`: it may hold an API key.
#[derive(Clone)]
pub struct Endpoint {
    pub place: Place,
    /// How long a call waits for the agent's answer (`BKG_CLIENT_TIMEOUT`, 10 s by default).
    pub patience: Duration,
}

#[derive(Clone)]
pub enum Place {
    /// The local agent's unix socket.
    Socket(PathBuf),
    /// An agent's TCP listener (http(s)://HOST:PORT). `key` goes with every request (none: only
    /// for the routes that take other credentials, like login); https is verified against
    /// `cacert` (PEM) when given, else the system's roots.
    Remote { url: reqwest::Url, key: Option<String>, cacert: Option<PathBuf> },
}

impl Endpoint {
    /// The agent on the unix socket at `path`.
    pub fn socket(path: PathBuf) -> Result<Self, CliError> {
        Ok(Self { place: Place::Socket(path), patience: patience()? })
    }

    /// The agent at `url`, with `key` and `cacert` as [`Place::Remote`] says.
    pub fn remote(url: reqwest::Url, key: Option<String>, cacert: Option<PathBuf>) -> Result<Self, CliError> {
        Ok(Self { place: Place::Remote { url, key, cacert }, patience: patience()? })
    }
}

/// How long a call waits for the agent: `BKG_CLIENT_TIMEOUT` or 10 s.
fn patience() -> Result<Duration, CliError> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(text) if !text.is_empty() => bkg_schema::parse_duration_ms(&text)
            .map(Duration::from_millis)
            .map_err(|error| CliError::usage(format!("{TIMEOUT_ENV}={text}: {error}"))),
        _ => Ok(DEFAULT_TIMEOUT),
    }
}
