//! The Gemini provider: one image edit per call through the REST `generateContent` endpoint.
//!
//! Job: send a photo and a procedure prompt, get a picture back, and classify every other
//! outcome as the Gemini API documents it: safety blocks and text-only answers
//! arrive as HTTP 200 and are *not* successes; 408/429/5xx and transport errors are retried with
//! exponential backoff and jitter, honouring `RetryInfo.retryDelay`; a per-day quota is not
//! retried. The API key travels in the `x-goog-api-key` header and never appears in logs or
//! errors.
//!
//! [`mock`] (feature `mock`) is a local server speaking the same wire format, errors included.

#[cfg(feature = "mock")]
pub mod mock;

use std::time::Duration;

use afterview_core::ErrorCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tracing::{info, warn};

/// Google's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The default image model.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash-image";

/// Client settings.
#[derive(Clone)]
pub struct GeminiConfig {
    /// The API key (sent as `x-goog-api-key`).
    pub api_key: String,
    /// Model name.
    pub model: String,
    /// Scheme and host (tests point it at the mock).
    pub base_url: String,
    /// Per-request timeout (image calls commonly take 5-30 s).
    pub timeout: Duration,
    /// Attempts including the first (Google's SDK: 5).
    pub max_attempts: u32,
    /// First backoff (Google's SDK: 1 s).
    pub initial_backoff: Duration,
    /// Longest backoff (Google's SDK: 60 s).
    pub max_backoff: Duration,
    /// The least time worth starting an attempt with, when a call has a time budget
    /// ([`GeminiClient::edit_image_within`]; image calls commonly take 5-30 s).
    pub min_attempt: Duration,
}

impl std::fmt::Debug for GeminiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiConfig")
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl GeminiConfig {
    /// Google's defaults for `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            model: DEFAULT_MODEL.into(),
            base_url: DEFAULT_BASE_URL.into(),
            timeout: Duration::from_secs(90),
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            min_attempt: Duration::from_secs(5),
        }
    }
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeminiError {
    /// Bad key, missing permission, or API not enabled (400 API_KEY_INVALID, 403).
    #[error("Gemini rejected the credentials: {0}")]
    Auth(String),
    /// The request itself is wrong (400, 404): not retried.
    #[error("Gemini rejected the request: {0}")]
    InvalidRequest(String),
    /// `promptFeedback.blockReason`.
    #[error("Gemini blocked the prompt ({0})")]
    PromptBlocked(String),
    /// A safety `finishReason` without an image.
    #[error("Gemini blocked the generated image ({0})")]
    OutputBlocked(String),
    /// No image part (text only, NO_IMAGE, ...), after retries.
    #[error("Gemini answered without an image ({0})")]
    NoImage(String),
    /// Per-day quota, or 429 until the attempts ran out.
    #[error("Gemini quota exhausted: {0}")]
    QuotaExhausted(String),
    /// 5xx, timeouts, transport errors, after retries.
    #[error("Gemini is unavailable: {0}")]
    Unavailable(String),
    /// The answer could not be parsed.
    #[error("Gemini's answer could not be read: {0}")]
    BadResponse(String),
}

impl GeminiError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Auth(_) => ErrorCode::GeminiAuth,
            Self::InvalidRequest(_) | Self::BadResponse(_) => ErrorCode::GeminiBadResponse,
            Self::PromptBlocked(_) | Self::OutputBlocked(_) => ErrorCode::GeminiBlocked,
            Self::NoImage(_) => ErrorCode::GeminiNoImage,
            Self::QuotaExhausted(_) => ErrorCode::GeminiQuotaExhausted,
            Self::Unavailable(_) => ErrorCode::GeminiUnavailable,
        }
    }
}

/// A generated picture.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    /// The bytes (PNG or JPEG; sniff, do not trust `mime`).
    pub bytes: Vec<u8>,
    /// The MIME type Gemini declared.
    pub mime: String,
    /// Attempts it took.
    pub attempts: u32,
}

/// One attempt's outcome.
enum Attempt {
    Done(GeneratedImage),
    Retry {
        reason: GeminiError,
        after: Option<Duration>,
    },
    Fail(GeminiError),
}

/// The client.
#[derive(Debug, Clone)]
pub struct GeminiClient {
    http: reqwest::Client,
    cfg: GeminiConfig,
}

