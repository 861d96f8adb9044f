//! Pure wire codecs: no I/O, no allocation beyond what a decoded value needs, fuzzed.

pub mod clove;
pub mod engineio;
pub mod http;
pub mod jsonl;
pub mod op;
pub mod socketio;
