//! Authentication: password hashes, bearer tokens, the Basic-header cache and the failed-login
//! limiter.
//!
//! Tokens are stateless: `base64url(user_id | expiry | mac)` where the MAC is a keyed BLAKE3 of
//! the rest under a per-process key, so the server keeps no per-token state at all. The role is
//! never in the token: it is read from the catalog on every request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use dashmap::DashMap;

use crate::catalog::{Catalog, UserDef, now_ms};
use crate::context::ExecutionContext;
use crate::{Error, Result};

/// The one message for every credential failure (unknown user and wrong password alike).
pub const BAD_CREDENTIALS: &str = "invalid user name or password";

/// Hashes `password` with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

/// Checks `password` against a PHC hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Splits a Basic credential (`base64(user:password)`, padding optional).
pub fn decode_basic(b64: &str) -> Result<(String, String)> {
    let b64 = b64.trim();
    let raw = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64.trim_end_matches('=')))
        .map_err(|_| Error::Unauthenticated("malformed Basic credentials".into()))?;
    let text = String::from_utf8(raw)
        .map_err(|_| Error::Unauthenticated("malformed Basic credentials".into()))?;
    let (user, pw) = text
        .split_once(':')
        .ok_or_else(|| Error::Unauthenticated("malformed Basic credentials".into()))?;
    Ok((user.to_string(), pw.to_string()))
}

/// Settings for [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Bearer token lifetime.
    pub token_ttl: Duration,
    /// How long a verified Basic header is trusted without another argon2 run.
    pub basic_cache_ttl: Duration,
    /// Failures per (user, peer) within `failure_window` before further attempts are refused.
    pub max_failures: u32,
    /// Window for `max_failures`.
    pub failure_window: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(24 * 3600),
            basic_cache_ttl: Duration::from_secs(60),
            max_failures: 20,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// Bound on cached Basic headers; when full, expired entries are dropped, then all.
const BASIC_CACHE_MAX: usize = 10_000;
/// Bound on tracked (user, peer) failure counters; when full, expired ones are dropped, then all.
const FAILURES_MAX: usize = 10_000;

/// Verifies credentials and tokens and turns them into an [`ExecutionContext`].
#[derive(Debug)]
pub struct Authenticator {
    catalog: Arc<Catalog>,
    config: AuthConfig,
    /// MAC key for tokens and for hashing cached Basic headers; random per process.
    key: [u8; 32],
    /// keyed-hash(Basic header) → (user id, verified at). Bounded by `BASIC_CACHE_MAX`.
    basic_cache: DashMap<[u8; 32], (String, String, Instant)>,
    /// (user, peer) → (failures, window start). Bounded by `FAILURES_MAX`.
    failures: DashMap<(String, Option<IpAddr>), (u32, Instant)>,
}

