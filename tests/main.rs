//! Integration tests: each module starts the real `clove` binary (see `harness.rs`) and drives
//! it over its socket.

mod harness;

mod durability;
mod smoke;
