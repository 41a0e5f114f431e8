#!/usr/bin/env bash
# Renders each kustomize overlay and validates every resource against the
# Kubernetes 1.30 schemas, offline and strictly (unknown fields fail), and
# fails on kustomize fields kubectl reports as deprecated. Custom resources
# (KEDA's ScaledObject) are validated against the schemas in k8s/crds/ by
# validate_crds.py, with the Python that kubernetes-validate runs on.
#   deploy/validate.sh [K8S_DIR]      (default: deploy/k8s beside this script)
# Needs kubectl (its built-in kustomize) and kubernetes-validate (PyPI).
set -euo pipefail
K8S=${1:-"$(dirname "$0")/k8s"}
command -v kubectl >/dev/null || { echo "validate.sh: kubectl not found (apt-get install kubernetes-client)" >&2; exit 2; }
command -v kubernetes-validate >/dev/null || { echo "validate.sh: kubernetes-validate not found (pip install kubernetes-validate)" >&2; exit 2; }
PY="$(dirname "$(command -v kubernetes-validate)")/python3"
[ -x "$PY" ] || PY=python3
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
  if ! "$PY" "$(dirname "$0")/validate_crds.py" "$K8S/crds" "$tmp/$name.yaml" > "$tmp/$name.core.yaml"; then
    echo "overlay $name: invalid custom resources (above)"; status=1
  elif ! kubernetes-validate --strict --quiet --no-warn -k 1.30.0 "$tmp/$name.core.yaml"; then
    echo "overlay $name: invalid resources (above)"; status=1
  else
    echo "overlay $name: $(grep -c '^kind:' "$tmp/$name.yaml") resources valid"
  fi
done
exit $status
