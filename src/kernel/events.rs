//! The event bus: SUBSCRIBE, UNSUBSCRIBE, POLL_EVENTS and EMIT, and kernel-published events.
//!
//! Every subscriber has a queue bounded in events (`limits.event_queue_len`) and in bytes of
//! event data (`limits.event_queue_bytes`). When either is reached the oldest events are
//! dropped and a counter records them (POLL_EVENTS reports `dropped`), so a subscriber that
//! never polls costs a fixed amount of memory and one POLL_EVENTS reply stays bounded. Kernel event types are reserved: clients may emit `CUSTOM` or their
//! own type names (delivered as `CUSTOM` with `data.custom_type`), never a kernel event.

use super::CallerId;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Event types only the kernel publishes.
pub const KERNEL_EVENTS: [&str; 12] = [
    "AGENT_SPAWNED",
    "AGENT_EXITED",
    "AGENT_RESTARTING",
    "AGENT_ESCALATED",
    "AGENT_PAUSED",
    "AGENT_RESUMED",
    "MESSAGE_RECEIVED",
    "STATE_CHANGED",
    "SYSCALL_BLOCKED",
    "RESOURCE_WARNING",
    // Every event of the Codeswarm router and of the ClawNet relay, as `{event, data}`.
    "SWARM_EVENT",
    "RELAY_EVENT",
];

/// The type clients emit.
pub const CUSTOM: &str = "CUSTOM";

#[derive(Debug)]
pub struct Event {
    pub kind: String,
    pub data: Value,
    pub source: CallerId,
    pub at: Instant,
    pub wall: SystemTime,
    /// Bytes of `data` as JSON: what the event costs its subscribers' byte budgets.
    pub size: usize,
}

/// The length of `v` as JSON, without building the text.
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[derive(Default)]
struct Subscriber {
    types: HashSet<String>,
    queue: VecDeque<Arc<Event>>,
    /// Sum of `size` over `queue`.
    bytes: usize,
    dropped: u64,
}

/// All subscriptions and queued events.
pub struct EventBus {
    cap: usize,
    /// Bytes of event data one queue may hold (`limits.event_queue_bytes`).
    max_bytes: usize,
    /// Most event types one caller may subscribe to (`limits.max_subscriptions`).
    max_subscriptions: usize,
    subs: HashMap<CallerId, Subscriber>,
    /// Subscribers per type, so publishing to a type nobody wants costs one lookup.
    interest: HashMap<String, usize>,
}

impl EventBus {
    /// A bus whose subscribers queue `cap` events of at most `max_bytes` in all, and may each
    /// subscribe to `max_subscriptions` types.
    pub fn with_limits(cap: usize, max_bytes: usize, max_subscriptions: usize) -> EventBus {
        EventBus {
            cap,
            max_bytes,
            max_subscriptions,
            subs: HashMap::new(),
            interest: HashMap::new(),
        }
    }

    pub fn has_subscribers(&self, kind: &str) -> bool {
        self.interest.get(kind).is_some_and(|n| *n > 0)
    }

    /// Adds subscriptions; returns the caller's full list.
    pub fn subscribe(&mut self, caller: CallerId, types: &[String]) -> Result<Vec<String>, String> {
        let sub = self.subs.entry(caller).or_default();
        let new: Vec<&String> = types.iter().filter(|t| !sub.types.contains(*t)).collect();
        if sub.types.len() + new.len() > self.max_subscriptions {
            return Err(format!(
                "too many subscriptions: {} event types asked for in all, at most {} per caller (limits.max_subscriptions)",
                sub.types.len() + new.len(),
                self.max_subscriptions
            ));
        }
        for t in new {
            sub.types.insert(t.clone());
            *self.interest.entry(t.clone()).or_default() += 1;
        }
        let mut all: Vec<String> = sub.types.iter().cloned().collect();
        all.sort();
        Ok(all)
    }

