# Shared build environment for local work and .ci/run (same flags = same cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/afterview-target}"
if command -v mold >/dev/null 2>&1; then
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
export CARGO_INCREMENTAL=0
