"""The evaluation protocol: splits, leak detection, task weights and nested selection on small data."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.router.evaluate import per_task_table, tasks_below
from switchboard.router.nested import NESTED, Candidate, CalibrationKind, nested_cross_validate, select_and_fit
from switchboard.router.protocol import (
    Fold,
    LeakError,
    SplitKind,
    check_covers,
    check_no_leak,
    inner_folds,
    make_folds,
    near_duplicate_pairs,
    prompt_key,
    row_weights,
)
from switchboard.router.strategies import StrategyName


def corpus(rng, per_task=(30, 30, 10)):
    """Three tasks of different sizes; expert 0 is good at task a, expert 1 at task b, expert 2 middling."""
    prompts, tasks, xs, ys = [], [], [], []
    for t, (name, n) in enumerate(zip("abc", per_task)):
        for i in range(n):
            prompts.append(f"task {name} prompt {i}")
            tasks.append(name)
            centre = np.zeros(6)
            centre[t] = 3.0
            xs.append(centre + rng.normal(size=6))
            p = [0.9 if t == 0 else 0.1, 0.9 if t == 1 else 0.1, 0.5]
            ys.append((rng.random(3) < p).astype(np.float32))
    return prompts, tasks, np.asarray(xs, np.float32), np.asarray(ys, np.float32)


@pytest.mark.parametrize("kind", list(SplitKind))
def test_every_split_covers_each_row_once_without_leaks(rng, kind):
    prompts, tasks, _, _ = corpus(rng)
    folds = make_folds(kind, prompts, tasks, 5, rng)
    check_covers(folds, len(prompts))
    check_no_leak(folds, prompts)
    if kind is SplitKind.LEAVE_ONE_TASK_OUT:
        assert [f.name for f in folds] == ["task:a", "task:b", "task:c"]
        assert all(len({tasks[i] for i in f.test}) == 1 and tasks[f.test[0]] not in {tasks[i] for i in f.train} for f in folds)
    if kind is SplitKind.TASK_BALANCED:
        assert all({tasks[i] for i in f.test} == {"a", "b", "c"} for f in folds)


def test_a_prompt_in_both_train_and_test_is_detected():
    prompts = ["What is 2+2?", "Name a fruit.", "what   is 2+2?", "Write a loop."]
    leaky = [Fold("f0", np.array([0, 1]), np.array([2, 3]))]  # rows 0 and 2 are the same prompt
    with pytest.raises(LeakError, match="f0"):
        check_no_leak(leaky, prompts)
    with pytest.raises(LeakError, match="row 1"):
        check_no_leak([Fold("f1", np.array([0, 1]), np.array([1]))], prompts)
    assert prompt_key(prompts[0]) == prompt_key(prompts[2])


@pytest.mark.parametrize("kind", list(SplitKind))
def test_duplicated_prompts_never_straddle_a_fold(rng, kind):
    prompts, tasks, _, _ = corpus(rng)
    prompts[5] = prompts[40] = "the same question"  # a duplicate across tasks a and b
    prompts[6] = prompts[7] = "Another  Question"  # and one within task a
    for folds in (make_folds(kind, prompts, tasks, 4, rng), inner_folds(kind, prompts, tasks, 2, rng)):
        check_no_leak(folds, prompts)


PASSAGE = ("When Boris left school he could not find a job. He tried hard and asked his relatives, but they had "
           "problems of their own. He answered advertisements until he could not afford any more stamps.")


def test_near_duplicates_are_found_and_template_text_alone_does_not_make_a_pair():
    prompts = [PASSAGE + " Why was Boris sad?", PASSAGE + " What did Boris buy?", "Write a function to sort a list.",
               "Write a function to find the perimeter of a rombus.", "Write a function to find the perimeter of a square."]
    assert near_duplicate_pairs(prompts) == [(0, 1), (3, 4)]
    template = "Solve the puzzle below, thinking step by step, and give the answer on the last line. "
    puzzles = [template * 3 + f"Puzzle {i}: " + " ".join(f"clue{i}-{k}" for k in range(20)) for i in range(60)]
    assert near_duplicate_pairs(puzzles) == []  # 60 rows share the template's 5-grams: template text, not a pair


def test_a_near_duplicate_split_between_train_and_test_is_detected():
    prompts = [PASSAGE + " Why was Boris sad?", "Name a fruit.", PASSAGE + " What did Boris buy?", "Write a loop."]
    with pytest.raises(LeakError, match="near-duplicate"):
        check_no_leak([Fold("f0", np.array([0, 1]), np.array([2, 3]))], prompts)
    check_no_leak([Fold("f0", np.array([0, 2]), np.array([1, 3]))], prompts)


@pytest.mark.parametrize("kind", list(SplitKind))
def test_near_duplicate_groups_never_straddle_a_fold(rng, kind):
    prompts, tasks, _, _ = corpus(rng)
    prompts[3], prompts[12], prompts[45] = (PASSAGE + f" Question {q}?" for q in ("one", "two", "three"))  # a and b
    prompts[60], prompts[61] = PASSAGE[:150] + " alpha", PASSAGE[:150] + " beta"  # within task c
    for folds in (make_folds(kind, prompts, tasks, 4, rng), inner_folds(kind, prompts, tasks, 2, rng)):
        check_no_leak(folds, prompts)
        assert not any(_straddles(f, group) for f in folds for group in ((3, 12, 45), (60, 61)))
    if kind is SplitKind.LEAVE_ONE_TASK_OUT:  # the grouping before: the copy under task b trains the fold of task a
        exact_only = make_folds(kind, prompts, tasks, 4, rng, near_duplicates=False)
        assert any(_straddles(f, (3, 12, 45)) for f in exact_only)
        with pytest.raises(LeakError, match="near-duplicate"):
            check_no_leak(exact_only, prompts)


def _straddles(fold: Fold, group: tuple[int, ...]) -> bool:
    return bool(np.isin(group, fold.train).any() and np.isin(group, fold.test).any())


def test_task_balanced_weights_give_every_task_the_same_mass(rng):
    _, tasks, _, _ = corpus(rng)
    w = row_weights(SplitKind.TASK_BALANCED, tasks, len(tasks))
    assert w.sum() == pytest.approx(1.0)
    for t in "abc":
        assert w[np.asarray(tasks) == t].sum() == pytest.approx(1 / 3)
    assert np.allclose(row_weights(SplitKind.RANDOM, tasks, len(tasks)), 1 / len(tasks))


def test_task_splits_need_task_labels(rng):
    prompts, _, _, _ = corpus(rng)
    with pytest.raises(ValueError, match="task label"):
        make_folds(SplitKind.LEAVE_ONE_TASK_OUT, prompts, None, 5, rng)


CANDIDATES = (
    Candidate("knn", StrategyName.KNN, {"num_neighbours": 5}),
    Candidate("linear", StrategyName.LINEAR, {"epochs": 5}),
)


@pytest.mark.parametrize("kind", list(SplitKind))
def test_nested_cv_predicts_every_row_and_records_its_choices(rng, kind):
    prompts, tasks, x, y = corpus(rng)
    price = np.array([0.1, 0.2, 0.9])
    result = nested_cross_validate(CANDIDATES, x, y, prompts, tasks, price, kind, seed=0, num_folds=3, num_inner_folds=2)
    assert set(result.predictions) == {"knn", "linear", NESTED}
    assert set(result.chosen) == {f.name for f in result.folds}
    for fold in result.folds:
        label = result.chosen[fold.name].split("+")[0]
        assert np.array_equal(result.predictions[NESTED][fold.test], result.predictions[label][fold.test])
    assert all(((p >= 0) & (p <= 1)).all() for p in result.predictions.values())
    assert result.weights.sum() == pytest.approx(1.0)


def test_selection_never_sees_the_outer_test_rows(rng):
    """Changing the held-out rows' scores cannot change what is chosen or how it is fitted."""
    prompts, tasks, x, y = corpus(rng)
    price = np.array([0.1, 0.2, 0.9])
    train = np.flatnonzero(np.asarray(tasks) != "c")
    tr_prompts, tr_tasks = [prompts[i] for i in train], [tasks[i] for i in train]
    a = select_and_fit(CANDIDATES, x[train], y[train], tr_prompts, tr_tasks, price, SplitKind.LEAVE_ONE_TASK_OUT, np.random.default_rng(0), 2)
    y2 = y.copy()
    y2[np.asarray(tasks) == "c"] = 1 - y2[np.asarray(tasks) == "c"]
    b = select_and_fit(CANDIDATES, x[train], y2[train], tr_prompts, tr_tasks, price, SplitKind.LEAVE_ONE_TASK_OUT, np.random.default_rng(0), 2)
    assert a[0].label == b[0].label
    assert np.array_equal(a[1].predict(x), b[1].predict(x))


