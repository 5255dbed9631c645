//! `GET /`: the status page, one HTML file with its style and script inline, which reads the API it is served
//! beside (`/v1/status`, `/v1/peers`, `/v1/leader`, `/v1/events`). It changes nothing.

use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The page itself.
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// The page's Content-Security-Policy: its own inline script and style, by hash, and requests to this origin
/// only. Whatever a peer's record holds is rendered as text, and even markup slipped in could neither run
/// script nor load anything.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(STATUS_PAGE, "script"),
        hashes(STATUS_PAGE, "style"),
    )
});

/// The CSP source expression for each inline `<tag>` element of `html`, as `'sha256-…'`.
fn hashes(html: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    if out.is_empty() {
        "'none'".to_owned()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_pages_own_script_and_style() {
        let csp = &*CONTENT_SECURITY_POLICY;
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        // Edited script or an injected one would not match.
        assert_ne!(
            hashes("<script>a</script>", "script"),
            hashes("<script>b</script>", "script")
        );
        assert_eq!(hashes("<p>no script</p>", "script"), "'none'");
    }

    /// Nothing outside the CVM is needed, and nothing from a record is ever parsed as markup.
    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_sets_only_text() {
        for outside in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "//cdn",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!STATUS_PAGE.contains(outside), "the page uses {outside}");
        }
        for route in [
            "/v1/status",
            "/v1/peers",
            "/v1/peers/refused",
            "/v1/leader",
            "/v1/events",
        ] {
            assert!(
                STATUS_PAGE.contains(&format!("\"{route}\"")),
                "the page does not read {route}"
            );
        }
    }
}
