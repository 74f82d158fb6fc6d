//! Password hashing (argon2id, on a fixed pool of threads) and access tokens (JWT, HS256).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use natsmud_protocol::{PlayerId, PlayerName};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::telemetry;

pub const ISSUER: &str = "natsmud";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or expired token")]
    BadToken,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// Every hashing thread is busy and the queue is full; try again after the duration.
    #[error("password hashing is busy")]
    Busy(Duration),
    #[error("cannot read or write the JWT secret file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
}

/// Hashes and verifies passwords on a fixed pool of threads, each keeping one argon2 memory
/// buffer for its whole life, fed by a short queue. Memory for hashing is thus bounded by
/// threads × memory cost however many logins arrive (a thread per request, as the blocking
/// pool gives, leaves each thread's allocator arena holding its blocks for good), and a
/// request that would wait long is refused at once instead (see [`AuthError::Busy`]).
#[derive(Clone)]
pub struct Passwords {
    shared: Arc<Shared>,
    /// Verified against when a username does not exist, so that a login for an unknown
    /// name costs as much as one with a wrong password.
    dummy_hash: Arc<str>,
}

struct Shared {
    jobs: mpsc::Sender<Job>,
    threads: usize,
    /// Requests admitted and not yet finished (waiting or hashing): at most threads + queue.
    admitted: AtomicUsize,
    capacity: usize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// A running average of one hash's duration, in microseconds, for `Retry-After`.
    average_micros: AtomicU64,
    params: Params,
}

enum Work {
    Hash { password: String },
    Verify { password: String, hash: String },
}

enum Done {
    Hashed(Result<String, AuthError>),
    Verified(bool),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Done>,
}

/// Gives back the admission when a request finishes, however it finishes.
struct Admitted<'a>(&'a Shared);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    /// The pool the configuration asks for.
    pub fn from_config(config: &Config) -> Result<Self, AuthError> {
        Self::new(
            config.hashing_threads(),
            config.hashing_queue as usize,
            config.password_hash_memory_kib,
            config.password_hash_iterations,
        )
    }

    /// argon2id v19 with `memory_kib` and `iterations`, one lane, on `threads` threads with
    /// up to `queue` requests waiting. The defaults (19 MiB, 2) are OWASP's recommended
    /// minimum.
    pub fn new(
        threads: usize,
        queue: usize,
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| AuthError::Hashing(format!("argon2 parameters: {e}")))?;
        let dummy_hash = dummy_hash(&params)?;
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            jobs: sender,
            threads,
            admitted: AtomicUsize::new(0),
            capacity: threads + queue,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            average_micros: AtomicU64::new(0),
            params,
        });
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = receiver.clone();
            let shared = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name(format!("natsmud-hash-{index}"))
                .spawn(move || worker(&receiver, &shared))
                .map_err(|e| AuthError::Hashing(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            shared,
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        match self.run(Work::Hash { password }).await? {
            Done::Hashed(result) => result,
            Done::Verified(_) => Err(AuthError::Hashing("unexpected answer".to_owned())),
        }
    }

    /// Checks `password` against `hash`, or against a dummy hash when there is no account.
    /// `Err(Busy)` when it cannot be checked now.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AuthError> {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        match self.run(Work::Verify { password, hash }).await? {
            Done::Verified(ok) => Ok(ok && exists),
            Done::Hashed(_) => Err(AuthError::Hashing("unexpected answer".to_owned())),
        }
    }

    /// The most hashes that ever ran at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::Acquire)
    }

    async fn run(&self, work: Work) -> Result<Done, AuthError> {
        let shared = &*self.shared;
        let admitted = shared
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.capacity).then_some(n + 1)
            });
        if admitted.is_err() {
            metrics::counter!(telemetry::PASSWORD_HASHING_REFUSED).increment(1);
            return Err(AuthError::Busy(shared.retry_after()));
        }
        let _admitted = Admitted(shared);
        let (reply, answer) = oneshot::channel();
        shared
            .jobs
            .send(Job { work, reply })
            .map_err(|_| AuthError::Hashing("the hashing threads are gone".to_owned()))?;
        answer
            .await
            .map_err(|_| AuthError::Hashing("a hashing thread failed".to_owned()))
    }
}

impl Shared {
    /// About how long until the queue has room: what is admitted, spread over the threads.
    fn retry_after(&self) -> Duration {
        let hash = Duration::from_micros(self.average_micros.load(Ordering::Relaxed));
        let rounds = self.capacity.div_ceil(self.threads) as u32;
        (hash * rounds).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    fn record(&self, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self
            .average_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(if average == 0 {
                    micros
                } else {
                    average - average / 8 + micros / 8
                })
            });
    }
}

/// One hashing thread: takes jobs until every `Passwords` is gone. Its memory buffer is
/// made on its first job and reused for every later one.
fn worker(receiver: &Mutex<mpsc::Receiver<Job>>, shared: &std::sync::Weak<Shared>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = job else { return };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // The client gave up while this waited: nobody would read the answer.
        if job.reply.is_closed() {
            continue;
        }
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::AcqRel);
        metrics::gauge!(telemetry::PASSWORD_HASHES_IN_FLIGHT).increment(1.0);
        let started = Instant::now();
        let done = match job.work {
            Work::Hash { password } => {
                Done::Hashed(hash_with(&shared.params, &password, &mut memory))
            }
            Work::Verify { password, hash } => {
                Done::Verified(verify_with(&password, &hash, &shared.params, &mut memory))
            }
        };
        shared.record(started.elapsed());
        metrics::gauge!(telemetry::PASSWORD_HASHES_IN_FLIGHT).decrement(1.0);
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = job.reply.send(done);
    }
}

