//! The Gemini client against the local mock: success, retries that honour RetryInfo, blocks,
//! text-only answers, exhausted 5xx, malformed JSON, timeouts, credentials.

use std::time::{Duration, Instant};

use afterview_core::ErrorCode;
use afterview_gemini::mock::{MockGemini, Scenario};
use afterview_gemini::{GeminiClient, GeminiConfig, GeminiError};

const KEY: &str = "AIza-test-key";

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 7, y as u8 * 9, 100]));
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn client(mock: &MockGemini, key: &str) -> GeminiClient {
    let mut cfg = GeminiConfig::new(key);
    cfg.base_url = mock.base_url.clone();
    cfg.initial_backoff = Duration::from_millis(20);
    cfg.max_backoff = Duration::from_millis(200);
    cfg.timeout = Duration::from_millis(1500);
    GeminiClient::new(cfg).unwrap()
}

async fn run(
    scenarios: Vec<Scenario>,
) -> (
    Result<afterview_gemini::GeneratedImage, GeminiError>,
    MockGemini,
    Duration,
) {
    let mock = MockGemini::start(KEY, scenarios).await;
    let c = client(&mock, KEY);
    let t0 = Instant::now();
    let r = c
        .edit_image(&png(), "image/png", "simulate a rhinoplasty")
        .await;
    (r, mock, t0.elapsed())
}

#[tokio::test]
async fn success_returns_the_edited_image() {
    let (r, mock, _) = run(vec![Scenario::Ok]).await;
    let img = r.unwrap();
    assert_eq!((img.mime.as_str(), img.attempts), ("image/png", 1));
    let decoded = image::load_from_memory(&img.bytes).unwrap().into_rgb8();
    assert_eq!(decoded.dimensions(), (32, 24));
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].key_header, "the key goes in x-goog-api-key");
    assert_eq!(reqs[0].model, "gemini-2.5-flash-image");
    assert!(reqs[0].prompt.contains("rhinoplasty"));
}

#[tokio::test]
async fn text_before_the_image_and_jpeg_answers_are_fine() {
    let (r, _, _) = run(vec![Scenario::OkTextThenImage]).await;
    assert!(r.is_ok());
    let (r, _, _) = run(vec![Scenario::OkJpeg]).await;
    assert_eq!(r.unwrap().mime, "image/jpeg");
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_retry_delay() {
    let (r, mock, took) = run(vec![Scenario::RateLimited("0.3s"), Scenario::Ok]).await;
    assert_eq!(r.unwrap().attempts, 2);
    assert_eq!(mock.requests().len(), 2);
    assert!(
        took >= Duration::from_millis(300),
        "honoured retryDelay: {took:?}"
    );
}

#[tokio::test]
async fn a_daily_quota_is_not_retried() {
    let (r, mock, _) = run(vec![Scenario::QuotaPerDay, Scenario::Ok]).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiQuotaExhausted);
    assert!(e.to_string().contains("daily"), "{e}");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn blocks_fail_at_once_with_their_reason() {
    let (r, mock, _) = run(vec![Scenario::PromptBlocked("PROHIBITED_CONTENT")]).await;
    assert_eq!(
        r.unwrap_err(),
        GeminiError::PromptBlocked("PROHIBITED_CONTENT".into())
    );
    assert_eq!(mock.requests().len(), 1);
    let (r, _, _) = run(vec![Scenario::OutputBlocked("IMAGE_SAFETY")]).await;
    let e = r.unwrap_err();
    assert_eq!(
        (e.code(), e.to_string().contains("IMAGE_SAFETY")),
        (ErrorCode::GeminiBlocked, true)
    );
}

#[tokio::test]
async fn text_only_answers_are_retried_twice_then_fail() {
    let (r, mock, _) = run(vec![
        Scenario::TextOnly,
        Scenario::NoImage,
        Scenario::TextOnly,
        Scenario::Ok,
    ])
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiNoImage);
    assert_eq!(mock.requests().len(), 3);
    let (r, _, _) = run(vec![Scenario::TextOnly, Scenario::Ok]).await;
    assert_eq!(
        r.unwrap().attempts,
        2,
        "one text-only answer, then an image"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let (r, mock, _) = run(vec![
        Scenario::Status(503),
        Scenario::Status(500),
        Scenario::Ok,
    ])
    .await;
    assert_eq!(r.unwrap().attempts, 3);
    assert_eq!(mock.requests().len(), 3);
    let five = vec![
        Scenario::Status(503),
        Scenario::Status(500),
        Scenario::Status(504),
        Scenario::Status(503),
        Scenario::Status(502),
        Scenario::Ok,
    ];
    let (r, mock, _) = run(five).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiUnavailable);
    assert!(e.to_string().contains("after 5 attempts"), "{e}");
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn malformed_answers_are_bad_responses() {
    let all_bad = vec![Scenario::MalformedJson; 5];
    let (r, _, _) = run(all_bad).await;
    assert_eq!(r.unwrap_err().code(), ErrorCode::GeminiBadResponse);
    let (r, _, _) = run(vec![Scenario::BadBase64]).await;
    assert!(matches!(r, Err(GeminiError::BadResponse(m)) if m.contains("base64")));
    let (r, _, _) = run(vec![Scenario::MalformedJson, Scenario::Ok]).await;
    assert_eq!(r.unwrap().attempts, 2, "a garbled answer is retried");
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let (r, _, _) = run(vec![
        Scenario::Slow(2500, Box::new(Scenario::Ok)),
        Scenario::Ok,
    ])
    .await;
    assert_eq!(r.unwrap().attempts, 2);
    let slow = vec![Scenario::Slow(2500, Box::new(Scenario::Ok)); 5];
    let (r, _, took) = run(slow).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiUnavailable);
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(took < Duration::from_secs(12));
}