    /// Removes subscriptions (all of them when `types` is `None`); returns those removed.
    pub fn unsubscribe(&mut self, caller: CallerId, types: Option<&[String]>) -> Vec<String> {
        let Some(sub) = self.subs.get_mut(&caller) else {
            return vec![];
        };
        let removed: Vec<String> = match types {
            None => sub.types.drain().collect(),
            Some(ts) => ts
                .iter()
                .filter(|t| sub.types.remove(*t))
                .cloned()
                .collect(),
        };
        for t in &removed {
            if let Some(n) = self.interest.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    self.interest.remove(t);
                }
            }
        }
        let mut removed = removed;
        removed.sort();
        removed
    }

    /// Publishes an event of `kind` to subscribers of `kind` (or of `alias`, for custom names).
    /// `only` restricts delivery to one caller. Returns how many queues received it.
    pub fn publish_as(
        &mut self,
        kind: &str,
        alias: Option<&str>,
        data: Value,
        source: CallerId,
        only: Option<CallerId>,
    ) -> usize {
        if !self.has_subscribers(kind) && !alias.is_some_and(|a| self.has_subscribers(a)) {
            return 0;
        }
        let size = json_len(&data);
        let event = Arc::new(Event {
            kind: kind.to_string(),
            data,
            source,
            at: Instant::now(),
            wall: SystemTime::now(),
            size,
        });
        let (cap, max_bytes) = (self.cap, self.max_bytes);
        let mut delivered = 0;
        for (id, sub) in self.subs.iter_mut() {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            if !(sub.types.contains(kind) || alias.is_some_and(|a| sub.types.contains(a))) {
                continue;
            }
            // Oldest first out, until the new event fits (alone, it always does: EMIT refuses
            // data larger than the byte budget, and kernel events are small).
            while sub.queue.len() >= cap || sub.bytes + size > max_bytes {
                let Some(old) = sub.queue.pop_front() else {
                    break;
                };
                sub.bytes -= old.size;
                sub.dropped += 1;
            }
            sub.bytes += size;
            sub.queue.push_back(event.clone());
            delivered += 1;
        }
        delivered
    }

    /// Publishes a kernel event.
    pub fn publish(&mut self, kind: &str, data: Value, source: CallerId, only: Option<CallerId>) {
        self.publish_as(kind, None, data, source, only);
    }

    /// Takes up to `max` queued events; returns them with the drop counter.
    pub fn take(&mut self, caller: CallerId, max: usize) -> (Vec<Arc<Event>>, u64) {
        match self.subs.get_mut(&caller) {
            Some(sub) => {
                let n = max.min(sub.queue.len());
                let taken: Vec<Arc<Event>> = sub.queue.drain(..n).collect();
                sub.bytes -= taken.iter().map(|e| e.size).sum::<usize>();
                (taken, sub.dropped)
            }
            None => (vec![], 0),
        }
    }

    /// Queued events for one caller.
    pub fn pending(&self, caller: CallerId) -> usize {
        self.subs.get(&caller).map_or(0, |s| s.queue.len())
    }

    /// Drops a caller's subscriptions and queue.
    pub fn forget(&mut self, caller: CallerId) {
        self.unsubscribe(caller, None);
        self.subs.remove(&caller);
    }
}

/// An event type name: 1 to `max` bytes (`limits.max_event_type_bytes`), no control
/// characters.
pub fn check_type(t: &str, max: usize) -> Result<(), String> {
    if t.len() > max {
        // The name itself is not echoed: it may be as large as a whole frame.
        return Err(format!(
            "invalid event type: {} bytes is longer than the limit of {max} bytes (limits.max_event_type_bytes)",
            t.len()
        ));
    }
    if t.is_empty() || t.chars().any(char::is_control) {
        return Err(format!(
            "invalid event type {t:?}: 1 to {max} printable characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounded_queue_drops_oldest() {
        let mut bus = EventBus::with_limits(3, 1 << 20, 8);
        bus.subscribe(1, &["CUSTOM".into()]).unwrap();
        for i in 0..5 {
            bus.publish("CUSTOM", json!(i), 9, None);
        }
        let (events, dropped) = bus.take(1, 10);
        assert_eq!(dropped, 2);
        let values: Vec<i64> = events.iter().map(|e| e.data.as_i64().unwrap()).collect();
        assert_eq!(values, vec![2, 3, 4]);
    }

    #[test]
    fn bounded_bytes_drop_oldest() {
        // Each event's data is `"xxxxxxxx"`: 10 bytes of JSON. 25 bytes hold two.
        let mut bus = EventBus::with_limits(100, 25, 8);
        bus.subscribe(1, &["CUSTOM".into()]).unwrap();
        for _ in 0..5 {
            bus.publish("CUSTOM", json!("xxxxxxxx"), 9, None);
        }
        assert_eq!(bus.pending(1), 2);
        let (events, dropped) = bus.take(1, 1);
        assert_eq!((events.len(), dropped), (1, 3));
        // Taking frees the budget: two fit again.
        bus.publish("CUSTOM", json!("xxxxxxxx"), 9, None);
        assert_eq!(bus.pending(1), 2);
        assert_eq!(bus.take(1, 10).1, 3);
        assert_eq!(json_len(&json!({"a": [1, 2]})), r#"{"a":[1,2]}"#.len());
    }

    #[test]
    fn subscriptions_are_bounded() {
        let mut bus = EventBus::with_limits(3, 1 << 20, 2);
        bus.subscribe(1, &["A".into(), "B".into()]).unwrap();
        bus.subscribe(1, &["A".into()]).unwrap();
        let e = bus.subscribe(1, &["C".into()]).unwrap_err();
        assert!(e.contains("limits.max_subscriptions"), "{e}");
        assert!(check_type("abcd", 4).is_ok());
        let e = check_type("abcde", 4).unwrap_err();
        assert!(e.contains("limits.max_event_type_bytes"), "{e}");
    }

    #[test]
    fn only_restricts_delivery() {
        let mut bus = EventBus::with_limits(3, 1 << 20, 8);
        bus.subscribe(1, &["STATE_CHANGED".into()]).unwrap();
        bus.subscribe(2, &["STATE_CHANGED".into()]).unwrap();
        bus.publish("STATE_CHANGED", json!({}), 1, Some(1));
        assert_eq!(bus.pending(1), 1);
        assert_eq!(bus.pending(2), 0);
        bus.forget(1);
        bus.forget(2);
        assert!(!bus.has_subscribers("STATE_CHANGED"));
    }
}
