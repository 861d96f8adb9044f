//! Drives the JSON-lines decoder the way the reactor does (bytes in arbitrary chunks, exactly
//! `consumed` bytes dropped after each step) and compares what it yields with splitting the
//! whole stream at once. Also checks that the buffer never grows past one line.
#![no_main]

use clove::proto::jsonl::{LineDecoder, LineError, encode_line};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Item {
    Line(String),
    Err(LineError),
}

fn model(stream: &[u8], max: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    for part in parts {
        let line = part.strip_suffix(b"\r").unwrap_or(part);
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
    if tail.len() > max + 1 {
        items.push(Item::Err(LineError::TooLong { max }));
    }
    items
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = (data[0] as usize % 64) + 1;
    let max = data[1] as usize % 48;
    let stream = &data[2..];
    let mut dec = LineDecoder::new(max);
    let mut buf: Vec<u8> = Vec::new();
    let mut items = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let step = dec.decode(&buf);
            assert!(step.consumed <= buf.len());
            let item = step.item.map(|r| match r {
                Ok(line) => {
                    assert!(!line.is_empty() && line.len() <= max);
                    // Only one `\r` before the `\n` is a terminator; `a\r\r\n` keeps one.
                    assert!(!line.contains('\n'));
                    Item::Line(line.to_owned())
                }
                Err(e) => Item::Err(e),
            });
            buf.drain(..step.consumed);
            match item {
                Some(item) => items.push(item),
                None => break,
            }
        }
        assert!(buf.len() <= max + 1);
    }
    assert_eq!(items, model(stream, max));
    // Lines re-encoded as JSON strings decode back to themselves.
    let mut out = Vec::new();
    for item in &items {
        if let Item::Line(line) = item {
            encode_line(&mut out, line).expect("a string always serializes");
        }
    }
    let mut dec = LineDecoder::new(usize::MAX);
    let mut off = 0;
    for item in items.iter().filter(|i| matches!(i, Item::Line(_))) {
        let step = dec.decode(&out[off..]);
        let Some(Ok(text)) = step.item else {
            panic!("re-encoded line lost")
        };
        let back: String = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(&Item::Line(back), item);
        off += step.consumed;
    }
    assert_eq!(off, out.len());
});
