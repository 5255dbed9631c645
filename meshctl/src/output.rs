//! What a command prints: a sentence per fact for people, one JSON document for scripts.

use mesh_chain::redact::RedactedUrl;
use serde_json::Value;

/// Where results go, in the format the user chose.
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints `text` for people, or `value` as pretty JSON for scripts.
    pub(crate) fn emit(&self, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&value()).expect("a JSON value serialises")
            );
        } else {
            print!("{}", text());
        }
    }

    /// Prints a failure with its cause chain, to stderr; JSON mode adds `{"error": …}` on stdout.
    pub(crate) fn error(&self, e: &anyhow::Error) {
        let chain = causes(e);
        let hint = hint(e);
        if self.json {
            let mut error = chain.join(": ");
            if let Some(h) = &hint {
                error = format!("{error} ({h})");
            }
            println!("{}", serde_json::json!({ "error": error }));
        }
        eprintln!("error: {}", chain.join("\n  caused by: "));
        if let Some(h) = hint {
            eprintln!("  hint: {h}");
        }
    }
}

/// The causes of `e`, each once: an error that quotes its source in its own message (as the RPC's and
/// reqwest's do) is not followed by that source again. URLs are shown without their credentials.
pub(crate) fn causes(e: &anyhow::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = scrub_urls(&cause.to_string());
        if out.last().is_some_and(|last| last.contains(&text)) {
            continue;
        }
        out.push(text);
    }
    out
}

/// What to do when the RPC did not answer at all: nothing listens there, or no route leads there.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    use mesh_chain::quorum::Split;
    let unreachable = e.chain().any(|c| {
        c.downcast_ref::<alloy::transports::http::reqwest::Error>()
            .is_some_and(|r| r.is_connect() || r.is_timeout())
            || c.downcast_ref::<Split>()
                .is_some_and(|s| matches!(s, Split::Down { .. } | Split::Unanswered { .. }))
    });
    unreachable.then_some(
        "nothing answered at the RPC URL: check --rpc-url (DSTACK_MESH_RPC_URL), and that the node behind it runs \
         and is reachable from here",
    )
}

/// `text` with every URL in it shown as [`RedactedUrl`] shows it: a URL an error quotes may carry an API key
/// in its path or query.
fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&rest[..start]);
        let len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(rest.len() - start);
        let candidate = &rest[start..start + len];
        match candidate.parse::<alloy::transports::http::reqwest::Url>() {
            Ok(url) => out.push_str(&RedactedUrl::new(&url).to_string()),
            Err(_) => out.push_str(candidate),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_its_parent_quotes_is_not_repeated_and_urls_lose_their_keys() {
        let e = anyhow::anyhow!("error sending request for url (https://rpc.example/v3/0123456789abcdef0123456789abcdef)")
            .context("RPC request failed (eth_getCode): error sending request for url (https://rpc.example/v3/0123456789abcdef0123456789abcdef)")
            .context("checking the cluster contract");
        let shown = causes(&e);
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown.iter().all(|c| !c.contains("0123456789abcdef")),
            "{shown:?}"
        );
        assert!(shown[1].contains("rpc.example"), "{shown:?}");
    }
}