#[tokio::test]
async fn bad_credentials_and_models_fail_without_retry() {
    let mock = MockGemini::start(KEY, vec![]).await;
    let e = client(&mock, "wrong-key")
        .edit_image(&png(), "image/png", "x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiAuth);
    assert!(e.to_string().contains("API key not valid"));
    assert!(
        !e.to_string().contains("wrong-key"),
        "the key is never in errors"
    );
    let mut cfg = GeminiConfig::new(KEY);
    cfg.base_url = mock.base_url.clone();
    cfg.model = "gemini-nope".into();
    let e = GeminiClient::new(cfg)
        .unwrap()
        .edit_image(&png(), "image/png", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(e, GeminiError::InvalidRequest(ref m) if m.contains("not found")),
        "{e}"
    );
    assert!(mock.requests().is_empty(), "rejected before being recorded");
}

/// Google names a suspended key in its 403 message: the error (a task's message, a log line)
/// never carries it.
#[tokio::test]
async fn a_suspended_key_is_not_repeated_in_the_error() {
    let mock = MockGemini::start(KEY, vec![Scenario::KeySuspended]).await;
    let e = client(&mock, KEY)
        .edit_image(&png(), "image/png", "x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiAuth);
    let text = e.to_string();
    assert!(text.contains("has been suspended"), "{text}");
    assert!(!text.contains(KEY), "the key is never in errors: {text}");
    assert_eq!(mock.requests().len(), 1, "not retried");
}

/// With a time budget (a task's time left before its limit) the call and its retries end
/// within it, unavailable: five slow answers would take 7.5 s, the budget is 2.5 s.
#[tokio::test]
async fn a_call_with_a_time_budget_gives_up_within_it() {
    let slow = vec![Scenario::Slow(2500, Box::new(Scenario::Ok)); 5];
    let mock = MockGemini::start(KEY, slow).await;
    let mut cfg = GeminiConfig::new(KEY);
    cfg.base_url = mock.base_url.clone();
    cfg.initial_backoff = Duration::from_millis(20);
    cfg.timeout = Duration::from_millis(1500);
    cfg.min_attempt = Duration::from_millis(500);
    let c = GeminiClient::new(cfg).unwrap();
    let t0 = Instant::now();
    let e = c
        .edit_image_within(&png(), "image/png", "x", Some(Duration::from_millis(2500)))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.code(), ErrorCode::GeminiUnavailable, "{e}");
    assert!(took < Duration::from_millis(2900), "{took:?}");
    assert_eq!(mock.requests().len(), 2, "1.5 s, then the 1 s left");
    // No time at all: no call.
    let e = c
        .edit_image_within(&png(), "image/png", "x", Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::GeminiUnavailable);
    assert_eq!(mock.requests().len(), 2);
}

/// A thinking model's drafts (parts marked `"thought": true`, a flat grey picture here) are not
/// the answer: the final image is.
#[tokio::test]
async fn a_thinking_models_drafts_are_passed_over() {
    let (r, _, _) = run(vec![Scenario::OkThinking]).await;
    let img = r.unwrap();
    let decoded = image::load_from_memory(&img.bytes).unwrap().into_rgb8();
    assert_eq!(
        decoded.dimensions(),
        (32, 24),
        "the edit, not the 1024² draft"
    );
}

/// A redirect is not followed: it would carry the key (a custom header, kept across hosts)
/// and, for a 307, the photo to wherever it points.
#[tokio::test]
async fn a_redirect_is_not_followed() {
    use std::io::{Read, Write};
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let there = elsewhere.local_addr().unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let here = endpoint.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in endpoint.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 65536];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{there}/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let mut cfg = GeminiConfig::new(KEY);
    cfg.base_url = format!("http://{here}");
    cfg.initial_backoff = Duration::from_millis(20);
    cfg.max_backoff = Duration::from_millis(50);
    cfg.timeout = Duration::from_millis(1500);
    let r = GeminiClient::new(cfg)
        .unwrap()
        .edit_image(&png(), "image/png", "simulate a rhinoplasty")
        .await;
    assert!(r.is_err(), "a redirect is no answer");
    assert!(
        elsewhere.accept().is_err(),
        "nothing reached the redirect's target"
    );
}
