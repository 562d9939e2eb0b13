//! API key secrets: 256 random bits from the kernel, prefixed by role, and the SHA-256 hash
//! that is all the store keeps of them.

use base64::Engine as _;
use bkg_schema::auth::Role;
use sha2::{Digest, Sha256};

/// Random bytes in a key: 256 bits, so a fast hash is as good as a slow one for storage.
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the kernel's random source failed: {0}")]
    Random(std::io::Error),
}

/// A new key of `role`: `bkg_<role>_<43 base64url characters>`.
pub fn generate(role: Role) -> Result<String, KeyError> {
    let mut secret = [0u8; KEY_BYTES];
    crate::ids::fill_random(&mut secret).map_err(KeyError::Random)?;
    Ok(format!("{}{}", role.key_prefix(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)))
}

/// The hex SHA-256 of a key, as stored and looked up.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed_stably() -> Result<(), KeyError> {
        let first = generate(Role::Namespace)?;
        let second = generate(Role::Namespace)?;
        assert!(first.starts_with("bkg_ns_"));
        assert_eq!(first.len(), "bkg_ns_".len() + 43);
        assert_ne!(first, second);
        assert_eq!(hash(&first), hash(&first));
        assert_ne!(hash(&first), hash(&second));
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        Ok(())
    }
}
