//! Request parsing and reply building shared by all op handlers.
//!
//! Requests are JSON objects; an empty payload means `{}`. Parse errors name the field and what
//! was expected (`key: invalid type: integer `5`, expected a string`), so a client learns what
//! to fix from the error alone.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A reply payload, plus whether the connection closes once it is flushed.
#[derive(Debug)]
pub enum Outcome {
    /// Send these payload bytes.
    Reply(Vec<u8>),
    /// Send these payload bytes, then close the connection (EXIT).
    ReplyClose(Vec<u8>),
    /// A responder will send the reply later (from another thread).
    Deferred,
}

/// Parses a request payload into `T`, treating an empty payload as `{}`.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    parse_borrowed(payload)
}

/// Like [`parse`] but borrowing strings and raw values from the payload (no copies).
pub fn parse_borrowed<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    let text: &[u8] = match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => payload,
        // serde would accept a JSON array for a struct (as a tuple); requests are objects.
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() => {
            return Err("invalid request: the payload must be a JSON object".into());
        }
        Some(_) => payload,
    };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize::<_, T>(de).map_err(describe)
}

fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    // serde_json appends " at line L column C"; keep it for syntax errors only.
    if inner.is_syntax() || inner.is_eof() {
        return format!("invalid JSON: {msg}");
    }
    let msg = strip_position(&msg).to_string();
    if msg.contains("expected struct") || (path == "." && msg.starts_with("invalid type")) {
        return "invalid request: the payload must be a JSON object".into();
    }
    if path.is_empty() || path == "." {
        format!("invalid request: {msg}")
    } else {
        format!("invalid request: field `{path}`: {msg}")
    }
}

fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// `{"success": false, "error": msg}`.
pub fn error(msg: impl AsRef<str>) -> Vec<u8> {
    #[derive(Serialize)]
    struct E<'a> {
        success: bool,
        error: &'a str,
    }
    to_bytes(&E {
        success: false,
        error: msg.as_ref(),
    })
}

/// Serializes a reply. Serializing our own reply types cannot fail; if it somehow did, the
/// client still gets a well-formed error instead of nothing.
pub fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"success\":false,\"error\":\"internal error: cannot encode reply: {e}\"}}")
            .into_bytes()
    })
}

/// A `serde_json::Value` reply.
pub fn json(value: Value) -> Vec<u8> {
    to_bytes(&value)
}

/// Shorthand for handlers: `Ok(reply bytes)` or `Err(message)` becomes an [`Outcome`].
pub fn outcome(result: Result<Vec<u8>, String>) -> Outcome {
    match result {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(msg) => Outcome::Reply(error(msg)),
    }
}

/// The reply as bytes, for responders.
pub fn bytes(result: Result<Vec<u8>, String>) -> Vec<u8> {
    match result {
        Ok(b) => b,
        Err(msg) => error(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        key: String,
        n: Option<u32>,
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse::<Req>(br#"{"key": 5}"#).unwrap_err();
        assert!(
            e.contains("`key`") && e.contains("expected a string"),
            "{e}"
        );
        let e = parse::<Req>(br#"{}"#).unwrap_err();
        assert!(e.contains("missing field `key`"), "{e}");
        let e = parse::<Req>(b"{nope").unwrap_err();
        assert!(e.starts_with("invalid JSON"), "{e}");
        let e = parse::<Req>(b"[1,2]").unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = parse::<Req>(br#"{"key":"a","n":-1}"#).unwrap_err();
        assert!(e.contains("`n`"), "{e}");
    }

    #[test]
    fn empty_payload_is_an_empty_object() {
        #[derive(Deserialize)]
        struct Opt {
            #[allow(dead_code)]
            max: Option<u32>,
        }
        assert!(parse::<Opt>(b"").is_ok());
        assert!(parse::<Opt>(b"  \n").is_ok());
    }
}
