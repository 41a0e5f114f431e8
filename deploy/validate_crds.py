#!/usr/bin/env python3
"""Validates the custom resources of a rendered overlay (documents whose
apiVersion is not Kubernetes' own) against the schemas in k8s/crds/, named
GROUP_VERSION_KIND.json, and writes the other documents to stdout for
kubernetes-validate. A custom resource without a schema fails.
    validate_crds.py CRDS_DIR RENDERED.yaml > CORE.yaml
"""
import json
import sys
from pathlib import Path

import jsonschema
import yaml

crds, rendered = Path(sys.argv[1]), Path(sys.argv[2])
core, failed = [], False
for doc in yaml.safe_load_all(rendered.read_text()):
    if not doc:
        continue
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    if "." not in group:  # core and k8s.io-less groups: apps, batch, policy, ""
        core.append(doc)
        continue
    if group.endswith(".k8s.io"):
        core.append(doc)
        continue
    name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    schema_file = crds / f"{group}_{version}_{doc.get('kind')}.json"
    if not schema_file.exists():
        print(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in {crds}", file=sys.stderr)
        failed = True
        continue
    errors = sorted(jsonschema.Draft7Validator(json.loads(schema_file.read_text())).iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        print(f"{name}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}", file=sys.stderr)
    failed |= bool(errors)
    if not errors:
        print(f"{name}: valid {doc.get('apiVersion')}", file=sys.stderr)
yaml.safe_dump_all(core, sys.stdout, sort_keys=False)
sys.exit(1 if failed else 0)
