#!/usr/bin/env bash
# Renders each kustomize overlay and validates every resource against the
# Kubernetes 1.30 schemas, offline and strictly (unknown fields fail), and
# fails on kustomize fields kubectl reports as deprecated.
#   deploy/validate.sh [K8S_DIR]      (default: deploy/k8s beside this script)
# Needs kubectl (its built-in kustomize) and kubernetes-validate (PyPI).
set -euo pipefail
K8S=${1:-"$(dirname "$0")/k8s"}
command -v kubectl >/dev/null || { echo "validate.sh: kubectl not found (apt-get install kubernetes-client)" >&2; exit 2; }
command -v kubernetes-validate >/dev/null || { echo "validate.sh: kubernetes-validate not found (pip install kubernetes-validate)" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
status=0
for overlay in "$K8S"/overlays/*/; do
  name=$(basename "$overlay")
  if ! kubectl kustomize "$overlay" > "$tmp/$name.yaml" 2> "$tmp/$name.err"; then
    echo "overlay $name does not build:"; grep -v '^# Warning' "$tmp/$name.err" || true; status=1; continue
  fi
  # A deprecated field still builds today and stops building in a later
  # kubectl: it fails here first.
  if grep -i 'deprecated' "$tmp/$name.err"; then
    echo "overlay $name uses deprecated kustomize fields (above)"; status=1
  fi
  if ! kubernetes-validate --strict --quiet --no-warn -k 1.30.0 "$tmp/$name.yaml"; then
    echo "overlay $name: invalid resources (above)"; status=1
  else
    echo "overlay $name: $(grep -c '^kind:' "$tmp/$name.yaml") resources valid"
  fi
done
exit $status
