//! Clocks and time texts shared by every layer: wall-clock milliseconds, ISO-8601 stamps and
//! short duration texts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ISO-8601 UTC timestamp with milliseconds.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `12s`, `1.5s`: a duration as people read it in an error text.
pub fn secs_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(secs_text(Duration::from_secs(12)), "12s");
        assert_eq!(secs_text(Duration::from_millis(1500)), "1.5s");
        assert!(iso8601(UNIX_EPOCH).starts_with("1970-01-01T00:00:00.000"));
        assert!(now_ms() > 1_600_000_000_000);
    }
}