def test_isotonic_is_chosen_only_when_it_helps_on_held_out_inner_folds(rng):
    prompts, tasks, x, y = corpus(rng, per_task=(40, 40, 40))
    price = np.array([0.1, 0.2, 0.9])
    choice, _, calibration = select_and_fit(CANDIDATES[:1], x, y, prompts, tasks, price, SplitKind.TASK_BALANCED, rng, 3)
    assert choice.calibration_kind in set(CalibrationKind)
    if choice.calibration_kind is CalibrationKind.NONE:
        assert all(np.array_equal(kx, [0.0, 1.0]) for kx in calibration.knots_x)


def test_per_task_table_compares_against_a_single_expert_that_costs_no_more(rng):
    prompts, tasks, x, y = corpus(rng)
    price = np.array([0.1, 0.2, 0.9])
    rows = per_task_table(y, y, price, ["e0", "e1", "e2"], tasks, cost_weight=0.0)  # the oracle
    assert [r.task for r in rows] == ["a", "b", "c"]
    for r in rows:
        assert r.single_usd_per_mtok <= r.router_usd_per_mtok + 1e-9
        assert r.gap >= 0.0  # the oracle is never below a single expert on its own rows
    assert tasks_below(rows) == 0
    # The opposite of the oracle (the worst expert on every row) falls below the best single expert.
    anti = per_task_table(-y, y, price, ["e0", "e1", "e2"], tasks, cost_weight=0.0)
    assert tasks_below(anti) == sum(r.gap < -0.02 for r in anti) >= 2
    assert tasks_below(anti, margin=1.0) == 0


