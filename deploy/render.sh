#!/usr/bin/env bash
# Renders deploy/operator.yaml from the chart with default values (for users without Helm):
#   deploy/render.sh > deploy/operator.yaml
# tests/chart.rs fails when the file and this output differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
helm_bin="${HELM:-$(command -v helm || echo "$HOME/.cache/vecodex-operator/tools/bin/helm")}"
cat <<'HEADER'
# vecodex-operator, rendered from chart/vecodex-operator with default values by
# deploy/render.sh. Install the CRD first: kubectl apply -f deploy/crd.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: vecodex-system
HEADER
"$helm_bin" template vecodex-operator "$root/chart/vecodex-operator" --namespace vecodex-system --skip-crds
