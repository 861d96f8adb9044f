//! Drives the relay's front-end (HTTP, Engine.IO over polling and WebSocket, Socket.IO, the
//! relay's sessions and events) with arbitrary bytes, as a connection would send them, cut
//! into pieces where the input says. Nothing may panic, and every call must return.
//!
//! The first byte picks the start: raw HTTP, or a WebSocket session already upgraded (so the
//! fuzzer reaches frames, Engine.IO and Socket.IO packets without having to find a valid
//! handshake first); the second byte sets the size of the pieces.
#![no_main]

use clove::frontend::relay::RelayProto;
use clove::frontend::{ConnIo, ConnLabel, Outbox};
use clove::kernel::{Kernel, Peer};
use clove::relay::Relay;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

/// Output goes nowhere: the fuzzer checks that input is handled, not what is answered.
struct Discard;

impl Outbox for Discard {
    fn reply(&self, _: Vec<u8>) {}
    fn push(&self, _: Vec<u8>) {}
    fn push_close(&self, _: Vec<u8>) {}
}

fn relay() -> &'static Arc<Relay> {
    static R: OnceLock<Arc<Relay>> = OnceLock::new();
    R.get_or_init(|| {
        let dir = std::path::Path::new("/tmp/clove-fuzz-relay");
        std::fs::create_dir_all(dir).expect("state dir");
        // Short timers, run by the relay's own thread: sessions the input opens and leaves
        // are closed soon, so the state stays small however long the fuzzer runs.
        let raw = clove::relay::config::RawRelay {
            max_payload: Some(32768),
            max_file_bytes: Some(1024),
            ping_interval_ms: Some(20),
            ping_timeout_ms: Some(20),
            connect_timeout_ms: Some(50),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let env = |k: &str| (k == "CLAWNET_SECRET_KEY").then(|| "fuzz".to_owned());
        let cfg = clove::relay::config::RelayConfig::from_raw_env(&raw, dir, &env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let config = clove::config::Config::defaults();
        let kernel = Arc::new(Kernel::new(config.kernel.clone(), config.store_limits));
        let relay = Relay::new(cfg, kernel).expect("relay");
        relay.start_timers().expect("relay timer thread");
        relay
    })
}

const UPGRADE: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\
Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (mode, piece, rest) = (data[0], usize::from(data[1]).max(1), &data[2..]);
    let mut proto = RelayProto::new(relay().clone(), Box::new(Discard));
    let mut io = ConnIo {
        label: ConnLabel { slot: 0, generation: 0 },
        caller: 1,
        peer: Peer { pid: 0, uid: 0, gid: 0 },
        addr: None,
        out: Vec::new(),
        out_pos: 0,
        busy: false,
        close_after_flush: false,
    };
    let mut input = Vec::new();
    if mode % 2 == 1 {
        input.extend_from_slice(UPGRADE);
    }
    input.extend_from_slice(rest);
    let mut pending: Vec<u8> = Vec::new();
    for chunk in input.chunks(piece) {
        pending.extend_from_slice(chunk);
        let mut budget = 64;
        let (used, _) = proto.process_input(&pending, &mut io, usize::MAX, &mut budget);
        pending.drain(..used.min(pending.len()));
        // Output is "written" at once, as a fast client would read it.
        io.out.clear();
        io.out_pos = 0;
        if io.close_after_flush {
            break;
        }
    }
    proto.closed(&mut io);
});
