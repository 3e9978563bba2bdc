"""The `kubeflow.org/v1` TFJob: replica specs, restart policies and run policy.

The `kubernetes` client has no TFJob model, so the TFJob's own fields are the
small dataclasses below. Their pod templates and metadata are the client's
models. Field names and meanings follow the TFJob CRD of training-operator
v1.9.0 and its controller (pkg/controller.v1/tensorflow/tfjob_controller.go).

Under ParameterServerStrategy (`RESTART_POLICIES`):

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

Under MultiWorkerMirroredStrategy (`MIRRORED_RESTART_POLICIES`):

* `ExitCode` (chief and worker): every task trains. `tfps_ha.mwms.worker`
  exits 0 at the target step and `CLUSTER_UNAVAILABLE` (200) when a collective
  op failed because a peer is gone. It exits `PREEMPTED` (201) after a SIGTERM
  stop with a backup, and `FAILED` (1) or `USAGE` (2) on a crash or a bad spec.
  The operator recreates a pod after 200, 201 or a signal (128+N) with the same
  name, and so the same address in TF_CONFIG, and fails the job on 1 or 2.
  It recreates only the pod that failed. The other workers then fail their
  next collective op, at the latest after `monitoring.collective_timeout_seconds`,
  exit 200 and are recreated too. So the whole group restarts and restores the
  same backup, as under the local group supervisor. `Always` would restart a
  worker that exited 0 and repeat finished training, and `Always` and
  `OnFailure` would restart exits 1 and 2 in place, repeating a permanent error.
  NOTE: a local launch kills the survivors, so no test covers a surviving
  worker that exits 200 on its own. By hand, with two workers started from their
  TF_CONFIG and no supervisor, the survivor exited 200 within 1 to 8 s after a
  SIGKILL or SIGSTOP of either peer. docs/k8s.md says which errors map to 200.
* No `backoffLimit`: the operator compares it with the container restart
  counts of running pods. An `ExitCode` pod runs with the pod restart policy
  `Never` and is replaced rather than restarted, so its count stays 0 and the
  limit would bound nothing. The `restart.worker` budgets have no Kubernetes
  equivalent; bound the job with `runPolicy.activeDeadlineSeconds` by hand.
* `runPolicy.cleanPodPolicy: Running`: the job succeeds when the MWMS chief
  (`chief:0`, or `worker:0` without a chief) exits 0, which is the task the
  operator's default success policy watches. Workers still running then are
  deleted.
"""

from __future__ import annotations

import dataclasses

from kubernetes import client

API_VERSION = "kubeflow.org/v1"
KIND = "TFJob"
# TF_CONFIG job name to the TFJob replica type.
REPLICA_TYPES = {"chief": "Chief", "ps": "PS", "worker": "Worker"}
RESTART_POLICIES = {"chief": "ExitCode", "ps": "Always", "worker": "Always"}
MIRRORED_RESTART_POLICIES = {"chief": "ExitCode", "worker": "ExitCode"}
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
    """`spec.runPolicy`: what happens to pods and retries for the whole job.

    Attributes:
      clean_pod_policy: Which pods the operator deletes when the job ends.
      backoff_limit: Restarts after which the job fails, or None to leave the
        field out.
    """

    clean_pod_policy: str
    backoff_limit: int | None


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
        run_policy = {}
        if self.run_policy.backoff_limit is not None:
            run_policy["backoffLimit"] = self.run_policy.backoff_limit
        run_policy["cleanPodPolicy"] = self.run_policy.clean_pod_policy
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": api_client.sanitize_for_serialization(self.metadata),
            "spec": {
                "runPolicy": run_policy,
                "tfReplicaSpecs": replicas,
            },
        }
