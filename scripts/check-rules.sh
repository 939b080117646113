#!/usr/bin/env bash
# Checks the example alerting rules in deploy/prometheus: a Prometheus rule file's shape (groups
# of rules, each an alert with an expression, a severity and a summary, durations Prometheus
# reads), and that every metric and label their expressions name is one the services record (a
# renamed metric would otherwise leave an alert silently never firing). PyYAML comes from PyPI,
# pinned, into .tools/venv.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_venv_packages PyYAML==6.0.3

"$PY_VENV/bin/python" - deploy/prometheus/*.yaml <<'PY'
import pathlib, re, sys
import yaml

sources = [p.read_text() for p in pathlib.Path(".").glob("*/src/**/*.rs")]
# Metric names as the code declares them, and the label names it records with.
declared = set()
labels = {"job", "instance", "le"}
for text in sources:
    declared.update(re.findall(r'"(ticketing_[a-z_]+)"', text))
    labels.update(re.findall(r'\(\s*"([a-z_]+)",\s*[a-z_.]+(?:\([^()]*\))?\s*\)', text))
    labels.update(re.findall(r'"([a-z_]+)"\s*=>', text))
# metrics-process's series, under Prometheus's standard names.
process = {
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_virtual_memory_bytes", "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes", "process_start_time_seconds", "process_threads",
}
duration = re.compile(r"^[0-9]+(ms|s|m|h|d)$")
problems = []
for path in sys.argv[1:]:
    document = yaml.safe_load(pathlib.Path(path).read_text())
    rules = []
    for group in document.get("groups") or []:
        if not group.get("name"):
            problems.append(f"{path}: a group without a name")
        rules.extend(group.get("rules") or [])
    if not rules:
        problems.append(f"{path}: no rules")
    for rule in rules:
        name = rule.get("alert") or rule.get("record") or "?"
        expr = rule.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problems.append(f"{path}: {name}: no expr")
            continue
        if "alert" in rule:
            if (rule.get("labels") or {}).get("severity") not in ("page", "warn"):
                problems.append(f"{path}: {name}: severity is neither page nor warn")
            if not (rule.get("annotations") or {}).get("summary"):
                problems.append(f"{path}: {name}: no summary")
        if "for" in rule and not duration.match(str(rule["for"])):
            problems.append(f"{path}: {name}: for: {rule['for']} is no duration")
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problems.append(f"{path}: {name}: unbalanced brackets")
        for metric in re.findall(r"\b(?:ticketing|process)_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if base not in declared and metric not in process:
                problems.append(f"{path}: {name}: {metric} is not a metric the services record")
        for selector in re.findall(r"\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
                if label not in labels:
                    problems.append(f"{path}: {name}: label {label} is not one the services record")
        for clause in re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", expr):
            for label in re.findall(r"[a-z_]+", clause):
                if label not in labels:
                    problems.append(f"{path}: {name}: label {label} is not one the services record")
    print(f"{path}: {len(rules)} rules, every metric and label known")
if problems:
    sys.exit("\n".join(problems))
PY
