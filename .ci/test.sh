#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing, then runs every
# test (formatting and lints, Rust unit and integration tests, browser tests).
#
#   .ci/test.sh            everything
#   SKIP_INSTALL=1 ...     do not install anything
#   SKIP_BROWSER=1 ...     skip the Chromium tests
#   SKIP_FUZZ=1 ...        skip the short fuzzing runs (the corpus replay in cargo test stays)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

# --- System packages -----------------------------------------------------------------------
apt_packages=(chromium pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev
  libavdevice-dev libavfilter-dev libswscale-dev libswresample-dev nftables iproute2 coturn
  redis-server)
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if (( ${#missing[@]} )); then
    step "installing ${missing[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    apt_get() { $sudo apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }
    # A concurrent apt-get update can make the first try fail; try once more.
    apt_get update || { sleep 5; apt_get update; }
    apt_get install -y "${missing[@]}" || { sleep 5; apt_get install -y "${missing[@]}"; }
  fi
  if [[ ! -d web-demo/tests/node_modules/playwright-core ]]; then
    step "installing playwright-core (npm)"
    (cd web-demo/tests && npm ci --no-audit --no-fund)
  fi
fi

# --- Rust ------------------------------------------------------------------------------------
jobs="${CARGO_BUILD_JOBS:-$(nproc)}"
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy -j "$jobs" --workspace --all-targets -- -D warnings
step "cargo test"
cargo test -j "$jobs" --workspace
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc -j "$jobs" --workspace --no-deps --quiet

# --- Fuzzing ---------------------------------------------------------------------------------
# `cargo test` above replayed every committed fuzz input on stable; here each target fuzzes for
# a short while (nightly + cargo-fuzz; sfu/fuzz/run.sh says so and passes when they are missing).
if [[ -z "${SKIP_FUZZ:-}" ]]; then
  if [[ -z "${SKIP_INSTALL:-}" ]] && rustup run nightly rustc --version >/dev/null 2>&1 \
    && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked -j "$jobs"
  fi
  step "fuzzing every parser for 10 s each"
  CARGO_BUILD_JOBS="$jobs" sfu/fuzz/run.sh 10
fi

# --- Python tools (in .venv) -----------------------------------------------------------------
# From PyPI: the Helm library and the Kubernetes schemas (no helm binary is installable), and
# ffmpeg 9 with its WHIP muxer (imageio-ffmpeg) for the interop test, and schemathesis for
# fuzzing the REST API.
if [[ -z "${SKIP_INSTALL:-}" ]] && ! .venv/bin/python -c "import helm_python, kubernetes_validate, yaml, imageio_ffmpeg, schemathesis" 2>/dev/null; then
  step "installing helm-python-sdk, kubernetes-validate, imageio-ffmpeg and schemathesis (PyPI)"
  python3 -m venv .venv
  .venv/bin/pip install -q -r helm/tests/requirements.txt -r web-demo/tests/requirements.txt \
    -r control-api/tests/requirements.txt
fi

# --- Helm chart ------------------------------------------------------------------------------
step "Helm chart tests"
.venv/bin/python -m unittest discover -s helm/tests

# --- REST API fuzzing ------------------------------------------------------------------------
step "fuzzing the room service from its OpenAPI document (no 5xx)"
# The same features as `cargo test` (dev-dependencies included): a no-op after it, where
# `-p control-api --bin sfu-server` would rebuild half the dependency tree.
cargo build -j "$jobs" --workspace --all-targets
control-api/tests/fuzz-rest-api.sh target/debug/sfu-server

# --- Browser ---------------------------------------------------------------------------------
if [[ -z "${SKIP_BROWSER:-}" ]]; then
  step "browser tests (headless Chromium)"
  cargo build -j "$jobs" --workspace --all-targets
  (cd web-demo/tests && SFU_SERVER_BIN="$root/target/debug/sfu-server" timeout 1500 npm test --silent)
fi

step "all tests passed"
