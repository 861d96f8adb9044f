//! STATE_CHANGED for the state store: who is told of a change or an expiry. Changes to a
//! caller's private (`agent`-scoped) keys are announced only to their owner, so key names do
//! not leak. (The STORE/FETCH/DELETE/KEYS handlers are in `ops`.)

use super::events::EventBus;
use super::{CallerId, Kernel};
use crate::store::{Expired, Namespace, Scope};
use parking_lot::Mutex;
use serde_json::json;

/// STATE_CHANGED for a change made by `caller`. Keys of services' named namespaces are not
/// Clove state: they are never announced.
pub fn announce(
    events: &Mutex<EventBus>,
    caller: CallerId,
    key: &str,
    action: &str,
    scope: Scope,
    ns: Namespace,
) {
    let only = match ns {
        Namespace::Agent(owner) => Some(owner),
        Namespace::Shared => None,
        Namespace::Named(_) => return,
    };
    let mut bus = events.lock();
    if !bus.has_subscribers("STATE_CHANGED") {
        return;
    }
    bus.publish(
        "STATE_CHANGED",
        json!({"key": key, "action": action, "scope": scope.as_str(), "agent_id": caller}),
        caller,
        only,
    );
}

/// STATE_CHANGED for a key reclaimed by TTL.
pub fn announce_expiry(k: &Kernel, e: &Expired) {
    let owner = match e.ns {
        Namespace::Agent(id) => id,
        Namespace::Shared => 0,
        Namespace::Named(_) => return,
    };
    announce(&k.events, owner, &e.key, "expire", e.scope, e.ns);
}
