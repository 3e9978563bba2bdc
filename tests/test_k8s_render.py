"""Tests of `tfps-ha render-k8s`: golden files, restart policies, wiring between the objects, errors.

The golden files in tests/golden/k8s_example/ are the manifests of
cluster_specs/k8s_example.yaml (2 PS, 4 workers). After an intended change,
rewrite them with `TFPS_HA_UPDATE_GOLDEN=1 pytest tests/test_k8s_render.py`
and review the diff. tests/test_k8s_mwms.py does the same for the
multi_worker_mirrored example.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import pathlib

import pytest
import yaml

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode, is_retryable
from tfps_ha.k8s import names
from tfps_ha.k8s.render import MANIFEST_FILES, manifest_text, render_manifests, render_warnings, write_manifests
from tfps_ha.k8s.tfjob import EXIT_CODE_RETRYABLE_FROM
from tfps_ha.lease.kubernetes import LEASE_NAME_ENV
from tfps_ha.spec import load_spec, parse_spec
from tfps_ha.tf_config import parse_tf_config

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "cluster_specs" / "k8s_example.yaml"
GOLDEN = REPO / "tests" / "golden" / "k8s_example"
IMAGE = "example/trainer:1"


def render_example(**changes) -> dict[str, dict]:
    """Renders k8s_example.yaml, with top-level spec keys replaced by `changes`."""
    text = EXAMPLE.read_text(encoding="utf-8")
    if changes:
        document = yaml.safe_load(text)
        document.update(changes)
        text = yaml.safe_dump(document, sort_keys=False)
    return render_manifests(parse_spec(text, source="k8s_example.yaml"), text, IMAGE)


def replica_spec(manifests: dict, replica_type: str) -> dict:
    return manifests["tfjob.yaml"]["spec"]["tfReplicaSpecs"][replica_type]


def pod_spec(manifests: dict, replica_type: str) -> dict:
    return replica_spec(manifests, replica_type)["template"]["spec"]


def container(manifests: dict, replica_type: str) -> dict:
    (only,) = pod_spec(manifests, replica_type)["containers"]
    return only


# ------------------------------------------------------------------ golden


def assert_matches_golden(manifests: dict[str, dict], source: str, golden: pathlib.Path) -> None:
    """Compares rendered manifests with the files in `golden`, or rewrites them when asked."""
    rendered = {name: manifest_text(manifest, source) for name, manifest in manifests.items()}

    if os.environ.get("TFPS_HA_UPDATE_GOLDEN") == "1":
        golden.mkdir(parents=True, exist_ok=True)
        for stale in golden.glob("*.yaml"):
            stale.unlink()
        for name, text in rendered.items():
            (golden / name).write_text(text, encoding="utf-8")

    assert sorted(rendered) == sorted(path.name for path in golden.glob("*.yaml"))
    for name, text in rendered.items():
        expected = (golden / name).read_text(encoding="utf-8")
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}", f"rendered/{name}"))
        assert text == expected, f"{name} differs from its golden file:\n{diff}"


def test_golden_manifests():
    assert_matches_golden(render_example(), "k8s_example.yaml", GOLDEN)


def test_written_files_match_rendered(tmp_path):
    spec = load_spec(str(EXAMPLE))
    manifests = render_manifests(spec, EXAMPLE.read_text(encoding="utf-8"), IMAGE)

    paths = write_manifests(manifests, str(tmp_path / "out"), spec.source)

    assert [pathlib.Path(path).name for path in paths] == sorted(manifests)
    for path in paths:
        assert yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8")) == manifests[pathlib.Path(path).name]


def test_rerender_removes_stale_claim(tmp_path):
    out = tmp_path / "out"
    spec = load_spec(str(EXAMPLE))
    write_manifests(render_manifests(spec, "", IMAGE), str(out), spec.source)
    (out / "notes.yaml").write_text("kept: true\n", encoding="utf-8")
    claimed = render_example(kubernetes={"namespace": "training", "workdir_claim": "team-nfs"})

    write_manifests(claimed, str(out), spec.source)

    assert not (out / "persistentvolumeclaim.yaml").exists()
    assert (out / "notes.yaml").read_text(encoding="utf-8") == "kept: true\n"
    assert sorted(path.name for path in out.glob("*.yaml")) == sorted([*claimed, "notes.yaml"])


def test_manifest_files_cover_render():
    assert set(render_example()) <= set(MANIFEST_FILES)


# ------------------------------------------------------- restart policies


def test_restart_policies_per_replica():
    manifests = render_example()

    assert replica_spec(manifests, "Chief")["restartPolicy"] == "ExitCode"
    assert replica_spec(manifests, "PS")["restartPolicy"] == "Always"
    assert replica_spec(manifests, "Worker")["restartPolicy"] == "Always"


# Exit 0 completes the TFJob, so no restart policy applies to it. 137 and 143
# are SIGKILL (an OOM kill) and SIGTERM as a shell reports them.
@pytest.mark.parametrize("code", [code for code in ExitCode if code != ExitCode.OK] + [137, 143])
def test_exit_codes_match_exit_code_policy(code):
    # The ExitCode policy restarts exits from 128 up and fails the job below.
    assert is_retryable(code) == (code >= EXIT_CODE_RETRYABLE_FROM)


def test_replica_counts_and_backoff():
    manifests = render_example()
    spec = load_spec(str(EXAMPLE))

    assert replica_spec(manifests, "Chief")["replicas"] == 1
    assert replica_spec(manifests, "PS")["replicas"] == 2
    assert replica_spec(manifests, "Worker")["replicas"] == 4
    run_policy = manifests["tfjob.yaml"]["spec"]["runPolicy"]
    assert run_policy["cleanPodPolicy"] == "Running"
    assert run_policy["backoffLimit"] == (spec.restart["ps"].max_restarts_per_job
                                          + spec.restart["worker"].max_restarts_per_job)


# ------------------------------------------------------------ TF_CONFIG


def operator_tf_config(manifests: dict, replica_type: str, index: int) -> str:
    """Returns the TF_CONFIG the TFJob operator would inject, built by its rule.

    training-operator v1.9 (pkg/controller.v1/tensorflow/tensorflow.go)
    names each task JOB-TYPE-INDEX.NAMESPACE.svc:PORT, with PORT from the
    `tfjob-port` port of the `tensorflow` container, and adds
    `"environment": "cloud"`.
    """
    tfjob = manifests["tfjob.yaml"]
    name = tfjob["metadata"]["name"]
    namespace = tfjob["metadata"]["namespace"]
    cluster = {}
    for kind, replica in tfjob["spec"]["tfReplicaSpecs"].items():
        (tensorflow,) = [c for c in replica["template"]["spec"]["containers"] if c["name"] == names.CONTAINER_NAME]
        (port,) = [p["containerPort"] for p in tensorflow["ports"] if p["name"] == names.PORT_NAME]
        job = kind.lower()
        cluster[job] = [f"{name}-{job}-{i}.{namespace}.svc:{port}" for i in range(replica["replicas"])]
    task = {"type": replica_type.lower(), "index": index}
    return json.dumps({"cluster": cluster, "task": task, "environment": "cloud"})


@pytest.mark.parametrize("replica_type, index", [("Chief", 0), ("PS", 1), ("Worker", 3)])
def test_kit_parses_operator_tf_config(replica_type, index):
    manifests = render_example()

    config = parse_tf_config(operator_tf_config(manifests, replica_type, index))

    assert config.task.job == replica_type.lower()
    assert config.task.index == index
    assert config.cluster.num_workers() == 4
    assert config.cluster.num_ps() == 2
    assert config.cluster.jobs["ps"][1] == "ctr-k8s-ps-1.training.svc:2222"


def test_longest_allowed_name_still_parses():
    longest = "j" * names.max_job_name_length(4)
    manifests = render_example(name=longest)

    config = parse_tf_config(operator_tf_config(manifests, "Worker", 3))

    assert config.cluster.jobs["worker"][3].startswith(f"{longest}-worker-3.")
    assert len(f"{longest}-worker-3") == names.LABEL_MAX


# ------------------------------------------------ wiring between objects


def test_network_policy_selects_every_pod():
    manifests = render_example()
    policy = manifests["networkpolicy.yaml"]["spec"]
    selector = policy["podSelector"]["matchLabels"]

    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert rule["ports"] == [{"port": 2222, "protocol": "TCP"}]
    for replica_type in ("Chief", "PS", "Worker"):
        labels = replica_spec(manifests, replica_type)["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), replica_type
        assert container(manifests, replica_type)["ports"][0]["containerPort"] == rule["ports"][0]["port"]


def test_network_policy_uses_spec_port():
    manifests = render_example(kubernetes={"namespace": "training", "port": 3000})

    (rule,) = manifests["networkpolicy.yaml"]["spec"]["ingress"]
    assert rule["ports"][0]["port"] == 3000
    assert container(manifests, "Worker")["ports"][0]["containerPort"] == 3000


def test_rbac_grants_chief_its_lease():
    manifests = render_example()
    chief = pod_spec(manifests, "Chief")
    env = {variable["name"]: variable for variable in container(manifests, "Chief")["env"]}
    lease = env[LEASE_NAME_ENV]["value"]
    rules = manifests["role.yaml"]["rules"]
    binding = manifests["rolebinding.yaml"]

    assert lease == "ctr-k8s-leader"
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]} in rules
    assert {"apiGroups": ["coordination.k8s.io"], "resourceNames": [lease], "resources": ["leases"],
            "verbs": ["get", "update"]} in rules
    assert binding["roleRef"]["name"] == manifests["role.yaml"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": chief["serviceAccountName"],
                                    "namespace": "training"}]
    assert manifests["serviceaccount.yaml"]["metadata"]["name"] == chief["serviceAccountName"]


def test_servers_get_no_api_token():
    manifests = render_example()

    assert "automountServiceAccountToken" not in pod_spec(manifests, "Chief")
    assert pod_spec(manifests, "PS")["automountServiceAccountToken"] is False
    assert pod_spec(manifests, "Worker")["automountServiceAccountToken"] is False


def test_chief_runs_coordinator_with_spec():
    manifests = render_example()
    chief = container(manifests, "Chief")
    mounts = {mount["name"]: mount for mount in chief["volumeMounts"]}

    assert chief["name"] == "tensorflow"
    assert chief["command"] == ["tfps-ha", "task", "--spec", "/etc/tfps-ha/spec.yaml",
                                "--workdir", "/var/lib/tfps-ha/ctr-k8s"]
    assert mounts["spec"]["mountPath"] == "/etc/tfps-ha"
    assert manifests["configmap.yaml"]["data"]["spec.yaml"] == EXAMPLE.read_text(encoding="utf-8")
    assert container(manifests, "Worker")["command"] == ["tfps-ha", "task"]


def test_workdir_shared_by_chief_and_ps():
    manifests = render_example()
    claim = manifests["persistentvolumeclaim.yaml"]

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    for replica_type in ("Chief", "PS"):
        volumes = {volume["name"]: volume for volume in pod_spec(manifests, replica_type)["volumes"]}
        mounts = {mount["name"]: mount for mount in container(manifests, replica_type)["volumeMounts"]}
        assert volumes["workdir"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert mounts["workdir"]["mountPath"] == "/var/lib/tfps-ha/ctr-k8s"
    assert "volumes" not in pod_spec(manifests, "Worker")


def test_existing_claim_is_not_rendered():
    manifests = render_example(kubernetes={"namespace": "training", "workdir_claim": "team-nfs"})

    assert "persistentvolumeclaim.yaml" not in manifests
    volumes = {volume["name"]: volume for volume in pod_spec(manifests, "PS")["volumes"]}
    assert volumes["workdir"]["persistentVolumeClaim"]["claimName"] == "team-nfs"


def test_resources_come_from_spec():
    manifests = render_example()

    assert container(manifests, "PS")["resources"] == {"limits": {"memory": "8Gi"},
                                                       "requests": {"cpu": "2", "memory": "8Gi"}}
    assert container(manifests, "Worker")["resources"]["requests"]["cpu"] == "4"


def test_no_resources_without_settings():
    manifests = render_example(kubernetes={"namespace": "training"})

    assert "resources" not in container(manifests, "Worker")


def test_grace_covers_checkpoint_drain():
    manifests = render_example(monitoring={"preemption_grace_seconds": 42.5})

    assert pod_spec(manifests, "Chief")["terminationGracePeriodSeconds"] > 43
    for replica_type in ("PS", "Worker"):
        hook = container(manifests, replica_type)["lifecycle"]["preStop"]["exec"]["command"]
        assert hook == ["sleep", "43"]
        assert pod_spec(manifests, replica_type)["terminationGracePeriodSeconds"] > 43


def test_namespace_override():
    spec = load_spec(str(EXAMPLE))

    manifests = render_manifests(spec, EXAMPLE.read_text(encoding="utf-8"), IMAGE, namespace="other")

    for name, manifest in manifests.items():
        assert manifest["metadata"]["namespace"] == "other", name
    assert manifests["rolebinding.yaml"]["subjects"][0]["namespace"] == "other"


# ------------------------------------------------------------- warnings


def test_evaluator_left_out_with_warning():
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["cluster"]["evaluator"] = 1
    spec = parse_spec(yaml.safe_dump(document), source="x.yaml")

    manifests = render_manifests(spec, "", IMAGE)

    assert sorted(manifests["tfjob.yaml"]["spec"]["tfReplicaSpecs"]) == ["Chief", "PS", "Worker"]
    assert any("evaluator is left out" in warning for warning in render_warnings(spec))


def test_example_renders_without_warnings():
    assert render_warnings(load_spec(str(EXAMPLE))) == []


def test_short_startup_timeout_warns():
    spec = parse_spec(EXAMPLE.read_text(encoding="utf-8").replace("startup_timeout_seconds: 600",
                                                                  "startup_timeout_seconds: 60"))

    (warning,) = render_warnings(spec)
    assert "STARTUP_TIMEOUT" in warning


def test_listed_addresses_warn():
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["cluster"]["ps"] = ["10.0.0.1:2222", "10.0.0.2:2222"]
    spec = parse_spec(yaml.safe_dump(document))

    (warning,) = render_warnings(spec)
    assert warning.startswith("The addresses listed for ps are ignored")
    assert render_manifests(spec, "", IMAGE)["tfjob.yaml"]["spec"]["tfReplicaSpecs"]["PS"]["replicas"] == 2


# --------------------------------------------------------------- errors


@pytest.mark.parametrize("image", ["", " example/trainer:1", "example/trainer 1"])
def test_invalid_image_raises(image):
    spec = load_spec(str(EXAMPLE))

    with pytest.raises(UsageError, match="--image: received"):
        render_manifests(spec, "", image)


@pytest.mark.parametrize("name", ["Ctr", "1ctr", "ctr_k8s", "c" * (names.max_job_name_length(4) + 1)])
def test_invalid_job_name_raises(name):
    with pytest.raises(UsageError) as raised:
        render_example(name=name)

    assert str(raised.value).startswith(f"k8s_example.yaml: name: received {name!r}; expected a TFJob name")


def test_relative_workdir_raises():
    with pytest.raises(UsageError, match="workdir: received 'runs/ctr'; expected an absolute path"):
        render_example(workdir="runs/ctr")


@pytest.mark.parametrize("workdir", ["/etc/tfps-ha", "/etc/tfps-ha/run", "/etc", "/"])
def test_workdir_over_spec_mount_raises(workdir):
    with pytest.raises(UsageError, match="expected a path apart from /etc/tfps-ha"):
        render_example(workdir=workdir)


def test_invalid_namespace_raises():
    spec = load_spec(str(EXAMPLE))

    with pytest.raises(UsageError, match="namespace: received 'Team_A'"):
        render_manifests(spec, "", IMAGE, namespace="Team_A")


def test_render_leaves_spec_unchanged():
    spec = load_spec(str(EXAMPLE))
    before = copy.deepcopy(spec)

    render_manifests(spec, "", IMAGE)

    assert spec == before


# ------------------------------------------------------------------ CLI


def test_cli_writes_manifests(run_cli, tmp_path):
    out = tmp_path / "manifests"

    result = run_cli("render-k8s", "cluster_specs/k8s_example.yaml", "--image", IMAGE, "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in GOLDEN.glob("*.yaml"))
    assert result.stdout.splitlines()[-1] == str(out / "tfjob.yaml")


def test_cli_bad_namespace_exits_usage(run_cli, tmp_path):
    result = run_cli("render-k8s", "cluster_specs/k8s_example.yaml", "--image", IMAGE,
                     "--namespace", "Team_A", "--out", str(tmp_path))

    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip().splitlines() == [
        "tfps-ha: error: namespace: received 'Team_A'; expected up to 63 lowercase letters, digits and '-', "
        "starting and ending alphanumeric"]


def test_cli_requires_image(run_cli, tmp_path):
    result = run_cli("render-k8s", "cluster_specs/k8s_example.yaml", "--out", str(tmp_path))

    assert result.returncode == ExitCode.USAGE
    assert "the following arguments are required: --image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
