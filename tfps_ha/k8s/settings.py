"""The optional `kubernetes:` section of a cluster spec, read by `tfps-ha render-k8s`.

    kubernetes:
      namespace: training            # default: default; --namespace overrides it
      port: 2222                     # gRPC port of every task (container port tfjob-port)
      image_pull_policy: IfNotPresent
      workdir_claim: ctr-workdir     # an existing ReadWriteMany PersistentVolumeClaim; when
                                     # absent, a claim JOB-workdir of workdir_size is rendered
      workdir_size: 10Gi
      storage_class: nfs-client      # of the rendered claim; default: the cluster's default
      resources:                     # per job: requests and limits, as in a container spec
        ps: {requests: {cpu: "2", memory: 8Gi}, limits: {memory: 8Gi}}

Local launches ignore this section.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from tfps_ha.errors import SpecError
from tfps_ha.k8s import names
from tfps_ha.k8s.quantity import normalize_quantity, quantity_value

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESOURCE_JOBS = ("chief", "ps", "worker")

_KEYS = ("namespace", "port", "image_pull_policy", "workdir_claim", "workdir_size", "storage_class", "resources")


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
    """Compute resources of one job's container.

    Attributes:
      requests: Resource name (`cpu`, `memory`, `nvidia.com/gpu`) to quantity text.
      limits: Resource name to quantity text.
    """

    requests: Mapping[str, str] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class KubernetesSpec:
    """Settings of the rendered Kubernetes objects; see the module docstring.

    Attributes:
      namespace: Namespace of every object.
      port: The gRPC port of every task.
      image_pull_policy: `imagePullPolicy` of every container.
      workdir_claim: An existing PersistentVolumeClaim for the workdir, or None
        to render one.
      workdir_size: Storage request of the rendered claim.
      storage_class: `storageClassName` of the rendered claim, or None for the
        cluster's default class.
      resources: Container resources per job (chief, ps, worker).
    """

    namespace: str = "default"
    port: int = 2222
    image_pull_policy: str = "IfNotPresent"
    workdir_claim: str | None = None
    workdir_size: str = "10Gi"
    storage_class: str | None = None
    resources: Mapping[str, ResourcesSpec] = dataclasses.field(default_factory=dict)


def parse_kubernetes(section: object, fail: Callable[[str, object, str], SpecError]) -> KubernetesSpec:
    """Validates the `kubernetes:` section of a spec.

    Args:
      section: The section as YAML read it.
      fail: Builds the `SpecError` for a path, the value received and what was expected.

    Raises:
      SpecError: A key is unknown or a value is invalid.
    """
    if not isinstance(section, dict):
        raise fail("kubernetes", section, "a mapping")
    _reject_unknown_keys("kubernetes", section, _KEYS, fail)
    defaults = KubernetesSpec()

    namespace = section.get("namespace", defaults.namespace)
    if not names.is_dns1123_label(namespace):
        raise fail("kubernetes.namespace", namespace,
                   "a namespace name: up to 63 lowercase letters, digits and '-', starting and ending alphanumeric")

    port = section.get("port", defaults.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise fail("kubernetes.port", port, "a port in 1..65535")

    pull_policy = section.get("image_pull_policy", defaults.image_pull_policy)
    if pull_policy not in PULL_POLICIES:
        raise fail("kubernetes.image_pull_policy", pull_policy, "one of " + ", ".join(PULL_POLICIES))

    claim = section.get("workdir_claim")
    if claim is not None and not names.is_dns1123_subdomain(claim):
        raise fail("kubernetes.workdir_claim", claim,
                   "the name of a PersistentVolumeClaim: lowercase letters, digits, '-' and '.'")

    size = normalize_quantity(section.get("workdir_size", defaults.workdir_size))
    if size is None or quantity_value(size) <= 0:
        raise fail("kubernetes.workdir_size", section.get("workdir_size"), "a storage size such as 10Gi")

    storage_class = section.get("storage_class")
    if storage_class is not None and not names.is_dns1123_subdomain(storage_class):
        raise fail("kubernetes.storage_class", storage_class,
                   "the name of a StorageClass: lowercase letters, digits, '-' and '.'")

    resources = _parse_resources(section.get("resources", {}), fail)
    return KubernetesSpec(
        namespace=namespace, port=port, image_pull_policy=pull_policy, workdir_claim=claim,
        workdir_size=size, storage_class=storage_class, resources=resources,
    )


def _parse_resources(section: object, fail: Callable) -> dict[str, ResourcesSpec]:
    path = "kubernetes.resources"
    if not isinstance(section, dict):
        raise fail(path, section, "a mapping of jobs (chief, ps, worker) to requests and limits")
    _reject_unknown_keys(path, section, RESOURCE_JOBS, fail)

    resources = {}
    for job, value in section.items():
        job_path = f"{path}.{job}"
        if not isinstance(value, dict):
            raise fail(job_path, value, "a mapping with 'requests' and 'limits'")
        _reject_unknown_keys(job_path, value, ("requests", "limits"), fail)
        requests = _parse_quantities(f"{job_path}.requests", value.get("requests", {}), fail)
        limits = _parse_quantities(f"{job_path}.limits", value.get("limits", {}), fail)
        for name, request in requests.items():
            if name in limits and quantity_value(request) > quantity_value(limits[name]):
                raise fail(f"{job_path}.requests.{name}", request,
                           f"at most the limit {limits[name]}, because Kubernetes rejects a request above its limit")
        resources[job] = ResourcesSpec(requests=requests, limits=limits)
    return resources


def _parse_quantities(path: str, section: object, fail: Callable) -> dict[str, str]:
    if not isinstance(section, dict):
        raise fail(path, section, "a mapping of resource names to quantities, such as {cpu: '2', memory: 4Gi}")
    quantities = {}
    for name, value in section.items():
        if not isinstance(name, str) or len(name) > names.SUBDOMAIN_MAX or not names.QUALIFIED_NAME_RE.fullmatch(name):
            raise fail(path, name, "resource names such as cpu, memory or nvidia.com/gpu")
        text = normalize_quantity(value)
        if text is None:
            raise fail(f"{path}.{name}", value, "a quantity such as 500m, 2, 1.5 or 4Gi")
        quantities[name] = text
    return quantities


def _reject_unknown_keys(path: str, mapping: dict, allowed: tuple[str, ...], fail: Callable) -> None:
    from tfps_ha.spec import show_key  # spec imports this module, so the import waits until a call.

    for key in mapping:
        if key not in allowed:
            raise fail(f"{path}.{show_key(key)}", key, "one of the keys " + ", ".join(allowed))
