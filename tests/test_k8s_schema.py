"""Offline schema checks of the rendered manifests.

They cover cluster_specs/k8s_example.yaml (parameter_server),
cluster_specs/k8s_mwms_example.yaml (multi_worker_mirrored, workers only) and
that spec with a chief added.

* The TFJob against the OpenAPI v3 schema of the training operator's TFJob
  CRD (release v1.9.0). The CRD file is reference data outside the repository:
  `$TFPS_HA_TFJOB_CRD`, else `../shared/k8s/kubeflow.org_tfjobs.yaml` next to
  the repository. The tests skip when neither exists. The check is stricter
  than the API server's default in one way: a field the schema does not name
  is an error, as with `kubectl apply --validate=strict`, where the server
  would silently drop it. It is weaker in another: the CRD's CEL rules
  (`x-kubernetes-validations`) are not evaluated.
* The core objects, and each replica's pod template wrapped in a PodTemplate,
  with kubernetes-validate's strict schemas of Kubernetes 1.28 and of the
  newest release the package bundles.
"""

from __future__ import annotations

import copy
import os
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tfps_ha.k8s.render import render_manifests
from tfps_ha.spec import load_spec, parse_spec

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "cluster_specs" / "k8s_example.yaml"
MWMS_EXAMPLE = REPO / "cluster_specs" / "k8s_mwms_example.yaml"
CRD_ENV = "TFPS_HA_TFJOB_CRD"
CRD_DEFAULT = REPO.parent / "shared" / "k8s" / "kubeflow.org_tfjobs.yaml"
KUBERNETES_VERSIONS = ["1.28", kubernetes_validate.latest_version()]
IMAGE = "example/trainer:1"
RENDERED_SPECS = ["pss", "mwms", "mwms_chief"]
# The core objects and replica types rendered for each entry of RENDERED_SPECS.
CORE_FILES = {
    "pss": ["configmap.yaml", "networkpolicy.yaml", "persistentvolumeclaim.yaml", "role.yaml",
            "rolebinding.yaml", "serviceaccount.yaml"],
    "mwms": ["configmap.yaml", "networkpolicy.yaml", "persistentvolumeclaim.yaml"],
    "mwms_chief": ["configmap.yaml", "networkpolicy.yaml", "persistentvolumeclaim.yaml"],
}
REPLICA_TYPES = {"pss": ["Chief", "PS", "Worker"], "mwms": ["Worker"], "mwms_chief": ["Chief", "Worker"]}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, dict]]:
    """Returns the manifests of each entry of RENDERED_SPECS."""
    spec = load_spec(str(EXAMPLE))
    mwms_text = MWMS_EXAMPLE.read_text(encoding="utf-8")
    document = yaml.safe_load(mwms_text)
    document["cluster"] = {"chief": 1, "worker": 3}
    chief_text = yaml.safe_dump(document, sort_keys=False)
    return {
        "pss": render_manifests(spec, EXAMPLE.read_text(encoding="utf-8"), IMAGE),
        "mwms": render_manifests(parse_spec(mwms_text), mwms_text, IMAGE),
        "mwms_chief": render_manifests(parse_spec(chief_text), chief_text, IMAGE),
    }


@pytest.fixture(scope="module")
def manifests(rendered) -> dict[str, dict]:
    """Returns the manifests of the parameter_server example."""
    return rendered["pss"]


@pytest.fixture(scope="module")
def tfjob_validator() -> jsonschema.protocols.Validator:
    path = pathlib.Path(os.environ.get(CRD_ENV) or CRD_DEFAULT)
    if not path.is_file():
        pytest.skip(f"the TFJob CRD is not at {path}; set {CRD_ENV} to a copy of kubeflow.org_tfjobs.yaml "
                    "from training-operator v1.9.0 to run the TFJob schema checks")
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    schema = _strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return _KubernetesSchemaValidator(schema)


# ----------------------------------------------------------------- TFJob


