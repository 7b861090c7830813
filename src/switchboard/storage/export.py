"""Router training data from the request log: logged requests that have feedback, as the trainer's JSONL
(`{"prompt", "scores": {expert: 0..1}}`, router/data.py).

A line needs a score for every expert the router will choose among, so: feedback scores are averaged per
(prompt text, expert); the experts are those of the models file that have any feedback; a prompt is kept only
if it has feedback for every one of them — unless an `impute` function is given (`router train --from-log
--impute-from ROUTER`): then real traffic, where each prompt was answered (and scored) by one expert, is used
whole, each missing score filled with that router's predicted quality (the "direct method" of off-policy
learning: the retrained router learns the feedback where there is some and keeps the old router's view
elsewhere). Requests logged without their prompt (`storage.store_prompts: false`) cannot be used. The JSONL holds users' prompt text: treat it (and the router directory it is written
into) with the same care as the log.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Impute = Callable[[Sequence[str], Sequence[str]], Any]
"""`impute(prompts, experts)` → (len(prompts), len(experts)) predicted quality: fills scores no one gave."""

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from switchboard.storage import database
from switchboard.storage.models import feedback_table, requests_table


class LogExportError(ValueError):
    """The log cannot give training data; the message says why."""


def mean_scores_by_prompt(url: str) -> dict[str, dict[str, float]]:
    """prompt text → expert → mean feedback score, over logged requests with feedback and a stored prompt."""
    r, f = requests_table.c, feedback_table.c
    query = (
        select(r.prompt_text, r.expert, func.avg(f.score))
        .select_from(requests_table.join(feedback_table, f.request_id == r.id))
        .where(r.prompt_text.is_not(None))
        .group_by(r.prompt_text, r.expert)
        .order_by(r.prompt_text, r.expert)
    )
    engine = database.open_engine(url)
    try:
        with engine.connect() as connection:
            found: dict[str, dict[str, float]] = defaultdict(dict)
            for prompt, expert, score in connection.execute(query):
                found[prompt][expert] = float(score)
            return dict(found)
    except SQLAlchemyError as exc:
        raise LogExportError(f"cannot read the request log at {database_label(url)}: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()


def training_lines(scores: Mapping[str, Mapping[str, float]], priced_experts: list[str],
                   impute: Impute | None = None) -> tuple[list[dict[str, Any]], list[str], int]:
    """The JSONL objects, the experts they score, and how many scores were imputed (see the module docstring)."""
    with_feedback = {e for by_expert in scores.values() for e in by_expert}
    experts = [e for e in priced_experts if e in with_feedback]
    if not experts:
        raise LogExportError(f"no feedback in the log for any expert of the models file ({', '.join(priced_experts)})")
    if impute is None:
        lines = [{"prompt": prompt, "scores": {e: by_expert[e] for e in experts}}
                 for prompt, by_expert in sorted(scores.items()) if all(e in by_expert for e in experts)]
        return lines, experts, 0
    experts = list(priced_experts)  # every expert, scored by feedback where there is some, by `impute` elsewhere
    prompts = [p for p, by_expert in sorted(scores.items()) if any(e in by_expert for e in experts)]
    predicted = impute(prompts, experts)
    lines, num_imputed = [], 0
    for i, prompt in enumerate(prompts):
        line = {e: scores[prompt][e] if e in scores[prompt] else min(1.0, max(0.0, float(predicted[i][k]))) for k, e in enumerate(experts)}
        num_imputed += sum(e not in scores[prompt] for e in experts)
        lines.append({"prompt": prompt, "scores": line})
    return lines, experts, num_imputed


def write_training_jsonl(url: str, priced_experts: list[str], out_path: Path, min_examples: int = 3,
                         impute: Impute | None = None) -> tuple[Path, int, list[str], int]:
    """Writes the training JSONL; returns (path, number of lines, experts, number of imputed scores). Raises
    LogExportError when fewer than `min_examples` prompts can be used."""
    scores = mean_scores_by_prompt(url)
    lines, experts, num_imputed = training_lines(scores, priced_experts, impute)
    if len(lines) < min_examples:
        raise LogExportError(
            f"{len(lines)} of {len(scores)} logged prompts with feedback have it for every one of {', '.join(experts)}; need at least "
            f"{min_examples} (narrow the models file to the experts you have feedback for, or fill the gaps with --impute-from)"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return out_path, len(lines), experts, num_imputed


def database_label(url: str) -> str:
    from switchboard.storage.writer import database_label as label

    return label(url)
