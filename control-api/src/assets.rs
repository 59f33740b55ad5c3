//! The web demo's files: embedded in the binary by `build.rs` (so the server runs with no
//! files beside it), or read from a directory given with `--web-root` (to edit the demo
//! without rebuilding).

use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The content type for a file name.
fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Looks up a request path (`/` means `index.html`). Paths with `..` or hidden parts are
/// refused.
pub async fn lookup(web_root: Option<&Path>, path: &str) -> Option<(&'static str, Vec<u8>)> {
    let name = path.trim_start_matches('/');
    let name = if name.is_empty() { "index.html" } else { name };
    if name
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return None;
    }
    match web_root {
        Some(root) => tokio::fs::read(root.join(name))
            .await
            .ok()
            .map(|bytes| (content_type(name), bytes)),
        None => WEB_ASSETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, body)| (content_type(name), body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_and_refused() {
        assert!(
            lookup(None, "/")
                .await
                .is_some_and(|(ct, _)| ct.starts_with("text/html"))
        );
        assert!(
            lookup(None, "/app.js")
                .await
                .is_some_and(|(ct, _)| ct.starts_with("text/javascript"))
        );
        assert!(lookup(None, "/../Cargo.toml").await.is_none());
        assert!(lookup(None, "/.git/config").await.is_none());
        assert!(lookup(None, "/nope.js").await.is_none());
    }
}
