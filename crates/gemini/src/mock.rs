//! A local stand-in for `generativelanguage.googleapis.com`, speaking the real wire format:
//! request validation (key, model, JSON, inline image, modalities), successful edits (a
//! deterministic visible change of the sent photo, PNG or JPEG), and every failure a client
//! must handle (blocks, text-only answers, 429 with `RetryInfo`, per-day quota, 5xx, malformed
//! JSON, slow answers). Tests queue the next answers; every request is recorded (the key is
//! recorded only as "present").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// Models the mock serves.
pub const MODELS: &[&str] = &["gemini-2.5-flash-image", "gemini-3-pro-image-preview"];

/// What the next answer is.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// An edited image (PNG).
    Ok,
    /// An edited image as JPEG.
    OkJpeg,
    /// An edited image framed as Gemini 2.5 frames its answers when asked no aspect ratio:
    /// turned by 2°, cropped to a square about its middle and 1024 × 1024 (PNG).
    OkReframed,
    /// A picture that shows no face (a flat grey 1024 × 1024 PNG): the model drew something
    /// else.
    OkWithoutFace,
    /// A text part, then the image.
    OkTextThenImage,
    /// As a thinking model (Gemini 3 image models) answers: a thought and a draft image (a
    /// flat grey picture), both marked `"thought": true`, then the edited image with its
    /// `thoughtSignature`.
    OkThinking,
    /// `finishReason: STOP` with only text.
    TextOnly,
    /// `promptFeedback.blockReason`.
    PromptBlocked(&'static str),
    /// A safety `finishReason` without parts.
    OutputBlocked(&'static str),
    /// `finishReason: NO_IMAGE`.
    NoImage,
    /// 429 `RESOURCE_EXHAUSTED` with `RetryInfo.retryDelay`.
    RateLimited(&'static str),
    /// 429 on a per-day quota.
    QuotaPerDay,
    /// An error status (500, 503, 504, ...).
    Status(u16),
    /// HTTP 200 with a body that is not JSON.
    MalformedJson,
    /// An image part whose data is not base64.
    BadBase64,
    /// Wait, then answer with the inner scenario.
    Slow(u64, Box<Scenario>),
    /// 403 `PERMISSION_DENIED`, reason `CONSUMER_SUSPENDED`: Google names the key itself in
    /// the message (`Consumer 'api_key:AIza…' has been suspended.`).
    KeySuspended,
}

/// What a request looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Model in the path.
    pub model: String,
    /// Whether `x-goog-api-key` was sent.
    pub key_header: bool,
    /// The prompt text.
    pub prompt: String,
    /// Size of the inline image.
    pub image_bytes: usize,
    /// Width and height of the inline image.
    pub image_size: (u32, u32),
}

#[derive(Default)]
struct MockState {
    queue: VecDeque<Scenario>,
    requests: Vec<Recorded>,
}

#[derive(Clone)]
struct App {
    key: String,
    state: Arc<Mutex<MockState>>,
}

/// A running mock.
pub struct MockGemini {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The key it accepts.
    pub api_key: String,
    state: Arc<Mutex<MockState>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockGemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGemini")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl MockGemini {
    /// Starts on a free port; answers `scenarios` in order, then [`Scenario::Ok`].
    pub async fn start(api_key: &str, scenarios: Vec<Scenario>) -> Self {
        let state = Arc::new(Mutex::new(MockState {
            queue: scenarios.into(),
            requests: vec![],
        }));
        let app = Router::new()
            .route("/v1beta/models/{*rest}", post(generate))
            .with_state(App {
                key: api_key.to_owned(),
                state: state.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock");
        let addr = listener.local_addr().expect("mock address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}"),
            api_key: api_key.to_owned(),
            state,
            task,
        }
    }

    /// Queues more answers.
    pub fn push(&self, s: Scenario) {
        self.state.lock().expect("mock lock").queue.push_back(s);
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("mock lock").requests.clone()
    }
}

impl Drop for MockGemini {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn google_error(status: StatusCode, grpc: &str, message: &str, details: Value) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": grpc, "details": details}});
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

async fn generate(
    State(app): State<App>,
    Path(rest): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let checked = check_call(&app, &rest, &q, &headers).and_then(|c| Ok((c, read_request(&body)?)));
    let ((model, key_header), (prompt, image)) = match checked {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let scenario = {
        let mut st = app.state.lock().expect("mock lock");
        st.requests.push(Recorded {
            model: model.clone(),
            key_header,
            prompt,
            image_bytes: image.len(),
            image_size: image::load_from_memory(&image)
                .map(|i| (i.width(), i.height()))
                .unwrap_or_default(),
        });
        st.queue.pop_front().unwrap_or(Scenario::Ok)
    };
    answer(scenario, &model, &image, &app.key).await
}

/// A request the mock refuses, with Google's answer (boxed: a response is large).
type Refused = Box<Response>;

fn refused(status: StatusCode, grpc: &str, message: &str, details: Value) -> Refused {
    Box::new(google_error(status, grpc, message, details))
}

/// The method, the API key (header or `?key=`) and the model, checked as Google does: the
/// model's name and whether the key came in the header.
fn check_call(
    app: &App,
    rest: &str,
    q: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(String, bool), Refused> {
    let not_found = || {
        refused(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Method not found.",
            json!([]),
        )
    };
    let Some((model, method)) = rest.rsplit_once(':') else {
        return Err(not_found());
    };
    if method != "generateContent" {
        return Err(not_found());
    }
    let header_key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let key = header_key.clone().or_else(|| q.get("key").cloned());
    let Some(key) = key else {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            json!([]),
        ));
    };
    if key != app.key {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}}]),
        ));
    }
    if !MODELS.contains(&model) {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent."
            ),
            json!([]),
        ));
    }
    Ok((model.to_owned(), header_key.is_some()))
}

