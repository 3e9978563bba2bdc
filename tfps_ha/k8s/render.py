"""`tfps-ha render-k8s`: the Kubernetes objects of one cluster spec, written as YAML files.

One file per object kind, named after it, so that `kubectl apply -f DIR`
creates the ConfigMap, claim, ServiceAccount and RBAC objects before the TFJob
that uses them (kubectl reads a folder in file-name order).
"""

from __future__ import annotations

import logging
import os
import tempfile

import yaml
from kubernetes import client

from tfps_ha.errors import UsageError
from tfps_ha.k8s import access, names, pods, storage
from tfps_ha.k8s.tfjob import (
    EXIT_CODE_RETRYABLE_FROM,
    MIRRORED_RESTART_POLICIES,
    RESTART_POLICIES,
    ReplicaSpec,
    RunPolicy,
    TFJob,
)
from tfps_ha.spec import MULTI_WORKER_MIRRORED, ClusterSpec

logger = logging.getLogger(__name__)

# Image pulls and scheduling of a large job can take minutes, and the TFJob
# operator starts the pods in no particular order.
MIN_STARTUP_TIMEOUT_SECONDS = 300
# Every file name the renderer can write. A later render removes those it no
# longer writes, such as the claim once `workdir_claim` is set.
MANIFEST_FILES = ("configmap.yaml", "networkpolicy.yaml", "persistentvolumeclaim.yaml", "role.yaml",
                  "rolebinding.yaml", "serviceaccount.yaml", "tfjob.yaml")
_HEADER_PREFIX = "# Rendered by 'tfps-ha render-k8s' from "


def render_manifests(spec: ClusterSpec, spec_text: str, image: str,
                     namespace: str | None = None) -> dict[str, dict]:
    """Builds every object of the job.

    Args:
      spec: The validated cluster spec.
      spec_text: The spec file as written, stored in the ConfigMap that the
        tasks read.
      image: The container image of every task; it must contain the kit.
      namespace: Overrides `kubernetes.namespace` of the spec.

    Returns:
      File name to the object, as the API server reads it (camelCase keys).

    Raises:
      UsageError: The image, the namespace or a spec value cannot be used on Kubernetes.
    """
    namespace = namespace or spec.kubernetes.namespace
    check_renderable(spec, spec_text, image, namespace)

    job = spec.name
    mirrored = spec.strategy == MULTI_WORKER_MIRRORED
    if mirrored:
        # The tfjob module docstring explains why an MWMS job has no backoffLimit.
        replica_specs = _mirrored_replicas(spec, image)
        run_policy = RunPolicy(clean_pod_policy="Running", backoff_limit=None)
    else:
        replica_specs = _parameter_server_replicas(spec, image)
        backoff_limit = spec.restart["ps"].max_restarts_per_job + spec.restart["worker"].max_restarts_per_job
        run_policy = RunPolicy(clean_pod_policy="Running", backoff_limit=backoff_limit)
    tfjob = TFJob(
        metadata=client.V1ObjectMeta(name=job, namespace=namespace, labels=names.object_labels(job)),
        replica_specs=replica_specs,
        run_policy=run_policy,
    )

    api_client = client.ApiClient()
    try:
        serialize = api_client.sanitize_for_serialization
        manifests = {
            "configmap.yaml": serialize(storage.spec_config_map(spec, spec_text, namespace)),
            "networkpolicy.yaml": serialize(access.network_policy(job, namespace, spec.kubernetes.port)),
            "tfjob.yaml": tfjob.to_dict(api_client),
        }
        if not mirrored:
            # Only the PSS coordinator holds a Lease. The MWMS chief is fixed by
            # TF_CONFIG, so MWMS pods elect no leader and call no API.
            manifests["role.yaml"] = serialize(access.lease_role(job, namespace))
            manifests["rolebinding.yaml"] = serialize(access.lease_role_binding(job, namespace))
            manifests["serviceaccount.yaml"] = serialize(access.service_account(job, namespace))
        if spec.kubernetes.workdir_claim is None:
            manifests["persistentvolumeclaim.yaml"] = serialize(storage.workdir_claim(spec, namespace))
    finally:
        api_client.close()
    return dict(sorted(manifests.items()))