impl GeminiClient {
    /// A client with `cfg`.
    pub fn new(cfg: GeminiConfig) -> Result<Self, GeminiError> {
        // No redirects: a redirect keeps the `x-goog-api-key` header (only `Authorization` and
        // cookies are dropped across hosts) and a 307 re-sends the body, the patient's photo.
        // Google's endpoint does not redirect; a 3xx is an error.
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GeminiError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, cfg })
    }

    /// The model in use.
    pub fn model(&self) -> &str {
        &self.cfg.model
    }

    /// Edits `image` (bytes of `mime`) following `prompt`; retries transient failures.
    pub async fn edit_image(
        &self,
        image: &[u8],
        mime: &str,
        prompt: &str,
    ) -> Result<GeneratedImage, GeminiError> {
        self.edit_image_within(image, mime, prompt, None).await
    }

    /// As [`GeminiClient::edit_image`], done or given up within `time` (a task's time left
    /// before its limit): each request's timeout and each wait are cut to what is left, and no
    /// attempt starts that could not get [`GeminiConfig::min_attempt`]. Giving up says why (unavailable, or
    /// the quota), so the task fails with Gemini's code, not a time limit's.
    pub async fn edit_image_within(
        &self,
        image: &[u8],
        mime: &str,
        prompt: &str,
        time: Option<Duration>,
    ) -> Result<GeneratedImage, GeminiError> {
        let deadline = time.map(|t| tokio::time::Instant::now() + t);
        let left = || deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let min = self.cfg.min_attempt;
        if left().is_some_and(|l| l < min) {
            return Err(GeminiError::Unavailable(
                "no time was left for a call before the task's time limit".into(),
            ));
        }
        let body = json!({
            "contents": [{
                "role": "user",
                "parts": [
                    {"inlineData": {"mimeType": mime, "data": B64.encode(image)}},
                    {"text": prompt},
                ],
            }],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        });
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.model
        );
        let mut no_image_retries = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let timeout = left().map_or(self.cfg.timeout, |l| l.min(self.cfg.timeout));
            let outcome = self.attempt(&url, &body, timeout).await;
            let (reason, after) = match outcome {
                Attempt::Done(mut img) => {
                    img.attempts = attempt;
                    return Ok(img);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    reason: GeminiError::NoImage(r),
                    ..
                } if no_image_retries >= 2 => {
                    return Err(GeminiError::NoImage(r));
                }
                Attempt::Retry { reason, after } => {
                    if matches!(reason, GeminiError::NoImage(_)) {
                        no_image_retries += 1;
                    }
                    (reason, after)
                }
            };
            let backoff = self.backoff(attempt - 1);
            let delay = after.map_or(backoff, |a| a.max(backoff));
            let out_of_time = left().is_some_and(|l| l < delay + min);
            if attempt >= self.cfg.max_attempts || out_of_time {
                warn!(attempts = attempt, out_of_time, error = %reason, "Gemini call gave up.");
                return Err(match reason {
                    GeminiError::QuotaExhausted(m) => {
                        GeminiError::QuotaExhausted(format!("{m} (after {attempt} attempts)"))
                    }
                    GeminiError::BadResponse(m) => {
                        GeminiError::BadResponse(format!("{m} (after {attempt} attempts)"))
                    }
                    GeminiError::NoImage(m) => GeminiError::NoImage(m),
                    other => {
                        GeminiError::Unavailable(format!("{other} (after {attempt} attempts)"))
                    }
                });
            }
            info!(attempt, delay_ms = delay.as_millis() as u64, error = %reason, "Retrying Gemini call.");
            tokio::time::sleep(delay).await;
        }
    }

    /// `min(max, initial · 2^n)` plus up to one initial delay of jitter.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.cfg.initial_backoff.as_secs_f64();
        let exp = (base * 2f64.powi(n.min(20) as i32)).min(self.cfg.max_backoff.as_secs_f64());
        Duration::from_secs_f64(exp + fastrand::f64() * base)
    }

    async fn attempt(&self, url: &str, body: &Value, timeout: Duration) -> Attempt {
        let resp = match self
            .http
            .post(url)
            .timeout(timeout)
            .header("x-goog-api-key", &self.cfg.api_key)
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "transport error"
                };
                // reqwest errors name the URL, never headers: the key cannot leak here.
                return Attempt::Retry {
                    reason: GeminiError::Unavailable(format!("{what}: {e}")),
                    after: None,
                };
            }
        };
        let status = resp.status().as_u16();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    reason: GeminiError::Unavailable(format!("reading the answer failed: {e}")),
                    after: None,
                };
            }
        };
        if status == 200 {
            return classify_success(&text);
        }
        classify_error(status, &scrub(&text, &self.cfg.api_key))
    }
}

