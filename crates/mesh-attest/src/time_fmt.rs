//! Unix seconds to and from the RFC 3339 text that Intel's collateral and our messages use.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the epoch, or `None` when the text is not RFC 3339 or is before 1970.
pub(crate) fn parse_rfc3339(text: &str) -> Option<u64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp()).ok()
}

/// `2025-07-19T10:16:03Z`, or the bare number when it is out of range.
pub(crate) fn fmt_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intel_dates_round_trip() {
        let secs = parse_rfc3339("2025-07-19T10:16:03Z");
        assert_eq!(secs, Some(1_752_920_163));
        assert_eq!(fmt_unix(1_752_920_163), "2025-07-19T10:16:03Z");
    }

    #[test]
    fn garbage_and_pre_epoch_dates_are_none() {
        assert_eq!(parse_rfc3339("next tuesday"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
