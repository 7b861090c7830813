"""The training-data and models-file loaders: good lines parse, bad lines fail naming the line and the field."""

from __future__ import annotations

import json

import pytest

from switchboard.router.data import RoutingDataError, load_models, parse_examples, parse_models, read_prompts, score_matrix


def test_parses_lines_and_skips_blank_ones():
    lines = ['{"prompt": "hi", "scores": {"a": 1, "b": 0.25}, "task": "t"}', "", '{"prompt": "yo", "scores": {"a": 0}}']
    examples = parse_examples(lines)
    assert [e.prompt for e in examples] == ["hi", "yo"]
    assert examples[0].scores == {"a": 1.0, "b": 0.25} and examples[0].task == "t"


@pytest.mark.parametrize(
    "line, field",
    [
        ("not json", "invalid JSON"),
        ('["a list"]', "JSON object"),
        ('{"scores": {"a": 1}}', "'prompt'"),
        ('{"prompt": "p"}', "'scores'"),
        ('{"prompt": "p", "scores": {}}', "'scores'"),
        ('{"prompt": "p", "scores": {"a": 1.5}}', "scores['a']"),
        ('{"prompt": "p", "scores": {"a": true}}', "scores['a']"),
        ('{"prompt": "p", "scores": {"a": 1}, "task": 3}', "'task'"),
    ],
)
def test_bad_line_names_line_and_field(line, field):
    with pytest.raises(RoutingDataError) as info:
        parse_examples(['{"prompt": "ok", "scores": {"a": 1}}', line], source="train.jsonl")
    assert "train.jsonl:2" in str(info.value) and field in str(info.value)


def test_models_file_validation(tmp_path):
    good = {"a": {"input_price_per_mtok": 0.1, "output_price_per_mtok": 0.3, "size": "8B"}}
    prices = parse_models(good)
    assert prices["a"].blended_usd_per_mtok == pytest.approx(0.2)
    with pytest.raises(RoutingDataError, match="output_price_per_mtok"):
        parse_models({"a": {"input_price_per_mtok": 0.1}})
    path = tmp_path / "models.json"
    path.write_text("{broken")
    with pytest.raises(RoutingDataError, match="models.json"):
        load_models(path)


def test_shipped_files_load(shipped_train_path, shipped_models_path):
    prices = load_models(shipped_models_path)
    assert len(prices) == 9 and all(p.blended_usd_per_mtok > 0 for p in prices.values())
    prompts = read_prompts(shipped_train_path)
    assert len(prompts) == 5608


def test_read_prompts_ignores_other_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "x": 1}) + "\n\n" + json.dumps({"prompt": "b"}) + "\n")
    assert read_prompts(path) == ["a", "b"]
    path.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(RoutingDataError, match="p.jsonl:1"):
        read_prompts(path)


def test_score_matrix_requires_every_expert():
    examples = parse_examples(['{"prompt": "p", "scores": {"a": 1}}'])
    with pytest.raises(RoutingDataError, match="'b'"):
        score_matrix(examples, ["a", "b"])
