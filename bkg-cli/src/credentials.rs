//! Where the CLI finds the API key of a remote agent: `BKG_API_KEY`, else the kernel keyring
//! (keyutils), else `~/.config/bkg/credentials` (mode 0600), each keyed by the agent's URL.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::exit::CliError;

pub const API_KEY_ENV: &str = "BKG_API_KEY";
/// `file` keeps keys in the credentials file only (where no kernel keyring is usable).
pub const STORE_ENV: &str = "BKG_CREDENTIAL_STORE";
const KEYRING_SERVICE: &str = "bkg";

/// Where `bkg login` put a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Keyring,
    File(PathBuf),
}

/// The agent's base URL: `https://HOST:PORT`, or `http://` to loopback (`BKG_ALLOW_HTTP`).
pub fn parse_remote(text: &str) -> Result<reqwest::Url, CliError> {
    let url = reqwest::Url::parse(text).map_err(|error| {
        let hint = if text.contains("://") { "" } else { " (give the scheme: https://HOST:PORT)" };
        CliError::usage(format!("--remote `{text}`: {error}{hint}"))
    })?;
    // The agent's base URL: the API's paths go after it.
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(CliError::usage(format!(
            "--remote `{text}` names a path: give the agent's address alone, like https://HOST:PORT"
        )));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if url.host().is_some() && (is_loopback(&url) || allows_http()) => Ok(url),
        "http" if url.host().is_some() => Err(CliError::usage(format!(
            "--remote `{text}` would send the key (and a login's password) across the network in clear: use \
             https://, or set {ALLOW_HTTP_ENV}=1 for a tunnel or a network you trust"
        ))),
        _ => Err(CliError::usage(format!("--remote `{text}` must be an https://HOST:PORT (or http://) URL"))),
    }
}

/// `1`: `--remote http://` may reach a host that is not loopback.
pub const ALLOW_HTTP_ENV: &str = "BKG_ALLOW_HTTP";

fn allows_http() -> bool {
    std::env::var(ALLOW_HTTP_ENV).is_ok_and(|value| value == "1")
}

/// Whether `url` names this machine: `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || address.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// The name a key is kept under: the agent's origin.
fn account(remote: &reqwest::Url) -> String {
    remote.origin().ascii_serialization()
}

/// Whether keys are kept in the credentials file only (`BKG_CREDENTIAL_STORE=file`), else in the
/// kernel keyring when it works (`keyring`, or unset). Any other value is refused: a typo must
/// not send a secret where the user asked it not to go.
fn file_only() -> Result<bool, CliError> {
    match std::env::var(STORE_ENV).as_deref() {
        Ok("file") => Ok(true),
        Ok("keyring" | "") | Err(_) => Ok(false),
        Ok(other) => Err(CliError::usage(format!("{STORE_ENV}={other}: use `file` or `keyring`"))),
    }
}

/// Whether the keyring keeps what is put in it where this process finds it again: tried with an
/// entry that holds no secret, so that a keyring that takes a key and then refuses to give it
/// back (or to delete it) never holds a real one.
fn keyring_round_trips() -> bool {
    const PROBE_ACCOUNT: &str = "bkg-probe";
    // A process with no session keyring of its own (no `pam_keyinit`: containers, cron, `su`,
    // CI) is given one by the store that lives only as long as it does, and the next command,
    // searching the user's session keyring, finds nothing (found by a new-user trial: `bkg
    // login` said it kept the key, `keys ls` had none, and `logout` revoked nothing).
    if !has_a_session_keyring_of_its_own() {
        return false;
    }
    let Ok(store) = linux_keyutils_keyring_store::Store::new() else { return false };
    let store: Arc<keyring_core::CredentialStore> = store;
    let Ok(probe) = keyring_core::Entry::new_in_store(&store, KEYRING_SERVICE, PROBE_ACCOUNT) else { return false };
    let works = probe.set_password("probe").and_then(|()| probe.get_password()).is_ok_and(|back| back == "probe");
    works && probe.delete_credential().is_ok()
}

