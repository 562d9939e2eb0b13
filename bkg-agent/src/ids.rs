//! Identifiers that sort by creation time and do not repeat: `PREFIX_<ms hex><random hex>`.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// Fills `buffer` from getrandom(2), which blocks only until the kernel's pool is first seeded:
/// the one source of the agent's random bytes (keys, salts, audit keys, ids, trace ids).
pub fn fill_random(buffer: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buffer).map_err(std::io::Error::from)
}

/// The random bytes of a `new_id`, after the 11 hex digits of its time in milliseconds.
const ID_RANDOM_BYTES: usize = 6;

pub fn new_id(prefix: &str) -> String {
    let mut random = [0u8; ID_RANDOM_BYTES];
    if fill_random(&mut random).is_err() {
        // The kernel's pool cannot run dry after boot; the pid and clock still keep ids apart.
        random[..4].copy_from_slice(&std::process::id().to_be_bytes());
    }
    format!("{prefix}_{:011x}{}", now_ms(), hex::encode(random))
}

/// Whether `text` is an id `new_id(prefix)` makes: the prefix, `_`, then lowercase hex digits,
/// 11 of the time and 2 per random byte.
pub fn is_new_id(text: &[u8], prefix: &str) -> bool {
    text.strip_prefix(prefix.as_bytes()).and_then(|rest| rest.strip_prefix(b"_")).is_some_and(|digits| {
        digits.len() == 11 + 2 * ID_RANDOM_BYTES && digits.iter().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let ids: std::collections::BTreeSet<_> = (0..1000).map(|_| new_id("run")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with("run_") && id.len() == 4 + 11 + 12));
    }
}
