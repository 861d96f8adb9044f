//! ASYNC_POLL: taking finished async results (see [`crate::kernel::asyncq`]).

use super::Ops;
use crate::kernel::Call;
use crate::kernel::request::{Outcome, error, parse, to_bytes};
use serde::Deserialize;
use serde_json::{Value, json};

/// ASYNC_POLL `{max?=10}`.
pub fn poll(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    let k = &*o.kernel;
    #[derive(Deserialize, Default)]
    struct Req {
        max: Option<usize>,
    }
    let req: Req = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let max = req.max.unwrap_or(10).clamp(1, 1000);
    let results = k.asyncq.lock().take(call.caller, max);
    let list: Vec<Value> = results
        .into_iter()
        .map(|r| {
            json!({
                "request_id": r.request_id,
                "opcode": r.opcode,
                "opcode_name": super::name(r.opcode),
                "payload": r.payload,
            })
        })
        .collect();
    Outcome::Reply(to_bytes(&json!({
        "success": true,
        "count": list.len(),
        "results": list,
    })))
}
