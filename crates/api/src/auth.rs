//! Authentication: static tokens, Firebase ID tokens and any OIDC issuer, verified offline
//! against cached JWKS keys.
//!
//! Firebase checks (as the Admin SDKs do): RS256 only, a known `kid`, `aud` = the project id,
//! `iss` = `https://securetoken.google.com/<project>`, `sub` non-empty and at most 255
//! characters (Firebase uids are at most 128, OpenID Connect subjects 255), `exp` in the
//! future, `iat` and `auth_time` not in the future (60 s leeway).
//! `alg: none` and HMAC tokens are refused whatever else they claim. Keys are cached for the
//! `Cache-Control: max-age` the key server sends; an unknown `kid` triggers at most one refresh
//! per 30 s; a failed refresh keeps the last good keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use tracing::warn;

/// Google's JWKS for Firebase ID tokens.
pub const FIREBASE_JWKS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";

const LEEWAY_SECS: u64 = 60;
const MIN_REFRESH: Duration = Duration::from_secs(30);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest wait between attempts when the key server keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("no bearer token")]
    Missing,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else (bad signature, wrong audience or issuer, unknown key, garbage...).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A cached JWKS endpoint.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<(HashMap<String, DecodingKey>, Option<Instant>, Duration)>,
    /// When the last fetch was attempted (one at a time).
    refresh: Mutex<Option<Instant>>,
    /// Fetches failed in a row (for the backoff).
    failures: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

impl Jwks {
    /// A cache for `url` (nothing fetched yet).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            keys: RwLock::new((HashMap::new(), None, DEFAULT_MAX_AGE)),
            refresh: Mutex::new(None),
            failures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    async fn fetch(&self) -> Result<(), String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch the keys: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the key server answered {}", resp.status()));
        }
        // A key server that says max-age=0 (or nothing sensible) must not make every request
        // refetch: the keys are kept at least MIN_REFRESH.
        let age = max_age(resp.headers())
            .unwrap_or(DEFAULT_MAX_AGE)
            .max(MIN_REFRESH);
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| format!("the key set is unreadable: {e}"))?;
        let mut map = HashMap::new();
        for k in &set.keys {
            let Some(kid) = k.common.key_id.clone() else {
                continue;
            };
            if let Ok(d) = DecodingKey::from_jwk(k) {
                map.insert(kid, d);
            }
        }
        *self.keys.write().await = (map, Some(Instant::now()), age);
        Ok(())
    }

    /// The key for `kid`, refreshing the set when stale or when the kid is unknown.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let g = self.keys.read().await;
            let fresh = g.1.is_some_and(|t| t.elapsed() < g.2);
            if fresh && let Some(k) = g.0.get(kid) {
                return Ok(k.clone());
            }
        }
        {
            // One refresh at a time. An unknown kid refreshes at most every MIN_REFRESH; after
            // failures, attempts back off (5 s doubling to 5 min) and the last good keys are
            // used meanwhile, so a dead key server costs a request nothing.
            let mut last = self.refresh.lock().await;
            let stale = {
                let g = self.keys.read().await;
                g.1.is_none_or(|t| t.elapsed() >= g.2)
            };
            let known = self.keys.read().await.0.contains_key(kid);
            let failures = self.failures.load(std::sync::atomic::Ordering::Relaxed);
            let wait = if failures > 0 {
                (Duration::from_secs(5) * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF)
            } else if stale {
                Duration::ZERO
            } else {
                MIN_REFRESH
            };
            if (stale || !known) && last.is_none_or(|t| t.elapsed() >= wait) {
                *last = Some(Instant::now());
                match self.fetch().await {
                    Ok(()) => self.failures.store(0, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => {
                        self.failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last good keys.");
                    }
                }
            }
        }
        self.keys
            .read()
            .await
            .0
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))
    }
}

/// Verifies JWTs of one issuer.
#[derive(Debug)]
pub struct JwtVerifier {
    /// `firebase` or `oidc`.
    pub kind: &'static str,
    issuer: String,
    audience: String,
    jwks: Arc<Jwks>,
    firebase: bool,
}

impl JwtVerifier {
    /// Firebase ID tokens of `project_id`, keys from `jwks_url` (Google's by default).
    pub fn firebase(project_id: &str, jwks_url: Option<&str>) -> Self {
        Self {
            kind: "firebase",
            issuer: format!("https://securetoken.google.com/{project_id}"),
            audience: project_id.to_owned(),
            jwks: Arc::new(Jwks::new(jwks_url.unwrap_or(FIREBASE_JWKS_URL))),
            firebase: true,
        }
    }