/// Blocks for `params`: the thread's own buffer, grown to the configured cost; a hash
/// stored with a larger cost gets a buffer of its own for that one call, so one old hash
/// does not keep the thread's memory high.
fn with_blocks<T>(
    params: &Params,
    configured: &Params,
    memory: &mut Vec<Block>,
    f: impl FnOnce(&mut [Block]) -> T,
) -> T {
    let needed = params.block_count();
    if needed > configured.block_count().max(memory.len()) {
        let mut own = vec![Block::default(); needed];
        return f(&mut own);
    }
    if memory.len() < needed {
        memory.resize(needed, Block::default());
    }
    f(&mut memory[..])
}

fn hash_with(
    params: &Params,
    password: &str,
    memory: &mut Vec<Block>,
) -> Result<String, AuthError> {
    let failed = |e: &dyn std::fmt::Display| AuthError::Hashing(e.to_string());
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    with_blocks(params, params, memory, |blocks| {
        argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
    })
    .map_err(|e| failed(&e))?;
    phc_string(params, &salt, &out)
}

/// The PHC string argon2's own `hash_password` would give for the same inputs.
fn phc_string(params: &Params, salt: &[u8], out: &[u8]) -> Result<String, AuthError> {
    let failed = |e: &dyn std::fmt::Display| AuthError::Hashing(e.to_string());
    let salt = SaltString::encode_b64(salt).map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(out).map_err(|e| failed(&e))?),
    };
    Ok(hash.to_string())
}

/// Verifies with the algorithm, version and cost stored in the hash itself, so changing
/// the configured cost never locks anyone out. The comparison takes constant time.
fn verify_with(password: &str, hash: &str, configured: &Params, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = with_blocks(&params, configured, memory, |blocks| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
    });
    computed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

/// A well-formed hash with the configured cost that no password matches (its output is
/// random), so checking against it costs what checking a real one does.
fn dummy_hash(params: &Params) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut out);
    phc_string(params, &salt, &out)
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
        let mut validation = Validation::new(JwtAlgorithm::HS256);
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
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding)
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

/// A short fingerprint of the JWT secret, for nodes to compare secrets through the database
/// without storing or showing the secret: the first 16 hex digits of SHA-256 over a fixed
/// label and the secret (the label keeps it from matching any other use of the secret).
pub fn secret_fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"natsmud jwt secret fingerprint v1\0")
        .chain_update(secret)
        .finalize();
    hex(&digest[..8])
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
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn the_secret_fingerprint_is_short_stable_and_not_the_secret() {
        let fingerprint = secret_fingerprint(b"hunter2");
        assert_eq!(fingerprint.len(), 16);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fingerprint, secret_fingerprint(b"hunter2"));
        assert_ne!(fingerprint, secret_fingerprint(b"hunter3"));
    }

    #[tokio::test]
    async fn hashes_verify_with_the_cost_stored_in_them_and_match_argon2s_own() {
        let cheap = Passwords::new(1, 4, 64, 1).unwrap_or_else(|e| panic!("{e}"));
        let hash = cheap
            .hash("correct horse".to_owned())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        // Configured differently now: the stored cost still decides.
        let dearer = Passwords::new(1, 4, 128, 2).unwrap_or_else(|e| panic!("{e}"));
        let check = |password: &str, hash: &str| {
            let dearer = dearer.clone();
            let (password, hash) = (password.to_owned(), hash.to_owned());
            async move { dearer.verify(password, Some(hash)).await.unwrap_or(false) }
        };
        assert!(check("correct horse", &hash).await);
        assert!(!check("wrong horse", &hash).await);
        // Unknown names never pass, whatever the password.
        assert!(!dearer.verify("".to_owned(), None).await.unwrap_or(true));
        // Hashes from argon2's own API (what older versions stored) verify here, and ours
        // verify there.
        let params = Params::new(96, 2, 1, None).unwrap_or_else(|e| panic!("{e}"));
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon2
            .hash_password(b"battery staple", &salt)
            .map(|h| h.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check("battery staple", &theirs).await);
        assert!(!check("battery stapler", &theirs).await);
        let parsed = PasswordHash::new(&hash).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_at_most_its_threads_and_refuses_beyond_its_queue() {
        let passwords = Passwords::new(2, 3, 512, 1).unwrap_or_else(|e| panic!("{e}"));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let passwords = passwords.clone();
                tokio::spawn(async move { passwords.hash(format!("password {i}")).await })
            })
            .collect();
        let mut hashed = 0;
        for task in tasks {
            match task.await.unwrap_or_else(|e| panic!("{e}")) {
                Ok(_) => hashed += 1,
                Err(AuthError::Busy(wait)) => assert!(wait >= Duration::from_secs(1)),
                Err(other) => panic!("{other}"),
            }
        }
        assert!(hashed >= 1);
        let peak = passwords.peak_in_flight();
        assert!((1..=2).contains(&peak), "peak {peak}");
        // Admissions are all given back: the pool takes work again.
        assert!(passwords.hash("after".to_owned()).await.is_ok());
    }

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
