//! With the `fastpath` feature (the default): builds `portproxy-ebpf` for the BPF target
//! (nightly + bpf-linker, through aya-build; bpfel or bpfeb as the target's byte order needs)
//! and leaves the object at `$OUT_DIR/portproxy`, which `fastpath.rs` embeds, without its
//! DWARF. Without it (`--no-default-features`, the socket-only build) there is nothing to build.

#[cfg(feature = "fastpath")]
fn main() -> anyhow::Result<()> {
    use std::{env, path::PathBuf};

    use anyhow::Context as _;
    use aya_build::{Package, Toolchain};

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = PathBuf::from(manifest_dir).join("../portproxy-ebpf");
    let root_dir = root_dir
        .to_str()
        .context("non-UTF-8 path to portproxy-ebpf")?;
    let package = Package {
        name: "portproxy-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Nightly).context(
        "building portproxy-ebpf (if bpf-linker or rust-src is missing: cargo xtask setup)",
    )?;
    let object = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR not set")?).join("portproxy");
    strip_dwarf(&object).with_context(|| format!("removing the DWARF of {}", object.display()))
}

/// Deletes the `.debug_*` sections (and their relocations) from the eBPF object. aya-build
/// compiles with `-Cdebuginfo=2` because bpf-linker derives the object's BTF from it, but
/// nothing reads the DWARF afterwards: aya loads maps, programs and aya-log's records from
/// `.BTF`/`.BTF.ext` (which also carry the line info `bpftool prog dump` shows). Embedded, it
/// was 1.35 of the object's 1.59 MB.
#[cfg(feature = "fastpath")]
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    use object::build::elf::{Builder, SectionData};

    let data = std::fs::read(path)?;
    let mut builder = Builder::read(data.as_slice())?;
    let dwarf: Vec<_> = builder
        .sections
        .iter()
        .filter(|section| section.name.starts_with(b".debug_"))
        .map(|section| section.id())
        .collect();
    for section in builder.sections.iter_mut() {
        // The DWARF sections and their relocations (`.rel.debug_info`, ...).
        if dwarf.contains(&section.id())
            || section
                .sh_info_section
                .is_some_and(|id| dwarf.contains(&id))
        {
            section.delete = true;
        }
    }
    builder.delete_orphans();
    // LLVM keeps the section names in the symbols' `.strtab`; the writer wants a table of its own.
    if !builder
        .sections
        .iter()
        .any(|section| matches!(section.data, SectionData::SectionString))
    {
        let names = builder.sections.add();
        names.name = (&b".shstrtab"[..]).into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = SectionData::SectionString;
    }
    let mut out = Vec::new();
    builder.write(&mut out)?;
    std::fs::write(path, out)?;
    Ok(())
}

#[cfg(not(feature = "fastpath"))]
fn main() {}
