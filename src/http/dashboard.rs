//! The dashboard: one HTML page and its two files (`src/dashboard/`), embedded in the binary
//! and served with the headers that keep them safe and cacheable. It owns no data: the page's
//! script reads everything through the public API, with the token the user gives it.
//!
//! The page is served fresh on every load (`no-cache`) with `DASHBOARD_BASE_PATH` written
//! into it, so it builds every URL from that prefix and works behind a reverse proxy. Its
//! files are named by a hash of their contents (`app.3f2a…js`), so a browser may keep them
//! for a year: a new build names new files.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

const PAGE: &str = include_str!("../dashboard/index.html");

/// No script but our own file, no inline script or style, no frames, API calls to this
/// origin only. `data:` images only for the empty favicon.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file of the page.
struct Asset {
    /// The name without a hash (`app.js`): still served, but never cached unchecked.
    name: &'static str,
    /// The name the page links to, with the hash of the contents (`app.<hash>.js`).
    versioned: String,
    content_type: &'static str,
    body: &'static str,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        [
            (
                "app.js",
                "text/javascript; charset=utf-8",
                include_str!("../dashboard/app.js"),
            ),
            (
                "app.css",
                "text/css; charset=utf-8",
                include_str!("../dashboard/app.css"),
            ),
        ]
        .into_iter()
        .map(|(name, content_type, body)| Asset {
            name,
            versioned: versioned_name(name, body),
            content_type,
            body,
        })
        .collect()
    })
}

/// `app.js` with contents `body` is `app.<12 hex digits of its SHA-256>.js`.
fn versioned_name(name: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hash: String = digest
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    match name.rsplit_once('.') {
        Some((stem, extension)) => format!("{stem}.{hash}.{extension}"),
        None => format!("{name}.{hash}"),
    }
}

/// `GET /`: the page, with the base path and the versioned file names written in.
pub fn page(state: &AppState) -> Result<ApiResponse> {
    Ok(render_page(&state.base_path))
}

fn render_page(base_path: &str) -> ApiResponse {
    let mut html = PAGE.replace("{{BASE_PATH}}", &escape_html(base_path));
    for asset in assets() {
        let placeholder = format!("{{{{ASSET:{}}}}}", asset.name);
        let url = format!("{base_path}/assets/{}", asset.versioned);
        html = html.replace(&placeholder, &escape_html(&url));
    }
    with_safety_headers(ApiResponse::text(200, "text/html; charset=utf-8", html))
        .with_header("Cache-Control", "no-cache".into())
}

/// `GET /assets/{name}`: a versioned name is cached for a year, the plain name revalidated.
pub fn asset(name: &str) -> Result<ApiResponse> {
    for asset in assets() {
        let cache = if name == asset.versioned {
            "public, max-age=31536000, immutable"
        } else if name == asset.name {
            "no-cache"
        } else {
            continue;
        };
        let response = ApiResponse::text(200, asset.content_type, asset.body.to_string());
        return Ok(with_safety_headers(response).with_header("Cache-Control", cache.into()));
    }
    Err(Error::NotFound(format!(
        "no dashboard file {}",
        name.chars().take(100).collect::<String>()
    )))
}

fn with_safety_headers(response: ApiResponse) -> ApiResponse {
    response
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY.into())
        .with_header("X-Content-Type-Options", "nosniff".into())
        .with_header("Referrer-Policy", "no-referrer".into())
        .with_header("X-Frame-Options", "DENY".into())
}

/// Text made safe inside HTML text and double-quoted attribute values.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a ApiResponse, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn the_page_links_its_versioned_files_under_the_base_path() {
        let response = render_page("/admin/jobs");
        let html = response.body.as_deref().unwrap();
        assert!(html.contains(r#"<meta name="base-path" content="/admin/jobs">"#));
        for asset in assets() {
            let url = format!("\"/admin/jobs/assets/{}\"", asset.versioned);
            assert!(html.contains(&url), "{url} in {html}");
        }
        assert!(!html.contains("{{"), "a placeholder is left: {html}");
        assert_eq!(header(&response, "Cache-Control"), Some("no-cache"));
        assert_eq!(header(&response, "X-Content-Type-Options"), Some("nosniff"));
        assert!(header(&response, "Content-Security-Policy")
            .is_some_and(|policy| policy.contains("script-src 'self';")));
    }

    #[test]
    fn files_are_served_by_versioned_and_plain_name_and_others_are_404() {
        let script = &assets()[0];
        assert!(script.versioned.starts_with("app.") && script.versioned.ends_with(".js"));
        assert_eq!(script.versioned.len(), "app..js".len() + 12);
        let versioned = asset(&script.versioned).unwrap();
        assert_eq!(versioned.content_type, "text/javascript; charset=utf-8");
        assert_eq!(
            header(&versioned, "Cache-Control"),
            Some("public, max-age=31536000, immutable")
        );
        let plain = asset("app.css").unwrap();
        assert_eq!(plain.content_type, "text/css; charset=utf-8");
        assert_eq!(header(&plain, "Cache-Control"), Some("no-cache"));
        for unknown in ["app.000000000000.js", "index.html", "..", ""] {
            assert!(
                matches!(asset(unknown), Err(Error::NotFound(_))),
                "{unknown}"
            );
        }
    }

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