/// `text` without API keys: the configured one, any Google API key (`AIza` and 35 more
/// characters) and what follows `api_key:` (Google names a suspended or blocked key in its
/// error messages, which become task errors and log lines).
fn scrub(text: &str, key: &str) -> String {
    const HIDDEN: &str = "[redacted]";
    let mut s = if key.is_empty() {
        text.to_owned()
    } else {
        text.replace(key, HIDDEN)
    };
    let key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    for marker in ["api_key:", "AIza"] {
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find(marker) {
            let after = &rest[i + marker.len()..];
            let n = after.find(|c: char| !key_char(c)).unwrap_or(after.len());
            out.push_str(&rest[..i]);
            if n == 0 || marker == "api_key:" {
                out.push_str(marker);
            }
            if n > 0 {
                out.push_str(HIDDEN);
            }
            rest = &after[n..];
        }
        out.push_str(rest);
        s = out;
    }
    s
}

/// Reads an error envelope `{"error": {code, message, status, details}}`.
fn classify_error(status: u16, text: &str) -> Attempt {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let err = v.get("error");
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    let grpc = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let details = err
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let detail_of = |t: &str| {
        details.iter().find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|x| x.ends_with(t))
        })
    };
    let described = format!("HTTP {status} {grpc}: {message}");
    match status {
        400 if detail_of("ErrorInfo")
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str)
            == Some("API_KEY_INVALID") =>
        {
            Attempt::Fail(GeminiError::Auth(described))
        }
        401 | 403 => Attempt::Fail(GeminiError::Auth(described)),
        429 => {
            let per_day = detail_of("QuotaFailure")
                .and_then(|d| d.get("violations"))
                .and_then(Value::as_array)
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.get("quotaId")
                            .and_then(Value::as_str)
                            .is_some_and(|q| q.contains("PerDay"))
                    })
                });
            if per_day {
                return Attempt::Fail(GeminiError::QuotaExhausted(format!(
                    "{described} (daily quota; resets at midnight Pacific)"
                )));
            }
            let after = detail_of("RetryInfo")
                .and_then(|d| d.get("retryDelay"))
                .and_then(Value::as_str)
                .and_then(parse_duration);
            Attempt::Retry {
                reason: GeminiError::QuotaExhausted(described),
                after,
            }
        }
        408 | 500 | 502 | 503 | 504 => Attempt::Retry {
            reason: GeminiError::Unavailable(described),
            after: None,
        },
        _ => Attempt::Fail(GeminiError::InvalidRequest(described)),
    }
}

/// Reads a 200 answer: an image, a block, or "no image".
fn classify_success(text: &str) -> Attempt {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Attempt::Retry {
                reason: GeminiError::BadResponse(format!("not JSON: {e}")),
                after: None,
            };
        }
    };
    if let Some(reason) = v
        .pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str)
    {
        return Attempt::Fail(GeminiError::PromptBlocked(reason.to_owned()));
    }
    let Some(candidates) = v
        .get("candidates")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    else {
        return Attempt::Retry {
            reason: GeminiError::NoImage("no candidates".into()),
            after: None,
        };
    };
    let cand = &candidates[0];
    let finish = cand
        .get("finishReason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Thinking models (Gemini 3 image models) send their drafts first, as parts marked
    // `"thought": true`: they are neither the answer nor what the model said.
    let parts: Vec<Value> = cand
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .cloned()
        .collect();
    if let Some(image) = parts.iter().rev().find_map(image_part) {
        return image;
    }
    no_image(finish, &parts)
}

