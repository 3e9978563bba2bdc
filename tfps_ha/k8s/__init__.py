"""Kubernetes manifests for a cluster spec: a Kubeflow TFJob and the objects around it.

`tfps-ha render-k8s` builds them with the `kubernetes` client's models in
`tfps_ha.k8s.render`. The Lease that elects the coordinator on Kubernetes is
`tfps_ha.lease.kubernetes`.
"""
