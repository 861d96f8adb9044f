//! Router lines from strangers: a client's command line (envelope, then the payload checks of
//! its command) and a worker's outbox record (translated into events). Neither may panic,
//! every answer must be one JSON line, and a record's events always carry the ids of the file
//! it was read from, whatever the record says.
#![no_main]

use clove::router::translate::{Origin, Translated, translate};
use clove::router::wire::{Event, Line, encode_event, parse_line, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_line(text) {
        Line::Command {
            name,
            request_id,
            payload,
        } => {
            if let Err(reason) = parse_request(&name, &payload) {
                let line = encode_event(
                    &Event::rejected(&request_id, reason),
                    std::time::SystemTime::now(),
                );
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                assert!(serde_json::from_slice::<serde_json::Value>(&line).is_ok());
            }
        }
        Line::Reject { request_id, reason } => {
            let line = encode_event(
                &Event::rejected(&request_id, reason),
                std::time::SystemTime::now(),
            );
            assert_eq!(line.last(), Some(&b'\n'));
        }
        Line::Auth { .. } | Line::Ignore => {}
    }
    let from = Origin {
        swarm_id: "s",
        job_id: "j",
        node_id: 7,
    };
    if let Translated::Events(evs) = translate(text, &from) {
        for e in evs {
            assert_eq!(e.data["swarm_id"], "s");
            assert_eq!(e.data["job_id"], "j");
            assert_eq!(e.data["node_id"], 7);
            assert!(!e.name.starts_with("swarm_") && e.name != "command_rejected");
        }
    }
});
