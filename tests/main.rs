//! Integration tests: each module starts the real `clove` binary (see `harness.rs`) and drives
//! it over its socket.

mod fakes;
mod harness;

mod http_op;
mod smoke;
mod think;
