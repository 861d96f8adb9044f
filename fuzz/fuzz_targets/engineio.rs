//! Feeds arbitrary bytes to the Engine.IO decoders as a polling POST body, a WebSocket text
//! frame and a handshake query. Whatever decodes must re-encode to something that decodes to
//! the same packets; nothing may panic, and the limits must hold.
#![no_main]

use clove::proto::engineio::{
    PayloadLimits, WsFrame, check_request, decode_payload, decode_ws_text, encode_payload,
};
use clove::proto::http::Query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = PayloadLimits {
        max_payload: 2048,
        max_packets: (data[0] as usize % 16) + 1,
    };
    let body = &data[1..];
    if let Ok(packets) = decode_payload(body, &limits) {
        assert!(body.len() <= limits.max_payload);
        assert!(!packets.is_empty() && packets.len() <= limits.max_packets);
        let mut out = Vec::new();
        encode_payload(&packets, &mut out);
        let wide = PayloadLimits {
            max_payload: usize::MAX,
            max_packets: usize::MAX,
        };
        assert_eq!(decode_payload(&out, &wide).as_ref(), Ok(&packets));
        let expected: usize =
            packets.iter().map(|p| p.polling_len()).sum::<usize>() + packets.len() - 1;
        assert_eq!(out.len(), expected);
        for packet in &packets {
            if let WsFrame::Text(text) = packet.ws_frame() {
                assert_eq!(decode_ws_text(&text).as_ref(), Ok(packet));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(packet) = decode_ws_text(text) {
            assert_eq!(packet.ws_frame(), WsFrame::Text(text.to_owned()));
        }
        if let Ok(query) = Query::parse(text) {
            for (get, upgrade) in [(true, false), (true, true), (false, false)] {
                if let Ok(req) = check_request(&query, get, upgrade) {
                    assert_eq!(query.get("EIO"), Some("4"));
                    assert!(req.sid.is_some() || get);
                }
            }
        }
    }
});
