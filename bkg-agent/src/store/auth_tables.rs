//! API keys, users and accepted rotation notices. Keys are kept only as SHA-256 hashes of the
//! secret; every change to a key is written to the audit log with it.

use bkg_schema::audit::{AuditEvent, ConfigChanged, Details, KeyChange};
use bkg_schema::auth::{KeyInfo, Role, UserInfo};
use rusqlite::{OptionalExtension, params};

use super::{Caller, Store, StoreError};

/// A key about to be stored: everything but the secret, which only its hash stands for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub hash: String,
    pub role: Role,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub user: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub created_by_key: Option<String>,
}

const KEY_COLUMNS: &str = "id, role, namespace, name, user, created_at_ms, expires_at_ms, rotated_at_ms, \
    revoked_at_ms, last_used_at_ms, created_by_key";

fn key_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    let role: String = row.get(1)?;
    let millis = |value: Option<i64>| value.map(|v| v.max(0) as u64);
    Ok(KeyInfo {
        id: row.get(0)?,
        // An unknown role cannot be in the table (only `Role::as_str` writes it); treat one as
        // the least privileged role rather than failing every listing.
        role: Role::parse(&role).unwrap_or(Role::ModelAccess),
        namespace: row.get(2)?,
        name: row.get(3)?,
        user: row.get(4)?,
        created_at_ms: row.get::<_, i64>(5)?.max(0) as u64,
        expires_at_ms: row.get::<_, i64>(6)?.max(0) as u64,
        rotated_at_ms: millis(row.get(7)?),
        revoked_at_ms: millis(row.get(8)?),
        last_used_at_ms: millis(row.get(9)?),
        created_by_key: row.get(10)?,
    })
}

/// What a key's record says of it, under `kind` (`Details::KeyCreated`, `Details::Login`…).
pub type KeyKind = fn(KeyChange) -> Details;

fn key_event(caller: &Caller, kind: KeyKind, key: &KeyInfo, deleted: bool) -> AuditEvent {
    let change = KeyChange { key_id: key.id.clone(), role: key.role, expires_at_ms: key.expires_at_ms, deleted };
    AuditEvent { namespace: key.namespace.clone(), ..AuditEvent::new(caller.actor.clone(), kind(change)) }
}

