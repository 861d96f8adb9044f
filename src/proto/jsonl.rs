//! JSON-lines framing for the `codeswarm.router.v1` TCP protocol: one UTF-8 JSON value per `\n`.
//!
//! This module owns line boundaries only; it does not parse the JSON (the router front-end does,
//! so that it can answer a bad line with `command_rejected`). It owns no stream and does no I/O.
//!
//! [`LineDecoder::decode`] looks at the connection's unconsumed input and returns a [`Step`]: how
//! many bytes the caller must drop from the front of its buffer, and at most one item (a line or
//! a per-line error). A line that grows past the limit is reported once, as soon as it is known
//! to be too long, and its bytes are then discarded as they arrive until its `\n`, so an
//! oversized line never has to be buffered. Every error here is per line: the stream goes on.
//!
//! A line's length is counted without its `\n` and without a trailing `\r` (which is tolerated
//! and dropped). Empty lines (also `\r\n` alone) are skipped.

use serde::Serialize;
use std::fmt;

/// Default cap on one line (1 MiB), the same as the Clove frame payload limit.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Why one line was refused. Neither is fatal: answer the line with an error and keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line is longer than the limit. Its bytes are being (or have been) discarded.
    TooLong { max: usize },
    /// The line is not valid UTF-8 (the first bad byte is at `valid_up_to`).
    InvalidUtf8 { valid_up_to: usize },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { max } => write!(f, "line too long (the maximum is {max} bytes)"),
            LineError::InvalidUtf8 { valid_up_to } => {
                write!(
                    f,
                    "line is not valid UTF-8 (bad byte at offset {valid_up_to})"
                )
            }
        }
    }
}

impl std::error::Error for LineError {}

/// What one call to [`LineDecoder::decode`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Bytes to drop from the front of the buffer (after using `item`, which borrows it). It can
    /// be non-zero when `item` is `None`: those are bytes of an oversized line being skipped.
    pub consumed: usize,
    /// `None`: no complete line yet, read more. `Some(Ok(line))`: one line, without its `\r\n`.
    /// `Some(Err(..))`: one refused line.
    pub item: Option<Result<&'a str, LineError>>,
}

/// Resumable line splitter. Keep one per connection, and always drop exactly `consumed` bytes
/// from the front of the buffer after each call (appending new bytes at the back is fine).
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_line: usize,
    /// Inside an oversized line that was already reported: drop bytes until its `\n`.
    skipping: bool,
    /// Bytes at the front of the buffer already known to hold no `\n`, so a line arriving in
    /// many small reads is scanned once, not once per read.
    scanned: usize,
}

impl Default for LineDecoder {
    fn default() -> Self {
        LineDecoder::new(DEFAULT_MAX_LINE)
    }
}

