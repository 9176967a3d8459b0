//! The web dashboard's static files (issue 14), embedded in the binary: no CDN, nothing
//! fetched at run time. Sources are in `controller/ui/`; the page talks only to this
//! controller's REST API (`/api/v1/session` to sign in, then `/api/v1/stream`, `/agents`,
//! `/jobs`).
//!
//! Every response of the REST listener carries [`SECURITY_HEADERS`]: a Content-Security-Policy
//! that allows scripts, styles and connections to this origin only (no inline script, no
//! `eval`), no framing, no referrer, no MIME sniffing.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

/// One embedded file.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Its content type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../ui/index.html"),
};
const APP_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../ui/app.js"),
};
const APP_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("../ui/app.css"),
};

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Headers set on every response of the REST listener.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// The embedded file served at `path` (`/`, `/ui/app.js`, `/ui/app.css`), if any.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some(INDEX),
        "/ui/app.js" => Some(APP_JS),
        "/ui/app.css" => Some(APP_CSS),
        _ => None,
    }
}

/// `200` with `a` (revalidated on every load, so a new binary's page is never mixed with an
/// old script).
pub fn serve(a: Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        a.body,
    )
        .into_response()
}

/// Sets [`SECURITY_HEADERS`] on `r`, and `Cache-Control: no-store` unless it has one.
pub fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in SECURITY_HEADERS {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_embedded_script_and_style() {
        let index = asset("/").expect("index");
        assert!(index.body.contains(r#"<script src="/ui/app.js""#));
        assert!(index.body.contains(r#"href="/ui/app.css""#));
        // The CSP forbids inline script: the page must have none.
        assert!(
            !index.body.contains("<script>"),
            "inline script in index.html"
        );
        assert!(
            !index.body.contains("onclick="),
            "inline handler in index.html"
        );
        assert!(!index.body.contains("http://") && !index.body.contains("https://"));
        assert!(asset("/ui/app.js").is_some() && asset("/ui/app.css").is_some());
        assert!(asset("/ui/../Cargo.toml").is_none());
        assert!(asset("/ui/").is_none());
    }

    #[test]
    fn every_response_gets_the_security_headers() {
        let r = secure(serve(INDEX));
        assert_eq!(r.headers()["content-security-policy"], CSP);
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
        let r = secure(().into_response());
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
    }
}
