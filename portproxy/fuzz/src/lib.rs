//! The codecs under test, compiled from portproxy's own source files.
//!
//! `portproxy/src/proto` is pure (no I/O; httparse, quick-xml and http's types, which this
//! crate lists too), so it is included by path rather than
//! through a dependency on the `portproxy` crate: that would build the whole daemon (tokio,
//! aya, netlink) and its build script, which compiles the eBPF programs with the nightly and
//! bpf-linker, under the sanitizer flags of every fuzz build. Same code, seconds to build.

#[path = "../../src/proto/mod.rs"]
pub mod proto;

/// The IGD's device descriptions (string building only, no I/O), read back by `proto`.
#[path = "../../src/serve/igd/description.rs"]
pub mod description;
