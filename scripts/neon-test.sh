#!/usr/bin/env bash
# Runs kiln's GEMM property tests on AArch64 (NEON) under qemu user-mode emulation.
#
# Installs what is missing: Debian's gcc-aarch64-linux-gnu (the linker) with
# libc6-dev-arm64-cross (the AArch64 C library under /usr/aarch64-linux-gnu), qemu-user
# (qemu-aarch64), and the rustup target aarch64-unknown-linux-gnu. The linker and runner are set in .cargo/config.toml.
#
# Usage: scripts/neon-test.sh --install-only   (what scripts/setup.sh calls)
#        scripts/neon-test.sh [extra cargo test args…]
#   e.g. PROPTEST_CASES=16 scripts/neon-test.sh            (fewer cases: emulation is slow)
#        scripts/neon-test.sh -- --nocapture isa_selection
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

say() { printf 'neon-test: %s\n' "$*"; }

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v aarch64-linux-gnu-gcc > /dev/null || missing+=(gcc-aarch64-linux-gnu)
# The AArch64 C runtime (crt1.o, libc) the linker needs; only a recommendation of the compiler.
[ -e /usr/aarch64-linux-gnu/lib/crti.o ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    say "adding the rustup target aarch64-unknown-linux-gnu"
    rustup target add aarch64-unknown-linux-gnu
fi

if [ "${1:-}" = "--install-only" ]; then
    say "ready: $(qemu-aarch64 --version | head -n1), $(aarch64-linux-gnu-gcc --version | head -n1)"
    exit 0
fi

say "$(qemu-aarch64 --version | head -n1)"
say "cargo test -p kiln-runtime --target aarch64-unknown-linux-gnu --test gemm_prop $*"
exec cargo test -p kiln-runtime --target aarch64-unknown-linux-gnu --test gemm_prop "$@"
