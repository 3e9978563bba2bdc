"""Tests of the `kubernetes:` section of a cluster spec and of resource quantities."""

from __future__ import annotations

import decimal

import hypothesis
import pytest
import yaml
from hypothesis import strategies as st

from tfps_ha.errors import SpecError
from tfps_ha.k8s.quantity import normalize_quantity, quantity_value
from tfps_ha.k8s.settings import KubernetesSpec, ResourcesSpec, parse_kubernetes
from tfps_ha.spec import parse_spec

BASE = {
    "name": "t",
    "cluster": {"chief": 1, "worker": 2, "ps": 1},
    "trainer": {"module": "tfps_ha.examples.ctr", "runner": "custom_loop"},
}


def parse_kubernetes_section(section: object):
    document = dict(BASE, kubernetes=section)
    return parse_spec(yaml.safe_dump(document, sort_keys=False), source="x.yaml").kubernetes


def test_section_absent_gives_defaults():
    spec = parse_spec(yaml.safe_dump(BASE), source="x.yaml")

    assert spec.kubernetes == KubernetesSpec()
    assert spec.kubernetes.namespace == "default"
    assert spec.kubernetes.port == 2222


def test_full_section_parses():
    settings = parse_kubernetes_section({
        "namespace": "training",
        "port": 3333,
        "image_pull_policy": "Always",
        "workdir_claim": "shared-nfs",
        "workdir_size": "1Ti",
        "storage_class": "nfs.client",
        "resources": {
            "chief": {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
            "worker": {"requests": {"cpu": 0.5, "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}},
        },
    })

    assert settings.namespace == "training"
    assert settings.port == 3333
    assert settings.image_pull_policy == "Always"
    assert settings.workdir_claim == "shared-nfs"
    assert settings.workdir_size == "1Ti"
    assert settings.storage_class == "nfs.client"
    assert settings.resources["chief"] == ResourcesSpec(requests={"cpu": "2", "memory": "4Gi"},
                                                        limits={"memory": "4Gi"})
    assert settings.resources["worker"].requests == {"cpu": "0.5", "nvidia.com/gpu": "1"}


@pytest.mark.parametrize("section, message", [
    pytest.param(
        [], "x.yaml: kubernetes: received []; expected a mapping", id="not_mapping"),
    pytest.param(
        {"namespce": "a"},
        "x.yaml: kubernetes.namespce: received 'namespce'; expected one of the keys namespace, port, "
        "image_pull_policy, workdir_claim, workdir_size, storage_class, resources",
        id="unknown_key"),
    pytest.param(
        {"namespace": "Training"},
        "x.yaml: kubernetes.namespace: received 'Training'; expected a namespace name: up to 63 lowercase "
        "letters, digits and '-', starting and ending alphanumeric",
        id="namespace_upper"),
    pytest.param(
        {"namespace": "a" * 64},
        f"x.yaml: kubernetes.namespace: received '{'a' * 64}'; expected a namespace name: up to 63 lowercase "
        "letters, digits and '-', starting and ending alphanumeric",
        id="namespace_long"),
    pytest.param(
        {"port": 0}, "x.yaml: kubernetes.port: received 0; expected a port in 1..65535", id="port_zero"),
    pytest.param(
        {"port": True}, "x.yaml: kubernetes.port: received True; expected a port in 1..65535", id="port_bool"),
    pytest.param(
        {"image_pull_policy": "always"},
        "x.yaml: kubernetes.image_pull_policy: received 'always'; expected one of Always, IfNotPresent, Never",
        id="pull_policy_case"),
    pytest.param(
        {"workdir_claim": "My_Claim"},
        "x.yaml: kubernetes.workdir_claim: received 'My_Claim'; expected the name of a PersistentVolumeClaim: "
        "lowercase letters, digits, '-' and '.'",
        id="claim_name"),
    pytest.param(
        {"workdir_size": "10GB"},
        "x.yaml: kubernetes.workdir_size: received '10GB'; expected a storage size such as 10Gi",
        id="size_unit"),
    pytest.param(
        {"workdir_size": 0},
        "x.yaml: kubernetes.workdir_size: received 0; expected a storage size such as 10Gi",
        id="size_zero"),
    pytest.param(
        {"storage_class": "Fast SSD"},
        "x.yaml: kubernetes.storage_class: received 'Fast SSD'; expected the name of a StorageClass: "
        "lowercase letters, digits, '-' and '.'",
        id="storage_class"),
    pytest.param(
        {"resources": {"evaluator": {}}},
        "x.yaml: kubernetes.resources.evaluator: received 'evaluator'; expected one of the keys chief, ps, worker",
        id="resources_job"),
    pytest.param(
        {"resources": {"ps": {"request": {}}}},
        "x.yaml: kubernetes.resources.ps.request: received 'request'; expected one of the keys requests, limits",
        id="resources_key"),
    pytest.param(
        {"resources": {"ps": {"requests": {"cpu": "-1"}}}},
        "x.yaml: kubernetes.resources.ps.requests.cpu: received '-1'; expected a quantity such as 500m, 2, 1.5 "
        "or 4Gi",
        id="quantity_negative"),
    pytest.param(
        {"resources": {"ps": {"requests": {"memory": True}}}},
        "x.yaml: kubernetes.resources.ps.requests.memory: received True; expected a quantity such as 500m, 2, "
        "1.5 or 4Gi",
        id="quantity_bool"),
    pytest.param(
        {"resources": {"ps": {"requests": {"cpu units": "1"}}}},
        "x.yaml: kubernetes.resources.ps.requests: received 'cpu units'; expected resource names such as cpu, "
        "memory or nvidia.com/gpu",
        id="resource_name"),
    pytest.param(
        {"resources": {"worker": {"requests": {"memory": "8Gi"}, "limits": {"memory": "8G"}}}},
        "x.yaml: kubernetes.resources.worker.requests.memory: received '8Gi'; expected at most the limit 8G, "
        "because Kubernetes rejects a request above its limit",
        id="request_above_limit"),
])
def test_invalid_section_raises(section, message):
    with pytest.raises(SpecError) as raised:
        parse_kubernetes_section(section)

    assert str(raised.value) == message


@pytest.mark.parametrize("value, text", [
    (2, "2"), (0.5, "0.5"), ("500m", "500m"), ("1.5Gi", "1.5Gi"), ("1e3", "1e3"), (".5", ".5"),
    ("-1", None), ("1 Gi", None), ("Gi", None), (True, None), (None, None), ([], None),
])
def test_normalize_quantity(value, text):
    assert normalize_quantity(value) == text


@pytest.mark.parametrize("text, value", [
    ("500m", decimal.Decimal("0.5")),
    ("2", decimal.Decimal(2)),
    ("1Ki", decimal.Decimal(1024)),
    ("1.5Gi", decimal.Decimal(3 * 2**29)),
    ("8G", decimal.Decimal(8 * 10**9)),
    ("1e3", decimal.Decimal(1000)),
    ("100u", decimal.Decimal("0.0001")),
])
def test_quantity_value(text, value):
    assert quantity_value(text) == value


def test_quantity_value_rejects_text():
    with pytest.raises(ValueError, match="not a Kubernetes quantity: 'lots'"):
        quantity_value("lots")


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["2", "500m", "4Gi", "cpu", "memory", "Always"]))
_KEYS = st.one_of(st.sampled_from(["namespace", "port", "image_pull_policy", "workdir_claim", "workdir_size",
                                   "storage_class", "resources", "chief", "ps", "worker", "requests", "limits",
                                   "cpu", "memory"]),
                  st.text(max_size=8), st.integers())
_VALUES = st.recursive(_SCALARS, lambda children: st.one_of(st.lists(children, max_size=3),
                                                           st.dictionaries(_KEYS, children, max_size=4)),
                       max_leaves=12)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(section=st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_any_section_parses_or_raises_spec_error(section):
    def fail(path, received, expected):
        return SpecError("x.yaml", path, received, expected)

    try:
        settings = parse_kubernetes(section, fail)
    except SpecError:
        return
    assert isinstance(settings, KubernetesSpec)
