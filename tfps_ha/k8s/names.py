"""Names and labels of the Kubernetes objects rendered for one job.

Every object carries `app.kubernetes.io/name: tfps-ha` and
`app.kubernetes.io/instance: JOB`. The NetworkPolicy selects pods by these two
labels and not by the operator's `training.kubeflow.org/job-name`, so that a
standby coordinator started outside the TFJob can join the policy. Giving such
a pod the operator's label would let the operator adopt it.
"""

from __future__ import annotations

import re

# Kubernetes name formats, from k8s.io/apimachinery/pkg/util/validation.
DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# A resource name such as `cpu` or `nvidia.com/gpu`.
QUALIFIED_NAME_RE = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253

APP_NAME = "tfps-ha"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"

# The TFJob operator injects TF_CONFIG only into the container of this name and
# reads the gRPC port from its container port of this name (training-operator
# v1.9, TFJobDefaultContainerName and TFJobDefaultPortName).
CONTAINER_NAME = "tensorflow"
PORT_NAME = "tfjob-port"

# The operator names pods `JOB-TYPE-INDEX`; the longest type is `worker`.
_LONGEST_POD_SUFFIX = len("-worker-")


def is_dns1123_label(text: object) -> bool:
    return isinstance(text, str) and len(text) <= LABEL_MAX and DNS1123_LABEL_RE.fullmatch(text) is not None


def is_dns1123_subdomain(text: object) -> bool:
    return isinstance(text, str) and len(text) <= SUBDOMAIN_MAX and DNS1123_SUBDOMAIN_RE.fullmatch(text) is not None


def max_job_name_length(max_tasks: int) -> int:
    """Returns the longest TFJob name whose pod and Service names stay valid DNS labels.

    Args:
      max_tasks: The task count of the largest job, which sets the digits of the
        highest index in a name such as `JOB-worker-99`.
    """
    digits = len(str(max(max_tasks - 1, 0)))
    return LABEL_MAX - _LONGEST_POD_SUFFIX - digits


def selector_labels(job: str) -> dict[str, str]:
    """Returns the labels that select every pod of `job`, in the NetworkPolicy too."""
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: job}


def object_labels(job: str, component: str | None = None) -> dict[str, str]:
    """Returns the labels of one rendered object, with its component when given."""
    labels = selector_labels(job)
    if component:
        labels[COMPONENT_LABEL] = component
    return labels


def service_account_name(job: str) -> str:
    return f"{job}-coordinator"


def lease_role_name(job: str) -> str:
    return f"{job}-coordinator-lease"


def lease_name(job: str) -> str:
    """Returns the name of the coordination.k8s.io Lease that elects the job's coordinator."""
    return f"{job}-leader"


def spec_config_map_name(job: str) -> str:
    return f"{job}-spec"


def workdir_claim_name(job: str) -> str:
    return f"{job}-workdir"


def network_policy_name(job: str) -> str:
    return f"{job}-grpc"