/// The prompt and the one input image of a request body; Google's 400s for what it refuses.
fn read_request(body: &str) -> Result<(String, Vec<u8>), Refused> {
    let bad = |msg: &str| refused(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg, json!([]));
    let req: Value = serde_json::from_str(body)
        .map_err(|e| bad(&format!("Invalid JSON payload received. {e}")))?;
    let parts = req
        .pointer("/contents/0/parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut image: Option<Vec<u8>> = None;
    let mut prompt = String::new();
    for p in &parts {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            prompt.push_str(t);
        }
        if let Some(inline) = get(p, "inlineData", "inline_data") {
            image = Some(inline_image(inline)?);
        }
    }
    let modalities = req
        .get("generationConfig")
        .or_else(|| req.get("generation_config"))
        .and_then(|g| get(g, "responseModalities", "response_modalities"))
        .cloned()
        .unwrap_or(json!(["TEXT"]));
    if ![
        json!(["IMAGE"]),
        json!(["TEXT", "IMAGE"]),
        json!(["IMAGE", "TEXT"]),
    ]
    .contains(&modalities)
    {
        return Err(bad(
            "The requested combination of response modalities is not supported by the model.",
        ));
    }
    let image = image.ok_or_else(|| bad("An input image is required."))?;
    Ok((prompt, image))
}

/// An `inlineData` part's image bytes: a supported MIME type and a decodable picture.
fn inline_image(inline: &Value) -> Result<Vec<u8>, Refused> {
    let bad = |msg: &str| refused(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg, json!([]));
    let mime = get(inline, "mimeType", "mime_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if ![
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/heic",
        "image/heif",
    ]
    .contains(&mime)
    {
        return Err(bad(&format!("Unsupported MIME type: {mime}")));
    }
    let data = inline.get("data").and_then(Value::as_str).unwrap_or("");
    match B64.decode(data) {
        Ok(b) if image::load_from_memory(&b).is_ok() => Ok(b),
        _ => Err(bad("Provided image is not valid.")),
    }
}

fn edited(image: &[u8], jpeg: bool) -> (Vec<u8>, &'static str) {
    let mut img = image::load_from_memory(image)
        .expect("validated above")
        .into_rgb8();
    for p in img.pixels_mut() {
        p.0[0] = p.0[0].saturating_add(40);
        p.0[2] = p.0[2].saturating_sub(20);
    }
    encoded(&img, jpeg)
}

/// The edit, framed as Gemini frames an answer ([`Scenario::OkReframed`]).
fn reframed(image: &[u8]) -> (Vec<u8>, &'static str) {
    let (bytes, _) = edited(image, false);
    let img = image::load_from_memory(&bytes)
        .expect("encoded above")
        .into_rgb8();
    let (w, h) = img.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = 2f32.to_radians().sin_cos();
    let side = w.min(h) as f32;
    let k = side / 1024.0;
    let square = image::RgbImage::from_fn(1024, 1024, |x, y| {
        // Each answer pixel, in the edit's pixels: about the middle, turned, scaled.
        let (u, v) = (
            (x as f32 + 0.5) * k - side / 2.0,
            (y as f32 + 0.5) * k - side / 2.0,
        );
        let sx = (cx + u * cos + v * sin).clamp(0.0, (w - 1) as f32);
        let sy = (cy - u * sin + v * cos).clamp(0.0, (h - 1) as f32);
        *img.get_pixel(sx as u32, sy as u32)
    });
    encoded(&square, false)
}

fn encoded(img: &image::RgbImage, jpeg: bool) -> (Vec<u8>, &'static str) {
    let mut out = std::io::Cursor::new(vec![]);
    let (fmt, mime) = if jpeg {
        (image::ImageFormat::Jpeg, "image/jpeg")
    } else {
        (image::ImageFormat::Png, "image/png")
    };
    img.write_to(&mut out, fmt).expect("encode in memory");
    (out.into_inner(), mime)
}

