//! The web app: one page (`/`, and `/monitor` for operators) plus its script, stylesheet and
//! icon, compiled into the binary with `include_str!` — no Node, no build step, no network at
//! run time. The page talks only to the public API (`/api/...`) with the user's bearer token,
//! so it doubles as the API's reference client.
//!
//! Invariants: every response carries a Content-Security-Policy that allows scripts, styles and
//! connections to this origin only (plus Google's sign-in origins when Firebase sign-in is on),
//! `nosniff`, no referrer and no framing. The page holds no data: everything it shows comes
//! from API calls the server authorizes, so serving it to anyone is safe.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const ICON: &str = include_str!("../assets/icon.svg");

/// What the page's policy must allow.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Firebase sign-in is on: allow Google's SDK and auth endpoints.
    pub firebase: bool,
}

/// The Content-Security-Policy for `config`.
pub fn content_security_policy(config: &WebConfig) -> String {
    let (script, connect, frame) = if config.firebase {
        (
            "'self' https://www.gstatic.com https://apis.google.com",
            "'self' ws: wss: https://*.googleapis.com https://*.firebaseapp.com",
            "https://*.firebaseapp.com",
        )
    } else {
        ("'self'", "'self' ws: wss:", "'none'")
    };
    format!(
        "default-src 'self'; script-src {script}; style-src 'self'; img-src 'self' blob: data:; \
         connect-src {connect}; frame-src {frame}; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'; object-src 'none'"
    )
}

fn asset(body: &'static str, content_type: &'static str, csp: &HeaderValue) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// The web app's routes, to merge with the API's.
pub fn router<S: Clone + Send + Sync + 'static>(config: &WebConfig) -> Router<S> {
    let csp = HeaderValue::from_str(&content_security_policy(config)).expect("ASCII policy");
    let page = {
        let csp = csp.clone();
        move || {
            let csp = csp.clone();
            async move { asset(INDEX, "text/html; charset=utf-8", &csp) }
        }
    };
    let js = {
        let csp = csp.clone();
        move || {
            let csp = csp.clone();
            async move { asset(APP_JS, "text/javascript; charset=utf-8", &csp) }
        }
    };
    let css = {
        let csp = csp.clone();
        move || {
            let csp = csp.clone();
            async move { asset(APP_CSS, "text/css; charset=utf-8", &csp) }
        }
    };
    let icon = move || {
        let csp = csp.clone();
        async move { asset(ICON, "image/svg+xml", &csp) }
    };
    Router::new()
        .route("/", get(page.clone()))
        .route("/monitor", get(page.clone()))
        .route("/history", get(page))
        .route("/assets/app.js", get(js))
        .route("/assets/app.css", get(css))
        .route("/assets/icon.svg", get(icon))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn pages_and_assets_are_served_with_a_strict_policy() {
        let app: Router = router(&WebConfig::default());
        for (path, ct) in [
            ("/", "text/html"),
            ("/monitor", "text/html"),
            ("/history", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
            ("/assets/icon.svg", "image/svg+xml"),
        ] {
            let r = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let h = r.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ct));
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("gstatic"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn firebase_sign_in_widens_the_policy_only_to_google() {
        let csp = content_security_policy(&WebConfig { firebase: true });
        assert!(
            csp.contains("script-src 'self' https://www.gstatic.com https://apis.google.com;"),
            "{csp}"
        );
        assert!(
            csp.contains("frame-src https://*.firebaseapp.com;"),
            "{csp}"
        );
        let plain = content_security_policy(&WebConfig::default());
        assert!(plain.contains("frame-src 'none';"), "{plain}");
    }

    #[test]
    fn the_page_references_only_its_own_assets() {
        for src in INDEX
            .split("src=\"")
            .skip(1)
            .chain(INDEX.split("href=\"").skip(1))
        {
            let url = src.split('"').next().unwrap();
            assert!(
                (url.starts_with('/') && !url.starts_with("//")) || url.starts_with('#'),
                "external reference {url}"
            );
        }
    }
}
