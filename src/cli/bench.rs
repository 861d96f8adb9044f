//! `clove bench`: a load generator for the Clove protocol (see [`clove::bench`]).

use super::exit::{Failure, Outcome};
use super::{Ctx, say};
use clap::Args;
use clove::bench::{BenchOp, BenchSpec};
use std::process::ExitCode;

/// `clove bench`'s arguments.
#[derive(Args)]
pub struct BenchArgs {
    /// Operation to measure.
    #[arg(long, value_enum, default_value = "noop")]
    pub op: BenchOp,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub conns: usize,
    /// Measured requests (after warm-up).
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub requests: u64,
    /// Requests in flight per connection (pipeline window).
    #[arg(short = 'P', long, default_value_t = 1)]
    pub window: usize,
    /// Payload bytes (NOOP) or value bytes (STORE/FETCH).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Distinct keys for STORE/FETCH.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Extra idle connections held open during the run.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Unmeasured warm-up requests.
    #[arg(long, default_value_t = 10_000)]
    pub warmup: u64,
    /// Connections that STORE continuously during the run (e.g. FETCH under writes).
    #[arg(long, default_value_t = 0)]
    pub background_writers: usize,
    /// Total STOREs per second of the background writers (0: as fast as answered).
    #[arg(long, default_value_t = 0)]
    pub background_rate: u64,
}

/// `clove bench`.
pub fn bench(ctx: &Ctx, a: BenchArgs) -> Outcome {
    let spec = BenchSpec {
        socket: ctx.socket.clone(),
        op: a.op,
        conns: a.conns,
        requests: a.requests,
        window: a.window,
        size: a.size,
        keys: a.keys,
        idle: a.idle,
        warmup: a.warmup,
        background_writers: a.background_writers,
        background_rate: a.background_rate,
    };
    let result = clove::bench::run(&spec).map_err(|e| {
        let msg = format!("bench failed: {e}");
        match e.kind() {
            std::io::ErrorKind::InvalidInput => Failure::Usage(msg),
            _ => Failure::Unreachable(msg),
        }
    })?;
    if ctx.json {
        say!("{}", serde_json::to_string(&result).unwrap_or_default());
    } else {
        say!("{result}");
    }
    Ok(ExitCode::SUCCESS)
}
