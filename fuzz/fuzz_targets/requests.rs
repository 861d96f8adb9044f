//! Drives every op handler with arbitrary payloads, as a caller at the `minimal` level, so
//! request parsing and validation see hostile input without the fuzzer running commands or
//! touching files. Handlers must answer (never panic) whatever they are sent.
#![no_main]

use clove::config::{Config, Overrides, RawConfig};
use clove::kernel::{Call, CallerId, Deliver, Kernel, Peer, ReplyPath};
use clove::ops::{self, Ops, Route};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct World {
    ops: Arc<Ops>,
    back: ReplyPath,
    caller: u32,
}

/// Replies go nowhere: the fuzzer only checks that handlers answer without panicking.
struct Discard;

impl Deliver for Discard {
    fn deliver(&self, _: CallerId, _: u8, _: &[u8]) {}
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
        let kernel = Arc::new(Kernel::new(config.kernel.clone(), config.store_limits));
        let caller = kernel
            .connect(Peer { pid: 0, uid: 0, gid: 0 }, 0, &clove::kernel::conns::ConnLimits::NONE)
            .expect("no caps")
            .caller;
        let ops = Ops {
            llm: clove::llm::LlmService::start(&kernel, config.llm.clone()).expect("llm"),
            http: clove::http::HttpService::start(&kernel, config.http.clone()).expect("http"),
            commands: ops::commands::CommandRunner::start(&kernel, &config.ops.exec)
                .expect("command runner"),
            agents: Arc::new(clove::supervisor::Agents::new(
                config.agents.clone(),
                config.sandbox.clone(),
            )),
            config: config.ops.clone(),
            completion_queue: Box::new(|| (0, 1)),
            pending_replies: Box::new(|| (0, 1)),
            services: Vec::new(),
            admin: Vec::new(),
            kernel,
        };
        World { ops: Arc::new(ops), back: Arc::new(Discard), caller }
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
        op,
        peer: Peer { pid: 0, uid: 0, gid: 0 },
        back: &w.back,
    };
    match ops::route(op) {
        Some(Route::Inline(handler)) => {
            let _ = handler(&w.ops, &call, payload);
        }
        Some(Route::Worker(handler)) => {
            handler(&w.ops, &call, payload.to_vec(), w.ops.kernel.responder(&call));
        }
        Some(Route::Unavailable) | None => {}
    }
});