def test_balanced_rows_give_every_task_the_largest_tasks_count(rng):
    from switchboard.router.protocol import balanced_rows

    tasks = ["a"] * 10 + ["b"] * 3 + ["c"] * 7
    rows = balanced_rows(tasks, rng)
    counts = {t: sum(tasks[i] == t for i in rows) for t in "abc"}
    assert counts == {"a": 10, "b": 10, "c": 10}
    assert set(rows.tolist()) == set(range(len(tasks)))  # every row kept, rare ones repeated


def test_a_task_balanced_candidate_trains_on_balanced_rows_only_inside_the_training_part(rng):
    from switchboard.router.nested import Candidate
    from switchboard.router.strategies import StrategyName

    x, y = rng.normal(size=(30, 4)).astype(np.float32), (rng.random((30, 2)) < 0.5).astype(np.float32)
    tasks = ["a"] * 25 + ["b"] * 5
    model = Candidate("knn-balanced", StrategyName.KNN, {"num_neighbours": 200}, balance_tasks=True).fit(x, y, rng, tasks)
    assert len(model.points) == 50  # 25 + 5 × 5
    plain = Candidate("knn", StrategyName.KNN, {"num_neighbours": 200}).fit(x, y, rng, tasks)
    assert len(plain.points) == 30


def test_a_fixed_router_is_fitted_once_per_outer_fold_with_no_inner_fits(rng):
    """One candidate, no calibration to choose: the nested CV is a plain CV (the reference routers of
    `benchmarks/router_reference.py`), and its estimates are the raw fits on each outer training part."""
    prompts, tasks, x, y = corpus(rng)
    price = np.array([0.1, 0.2, 0.9])
    fixed = Candidate("knn", StrategyName.KNN, {"num_neighbours": 5}, calibrations=(CalibrationKind.NONE,))
    fits = []
    result = nested_cross_validate((fixed,), x, y, prompts, tasks, price, SplitKind.LEAVE_ONE_TASK_OUT, seed=0,
                                   num_inner_folds=2, progress=fits.append)
    assert len(fits) == len(result.folds) == 3
    for fold in result.folds:
        raw = fixed.fit(x[fold.train], y[fold.train], rng).predict(x[fold.test])
        assert np.allclose(result.predictions["knn"][fold.test], raw)
