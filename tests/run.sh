#!/usr/bin/env bash
# Runs every test of vecodex-operator, installing what they need first:
#   the local control plane (deploy/local/cluster.sh install: etcd, kube-apiserver and
#   kube-controller-manager v1.20.2; about 7 minutes the first time, cached afterwards),
#   kubectl and helm (deploy/local/tools.sh), then fmt, clippy and cargo test.
# Each integration-test binary starts its own control plane and tears it down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

echo "== installing the local control plane (cached after the first run)"
bash deploy/local/cluster.sh install
tools=$(bash deploy/local/tools.sh)
export PATH="$PATH:$tools"

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
# Unit and integration tests (no doc tests: the crate has none). Four test threads per binary:
# the API server, not the test process, is the bottleneck on two cores.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ]; then
  echo "== load-test smoke run (every scenario briefly: 100 sets, 2 replicas), so the tool never rots"
  cargo run --locked --quiet --bin vecodex-loadtest -- \
    --sets 100 --namespaces 10 --replicas 2 --idle-seconds 5 \
    --churn-rate 5 --churn-sweep 2 --churn-seconds 5 --lease-seconds 6 --scale-sets 50 \
    --scale-out-replicas 1,2 --plain-concurrency 16,64 --memory-sets 30,60 --memory-churn-seconds 3 \
    --trials 2 \
    --out target/loadtest-smoke \
    || status=$?
fi
if [ "$status" -eq 0 ]; then
  echo "== load-test smoke run in the full profile (every controller, the node simulator): 50 sets"
  cargo run --locked --quiet --bin vecodex-loadtest -- --profile full \
    --sets 50 --namespaces 5 --replicas 2 --idle-seconds 5 \
    --churn-rate 5 --churn-sweep 2 --churn-seconds 5 --lease-seconds 6 --skip-fresh \
    --plain-concurrency 16 --trials 1 \
    --out target/loadtest-smoke-full \
    || status=$?
fi
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
