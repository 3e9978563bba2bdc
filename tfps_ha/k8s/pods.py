"""Pod templates of the TFJob's Chief, PS and Worker replicas.

Every replica runs `tfps-ha task` in a container named `tensorflow`, the one
into which the TFJob operator injects TF_CONFIG. Under ParameterServerStrategy
what differs per job is:

* chief: the coordinator. It runs under the job's ServiceAccount (for its
  Lease), reads the spec from a ConfigMap and writes the workdir volume.
* ps: mounts the workdir volume too, because TensorFlow 2.21 writes each
  checkpoint shard on the task that stores the variables and merges the shards
  there (`MultiDeviceSaver` in tensorflow/python/checkpoint/functional_saver.py).
  The coordinator restores the files from its own filesystem, so both must see
  the same files at the same path.
* worker: needs no volume and no API access.

PS and worker containers wait `preemption_grace_seconds` in a preStop hook
before they get SIGTERM. When a node drain or a job deletion stops the whole
job at once, the coordinator then still reaches them while it drains its
scheduled steps and saves its last checkpoint.

Under MultiWorkerMirroredStrategy every chief and worker pod is alike
(`mirrored_template`): it trains, so it reads the spec from the ConfigMap, and
it restores the MWMS chief's backup from the workdir volume. It needs no API
access and no preStop hook, because on SIGTERM every worker of the group saves
the same backup at the same step, and none of them has to outlive the others.
"""

from __future__ import annotations

import math

from kubernetes import client

from tfps_ha.k8s import names
from tfps_ha.lease.kubernetes import LEASE_NAME_ENV, LEASE_NAMESPACE_ENV, POD_NAME_ENV, POD_UID_ENV
from tfps_ha.spec import ClusterSpec

SPEC_MOUNT = "/etc/tfps-ha"
SPEC_FILE = "spec.yaml"
# Seconds the kubelet waits, after the grace the kit itself needs, before SIGKILL.
GRACE_MARGIN_SECONDS = 15

_SPEC_VOLUME = "spec"
_WORKDIR_VOLUME = "workdir"


def chief_template(spec: ClusterSpec, image: str) -> client.V1PodTemplateSpec:
    """Returns the coordinator's pod template."""
    grace = math.ceil(spec.monitoring.preemption_grace_seconds)
    container = _container(spec, "chief", image, _task_command(spec))
    container.env = [
        client.V1EnvVar(name=LEASE_NAME_ENV, value=names.lease_name(spec.name)),
        _field_env(LEASE_NAMESPACE_ENV, "metadata.namespace"),
        _field_env(POD_NAME_ENV, "metadata.name"),
        _field_env(POD_UID_ENV, "metadata.uid"),
    ]
    container.volume_mounts = _spec_and_workdir_mounts(spec)
    pod = client.V1PodSpec(
        service_account_name=names.service_account_name(spec.name),
        termination_grace_period_seconds=grace + GRACE_MARGIN_SECONDS,
        containers=[container],
        volumes=[_spec_volume(spec), _workdir_volume(spec)],
    )
    return client.V1PodTemplateSpec(metadata=_metadata(spec, "chief"), spec=pod)


def ps_template(spec: ClusterSpec, image: str) -> client.V1PodTemplateSpec:
    """Returns the template of the PS pods, which serve variables and write checkpoint shards."""
    container = _server_container(spec, "ps", image)
    container.volume_mounts = [client.V1VolumeMount(name=_WORKDIR_VOLUME, mount_path=spec.workdir)]
    pod = _server_pod(spec, container)
    pod.volumes = [_workdir_volume(spec)]
    return client.V1PodTemplateSpec(metadata=_metadata(spec, "ps"), spec=pod)


def worker_template(spec: ClusterSpec, image: str) -> client.V1PodTemplateSpec:
    """Returns the template of the worker pods, which run the steps the coordinator schedules."""
    container = _server_container(spec, "worker", image)
    return client.V1PodTemplateSpec(metadata=_metadata(spec, "worker"), spec=_server_pod(spec, container))


