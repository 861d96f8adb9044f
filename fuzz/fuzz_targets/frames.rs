//! Drives the Clove frame decoder the way the reactor does: bytes arrive in arbitrary chunks,
//! complete frames are consumed from the front, and a malformed stream stops decoding.
#![no_main]

use clove::proto::clove::{HEADER_LEN, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte picks a chunk size, the rest is the stream.
    let chunk = (data[0] as usize % 64) + 1;
    let max = 4096u64;
    let stream = &data[1..];
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    'outer: while fed < stream.len() {
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match decode(&buf, max) {
                Ok(Some((frame, used))) => {
                    assert!(used <= buf.len());
                    assert_eq!(used, HEADER_LEN + frame.payload.len());
                    assert!(frame.payload.len() as u64 <= max);
                    // Re-encoding a decoded frame gives back the same bytes.
                    let again = encode(frame.header.agent_id, frame.header.op, frame.payload);
                    assert_eq!(&again[..], &buf[..used]);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
});
