//! Feeds arbitrary bytes, in arbitrary chunks, to the HTTP request-head parser as the reactor
//! would, checking that an incomplete head never turns into a different answer once complete,
//! that the limits hold, and that the query and WebSocket helpers never panic on what it kept.
//!
//! Odd second bytes put a valid request line and Host header in front of the input and turn
//! each `\n` of it into `\r\n`, so that most inputs reach the header checks, not only the
//! request-line parser.
#![no_main]

use clove::proto::http::{
    HeadLimits, Persist, Query, parse_head, percent_decode, write_response_head,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = (data[0] as usize % 64) + 1;
    let limits = HeadLimits {
        max_head: 256 + (data[1] as usize) * 4,
        max_headers: (data[1] as usize % 16) + 1,
        max_body: 1000,
    };
    let stream: Vec<u8> = if data[1] & 1 == 1 {
        let mut s = b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n".to_vec();
        for &b in &data[2..] {
            if b == b'\n' {
                s.push(b'\r');
            }
            s.push(b);
        }
        s
    } else {
        data[2..].to_vec()
    };
    let stream = &stream[..];
    let whole = parse_head(stream, &limits);
    let mut fed = 0;
    while fed < stream.len() {
        fed = (fed + chunk).min(stream.len());
        match parse_head(&stream[..fed], &limits) {
            Ok(None) => assert!(fed <= limits.max_head),
            Ok(Some(head)) => {
                // A complete head is the same whatever follows it.
                assert_eq!(whole.as_ref(), Ok(&Some(head.clone())));
                assert!(head.head_len <= fed && head.head_len <= limits.max_head);
                assert!(head.content_length <= limits.max_body);
                assert!(head.path.starts_with('/'));
                let _ = head.keep_alive();
                if head.is_websocket_upgrade()
                    && let Ok(accept) = head.websocket_accept()
                {
                    assert_eq!(accept.len(), 28);
                }
                if let Ok(query) = Query::parse(&head.query) {
                    assert!(query.pairs().len() <= clove::proto::http::MAX_QUERY_PAIRS);
                }
                let _ = percent_decode(&head.path, false);
                let origin = head.origin.clone().unwrap_or_default();
                let mut out = Vec::new();
                write_response_head(
                    &mut out,
                    200,
                    &[("Access-Control-Allow-Origin", &origin)],
                    0,
                    Persist::Close,
                )
                .expect("a parsed header value is a valid response header value");
                break;
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 411 | 413 | 431 | 501));
                // An error on a prefix stays an error with more bytes, except the head-size
                // error, which can only grow into one.
                assert!(whole.is_err());
                break;
            }
        }
    }
});
