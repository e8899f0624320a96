//! Wire formats portproxy reads: pure functions over byte slices, no I/O, so
//! they can be unit-tested and fuzzed on their own.

pub mod location;
pub mod port_control;
pub mod ssdp;
