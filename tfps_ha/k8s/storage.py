"""The spec ConfigMap and the workdir claim.

Under ParameterServerStrategy the coordinator reads the spec, and the
coordinator and the PS write the workdir. Under MultiWorkerMirroredStrategy
every chief and worker pod reads the spec and writes the workdir.
"""

from __future__ import annotations

from kubernetes import client

from tfps_ha.k8s import names
from tfps_ha.k8s.pods import SPEC_FILE
from tfps_ha.spec import PARAMETER_SERVER, ClusterSpec

# The API server rejects a ConfigMap whose data exceeds 1 MiB.
CONFIG_MAP_MAX_BYTES = 1024 * 1024


def spec_config_map(spec: ClusterSpec, spec_text: str, namespace: str) -> client.V1ConfigMap:
    """Returns the ConfigMap that contains the cluster spec file as the user wrote it."""
    # Under PSS only the chief reads the spec, but under MWMS every pod does.
    component = "chief" if spec.strategy == PARAMETER_SERVER else None
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(name=names.spec_config_map_name(spec.name), namespace=namespace,
                                     labels=names.object_labels(spec.name, component)),
        data={SPEC_FILE: spec_text},
    )


def workdir_claim(spec: ClusterSpec, namespace: str) -> client.V1PersistentVolumeClaim:
    """Returns a ReadWriteMany claim for the workdir, which pods on different nodes mount."""
    settings = spec.kubernetes
    return client.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=client.V1ObjectMeta(name=names.workdir_claim_name(spec.name), namespace=namespace,
                                     labels=names.object_labels(spec.name)),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"],
            storage_class_name=settings.storage_class,
            resources=client.V1VolumeResourceRequirements(requests={"storage": settings.workdir_size}),
        ),
    )
