//! User passwords: argon2id (the crate's defaults: 19 MiB, 2 passes), as PHC strings.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use super::keys::KeyError;

/// Shortest password `signup` accepts.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(transparent)]
    Random(#[from] KeyError),
    #[error("hashing the password failed: {0}")]
    Hash(argon2::password_hash::Error),
}

pub fn hash(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    crate::ids::fill_random(&mut salt).map_err(KeyError::Random)?;
    let hashed = Argon2::default().hash_password_with_salt(password.as_bytes(), &salt).map_err(PasswordError::Hash)?;
    Ok(hashed.to_string())
}

/// A hash of no one's password, with the same parameters as real ones: checked when there is no
/// such user, so an unknown name takes as long to refuse as a wrong password.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Whether `password` matches the stored PHC string (`None`: no such user, never a match, but
/// after the same work); a malformed hash never matches.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let matches = Argon2::default().verify_password(password.as_bytes(), stored.unwrap_or(DECOY_HASH)).is_ok();
    matches && stored.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_only_the_right_password() -> Result<(), PasswordError> {
        let stored = hash("correct horse battery staple")?;
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse battery staple", Some(&stored)));
        assert!(!verify("correct horse battery stapler", Some(&stored)));
        assert!(!verify("anything", Some("not a hash")));
        assert!(!verify("anything", None));
        // The decoy must be a hash argon2 computes against, or unknown users would answer faster.
        assert!(argon2::password_hash::phc::PasswordHash::new(DECOY_HASH).is_ok());
        assert_ne!(hash("same")?, hash("same")?, "each hash has its own salt");
        Ok(())
    }
}
