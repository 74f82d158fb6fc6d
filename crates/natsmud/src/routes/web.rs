//! `GET /` and `GET /static/…`: the web client, embedded in the binary.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static CLIENT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/static");

/// The page's own `<meta>` policy, plus what only a header can say: no other site may frame
/// the client (clickjacking). Keep the two in step with static/index.html.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub async fn index() -> Response {
    file("index.html")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

fn file(path: &str) -> Response {
    // include_dir only knows the embedded files, so `..` cannot escape the folder.
    match CLIENT.get_file(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                // For browsers that predate `frame-ancestors`.
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            file.contents(),
        )
            .into_response(),
        None => crate::error::error_body(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_policy_is_the_pages_own_plus_frame_ancestors() {
        let page = CLIENT
            .get_file("index.html")
            .and_then(|f| f.contents_utf8())
            .unwrap_or_default();
        let meta = page
            .split("http-equiv=\"Content-Security-Policy\" content=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert!(!meta.is_empty(), "index.html has a CSP meta tag");
        assert_eq!(
            CONTENT_SECURITY_POLICY,
            format!("{meta}; frame-ancestors 'none'")
        );
    }
}
