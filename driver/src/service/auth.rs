//! Who is calling: a tenant with an API key, an executor host registering with
//! the executor secret, or a registered host with the token it was given. All
//! come as `Authorization: Bearer <token>`.
//!
//! Keys are kept only as SHA-256 hashes (a keys file may give the hash,
//! `sha256:<hex>`, instead of the key) and compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use ignis_core::location::Location;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

pub type KeyHash = [u8; 32];

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// One API key of a tenant.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub tenant: String,
    pub hash: KeyHash,
}

/// What a keys file says: keys, and the storage grants of tenants (TOML files only).
#[derive(Debug, Default)]
pub struct Tenants {
    pub keys: Vec<KeyEntry>,
    pub grants: HashMap<String, Vec<Location>>,
}

/// API keys (hashed) naming their tenants, and the executors' secret.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    keys: Vec<KeyEntry>,
    executor_secret: Option<KeyHash>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsToml {
    tenants: HashMap<String, TenantToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantToml {
    /// Keys, or their hashes as `sha256:<hex>`.
    keys: Vec<String>,
    /// Storage prefixes the tenant may use besides its tenant root.
    #[serde(default)]
    prefixes: Vec<String>,
}

impl Tenants {
    /// Keys from text of `tenant:key` entries, one per line or comma-separated;
    /// `#` starts a comment. A key may be given as its hash, `tenant:sha256:<hex>`.
    pub fn parse_lines(text: &str, origin: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let at = format!("{origin} line {}", n + 1);
                let (tenant, key) = entry
                    .split_once(':')
                    .map(|(t, k)| (t.trim(), k.trim()))
                    .filter(|(t, k)| !t.is_empty() && !k.is_empty())
                    .ok_or_else(|| format!("{at}: expected `tenant:key`, found {entry:?}"))?;
                out.add_key(tenant, key, &at)?;
            }
        }
        Ok(out)
    }

    /// A TOML tenants file: `[tenants.NAME]` with `keys = [...]` and optional
    /// `prefixes = ["s3://bucket/shared/"]`.
    pub fn parse_toml(text: &str, origin: &str) -> Result<Self, String> {
        let file: TenantsToml = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let mut out = Self::default();
        for (tenant, entry) in file.tenants {
            let at = format!("{origin} [tenants.{tenant}]");
            for key in &entry.keys {
                out.add_key(&tenant, key, &at)?;
            }
            let mut prefixes = Vec::new();
            for p in &entry.prefixes {
                let mut p = p.clone();
                if !p.ends_with('/') {
                    p.push('/');
                }
                prefixes.push(Location::parse(&p, None, &format!("{at} prefixes")).map_err(|e| e.to_string())?);
            }
            if !prefixes.is_empty() {
                out.grants.insert(tenant, prefixes);
            }
        }
        Ok(out)
    }

    fn add_key(&mut self, tenant: &str, key: &str, at: &str) -> Result<(), String> {
        check_tenant_name(tenant).map_err(|e| format!("{at}: {e}"))?;
        let hash = match key.strip_prefix("sha256:") {
            Some(hex) => {
                let bytes = hex::decode(hex).ok().and_then(|b| KeyHash::try_from(b).ok());
                bytes.ok_or_else(|| format!("{at}: the key hash of tenant {tenant:?} is not 64 hex digits"))?
            }
            None if key.len() < 8 => {
                return Err(format!("{at}: the key of tenant {tenant:?} is shorter than 8 characters"));
            }
            None => hash_key(key),
        };
        if self.keys.iter().any(|k| k.hash == hash) {
            return Err(format!("{at}: a key is given twice"));
        }
        self.keys.push(KeyEntry { tenant: tenant.to_string(), hash });
        Ok(())
    }

    pub fn extend(&mut self, other: Tenants) {
        self.keys.extend(other.keys);
        for (tenant, prefixes) in other.grants {
            self.grants.entry(tenant).or_default().extend(prefixes);
        }
    }
}

/// A tenant's name goes into storage paths (`{tenant}`): letters, digits, `-`, `_`, `.`.
fn check_tenant_name(tenant: &str) -> Result<(), String> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant != "."
        && tenant != ".."
        && tenant.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(()) } else { Err(format!("tenant name {tenant:?} must be 1-64 letters, digits, '-', '_' or '.'")) }
}

impl AuthConfig {
    pub fn new(keys: Vec<KeyEntry>, executor_secret: Option<&str>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no API keys configured: give --api-keys-file or IGNIS_API_KEYS (`tenant:key`)".into());
        }
        let executor_secret = executor_secret.map(hash_key);
        if let Some(secret) = &executor_secret
            && keys.iter().any(|k| &k.hash == secret)
        {
            return Err("the executor secret must differ from every API key".into());
        }
        Ok(Self { keys, executor_secret })
    }

    /// The tenant whose API key `key` is (never the executor secret or a host token).
    pub fn tenant_of(&self, key: &str) -> Option<String> {
        match self.classify(Some(key)) {
            Caller::Tenant(t) => Some(t),
            _ => None,
        }
    }

    /// The tenant whose key `token` is, compared against every key in
    /// constant time; or whether it is the executor secret.
    fn classify(&self, token: Option<&str>) -> Caller {
        let Some(token) = token else { return Caller::Anonymous };
        let hash = hash_key(token);
        if self.executor_secret.as_ref().is_some_and(|s| bool::from(s.ct_eq(&hash))) {
            return Caller::Executor;
        }
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(&key.tenant);
            }
        }
        match found {
            Some(tenant) => Caller::Tenant(tenant.clone()),
            None => Caller::Unknown(hash),
        }
    }
}

