//! Who is calling (an API key's principal) and the keys themselves: users (signup, listing and
//! removal by an admin, login with a password), API keys (create, list, get, rotate, revoke,
//! delete), session refresh and signed rotation notices from peers.

use std::net::SocketAddr;
use std::time::Duration;

use bkg_schema::audit::{ANONYMOUS_ACTOR, AuditEvent, Details, LoginRefused};
use bkg_schema::auth::{
    CreateKeyRequest, IssuedKey, KEY_ROTATED_EVENT, KeyInfo, LoginRequest, NoticeAccepted, Role, RotationNotice,
    SignupRequest, UserInfo,
};
use bkg_schema::sandbox::is_dns_label;
use bkg_schema::units::format_duration_ms;

use super::access::{AdminTask, check_namespace_name, manages, may_create_key, namespace_for, require_admin};
use super::files::Chunks;
use super::{OpError, OpResult, Service};
use crate::auth::notice::{Delivery, MAX_SKEW};
use crate::auth::{Principal, keys, password};
use crate::ids::{new_id, now_ms};
use crate::store::{Caller, KeyKind, NewKey};

/// Requests without a key (login, peers' rotation notices) allowed per client address and
/// minute: enough for people and peers, too few to guess passwords.
pub const KEYLESS_ROUTES_PER_MINUTE: u32 = 30;

/// How often a key's `last_used_at_ms` is written, at most.
const LAST_USED_EVERY_MS: u64 = 60_000;

/// A rotation notice as it arrived: the signature header and the body it signs.
pub struct SignedNotice<'a> {
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// A key to issue.
struct Wanted {
    role: Role,
    namespace: Option<String>,
    name: Option<String>,
    user: Option<String>,
    ttl_ms: u64,
    /// The key that makes it (`KeyInfo::created_by_key`).
    created_by_key: Option<String>,
    /// When it must have expired at the latest: a key made by a key that is not an admin's ends
    /// with its maker (`lifetime_cap`).
    until_ms: Option<u64>,
}

/// The latest a key `principal` makes or rotates may live to: its own expiry, if it is a key and
/// not an admin's. A namespace key's session and model-access keys are its extensions (as
/// `revoke_made_keys` treats them), so a short-lived key must not live on through them, nor
/// renew itself (or a key of its namespace that renews it back) past the lifetime it was given.
fn lifetime_cap(principal: &Principal) -> Option<u64> {
    match principal {
        Principal::Key(key) if key.role != Role::Admin => Some(key.expires_at_ms),
        _ => None,
    }
}

fn hashing_failed<E>(_: E) -> OpError {
    OpError::Internal("the hashing task failed".into())
}

impl Service {
    /// The key behind `secret`, if it is known, unexpired and unrevoked.
    pub async fn authenticate_key(&self, secret: &str) -> OpResult<Principal> {
        self.authenticate_key_hash(&keys::hash(secret)).await
    }

    /// The key whose secret hashes to `hash`, as [`authenticate_key`](Self::authenticate_key)
    /// (the Web UI's sessions keep the hash, never the secret).
    pub async fn authenticate_key_hash(&self, hash: &str) -> OpResult<Principal> {
        let Some(key) = self.store.key_by_hash(hash).await? else {
            return Err(OpError::Unauthorized("unknown API key".into()));
        };
        self.usable_key(key)
    }

    /// `key` as the caller it speaks for, if it is unexpired and unrevoked (its use noted).
    pub(super) fn usable_key(&self, key: KeyInfo) -> OpResult<Principal> {
        let now = now_ms();
        if key.revoked_at_ms.is_some() {
            return Err(OpError::Unauthorized(format!("API key {} is revoked", key.id)));
        }
        if key.expires_at_ms <= now {
            return Err(OpError::Unauthorized(format!("API key {} has expired", key.id)));
        }
        self.note_key_use(&key.id, now);
        Ok(Principal::Key(key))
    }

