"""The README's config examples are valid configs (docs that stay true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from switchboard.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_config_examples_validate(block):
    assert parse_config(block, source="README.md").experts


def test_readme_opens_with_the_two_commands():
    head = README.read_text(encoding="utf-8")[:1200]
    assert "make run" in head and "make test" in head
