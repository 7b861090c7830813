"""Router training data from the request log: logged requests that have feedback, as the trainer's JSONL
(`{"prompt", "scores": {expert: 0..1}}`, router/data.py).

A line needs a score for every expert the router will choose among, so: feedback scores are averaged per
(prompt text, expert); the experts are those of the models file that have any feedback; a prompt is kept only
if it has feedback for every one of them. Requests logged without their prompt (`storage.store_prompts:
false`) cannot be used. The JSONL holds users' prompt text: treat it (and the router directory it is written
into) with the same care as the log.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def training_lines(scores: Mapping[str, Mapping[str, float]], priced_experts: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSONL objects and the experts they score (see the module docstring for the rule)."""
    with_feedback = {e for by_expert in scores.values() for e in by_expert}
    experts = [e for e in priced_experts if e in with_feedback]
    if not experts:
        raise LogExportError(f"no feedback in the log for any expert of the models file ({', '.join(priced_experts)})")
    lines = [{"prompt": prompt, "scores": {e: by_expert[e] for e in experts}}
             for prompt, by_expert in sorted(scores.items()) if all(e in by_expert for e in experts)]
    return lines, experts


def write_training_jsonl(url: str, priced_experts: list[str], out_path: Path, min_examples: int = 3) -> tuple[Path, int, list[str]]:
    """Writes the training JSONL; returns (path, number of lines, experts). Raises LogExportError when fewer
    than `min_examples` prompts have feedback for every expert."""
    scores = mean_scores_by_prompt(url)
    lines, experts = training_lines(scores, priced_experts)
    if len(lines) < min_examples:
        raise LogExportError(
            f"{len(lines)} of {len(scores)} logged prompts with feedback have it for every one of {', '.join(experts)}; need at least "
            f"{min_examples} (narrow the models file to the experts you have feedback for)"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return out_path, len(lines), experts


def database_label(url: str) -> str:
    from switchboard.storage.writer import database_label as label

    return label(url)
