//! Secrets (`bkg secrets set|ls|rm`), sealed at rest. Each value is encrypted with
//! XChaCha20-Poly1305 under a key of the agent's own (`secrets.key` in the state dir, 0600, made
//! on first use); the sealed values live in `secrets.json` (0600) beside it. The namespace and
//! name are the associated data, so a sealed value moved to another name does not open. Values
//! leave this module only to be put into a run's environment (`service/secrets.rs`): never into
//! the store, the audit log, a log or bkg_db.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// The key file, in the state dir.
const KEY_FILE: &str = "secrets.key";
/// The sealed values, in the state dir.
const SEALED_FILE: &str = "secrets.json";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} is damaged: {1}")]
    Damaged(PathBuf, String),
    #[error("secret `{0}` does not open with this agent's key (was secrets.key replaced?)")]
    WrongKey(String),
    #[error("no random bytes: {0}")]
    Random(String),
}

/// One sealed value as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
    created_at_ms: u64,
}

/// Namespace → name → sealed value.
type SealedByNamespace = BTreeMap<String, BTreeMap<String, Sealed>>;

pub struct SecretStore {
    dir: PathBuf,
    /// Held while the file is read and rewritten: one change at a time.
    lock: Mutex<()>,
    /// Held from a change to its audit record (`changing`).
    changing: tokio::sync::Mutex<()>,
}

/// The sealed file as it was before a change, put back if the change's audit record cannot be
/// written (a full disk): a secret set or removed without its record was found by a new-user
/// trial. Kept as a hard link, which takes no room.
pub struct SecretsBefore {
    path: PathBuf,
    kept: Option<PathBuf>,
}

impl SecretsBefore {
    /// The change stands: the old file goes.
    pub fn forget(self) {
        if let Some(kept) = &self.kept {
            let _ = std::fs::remove_file(kept);
        }
    }

    /// The change is undone: the old file is back, or none when there was none.
    pub fn put_back(self) {
        let undone = match &self.kept {
            Some(kept) => std::fs::rename(kept, &self.path),
            None => std::fs::remove_file(&self.path),
        };
        if let Err(error) = undone {
            tracing::error!(%error, path = %self.path.display(), "a secrets change whose record failed could not be undone");
        }
    }
}

/// A secret's name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretEntry {
    pub name: String,
    pub created_at_ms: u64,
}

impl SecretStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.to_path_buf(), lock: Mutex::new(()), changing: tokio::sync::Mutex::new(()) }
    }

    /// One change and its record at a time: held, the file as it is now is kept for
    /// `SecretsBefore::put_back`.
    pub async fn changing(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, SecretsBefore), SecretError> {
        let held = self.changing.lock().await;
        let path = self.dir.join(SEALED_FILE);
        let kept = self.dir.join(format!("{SEALED_FILE}.before"));
        let _ = std::fs::remove_file(&kept);
        let kept = match std::fs::hard_link(&path, &kept) {
            Ok(()) => Some(kept),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(SecretError::Io { action: "keep", path, source }),
        };
        Ok((held, SecretsBefore { path, kept }))
    }

    pub fn set(&self, namespace: &str, name: &str, value: &[u8], now_ms: u64) -> Result<(), SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cipher = self.cipher()?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|error| SecretError::Random(error.to_string()))?;
        let aad = associated_data(namespace, name);
        let ciphertext = cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: value, aad: &aad })
            .map_err(|_| SecretError::Damaged(self.dir.join(KEY_FILE), "encryption failed".into()))?;
        let mut all = self.read()?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        all.entry(namespace.to_owned()).or_default().insert(
            name.to_owned(),
            Sealed { nonce: b64.encode(nonce), ciphertext: b64.encode(ciphertext), created_at_ms: now_ms },
        );
        self.write(&all)
    }

    pub fn list(&self, namespace: &str) -> Result<Vec<SecretEntry>, SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let all = self.read()?;
        Ok(all
            .get(namespace)
            .map(|secrets| {
                secrets
                    .iter()
                    .map(|(name, sealed)| SecretEntry { name: name.clone(), created_at_ms: sealed.created_at_ms })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Removes a secret; false when there was none of that name.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<bool, SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all = self.read()?;
        let removed = all.get_mut(namespace).is_some_and(|secrets| secrets.remove(name).is_some());
        if removed {
            all.retain(|_, secrets| !secrets.is_empty());
            self.write(&all)?;
        }
        Ok(removed)
    }

    /// The value of each named secret of `namespace`; `Ok(Err(name))` names the first missing one.
    pub fn open(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<Result<Vec<(String, String)>, String>, SecretError> {
        if names.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let _held = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let all = self.read()?;
        let cipher = self.cipher()?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut opened = Vec::new();
        for name in names {
            let Some(sealed) = all.get(namespace).and_then(|secrets| secrets.get(name)) else {
                return Ok(Err(name.clone()));
            };
            let damaged = |what: &str| SecretError::Damaged(self.dir.join(SEALED_FILE), format!("{what} of `{name}`"));
            let nonce: [u8; NONCE_BYTES] = b64
                .decode(&sealed.nonce)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| damaged("the nonce"))?;
            let ciphertext = b64.decode(&sealed.ciphertext).map_err(|_| damaged("the ciphertext"))?;
            let aad = associated_data(namespace, name);
            let plain = cipher
                .decrypt(&XNonce::from(nonce), Payload { msg: &ciphertext, aad: &aad })
                .map_err(|_| SecretError::WrongKey(name.clone()))?;
            let value = String::from_utf8(plain).map_err(|_| damaged("the value"))?;
            opened.push((name.clone(), value));
        }
        Ok(Ok(opened))
    }

    fn read(&self) -> Result<SealedByNamespace, SecretError> {
        let path = self.dir.join(SEALED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| SecretError::Damaged(path, error.to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(SealedByNamespace::new()),
            Err(source) => Err(SecretError::Io { action: "read", path, source }),
        }
    }

    /// Replaces the sealed file whole (a new file renamed over it): a crash leaves the old or the new.
    fn write(&self, all: &SealedByNamespace) -> Result<(), SecretError> {
        let path = self.dir.join(SEALED_FILE);
        let partial = self.dir.join(format!("{SEALED_FILE}.partial"));
        let bytes = serde_json::to_vec(all).map_err(|error| SecretError::Damaged(path.clone(), error.to_string()))?;
        write_private(&partial, &bytes)?;
        std::fs::rename(&partial, &path).map_err(|source| SecretError::Io { action: "replace", path, source })
    }

    /// The agent's secrets key, made on first use.
    fn cipher(&self) -> Result<XChaCha20Poly1305, SecretError> {
        let path = self.dir.join(KEY_FILE);
        let mut key = match std::fs::read(&path) {
            Ok(key) => key,
            // Made whole beside its place, then linked in, which fails if one is there already: a
            // write cut short (a full disk) left an empty key that every later secret was refused
            // for as damaged (found by a new-user trial).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; KEY_BYTES];
                getrandom::fill(&mut key).map_err(|error| SecretError::Random(error.to_string()))?;
                let partial = self.dir.join(format!("{KEY_FILE}.partial"));
                write_private(&partial, &key)?;
                let placed = std::fs::hard_link(&partial, &path);
                let _ = std::fs::remove_file(&partial);
                match placed {
                    Ok(()) => key,
                    // Made meanwhile by another: that one is the key.
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)
                        .map_err(|source| SecretError::Io { action: "read", path: path.clone(), source })?,
                    Err(source) => return Err(SecretError::Io { action: "create", path, source }),
                }
            }
            Err(source) => return Err(SecretError::Io { action: "read", path, source }),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| SecretError::Damaged(path, format!("it must hold {KEY_BYTES} bytes")));
        key.zeroize();
        cipher
    }
}

