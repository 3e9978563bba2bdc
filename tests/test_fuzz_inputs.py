"""Fuzz tests: any spec text or TF_CONFIG value is either valid or a one-line UsageError.

No other exception may escape `parse_spec` or `parse_tf_config`, and the CLI
must reject bad input with exit code 2 and one line on stderr, never a
traceback. Each property runs at most 300 examples (8 for the one that
starts subprocesses), so the file takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfps_ha.errors import UsageError
from tfps_ha.spec import JOBS, ClusterSpec, TaskId, parse_spec
from tfps_ha.tf_config import TaskConfig, parse_tf_config, render_tf_config

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# `run_cli` is function-scoped but keeps no state between examples, so sharing it is safe.
FUZZ_CLI = settings(
    max_examples=8, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(function, *args):
    """Returns what `function(*args)` returns, or the UsageError it raises.

    Any other exception propagates and fails the test.
    """
    try:
        return function(*args)
    except UsageError as error:
        return error


def assert_one_line_error(error: UsageError) -> None:
    message = str(error)
    assert message != ""
    assert len(message.splitlines()) == 1, message


# ----------------------------------------------------------------- strategies

SPEC_KEYS = [
    "name", "host", "cluster", "trainer", "training", "workdir", "startup_timeout_seconds",
    "restart", "monitoring", "module", "runner", "args", "steps", "steps_per_execution",
    "checkpoint_every_steps", "steps_per_epoch", "keep_checkpoints", "max_restarts_per_task",
    "max_restarts_per_job", "backoff_initial_seconds", "backoff_max_seconds",
    "permanent_exit_codes", "heartbeat_timeout_seconds", "lease_seconds", "standby_coordinator",
    "port_failures_before_dead", *JOBS, "ps_hosts", "worker_hosts", "master",
]

HOSTS = ["localhost", "LOCALHOST", "127.0.0.1", "[::1]", "::1", "10.0.0.5", "0.0.0.0", "", "bad host", "\u00b2"]
PORTS = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["", "http", "02222", "\u00b2", "9" * 30, "2222\n"]),
)
ADDRESSES = st.one_of(
    st.builds(lambda host, port: f"{host}:{port}", st.sampled_from(HOSTS), PORTS),
    st.text(max_size=12),
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 70000),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    ADDRESSES,
    st.sampled_from(["fit", "custom_loop", "tfps_ha.examples.ctr", "ps", "worker", "chief"]),
)
KEYS = st.one_of(st.sampled_from(SPEC_KEYS), st.text(max_size=8), st.integers(-2, 3))
NESTED = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=5),
    ),
    max_leaves=20,
)

YAML_TOKENS = [
    "cluster", "trainer", "training", "module", "chief", "worker", "ps", "ps_hosts", ": ", ":",
    " ", "  ", "\n", "\t", "- ", "[", "]", "{", "}", ", ", "'", '"', "&a ", "*a", "!!int ",
    "!!float ", "!!bool ", "!!timestamp ", "!!set ", "!!python/object ", "!!binary ", "# ", "| ",
    "> ", "? ", "localhost:2222", "localhost:0",
    "0", "1", "65536", "-1", "1e999", ".nan", "null", "true", "~", "%YAML 1.1\n", "---\n",
    "...\n", "<<: ", "2001-02-30", "\u00b2", "\x00", "\\", "\u2028",
]
YAML_TEXT = st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join)


DELETE = object()


def apply_mutations(document: dict, mutations: list) -> dict:
    """Sets each (path, value) pair of `mutations` in `document` and returns it.

    The value DELETE removes the key. A path through a value that is not a
    mapping replaces that value with a mapping.
    """
    for path, value in mutations:
        mapping = document
        for key in path[:-1]:
            if not isinstance(mapping.get(key), dict):
                mapping[key] = {}
            mapping = mapping[key]
        if value is DELETE:
            mapping.pop(path[-1], None)
        else:
            mapping[path[-1]] = value
    return document


@st.composite
def valid_spec_documents(draw) -> dict:
    """Draws a spec document that parse_spec must accept."""
    next_port = draw(st.integers(1, 60000))

    def job(count: int) -> int | list[str]:
        nonlocal next_port
        if draw(st.booleans()):
            return count
        addresses = []
        for _ in range(count):
            host = draw(st.sampled_from(["localhost", "127.0.0.1", "[::1]", "10.0.0.5"]))
            addresses.append(f"{host}:{next_port}")
            next_port += 1
        return addresses

    cluster = {"chief": job(1), "worker": job(draw(st.integers(1, 3))), "ps": job(draw(st.integers(1, 2)))}
    if draw(st.booleans()):
        cluster["evaluator"] = job(draw(st.integers(0, 1)))

    runner = draw(st.sampled_from(["fit", "custom_loop", None]))
    trainer = {"module": draw(st.sampled_from(["tfps_ha.examples.ctr", "tfps_ha.examples.digits", "m"]))}
    if runner:
        trainer["runner"] = runner

    per_execution = draw(st.sampled_from([1, 5, 10]))
    per_epoch = per_execution * draw(st.integers(1, 10))
    training = {
        "steps": per_epoch * draw(st.integers(1, 10)),
        "steps_per_execution": per_execution,
        "checkpoint_every_steps": per_execution * draw(st.integers(1, 20)),
    }
    if runner == "fit" or draw(st.booleans()):
        training["steps_per_epoch"] = per_epoch

    document = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)),
        "host": draw(st.sampled_from(["127.0.0.1", "localhost", "0.0.0.0", "::1"])),
        "cluster": cluster,
        "trainer": trainer,
        "training": training,
    }
    if draw(st.booleans()):
        initial = draw(st.floats(0, 10))
        document["restart"] = {
            draw(st.sampled_from(JOBS)): {
                "max_restarts_per_task": draw(st.integers(0, 20)),
                "backoff_initial_seconds": initial,
                "backoff_max_seconds": initial + draw(st.floats(0, 10)),
                "permanent_exit_codes": draw(st.lists(st.integers(1, 255), max_size=3)),
            },
        }
    if draw(st.booleans()):
        document["monitoring"] = {
            "lease_seconds": draw(st.floats(0.1, 60)),
            "port_failures_before_dead": draw(st.integers(1, 10)),
            "standby_coordinator": draw(st.booleans()),
        }
    return document


SPEC_PATHS = [
    ("name",), ("host",), ("cluster",), ("cluster", "chief"), ("cluster", "worker"),
    ("cluster", "ps"), ("cluster", "evaluator"), ("cluster", "ps_hosts"), ("trainer",),
    ("trainer", "module"), ("trainer", "runner"), ("trainer", "args"), ("training",),
    ("training", "steps"), ("training", "steps_per_execution"), ("training", "checkpoint_every_steps"),
    ("training", "steps_per_epoch"), ("training", "keep_checkpoints"), ("workdir",),
    ("startup_timeout_seconds",), ("restart",), ("restart", "ps"), ("restart", "worker", "backoff_max_seconds"),
    ("restart", "ps", "permanent_exit_codes"), ("restart", "chief", "max_restarts_per_job"), ("monitoring",),
    ("monitoring", "lease_seconds"), ("monitoring", "standby_coordinator"),
    ("monitoring", "port_failures_before_dead"),
]
SPEC_MUTATIONS = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(SPEC_PATHS), st.lists(KEYS, min_size=1, max_size=3).map(tuple)),
        st.one_of(st.just(DELETE), st.integers(-2, 1200), st.lists(ADDRESSES, max_size=3), NESTED),
    ),
    max_size=2,
)
# Valid documents with up to two values changed or removed, so that every
# check of the parser runs, not only the first few.
SPEC_DOCUMENTS = st.builds(apply_mutations, valid_spec_documents(), SPEC_MUTATIONS)


@st.composite
def valid_tf_config_documents(draw) -> dict:
    """Draws a TF_CONFIG document that parse_tf_config must accept."""
    counts = {
        "chief": draw(st.integers(0, 1)),
        "worker": draw(st.integers(1, 3)),
        "ps": draw(st.integers(1, 2)),
        "evaluator": draw(st.integers(0, 1)),
    }
    next_port = draw(st.integers(1, 60000))
    cluster: dict = {}
    for job, count in counts.items():
        if not count:
            continue
        hosts = st.sampled_from(["localhost", "127.0.0.1", f"tf-{job}"])
        addresses = [f"{draw(hosts)}:{next_port + index}" for index in range(count)]
        next_port += count
        if draw(st.booleans()):
            cluster[job] = addresses
        else:
            # The mapping form keyed by string indices, in any key order.
            order = draw(st.permutations(range(count)))
            cluster[job] = {str(index): addresses[index] for index in order}

    job = draw(st.sampled_from(sorted({*cluster, "evaluator"})))
    index = draw(st.integers(0, max(counts[job], 1) - 1))
    task = {"type": job, "index": draw(st.sampled_from([index, str(index)]))}
    return {"cluster": cluster, "task": task}


INDEX_KEYS = st.one_of(st.integers(0, 4).map(str), st.sampled_from(["01", "-1", "a", "\u00b2", "1" * 5000, ""]))
TF_JOB_VALUES = st.one_of(
    st.lists(ADDRESSES, max_size=3),
    st.dictionaries(INDEX_KEYS, ADDRESSES, max_size=3),
    SCALARS,
)
TF_INDEXES = st.one_of(st.integers(-2, 5), st.sampled_from(["0", "1", "01", "\u00b2", "", "1" * 5000]), SCALARS)
TF_PATHS = [
    ("cluster",), ("cluster", "chief"), ("cluster", "worker"), ("cluster", "ps"), ("cluster", "evaluator"),
    ("cluster", "ps_hosts"), ("cluster", "worker", "0"), ("cluster", "worker", "7"), ("task",),
    ("task", "type"), ("task", "index"),
]
TF_CONFIG_MUTATIONS = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(TF_PATHS), st.lists(st.text(max_size=6), min_size=1, max_size=3).map(tuple)),
        st.one_of(st.just(DELETE), TF_INDEXES, TF_JOB_VALUES, st.sampled_from([*JOBS, "bogus"])),
    ),
    max_size=2,
)
TF_CONFIG_DOCUMENTS = st.builds(apply_mutations, valid_tf_config_documents(), TF_CONFIG_MUTATIONS)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=20,
)


# ----------------------------------------------------------------- cluster spec


def check_spec_text(text: str) -> None:
    result = outcome(parse_spec, text, "fuzz.yaml")
    if isinstance(result, UsageError):
        assert_one_line_error(result)
        return
    assert isinstance(result, ClusterSpec)
    assert result.task_count("chief") == 1
    assert result.task_count("worker") >= 1
    assert result.task_count("ps") >= 1
    assert len(result.summary().splitlines()) == 1


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_spec_any_text(text):
    check_spec_text(text)


@FUZZ
@given(YAML_TEXT)
def test_fuzz_spec_yaml_tokens(text):
    check_spec_text(text)


# Fewer examples here, because dumping and parsing nested documents is the slowest property.
@settings(FUZZ, max_examples=150)
@given(st.dictionaries(KEYS, NESTED, max_size=8))
def test_fuzz_spec_nested_mapping(document):
    check_spec_text(yaml.safe_dump(document, sort_keys=False))


@FUZZ
@given(SPEC_DOCUMENTS)
def test_fuzz_spec_mutated(document):
    check_spec_text(yaml.safe_dump(document, sort_keys=False))


@FUZZ
@given(valid_spec_documents())
def test_fuzz_spec_valid_documents(document):
    spec = parse_spec(yaml.safe_dump(document, sort_keys=False), "fuzz.yaml")

    workers = document["cluster"]["worker"]
    assert spec.task_count("worker") == (workers if isinstance(workers, int) else len(workers))
    assert spec.training.steps == document["training"]["steps"]
    assert spec.runner == document["trainer"].get("runner")


# ------------------------------------------------------------------- TF_CONFIG


def check_tf_config(text: str) -> None:
    result = outcome(parse_tf_config, text)
    if isinstance(result, UsageError):
        assert_one_line_error(result)
        return
    assert isinstance(result, TaskConfig)
    training = result.cluster.training_cluster()
    assert "evaluator" not in training
    assert result.task.index >= 0
    if result.task.job != "evaluator":
        # The rendered TF_CONFIG of the same task must parse back to that task.
        rendered = json.dumps(render_tf_config(result.cluster, result.task))
        assert parse_tf_config(rendered).task == result.task


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=200)))
def test_fuzz_tf_config_any_text(text):
    check_tf_config(text)


@FUZZ
@given(JSON_VALUES)
def test_fuzz_tf_config_any_json(value):
    check_tf_config(json.dumps(value))


@FUZZ
@given(TF_CONFIG_DOCUMENTS)
def test_fuzz_tf_config_mutated(document):
    check_tf_config(json.dumps(document))


def addresses_in_order(value: list | dict) -> list:
    return value if isinstance(value, list) else [value[str(index)] for index in range(len(value))]


@FUZZ
@given(valid_tf_config_documents())
def test_fuzz_tf_config_valid_documents(document):
    config = parse_tf_config(json.dumps(document))

    task = document["task"]
    assert config.task == TaskId(task["type"], int(task["index"]))
    assert config.cluster.training_cluster() == {
        job: addresses_in_order(value) for job, value in document["cluster"].items() if job != "evaluator"
    }


# ------------------------------------------------------------------------- CLI

# Inputs that once crashed the parsers or broke the one-line rule.
CLI_CASES = [
    pytest.param(b"", id="empty_file"),
    pytest.param(b"\x00\x01\x02", id="control_bytes"),
    pytest.param(b"[" * 5000, id="deep_nesting"),
    pytest.param(b'name: "a\\nb"\ncluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\n', id="name_newline"),
    pytest.param(b"cluster: {chief: 1, worker: ['localhost:\xc2\xb2'], ps: 1}\ntrainer: {module: m}\n",
                 id="port_superscript_digit"),
    pytest.param(b'"a\\nb": 1\ncluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\n',
                 id="unknown_key_newline"),
    pytest.param(b"cluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\ntraining: {steps: "
                 + b"9" * 5000 + b"}\n", id="5000_digit_number"),
    pytest.param(b"cluster:\n\tchief: 1\n", id="tab_indent"),
    pytest.param(b"name: !!int ''\n", id="empty_int_tag"),
]


def run_validate(run_cli, content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.yaml")
        with open(path, "wb") as stream:
            stream.write(content)
        return run_cli("validate", path)


@pytest.mark.parametrize("content", CLI_CASES)
def test_cli_validate_bad_input(run_cli, content):
    result = run_validate(run_cli, content)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("task", ["worker:\u00b2", "", "worker:" + "9" * 5000, "worker:1:2", "Worker:1"])
def test_cli_tf_config_bad_task(run_cli, task):
    result = run_cli("tf-config", "cluster_specs/local.yaml", "--task", task)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


@FUZZ_CLI
@given(st.one_of(YAML_TEXT, SPEC_DOCUMENTS.map(lambda document: yaml.safe_dump(document, sort_keys=False))))
def test_fuzz_cli_validate(run_cli, text):
    result = run_validate(run_cli, text.encode("utf-8", "surrogatepass"))

    assert result.returncode in (0, 2)
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert len(result.stderr.splitlines()) == 1
    else:
        assert len(result.stdout.splitlines()) == 1