def _parameter_server_replicas(spec: ClusterSpec, image: str) -> dict[str, ReplicaSpec]:
    templates = {
        "chief": pods.chief_template(spec, image),
        "ps": pods.ps_template(spec, image),
        "worker": pods.worker_template(spec, image),
    }
    return {
        task_job: ReplicaSpec(replicas=spec.task_count(task_job), restart_policy=RESTART_POLICIES[task_job],
                              template=template)
        for task_job, template in templates.items()
    }


def _mirrored_replicas(spec: ClusterSpec, image: str) -> dict[str, ReplicaSpec]:
    """Returns the Worker replicas, and the Chief when the spec has one, all training under MWMS."""
    return {
        task_job: ReplicaSpec(replicas=spec.task_count(task_job),
                              restart_policy=MIRRORED_RESTART_POLICIES[task_job],
                              template=pods.mirrored_template(spec, task_job, image))
        for task_job in ("chief", "worker")
        if spec.task_count(task_job)
    }


def check_renderable(spec: ClusterSpec, spec_text: str, image: str, namespace: str) -> None:
    """Raises UsageError for a value that the spec parser accepts but Kubernetes does not."""
    if spec.strategy == MULTI_WORKER_MIRRORED and spec.task_count("chief") + spec.task_count("worker") < 2:
        # The operator injects TF_CONFIG only into a job of two or more
        # replicas (isDistributed in training-operator v1.9.0), and the MWMS
        # worker exits USAGE without one.
        raise UsageError(
            f"{spec.source}: cluster.worker: received {spec.task_count('worker')}; expected at least 2 chief "
            "and worker tasks in a multi_worker_mirrored TFJob, because the training operator sets no "
            "TF_CONFIG in a job of one replica; add a worker, or train on one machine with 'tfps-ha launch'")
    if not image or image != image.strip() or any(character.isspace() for character in image):
        raise UsageError(f"--image: received {image!r}; expected a container image reference "
                         "with the kit installed, such as example/trainer:1")
    if not names.is_dns1123_label(namespace):
        raise UsageError(f"namespace: received {namespace!r}; expected up to 63 lowercase letters, digits "
                         "and '-', starting and ending alphanumeric")

    longest = names.max_job_name_length(max(spec.task_count(job) for job in ("chief", "ps", "worker")))
    if len(spec.name) > longest or not names.DNS1035_LABEL_RE.fullmatch(spec.name):
        raise UsageError(
            f"{spec.source}: name: received {spec.name!r}; expected a TFJob name for Kubernetes: lowercase "
            f"letters, digits and '-', starting with a letter, at most {longest} characters so that pod "
            f"names of the form NAME-TYPE-INDEX fit in {names.LABEL_MAX}; set 'name' in the spec")
    if not os.path.isabs(spec.workdir):
        raise UsageError(f"{spec.source}: workdir: received {spec.workdir!r}; expected an absolute path "
                         "inside the containers, where the workdir volume is mounted")
    mount = os.path.normpath(spec.workdir)
    if os.path.commonpath([mount, pods.SPEC_MOUNT]) in (mount, pods.SPEC_MOUNT):  # One contains the other.
        raise UsageError(f"{spec.source}: workdir: received {spec.workdir!r}; expected a path apart from "
                         f"{pods.SPEC_MOUNT}, where the pods mount the spec")
    size = len(spec_text.encode("utf-8"))
    if size > storage.CONFIG_MAP_MAX_BYTES:
        raise UsageError(f"{spec.source}: the spec file has {size} bytes; expected at most "
                         f"{storage.CONFIG_MAP_MAX_BYTES}, the size limit of the ConfigMap that carries it")