def mirrored_template(spec: ClusterSpec, job: str, image: str) -> client.V1PodTemplateSpec:
    """Returns the template of the pods of the MWMS `job` (chief or worker), which all train.

    The command is the same for both jobs: `tfps-ha task` reads the strategy
    from the spec and the task from the TF_CONFIG that the operator injects.
    """
    grace = math.ceil(spec.monitoring.preemption_grace_seconds)
    container = _container(spec, job, image, _task_command(spec))
    container.volume_mounts = _spec_and_workdir_mounts(spec)
    pod = client.V1PodSpec(
        automount_service_account_token=False,
        termination_grace_period_seconds=grace + GRACE_MARGIN_SECONDS,
        containers=[container],
        volumes=[_spec_volume(spec), _workdir_volume(spec)],
    )
    return client.V1PodTemplateSpec(metadata=_metadata(spec, job), spec=pod)


def _task_command(spec: ClusterSpec) -> list[str]:
    return ["tfps-ha", "task", "--spec", f"{SPEC_MOUNT}/{SPEC_FILE}", "--workdir", spec.workdir]


def _spec_and_workdir_mounts(spec: ClusterSpec) -> list[client.V1VolumeMount]:
    return [
        client.V1VolumeMount(name=_SPEC_VOLUME, mount_path=SPEC_MOUNT, read_only=True),
        client.V1VolumeMount(name=_WORKDIR_VOLUME, mount_path=spec.workdir),
    ]


def _server_container(spec: ClusterSpec, job: str, image: str) -> client.V1Container:
    grace = math.ceil(spec.monitoring.preemption_grace_seconds)
    container = _container(spec, job, image, ["tfps-ha", "task"])
    # NOTE: the hook runs `sleep` from the image, which Debian- and Ubuntu-based
    # TensorFlow images have. Kubernetes 1.30+ also offers `preStop.sleep`,
    # which needs no binary; it is not used so that older clusters accept the pod.
    container.lifecycle = client.V1Lifecycle(
        pre_stop=client.V1LifecycleHandler(_exec=client.V1ExecAction(command=["sleep", str(grace)])))
    return container


def _server_pod(spec: ClusterSpec, container: client.V1Container) -> client.V1PodSpec:
    grace = math.ceil(spec.monitoring.preemption_grace_seconds)
    return client.V1PodSpec(
        automount_service_account_token=False,
        termination_grace_period_seconds=grace + GRACE_MARGIN_SECONDS,
        containers=[container],
    )


def _container(spec: ClusterSpec, job: str, image: str, command: list[str]) -> client.V1Container:
    settings = spec.kubernetes
    container = client.V1Container(
        name=names.CONTAINER_NAME,
        image=image,
        image_pull_policy=settings.image_pull_policy,
        command=command,
        ports=[client.V1ContainerPort(name=names.PORT_NAME, container_port=settings.port, protocol="TCP")],
    )
    resources = settings.resources.get(job)
    if resources is not None and (resources.requests or resources.limits):
        container.resources = client.V1ResourceRequirements(
            requests=dict(resources.requests) or None, limits=dict(resources.limits) or None)
    return container


def _metadata(spec: ClusterSpec, job: str) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(labels=names.object_labels(spec.name, job))


def _field_env(name: str, field_path: str) -> client.V1EnvVar:
    return client.V1EnvVar(
        name=name, value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=field_path)))


def _spec_volume(spec: ClusterSpec) -> client.V1Volume:
    return client.V1Volume(name=_SPEC_VOLUME, config_map=client.V1ConfigMapVolumeSource(
        name=names.spec_config_map_name(spec.name)))


def _workdir_volume(spec: ClusterSpec) -> client.V1Volume:
    claim = spec.kubernetes.workdir_claim or names.workdir_claim_name(spec.name)
    return client.V1Volume(
        name=_WORKDIR_VOLUME,
        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim))
