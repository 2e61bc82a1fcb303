"""The Helm chart, checked offline against the binary it deploys.

    python3 helm/tests/chart_test.py BERTH_BINARY

For each values set in VALUE_SETS: render the chart with the Helm v4 SDK (helm-python-sdk: no
helm binary, no cluster), check every object with kubernetes-validate in strict mode against the
oldest Kubernetes the chart supports and a current one, then run the contract: the rendered
Deployment's container (command, args, environment from its ConfigMap and Secrets, files from
its mounted volumes) becomes a real `berth` process, its probes are called, and an image is
pushed and pulled with skopeo through the port the rendered Service targets. The scaled sets
run their gc CronJob's container too. Also: helm lint, values that break the schema fail to
render, checkov on every rendered manifest (failures only those in checkov-skips.yaml), the
values table in the chart's README, and a mutation: the chart with one BERTH_ variable misspelt
must fail the contract.

It needs the test services of scripts/test.sh: TEST_DATABASE_URL, TEST_REDIS_URL and
TEST_S3_ENDPOINT (each values set gets its own database, Redis prefix and bucket).
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "scripts"))
from contract_support import (  # noqa: E402
    Backends, Berth, free_port, htpasswd, local_setting, push_and_pull, token_key_pem, ui_check, wait_http,
)
CHART = HERE.parent / "berth"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and a current one.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
# Kinds of custom resources: no schema of them ships with kubernetes-validate.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
PASSWORD = "bee"
USERS = ""  # busy / bee, as htpasswd text: made by `berth user add` in main()


def s3_values(b):
    return {
        "type": "s3",
        "s3": {"bucket": b["bucket"], "endpoint": b["s3"], "region": "us-east-1", "forcePathStyle": True},
    }


# name -> function(backends, port) -> (values, secrets the operator made beforehand)
def embedded(b, port):
    return {}, {}


def scaled(b, port):
    values = {
        "replicaCount": 3,
        "berth": {
            "auth": "token",
            "externalURL": f"http://127.0.0.1:{port}",
            "htpasswd": {"users": USERS},
            "extraEnv": [{"name": "BERTH_REDIS_PREFIX", "value": b["prefix"]}],
        },
        "storage": {**s3_values(b), "s3": {**s3_values(b)["s3"], "accessKeyId": "test", "secretAccessKey": "test"}},
        "database": {"url": b["database"]},
        "redis": {"url": b["redis"]},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6},
        "networkPolicy": {"enabled": True},
    }
    return values, {}


def token_existing_secrets(b, port):
    values = {
        "replicaCount": 2,
        "berth": {
            "auth": "token",
            "externalURL": f"http://127.0.0.1:{port}",
            "htpasswd": {"existingSecret": "registry-users"},
            "tokenKey": {"existingSecret": "registry-token-key"},
            "access": {"rules": '[[rules]]\nusers = ["busy"]\nrepositories = ["contract/**"]\nactions = ["pull", "push"]\n'},
            "gcInterval": 600,
            "lifecycle": '[[quota]]\nnamespace = "contract"\nlimit = "1GiB"\n\n[[immutable]]\nrepositories = "prod/**"\n',
            "extraEnv": [{"name": "BERTH_REDIS_PREFIX", "value": b["prefix"]}],
        },
        "storage": {**s3_values(b), "s3": {**s3_values(b)["s3"], "existingSecret": "registry-s3"}},
        "database": {"existingSecret": "registry-database"},
        "redis": {"existingSecret": "registry-redis"},
    }
    secrets = {
        "registry-users": {"htpasswd": USERS},
        "registry-token-key": {"token-key.pem": token_key_pem()},
        "registry-s3": {"accessKeyId": "test", "secretAccessKey": "test"},
        "registry-database": {"url": b["database"]},
        "registry-redis": {"url": b["redis"]},
    }
    return values, secrets


def ingress_tls(b, port):
    values = {
        "berth": {"auth": "basic", "htpasswd": {"users": USERS}},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["registry.example.com"],
            "tls": [{"secretName": "registry-tls", "hosts": ["registry.example.com"]}],
        },
    }
    return values, {}


def http_route(b, port):
    values = {
        "berth": {"auth": "basic", "htpasswd": {"users": USERS}, "trustForwarded": "forwarded"},
        "storage": {"persistence": {"enabled": False}},
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
            "hostnames": ["registry.example.com"],
        },
    }
    return values, {}


def external_metrics(b, port):
    values = {
        "replicaCount": 2,
        "storage": s3_values(b),
        "database": {"url": b["database"]},
        "redis": {"url": b["redis"]},
        "berth": {"extraEnv": [
            {"name": "BERTH_REDIS_PREFIX", "value": b["prefix"]},
            # Workload identity stands in here: the chart sets no keys, the SDK's chain finds these.
            {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
        ]},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/berth"}},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
    }
    return values, {}


VALUE_SETS = {
    "embedded": embedded,
    "scaled": scaled,
    "token-existing-secrets": token_existing_secrets,
    "ingress-tls": ingress_tls,
    "httproute": http_route,
    "external-metrics": external_metrics,
}

# Values that must not render, and why.
BAD_VALUES = {
    "a misspelt key": {"replicas": 3},
    "an unknown storage type": {"storage": {"type": "gcs"}},
    "a replica count as text": {"replicaCount": "three"},
    "an external URL with a path": {"berth": {"externalURL": "https://registry.example.com/v2"}},
    "three replicas on a volume": {"replicaCount": 3},
    "token auth without users": {"berth": {"auth": "token", "externalURL": "https://r.example.com"}},
}


def render(chart_dir, values):
    chart = helm_python.Chart.load(str(chart_dir))
    try:
        out = chart.render(values, name="registry", namespace="berth", is_install=True)
    finally:
        chart.close()
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects, kind, suffix=""):
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]


def validate(objects):
    """kubernetes-validate, strict, for each version; returns lines to report."""
    lines = []
    for version in KUBE_VERSIONS:
        checked = 0
        for o in objects:
            if o["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{o['kind']}/{o['metadata']['name']} on {version}: {e.message} at {list(e.path)}")
            checked += 1
        lines.append(f"{version}: {checked} objects valid (strict)")
    custom = sorted({o["kind"] for o in objects if o["kind"] in CUSTOM_KINDS})
    if custom:
        lines.append(f"not checked (custom resources, no schema offline): {', '.join(custom)}")
    return lines


class Pod:
    """A rendered pod spec's container, run as a local process: its files under a temp root."""

    def __init__(self, objects, pod_spec, secrets, root, ports):
        self.objects, self.spec, self.root, self.ports = objects, pod_spec, Path(root), ports
        self.secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
                        for s in find(objects, "Secret")}
        self.secrets.update(secrets)
        self.config_maps = {c["metadata"]["name"]: c.get("data") or {} for c in find(objects, "ConfigMap")}
        self.container = pod_spec["containers"][0]
        self.mounts = {}
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            local = self.root / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "secret" in volume:
                self.project(local, self.secrets[volume["secret"]["secretName"]], volume["secret"].get("items"))
            elif "configMap" in volume:
                self.project(local, self.config_maps[volume["configMap"]["name"]], volume["configMap"].get("items"))
            else:
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume
            self.mounts[mount["mountPath"]] = local

    @staticmethod
    def project(directory, data, items):
        for item in items or [{"key": k, "path": k} for k in data]:
            assert item["key"] in data, f"the volume wants key {item['key']}, which its source lacks"
            (directory / item["path"]).write_text(data[item["key"]])

    def local_path(self, value):
        return local_setting(value, self.mounts, {})

    def environment(self):
        env = {}
        for source in self.container.get("envFrom", []):
            env.update(self.config_maps[source["configMapRef"]["name"]])
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var["valueFrom"]
            if "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                assert key["key"] in self.secrets[key["name"]], f"{var['name']}: {key['name']} has no key {key['key']}"
                env[var["name"]] = self.secrets[key["name"]][key["key"]]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[var["name"]] = self.config_maps[key["name"]][key["key"]]
            else:
                raise AssertionError(f"{var['name']}: unsupported source {ref}")
        env = {name: local_setting(value, self.mounts, self.ports) for name, value in env.items()}
        # The image's own environment (Dockerfile ENV), under what the pod sets.
        return {"BERTH_LISTEN": f"127.0.0.1:{self.ports.get(5000, 5000)}", "BERTH_DATA_DIR": self.local_path("/var/lib/berth"),
                "PATH": os.environ["PATH"], **env}

    def command(self, binary):
        assert "command" not in self.container, "the image's entrypoint is berth"
        return [binary, *self.container.get("args", ["serve"])]