fn select_key(db: &rusqlite::Connection, id: &str) -> Result<Option<KeyInfo>, StoreError> {
    Ok(db.query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"), params![id], key_info).optional()?)
}

impl Store {
    /// Stores a new key, recorded as `kind`: `Details::KeyCreated`, or `Details::Login` for the
    /// session key a login issues.
    pub async fn insert_key(&self, caller: &Caller, kind: KeyKind, key: NewKey) -> Result<KeyInfo, StoreError> {
        let info = KeyInfo {
            id: key.id.clone(),
            role: key.role,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            user: key.user.clone(),
            created_at_ms: key.created_at_ms,
            expires_at_ms: key.expires_at_ms,
            rotated_at_ms: None,
            revoked_at_ms: None,
            last_used_at_ms: None,
            created_by_key: key.created_by_key.clone(),
        };
        let event = key_event(caller, kind, &info, false);
        self.record(event, move |db| {
            db.execute(
                "INSERT INTO api_keys (id, hash, role, namespace, name, user, created_at_ms, expires_at_ms,
                 created_by_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key.id,
                    key.hash,
                    key.role.as_str(),
                    key.namespace,
                    key.name,
                    key.user,
                    key.created_at_ms as i64,
                    key.expires_at_ms as i64,
                    key.created_by_key
                ],
            )?;
            Ok(())
        })
        .await?;
        Ok(info)
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>, StoreError> {
        let hash = hash.to_owned();
        self.with(move |db| {
            Ok(db
                .query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"), params![hash], key_info)
                .optional()?)
        })
        .await
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyInfo>, StoreError> {
        let id = id.to_owned();
        self.with(move |db| select_key(db, &id)).await
    }

    /// Every key, or those of one namespace, newest first.
    pub async fn list_keys(&self, namespace: Option<String>) -> Result<Vec<KeyInfo>, StoreError> {
        self.keys_where("?1 IS NULL OR namespace = ?1 ORDER BY created_at_ms DESC, id DESC", namespace).await
    }

    /// The keys `condition` (on `?1`, bound to `value`) selects.
    async fn keys_where(&self, condition: &'static str, value: Option<String>) -> Result<Vec<KeyInfo>, StoreError> {
        self.with(move |db| {
            let mut statement = db.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {condition}"))?;
            let rows = statement.query_map(params![value], key_info)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn key_used(&self, id: &str, now_ms: u64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            db.execute("UPDATE api_keys SET last_used_at_ms = ?2 WHERE id = ?1", params![id, now_ms as i64])?;
            Ok(())
        })
        .await
    }

    /// The keys key `id` made that are not revoked yet.
    pub async fn live_keys_made_by(&self, id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        self.keys_where("created_by_key = ?1 AND revoked_at_ms IS NULL", Some(id.to_owned())).await
    }

    /// Gives key `id` a new secret (its old one stops working at once) and a new expiry.
    /// `None` when there is no such key, or it is revoked.
    pub async fn rotate_key(
        &self,
        caller: &Caller,
        id: &str,
        new_hash: &str,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let Some(current) = self.get_key(id).await? else {
            return Ok(None);
        };
        if current.revoked_at_ms.is_some() {
            return Ok(None);
        }
        let rotated = KeyInfo { rotated_at_ms: Some(now_ms), expires_at_ms, ..current };
        let event = key_event(caller, Details::KeyRotated, &rotated, false);
        let (id, new_hash) = (id.to_owned(), new_hash.to_owned());
        let rotated = self
            .record(event, move |db| {
                let changed = db.execute(
                    "UPDATE api_keys SET hash = ?2, rotated_at_ms = ?3, expires_at_ms = ?4
                 WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, new_hash, now_ms as i64, expires_at_ms as i64],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                select_key(db, &id)
            })
            .await;
        self.key_changed();
        rotated
    }

    /// Revokes key `id`; revoking a revoked key changes nothing. `None` when there is no such key.
    pub async fn revoke_key(&self, caller: &Caller, id: &str, now_ms: u64) -> Result<Option<KeyInfo>, StoreError> {
        let Some(current) = self.get_key(id).await? else {
            return Ok(None);
        };
        if current.revoked_at_ms.is_some() {
            return Ok(Some(current));
        }
        let event = key_event(caller, Details::KeyRevoked, &current, false);
        let id = id.to_owned();
        let revoked = self
            .record(event, move |db| {
                db.execute(
                    "UPDATE api_keys SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, now_ms as i64],
                )?;
                select_key(db, &id)
            })
            .await;
        self.key_changed();
        revoked
    }

    /// Removes key `id` for good (it stops working at once); false when there was none.
    pub async fn delete_key(&self, caller: &Caller, id: &str) -> Result<bool, StoreError> {
        let Some(current) = self.get_key(id).await? else {
            return Ok(false);
        };
        let event = key_event(caller, Details::KeyRevoked, &current, true);
        let id = id.to_owned();
        let deleted = self
            .record_if_changed(event, move |db| Ok(db.execute("DELETE FROM api_keys WHERE id = ?1", params![id])? > 0))
            .await;
        self.key_changed();
        deleted
    }

    /// Tells whoever holds to a key (`key_changes`) to look at it again.
    fn key_changed(&self) {
        self.keys_changed.send_modify(|changes| *changes = changes.wrapping_add(1));
    }

    /// Moves on each time a key is rotated, revoked or deleted.
    pub fn key_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.keys_changed.subscribe()
    }

    /// Adds a user; false when the name is taken.
    pub async fn insert_user(
        &self,
        caller: &Caller,
        user: &UserInfo,
        password_hash: String,
    ) -> Result<bool, StoreError> {
        if self.user(&user.username).await?.is_some() {
            return Ok(false);
        }
        let event = AuditEvent {
            namespace: Some(user.namespace.clone()),
            ..AuditEvent::new(
                caller.actor.clone(),
                Details::ConfigChanged(ConfigChanged::UserCreated { user_created: user.username.clone() }),
            )
        };
        let user = user.clone();
        self.record_if_changed(event, move |db| {
            let inserted = db.execute(
                "INSERT OR IGNORE INTO users (username, namespace, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![user.username, user.namespace, password_hash, user.created_at_ms as i64],
            )?;
            Ok(inserted > 0)
        })
        .await
    }

    /// Removes `user`, their password hash with them; false when there was none.
    pub async fn delete_user(&self, caller: &Caller, user: &UserInfo) -> Result<bool, StoreError> {
        let event = AuditEvent {
            namespace: Some(user.namespace.clone()),
            ..AuditEvent::new(
                caller.actor.clone(),
                Details::ConfigChanged(ConfigChanged::UserRemoved { user_removed: user.username.clone() }),
            )
        };
        let username = user.username.clone();
        self.record_if_changed(event, move |db| {
            Ok(db.execute("DELETE FROM users WHERE username = ?1", params![username])? > 0)
        })
        .await
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        self.with(|db| {
            let mut statement = db.prepare("SELECT username, namespace, created_at_ms FROM users ORDER BY username")?;
            let rows = statement.query_map([], |row| {
                Ok(UserInfo {
                    username: row.get(0)?,
                    namespace: row.get(1)?,
                    created_at_ms: row.get::<_, i64>(2)?.max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The keys issued to user `username` (their logins' session keys) that are not revoked yet.
    pub async fn live_keys_of_user(&self, username: &str) -> Result<Vec<KeyInfo>, StoreError> {
        self.keys_where("user = ?1 AND revoked_at_ms IS NULL", Some(username.to_owned())).await
    }

    /// A user and their password hash.
    pub async fn user(&self, username: &str) -> Result<Option<(UserInfo, String)>, StoreError> {
        let username = username.to_owned();
        self.with(move |db| {
            Ok(db
                .query_row(
                    "SELECT username, namespace, created_at_ms, password_hash FROM users WHERE username = ?1",
                    params![username],
                    |row| {
                        Ok((
                            UserInfo {
                                username: row.get(0)?,
                                namespace: row.get(1)?,
                                created_at_ms: row.get::<_, i64>(2)?.max(0) as u64,
                            },
                            row.get(3)?,
                        ))
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Remembers an accepted rotation notice by its signature; false when it was seen before
    /// (a replay). Signatures older than `forget_before_ms` are dropped: their timestamps are
    /// stale by then, so a replay of them is refused anyway.
    pub async fn remember_notice(
        &self,
        signature: &str,
        body: &str,
        now_ms: u64,
        forget_before_ms: u64,
    ) -> Result<bool, StoreError> {
        let (signature, body) = (signature.to_owned(), body.to_owned());
        self.with(move |db| {
            let transaction = db.transaction()?;
            transaction
                .execute("DELETE FROM rotation_notices WHERE received_at_ms < ?1", params![forget_before_ms as i64])?;
            let inserted = transaction.execute(
                "INSERT OR IGNORE INTO rotation_notices (signature, received_at_ms, body) VALUES (?1, ?2, ?3)",
                params![signature, now_ms as i64, body],
            )?;
            transaction.commit()?;
            Ok(inserted > 0)
        })
        .await
    }
}
