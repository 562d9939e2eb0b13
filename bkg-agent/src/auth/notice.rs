//! Key-rotation notices: signed with HMAC-SHA256 over `"<unix seconds>.<body>"` under a secret
//! shared with the peers, sent to the configured webhooks with bounded retries, and verified
//! (signature, freshness) when a peer sends one to us.

use std::time::Duration;

use bkg_schema::auth::{RotationNotice, SIGNATURE_HEADER};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A notice whose timestamp is further than this from our clock is refused.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Deliveries to one webhook: the first try and retries after 0.5, 1, 2 and 4 s.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// A secret shorter than this is refused at start-up.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    #[error("the webhook secret must be at least {MIN_SECRET_BYTES} bytes")]
    SecretTooShort,
    #[error("the {SIGNATURE_HEADER} header is missing or not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the notice's timestamp is more than 5 minutes away from the agent's clock")]
    Stale,
    #[error("cannot build the webhook client: {0}")]
    Client(String),
}

type HmacSha256 = Hmac<Sha256>;

/// The shared secret, ready to sign and verify.
#[derive(Clone)]
pub struct NoticeKey(HmacSha256);

impl NoticeKey {
    pub fn new(secret: &[u8]) -> Result<Self, NoticeError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(NoticeError::SecretTooShort);
        }
        <HmacSha256 as KeyInit>::new_from_slice(secret).map(Self).map_err(|_| NoticeError::SecretTooShort)
    }

    fn mac(&self, timestamp: u64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `X-Bkg-Signature` value for `body` sent at `timestamp` (unix seconds).
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> String {
        let digest = self.mac(timestamp, body).finalize().into_bytes();
        format!("t={timestamp},v1={}", hex::encode(digest))
    }

    /// Checks a signature header against `body` at `now` (unix seconds). On success returns
    /// the hex signature, which identifies the notice for replay protection.
    pub fn verify(&self, header: &str, body: &[u8], now: u64) -> Result<String, NoticeError> {
        let mut timestamp = None;
        let mut signature = None;
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => timestamp = value.parse::<u64>().ok(),
                Some(("v1", value)) => signature = Some(value.to_owned()),
                _ => {}
            }
        }
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(NoticeError::Malformed);
        };
        let bytes = hex::decode(&signature).map_err(|_| NoticeError::Malformed)?;
        // Constant-time comparison: timing must not leak how much of a forged signature was right.
        self.mac(timestamp, body).verify_slice(&bytes).map_err(|_| NoticeError::BadSignature)?;
        if now.abs_diff(timestamp) > MAX_SKEW.as_secs() {
            return Err(NoticeError::Stale);
        }
        Ok(signature.to_ascii_lowercase())
    }
}

/// Sends rotation notices to the configured webhooks.
#[derive(Clone)]
pub struct Notifier {
    urls: Vec<String>,
    key: Option<NoticeKey>,
    http: reqwest::Client,
}

/// How one delivery ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Failed,
}

impl Notifier {
    pub fn new(urls: Vec<String>, key: Option<NoticeKey>) -> Result<Self, NoticeError> {
        let http = crate::server::tls::client_builder()
            .map_err(|error| NoticeError::Client(error.to_string()))?
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|error| NoticeError::Client(error.to_string()))?;
        Ok(Self { urls, key, http })
    }

    /// The key that checks notices from peers; none without a configured secret.
    pub fn key(&self) -> Option<&NoticeKey> {
        self.key.as_ref()
    }

    /// Sends `notice` to every webhook in the background; `on_delivery` hears how each ended.
    pub fn send(&self, notice: &RotationNotice, on_delivery: impl Fn(Delivery) + Clone + Send + 'static) {
        let Some(key) = &self.key else {
            return;
        };
        let Ok(body) = serde_json::to_vec(notice) else {
            return;
        };
        let signature = key.sign(crate::ids::now_ms() / 1000, &body);
        for url in &self.urls {
            let (http, url, body, signature) = (self.http.clone(), url.clone(), body.clone(), signature.clone());
            let on_delivery = on_delivery.clone();
            tokio::spawn(async move {
                let outcome = deliver(&http, &url, body, &signature).await;
                on_delivery(outcome);
            });
        }
    }
}

/// One notice to one webhook. Every attempt carries the same signature, so a receiver that
/// took an earlier attempt answers the retry as a replay (409), which counts as delivered.
async fn deliver(http: &reqwest::Client, url: &str, body: Vec<u8>, signature: &str) -> Delivery {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let sent = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() || response.status() == reqwest::StatusCode::CONFLICT => {
                tracing::info!(%url, attempt, "rotation notice delivered");
                return Delivery::Delivered;
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                tracing::warn!(%url, status = %response.status(), "webhook refused the rotation notice");
                return Delivery::Failed;
            }
            Ok(response) => tracing::warn!(%url, attempt, status = %response.status(), "rotation notice not taken"),
            Err(error) => tracing::warn!(%url, attempt, %error, "rotation notice not delivered"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(%url, "gave up delivering a rotation notice");
    Delivery::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_notice_verifies_and_tampering_does_not() -> Result<(), NoticeError> {
        let key = NoticeKey::new(b"0123456789abcdef0123456789abcdef")?;
        let other = NoticeKey::new(b"another secret of enough length!")?;
        assert_eq!(NoticeKey::new(b"short").err(), Some(NoticeError::SecretTooShort));
        let header = key.sign(1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        let signature = key.verify(&header, b"{\"a\":1}", 1_700_000_100);
        assert_eq!(signature.as_deref().ok(), header.strip_prefix("t=1700000000,v1="));
        assert_eq!(key.verify(&header, b"{\"a\":2}", 1_700_000_000), Err(NoticeError::BadSignature));
        assert_eq!(other.verify(&header, b"{\"a\":1}", 1_700_000_000), Err(NoticeError::BadSignature));
        assert_eq!(key.verify(&header, b"{\"a\":1}", 1_700_000_301), Err(NoticeError::Stale));
        assert_eq!(key.verify(&header, b"{\"a\":1}", 1_699_999_699), Err(NoticeError::Stale));
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(key.verify(&moved, b"{\"a\":1}", 1_700_000_000), Err(NoticeError::BadSignature));
        for malformed in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "t=1,v1=abc"] {
            assert_eq!(key.verify(malformed, b"", 1), Err(NoticeError::Malformed), "{malformed}");
        }
        Ok(())
    }
}
