#!/usr/bin/env bash
# Checks the Grafana dashboard in deploy/grafana: valid JSON, and every metric its queries use is
# one the services record (a renamed metric would otherwise leave a panel silently empty).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

python3 - deploy/grafana/*.json <<'PY'
import json, pathlib, re, sys

# Metric names as the code declares them: const NAME: &str = "ticketing_...".
declared = set()
for source in pathlib.Path(".").glob("*/src/**/*.rs"):
    declared.update(re.findall(r'"(ticketing_[a-z_]+)"', source.read_text()))
problems = []
for path in sys.argv[1:]:
    dashboard = json.loads(pathlib.Path(path).read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    if not exprs:
        problems.append(f"{path}: no queries")
    for expr in exprs:
        for name in re.findall(r"\bticketing_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in declared:
                problems.append(f"{path}: {name} is not a metric the services record")
    print(f"{path}: {len(exprs)} queries, every metric known")
if problems:
    sys.exit("\n".join(problems))
PY
