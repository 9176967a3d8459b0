"""CloudFormation YAML with its short-form intrinsic tags, read as the long form (PyYAML).

`!Ref X` becomes {"Ref": X}, `!Condition X` {"Condition": X}, `!GetAtt A.B` {"Fn::GetAtt": [A, B]}
and every other `!Name V` {"Fn::Name": V}: the data CloudFormation itself sees. One loader for
scripts/test_infra.py, scripts/check_schema.py and scripts/lib/cfn_resolve.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class CfnLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads CloudFormation's short-form tags."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path) -> dict:
    """The template at `path` as data (raises OSError, yaml.YAMLError)."""
    return yaml.load(path.read_text(), Loader=CfnLoader)