impl Authenticator {
    /// A new authenticator over `catalog`.
    pub fn new(catalog: Arc<Catalog>, config: AuthConfig) -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Self::with_key(catalog, config, key)
    }

    /// An authenticator whose tokens are signed with `key` (persisted, so tokens outlive a
    /// restart; see [`load_or_create_key`]).
    pub fn with_key(catalog: Arc<Catalog>, config: AuthConfig, key: [u8; 32]) -> Self {
        Self {
            catalog,
            config,
            key,
            basic_cache: DashMap::new(),
            failures: DashMap::new(),
        }
    }

    fn check_rate(&self, user: &str, peer: Option<IpAddr>) -> Result<()> {
        if let Some(entry) = self.failures.get(&(user.to_string(), peer)) {
            let (n, since) = *entry;
            if n >= self.config.max_failures && since.elapsed() < self.config.failure_window {
                return Err(Error::Unauthenticated(
                    "too many failed login attempts; try again later".into(),
                ));
            }
        }
        Ok(())
    }

    fn record_failure(&self, user: &str, peer: Option<IpAddr>) {
        if self.failures.len() >= FAILURES_MAX {
            let window = self.config.failure_window;
            self.failures
                .retain(|_, (_, since)| since.elapsed() < window);
            if self.failures.len() >= FAILURES_MAX {
                self.failures.clear();
            }
        }
        let mut e = self
            .failures
            .entry((user.to_string(), peer))
            .or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.config.failure_window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Verifies a user name and password (argon2; run it off the async runtime).
    pub fn login(&self, user: &str, password: &str, peer: Option<IpAddr>) -> Result<Arc<UserDef>> {
        self.check_rate(user, peer)?;
        let found = self.catalog.user(user);
        let ok = match &found {
            Some(u) => verify_password(password, &u.password_hash),
            None => {
                // Spend the same time as a real check so timing does not reveal the user.
                let _ = verify_password(password, DUMMY_HASH);
                false
            }
        };
        match (ok, found) {
            (true, Some(u)) => {
                self.failures.remove(&(user.to_string(), peer));
                Ok(u)
            }
            _ => {
                self.record_failure(user, peer);
                Err(Error::Unauthenticated(BAD_CREDENTIALS.into()))
            }
        }
    }

    /// Verifies a Basic header value on an ordinary call, consulting the short-lived cache first
    /// so argon2 runs once per header, not once per call.
    pub fn login_basic_cached(&self, b64: &str, peer: Option<IpAddr>) -> Result<Arc<UserDef>> {
        if let Some(u) = self.cached_basic(b64) {
            return Ok(u);
        }
        let digest = self.basic_digest(b64);
        let (user, pw) = decode_basic(b64)?;
        let u = self.login(&user, &pw, peer)?;
        if self.basic_cache.len() >= BASIC_CACHE_MAX {
            let ttl = self.config.basic_cache_ttl;
            self.basic_cache.retain(|_, (_, _, at)| at.elapsed() < ttl);
            if self.basic_cache.len() >= BASIC_CACHE_MAX {
                self.basic_cache.clear();
            }
        }
        self.basic_cache.insert(
            digest,
            (u.id.clone(), u.password_hash.clone(), Instant::now()),
        );
        Ok(u)
    }

    fn basic_digest(&self, b64: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, format!("basic:{b64}").as_bytes()).as_bytes()
    }

    /// The user behind a Basic header verified recently, without running argon2.
    pub fn cached_basic(&self, b64: &str) -> Option<Arc<UserDef>> {
        let digest = self.basic_digest(b64);
        if let Some(hit) = self.basic_cache.get(&digest) {
            let (id, hash, at) = hit.value().clone();
            // Valid while fresh and while the password is unchanged (ALTER USER ... PASSWORD
            // or DROP USER invalidate it at once).
            if at.elapsed() < self.config.basic_cache_ttl
                && let Some(u) = self.catalog.user_by_id(&id)
                && u.password_hash == hash
            {
                return Some(u);
            }
        }
        None
    }

    /// Issues a bearer token for `user`.
    pub fn issue_token(&self, user: &UserDef) -> String {
        let expires = now_ms() + self.config.token_ttl.as_millis() as i64;
        let payload = format!("{}|{}", user.id, expires);
        let mac = blake3::keyed_hash(&self.key, payload.as_bytes());
        let mut raw = payload.into_bytes();
        raw.push(b'|');
        raw.extend_from_slice(&mac.as_bytes()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Verifies a bearer token and returns the user as of now (role from the catalog).
    pub fn verify_token(&self, token: &str) -> Result<Arc<UserDef>> {
        let bad = || Error::Unauthenticated("invalid or expired token".into());
        let raw = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad())?;
        if raw.len() < 17 || raw[raw.len() - 17] != b'|' {
            return Err(bad());
        }
        let (payload, mac) = raw.split_at(raw.len() - 17);
        let expected = blake3::keyed_hash(&self.key, payload);
        // Constant-time comparison of the MAC prefix.
        let diff = expected.as_bytes()[..16]
            .iter()
            .zip(&mac[1..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(bad());
        }
        let text = std::str::from_utf8(payload).map_err(|_| bad())?;
        let (id, expires) = text.rsplit_once('|').ok_or_else(bad)?;
        let expires: i64 = expires.parse().map_err(|_| bad())?;
        if expires <= now_ms() {
            return Err(bad());
        }
        self.catalog.user_by_id(id).ok_or_else(bad)
    }

    /// The identity for a request by `user`.
    pub fn context_for(user: &UserDef, request_id: Arc<str>) -> Arc<ExecutionContext> {
        Arc::new(ExecutionContext {
            user_id: Arc::from(user.id.as_str()),
            user_name: Arc::from(user.name.as_str()),
            role: user.role,
            request_id,
        })
    }
}

/// Reads the 32-byte token key at `path`, creating it (mode 0600, fsynced) on first start.
pub fn load_or_create_key(path: &std::path::Path) -> Result<[u8; 32]> {
    let io = |e: std::io::Error| Error::Internal(format!("token key {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            Error::Internal(format!(
                "token key {} is not 32 bytes; delete it to rotate keys",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            let mut key = [0u8; 32];
            rand::fill(&mut key);
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A valid argon2id hash of a random password, for constant-time failures on unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$5N9xEzA7C4G0pQ2tq5cZ4tq0o3Yy3bHcq0cJkZ3m4xM";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_decodes_with_and_without_padding() {
        // "u:pw" → "dTpwdw==" padded.
        assert_eq!(decode_basic("dTpwdw==").unwrap(), ("u".into(), "pw".into()));
        assert_eq!(decode_basic("dTpwdw").unwrap(), ("u".into(), "pw".into()));
        assert!(decode_basic("!!!").is_err());
        assert!(decode_basic("dXNlcg").is_err(), "no colon");
    }

    #[test]
    fn hashes_verify() {
        let h = hash_password("pw").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("pw", &h));
        assert!(!verify_password("nope", &h));
    }
}
