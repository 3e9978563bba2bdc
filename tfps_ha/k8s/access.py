"""Access control of a job: the NetworkPolicy of the gRPC port and the coordinator's RBAC.

TensorFlow's gRPC servers do not authenticate callers, and anyone who reaches
a task's port can run code in it. The NetworkPolicy admits TCP to the port
only from pods of the same job and drops every other ingress to these pods.
It takes effect only where the cluster's network plugin enforces
NetworkPolicies.

The coordinator needs `get`, `create` and `update` on its one Lease. RBAC
cannot limit `create` to a resource name, so `create` is granted on leases in
the namespace and `get` and `update` only on the job's Lease.
"""

from __future__ import annotations

from kubernetes import client

from tfps_ha.k8s import names

_LEASE_GROUP = "coordination.k8s.io"


def network_policy(job: str, namespace: str, port: int) -> client.V1NetworkPolicy:
    """Returns the NetworkPolicy that admits the gRPC `port` only from pods of `job`."""
    same_job = client.V1LabelSelector(match_labels=names.selector_labels(job))
    rule = client.V1NetworkPolicyIngressRule(
        _from=[client.V1NetworkPolicyPeer(pod_selector=same_job)],
        ports=[client.V1NetworkPolicyPort(protocol="TCP", port=port)],
    )
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(name=names.network_policy_name(job), namespace=namespace,
                                     labels=names.object_labels(job)),
        spec=client.V1NetworkPolicySpec(pod_selector=same_job, policy_types=["Ingress"], ingress=[rule]),
    )


def service_account(job: str, namespace: str) -> client.V1ServiceAccount:
    """Returns the coordinator's ServiceAccount."""
    return client.V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=_metadata(names.service_account_name(job), namespace, job),
    )


def lease_role(job: str, namespace: str) -> client.V1Role:
    """Returns the Role that lets the coordinator create, read and update the job's Lease."""
    return client.V1Role(
        api_version="rbac.authorization.k8s.io/v1",
        kind="Role",
        metadata=_metadata(names.lease_role_name(job), namespace, job),
        rules=[
            client.V1PolicyRule(api_groups=[_LEASE_GROUP], resources=["leases"], verbs=["create"]),
            client.V1PolicyRule(api_groups=[_LEASE_GROUP], resources=["leases"],
                                resource_names=[names.lease_name(job)], verbs=["get", "update"]),
        ],
    )


def lease_role_binding(job: str, namespace: str) -> client.V1RoleBinding:
    """Returns the RoleBinding of the lease Role to the coordinator's ServiceAccount."""
    return client.V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1",
        kind="RoleBinding",
        metadata=_metadata(names.lease_role_name(job), namespace, job),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                  name=names.lease_role_name(job)),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=names.service_account_name(job),
                                       namespace=namespace)],
    )


def _metadata(name: str, namespace: str, job: str) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name, namespace=namespace, labels=names.object_labels(job, "coordinator"))
