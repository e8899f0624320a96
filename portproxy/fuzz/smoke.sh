#!/bin/sh
# Bounded fuzzing smoke test for CI: builds the cargo-fuzz targets (nightly, ASan) and runs
# each for a fixed number of inputs from its corpus (if any) plus fresh mutations.
# Usage: portproxy/fuzz/smoke.sh [RUNS]   (default 20000 per target; about 10 s per target
# once built). Exits non-zero on a build failure or a finding (artifacts/<target>/).
set -eu
cd "$(dirname "$0")"
runs=${1:-20000}
cargo +nightly fuzz build
for target in port_control port_control_server ssdp location upnp upnp_soap gena igd_description; do
    echo "== $target: $runs runs"
    cargo +nightly fuzz run "$target" -- -runs="$runs" -max_total_time=60
done
