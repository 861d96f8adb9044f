//! Request parsing and reply building shared by all op handlers.
//!
//! Requests are JSON objects; an empty payload means `{}`. Parse errors name the field and what
//! was expected (`key: invalid type: integer `5`, expected a string`), so a client learns what
//! to fix from the error alone.
//!
//! Fields a request type does not know are not errors (clients such as the Clove Python SDK
//! send extra ones, and must keep working), but they must not pass silently either: a typo
//! (`tll` for `ttl`) would store a key with no TTL. So [`parse`] writes each one down as a
//! warning, with the nearest known field as a suggestion (`unknown field 'tll' (did you mean
//! 'ttl'?)`), into the [`Warnings`] of the request being handled on this thread (see
//! [`collecting`]); the front-end adds them to the reply as `"warnings": [...]`. The op's own
//! `success` is unchanged. Every op gets this from parsing alone, with nothing to declare.

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The warnings about one request (its unknown fields), waiting to be added to its reply.
///
/// A front-end keeps one per connection: a connection has at most one request whose reply is
/// pending (later frames wait), so the warnings parsed for it are the ones its next reply
/// carries, whichever thread sends that reply. Parsing happens before a handler hands its work
/// to another thread, so the warnings are in place before any reply can be made.
#[derive(Debug, Default)]
pub struct Warnings {
    /// Set while `list` is not empty: the common case (no warnings) costs one load.
    pending: AtomicBool,
    list: Mutex<Vec<String>>,
}

impl Warnings {
    pub fn new() -> Arc<Warnings> {
        Arc::new(Warnings::default())
    }

    fn push(&self, warning: String) {
        let mut list = self.list.lock();
        // A handler that parses its payload twice must not report a field twice.
        if !list.contains(&warning) {
            list.push(warning);
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Takes the warnings, if there are any.
    pub fn take(&self) -> Option<Vec<String>> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut list = self.list.lock();
        self.pending.store(false, Ordering::Release);
        Some(std::mem::take(&mut *list)).filter(|l| !l.is_empty())
    }
}

thread_local! {
    /// Where [`parse`] puts warnings for the request handled on this thread right now.
    static CURRENT: RefCell<Option<Arc<Warnings>>> = const { RefCell::new(None) };
}

/// Runs `handler` (one request's op handler) with the warnings of its parsing going to
/// `warnings`. Restores what was there before, also when the handler panics.
pub fn collecting<R>(warnings: &Arc<Warnings>, handler: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Warnings>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(warnings.clone()))));
    handler()
}

/// `payload` (a JSON object reply) with `"warnings": [...]` added at its end. Replies that
/// are not objects (LIST's array, NOOP's bytes) are returned as they are.
pub fn with_warnings(mut payload: Vec<u8>, warnings: &[String]) -> Vec<u8> {
    let end = payload.iter().rposition(|b| !b.is_ascii_whitespace());
    let starts = payload.iter().find(|b| !b.is_ascii_whitespace());
    let (Some(end), Some(b'{')) = (end, starts) else {
        return payload;
    };
    if payload[end] != b'}' {
        return payload;
    }
    let empty = payload[..end]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        == Some(&b'{');
    let list = serde_json::to_vec(warnings).unwrap_or_else(|_| b"[]".to_vec());
    let mut tail = Vec::with_capacity(list.len() + 16);
    if !empty {
        tail.push(b',');
    }
    tail.extend_from_slice(b"\"warnings\":");
    tail.extend_from_slice(&list);
    payload.splice(end..end, tail);
    payload
}

/// Parses a request payload into `T`, treating an empty payload as `{}`.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    parse_borrowed(payload)
}

/// Reads a few fields of a request that is parsed in full elsewhere (`async` before the op's
/// own fields): like [`parse`], but the fields `T` does not know are not warnings, since they
/// are the other parse's.
pub fn peek<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    parse_reporting(payload, false)
}

/// Like [`parse`] but borrowing strings and raw values from the payload (no copies).
pub fn parse_borrowed<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    parse_reporting(payload, true)
}

/// Parses, and with `report` writes the unknown fields down as warnings.
fn parse_reporting<'a, T: serde::Deserialize<'a>>(
    payload: &'a [u8],
    report: bool,
) -> Result<T, String> {
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
    let mut track = serde_path_to_error::Track::new();
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let result = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(de, &mut track),
        |path| unknown.push(segments(&path)),
    );
    let value = result.map_err(|e| describe(serde_path_to_error::Error::new(track.path(), e)))?;
    if report && !unknown.is_empty() {
        report_unknown::<T>(&unknown);
    }
    Ok(value)
}

/// One step of the way to an unknown field: an object's key or an array's index.
enum Segment {
    Key(String),
    Index(usize),
}

/// The steps of a path as `serde_ignored` gives it (options and newtypes are no steps).
fn segments(path: &serde_ignored::Path) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = Vec::new();
    let mut at = path;
    loop {
        at = match at {
            Path::Root => break,
            Path::Seq { parent, index } => {
                out.push(Segment::Index(*index));
                parent
            }
            Path::Map { parent, key } => {
                out.push(Segment::Key(key.clone()));
                parent
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => parent,
        };
    }
    out.reverse();
    out
}

