#!/usr/bin/env bash
# The operator end to end on the local control plane:
#   installs and starts a local control plane (deploy/local/cluster.sh), installs the CRD,
#   builds and starts the operator, applies the seed example and prints what it created and
#   the set's status. Everything keeps running afterwards; `deploy/local/demo.sh down` stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="${VECODEX_DEMO_STATE:-$HOME/.cache/vecodex-operator/demo}"
mkdir -p "$state"
cluster="$root/deploy/local/cluster.sh"

stop() {
  if [ -f "$state/operator.pid" ]; then
    pid=$(cat "$state/operator.pid")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'vecodex-operator run'; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    fi
    rm -f "$state/operator.pid"
  fi
  if [ -f "$state/cluster-dir" ]; then
    bash "$cluster" down "$(cat "$state/cluster-dir")" || true
    rm -f "$state/cluster-dir"
  fi
}

case "${1:-up}" in
  down) stop; echo "demo stopped"; exit 0 ;;
  up) ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac

stop  # a previous demo, if any
bash "$cluster" install
dir=$(bash "$cluster" up)
echo "$dir" > "$state/cluster-dir"
export KUBECONFIG="$dir/kubeconfig"
PATH="$PATH:$(bash "$root/deploy/local/tools.sh")"

echo "== building the operator" >&2
(cd "$root" && cargo build --locked -j2 --bin vecodex-operator >&2)
bin="$root/target/debug/vecodex-operator"

echo "== installing the CRD" >&2
"$bin" crd | kubectl apply --server-side -f - >&2
kubectl wait --for condition=established --timeout=60s crd/vecodexsets.apps.vecodex.link >&2

echo "== starting the operator (log: $dir/operator.log)" >&2
nohup "$bin" run > "$dir/operator.log" 2>&1 &
echo $! > "$state/operator.pid"

echo "== applying deploy/samples/vecodexset-example.yaml" >&2
kubectl apply -f "$root/deploy/samples/vecodexset-example.yaml" >&2

for _ in $(seq 1 150); do
  gen=$(kubectl get vxs search-cluster -o jsonpath='{.metadata.generation}')
  observed=$(kubectl get vxs search-cluster -o jsonpath='{.status.observedGeneration}')
  [ -n "$observed" ] && [ "$gen" = "$observed" ] && break
  sleep 0.2
done
[ "$gen" = "$observed" ] || { echo "the operator did not report status in time; see $dir/operator.log" >&2; exit 1; }

echo
echo "== the set and the children the operator created"
kubectl get vxs search-cluster
kubectl get deployments,services,ingresses,configmaps -l app.kubernetes.io/instance=search-cluster
echo
echo "== status (generation $gen, observedGeneration $observed)"
kubectl get vxs search-cluster -o jsonpath='{.status}' | python3 -m json.tool
echo
echo "The control plane and the operator keep running: export KUBECONFIG=$dir/kubeconfig"
echo "Stop both with: deploy/local/demo.sh down"