    /// Any OIDC issuer.
    pub fn oidc(issuer: &str, audience: &str, jwks_url: &str) -> Self {
        Self {
            kind: "oidc",
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks: Arc::new(Jwks::new(jwks_url)),
            firebase: false,
        }
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed header: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("no key id (kid)".into()))?;
        let key = self.jwks.key(&kid).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.leeway = LEEWAY_SECS;
        v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
        v.validate_nbf = true;
        let data = decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        let now = chrono::Utc::now().timestamp();
        if c.iat > now + LEEWAY_SECS as i64 {
            return Err(AuthError::Invalid("issued in the future".into()));
        }
        if self.firebase && c.auth_time.is_none_or(|t| t > now + LEEWAY_SECS as i64) {
            return Err(AuthError::Invalid(
                "auth_time is missing or in the future".into(),
            ));
        }
        // Firebase uids are 1-128 characters, OpenID Connect subjects at most 255.
        if c.sub.is_empty() || c.sub.len() > 255 {
            return Err(AuthError::Invalid("sub must be 1-255 characters".into()));
        }
        // Each issuer has its own namespace: `sub: "clinic1"` from Firebase is not the static
        // user `clinic1` (static ids may not contain ':').
        let user = format!("{}:{}", self.kind, c.sub);
        // The id every record and task argument carries must be one: a subject with spaces or
        // control characters would be signed in, then refused by every task it submits.
        afterview_core::ids::UserId::parse(&user)
            .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        Ok(Identity {
            user,
            expires_at: Some(c.exp),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    auth_time: Option<i64>,
}

/// Who a token is and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id: a static token's user, or `firebase:<sub>` / `oidc:<sub>`.
    pub user: String,
    /// When the token expires (seconds since the epoch); `None` for static tokens.
    pub expires_at: Option<i64>,
}

/// All configured ways to authenticate.
#[derive(Debug, Default)]
pub struct Auth {
    /// token → user id.
    pub static_tokens: HashMap<String, String>,
    /// JWT issuers.
    pub verifiers: Vec<JwtVerifier>,
}

impl Auth {
    /// Parses `token=user,token2=user2`.
    pub fn parse_static(spec: &str) -> Result<HashMap<String, String>, String> {
        let mut m = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The last `=`: a base64 token ends in `=` padding; a user id has none.
            let (t, u) = pair
                .rsplit_once('=')
                .ok_or_else(|| format!("{:?} is not token=user", redact(pair)))?;
            let (t, u) = (t.trim(), u.trim());
            // The user part is redacted too: written the wrong way round (user=token), it is
            // the secret, and these messages reach the service's log.
            if t.len() < 16 {
                return Err(format!(
                    "the token for user {:?} is shorter than 16 characters (entries are token=user)",
                    redact(u)
                ));
            }
            afterview_core::ids::UserId::parse(u)
                .map_err(|e| format!("user {:?}: {e}", redact(u)))?;
            if u.contains(':') {
                return Err(format!(
                    "user {:?}: ':' is reserved for token issuers (firebase:…, oidc:…)",
                    redact(u)
                ));
            }
            m.insert(t.to_owned(), u.to_owned());
        }
        Ok(m)
    }

    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.static_tokens.is_empty() && self.verifiers.is_empty()
    }

    /// The user a token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<String, AuthError> {
        self.identify(token).await.map(|i| i.user)
    }

    /// The user a token belongs to, and when the token expires.
    pub async fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some(u) = self.static_tokens.get(token) {
            return Ok(Identity {
                user: u.clone(),
                expires_at: None,
            });
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::Invalid("not a known token".into()));
        }
        // Choose the verifier by the (unverified) issuer; the signature check follows.
        let iss = unverified_issuer(token)
            .ok_or_else(|| AuthError::Invalid("malformed payload".into()))?;
        let v = self
            .verifiers
            .iter()
            .find(|v| v.issuer == iss)
            .ok_or_else(|| AuthError::Invalid("untrusted issuer".into()))?;
        v.verify(token).await
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// Shows the first four characters of a secret, never more.
pub fn redact(s: &str) -> String {
    let head: String = s.chars().take(4).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::Auth;

    /// An entry written the wrong way round (user=token) is refused without printing the
    /// token, whichever check refuses it.
    #[test]
    fn a_reversed_entry_does_not_print_its_secret() {
        for spec in [
            "alice=0123456789abcdef0123456789abcdef",
            "alice=0123456789abcdef 0123456789abcdef",
            "alice=0123456789abcdef:0123456789abcdef",
        ] {
            let e = Auth::parse_static(spec).unwrap_err();
            assert!(!e.contains("456789abcdef"), "{e}");
        }
    }

    /// A base64 token (`openssl rand -base64 32`) ends in `=` padding: it is kept whole, and
    /// its user is what follows the last `=`.
    #[test]
    fn static_tokens_may_end_in_base64_padding() {
        let token = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8=";
        let m = Auth::parse_static(&format!("{token}=alice, plain-token-0123456789=bob")).unwrap();
        assert_eq!(m.get(token).map(String::as_str), Some("alice"));
        assert_eq!(
            m.get("plain-token-0123456789").map(String::as_str),
            Some("bob")
        );
        assert_eq!(m.len(), 2);
    }
}
