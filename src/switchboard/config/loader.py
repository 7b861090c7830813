"""Loading YAML into a validated `SwitchboardConfig`, with errors that name the field and its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from switchboard.config.schema import SwitchboardConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, line and field."""


def load_config(path: str | Path) -> SwitchboardConfig:
    """Reads and validates a YAML config file. Raises ConfigError naming the bad field and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    return parse_config(text, source=str(path), base_dir=path.parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> SwitchboardConfig:
    """Validates YAML text. Raises ConfigError naming the bad field and line. Relative paths of files the config
    reads as it loads (a llama.cpp expert's `chat_template`) are from `base_dir` (the config file's folder), else
    from the working directory."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if data is None:
        raise ConfigError(f"{source}: the config is empty; it needs at least an 'experts' list")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping with an 'experts' list")
    try:
        return SwitchboardConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [_describe(err, node, source) for err in exc.errors()]
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def _describe(err: Any, root: yaml.Node | None, source: str) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in {"openai", "llamacpp", "simulated", "process"})]
    field = _dotted(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{source}:{line}" if line else source
    return f"{where}: {field}: {err['msg']}"


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest node on `loc` that exists in the YAML document."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    best = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            best = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return best
