//! RPC URLs without their credentials, for logs, errors and the API. Providers put API keys in the
//! userinfo, in a path segment (`/v3/<key>`, `/<token>/`) or in the query (`?apikey=`); every such part
//! is shown as `***`, and the same parts are scrubbed out of any text (error messages quote the URL).

use alloy::transports::http::reqwest::Url;

const HIDDEN: &str = "***";

/// Query parameters whose value is a credential, whatever it looks like.
const SECRET_PARAMS: &[&str] = &[
    "key",
    "apikey",
    "api_key",
    "api-key",
    "token",
    "access_token",
    "auth",
    "secret",
    "password",
    "dkey",
    "x-api-key",
];

/// An RPC URL that can be shown, and the secret parts to scrub from text that quotes it.
#[derive(Debug, Clone)]
pub struct RedactedUrl {
    shown: String,
    secrets: Vec<String>,
}

/// Whether a path segment or query value looks like a key rather than a word: long, and made of key
/// characters with digits among them.
fn looks_like_key(s: &str) -> bool {
    s.len() >= 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.bytes().any(|b| b.is_ascii_digit())
}

impl RedactedUrl {
    pub fn new(url: &Url) -> Self {
        let mut secrets = Vec::new();
        let mut shown = url.clone();
        if !url.username().is_empty() {
            secrets.push(url.username().to_owned());
            let _ = shown.set_username(HIDDEN);
        }
        if let Some(password) = url.password() {
            secrets.push(password.to_owned());
            let _ = shown.set_password(Some(HIDDEN));
        }
        if let Some(segments) = url.path_segments() {
            let path: Vec<String> = segments
                .map(|seg| {
                    if looks_like_key(seg) {
                        secrets.push(seg.to_owned());
                        HIDDEN.to_owned()
                    } else {
                        seg.to_owned()
                    }
                })
                .collect();
            shown.set_path(&path.join("/"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str())
                        || looks_like_key(&v);
                    if secret && !v.is_empty() {
                        secrets.push(v.clone().into_owned());
                        (k.into_owned(), HIDDEN.to_owned())
                    } else {
                        (k.into_owned(), v.into_owned())
                    }
                })
                .collect();
            let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            shown.set_query(Some(&query.join("&")));
        }
        // Text may quote a secret raw or percent-encoded; scrub both, longest first.
        let encoded: Vec<String> = secrets
            .iter()
            .map(|s| {
                alloy::transports::http::reqwest::Url::parse(&format!("x:{s}"))
                    .map(|u| u.path().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        secrets.extend(encoded);
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            shown: shown.to_string(),
            secrets,
        }
    }

    /// Several URLs as one: shown as a list, every one's secrets scrubbed. What messages about a set of
    /// providers show.
    pub fn list(urls: &[Url]) -> Self {
        let each: Vec<Self> = urls.iter().map(Self::new).collect();
        let mut secrets: Vec<String> = each.iter().flat_map(|r| r.secrets.clone()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            shown: each
                .iter()
                .map(|r| r.shown.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            secrets,
        }
    }

    /// `text` with every secret part of the URL replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), HIDDEN);
        }
        out
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        RedactedUrl::new(&url.parse().unwrap()).to_string()
    }

    /// The usual providers' credentials are hidden, wherever in the URL they are; the rest stays readable.
    #[test]
    fn a_list_of_providers_shows_each_and_scrubs_every_ones_secrets() {
        let urls: Vec<Url> = [
            "https://a.example/v3/0123456789abcdef0123",
            "https://user:hunter2@b.example/",
        ]
        .iter()
        .map(|u| u.parse().unwrap())
        .collect();
        let list = RedactedUrl::list(&urls);
        assert_eq!(
            list.to_string(),
            "https://a.example/v3/***, https://***:***@b.example/"
        );
        assert_eq!(
            list.scrub("a said 0123456789abcdef0123, b said hunter2"),
            "a said ***, b said ***"
        );
    }

    #[test]
    fn provider_credentials_are_hidden() {
        for (url, want) in [
            (
                "https://user:hunter2@rpc.example.com/",
                "https://***:***@rpc.example.com/",
            ),
            (
                "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
                "https://mainnet.infura.io/v3/***",
            ),
            (
                "https://eth-mainnet.g.alchemy.com/v2/aB3dEfGhIjKlMnOpQrStUvWxYz012345",
                "https://eth-mainnet.g.alchemy.com/v2/***",
            ),
            (
                "https://old-x.quiknode.pro/5f3b0b1d9e8c7a6f5e4d3c2b1a0f9e8d7c6b5a4f/",
                "https://old-x.quiknode.pro/***/",
            ),
            (
                "https://rpc.ankr.com/eth/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "https://rpc.ankr.com/eth/***",
            ),
            (
                "https://lb.drpc.org/ogrpc?network=base&dkey=Ak80gSCleU1Frwnafb5Ka4VRKCv",
                "https://lb.drpc.org/ogrpc?network=base&dkey=***",
            ),
            (
                "https://api.example.com/rpc?apikey=short",
                "https://api.example.com/rpc?apikey=***",
            ),
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
            ("https://base.llamarpc.com", "https://base.llamarpc.com/"),
        ] {
            assert_eq!(shown(url), want, "{url}");
        }
    }

    /// Error text that quotes the URL, raw or encoded, loses the secrets too.
    #[test]
    fn text_quoting_the_url_is_scrubbed() {
        let url: Url = "https://me:p%40ss@rpc.example.com/v3/0123456789abcdef0123456789abcdef"
            .parse()
            .unwrap();
        let r = RedactedUrl::new(&url);
        let error = format!("error sending request for url ({url}): connection refused");
        let scrubbed = r.scrub(&error);
        for secret in ["0123456789abcdef0123456789abcdef", "p%40ss", "p@ss", "me:"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("rpc.example.com"), "{scrubbed}");
    }
}