def container_port(container, name_or_number):
    if isinstance(name_or_number, int):
        return name_or_number
    for port in container.get("ports", []):
        if port.get("name") == name_or_number:
            return port["containerPort"]
    raise AssertionError(f"no container port named {name_or_number}")


def contract(objects, secrets, binary, port, work, auth):
    """Runs the rendered Deployment (and the gc CronJob, when there is one) as real processes."""
    deployment = find(objects, "Deployment")[0]
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    service = find(objects, "Service")[0]
    api = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    api_port = container_port(container, api["targetPort"])
    ports = {api_port: port}
    metrics = [p for p in container.get("ports", []) if p["name"] == "metrics"]
    if metrics:
        ports[metrics[0]["containerPort"]] = free_port()
    pod = Pod(objects, pod_spec, secrets, Path(work) / "pod", ports)
    env = pod.environment()
    lines = []
    with Berth(pod.command(binary), env, work) as berth:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = container[probe]["httpGet"]
            probe_port = ports[container_port(container, http["port"])]
            status = berth.probe(f"http://127.0.0.1:{probe_port}{http['path']}", f"{probe} {http['path']}")
            lines.append(f"{probe} {http['path']} on container port {container_port(container, http['port'])}: {status}")
        user = None if auth == "none" else "busy"
        digest = push_and_pull(f"127.0.0.1:{port}", work, user, PASSWORD)
        lines.append(f"skopeo push and pull through Service port {api['port']} -> container port {api_port}: {digest[:19]}…")
        lines.append(ui_check(f"http://127.0.0.1:{port}", user, PASSWORD))
        if metrics:
            status = wait_http(f"http://127.0.0.1:{ports[metrics[0]['containerPort']]}/metrics")
            lines.append(f"/metrics on container port {metrics[0]['containerPort']}: {status}")
        for cron in find(objects, "CronJob"):
            job_spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            job = Pod(objects, job_spec, secrets, Path(work) / "gc", {})
            out = subprocess.run(job.command(binary), env=job.environment(), capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"the gc CronJob's container failed: {out.stdout}{out.stderr}"
            lines.append(f"CronJob {cron['metadata']['name']}: {' '.join(job.container['args'])} exited 0")
    return lines


def checkov(objects, work, skips):
    """checkov on the rendered manifests; returns the failed check ids not skipped."""
    directory = Path(work) / "checkov"
    directory.mkdir()
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all(objects))
    command = os.environ.get("CHECKOV", "checkov")
    out = subprocess.run(
        [command, "--compact", "--framework", "kubernetes", "-d", str(directory), "-o", "json",
         "--skip-check", ",".join(skips)],
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout or "{}")
    reports = report if isinstance(report, list) else [report]
    failed, passed, skipped = [], 0, 0
    for r in reports:
        results = r.get("results", {})
        failed += [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", [])]
        passed += len(results.get("passed_checks", []))
        skipped += len(results.get("skipped_checks", []))
    return failed, passed


def readme_table():
    """The values table of the README as it must be: one row per documented leaf of values.yaml."""
    rows = []
    stack = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    comment = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match:
            comment = []
            continue
        indent, key, rest = len(match.group(1)) // 2, match.group(2), match.group(3).strip()
        stack = stack[:indent] + [key]
        if comment:
            default = rest if rest else "(see values.yaml)"
            rows.append(f"| `{'.'.join(stack)}` | `{default}` | {' '.join(comment)} |")
        comment = []
    return rows


def check_readme():
    text = (CHART / "README.md").read_text()
    table = readme_table()
    begin, end = "<!-- values table: begin -->", "<!-- values table: end -->"
    current = text.split(begin)[1].split(end)[0].strip().splitlines()[2:]
    expected = table
    if current != expected:
        missing = [r for r in expected if r not in current]
        extra = [r for r in current if r not in expected]
        raise AssertionError("helm/berth/README.md's values table is not values.yaml's; write it again with "
                             f"`python3 helm/tests/chart_test.py --table`.\nmissing: {missing[:5]}\nextra: {extra[:5]}")
    return len(table)


def documented():
    """Every leaf key of values.yaml has a '# --' comment (the table is made of them)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = {r.split("`")[1] for r in readme_table()}
    undocumented = []

    def walk(node, path):
        if path in rows:
            return
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        else:
            undocumented.append(path)

    walk(values, "")
    assert not undocumented, f"values without a '# --' comment: {undocumented}"


def run_set(name, make, binary, backends, skips, chart_dir=CHART, report=print):
    port = free_port()
    b = backends.fresh()
    values, secrets = make(b, port)
    objects = render(chart_dir, values)
    kinds = sorted(f"{o['kind']}" for o in objects)
    report(f"## {name}: {len(objects)} objects: {', '.join(kinds)}")
    for line in validate(objects):
        report(f"  kubernetes-validate {line}")
    if skips is not None:
        failed, passed = checkov(objects, tempfile.mkdtemp(prefix=f"checkov-{name}-"), skips)
        assert not failed, f"checkov failed checks (fix, or list in checkov-skips.yaml with a reason): {failed}"
        report(f"  checkov: {passed} passed, 0 failed ({len(skips)} skipped by checkov-skips.yaml)")
    with tempfile.TemporaryDirectory(prefix=f"chart-{name}-") as work:
        auth = values.get("berth", {}).get("auth", "none")
        for line in contract(objects, secrets, binary, port, work, auth):
            report(f"  contract: {line}")


def mutation(binary, backends):
    """The chart with BERTH_S3_FORCE_PATH_STYLE misspelt: the contract must fail, naming it."""
    with tempfile.TemporaryDirectory(prefix="chart-mutant-") as work:
        mutant = Path(work) / "berth"
        shutil.copytree(CHART, mutant)
        configmap = mutant / "templates" / "configmap.yaml"
        text = configmap.read_text()
        assert "BERTH_S3_FORCE_PATH_STYLE:" in text
        configmap.write_text(text.replace("BERTH_S3_FORCE_PATH_STYLE:", "BERTH_S3_FORCE_PATHSTYLE:"))
        try:
            run_set("scaled, mutated", scaled, binary, backends, None, mutant, report=lambda _: None)
        except AssertionError as e:
            message = str(e)
            assert "BERTH_S3_FORCE_PATHSTYLE" in message, f"failed, but not for the misspelt variable: {message[-800:]}"
            said = next(line for line in message.splitlines() if "BERTH_S3_FORCE_PATHSTYLE" in line)
            return said.strip()
        raise AssertionError("the contract passed with BERTH_S3_FORCE_PATH_STYLE misspelt")


def main():
    if sys.argv[1:] == ["--table"]:
        print("\n".join(readme_table()))
        return
    binary = str(Path(sys.argv[1]).resolve())
    global USERS
    USERS = htpasswd(binary, "busy", PASSWORD)
    lint = helm_python.lint(str(CHART), {}, strict=True, kube_version="v1.27.0")
    problems = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
    assert not problems, f"helm lint: {problems}"
    print(f"helm lint --strict: {len(lint['messages'])} message(s), none a warning or error "
          f"({'; '.join(m['error'] for m in lint['messages'])})")
    documented()
    dashboard = (CHART / "dashboards" / "berth.json").read_text()
    assert dashboard == (CHART.parent.parent / "dashboards" / "berth.json").read_text(), \
        "helm/berth/dashboards/berth.json is not dashboards/berth.json: copy it again"
    print(f"values.yaml: every value documented; README table in step ({check_readme()} rows)")
    for what, values in BAD_VALUES.items():
        try:
            render(CHART, values)
        except (helm_python.HelmValuesError, helm_python.HelmRenderError) as e:
            reason = str(e).strip().splitlines()[-1]
            print(f"refused, {what}: {reason[:160]}")
        else:
            raise AssertionError(f"the chart rendered {what}: {values}")
    skips_file = yaml.safe_load((HERE / "checkov-skips.yaml").read_text())
    skips = [s["id"] for s in skips_file["skips"]]
    backends = Backends()
    for name, make in VALUE_SETS.items():
        run_set(name, make, binary, backends, skips)
    print(f"mutation: BERTH_S3_FORCE_PATH_STYLE misspelt in configmap.yaml fails the contract: {mutation(binary, backends)}")
    print("chart tests passed")


if __name__ == "__main__":
    main()