/// `limits.memory`, `files[2].name`.
fn dotted(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) if s.is_empty() => s.push_str(k),
            Segment::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Writes a warning for each unknown field into this thread's current [`Warnings`].
fn report_unknown<'a, T: serde::Deserialize<'a>>(paths: &[Vec<Segment>]) {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(w) = current.as_ref() else {
            return;
        };
        for path in paths {
            let Some((Segment::Key(field), parent)) = path.split_last() else {
                continue;
            };
            // The probe follows keys only; inside an array there is no suggestion.
            let keys: Option<Vec<&str>> = parent
                .iter()
                .map(|s| match s {
                    Segment::Key(k) => Some(k.as_str()),
                    Segment::Index(_) => None,
                })
                .collect();
            let known = keys.and_then(|k| fields_at::<T>(&k)).unwrap_or(&[]);
            let advice = match crate::spelling::did_you_mean(field, known.iter().copied()) {
                Some(m) => format!("did you mean '{m}'?"),
                None if known.is_empty() => "ignored".to_string(),
                None => format!("ignored; known fields: {}", known.join(", ")),
            };
            w.push(format!("unknown field '{}' ({advice})", dotted(path)));
        }
    });
}

/// The fields the struct at `path` inside `T` has (top level: `[]`), asked from `T` itself:
/// it is made to deserialize from a probe that follows the path and stops at the struct
/// there, which names its fields. `None` where there is no plain struct (a map, a flattened
/// or untagged type).
fn fields_at<'a, T: serde::Deserialize<'a>>(path: &[&str]) -> Option<&'static [&'static str]> {
    let found = Cell::new(None);
    let _ = T::deserialize(probe::Probe {
        path,
        found: &found,
    });
    found.get()
}

mod probe {
    //! A deserializer that answers nothing, except the way to one struct's field names.
    use serde::de::{self, IntoDeserializer, Visitor};
    use std::cell::Cell;

    pub struct Probe<'p> {
        pub path: &'p [&'p str],
        pub found: &'p Cell<Option<&'static [&'static str]>>,
    }

    /// Every probe ends in this error: it only serves to stop the deserialization.
    #[derive(Debug)]
    pub struct Stop;

    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
            v.visit_some(self)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Stop> {
            v.visit_newtype_struct(self)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Stop> {
            match self.path.split_first() {
                None => {
                    self.found.set(Some(fields));
                    Err(Stop)
                }
                Some((first, rest)) => v.visit_map(OneEntry {
                    key: Some(first),
                    value: Some(Probe {
                        path: rest,
                        found: self.found,
                    }),
                }),
            }
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    /// A map of one entry: the next path segment, and a probe for its value.
    struct OneEntry<'p> {
        key: Option<&'p str>,
        value: Option<Probe<'p>>,
    }

    impl<'de> de::MapAccess<'de> for OneEntry<'_> {
        type Error = Stop;
        fn next_key_seed<K: de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Stop> {
            match self.key.take() {
                Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
                None => Ok(None),
            }
        }
        fn next_value_seed<V: de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Stop> {
            match self.value.take() {
                Some(p) => seed.deserialize(p),
                None => Err(Stop),
            }
        }
    }
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

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Store {
        key: String,
        ttl: Option<u64>,
        limits: Option<Limits>,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Limits {
        memory: Option<u64>,
    }

    fn warnings_of<T: DeserializeOwned + std::fmt::Debug>(payload: &[u8]) -> Vec<String> {
        let w = Warnings::new();
        collecting(&w, || parse::<T>(payload).unwrap());
        w.take().unwrap_or_default()
    }

    #[test]
    fn unknown_fields_become_warnings_with_the_nearest_known_field() {
        assert_eq!(
            warnings_of::<Store>(br#"{"key":"a","tll":5}"#),
            ["unknown field 'tll' (did you mean 'ttl'?)"]
        );
        assert_eq!(
            warnings_of::<Store>(br#"{"key":"a","limits":{"memroy":1}}"#),
            ["unknown field 'limits.memroy' (did you mean 'memory'?)"]
        );
        assert_eq!(
            warnings_of::<Store>(br#"{"key":"a","colour":"red"}"#),
            ["unknown field 'colour' (ignored; known fields: key, ttl, limits)"]
        );
        assert!(warnings_of::<Store>(br#"{"key":"a","ttl":5}"#).is_empty());
        // Outside a request being handled (no collector), parsing still works.
        assert!(parse::<Store>(br#"{"key":"a","x":1}"#).is_ok());
    }

    #[test]
    fn warnings_are_added_to_object_replies_only() {
        let w = vec!["unknown field 'x' (ignored)".to_string()];
        let v: Value = serde_json::from_slice(&with_warnings(
            br#"{"success":true,"key":"a"}"#.to_vec(),
            &w,
        ))
        .unwrap();
        assert_eq!(v["success"], true);
        assert_eq!(v["warnings"][0], "unknown field 'x' (ignored)");
        let v: Value = serde_json::from_slice(&with_warnings(b"{ }\n".to_vec(), &w)).unwrap();
        assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
        assert_eq!(with_warnings(b"[1]".to_vec(), &w), b"[1]");
        assert_eq!(with_warnings(b"goodbye".to_vec(), &w), b"goodbye");
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
