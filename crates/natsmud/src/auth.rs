//! Password hashing (argon2id, off the async workers) and access tokens (JWT, HS256).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natsmud_protocol::{PlayerId, PlayerName};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub const ISSUER: &str = "natsmud";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or expired token")]
    BadToken,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("cannot read or write the JWT secret file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
}

/// Hashes and verifies passwords on the blocking pool, a bounded number at a time, so a wave
/// of logins queues up instead of stalling the game.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verified against when a username does not exist, so that a login for an unknown
    /// name takes as long as one with a wrong password.
    dummy_hash: Arc<str>,
}

fn hash_blocking(argon2: &Argon2<'_>, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Verifies with the parameters stored in the hash itself, so changing the configured cost
/// never locks anyone out.
fn verify_blocking(argon2: &Argon2<'_>, password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

impl Passwords {
    /// argon2id v19 with `memory_kib` and `iterations`, one lane. The defaults (19 MiB, 2)
    /// are OWASP's recommended minimum.
    pub fn new(concurrency: usize, memory_kib: u32, iterations: u32) -> Result<Self, AuthError> {
        let params = argon2::Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| AuthError::Hashing(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut random = [0u8; 16];
        OsRng.fill_bytes(&mut random);
        let dummy_hash = hash_blocking(&argon2, &hex(&random))?;
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Hashing(e.to_string()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&argon2, &password))
            .await
            .map_err(|e| AuthError::Hashing(e.to_string()))?
    }

    /// Checks `password` against `hash`, or against a dummy hash when there is no account.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let argon2 = self.argon2.clone();
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&argon2, &password, &hash))
            .await
            .unwrap_or(false);
        ok && exists
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub name: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, id: &PlayerId, name: &PlayerName) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = Claims {
            sub: id.to_string(),
            name: name.to_string(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::BadToken)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AuthError::BadToken)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configured secret, or the one kept in `data_dir/jwt_secret` (made on first start).
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<Vec<u8>, AuthError> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    let file_error = |source| AuthError::SecretFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(e)),
    }
    let mut random = [0u8; 32];
    OsRng.fill_bytes(&mut random);
    let secret = hex(&random);
    write_private(&path, &secret).map_err(file_error)?;
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_forgeries() {
        let tokens = Tokens::new(b"secret-one", Duration::from_secs(60));
        let id = PlayerId::parse("p1").unwrap_or_else(|e| panic!("{e}"));
        let name = PlayerName::parse("Alice").unwrap_or_else(|e| panic!("{e}"));
        let token = tokens.issue(&id, &name).unwrap_or_else(|e| panic!("{e}"));
        let claims = tokens.verify(&token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(claims.sub, "p1");
        let other = Tokens::new(b"secret-two", Duration::from_secs(60));
        assert!(other.verify(&token).is_err());
        assert!(tokens.verify("not.a.token").is_err());
        let expired = Tokens::new(b"secret-one", Duration::ZERO);
        let mut claims = Claims {
            sub: "p1".into(),
            name: "Alice".into(),
            iss: ISSUER.into(),
            iat: 0,
            exp: 1,
        };
        let old = jsonwebtoken::encode(&Header::default(), &claims, &expired.encoding)
            .unwrap_or_default();
        assert!(tokens.verify(&old).is_err());
        claims.iss = "someone-else".into();
        claims.exp = unix_now() + 60;
        let foreign =
            jsonwebtoken::encode(&Header::default(), &claims, &tokens.encoding).unwrap_or_default();
        assert!(tokens.verify(&foreign).is_err());
    }
}
