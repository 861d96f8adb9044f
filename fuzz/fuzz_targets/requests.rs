//! Drives every op handler with arbitrary payloads, as a caller at the `minimal` level, so
//! request parsing and validation see hostile input without the fuzzer running commands or
//! touching files. Handlers must answer (never panic) whatever they are sent.
#![no_main]

use clove::config::{Config, Overrides, RawConfig};
use clove::kernel::ops::{self, Route};
use clove::kernel::{Call, Kernel, Peer};
use clove::reactor::{ConnId, Sink};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct World {
    kernel: Arc<Kernel>,
    rx: crossbeam_channel::Receiver<clove::reactor::Completion>,
    caller: u32,
    _poll: mio::Poll,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let raw: RawConfig = Config::parse(
            "[permissions]\nclient_level = \"minimal\"\n[limits]\nstate_max_keys = 1000\n",
            std::path::Path::new("fuzz.toml"),
        )
        .expect("fuzz config");
        let config = Config::from_raw(
            raw,
            &Overrides {
                socket: Some("/tmp/clove-fuzz-unused.sock".into()),
                state_dir: Some("/tmp/clove-fuzz-state".into()),
            },
        )
        .expect("valid fuzz config");
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, rx) = crossbeam_channel::bounded(1 << 16);
        let kernel = Arc::new(Kernel::new(Arc::new(config), Sink::new(tx, waker)));
        let caller = kernel.connect(Peer { pid: 0, uid: 0, gid: 0 });
        World { kernel, rx, caller, _poll: poll }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let w = world();
    let op = data[0];
    let payload = &data[1..];
    let call = Call {
        caller: w.caller,
        conn: ConnId { slot: 0, generation: 0 },
        op,
        peer: Peer { pid: 0, uid: 0, gid: 0 },
    };
    if let Some(info) = ops::info(op) {
        match info.route {
            Route::Inline(handler) => {
                let _ = handler(&w.kernel, &call, payload);
            }
            Route::Worker(handler) => {
                handler(&w.kernel, &call, payload.to_vec(), w.kernel.responder(&call));
            }
            Route::Unavailable => {}
        }
    }
    // Keep the completion queue from filling up.
    while w.rx.try_recv().is_ok() {}
});
