//! What a command prints: a sentence per fact for people, one JSON document for scripts.

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

    /// Prints a failure with its whole cause chain, to stderr; JSON mode adds `{"error": …}` on stdout.
    pub(crate) fn error(&self, e: &anyhow::Error) {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        if self.json {
            println!("{}", serde_json::json!({ "error": chain.join(": ") }));
        }
        eprintln!("error: {}", chain.join("\n  caused by: "));
    }
}