@pytest.mark.parametrize("spec_name", RENDERED_SPECS)
def test_tfjob_matches_crd_schema(rendered, spec_name, tfjob_validator):
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in
              tfjob_validator.iter_errors(rendered[spec_name]["tfjob.yaml"])]

    assert errors == []


def test_crd_check_rejects_unknown_field(manifests, tfjob_validator):
    tfjob = copy.deepcopy(manifests["tfjob.yaml"])
    tfjob["spec"]["tfReplicaSpecs"]["PS"]["restartPolicyy"] = "Always"

    errors = list(tfjob_validator.iter_errors(tfjob))

    assert [list(error.absolute_path) for error in errors] == [["spec", "tfReplicaSpecs", "PS"]]
    assert "'restartPolicyy' was unexpected" in errors[0].message


def test_crd_check_rejects_wrong_type(manifests, tfjob_validator):
    tfjob = copy.deepcopy(manifests["tfjob.yaml"])
    tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "4"

    errors = list(tfjob_validator.iter_errors(tfjob))

    assert [list(error.absolute_path) for error in errors] == [["spec", "tfReplicaSpecs", "Worker", "replicas"]]


def test_crd_check_rejects_duplicate_list_keys(manifests, tfjob_validator):
    tfjob = copy.deepcopy(manifests["tfjob.yaml"])
    ports = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["ports"]
    ports.append(dict(ports[0], name="second"))

    errors = list(tfjob_validator.iter_errors(tfjob))

    assert len(errors) == 1
    assert "duplicate" in errors[0].message


# --------------------------------------------------------- core objects


@pytest.mark.parametrize("spec_name", RENDERED_SPECS)
def test_rendered_objects_are_covered(rendered, spec_name):
    tfjob = rendered[spec_name]["tfjob.yaml"]

    assert sorted(rendered[spec_name]) == sorted([*CORE_FILES[spec_name], "tfjob.yaml"])
    assert list(tfjob["spec"]["tfReplicaSpecs"]) == REPLICA_TYPES[spec_name]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("spec_name, file_name",
                         [(name, file_name) for name in RENDERED_SPECS for file_name in CORE_FILES[name]])
def test_core_object_valid(rendered, spec_name, file_name, version):
    kubernetes_validate.validate(rendered[spec_name][file_name], version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("spec_name, replica_type",
                         [(name, replica) for name in RENDERED_SPECS for replica in REPLICA_TYPES[name]])
def test_pod_template_valid(rendered, spec_name, replica_type, version):
    tfjob = rendered[spec_name]["tfjob.yaml"]
    template = tfjob["spec"]["tfReplicaSpecs"][replica_type]["template"]
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": f"{tfjob['metadata']['name']}-{replica_type.lower()}"},
                    "template": template}

    kubernetes_validate.validate(pod_template, version, strict=True)


def test_core_check_rejects_invalid_object(manifests):
    policy = copy.deepcopy(manifests["networkpolicy.yaml"])
    policy["spec"]["policyTypes"] = "Ingress"

    with pytest.raises(kubernetes_validate.ValidationError) as raised:
        kubernetes_validate.validate(policy, KUBERNETES_VERSIONS[-1], strict=True)

    assert list(raised.value.absolute_path) == ["spec", "policyTypes"]


# --------------------------------------------------------------- helpers


def _strict(schema: object) -> object:
    """Returns a copy of the schema in which objects reject fields their schema does not name."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    if isinstance(schema.get("properties"), dict):
        # Property names are data, not schema keywords, so they are copied as they are.
        strict["properties"] = {name: _strict(value) for name, value in schema["properties"].items()}
    return strict


def _list_type(validator, list_type, instance, schema):
    """Checks `x-kubernetes-list-type`: items of a `set` and keys of a `map` are unique."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(name) for name in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate key {dict(zip(keys, key))} in a list of type map")
            seen.add(key)


# OpenAPI v3.0 schemas of CRDs are close to JSON Schema draft 4; the
# Kubernetes extension that constrains list contents is added.
_KubernetesSchemaValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})