fn associated_data(namespace: &str, name: &str) -> Vec<u8> {
    format!("bkg-secret/1\0{namespace}\0{name}").into_bytes()
}

/// Writes a file only root can read, in place of one that exists.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let io = |action: &'static str| move |source| SecretError::Io { action, path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    file.write_all(bytes).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_put_back_leaves_the_secrets_as_they_were() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SecretStore::new(dir.path());
        // None before: put back, there is none again.
        let (held, before) = store.changing().await?;
        store.set("ns", "FIRST", b"1", 1)?;
        before.put_back();
        drop(held);
        assert_eq!(store.list("ns")?, Vec::new());
        let (held, before) = store.changing().await?;
        store.set("ns", "FIRST", b"1", 1)?;
        before.forget();
        drop(held);
        let (held, before) = store.changing().await?;
        store.set("ns", "SECOND", b"2", 2)?;
        assert!(store.remove("ns", "FIRST")?);
        before.put_back();
        drop(held);
        assert_eq!(store.list("ns")?, vec![SecretEntry { name: "FIRST".into(), created_at_ms: 1 }]);
        assert_eq!(store.open("ns", &["FIRST".into()])?, Ok(vec![("FIRST".into(), "1".into())]));
        assert!(!dir.path().join(format!("{SEALED_FILE}.before")).exists());
        Ok(())
    }

    #[test]
    fn a_value_is_sealed_on_disk_and_opens_only_under_its_own_name() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SecretStore::new(dir.path());
        store.set("default", "API_TOKEN", b"hunter2-very-secret", 1)?;
        let sealed = std::fs::read_to_string(dir.path().join(SEALED_FILE))?;
        assert!(!sealed.contains("hunter2"), "{sealed}");
        let key_mode = std::fs::metadata(dir.path().join(KEY_FILE))?.permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777, 0o600);
        let opened = store.open("default", &["API_TOKEN".into()])?;
        assert_eq!(opened, Ok(vec![("API_TOKEN".into(), "hunter2-very-secret".into())]));
        assert_eq!(store.open("other", &["API_TOKEN".into()])?, Err("API_TOKEN".into()));

        // The same sealed value under another name does not open.
        let moved = sealed.replace("API_TOKEN", "OTHER_NAME");
        std::fs::write(dir.path().join(SEALED_FILE), moved)?;
        assert!(matches!(store.open("default", &["OTHER_NAME".into()]), Err(SecretError::WrongKey(_))));

        store.set("default", "B", b"x", 2)?;
        assert!(store.remove("default", "B")?);
        assert!(!store.remove("default", "B")?);
        assert_eq!(store.list("default")?, vec![SecretEntry { name: "OTHER_NAME".into(), created_at_ms: 1 }]);
        Ok(())
    }
}