/// The outcome an image part gives, if `p` is one (`inlineData` with an `image/*` type).
fn image_part(p: &Value) -> Option<Attempt> {
    let inline = p.get("inlineData").or_else(|| p.get("inline_data"))?;
    let mime = inline
        .get("mimeType")
        .or_else(|| inline.get("mime_type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !mime.starts_with("image/") {
        return None;
    }
    let Some(data) = inline.get("data").and_then(Value::as_str) else {
        return Some(Attempt::Fail(GeminiError::BadResponse(
            "image part without data".into(),
        )));
    };
    Some(match B64.decode(data) {
        Ok(bytes) if !bytes.is_empty() => Attempt::Done(GeneratedImage {
            bytes,
            mime: mime.to_owned(),
            attempts: 1,
        }),
        Ok(_) => Attempt::Fail(GeminiError::BadResponse("empty image data".into())),
        Err(e) => Attempt::Fail(GeminiError::BadResponse(format!(
            "image data is not base64: {e}"
        ))),
    })
}

/// A candidate without an image: blocked output (final), else retried with what it said.
fn no_image(finish: String, parts: &[Value]) -> Attempt {
    const BLOCKS: &[&str] = &[
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    ];
    if BLOCKS.contains(&finish.as_str()) {
        return Attempt::Fail(GeminiError::OutputBlocked(finish));
    }
    let said = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let why = if finish.is_empty() {
        "no finish reason".to_owned()
    } else {
        finish
    };
    let why = if said.is_empty() {
        why
    } else {
        format!("{why}; the model said: {}", truncate(&said, 200))
    };
    Attempt::Retry {
        reason: GeminiError::NoImage(why),
        after: None,
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect::<String>() + "..."
    }
}

/// Parses a protobuf Duration string (`"26s"`, `"38.804097346s"`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// The prompt for a procedure at an intensity: describes the edit and everything that must not
/// change (identity, skin, hair, expression, lighting, background).
pub fn prompt_for(procedure_id: &str, intensity: &str) -> Option<String> {
    let edit = match procedure_id {
        "rhinoplasty" => "a rhinoplasty: narrow the nasal base slightly and refine the nasal tip",
        "blepharoplasty" => {
            "an upper and lower blepharoplasty: lift the upper eyelid fold slightly and smooth under-eye puffiness"
        }
        "facelift" => {
            "a facelift: lift and tighten the jowls and jawline, softening the nasolabial folds"
        }
        "lip-augmentation" => {
            "a lip augmentation: make both lips slightly fuller, keeping the mouth corners in place"
        }
        "chin-augmentation" => {
            "a chin augmentation: add a little length and projection to the chin"
        }
        "brow-lift" => "a brow lift: raise the eyebrows slightly, the outer brow a little more",
        "otoplasty" => "an otoplasty: set prominent ears slightly closer to the head",
        "skin-resurfacing" => {
            "a skin resurfacing treatment: even out the skin texture and soften fine lines"
        }
        _ => return None,
    };
    Some(format!(
        "Photorealistic edit of THIS person's photo for a medical consultation. Simulate a {intensity}, realistic result of {edit}. \
         Do not change the person's identity, skin tone, hair, expression, lighting, background, clothing or any other facial \
         feature. Keep the framing and the image size. Output one image."
    ))
}

#[cfg(test)]
mod tests {

    #[test]
    fn keys_are_scrubbed_from_googles_messages() {
        let real = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q";
        let m = format!("Permission denied: Consumer 'api_key:{real}' has been suspended.");
        let out = super::scrub(&m, "configured");
        assert!(!out.contains(real), "{out}");
        assert_eq!(
            out,
            "Permission denied: Consumer 'api_key:[redacted]' has been suspended."
        );
        assert_eq!(
            super::scrub(&format!("key {real}, again {real}."), ""),
            "key [redacted], again [redacted]."
        );
        assert_eq!(
            super::scrub("my-secret in text", "my-secret"),
            "[redacted] in text"
        );
        assert_eq!(
            super::scrub("Consumer 'api_key:my-secret'", "my-secret"),
            "Consumer 'api_key:[redacted]'"
        );
        assert_eq!(super::scrub("no keys here", "k3y"), "no keys here");
    }
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("26s"), Some(Duration::from_secs(26)));
        assert_eq!(parse_duration("0.2s"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn prompts_exist_for_every_procedure() {
        for p in afterview_core::catalog::RENDERABLE {
            assert!(prompt_for(p, "moderate").unwrap().contains("Do not change"));
        }
        assert!(prompt_for("liposuction", "moderate").is_none());
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let c = GeminiConfig::new("AIzaSECRET");
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
