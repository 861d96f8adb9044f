//! Checks shared by every config section's validation: whole numbers within bounds and
//! durations in seconds. Each reports its problem (named by its `section.key`) into the list of
//! errors and returns the default, so one run reports every problem of a file.

use std::time::Duration;

/// A count that must be at least 1 and at most `max`; `default` when not given.
pub fn positive(
    errors: &mut Vec<String>,
    name: &str,
    v: Option<usize>,
    default: usize,
    max: usize,
) -> usize {
    match v {
        None => default,
        Some(0) => {
            errors.push(format!("{name}: must be at least 1"));
            default
        }
        Some(n) if n > max => {
            errors.push(format!("{name}: {n} is absurdly large (max {max})"));
            default
        }
        Some(n) => n,
    }
}

/// A number of seconds in (0, 7 days]; `default` seconds when not given.
pub fn secs(errors: &mut Vec<String>, name: &str, v: Option<f64>, default: f64) -> Duration {
    match v {
        None => Duration::from_secs_f64(default),
        Some(x) if x.is_finite() && x > 0.0 && x <= 7.0 * 86400.0 => Duration::from_secs_f64(x),
        Some(x) => {
            errors.push(format!(
                "{name}: {x} must be a number of seconds in (0, 604800]"
            ));
            Duration::from_secs_f64(default)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_named() {
        let mut e = Vec::new();
        assert_eq!(positive(&mut e, "a.b", None, 7, 10), 7);
        assert_eq!(positive(&mut e, "a.b", Some(3), 7, 10), 3);
        assert_eq!(positive(&mut e, "a.b", Some(0), 7, 10), 7);
        assert_eq!(positive(&mut e, "a.c", Some(11), 7, 10), 7);
        assert_eq!(secs(&mut e, "a.d", Some(-1.0), 2.0), Duration::from_secs(2));
        assert_eq!(
            e,
            [
                "a.b: must be at least 1",
                "a.c: 11 is absurdly large (max 10)",
                "a.d: -1 must be a number of seconds in (0, 604800]"
            ]
        );
    }
}
