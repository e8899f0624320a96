//! Helpers shared by the namespace test files.

use std::time::Instant;

use anyhow::{Result, bail};
use tests::{Lab, LabBuilder, Netns, show_output};

/// Generates a test per softwire kind: `both_softwires!(scenario: name_l2, name_l3);` with
/// `fn scenario(Softwire) -> anyhow::Result<()>`.
macro_rules! both_softwires {
    ($scenario:ident: $l2:ident, $l3:ident) => {
        #[test]
        fn $l2() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L2)
        }

        #[test]
        fn $l3() -> anyhow::Result<()> {
            $scenario(tests::Softwire::L3)
        }
    };
}

/// Builds a lab, runs `test` on it, and on failure prints the lab's diagnostics.
pub fn with_lab(builder: LabBuilder, test: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let mut lab = builder.build()?;
    eprintln!("lab {:?} up in {:?}", lab.softwire(), start.elapsed());
    let result = test(&mut lab);
    lab.report(result)?;
    eprintln!("passed after {:?}", start.elapsed());
    Ok(())
}

/// Runs `program` in `ns` and checks that its stdout holds every one of `expected`;
/// returns stdout.
pub fn run_expect(ns: &Netns, program: &str, args: &[&str], expected: &[&str]) -> Result<String> {
    let output = ns.run(program, args)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    for needle in expected {
        if !stdout.contains(needle) {
            bail!(
                "`{program} {}` in {}: expected {needle:?} in its output\n{}",
                args.join(" "),
                ns.role(),
                show_output(&output)
            );
        }
    }
    Ok(stdout)
}