enum Caller {
    Anonymous,
    /// Not an API key nor the executor secret: maybe a host token.
    Unknown(KeyHash),
    Tenant(String),
    Executor,
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The tenant a job-API request acts for.
pub struct Tenant(pub String);

impl FromRequestParts<Arc<AppState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match state.auth.classify(bearer(parts)) {
            Caller::Tenant(t) => Ok(Tenant(t)),
            Caller::Anonymous => Err(unauthorized("missing API key: send `Authorization: Bearer <key>`")),
            Caller::Unknown(hash) if host_token(state, &hash).is_some() => {
                Err(forbidden("executor credentials cannot use the job API"))
            }
            Caller::Unknown(_) => Err(unauthorized("unknown API key")),
            Caller::Executor => Err(forbidden("executor credentials cannot use the job API")),
        }
    }
}

fn host_token(state: &AppState, hash: &KeyHash) -> Option<String> {
    state.hosts.as_ref()?.host_for_token(hash)
}

/// An executor host that is joining: it holds the executor secret, which
/// serves to register and nothing else.
pub struct Registering;

impl FromRequestParts<Arc<AppState>> for Registering {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match state.auth.classify(bearer(parts)) {
            Caller::Executor => Ok(Registering),
            Caller::Tenant(_) => Err(forbidden("API keys cannot act as an executor host")),
            Caller::Anonymous => Err(unauthorized("missing executor secret: send `Authorization: Bearer <secret>`")),
            Caller::Unknown(_) => Err(unauthorized("wrong executor secret")),
        }
    }
}

/// A registered executor host, by the token it was given at registration.
pub struct HostCaller(pub String);

impl HostCaller {
    /// A host acts only as itself: its token names the host of the path.
    pub fn owns(&self, id: &str) -> Result<(), ApiError> {
        if self.0 == id {
            Ok(())
        } else {
            tracing::warn!(executor = %self.0, target = %id, "an executor host tried to act as another");
            Err(forbidden("this token belongs to another executor host"))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for HostCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match state.auth.classify(bearer(parts)) {
            Caller::Unknown(hash) => match host_token(state, &hash) {
                Some(id) => Ok(HostCaller(id)),
                None => Err(unauthorized("unknown executor token; register again")),
            },
            Caller::Executor => {
                Err(forbidden("the executor secret only registers a host; use the token registration returned"))
            }
            Caller::Tenant(_) => Err(forbidden("API keys cannot act as an executor host")),
            Caller::Anonymous => Err(unauthorized("missing executor token: send `Authorization: Bearer <token>`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_errors_name_the_line() {
        let t = Tenants::parse_lines("# keys\nalice:alice-key-1\nbob:bob-key-22, carol:carol-key-3\n", "f").unwrap();
        let auth = AuthConfig::new(t.keys, Some("executor-secret")).unwrap();
        assert!(matches!(auth.classify(Some("bob-key-22")), Caller::Tenant(t) if t == "bob"));
        assert!(matches!(auth.classify(Some("executor-secret")), Caller::Executor));
        assert!(matches!(auth.classify(Some("bob-key-2")), Caller::Unknown(_)));
        let err = Tenants::parse_lines("alice:alice-key-1\nbob\n", "keys.txt").unwrap_err();
        assert!(err.contains("keys.txt line 2"), "{err}");
        assert!(Tenants::parse_lines("a:short", "f").unwrap_err().contains("shorter than 8"));
        assert!(Tenants::parse_lines("../x:long-enough-key", "f").unwrap_err().contains("tenant name"));
        assert!(AuthConfig::new(Vec::new(), None).is_err());
    }

    #[test]
    fn hashed_keys_and_grants_from_toml() {
        let hash = hex::encode(hash_key("alice-secret-key"));
        let text = format!(
            "[tenants.alice]\nkeys = [\"sha256:{hash}\"]\nprefixes = [\"s3://b/shared\"]\n[tenants.bob]\nkeys = \
             [\"bob-secret-key\"]\n"
        );
        let t = Tenants::parse_toml(&text, "tenants.toml").unwrap();
        assert_eq!(t.grants["alice"][0].to_string(), "s3://b/shared/");
        let auth = AuthConfig::new(t.keys, None).unwrap();
        assert!(matches!(auth.classify(Some("alice-secret-key")), Caller::Tenant(t) if t == "alice"));
        assert!(matches!(auth.classify(Some(&format!("sha256:{hash}"))), Caller::Unknown(_)));
        let err = Tenants::parse_toml("[tenants.a]\nkeys = [\"sha256:12\"]\n", "t.toml").unwrap_err();
        assert!(err.contains("64 hex"), "{err}");
    }
}
