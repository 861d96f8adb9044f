//! SERVICE_ADMIN: `{service, action, ...}` handed to the named service's administration
//! (the relay's `token_create`, `token_list`, `token_revoke`). Needs the manage right: a
//! token is a way into the relay, so only the user's own clients (or agents granted the
//! right) may make or see them.

use super::Ops;
use crate::kernel::Call;
use crate::kernel::request::{Outcome, error};
use serde_json::Value;

pub fn service_admin(o: &Ops, call: &Call, payload: &[u8]) -> Outcome {
    if !o.kernel.perms(call.caller).can_manage {
        let msg = "permission denied: SERVICE_ADMIN needs the manage right";
        crate::kernel::access::blocked(&o.kernel, call, msg);
        return Outcome::Reply(error(msg));
    }
    let req: Value = match crate::kernel::request::parse(payload) {
        Ok(v) => v,
        Err(e) => return Outcome::Reply(error(e)),
    };
    let name = req.get("service").and_then(Value::as_str).unwrap_or("");
    let Some(service) = o.admin.iter().find(|s| s.name == name) else {
        let known: Vec<&str> = o.admin.iter().map(|s| s.name).collect();
        return Outcome::Reply(error(format!(
            "unknown service {name:?} (this daemon runs: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let responder = o.kernel.responder(call);
    (service.handle)(
        req,
        Box::new(move |reply| responder.reply(&crate::kernel::request::to_bytes(&reply))),
    );
    Outcome::Deferred
}