/// Whether this process's session keyring is one of its own, which the commands after it share,
/// and not the user's session keyring the kernel stands in with when it has none. Asked once,
/// before any store is made: making one gives the process a session keyring of its own.
fn has_a_session_keyring_of_its_own() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        use linux_keyutils::{KeyRing, KeyRingIdentifier};
        match (
            KeyRing::from_special_id(KeyRingIdentifier::Session, false),
            KeyRing::from_special_id(KeyRingIdentifier::UserSession, false),
        ) {
            (Ok(session), Ok(user_session)) => session != user_session,
            _ => false,
        }
    })
}

fn keyring_entry(remote: &reqwest::Url) -> Result<keyring_core::Entry, keyring_core::Error> {
    if !has_a_session_keyring_of_its_own() {
        return Err(keyring_core::Error::NoStorageAccess("no session keyring of this process's own".into()));
    }
    let store: Arc<keyring_core::CredentialStore> = linux_keyutils_keyring_store::Store::new()?;
    keyring_core::Entry::new_in_store(&store, KEYRING_SERVICE, &account(remote))
}

pub fn credentials_file() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    config.join("bkg").join("credentials")
}

fn read_file() -> Result<BTreeMap<String, String>, CliError> {
    let path = credentials_file();
    match std::fs::read(&path) {
        // With the way out: the file holds only keys, which `bkg login` keeps again (found by a
        // new-user trial: the parser's error alone).
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            CliError::usage(format!(
                "{} is not a bkg credentials file ({error}): move it aside and `bkg --remote URL login` again",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(CliError::usage(format!("cannot read {}: {error}", path.display()))),
    }
}

/// `BKG_API_KEY`, when it holds a key.
pub fn key_from_env() -> Option<String> {
    std::env::var(API_KEY_ENV).ok().map(|key| key.trim().to_owned()).filter(|key| !key.is_empty())
}

/// The key for `remote`: `BKG_API_KEY`, else the one `bkg login` kept.
pub fn key_for(remote: &reqwest::Url) -> Result<String, CliError> {
    if let Some(key) = key_from_env() {
        // Keys are printable ASCII: anything else is a mistake, said here rather than as the
        // agent's "the Authorization header is not text" (found by a new-user trial).
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(CliError::usage(format!(
                "{API_KEY_ENV} holds characters no API key has (keys are printable ASCII, like bkg_ns_…): check its value"
            )));
        }
        return Ok(key);
    }
    kept_key(remote)?.ok_or_else(|| {
        CliError::usage(format!(
            "no API key for {}: run `bkg login --remote {} --user NAME` (or `--key-stdin` with a key), or set {API_KEY_ENV}",
            account(remote),
            account(remote)
        ))
    })
}

/// The key `bkg login` kept for `remote`: in the keyring, else in the credentials file.
pub fn kept_key(remote: &reqwest::Url) -> Result<Option<String>, CliError> {
    if !file_only()?
        && let Ok(key) = keyring_entry(remote).and_then(|entry| entry.get_password())
    {
        return Ok(Some(key));
    }
    Ok(read_file()?.remove(&account(remote)))
}

/// Keeps `key` for `remote` in one place: in the keyring when it works (read back to be sure)
/// and the credentials file does not hold `remote`'s key already, else in the file. Where the
/// file holds it (`login` fell back to it), a new key replaces it there and none is left in the
/// keyring to shadow it (found by a new-user trial: `keys rotate` of the kept key put the new
/// one in a keyring the next command could not read, which then fell back to the old key in
/// the file and was refused).
pub fn keep(remote: &reqwest::Url, key: &str) -> Result<Kept, CliError> {
    let mut keys = read_file()?;
    let in_file = keys.contains_key(&account(remote));
    if !file_only()? && !in_file && keyring_round_trips() {
        let entry = keyring_entry(remote);
        let kept = entry.as_ref().is_ok_and(|entry| {
            entry.set_password(key).and_then(|()| entry.get_password()).is_ok_and(|stored| stored == key)
        });
        if kept {
            return Ok(Kept::Keyring);
        }
        // Not kept there after all: nothing of it may stay there either.
        if let Ok(entry) = entry {
            let _ = entry.delete_credential();
        }
    }
    // The keyring is read first (`kept_key`): an older key there would win over this one.
    if !file_only()? {
        let _ = keyring_entry(remote).and_then(|entry| entry.delete_credential());
    }
    let path = credentials_file();
    keys.insert(account(remote), key.to_owned());
    let failed = |error: std::io::Error| CliError::usage(format!("cannot write {}: {error}", path.display()));
    let dir = path.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(failed)?;
    // Written beside the file and renamed over it, born 0600: never a moment with a wider mode.
    let mut temporary = tempfile::Builder::new().prefix(".credentials").tempfile_in(&dir).map_err(failed)?;
    let json = serde_json::to_vec_pretty(&keys).map_err(|error| CliError::internal(error.to_string()))?;
    temporary.write_all(&json).map_err(failed)?;
    temporary.persist(&path).map_err(|error| failed(error.error))?;
    Ok(Kept::File(path))
}

/// Forgets the key kept for `remote`, in the keyring and in the credentials file. Whether there
/// was one.
pub fn forget(remote: &reqwest::Url) -> Result<bool, CliError> {
    let in_keyring = !file_only()? && keyring_entry(remote).and_then(|entry| entry.delete_credential()).is_ok();
    let mut keys = read_file()?;
    let in_file = keys.remove(&account(remote)).is_some();
    if in_file {
        let path = credentials_file();
        let failed = |error: std::io::Error| CliError::usage(format!("cannot write {}: {error}", path.display()));
        let dir = path.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let mut temporary = tempfile::Builder::new().prefix(".credentials").tempfile_in(&dir).map_err(failed)?;
        let json = serde_json::to_vec_pretty(&keys).map_err(|error| CliError::internal(error.to_string()))?;
        temporary.write_all(&json).map_err(failed)?;
        temporary.persist(&path).map_err(|error| failed(error.error))?;
    }
    Ok(in_keyring || in_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_name_a_remote_agent() {
        assert!(parse_remote("http://127.0.0.1:8080").is_ok());
        assert!(parse_remote("https://agent.example").is_ok());
        assert!(parse_remote("ftp://agent.example").is_err());
        assert!(parse_remote("agent:8080").is_err());
        assert!(parse_remote("not a url").is_err());
        let url = parse_remote("http://127.0.0.1:8080/").map(|url| account(&url)).unwrap_or_default();
        assert_eq!(url, "http://127.0.0.1:8080");
    }

    /// A key (and a login's password) would cross the network in clear: plain http only to this
    /// machine unless BKG_ALLOW_HTTP=1 (not set where the tests run).
    #[test]
    fn plain_http_reaches_only_loopback() {
        for loopback in ["http://127.0.0.1:7070", "http://127.1.2.3:7070", "http://localhost:7070", "http://[::1]:7070"]
        {
            assert!(parse_remote(loopback).is_ok(), "{loopback}");
        }
        let refused = parse_remote("http://10.0.0.5:7070").err().map(|error| error.message).unwrap_or_default();
        assert!(refused.contains("in clear: use https://, or set BKG_ALLOW_HTTP=1"), "{refused}");
        assert!(parse_remote("https://10.0.0.5:7070").is_ok());
        let path = parse_remote("https://agent.example/foo").err().map(|error| error.message).unwrap_or_default();
        assert!(path.contains("names a path"), "{path}");
        let bare = parse_remote("127.0.0.1:7070").err().map(|error| error.message).unwrap_or_default();
        assert!(bare.contains("give the scheme: https://HOST:PORT"), "{bare}");
    }
}
