//! Who is looking at the Web UI: server-side sessions (a cookie names one; logging out forgets
//! it here, so the cookie is worthless from then on), their CSRF tokens, and the one-time login
//! tokens `bkg ui` hands out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::auth::rate::RateLimiter;
use crate::auth::{Principal, keys};
use crate::ids::now_ms;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "bkg_session";
/// The cookie that ties a login form to the browser that loaded it (login CSRF).
pub const LOGIN_COOKIE: &str = "bkg_login";

/// How long a session lasts at most; a session made from a session key ends with the key.
const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// How long a one-time login token of `bkg ui` may wait to be used.
const TOKEN_TTL_MS: u64 = 5 * 60 * 1000;
/// Login attempts per client address and minute.
pub const LOGINS_PER_MINUTE: u32 = 10;

/// Whom a session speaks for.
#[derive(Debug, Clone)]
pub enum Identity {
    /// An API key, by the hash of its secret: checked again on every request, so a revoked or
    /// expired key ends its sessions at once. `own` marks a session key made by a password
    /// login, revoked when the session is logged out.
    Key { hash: String, own: bool },
    /// The person at the machine who asked `bkg ui` over the socket (root or the agent's user).
    Local { uid: u32 },
}

#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
    expires_at_ms: u64,
}

/// The Web UI's state: sessions, one-time tokens, the login rate limit and the listener `bkg ui`
/// may start.
#[derive(Default)]
pub struct UiState {
    sessions: Mutex<HashMap<String, Session>>,
    /// A key's secret issued by a session's form, held for the page the form's answer sends the
    /// browser to, which shows it once: a reload of that page issues nothing again.
    secrets_to_show: Mutex<HashMap<String, bkg_schema::auth::IssuedKey>>,
    tokens: Mutex<HashMap<String, (u32, u64)>>,
    pub logins: RateLimiter,
    /// Where `bkg ui` sends the browser, once the daemon has said how it listens.
    pub listening: OnceLock<super::launch::Listening>,
    pub started_loopback: tokio::sync::Mutex<Option<SocketAddr>>,
}

/// 32 random bytes, hex.
pub fn random_token() -> Result<String, keys::KeyError> {
    let mut bytes = [0u8; 32];
    crate::ids::fill_random(&mut bytes).map_err(keys::KeyError::Random)?;
    Ok(hex::encode(bytes))
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl UiState {
    /// Opens a session; the answer is its id, for the cookie.
    pub fn open(&self, identity: Identity) -> Result<(String, Session), keys::KeyError> {
        let id = random_token()?;
        let session = Session { identity, csrf: random_token()?, expires_at_ms: now_ms() + SESSION_TTL_MS };
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = now_ms();
        sessions.retain(|_, session| session.expires_at_ms > now);
        sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    pub fn session(&self, id: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.get(id).filter(|session| session.expires_at_ms > now_ms()).cloned()
    }

    pub fn close(&self, id: &str) -> Option<Session> {
        self.secrets_to_show.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id)
    }

    /// Holds `issued` for session `id`'s next keys page (one at a time: a newer one replaces it).
    pub fn show_once(&self, id: &str, issued: bkg_schema::auth::IssuedKey) {
        self.secrets_to_show.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.to_owned(), issued);
    }

    /// The secret held for session `id`, given up as it is taken.
    pub fn take_shown_once(&self, id: &str) -> Option<bkg_schema::auth::IssuedKey> {
        self.secrets_to_show.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id)
    }

    /// A token that logs the socket peer `uid` in once, within `TOKEN_TTL_MS`.
    pub fn issue_token(&self, uid: u32) -> Result<String, keys::KeyError> {
        let token = random_token()?;
        let mut tokens = self.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = now_ms();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(keys::hash(&token), (uid, now + TOKEN_TTL_MS));
        Ok(token)
    }

    /// The uid a token was issued for; the token is spent whether or not it was still good.
    pub fn redeem_token(&self, token: &str) -> Option<u32> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tokens.remove(&keys::hash(token)).filter(|(_, expires)| *expires > now_ms()).map(|(uid, _)| uid)
    }

    /// Takes one login attempt from the allowance of `address`.
    pub fn charge_login(&self, address: &str) -> Result<(), std::time::Duration> {
        self.logins.check(&format!("ui-login:{address}"), LOGINS_PER_MINUTE, Instant::now())
    }
}

/// The principal a session speaks for now, or `None` when its key no longer works.
pub async fn principal(state: &crate::server::AppState, session: &Session) -> Option<Principal> {
    match &session.identity {
        Identity::Local { uid } => Some(Principal::Local { uid: *uid }),
        Identity::Key { hash, .. } => super::ops::key_principal(state, hash).await.ok(),
    }
}
