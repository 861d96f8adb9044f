//! Feeds arbitrary Engine.IO messages to the Socket.IO decoder: the input is split on 0x00
//! into messages, the first byte of each choosing text or binary. Complete messages must
//! re-encode into messages that decode to the same thing, their placeholders must resolve,
//! and the limits must hold. Nothing may panic.
#![no_main]

use clove::proto::socketio::{Decoder, Limits, Message, deconstruct, reconstruct};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_packet: 4096,
    max_attachments: 4,
    max_attachment_bytes: 256,
};

fn check(msg: &Message) {
    assert!(msg.packet.attachments <= LIMITS.max_attachments);
    assert_eq!(msg.attachments.len(), msg.packet.attachments);
    assert!(msg.attachments.iter().map(Vec::len).sum::<usize>() <= LIMITS.max_attachment_bytes);
    // Encoding and decoding again gives the same message.
    let (text, attachments) = msg.encode();
    let mut decoder = Decoder::new(LIMITS);
    let mut again = decoder.feed_text(&text).expect("re-encoded text decodes");
    for a in attachments {
        assert!(again.is_none());
        again = decoder
            .feed_binary(a.clone())
            .expect("re-encoded attachment decodes");
    }
    assert_eq!(again.as_ref(), Some(msg));
    // Placeholders resolve; taking the bytes out again and putting them back is lossless.
    if let Some(data) = msg.data().expect("validated placeholders resolve") {
        let (value, bytes) = deconstruct(data.clone());
        assert_eq!(reconstruct(&value, &bytes).as_ref(), Ok(&data));
        if !msg.packet.kind.is_binary() {
            assert!(bytes.is_empty());
            assert_eq!(Some(&value), msg.packet.data.as_ref());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(LIMITS);
    for part in data.split(|&b| b == 0) {
        let Some((&tag, body)) = part.split_first() else {
            continue;
        };
        let result = if tag & 1 == 0 {
            match std::str::from_utf8(body) {
                Ok(text) => decoder.feed_text(text),
                Err(_) => continue,
            }
        } else {
            decoder.feed_binary(body.to_vec())
        };
        match result {
            Ok(Some(msg)) => check(&msg),
            Ok(None) => assert!(decoder.is_waiting()),
            Err(_) => assert!(!decoder.is_waiting()),
        }
    }
});