def render_warnings(spec: ClusterSpec) -> list[str]:
    """Returns what the rendered job leaves out or handles differently from a local launch."""
    mirrored = spec.strategy == MULTI_WORKER_MIRRORED
    warnings = []

    if spec.task_count("evaluator"):
        evaluating = "every worker" if mirrored else "the coordinator"
        warnings.append(
            "The evaluator is left out of the TFJob because 'tfps-ha task' does not run one; "
            f"{evaluating} still calls the trainer's evaluate() after training.")

    listed = [job for job in ("chief", "ps", "worker") if not isinstance(spec.jobs.get(job, 0), int)]
    if listed:
        warnings.append(
            f"The addresses listed for {', '.join(listed)} are ignored; on Kubernetes every task listens on "
            f"port {spec.kubernetes.port} of its pod, named JOB-TYPE-INDEX.NAMESPACE.svc in TF_CONFIG.")

    unused = sorted(job for job in spec.kubernetes.resources if not spec.task_count(job))
    if unused:
        warnings.append(
            f"kubernetes.resources has settings for {', '.join(unused)}, but the cluster has no such tasks; "
            "those settings are not used.")

    # In a local launch, restart.chief decides about the coordinator's exits
    # and restart.worker about the MWMS group's. On Kubernetes the TFJob's
    # ExitCode policy decides instead.
    restarted = "worker" if mirrored else "chief"
    retried = sorted(code for code in spec.restart[restarted].permanent_exit_codes
                     if code >= EXIT_CODE_RETRYABLE_FROM)
    if retried:
        replicas = "chief and worker pods" if mirrored else "chief"
        warnings.append(
            f"restart.{restarted}.permanent_exit_codes lists {retried}, but the TFJob ExitCode policy restarts "
            f"the {replicas} after any exit code from {EXIT_CODE_RETRYABLE_FROM}.")

    # An MWMS worker has no start-up deadline of its own. TensorFlow's
    # coordination service waits for its peers to register.
    if not mirrored and spec.startup_timeout_seconds < MIN_STARTUP_TIMEOUT_SECONDS:
        warnings.append(
            f"startup_timeout_seconds is {spec.startup_timeout_seconds:g}; pods can take minutes to be "
            f"scheduled and pull the image, and the coordinator's STARTUP_TIMEOUT exit (4) fails the TFJob "
            f"for good. Consider at least {MIN_STARTUP_TIMEOUT_SECONDS}.")

    return warnings


def manifest_text(manifest: dict, source: str) -> str:
    """Returns one object as a YAML document under a header that names the spec it came from."""
    header = f"{_HEADER_PREFIX}{source}; render it again rather than editing it.\n"
    return header + yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False,
                              allow_unicode=True, width=100)


def write_manifests(manifests: dict[str, dict], out_dir: str, source: str) -> list[str]:
    """Writes each object to `out_dir/FILE`, replacing files of the same name; returns the paths.

    A manifest file of an earlier render that this render does not write is
    removed, so that `kubectl apply -f out_dir` does not create a stale object.
    Files without the renderer's header line are left alone.

    Raises:
      UsageError: `out_dir` cannot be created or written.
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot create folder {out_dir!r}: {error.strerror}; "
                         "choose a folder you can write") from None

    paths = []
    for file_name, manifest in manifests.items():
        path = os.path.join(out_dir, file_name)
        try:
            _write_atomic(path, manifest_text(manifest, source))
        except OSError as error:
            raise UsageError(f"--out: cannot write {path!r}: {error.strerror}; choose a folder you can write") from None
        paths.append(path)
    _remove_stale(out_dir, set(manifests))
    logger.info("Wrote %d manifests to %s.", len(paths), out_dir)
    return paths


def _remove_stale(out_dir: str, written: set[str]) -> None:
    for file_name in MANIFEST_FILES:
        path = os.path.join(out_dir, file_name)
        if file_name in written or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as stream:
                rendered = stream.readline().startswith(_HEADER_PREFIX)
            if rendered:
                os.unlink(path)
                logger.info("Removed %s, which an earlier render wrote and this one does not.", path)
        except (OSError, UnicodeDecodeError) as error:
            logger.warning("Could not check or remove the earlier manifest %s (%s); delete it before "
                           "'kubectl apply'.", path, error)


def _write_atomic(path: str, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".render-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class _ManifestDumper(yaml.SafeDumper):
    """Writes multi-line strings, such as the spec in the ConfigMap, as `|` blocks."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_text)
