use which::which;

/// The eBPF binary is linked by `bpf-linker`, which cargo does not know about: rebuild when it
/// is reinstalled (e.g. against another LLVM).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found in PATH ({err}): run `cargo xtask setup`"),
    }
}
