//! An error with its whole chain of causes, for log lines and the API: `Display` of a typed error is its
//! own line only, and the cause (a missing socket's path, the OS's reason) is what says what to do.

use std::error::Error;
use std::fmt;

/// Shows `error: cause: cause …`, skipping a cause whose text its parent already ends with (errors that
/// print their source inline).
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.ends_with(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = cause.source();
        }
        Ok(())
    }
}

/// The whole chain as one string, for a state that carries it to the API.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Causes(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("dstack Info failed")]
        Info(#[source] Inner),
        #[error("read failed: {0}")]
        Inline(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no dstack socket at /var/run/dstack.sock: is this running in a dstack CVM?")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let missing = || Inner(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(
            Causes(&Outer::Info(missing())).to_string(),
            "dstack Info failed: no dstack socket at /var/run/dstack.sock: is this running in a dstack CVM?: entity not found"
        );
        let inline = Causes(&Outer::Inline(missing())).to_string();
        assert_eq!(
            inline.matches("no dstack socket").count(),
            1,
            "a cause printed inline is not repeated: {inline}"
        );
    }
}
