"""Routing data: the JSONL training format and the models (prices) file.

Training lines are `{"prompt": str, "scores": {expert_id: float in [0, 1]}, "task"?: str}`. The models file maps
expert id → `{"input_price_per_mtok", "output_price_per_mtok", "size"?, "description"?}`. Both loaders raise
`RoutingDataError` naming the file, the line and the field at fault; they never skip a bad line silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from switchboard.types import UsdPerMTok


class RoutingDataError(ValueError):
    """A malformed training or models file; the message names the file, line and field."""


@dataclass(frozen=True)
class RoutingExample:
    prompt: str
    scores: Mapping[str, float]
    task: str | None = None
    output_tokens: Mapping[str, float] | None = None  # answer length per expert, where known (router.cost)


@dataclass(frozen=True)
class ExpertPrice:
    input_usd_per_mtok: UsdPerMTok
    output_usd_per_mtok: UsdPerMTok
    size: str | None = None

    @property
    def blended_usd_per_mtok(self) -> UsdPerMTok:
        """The price the router trades quality against: the plain mean of input and output prices."""
        return (self.input_usd_per_mtok + self.output_usd_per_mtok) / 2.0


def _parse_example(obj: Any, where: str) -> RoutingExample:
    if not isinstance(obj, dict):
        raise RoutingDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise RoutingDataError(f"{where}: field 'prompt' must be a string")
    scores = obj.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise RoutingDataError(f"{where}: field 'scores' must be a non-empty object of expert id → score")
    clean: dict[str, float] = {}
    for expert, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
            raise RoutingDataError(f"{where}: scores[{expert!r}] must be a number in [0, 1], got {score!r}")
        clean[str(expert)] = float(score)
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise RoutingDataError(f"{where}: field 'task' must be a string when present")
    lengths = obj.get("output_tokens")
    if lengths is not None:
        if not isinstance(lengths, dict) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in lengths.values()
        ):
            raise RoutingDataError(f"{where}: field 'output_tokens' must be an object of expert id → tokens ≥ 0")
        lengths = {str(k): float(v) for k, v in lengths.items()}
    return RoutingExample(prompt=prompt, scores=clean, task=task, output_tokens=lengths)


def parse_examples(lines: Iterable[str], source: str = "<data>") -> list[RoutingExample]:
    """Parses JSONL lines; blank lines are allowed, anything else malformed raises RoutingDataError."""
    examples: list[RoutingExample] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RoutingDataError(f"{where}: invalid JSON ({exc.msg})") from None
        examples.append(_parse_example(obj, where))
    if not examples:
        raise RoutingDataError(f"{source}: no examples")
    return examples


def load_examples(path: Path | str) -> list[RoutingExample]:
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        return parse_examples(fh, source=str(path))


def read_prompts(path: Path | str) -> list[str]:
    """Reads JSONL lines with a "prompt" field (other fields ignored), in order."""
    path = Path(path)
    prompts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RoutingDataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise RoutingDataError(f"{path}:{line_no}: field 'prompt' must be a string")
            prompts.append(obj["prompt"])
    return prompts


def parse_models(obj: Any, source: str = "<models>") -> dict[str, ExpertPrice]:
    if not isinstance(obj, dict) or not obj:
        raise RoutingDataError(f"{source}: expected a non-empty object of expert id → prices")
    prices: dict[str, ExpertPrice] = {}
    for expert, info in obj.items():
        if not isinstance(info, dict):
            raise RoutingDataError(f"{source}: {expert!r} must be an object")
        values = []
        for field in ("input_price_per_mtok", "output_price_per_mtok"):
            value = info.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise RoutingDataError(f"{source}: {expert!r}.{field} must be a number ≥ 0, got {value!r}")
            values.append(float(value))
        size = info.get("size")
        prices[str(expert)] = ExpertPrice(values[0], values[1], None if size is None else str(size))
    return prices


def load_models(path: Path | str) -> dict[str, ExpertPrice]:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RoutingDataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_models(obj, source=str(path))


def score_matrix(examples: Sequence[RoutingExample], experts: Sequence[str]) -> np.ndarray:
    """(n, m) float32 scores in `experts` order; raises if an example lacks a score for one of them."""
    out = np.empty((len(examples), len(experts)), dtype=np.float32)
    for i, ex in enumerate(examples):
        for j, expert in enumerate(experts):
            try:
                out[i, j] = ex.scores[expert]
            except KeyError:
                raise RoutingDataError(f"example {i}: no score for expert {expert!r}") from None
    return out


def output_token_matrix(examples: Sequence[RoutingExample], experts: Sequence[str]) -> np.ndarray:
    """(n, m) answer lengths in tokens, NaN where an example does not say."""
    out = np.full((len(examples), len(experts)), np.nan)
    for i, ex in enumerate(examples):
        for j, expert in enumerate(experts):
            if ex.output_tokens and expert in ex.output_tokens:
                out[i, j] = ex.output_tokens[expert]
    return out


def common_experts(examples: Sequence[RoutingExample], prices: Mapping[str, ExpertPrice]) -> list[str]:
    """Experts priced in the models file and scored on every example, in models-file order."""
    experts = [e for e in prices if all(e in ex.scores for ex in examples)]
    if not experts:
        raise RoutingDataError("no expert is both priced in the models file and scored on every example")
    return experts


@dataclass(frozen=True)
class ShippedData:
    """The routing data shipped in the package, laid out for evaluation: `scores[i, j]` is example i's score on
    `experts[j]`, whose blended price is `usd_per_mtok[j]`."""

    examples: list[RoutingExample]
    prices: dict[str, ExpertPrice]
    experts: list[str]
    scores: np.ndarray
    usd_per_mtok: np.ndarray

    @property
    def texts(self) -> list[str]:
        return [ex.prompt for ex in self.examples]

    @property
    def tasks(self) -> list[str | None]:
        return [ex.task for ex in self.examples]


def load_shipped() -> ShippedData:
    """The package's `switchboard/data/routing/` (train.jsonl and models.json), as the benchmarks and the default
    router's build read it."""
    from importlib import resources  # the package data, read only when asked for

    folder = resources.files("switchboard.data").joinpath("routing")
    examples = load_examples(Path(str(folder.joinpath("train.jsonl"))))
    prices = load_models(Path(str(folder.joinpath("models.json"))))
    experts = common_experts(examples, prices)
    usd = np.asarray([prices[e].blended_usd_per_mtok for e in experts])
    return ShippedData(examples, prices, experts, score_matrix(examples, experts), usd)
