"""The README's spec example and command list stay true to the code."""

from __future__ import annotations

import pathlib
import re

from tfps_ha.cli import _build_parser
from tfps_ha.spec import parse_spec

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_readme_spec_example_parses():
    blocks = [block for block in yaml_blocks() if block.lstrip().startswith(("name:", "cluster:"))]
    assert blocks, "the README has no spec example"

    spec = parse_spec(blocks[0], source="README.md")

    assert spec.training.steps == 600
    assert spec.monitoring.standby_coordinator is True


def test_readme_commands_exist():
    parser = _build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)
    documented = set(re.findall(r"^tfps-ha ([a-z0-9-]+)", README, flags=re.M))

    assert documented, "the README lists no tfps-ha commands"
    assert documented <= subcommands, documented - subcommands
