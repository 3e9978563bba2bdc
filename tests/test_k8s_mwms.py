"""Tests of `tfps-ha render-k8s` for a multi_worker_mirrored spec: a TFJob of Worker replicas and an optional Chief.

The golden files in tests/golden/k8s_mwms_example/ are the manifests of
cluster_specs/k8s_mwms_example.yaml (4 workers, no chief). After an intended
change, rewrite them with `TFPS_HA_UPDATE_GOLDEN=1 pytest tests/test_k8s_mwms.py`
and review the diff.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from test_k8s_render import IMAGE, assert_matches_golden, container, operator_tf_config, pod_spec, replica_spec
from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode, is_retryable
from tfps_ha.k8s import names
from tfps_ha.k8s.render import MANIFEST_FILES, render_manifests, render_warnings, write_manifests
from tfps_ha.k8s.tfjob import EXIT_CODE_RETRYABLE_FROM
from tfps_ha.mwms.config import mirrored_chief, parse_mirrored_tf_config
from tfps_ha.spec import MULTI_WORKER_MIRRORED, TaskId, load_spec, parse_spec

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "cluster_specs" / "k8s_mwms_example.yaml"
PSS_EXAMPLE = REPO / "cluster_specs" / "k8s_example.yaml"
GOLDEN = REPO / "tests" / "golden" / "k8s_mwms_example"
WORKDIR = "/var/lib/tfps-ha/digits-mwms-k8s"
TASK_COMMAND = ["tfps-ha", "task", "--spec", "/etc/tfps-ha/spec.yaml", "--workdir", WORKDIR]


def example_document() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def render_document(document: dict) -> dict[str, dict]:
    text = yaml.safe_dump(document, sort_keys=False)
    return render_manifests(parse_spec(text, source="k8s_mwms_example.yaml"), text, IMAGE)


def render_example(**changes) -> dict[str, dict]:
    """Renders k8s_mwms_example.yaml, with top-level spec keys replaced by `changes`."""
    if not changes:
        text = EXAMPLE.read_text(encoding="utf-8")
        return render_manifests(parse_spec(text, source="k8s_mwms_example.yaml"), text, IMAGE)
    document = example_document()
    document.update(changes)
    return render_document(document)


def render_with_chief() -> dict[str, dict]:
    document = example_document()
    document["cluster"] = {"chief": 1, "worker": 3}
    document["kubernetes"]["resources"]["chief"] = {"requests": {"cpu": "3"}}
    return render_document(document)


def warnings_for(document: dict) -> list[str]:
    return render_warnings(parse_spec(yaml.safe_dump(document, sort_keys=False), source="x.yaml"))


def replica_types(manifests: dict) -> list[str]:
    return list(manifests["tfjob.yaml"]["spec"]["tfReplicaSpecs"])


# ------------------------------------------------------------------ golden


def test_golden_manifests():
    assert_matches_golden(render_example(), "k8s_mwms_example.yaml", GOLDEN)


def test_example_is_mirrored():
    spec = load_spec(str(EXAMPLE))

    assert spec.strategy == MULTI_WORKER_MIRRORED
    assert spec.task_count("worker") == 4
    assert spec.task_count("chief") == 0


def test_manifest_files_cover_render():
    assert set(render_example()) <= set(MANIFEST_FILES)
    assert set(render_with_chief()) <= set(MANIFEST_FILES)


# ------------------------------------------------------------ replicas


def test_worker_only_tfjob():
    manifests = render_example()

    assert replica_types(manifests) == ["Worker"]
    assert replica_spec(manifests, "Worker")["replicas"] == 4


def test_chief_rendered_when_spec_has_one():
    manifests = render_with_chief()

    assert replica_types(manifests) == ["Chief", "Worker"]
    assert replica_spec(manifests, "Chief")["replicas"] == 1
    assert replica_spec(manifests, "Worker")["replicas"] == 3


def test_chief_pod_matches_worker_pod():
    manifests = render_with_chief()
    chief = pod_spec(manifests, "Chief")
    worker = pod_spec(manifests, "Worker")

    assert container(manifests, "Chief")["command"] == container(manifests, "Worker")["command"]
    assert chief["volumes"] == worker["volumes"]
    assert container(manifests, "Chief")["volumeMounts"] == container(manifests, "Worker")["volumeMounts"]
    assert container(manifests, "Chief")["resources"] == {"requests": {"cpu": "3"}}
    assert replica_spec(manifests, "Chief")["template"]["metadata"]["labels"][names.COMPONENT_LABEL] == "chief"
    assert replica_spec(manifests, "Worker")["template"]["metadata"]["labels"][names.COMPONENT_LABEL] == "worker"


def test_no_zero_replica_entries():
    for manifests in (render_example(), render_with_chief()):
        for replica_type, replica in manifests["tfjob.yaml"]["spec"]["tfReplicaSpecs"].items():
            assert replica["replicas"] >= 1, replica_type
        assert "PS" not in replica_types(manifests)


def test_two_task_group_renders():
    manifests = render_example(cluster={"chief": 1, "worker": 1})

    assert replica_types(manifests) == ["Chief", "Worker"]


def test_single_task_raises():
    with pytest.raises(UsageError) as raised:
        render_example(cluster={"worker": 1})

    message = str(raised.value)
    assert message.startswith("k8s_mwms_example.yaml: cluster.worker: received 1; expected at least 2")
    assert "sets no TF_CONFIG in a job of one replica" in message


# ------------------------------------------------------- restart policies


def test_restart_policy_exit_code_everywhere():
    for manifests in (render_example(), render_with_chief()):
        for replica_type, replica in manifests["tfjob.yaml"]["spec"]["tfReplicaSpecs"].items():
            assert replica["restartPolicy"] == "ExitCode", replica_type


# The MWMS worker's exits (tfps_ha.mwms.worker), and 137 and 143, which a
# shell reports for SIGKILL (an OOM kill) and SIGTERM.
@pytest.mark.parametrize("code", [ExitCode.CLUSTER_UNAVAILABLE, ExitCode.PREEMPTED, 137, 143])
def test_retryable_worker_exits_restart(code):
    assert code >= EXIT_CODE_RETRYABLE_FROM
    assert is_retryable(code)


@pytest.mark.parametrize("code", [ExitCode.FAILED, ExitCode.USAGE])
def test_permanent_worker_exits_fail_job(code):
    assert 0 < code < EXIT_CODE_RETRYABLE_FROM
    assert not is_retryable(code)


def test_run_policy_without_backoff_limit():
    manifests = render_example()

    assert manifests["tfjob.yaml"]["spec"]["runPolicy"] == {"cleanPodPolicy": "Running"}


# ------------------------------------------------------------ TF_CONFIG


@pytest.mark.parametrize("index", range(4))
def test_workers_parse_operator_tf_config(index):
    manifests = render_example()

    config = parse_mirrored_tf_config(operator_tf_config(manifests, "Worker", index))

    assert config.task == TaskId("worker", index)
    assert sorted(config.cluster.jobs) == ["worker"]
    assert config.cluster.jobs["worker"][index] == f"digits-mwms-k8s-worker-{index}.training.svc:2222"
    assert len(config.cluster.jobs["worker"]) == 4
    assert mirrored_chief(config.cluster) == TaskId("worker", 0)


@pytest.mark.parametrize("replica_type, index", [("Chief", 0), ("Worker", 2)])
def test_chief_group_parses_tf_config(replica_type, index):
    manifests = render_with_chief()

    config = parse_mirrored_tf_config(operator_tf_config(manifests, replica_type, index))

    assert config.task == TaskId(replica_type.lower(), index)
    assert config.cluster.jobs["chief"] == ("digits-mwms-k8s-chief-0.training.svc:2222",)
    assert len(config.cluster.jobs["worker"]) == 3
    assert mirrored_chief(config.cluster) == TaskId("chief", 0)


def test_pods_read_mirrored_spec():
    manifests = render_example()

    text = manifests["configmap.yaml"]["data"]["spec.yaml"]

    assert text == EXAMPLE.read_text(encoding="utf-8")
    assert parse_spec(text).strategy == MULTI_WORKER_MIRRORED


# ------------------------------------------------ wiring between objects


@pytest.mark.parametrize("render", [render_example, render_with_chief])
def test_pods_mount_spec_and_workdir(render):
    manifests = render()
    claim = manifests["persistentvolumeclaim.yaml"]["metadata"]["name"]
    config_map = manifests["configmap.yaml"]["metadata"]["name"]

    for replica_type in replica_types(manifests):
        tensorflow = container(manifests, replica_type)
        mounts = {mount["name"]: mount for mount in tensorflow["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod_spec(manifests, replica_type)["volumes"]}
        assert tensorflow["name"] == names.CONTAINER_NAME, replica_type
        assert tensorflow["command"] == TASK_COMMAND, replica_type
        assert mounts["spec"] == {"mountPath": "/etc/tfps-ha", "name": "spec", "readOnly": True}, replica_type
        assert mounts["workdir"] == {"mountPath": WORKDIR, "name": "workdir"}, replica_type
        assert volumes["spec"]["configMap"]["name"] == config_map, replica_type
        assert volumes["workdir"]["persistentVolumeClaim"]["claimName"] == claim, replica_type


def test_workdir_claim_is_read_write_many():
    claim = render_example()["persistentvolumeclaim.yaml"]

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_existing_claim_is_not_rendered():
    document = example_document()
    document["kubernetes"]["workdir_claim"] = "team-nfs"

    manifests = render_document(document)

    assert "persistentvolumeclaim.yaml" not in manifests
    volumes = {volume["name"]: volume for volume in pod_spec(manifests, "Worker")["volumes"]}
    assert volumes["workdir"]["persistentVolumeClaim"]["claimName"] == "team-nfs"


@pytest.mark.parametrize("render", [render_example, render_with_chief])
def test_pods_get_no_api_access(render):
    manifests = render()

    for replica_type in replica_types(manifests):
        pod = pod_spec(manifests, replica_type)
        assert pod["automountServiceAccountToken"] is False, replica_type
        assert "serviceAccountName" not in pod, replica_type
        assert "env" not in container(manifests, replica_type), replica_type


def test_no_rbac_objects():
    manifests = render_with_chief()

    assert sorted(manifests) == ["configmap.yaml", "networkpolicy.yaml", "persistentvolumeclaim.yaml", "tfjob.yaml"]


@pytest.mark.parametrize("render", [render_example, render_with_chief])
def test_network_policy_selects_every_pod(render):
    manifests = render()
    policy = manifests["networkpolicy.yaml"]["spec"]
    selector = policy["podSelector"]["matchLabels"]

    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert rule["ports"] == [{"port": 2222, "protocol": "TCP"}]
    for replica_type in replica_types(manifests):
        labels = replica_spec(manifests, replica_type)["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), replica_type
        assert container(manifests, replica_type)["ports"] == [
            {"containerPort": 2222, "name": names.PORT_NAME, "protocol": "TCP"}], replica_type


def test_network_policy_uses_spec_port():
    document = example_document()
    document["kubernetes"]["port"] = 3000

    manifests = render_document(document)

    (rule,) = manifests["networkpolicy.yaml"]["spec"]["ingress"]
    assert rule["ports"][0]["port"] == 3000
    assert container(manifests, "Worker")["ports"][0]["containerPort"] == 3000


def test_grace_covers_backup_without_prestop_hook():
    manifests = render_example(monitoring={"preemption_grace_seconds": 42.5})

    assert pod_spec(manifests, "Worker")["terminationGracePeriodSeconds"] > 43
    assert "lifecycle" not in container(manifests, "Worker")


def test_namespace_override():
    spec = load_spec(str(EXAMPLE))

    manifests = render_manifests(spec, EXAMPLE.read_text(encoding="utf-8"), IMAGE, namespace="other")

    for name, manifest in manifests.items():
        assert manifest["metadata"]["namespace"] == "other", name


# ------------------------------------------------------------- warnings


def test_example_renders_without_warnings():
    assert render_warnings(load_spec(str(EXAMPLE))) == []


def test_short_startup_timeout_does_not_warn():
    document = example_document()
    document["startup_timeout_seconds"] = 30

    assert warnings_for(document) == []


def test_unused_resources_warn():
    document = example_document()
    document["kubernetes"]["resources"]["ps"] = {"requests": {"cpu": "1"}}
    document["kubernetes"]["resources"]["chief"] = {"requests": {"cpu": "1"}}

    (warning,) = warnings_for(document)

    assert warning.startswith("kubernetes.resources has settings for chief, ps, but the cluster has no such tasks")


def test_evaluator_left_out_with_warning():
    document = example_document()
    document["cluster"]["evaluator"] = 1
    text = yaml.safe_dump(document)

    manifests = render_manifests(parse_spec(text), text, IMAGE)

    assert replica_types(manifests) == ["Worker"]
    (warning,) = warnings_for(document)
    assert "every worker still calls the trainer's evaluate()" in warning


def test_retried_permanent_exit_code_warns():
    document = example_document()
    document["restart"] = {"worker": {"permanent_exit_codes": [1, 2, 200]}}

    (warning,) = warnings_for(document)

    assert warning.startswith("restart.worker.permanent_exit_codes lists [200]")
    assert "restarts the chief and worker pods" in warning


# ------------------------------------------------------------ files, CLI


def test_rerender_over_pss_removes_rbac(tmp_path):
    out = tmp_path / "out"
    pss = load_spec(str(PSS_EXAMPLE))
    write_manifests(render_manifests(pss, "", IMAGE), str(out), pss.source)
    spec = load_spec(str(EXAMPLE))

    write_manifests(render_manifests(spec, EXAMPLE.read_text(encoding="utf-8"), IMAGE), str(out), spec.source)

    assert sorted(path.name for path in out.glob("*.yaml")) == sorted(path.name for path in GOLDEN.glob("*.yaml"))


def test_cli_writes_manifests(run_cli, tmp_path):
    out = tmp_path / "manifests"

    result = run_cli("render-k8s", "cluster_specs/k8s_mwms_example.yaml", "--image", IMAGE, "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    for golden in GOLDEN.glob("*.yaml"):
        assert (out / golden.name).read_text(encoding="utf-8") == golden.read_text(encoding="utf-8"), golden.name
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in GOLDEN.glob("*.yaml"))
