//! Sending one THINK to a backend over HTTP: timeouts, retries with capped exponential
//! back-off on 429 and 5xx (honouring `Retry-After`), and clear errors after the last attempt.
//!
//! Runs on the backend's own threads (never the reactor or the worker pool); waiting between
//! attempts only holds that backend's concurrency slot, which is the point of backing off.

use std::time::{Duration, Instant};
use ureq::http;

/// How to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The back-off before retry number `attempt` (0-based): `initial * 2^attempt`, capped at
    /// `max`, with the upper half jittered so that agents rate-limited together do not retry
    /// together.
    pub fn backoff(&self, attempt: u32, jitter_seed: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = base / 2;
        let nanos = half.as_nanos() as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            splitmix(jitter_seed) % nanos
        };
        half + Duration::from_nanos(jitter)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Done(Vec<u8>),
    /// Worth trying again (429, 5xx, connection trouble), after at least `after`.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fail(String),
    /// The time budget ran out during the attempt.
    TimedOut,
}

/// One POST of a JSON body.
pub struct Post<'a> {
    pub agent: &'a ureq::Agent,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub max_response_bytes: u64,
    /// The API key, removed from any backend text quoted in errors and logs.
    pub secret: Option<&'a str>,
}

/// POSTs with retries until `deadline`; returns the 2xx response body or a clear error.
pub fn post_json(
    p: &Post,
    deadline: Instant,
    budget: Duration,
    policy: &RetryPolicy,
) -> Result<Vec<u8>, String> {
    let mut attempt: u32 = 0;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ p.body.len() as u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(budget, attempt));
        }
        match once(p, deadline - now) {
            Attempt::Done(body) => return Ok(body),
            Attempt::TimedOut => return Err(timed_out(budget, attempt + 1)),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry { why, after } => {
                attempt += 1;
                if attempt > policy.max_retries {
                    return Err(format!(
                        "{why} (gave up after {attempt} attempt{})",
                        if attempt == 1 { "" } else { "s" }
                    ));
                }
                let wait = policy
                    .backoff(attempt - 1, seed.wrapping_add(attempt as u64))
                    .max(after.unwrap_or_default());
                if Instant::now() + wait >= deadline {
                    return Err(format!(
                        "{why} (gave up after {attempt} attempt{}: waiting {:.1}s to retry \
                         would pass the {} time limit, llm.timeout_secs)",
                        if attempt == 1 { "" } else { "s" },
                        wait.as_secs_f64(),
                        crate::clock::secs_text(budget)
                    ));
                }
                log::info!(
                    "llm: {why}; retrying in {:.1}s (attempt {} of {})",
                    wait.as_secs_f64(),
                    attempt + 1,
                    policy.max_retries + 1
                );
                std::thread::sleep(wait);
            }
        }
    }
}

fn timed_out(budget: Duration, attempts: u32) -> String {
    format!(
        "the backend did not answer within the {} time limit (llm.timeout_secs; {attempts} \
         attempt{})",
        crate::clock::secs_text(budget),
        if attempts == 1 { "" } else { "s" }
    )
}

fn once(p: &Post, remaining: Duration) -> Attempt {
    let mut b = http::Request::post(p.url).header("content-type", "application/json");
    for (k, v) in p.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let req = match b.body(p.body) {
        Ok(r) => r,
        Err(e) => return Attempt::Fail(format!("cannot build the backend request: {e}")),
    };
    let req = p
        .agent
        .configure_request(req)
        .timeout_global(Some(remaining))
        .build();
    let mut resp = match p.agent.run(req) {
        Ok(r) => r,
        Err(e) => return transport_error(e),
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match crate::tls::read_capped(resp.body_mut(), p.max_response_bytes) {
        Ok((b, false)) => b,
        Ok((_, true)) => {
            return Attempt::Fail(format!(
                "the backend's answer is larger than llm.max_response_bytes ({} bytes)",
                p.max_response_bytes
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Attempt::TimedOut,
        Err(e) => {
            return Attempt::Retry {
                why: format!("error reading the backend's answer: {e}"),
                after: None,
            };
        }
    };
    if status.is_success() {
        return Attempt::Done(body);
    }
    let why = format!(
        "the backend answered {}{}",
        status,
        match error_detail(&body) {
            Some(d) => format!(": {d}"),
            None => String::new(),
        }
    );
    let why = match p.secret {
        Some(k) if k.len() >= 4 => why.replace(k, "<redacted>"),
        _ => why,
    };
    if status.as_u16() == 429 || status.is_server_error() {
        Attempt::Retry {
            why,
            after: retry_after,
        }
    } else {
        Attempt::Fail(why)
    }
}

fn transport_error(e: ureq::Error) -> Attempt {
    use ureq::Error as E;
    if let Some(why) = crate::tls::certificate_problem(&e) {
        // Not worth retrying: the certificate will not change in a second.
        return Attempt::Fail(format!(
            "cannot reach the backend: its TLS certificate is not accepted: {why} (for a \
             site-internal CA, set ca_file in [llm.models.NAME] or [llm])"
        ));
    }
    match e {
        E::Timeout(ureq::Timeout::Connect) | E::Timeout(ureq::Timeout::Resolve) => Attempt::Retry {
            why: "cannot connect to the backend: connection timed out (llm.connect_timeout_secs)"
                .into(),
            after: None,
        },
        E::Timeout(_) => Attempt::TimedOut,
        E::Io(io) => Attempt::Retry {
            why: format!("cannot reach the backend: {io}"),
            after: None,
        },
        E::ConnectionFailed => Attempt::Retry {
            why: "cannot reach the backend: connection failed".into(),
            after: None,
        },
        E::HostNotFound => Attempt::Fail("cannot reach the backend: host not found".into()),
        other => Attempt::Fail(format!("backend request failed: {other}")),
    }
}

/// A short reason from an error body: the API's `error.message`, else the start of the text.
fn error_detail(body: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match v.get("error") {
            Some(e) => super::openai::error_text(e),
            None => String::from_utf8_lossy(body).into_owned(),
        },
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    Some(cut)
}

/// `Retry-After`: delay-seconds, or an HTTP date (RFC 9110 IMF-fixdate).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86400.0)));
    }
    let at = parse_http_date(v)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86400)),
    )
}

/// Parses `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(v: &str) -> Option<std::time::SystemTime> {
    let rest = v.split_once(", ")?.1;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + (h * 3600 + m * 60 + s) as i64;
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for seed in 0..50 {
            let d0 = p.backoff(0, seed);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.backoff(3, seed);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d9 = p.backoff(9, seed);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_details_are_short() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"slow down"}}"#).as_deref(),
            Some("slow down")
        );
        assert_eq!(error_detail(b"").as_deref(), None);
        assert!(error_detail(&[b'x'; 1000]).unwrap().chars().count() <= 301);
    }
}
