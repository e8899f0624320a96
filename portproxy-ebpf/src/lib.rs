// Only exists so that portproxy can name this crate as a build-dependency (its build script
// builds the eBPF binary); the programs are in main.rs.
#![no_std]