fn ok_body(model: &str, parts: Vec<Value>, finish: &str) -> Response {
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 1301, "candidatesTokenCount": 1290, "totalTokenCount": 2591,
                           "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]},
        "modelVersion": model,
        "responseId": "mock-response",
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn answer(s: Scenario, model: &str, image: &[u8], key: &str) -> Response {
    match s {
        Scenario::Slow(ms, inner) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Box::pin(answer(*inner, model, image, key)).await
        }
        Scenario::KeySuspended => google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!("Permission denied: Consumer 'api_key:{key}' has been suspended."),
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED",
                    "domain": "googleapis.com", "metadata": {"consumer": "projects/123456789012",
                    "service": "generativelanguage.googleapis.com"}}]),
        ),
        Scenario::Ok
        | Scenario::OkJpeg
        | Scenario::OkReframed
        | Scenario::OkWithoutFace
        | Scenario::OkTextThenImage
        | Scenario::OkThinking
        | Scenario::TextOnly
        | Scenario::NoImage
        | Scenario::BadBase64 => success(s, model, image),
        Scenario::PromptBlocked(_) | Scenario::OutputBlocked(_) | Scenario::MalformedJson => {
            refusal(s, model)
        }
        Scenario::RateLimited(_) | Scenario::QuotaPerDay | Scenario::Status(_) => failure(s),
    }
}

/// HTTP 200 with candidates (an image, text, or neither).
fn success(s: Scenario, model: &str, image: &[u8]) -> Response {
    match s {
        Scenario::Ok | Scenario::OkJpeg | Scenario::OkReframed | Scenario::OkWithoutFace => {
            let (bytes, mime) = match s {
                Scenario::OkReframed => reframed(image),
                Scenario::OkWithoutFace => encoded(
                    &image::RgbImage::from_pixel(1024, 1024, image::Rgb([128; 3])),
                    false,
                ),
                _ => edited(image, s == Scenario::OkJpeg),
            };
            ok_body(
                model,
                vec![json!({"inlineData": {"mimeType": mime, "data": B64.encode(bytes)}})],
                "STOP",
            )
        }
        Scenario::OkTextThenImage => {
            let (bytes, mime) = edited(image, false);
            ok_body(
                model,
                vec![
                    json!({"text": "Here is the simulated result."}),
                    json!({"inlineData": {"mimeType": mime, "data": B64.encode(bytes)}}),
                ],
                "STOP",
            )
        }
        Scenario::OkThinking => {
            let (draft, draft_mime) = encoded(
                &image::RgbImage::from_pixel(1024, 1024, image::Rgb([128; 3])),
                false,
            );
            let (bytes, mime) = edited(image, false);
            ok_body(
                model,
                vec![
                    json!({"text": "Planning the edit: the nose, narrower.", "thought": true}),
                    json!({"inlineData": {"mimeType": draft_mime, "data": B64.encode(draft)}, "thought": true}),
                    json!({"inlineData": {"mimeType": mime, "data": B64.encode(bytes)}, "thoughtSignature": "c2lnbmF0dXJl"}),
                ],
                "STOP",
            )
        }
        Scenario::TextOnly => ok_body(
            model,
            vec![json!({"text": "I can describe the change, but here is no image."})],
            "STOP",
        ),
        Scenario::NoImage => ok_body(model, vec![], "NO_IMAGE"),
        Scenario::BadBase64 => ok_body(
            model,
            vec![json!({"inlineData": {"mimeType": "image/png", "data": "%%%not-base64%%%"}})],
            "STOP",
        ),
        _ => unreachable!("not a success scenario"),
    }
}

/// HTTP 200 that is not a success: blocked prompts and outputs, a cut-off body.
fn refusal(s: Scenario, model: &str) -> Response {
    match s {
        Scenario::PromptBlocked(reason) => {
            let body = json!({"promptFeedback": {"blockReason": reason, "safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"}]},
                              "usageMetadata": {"promptTokenCount": 1301, "totalTokenCount": 1301}, "modelVersion": model});
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Scenario::OutputBlocked(reason) => {
            let body = json!({"candidates": [{"content": {"role": "model"}, "finishReason": reason,
                                                "finishMessage": "The model output could not be generated.", "index": 0}],
                              "modelVersion": model});
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Scenario::MalformedJson => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"candidates\": [{\"content\": ".to_owned(),
        )
            .into_response(),
        _ => unreachable!("not a refusal scenario"),
    }
}

/// Google's error answers: quota (per minute with RetryInfo, per day) and server statuses.
fn failure(s: Scenario) -> Response {
    match s {
        Scenario::RateLimited(delay) => google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                  "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "10"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
            ]),
        ),
        Scenario::QuotaPerDay => google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "100"}]}]),
        ),
        Scenario::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (grpc, msg) = match code {
                503 => (
                    "UNAVAILABLE",
                    "The model is overloaded. Please try again later.",
                ),
                504 => ("DEADLINE_EXCEEDED", "Deadline exceeded."),
                _ => ("INTERNAL", "An internal error has occurred."),
            };
            google_error(status, grpc, msg, json!([]))
        }
        _ => unreachable!("not a failure scenario"),
    }
}
