//! Who is calling: a tenant with an API key, or an executor host with the
//! executor secret. Both come as `Authorization: Bearer <token>`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// API keys by token, each naming its tenant, and the executors' secret.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    keys: HashMap<String, String>,
    executor_secret: Option<String>,
}

impl AuthConfig {
    /// Keys from text of `tenant:key` entries, one per line or comma-separated;
    /// `#` starts a comment.
    pub fn parse_keys(text: &str, origin: &str) -> Result<HashMap<String, String>, String> {
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (tenant, key) = entry
                    .split_once(':')
                    .map(|(t, k)| (t.trim(), k.trim()))
                    .filter(|(t, k)| !t.is_empty() && !k.is_empty())
                    .ok_or_else(|| format!("{origin} line {}: expected `tenant:key`, found {entry:?}", n + 1))?;
                if key.len() < 8 {
                    return Err(format!(
                        "{origin} line {}: the key of tenant {tenant:?} is shorter than 8 characters",
                        n + 1
                    ));
                }
                if keys.insert(key.to_string(), tenant.to_string()).is_some() {
                    return Err(format!("{origin} line {}: a key is given twice", n + 1));
                }
            }
        }
        Ok(keys)
    }

    pub fn new(keys: HashMap<String, String>, executor_secret: Option<String>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no API keys configured: give --api-keys-file or IGNIS_API_KEYS (`tenant:key`)".into());
        }
        if let Some(secret) = &executor_secret
            && keys.contains_key(secret)
        {
            return Err("the executor secret must differ from every API key".into());
        }
        Ok(Self { keys, executor_secret })
    }

    fn classify(&self, token: Option<&str>) -> Caller {
        match token {
            None => Caller::Anonymous,
            Some(t) if self.executor_secret.as_deref() == Some(t) => Caller::Executor,
            Some(t) => self.keys.get(t).map(|tenant| Caller::Tenant(tenant.clone())).unwrap_or(Caller::Unknown),
        }
    }
}

enum Caller {
    Anonymous,
    Unknown,
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

/// The tenant a job-API request acts for.
pub struct Tenant(pub String);

impl FromRequestParts<Arc<AppState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match state.auth.classify(bearer(parts)) {
            Caller::Tenant(t) => Ok(Tenant(t)),
            Caller::Anonymous => Err(unauthorized("missing API key: send `Authorization: Bearer <key>`")),
            Caller::Unknown => Err(unauthorized("unknown API key")),
            Caller::Executor => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "executor credentials cannot use the job API"))
            }
        }
    }
}

/// An executor host, authenticated by the executor secret.
pub struct ExecutorCaller;

impl FromRequestParts<Arc<AppState>> for ExecutorCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match state.auth.classify(bearer(parts)) {
            Caller::Executor => Ok(ExecutorCaller),
            Caller::Tenant(_) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "API keys cannot act as an executor host"))
            }
            Caller::Anonymous => Err(unauthorized("missing executor secret: send `Authorization: Bearer <secret>`")),
            Caller::Unknown => Err(unauthorized("wrong executor secret")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_errors_name_the_line() {
        let keys =
            AuthConfig::parse_keys("# keys\nalice:alice-key-1\nbob:bob-key-22, carol:carol-key-3\n", "f").unwrap();
        assert_eq!(keys.get("bob-key-22").map(String::as_str), Some("bob"));
        assert_eq!(keys.len(), 3);
        let err = AuthConfig::parse_keys("alice:alice-key-1\nbob\n", "keys.txt").unwrap_err();
        assert!(err.contains("keys.txt line 2"), "{err}");
        assert!(AuthConfig::parse_keys("a:short", "f").unwrap_err().contains("shorter than 8"));
        assert!(AuthConfig::new(HashMap::new(), None).is_err());
    }
}
