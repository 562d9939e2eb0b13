//! Request rates per key: a token bucket per key that holds a minute's allowance and refills
//! continuously, so a key may burst up to its per-minute limit but not exceed it on average.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets untouched this long are full again and can be forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(120);
/// Above this many buckets, idle ones are swept on the next check.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s allowance of `per_minute`. Over it, the answer is how long
    /// to wait until the next request would be allowed.
    pub fn check(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < IDLE_FORGET);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }
}

/// `Retry-After` is whole seconds, rounded up so a client that waits exactly that long succeeds.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_allowance_bursts_then_refills() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(limiter.check("k", 6, start), Ok(()));
        }
        let wait = limiter.check("k", 6, start).err();
        assert_eq!(wait.map(retry_after_seconds), Some(10), "6/min refills one every 10 s");
        assert_eq!(limiter.check("other", 6, start), Ok(()), "keys have buckets of their own");
        assert_eq!(limiter.check("k", 6, start + Duration::from_secs(10)), Ok(()));
        assert!(limiter.check("k", 6, start + Duration::from_secs(10)).is_err());
    }
}
