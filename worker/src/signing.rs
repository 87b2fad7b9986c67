//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, sent as `webhook-signature: v1,<base64>`.
//!
//! The key is the base64 part of a `whsec_...` secret. It lives in a [`SecretSlice`], is zeroed on
//! drop and never appears in `Debug` output, errors or logs.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Shorter keys are guessable; the scheme's own examples use 24 bytes.
const MIN_KEY_BYTES: usize = 16;

/// Why a webhook secret cannot be used. Never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must start with {PREFIX:?}")]
    MissingPrefix,
    #[error("the part after {PREFIX:?} is not valid base64")]
    NotBase64,
    #[error("the key must be at least {MIN_KEY_BYTES} bytes")]
    TooShort,
}

/// Signs webhook messages with one key.
pub struct Signer {
    key: SecretSlice<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { key: [REDACTED] }")
    }
}

impl Signer {
    /// From a `whsec_<base64>` secret.
    pub fn new(secret: &SecretString) -> Result<Self, SecretError> {
        let encoded = secret
            .expose_secret()
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::TooShort);
        }
        Ok(Self { key: key.into() })
    }

    /// The `webhook-signature` header value for message `id` sent at `timestamp` (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // new_from_slice only fails for fixed-size-key MACs; HMAC takes any key length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(secret: &str) -> Result<Signer, SecretError> {
        Signer::new(&SecretString::from(secret))
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the reference implementations' test suites (standard-webhooks/libraries).
        let signer = signer("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signer.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn every_part_of_the_message_is_signed() {
        let s = signer("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let base = s.sign("msg_1", 1, b"{}");
        assert_ne!(base, s.sign("msg_2", 1, b"{}"));
        assert_ne!(base, s.sign("msg_1", 2, b"{}"));
        assert_ne!(base, s.sign("msg_1", 1, b"{ }"));
    }

    #[test]
    fn refuses_malformed_secrets_without_echoing_them() {
        assert_eq!(
            signer("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            signer("whsec_not base64!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(signer("whsec_c2hvcnQ=").unwrap_err(), SecretError::TooShort);
        let err = signer("whsec_hunter2hunter2!").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let debug = format!("{:?}", signer("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"));
        assert!(!debug.contains("C2FV"), "{debug}");
    }
}
