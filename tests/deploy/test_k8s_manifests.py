"""The Kubernetes manifests: they render, validate against the schemas, and agree with the worker.

`kubectl kustomize` renders each variant; kubernetes-validate checks every object against the
pinned Kubernetes version in strict mode (unknown fields fail). The rest acts the pod out: its
volumes become directories (the ConfigMap's files, the example Secret's keys, empty dirs), its
command line goes through the real `oms-cleanup validate`, and the timing fields are held
against the deadline and shutdown grace the worker will actually use.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from dockerfile_model import DOCKERFILE, REPO, parse_dockerfile

from worker.cli import run_cli
from worker.durations import parse_duration
from worker.exit_codes import EXIT_OK, EXIT_SAFETY_ABORT, EXIT_TASKS_LEFT, EXIT_USAGE
from worker.settings import SECRET_FILE_NAMES

K8S = REPO / "config" / "k8s"
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
KUBERNETES_VERSION = "1.32.0"
CRONJOB = "config/k8s"
INDEXED = "config/k8s/indexed"
VARIANTS = (CRONJOB, INDEXED)
# After the shutdown grace, cancelling what is left and writing the report (one atomic JSON
# file) takes well under this.
REPORT_MARGIN = timedelta(seconds=10)


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    return found


def render(variant: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize <variant>` produces."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(REPO / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each variant's rendered objects."""
    return {variant: render(variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def example_secret() -> dict[str, Any]:
    """The example credentials Secret."""
    loaded: dict[str, Any] = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    return loaded


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of this kind."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The variant's workload: its CronJob, or else its Job."""
    kinds = {obj["kind"] for obj in objects}
    return only(objects, "CronJob" if "CronJob" in kinds else "Job")


def job_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The Job spec of a Job or of a CronJob's job template."""
    spec: dict[str, Any] = (
        obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    )
    return spec


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec a Job or CronJob runs."""
    spec: dict[str, Any] = job_spec(obj)["template"]["spec"]
    return spec


def container(obj: dict[str, Any]) -> dict[str, Any]:
    """The worker's container (the only one)."""
    containers: list[dict[str, Any]] = pod_spec(obj)["containers"]
    assert len(containers) == 1
    return containers[0]


def option(args: list[str], name: str) -> str:
    """The value of `name` in a container's args (the last one given wins, as in argparse)."""
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == name]
    assert values, f"{name} not in {args}"
    return values[-1]


# --------------------------------------------------------------------------------------------
# Acting a pod out


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A pod's volumes as local directories, and its command line pointed at them."""

    args: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]

    def local(self, path: str) -> Path:
        """The local file for a path inside the pod."""
        for mount, directory in self.mounts.items():
            if path == mount or path.startswith(mount + "/"):
                return directory / path[len(mount) :].lstrip("/")
        raise AssertionError(f"{path} is not on any volume (the root filesystem is read-only)")


def materialize(
    obj: dict[str, Any],
    objects: list[dict[str, Any]],
    secret: dict[str, Any],
    root: Path,
) -> LocalPod:
    """Create the pod's volumes under `root` and rewrite its args and env to use them."""
    spec = pod_spec(obj)
    config_maps = {cm["metadata"]["name"]: cm for cm in objects if cm["kind"] == "ConfigMap"}
    directories: dict[str, Path] = {}
    for volume in spec["volumes"]:
        directory = root / volume["name"]
        directory.mkdir()
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]["data"]
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            data = secret["stringData"]
        else:
            assert "emptyDir" in volume, volume
            data = {}
        for key, value in data.items():
            (directory / key).write_text(value, encoding="utf-8")
        directories[volume["name"]] = directory
    box = container(obj)
    mounts = {m["mountPath"]: directories[m["name"]] for m in box["volumeMounts"]}
    # Longest mount first, so a nested mount wins over its parent.
    ordered = sorted(mounts, key=len, reverse=True)

    def rewrite(text: str) -> str:
        for mount in ordered:
            if text == mount or text.startswith(mount + "/"):
                return str(mounts[mount]) + text[len(mount) :]
        return text

    env = {item["name"]: rewrite(item["value"]) for item in box.get("env", [])}
    return LocalPod(args=[rewrite(arg) for arg in box["args"]], env=env, mounts=mounts)


def validate_as_pod(
    pod: LocalPod, monkeypatch: pytest.MonkeyPatch, *, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `oms-cleanup validate` with the pod's options and environment; its JSON output."""
    for name in list(os.environ):
        if name.startswith(("OMS_CLEANUP_", "HUAWEICLOUD_SDK_")) or name == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)
    for name, value in {**pod.env, **(extra_env or {})}.items():
        monkeypatch.setenv(name, value)
    assert pod.args[0] == "run", "the container's first arg is the run command"
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["validate", *pod.args[1:]], stdout=out, stderr=err)
    assert code == EXIT_OK, err.getvalue()
    shown: dict[str, Any] = json.loads(out.getvalue())
    return shown


