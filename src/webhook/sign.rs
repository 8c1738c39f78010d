//! Signing: the Standard Webhooks scheme through the `standardwebhooks` crate (no crypto of our
//! own). A secret is either `whsec_<base64>` (the form the specification's libraries generate)
//! or raw text, used as its bytes.

use standardwebhooks::Webhook;

/// The prefix of a base64 secret in the Standard Webhooks form.
const PREFIX: &str = "whsec_";
/// Fewest key bytes accepted: shorter HMAC keys are guessable.
const MIN_KEY_BYTES: usize = 16;

/// A `--webhook-secret` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `whsec_` followed by something that is not base64.
    #[error("--webhook-secret: the part after whsec_ is not valid base64")]
    NotBase64,
    /// Too few key bytes.
    #[error("--webhook-secret: at least {MIN_KEY_BYTES} bytes of key are needed (got {0})")]
    TooShort(usize),
}

/// Signs webhook requests.
pub struct Signer {
    webhook: Webhook,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Parses a secret in the `whsec_<base64>` form or raw.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let key_len = match secret.strip_prefix(PREFIX) {
            Some(encoded) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| SecretError::NotBase64)?.len()
            }
            None => secret.len(),
        };
        if key_len < MIN_KEY_BYTES {
            return Err(SecretError::TooShort(key_len));
        }
        let webhook = if secret.starts_with(PREFIX) {
            Webhook::new(secret).map_err(|_| SecretError::NotBase64)?
        } else {
            Webhook::from_bytes(secret.as_bytes().to_vec()).map_err(|_| SecretError::NotBase64)?
        };
        Ok(Self { webhook })
    }

    /// The `webhook-signature` header value for one attempt: `v1,<base64 HMAC-SHA256 of
    /// "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        // The crate fails only for a body that is not UTF-8, and a `&str` always is.
        self.webhook.sign(id, timestamp, body.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specification_example() {
        // The test vector of the Standard Webhooks reference libraries.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn raw_secrets_are_their_bytes_and_short_ones_are_refused() {
        let raw = Signer::new("a-raw-secret-of-enough-bytes").expect("valid");
        let same = Signer::new(&format!("whsec_{}", {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode("a-raw-secret-of-enough-bytes")
        }))
        .expect("valid");
        assert_eq!(raw.sign("id", 1, "{}"), same.sign("id", 1, "{}"));
        assert!(matches!(Signer::new("short"), Err(SecretError::TooShort(5))));
        assert!(matches!(Signer::new("whsec_%%%"), Err(SecretError::NotBase64)));
    }
}
