//! The hub's VAPID identity (RFC 8292): a P-256 key read from `--vapid-key` or generated once and
//! kept in `--data-dir`, and the `Authorization: vapid t=<JWT>, k=<key>` header it signs for a
//! push service.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};

/// How long a VAPID token is valid (RFC 8292 allows at most 24 h).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The file a generated key is kept in, inside `--data-dir`.
pub const KEY_FILE: &str = "vapid-key.pem";

/// Why the VAPID key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// The key file could not be read or written.
    #[error("VAPID key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a P-256 private key in PEM (PKCS#8 or SEC1).
    #[error(
        "VAPID key {0}: not a P-256 private key in PEM (PKCS#8 `BEGIN PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)"
    )]
    BadKey(PathBuf),
    /// The key could not be encoded or used for signing.
    #[error("VAPID key: {0}")]
    Encode(String),
}

/// The signing key and its public half as browsers want it.
pub struct Vapid {
    key: EncodingKey,
    /// Uncompressed public point, base64url without padding: the `applicationServerKey`.
    pub public_key: String,
    subject: String,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

impl Vapid {
    /// Reads `key_file`, or else the key kept in `data_dir` (generated and saved there on first
    /// start), or else a key for this process only.
    pub fn load(key_file: Option<&Path>, data_dir: Option<&Path>, subject: &str) -> Result<Self, VapidError> {
        let secret = match (key_file, data_dir) {
            (Some(path), _) => read_key(path)?,
            (None, Some(dir)) => {
                let path = dir.join(KEY_FILE);
                if path.exists() {
                    read_key(&path)?
                } else {
                    let key = SecretKey::random(&mut rand_core::OsRng);
                    write_key(&path, &key)?;
                    tracing::info!(path = %path.display(), "generated a VAPID key");
                    key
                }
            }
            (None, None) => {
                tracing::warn!(
                    "no --vapid-key or --data-dir: the VAPID key lasts until restart, and browsers' push subscriptions with it"
                );
                SecretKey::random(&mut rand_core::OsRng)
            }
        };
        Self::from_secret(&secret, subject)
    }

    fn from_secret(secret: &SecretKey, subject: &str) -> Result<Self, VapidError> {
        let pem = secret.to_pkcs8_pem(LineEnding::LF).map_err(|e| VapidError::Encode(e.to_string()))?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| VapidError::Encode(e.to_string()))?;
        let point = secret.public_key().as_affine().to_encoded_point(false);
        Ok(Self { key, public_key: URL_SAFE_NO_PAD.encode(point.as_bytes()), subject: subject.to_string() })
    }

    /// The `Authorization` header value for a request to `endpoint` (its origin is the `aud`).
    pub fn authorization(&self, endpoint: &reqwest::Url) -> Result<String, VapidError> {
        let aud = endpoint.origin().ascii_serialization();
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + TOKEN_LIFETIME;
        let claims = Claims { aud: &aud, exp: exp.as_secs(), sub: &self.subject };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| VapidError::Encode(e.to_string()))?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }
}

fn read_key(path: &Path) -> Result<SecretKey, VapidError> {
    let pem = std::fs::read_to_string(path).map_err(|source| VapidError::Io { path: path.into(), source })?;
    SecretKey::from_pkcs8_pem(&pem)
        .or_else(|_| SecretKey::from_sec1_pem(&pem))
        .map_err(|_| VapidError::BadKey(path.into()))
}

fn write_key(path: &Path, key: &SecretKey) -> Result<(), VapidError> {
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| VapidError::Encode(e.to_string()))?;
    let io = |source| VapidError::Io { path: path.into(), source };
    let tmp = path.with_extension("pem.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_kept_and_read_back() {
        let dir = std::env::temp_dir().join(format!("wshub-vapid-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Vapid::load(None, Some(&dir), "mailto:a@example.com").unwrap();
        let b = Vapid::load(None, Some(&dir), "mailto:a@example.com").unwrap();
        assert_eq!(a.public_key, b.public_key);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.public_key).unwrap().len(), 65);
        let c = Vapid::load(Some(&dir.join(KEY_FILE)), None, "mailto:a@example.com").unwrap();
        assert_eq!(a.public_key, c.public_key);
        std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
        assert!(matches!(Vapid::load(Some(&dir.join("bad.pem")), None, "x"), Err(VapidError::BadKey(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