@pytest.fixture
def pods(
    rendered: dict[str, list[dict[str, Any]]],
    example_secret: dict[str, Any],
    tmp_path: Path,
) -> dict[str, LocalPod]:
    """Each variant's pod, acted out in its own directory."""
    found: dict[str, LocalPod] = {}
    for number, variant in enumerate(VARIANTS):
        root = tmp_path / f"pod{number}"
        root.mkdir()
        objects = rendered[variant]
        found[variant] = materialize(workload(objects), objects, example_secret, root)
    return found


# --------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_and_validates_strictly(
    variant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """Every rendered object passes the Kubernetes schema in strict mode."""
    objects = rendered[variant]
    assert objects
    for obj in objects:
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_is_live(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """A misspelt field fails validation: the schema check can catch a typo in a manifest."""
    cronjob = copy.deepcopy(only(rendered[CRONJOB], "CronJob"))
    cronjob["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, KUBERNETES_VERSION, strict=True)


def test_example_secret_validates_and_holds_placeholders(example_secret: dict[str, Any]) -> None:
    """The example Secret is a valid Secret whose keys are credential file names, not real keys."""
    assert kubernetes_validate.validate(example_secret, KUBERNETES_VERSION, strict=True)
    values = example_secret["stringData"]
    assert {"ak", "sk"} <= set(values) <= set(SECRET_FILE_NAMES)
    assert all("REPLACE" in value.upper() for value in values.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_credentials_secret_is_referenced_not_shipped(
    variant: str,
    rendered: dict[str, list[dict[str, Any]]],
    example_secret: dict[str, Any],
) -> None:
    """No render contains a Secret (re-applying must not overwrite real keys); the pod mounts it."""
    objects = rendered[variant]
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    secrets = [v["secret"] for v in pod_spec(workload(objects))["volumes"] if "secret" in v]
    assert [s["secretName"] for s in secrets] == [example_secret["metadata"]["name"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_policy_configmap_is_generated_and_referenced(
    variant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The policy ConfigMap carries cleanup.toml under a content-hashed name the pod mounts."""
    objects = rendered[variant]
    config_map = only(objects, "ConfigMap")
    name = config_map["metadata"]["name"]
    assert name.startswith("oms-cleanup-policy-")
    base_policy = (K8S / "base" / "cleanup.toml").read_text(encoding="utf-8")
    assert config_map["data"] == {"cleanup.toml": base_policy}
    volumes = pod_spec(workload(objects))["volumes"]
    assert [v["configMap"]["name"] for v in volumes if "configMap" in v] == [name]


# --------------------------------------------------------------------------------------------
# Security


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_runs_restricted(variant: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Pod and container meet the restricted Pod Security Standard, as the image's user."""
    obj = workload(rendered[variant])
    spec = pod_spec(obj)
    user = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1].last("USER").arguments
    uid, gid = (int(part) for part in user.split(":"))
    for context in (spec["securityContext"], container(obj)["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid
        assert context["runAsGroup"] == gid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    box = container(obj)["securityContext"]
    assert box["readOnlyRootFilesystem"] is True
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"] == {"drop": ["ALL"]}
    assert box.get("privileged", False) is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"


@pytest.mark.parametrize("variant", VARIANTS)
def test_writable_paths_are_volumes(
    variant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """/tmp and /reports are size-limited emptyDirs; the policy and keys are mounted read-only."""
    obj = workload(rendered[variant])
    volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(obj)["volumeMounts"]}
    for path in ("/tmp", "/reports"):
        volume = volumes[mounts[path]["name"]]
        assert volume["emptyDir"]["sizeLimit"]
        assert not mounts[path].get("readOnly", False)
    for mount in mounts.values():
        if "emptyDir" not in volumes[mount["name"]]:
            assert mount["readOnly"] is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_are_bounded(variant: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The container requests and limits both CPU and memory."""
    resources = container(workload(rendered[variant]))["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) >= {"cpu", "memory"}


# --------------------------------------------------------------------------------------------
# Scheduling and timing


def test_cronjob_never_overlaps_and_cleans_up(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Forbid, a starting deadline, a retry budget and a TTL for finished Jobs."""
    cronjob = only(rendered[CRONJOB], "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["startingDeadlineSeconds"] > 0
    spec = job_spec(cronjob)
    assert spec["backoffLimit"] >= 0
    assert spec["ttlSecondsAfterFinished"] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_usage_errors_and_safety_stops_are_not_retried(
    variant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """Exits the run decided (1, 2, 3) are not retried; a shard's never stops the other shards."""
    obj = workload(rendered[variant])
    # An Indexed Job fails only the index: FailJob would kill every other shard mid-run.
    action = "FailIndex" if job_spec(obj).get("completionMode") == "Indexed" else "FailJob"
    rules = job_spec(obj)["podFailurePolicy"]["rules"]
    assert not [rule for rule in rules if rule["action"] == "FailJob" and action != "FailJob"]
    final = [rule["onExitCodes"] for rule in rules if rule["action"] == action]
    assert any(
        codes["operator"] == "In"
        and {EXIT_TASKS_LEFT, EXIT_USAGE, EXIT_SAFETY_ABORT} <= set(codes["values"])
        for codes in final
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_time_limits_leave_the_worker_room_to_finish(
    variant: str,
    rendered: dict[str, list[dict[str, Any]]],
    pods: dict[str, LocalPod],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """activeDeadlineSeconds outlasts the worker's deadline; the kill grace its shutdown."""
    settings = validate_as_pod(pods[variant], monkeypatch, extra_env={"JOB_COMPLETION_INDEX": "0"})
    deadline = parse_duration(settings["deadline"])
    grace = parse_duration(settings["shutdown_grace"])
    obj = workload(rendered[variant])
    active = timedelta(seconds=job_spec(obj)["activeDeadlineSeconds"])
    termination = timedelta(seconds=pod_spec(obj)["terminationGracePeriodSeconds"])
    assert active > deadline + grace + REPORT_MARGIN
    assert termination >= grace + REPORT_MARGIN


# --------------------------------------------------------------------------------------------
# The worker's view of the pod


def test_cronjob_pod_is_accepted_by_the_worker(
    pods: dict[str, LocalPod], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CronJob's args pass `validate`: policy from the ConfigMap, keys from the Secret."""
    pod = pods[CRONJOB]
    settings = validate_as_pod(pod, monkeypatch)
    assert settings["auth_mode"] == "ak_sk"
    assert settings["secrets_dir"] == str(pod.local("/var/run/secrets/oms-cleanup"))
    report = option(pods[CRONJOB].args, "--report")
    assert settings["report"] == report
    assert Path(report).parent == pod.local("/reports")
    # The shipped policy deletes nothing until an operator has read a report and opted in.
    assert settings["execute"] is False
    assert settings["dry_run"] is True


def test_indexed_job_shards_match_its_completions(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """completions == parallelism == --shard-count, in Indexed mode."""
    job = only(rendered[INDEXED], "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    shards = int(option(container(job)["args"], "--shard-count"))
    assert spec["completions"] == spec["parallelism"] == shards
    assert "--shard-index" not in container(job)["args"], "the index comes from Kubernetes"


def test_indexed_job_pods_cover_every_target_once(
    pods: dict[str, LocalPod], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pod i (JOB_COMPLETION_INDEX=i) gets its own report file and a disjoint, non-empty share."""
    pod = pods[INDEXED]
    shards = int(option(pod.args, "--shard-count"))
    everything = validate_as_pod(pods[CRONJOB], monkeypatch)["targets"]
    seen: list[dict[str, Any]] = []
    reports = set()
    for index in range(shards):
        settings = validate_as_pod(pod, monkeypatch, extra_env={"JOB_COMPLETION_INDEX": str(index)})
        assert settings["shard_index"] == index
        assert settings["shard_count"] == shards
        assert settings["report"] == str(pod.local(f"/reports/report-{index}.json"))
        assert settings["targets"], f"shard {index} has no target: lower the shard count"
        seen.extend(settings["targets"])
        reports.add(settings["report"])
    assert len(reports) == shards
    key = json.dumps
    assert sorted(map(key, seen)) == sorted(map(key, everything))


def test_indexed_job_runs_the_cronjob_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Apart from the shard options and report path, the Job's pod is the CronJob's pod."""
    cron_pod = copy.deepcopy(pod_spec(only(rendered[CRONJOB], "CronJob")))
    job_pod = copy.deepcopy(pod_spec(only(rendered[INDEXED], "Job")))
    cron_args = cron_pod["containers"][0].pop("args")
    job_args = job_pod["containers"][0].pop("args")
    assert job_pod == cron_pod

    def without(args: list[str], names: set[str]) -> list[str]:
        kept: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg in names:
                skip = True
            else:
                kept.append(arg)
        return kept

    assert without(job_args, {"--report", "--shard-count"}) == without(cron_args, {"--report"})
    assert "{shard}" in option(job_args, "--report")


def test_indexed_variant_leaves_the_schedule_out(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Applying the mass-cleanup variant creates no CronJob; it shares the base's other objects."""
    indexed = rendered[INDEXED]
    assert not [obj for obj in indexed if obj["kind"] == "CronJob"]
    shared = {
        (o["kind"], o["metadata"]["name"]) for o in rendered[CRONJOB] if o["kind"] != "CronJob"
    }
    assert shared <= {(o["kind"], o["metadata"]["name"]) for o in indexed}
