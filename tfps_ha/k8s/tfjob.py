"""The `kubeflow.org/v1` TFJob: replica specs, restart policies and run policy.

The `kubernetes` client has no TFJob model, so the TFJob's own fields are the
small dataclasses below. Their pod templates and metadata are the client's
models. Field names and meanings follow the TFJob CRD of training-operator
v1.9.0 and its controller (pkg/controller.v1/tensorflow/tfjob_controller.go):

* `ExitCode` (chief): the operator deletes and recreates a pod that failed with
  an exit code in 128..255 and fails the job on 1..127. The kit's exit-code
  table (`tfps_ha.exit_codes`) puts every retryable exit at 200 and above, and
  a process killed by a signal exits 128+N, so OOM kills and preemptions
  restart the coordinator while a bad spec or a trainer crash does not.
* `Always` (ps, worker): these tasks are servers that never end on their own.
  They exit 0 on SIGTERM, so under `OnFailure` a container stopped without its
  pod being deleted would stay down as "succeeded" while the job goes on
  without it. `Always` brings it back in place, at the same pod address that
  TF_CONFIG names, and a pod the node lost is recreated by the operator. A PS
  restart loses the variables it held. The coordinator exits
  `CLUSTER_UNAVAILABLE` (200) on the UnavailableError, AbortedError or
  CancelledError that follows, and its restart restores the last checkpoint.
* `runPolicy.backoffLimit` counts in-place container restarts of `OnFailure`
  and `Always` replicas, summed over the running pods. It is set to the sum of
  the spec's per-job budgets of PS and workers. The operator does not count
  `ExitCode` restarts, so `restart.chief` has no Kubernetes equivalent.
* `runPolicy.cleanPodPolicy: Running`: when the chief ends, the PS and worker
  servers, which would otherwise serve forever, are deleted.
"""

from __future__ import annotations

import dataclasses

from kubernetes import client

API_VERSION = "kubeflow.org/v1"
KIND = "TFJob"
# TF_CONFIG job name to the TFJob replica type.
REPLICA_TYPES = {"chief": "Chief", "ps": "PS", "worker": "Worker"}
RESTART_POLICIES = {"chief": "ExitCode", "ps": "Always", "worker": "Always"}
# The lowest exit code that the operator's ExitCode policy retries
# (IsRetryableExitCode in training-operator v1.9.0).
EXIT_CODE_RETRYABLE_FROM = 128


@dataclasses.dataclass
class ReplicaSpec:
    """One entry of `spec.tfReplicaSpecs`."""

    replicas: int
    restart_policy: str
    template: client.V1PodTemplateSpec


@dataclasses.dataclass
class RunPolicy:
    """`spec.runPolicy`: what happens to pods and retries for the whole job."""

    clean_pod_policy: str
    backoff_limit: int


@dataclasses.dataclass
class TFJob:
    """A TFJob object with its replica specs keyed by TF_CONFIG job name (chief, ps, worker)."""

    metadata: client.V1ObjectMeta
    replica_specs: dict[str, ReplicaSpec]
    run_policy: RunPolicy

    def to_dict(self, api_client: client.ApiClient) -> dict:
        """Returns the object as the API server reads it, with camelCase keys."""
        replicas = {}
        for job, replica in self.replica_specs.items():
            replicas[REPLICA_TYPES[job]] = {
                "replicas": replica.replicas,
                "restartPolicy": replica.restart_policy,
                "template": api_client.sanitize_for_serialization(replica.template),
            }
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": api_client.sanitize_for_serialization(self.metadata),
            "spec": {
                "runPolicy": {
                    "backoffLimit": self.run_policy.backoff_limit,
                    "cleanPodPolicy": self.run_policy.clean_pod_policy,
                },
                "tfReplicaSpecs": replicas,
            },
        }