impl LineDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            max_line,
            skipping: false,
            scanned: 0,
        }
    }

    /// The configured line limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// True while the decoder is discarding the rest of an oversized line.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Finds the next item at the front of `buf` (see [`Step`]).
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Step<'a> {
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            let Some(nl) = self.find_newline(rest) else {
                return self.incomplete(start, rest.len());
            };
            self.scanned = 0;
            let end = start + nl + 1;
            if std::mem::take(&mut self.skipping) {
                start = end;
                continue;
            }
            let line = strip_cr(&rest[..nl]);
            if line.is_empty() {
                start = end;
                continue;
            }
            let item = if line.len() > self.max_line {
                Err(LineError::TooLong { max: self.max_line })
            } else {
                std::str::from_utf8(line).map_err(|e| LineError::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                })
            };
            return Step {
                consumed: end,
                item: Some(item),
            };
        }
    }

    /// Position of the first `\n` in `rest`, scanning only bytes not scanned before.
    fn find_newline(&mut self, rest: &[u8]) -> Option<usize> {
        let from = self.scanned.min(rest.len());
        match rest[from..].iter().position(|&b| b == b'\n') {
            Some(i) => Some(from + i),
            None => {
                self.scanned = rest.len();
                None
            }
        }
    }

    /// No `\n` in the `pending` bytes after `start`: wait, keep skipping, or start skipping.
    fn incomplete(&mut self, start: usize, pending: usize) -> Step<'static> {
        if self.skipping {
            self.scanned = 0;
            return Step {
                consumed: start + pending,
                item: None,
            };
        }
        if !self.too_long_already(pending) {
            // The skipped bytes before `start` are gone from the caller's buffer after this
            // step, so what was scanned is now counted from the new front.
            return Step {
                consumed: start,
                item: None,
            };
        }
        self.skipping = true;
        self.scanned = 0;
        Step {
            consumed: start + pending,
            item: Some(Err(LineError::TooLong { max: self.max_line })),
        }
    }

    /// Whether `pending` bytes with no `\n` yet already exceed the limit whatever comes next.
    /// One byte of slack is left for a `\r` that a following `\n` would turn into a terminator.
    fn too_long_already(&self, pending: usize) -> bool {
        pending > self.max_line.saturating_add(1)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Appends `value` as one compact JSON line (`\n`-terminated) to `out`. Compact JSON never
/// contains a raw newline (they are escaped inside strings), so the line cannot be split. On
/// error (a map with non-string keys, a failing `Serialize` impl) `out` is left unchanged.
pub fn encode_line<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mark = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(mark);
        return Err(e);
    }
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Owned form of a decoded item, to collect results across buffer changes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Item {
        Line(String),
        Err(LineError),
    }

    /// Feeds `stream` in chunks of `chunk` bytes the way the reactor would, returning every item.
    fn run(stream: &[u8], chunk: usize, max: usize) -> Vec<Item> {
        let mut dec = LineDecoder::new(max);
        let mut buf = Vec::new();
        let mut items = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let step = dec.decode(&buf);
                assert!(step.consumed <= buf.len());
                let item = step.item.map(|r| match r {
                    Ok(line) => Item::Line(line.to_owned()),
                    Err(e) => Item::Err(e),
                });
                buf.drain(..step.consumed);
                match item {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            // The decoder never holds more than one line plus the `\r` slack.
            assert!(buf.len() <= max + 2, "buffered {} bytes", buf.len());
        }
        items
    }

    /// What a whole-stream splitter says, to compare the streaming decoder with.
    fn model(stream: &[u8], max: usize) -> Vec<Item> {
        let mut items = Vec::new();
        let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        let tail = parts.pop().unwrap_or_default();
        for part in parts {
            let line = strip_cr(part);
            if line.is_empty() {
                continue;
            }
            items.push(if line.len() > max {
                Item::Err(LineError::TooLong { max })
            } else {
                match std::str::from_utf8(line) {
                    Ok(s) => Item::Line(s.to_owned()),
                    Err(e) => Item::Err(LineError::InvalidUtf8 {
                        valid_up_to: e.valid_up_to(),
                    }),
                }
            });
        }
        // An unterminated line is reported only once it can no longer fit.
        if tail.len() > max + 1 {
            items.push(Item::Err(LineError::TooLong { max }));
        }
        items
    }

    fn line(s: &str) -> Item {
        Item::Line(s.to_owned())
    }

    #[test]
    fn splits_lines_and_tolerates_crlf() {
        let items = run(b"{\"a\":1}\n{\"b\":2}\r\n", 100, 64);
        assert_eq!(items, vec![line("{\"a\":1}"), line("{\"b\":2}")]);
    }

    #[test]
    fn partial_line_needs_more_and_consumes_nothing() {
        let mut dec = LineDecoder::new(64);
        let step = dec.decode(b"{\"a\":");
        assert_eq!(
            step,
            Step {
                consumed: 0,
                item: None
            }
        );
        let step = dec.decode(b"{\"a\":1}\nrest");
        assert_eq!(step.item, Some(Ok("{\"a\":1}")));
        assert_eq!(step.consumed, 8);
    }

    #[test]
    fn empty_lines_are_skipped() {
        assert_eq!(run(b"\n\r\n\n{}\n\n", 3, 64), vec![line("{}")]);
        let mut dec = LineDecoder::new(64);
        // Blank lines alone are consumed without producing an item.
        assert_eq!(
            dec.decode(b"\n\r\n"),
            Step {
                consumed: 3,
                item: None
            }
        );
    }

    #[test]
    fn max_line_is_inclusive_and_cr_is_not_counted() {
        let mut ok = vec![b'x'; 8];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(run(&ok, 1, 8), vec![line("xxxxxxxx")]);
        let mut long = vec![b'x'; 9];
        long.push(b'\n');
        assert_eq!(
            run(&long, 100, 8),
            vec![Item::Err(LineError::TooLong { max: 8 })]
        );
    }

    #[test]
    fn oversized_line_is_reported_early_and_discarded_as_it_arrives() {
        let mut dec = LineDecoder::new(4);
        // Six bytes without a newline can no longer be a line of at most 4 (+ `\r`).
        let step = dec.decode(b"abcdef");
        assert_eq!(step.consumed, 6);
        assert_eq!(step.item, Some(Err(LineError::TooLong { max: 4 })));
        assert!(dec.is_skipping());
        // Later chunks of the same line are dropped without another error.
        assert_eq!(
            dec.decode(b"ghij"),
            Step {
                consumed: 4,
                item: None
            }
        );
        // The next line after the newline is decoded in the same call.
        let step = dec.decode(b"kl\nok\n");
        assert_eq!(step.item, Some(Ok("ok")));
        assert_eq!(step.consumed, 6);
        assert!(!dec.is_skipping());
    }

    #[test]
    fn invalid_utf8_is_a_per_line_error() {
        let items = run(b"good\n\xff\xfe\nafter\n", 2, 64);
        assert_eq!(
            items,
            vec![
                line("good"),
                Item::Err(LineError::InvalidUtf8 { valid_up_to: 0 }),
                line("after"),
            ]
        );
    }

    #[test]
    fn slow_trickle_is_scanned_incrementally() {
        let mut dec = LineDecoder::new(1 << 20);
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.push(b'x');
            assert_eq!(dec.decode(&buf).consumed, 0);
        }
        assert_eq!(dec.scanned, 1000);
        buf.push(b'\n');
        let step = dec.decode(&buf);
        assert_eq!(step.consumed, 1001);
        assert_eq!(step.item.map(|r| r.map(str::len)), Some(Ok(1000)));
    }

    #[test]
    fn encode_line_writes_compact_json_and_a_newline() {
        let mut out = b"prefix\n".to_vec();
        let value = serde_json::json!({"protocol": "codeswarm.router.v1", "text": "a\nb"});
        encode_line(&mut out, &value).unwrap();
        assert_eq!(
            out,
            b"prefix\n{\"protocol\":\"codeswarm.router.v1\",\"text\":\"a\\nb\"}\n".to_vec()
        );
        // And the decoder reads it back as one line.
        let items = run(&out, 5, 1024);
        assert_eq!(items.len(), 2);
        let Item::Line(text) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(text).unwrap(),
            value
        );
    }

    #[test]
    fn encode_line_leaves_the_buffer_alone_on_error() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], 2);
        let mut out = b"keep".to_vec();
        assert!(encode_line(&mut out, &map).is_err());
        assert_eq!(out, b"keep");
    }

    proptest! {
        #[test]
        fn streaming_matches_whole_stream_split(
            stream in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(0xffu8), any::<u8>()],
                0..300,
            ),
            chunk in 1usize..40,
            max in 0usize..24,
        ) {
            prop_assert_eq!(run(&stream, chunk, max), model(&stream, max));
        }

        #[test]
        fn encoded_values_decode_back(values in proptest::collection::vec(".*", 0..8)) {
            let mut out = Vec::new();
            for v in &values {
                encode_line(&mut out, v).unwrap();
            }
            let decoded: Vec<String> = run(&out, 7, 1 << 16)
                .into_iter()
                .map(|item| match item {
                    Item::Line(text) => serde_json::from_str(&text).unwrap(),
                    Item::Err(e) => panic!("{e}"),
                })
                .collect();
            prop_assert_eq!(decoded, values);
        }
    }
}
