//! Identifiers that sort by creation time and do not repeat: `PREFIX_<ms hex><random hex>`.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

pub fn new_id(prefix: &str) -> String {
    let mut random = [0u8; 6];
    // SAFETY: getrandom writes at most `random.len()` bytes into the buffer we own.
    let filled = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if filled != random.len() as isize {
        // The kernel's pool cannot run dry after boot; the pid and clock still keep ids apart.
        random[..4].copy_from_slice(&std::process::id().to_be_bytes());
    }
    let random: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}_{:011x}{random}", now_ms())
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