    /// Records when a key was last used, at most once a minute per key, off the request's path.
    fn note_key_use(&self, key_id: &str, now: u64) {
        {
            let mut written = self.auth.last_used_written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if written.get(key_id).is_some_and(|at| now.saturating_sub(*at) < LAST_USED_EVERY_MS) {
                return;
            }
            written.insert(key_id.to_owned(), now);
        }
        let (store, key_id) = (self.store.clone(), key_id.to_owned());
        tokio::spawn(async move {
            if let Err(error) = store.key_used(&key_id, now).await {
                tracing::warn!(%error, key = %key_id, "could not record the key's use");
            }
        });
    }

    fn ttl_ms(&self, role: Role) -> u64 {
        u64::try_from(self.auth.policy.ttl.get(role).as_millis()).unwrap_or(u64::MAX)
    }

    /// Makes and stores a new key, recorded as `kind`; the secret is returned once and never kept.
    async fn issue(&self, caller: &Caller, kind: KeyKind, wanted: Wanted) -> OpResult<IssuedKey> {
        let Wanted { role, namespace, name, user, ttl_ms, created_by_key, until_ms } = wanted;
        let secret = keys::generate(role).map_err(|error| OpError::Internal(error.to_string()))?;
        let now = now_ms();
        let new = NewKey {
            id: new_id("key"),
            hash: keys::hash(&secret),
            role,
            namespace,
            name,
            user,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms).min(until_ms.unwrap_or(u64::MAX)),
            created_by_key,
        };
        let info = self.store.insert_key(caller, kind, new).await?;
        Ok(IssuedKey { key: secret, info })
    }

    async fn managed_key(&self, principal: &Principal, id: &str) -> OpResult<KeyInfo> {
        match self.store.get_key(id).await? {
            Some(key) if manages(principal, &key) => Ok(key),
            _ => Err(OpError::NotFound(format!("no key {}", bkg_schema::auth::shown_as_id(id)))),
        }
    }

    /// Creates a user who can log in to one namespace.
    pub async fn sign_up(&self, principal: &Principal, request: SignupRequest) -> OpResult<UserInfo> {
        require_admin(principal, AdminTask::SignUp)?;
        if !is_dns_label(&request.username) {
            return Err(OpError::Invalid("the username must be a DNS label (a-z, 0-9, -)".into()));
        }
        check_namespace_name(&request.namespace)?;
        if request.password.chars().count() < password::MIN_PASSWORD_CHARS {
            return Err(OpError::Invalid(format!(
                "the password must have at least {} characters",
                password::MIN_PASSWORD_CHARS
            )));
        }
        let secret = request.password;
        // argon2id takes tens of milliseconds of CPU: not on the async workers.
        let hash = tokio::task::spawn_blocking(move || password::hash(&secret))
            .await
            .map_err(hashing_failed)?
            .map_err(|error| OpError::Internal(error.to_string()))?;
        let user = UserInfo { username: request.username, namespace: request.namespace, created_at_ms: now_ms() };
        let caller = principal.audit_caller(&user.namespace);
        if !self.store.insert_user(&caller, &user, hash).await? {
            return Err(OpError::Conflict(format!("user `{}` exists", user.username)));
        }
        Ok(user)
    }

    /// Exchanges a user's password for a session key of their namespace. A refusal is recorded
    /// in the audit log with the client's `address` (found by a new-user trial: guessing a
    /// user's password left no record to investigate); the rate limit on logins per address
    /// (server.rs) bounds how many.
    pub async fn log_in(&self, request: LoginRequest, address: Option<SocketAddr>) -> OpResult<IssuedKey> {
        let user = self.store.user(&request.username).await?;
        let stored_hash = user.as_ref().map(|(_, hash)| hash.clone());
        let secret = request.password;
        let matches = tokio::task::spawn_blocking(move || password::verify(&secret, stored_hash.as_deref()))
            .await
            .map_err(hashing_failed)?;
        let user = match user {
            Some((user, _)) if matches => user,
            refused => {
                let user = refused.map(|(user, _)| user);
                let details = LoginRefused {
                    username: user.as_ref().map(|user| user.username.clone()),
                    address: address.map(|address| address.to_string()),
                };
                let event = AuditEvent {
                    namespace: user.map(|user| user.namespace),
                    ..AuditEvent::new(ANONYMOUS_ACTOR, Details::LoginRefused(details))
                };
                self.store.note(event).await?;
                return Err(OpError::Unauthorized("wrong username or password".into()));
            }
        };
        let caller = Caller { actor: format!("user:{}", user.username), namespace: user.namespace.clone() };
        let wanted = Wanted {
            role: Role::Session,
            namespace: Some(user.namespace),
            name: None,
            user: Some(user.username),
            ttl_ms: self.ttl_ms(Role::Session),
            created_by_key: None,
            until_ms: None,
        };
        let issued = self.issue(&caller, Details::Login, wanted).await?;
        if self.user_removed_meanwhile(&caller, &issued).await? {
            return Err(OpError::Unauthorized("wrong username or password".into()));
        }
        Ok(issued)
    }

    /// Whether the user `issued` was made for was removed while it was being made, which
    /// `remove_user`'s sweep of their keys may have missed: then it is revoked here. A login
    /// checks the password, then issues its key tens of milliseconds later; a removal in between
    /// must still shut the user out.
    async fn user_removed_meanwhile(&self, caller: &Caller, issued: &IssuedKey) -> OpResult<bool> {
        let Some(user) = &issued.info.user else { return Ok(false) };
        if self.store.user(user).await?.is_some() {
            return Ok(false);
        }
        self.store.revoke_key(caller, &issued.info.id, now_ms()).await?;
        Ok(true)
    }

    /// Every user, by name (admins only).
    pub async fn list_users(&self, principal: &Principal) -> OpResult<Vec<UserInfo>> {
        require_admin(principal, AdminTask::ManageUsers)?;
        Ok(self.store.users().await?)
    }

    /// Removes a user: their password goes with them, and every key of theirs still active (their
    /// logins' session keys, and what those made) is revoked as `revoke_key` revokes it, so the
    /// runs and streams those keys hold end as well. Revoking their session keys alone lasted
    /// only until their next login (found by a new-user trial).
    pub async fn remove_user(&self, principal: &Principal, username: &str) -> OpResult<()> {
        require_admin(principal, AdminTask::ManageUsers)?;
        if !is_dns_label(username) {
            return Err(OpError::Invalid("a username is a DNS label (a-z, 0-9, -)".into()));
        }
        let unknown = || OpError::NotFound(format!("no user `{username}`"));
        let removed = match self.store.user(username).await? {
            Some((user, _)) => self.store.delete_user(&principal.audit_caller(&user.namespace), &user).await?,
            None => false,
        };
        // Swept after the row is gone: no login succeeds from here on, and a key one was issuing
        // meanwhile is revoked by that login itself (`user_removed_meanwhile`). A removal whose
        // sweep broke off (a store error) is finished by asking again: the user is gone, their
        // keys are not.
        let live = self.store.live_keys_of_user(username).await?;
        if !removed && live.is_empty() {
            return Err(unknown());
        }
        for key in live {
            match self.revoke_key(principal, &key.id).await {
                // Deleted since it was listed: it works no more than a revoked one.
                Ok(_) | Err(OpError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Trades the session key in use for a new one with a fresh lifetime; the old one is revoked.
    pub async fn refresh_session(&self, principal: &Principal) -> OpResult<IssuedKey> {
        let Principal::Key(current) = principal else {
            return Err(OpError::Forbidden("refresh needs the session key to refresh; a socket peer has none".into()));
        };
        if current.role != Role::Session {
            return Err(OpError::Forbidden("only session keys are refreshed; rotate other keys".into()));
        }
        let caller = principal.audit_caller(current.namespace.as_deref().unwrap_or_default());
        // A session a key made ends with that key, and within the lifetime that key gave it:
        // refreshed, it gets a new secret, not a longer life (was: --session-key-ttl again at each
        // refresh, so an admin's 20-minute session key lived for ever; found by a new-user trial).
        // A login's session slides: its holder could log in again.
        let until_ms = match &current.created_by_key {
            Some(maker) => match self.store.get_key(maker).await? {
                Some(maker) if maker.role == Role::Admin || maker.is_active(now_ms()) => {
                    let given = current.expires_at_ms;
                    Some(lifetime_cap(&Principal::Key(maker)).map_or(given, |cap| cap.min(given)))
                }
                _ => {
                    return Err(OpError::Unauthorized(
                        "the key that made this session has expired or was revoked: the session cannot be refreshed"
                            .into(),
                    ));
                }
            },
            // A login's session names its user. One a socket peer made keeps its end (found by a
            // new-user trial: refreshed each hour, it outlived its maker's membership of the
            // socket's group for ever).
            None if current.user.is_some() => None,
            None => Some(current.expires_at_ms),
        };
        let wanted = Wanted {
            role: Role::Session,
            namespace: current.namespace.clone(),
            name: current.name.clone(),
            user: current.user.clone(),
            ttl_ms: self.ttl_ms(Role::Session),
            // The same session, so the same lineage: revoking the key that made the first still
            // ends it.
            created_by_key: current.created_by_key.clone(),
            until_ms,
        };
        let issued = self.issue(&caller, Details::KeyCreated, wanted).await?;
        self.store.revoke_key(&caller, &current.id, now_ms()).await?;
        if self.user_removed_meanwhile(&caller, &issued).await? {
            return Err(OpError::Unauthorized("the user this session was for has been removed".into()));
        }
        Ok(issued)
    }

    /// Creates an API key: admins any; a namespace key session and model-access keys of its
    /// namespace.
    pub async fn create_key(&self, principal: &Principal, request: CreateKeyRequest) -> OpResult<IssuedKey> {
        may_create_key(principal, request.role)?;
        let namespace = match (request.role, request.namespace) {
            (Role::Admin, None) => None,
            (Role::Admin, Some(_)) => {
                return Err(OpError::Invalid("admin keys reach every namespace; give none".into()));
            }
            (_, asked) => {
                if principal.is_admin() && asked.is_none() {
                    return Err(OpError::Invalid(format!(
                        "a {} key needs a namespace (`namespace`, bkg keys create --namespace NS)",
                        request.role.as_str()
                    )));
                }
                Some(namespace_for(principal, asked.as_deref())?)
            }
        };
        let role_ttl = self.ttl_ms(request.role);
        let ttl = match request.ttl_seconds {
            None => role_ttl,
            Some(0) => return Err(OpError::Invalid("ttl_seconds (bkg keys create --ttl) must be above zero".into())),
            Some(seconds) if seconds.saturating_mul(1000) > role_ttl => {
                let role = request.role.as_str();
                return Err(OpError::Invalid(format!(
                    "a lifetime of {} (ttl_seconds, bkg keys create --ttl) is above the {role} role's {allowed} (the \
                     agent's --{role}-key-ttl): ask for {allowed} or less",
                    format_duration_ms(seconds.saturating_mul(1000)),
                    allowed = format_duration_ms(role_ttl),
                )));
            }
            Some(seconds) => seconds * 1000,
        };
        if let Some(name) = &request.name
            && (name.is_empty() || name.chars().count() > 200)
        {
            return Err(OpError::Invalid("a key's name has 1 to 200 characters".into()));
        }
        // Names are printed in tables and logs: a control character could rewrite a terminal.
        if let Some(name) = &request.name
            && name.chars().any(char::is_control)
        {
            return Err(OpError::Invalid(
                "a key's name may not hold control characters (tabs, newlines, escapes)".into(),
            ));
        }
        let caller = principal.audit_caller(namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
        let maker = match principal {
            Principal::Key(key) => Some(key.id.clone()),
            _ => None,
        };
        let wanted = Wanted {
            role: request.role,
            namespace,
            name: request.name,
            user: None,
            ttl_ms: ttl,
            created_by_key: maker,
            until_ms: lifetime_cap(principal),
        };
        let issued = self.issue(&caller, Details::KeyCreated, wanted).await?;
        // The maker revoked while this was being made: the revocation missed it, so it goes now
        // (an admin key's keys outlive it, as `revoke_made_keys` says).
        if let Principal::Key(maker) = principal
            && maker.role != Role::Admin
            && self.store.get_key(&maker.id).await?.is_none_or(|maker| maker.revoked_at_ms.is_some())
        {
            self.revoke_made_keys(&caller, maker).await?;
            return Err(OpError::Unauthorized("the key that made this request was revoked".into()));
        }
        Ok(issued)
    }

    /// Revokes the keys `key` made, and theirs, unless `key` is an admin's: an admin's keys
    /// are the namespaces' own, made for them (revoking an old admin key must not end every
    /// team's access), while a namespace key's session and model-access keys are its own
    /// extensions, and must not outlive it (a leaked key revoked would live on through them).
    async fn revoke_made_keys(&self, caller: &Caller, key: &KeyInfo) -> OpResult<()> {
        if key.role == Role::Admin {
            return Ok(());
        }
        let mut makers = vec![key.id.clone()];
        while let Some(maker) = makers.pop() {
            for made in self.store.live_keys_made_by(&maker).await? {
                self.store.revoke_key(caller, &made.id, now_ms()).await?;
                makers.push(made.id);
            }
        }
        Ok(())
    }

    /// The keys the caller may manage, newest first.
    pub async fn list_keys(&self, principal: &Principal) -> OpResult<Vec<KeyInfo>> {
        let keys = self.store.list_keys(principal.namespace().map(str::to_owned)).await?;
        Ok(keys.into_iter().filter(|key| manages(principal, key)).collect())
    }

    pub async fn get_key(&self, principal: &Principal, id: &str) -> OpResult<KeyInfo> {
        self.managed_key(principal, id).await
    }

    /// Gives a key a new secret and a fresh lifetime as long as the one it was issued with (at
    /// most its role's, and, rotated by a key that is not an admin's, at most that key's: a key
    /// rotating itself keeps its expiry); the old secret stops working at once and webhooks hear
    /// of it.
    pub async fn rotate_key(&self, principal: &Principal, id: &str) -> OpResult<IssuedKey> {
        let key = self.managed_key(principal, id).await?;
        if key.revoked_at_ms.is_some() {
            return Err(OpError::Conflict(format!("key {id} is revoked; a revoked key cannot be rotated")));
        }
        let now = now_ms();
        if key.expires_at_ms <= now {
            return Err(OpError::Conflict(format!(
                "key {id} has expired; an expired key cannot be rotated: create a new one (bkg keys create)"
            )));
        }
        let secret = keys::generate(key.role).map_err(|error| OpError::Internal(error.to_string()))?;
        // The key's own lifetime (what it was issued or last rotated with), within its role's.
        let own_ttl = key.expires_at_ms.saturating_sub(key.rotated_at_ms.unwrap_or(key.created_at_ms));
        let expires = now
            .saturating_add(own_ttl.clamp(1, self.ttl_ms(key.role)))
            .min(lifetime_cap(principal).unwrap_or(u64::MAX));
        let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
        let Some(info) = self.store.rotate_key(&caller, id, &keys::hash(&secret), now, expires).await? else {
            return Err(OpError::Conflict(format!("key {id} was revoked meanwhile")));
        };
        let notice = RotationNotice {
            event: KEY_ROTATED_EVENT.into(),
            key_id: info.id.clone(),
            role: info.role,
            namespace: info.namespace.clone(),
            rotated_at_ms: now,
            expires_at_ms: info.expires_at_ms,
            agent: agent_name(),
        };
        let metrics = std::sync::Arc::clone(&self.metrics);
        self.auth.notifier.send(&notice, move |delivery| metrics.webhook_delivery(delivery == Delivery::Delivered));
        Ok(IssuedKey { key: secret, info })
    }

    /// Revokes a key: it gets 401 from its next request on. Revoking twice changes nothing.
    pub async fn revoke_key(&self, principal: &Principal, id: &str) -> OpResult<KeyInfo> {
        let key = self.managed_key(principal, id).await?;
        let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
        let revoked = self
            .store
            .revoke_key(&caller, id, now_ms())
            .await?
            .ok_or_else(|| OpError::NotFound(format!("no key {}", bkg_schema::auth::shown_as_id(id))))?;
        self.revoke_made_keys(&caller, &key).await?;
        Ok(revoked)
    }

    /// Deletes a key for good.
    pub async fn delete_key(&self, principal: &Principal, id: &str) -> OpResult<()> {
        let key = self.managed_key(principal, id).await?;
        let caller = principal.audit_caller(key.namespace.as_deref().unwrap_or(bkg_schema::DEFAULT_NAMESPACE));
        if !self.store.delete_key(&caller, id).await? {
            return Err(OpError::NotFound(format!("no key {}", bkg_schema::auth::shown_as_id(id))));
        }
        self.revoke_made_keys(&caller, &key).await
    }

    /// Accepts a peer's key-rotation notice: its signature (HMAC under the shared webhook
    /// secret, within `MAX_SKEW`) is the credential, and each notice is accepted once.
    pub async fn accept_rotation_notice(&self, notice: SignedNotice<'_>) -> OpResult<NoticeAccepted> {
        let Some(key) = self.auth.notifier.key() else {
            return Err(OpError::Unauthorized("this agent has no webhook secret, so it cannot check notices".into()));
        };
        let now = now_ms();
        let signature = key
            .verify(notice.signature, notice.body, now / 1000)
            .map_err(|error| OpError::Unauthorized(error.to_string()))?;
        let parsed: RotationNotice = match serde_json::from_slice::<serde_json::Value>(notice.body) {
            Err(error) => return Err(OpError::BadRequest(format!("invalid request body: {error}"))),
            Ok(value) if !value.is_object() => {
                return Err(OpError::Invalid("the request body must be a JSON object".into()));
            }
            Ok(value) => serde_json::from_value(value)
                .map_err(|error| OpError::Invalid(format!("invalid request body: {error}")))?,
        };
        if parsed.event != KEY_ROTATED_EVENT {
            return Err(OpError::Invalid(format!("unknown event `{}`", parsed.event)));
        }
        let forget_before = now.saturating_sub(2 * MAX_SKEW.as_millis() as u64);
        let body_text = String::from_utf8_lossy(notice.body);
        if !self.store.remember_notice(&signature, &body_text, now, forget_before).await? {
            return Err(OpError::Replayed("this notice was already accepted".into()));
        }
        tracing::info!(key = %parsed.key_id, agent = %parsed.agent, role = parsed.role.as_str(), "a peer rotated a key");
        Ok(NoticeAccepted { accepted: true, key_id: parsed.key_id })
    }
}

fn agent_name() -> String {
    let host = nix::unistd::gethostname().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{host}/{}", std::process::id())
}

/// The key a stream, a transfer or a run was started with, which it stays held to: checked
/// before each piece a stream sends (`check`), or waited on (`lost`). A peer on the socket
/// holds no key.
#[derive(Clone)]
pub(super) struct KeyHold {
    store: crate::store::Store,
    key: KeyInfo,
    /// Moves when any key is rotated, revoked or deleted: the store is asked again only then.
    /// The store moves it before the change's own answer goes out, so a piece sent after a
    /// caller heard "revoked" is always checked against the change.
    changes: tokio::sync::watch::Receiver<u64>,
}

impl KeyHold {
    pub(super) fn of(store: &crate::store::Store, principal: &Principal) -> Option<Self> {
        match principal {
            Principal::Key(key) => {
                let mut changes = store.key_changes();
                // The key may have changed since the request was let in: the first check asks.
                changes.mark_changed();
                Some(Self { store: store.clone(), key: key.clone(), changes })
            }
            Principal::Local { .. } | Principal::User(_) => None,
        }
    }

    pub(super) fn key(&self) -> &KeyInfo {
        &self.key
    }

    /// Why the key no longer speaks for what it holds (expired, or revoked, rotated or deleted
    /// since the last check), if it does not; the store is asked only after a key changed.
    pub(super) async fn check(&mut self) -> Option<&'static str> {
        if self.key.expires_at_ms <= now_ms() {
            return Some("the key has expired");
        }
        if !self.changes.has_changed().unwrap_or(false) {
            return None;
        }
        self.changes.borrow_and_update();
        self.refusal().await
    }

    /// Why the key no longer speaks for the stream (revoked, rotated, deleted or expired since),
    /// if it does not; a key that cannot be looked up is refused too.
    async fn refusal(&self) -> Option<&'static str> {
        match self.store.get_key(&self.key.id).await {
            Ok(Some(now)) if now.revoked_at_ms.is_some() => Some("the key was revoked"),
            Ok(Some(now)) if now.rotated_at_ms != self.key.rotated_at_ms => {
                Some("the key was rotated: its old secret no longer opens this stream")
            }
            Ok(Some(now)) if now.expires_at_ms <= now_ms() => Some("the key has expired"),
            Ok(Some(_)) => None,
            Ok(None) => Some("the key was deleted"),
            Err(_) => Some("the key could not be checked"),
        }
    }

    /// `chunks` as they come, until the key (if any) no longer speaks for them: then an error
    /// saying why, and the end. A transfer's upload fails with it and keeps nothing, a download
    /// or a followed log ends.
    pub(super) fn hold_chunks(hold: Option<Self>, chunks: Chunks) -> Chunks {
        let Some(hold) = hold else { return chunks };
        let (sender, held) = bkg_schema::chunks::channel();
        hold.forward(chunks, sender, |_| false, |reason| Some(Err(std::io::Error::other(reason))));
        held
    }

    /// Forwards `items` to `to` as they come, until the key no longer speaks for them: then the
    /// source is dropped, `cut(reason)` makes the last item, if any, and the forwarding ends.
    /// Waited on while no item comes (a quiet stream ends with its key too), checked again before
    /// each one that does. It ends as well at the source's end, at `to`'s, and after an item
    /// `is_last` says closes the stream (nothing is cut after it).
    pub(super) fn forward<T: Send + 'static>(
        mut self,
        mut items: tokio::sync::mpsc::Receiver<T>,
        to: tokio::sync::mpsc::Sender<T>,
        is_last: fn(&T) -> bool,
        cut: impl FnOnce(&'static str) -> Option<T> + Send + 'static,
    ) {
        tokio::spawn(async move {
            let waiter = self.clone();
            let lost = waiter.lost();
            tokio::pin!(lost);
            let reason = loop {
                let item = tokio::select! {
                    reason = &mut lost => break reason,
                    item = items.recv() => item,
                };
                let Some(item) = item else { return };
                if let Some(reason) = self.check().await {
                    break reason;
                }
                let last = is_last(&item);
                if to.send(item).await.is_err() || last {
                    return;
                }
            };
            drop(items);
            if let Some(item) = cut(reason) {
                let _ = to.send(item).await;
            }
        });
    }

    /// Resolves, with the reason, once the key no longer speaks for what it holds: when it is
    /// rotated, revoked or deleted (the store says so) or at its expiry.
    pub(super) async fn lost(&self) -> &'static str {
        let mut changes = self.changes.clone();
        loop {
            if let Some(reason) = self.refusal().await {
                return reason;
            }
            let left = Duration::from_millis(self.key.expires_at_ms.saturating_sub(now_ms()));
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The store is gone with the agent; only the expiry is left to wait for.
                        tokio::time::sleep(left).await;
                    }
                }
                () = tokio::time::sleep(left) => {}
            }
        }
    }
}
