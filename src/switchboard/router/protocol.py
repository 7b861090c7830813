"""The evaluation protocol: how rows are split into train and test, and how test rows are weighted.

Three splits, reported side by side (never one alone), because the traffic a router meets is never the mix
it was trained on:

- `random`: k folds of shuffled rows, scored with every row weighing the same (the training mix). The
  optimistic column: the test rows come from the training distribution.
- `task-balanced`: k folds stratified by task (every task in every fold), scored with every *task* weighing
  the same, whatever its share of the data. This is the owners' held-out setting: the same tasks, a
  different mix in which rare tasks are as common as any other.
- `leave-one-task-out` (LOTO): one fold per task, trained without that task and tested on it only, scored
  task-balanced. The pessimistic column: the test task was never seen.

Rows with the same prompt text (after collapsing whitespace and case), or near-duplicates of each other (the same
question with small edits: word 5-gram Jaccard ≥ 0.5, `near_duplicate_pairs`), are one group and always land in
the same fold, so a duplicated or lightly edited prompt cannot leak an answer; `check_no_leak` verifies this for
any set of folds and raises `LeakError` naming the fold and a leaked prompt.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class SplitKind(str, enum.Enum):
    RANDOM = "random"
    TASK_BALANCED = "task-balanced"
    LEAVE_ONE_TASK_OUT = "leave-one-task-out"


SPLIT_ORDER = (SplitKind.LEAVE_ONE_TASK_OUT, SplitKind.TASK_BALANCED, SplitKind.RANDOM)
"""The order the three columns are reported in: the harshest shift first."""


class LeakError(ValueError):
    """A prompt is in both the train and the test part of a fold."""


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # row indices, sorted
    test: np.ndarray  # row indices, sorted, disjoint from train


def prompt_key(prompt: str) -> str:
    """What makes two prompts "the same" for leak purposes: whitespace-collapsed, case-folded text."""
    return hashlib.sha1(" ".join(prompt.split()).casefold().encode("utf-8")).hexdigest()


NEAR_DUPLICATE_JACCARD = 0.5
"""Two prompts are near-duplicates when their sets of word 5-grams overlap at least this much (Jaccard). On the
shipped data this finds 35 pairs in 56 rows, every pair within one task (e.g. "find the perimeter of a rombus"
/ "of a square", a reading passage repeated with another question); static-table cosine ≥ 0.95 would instead
join 568 rows of shared templates (logic-grid puzzles, asymptote figures) that are different questions."""

SHINGLE_WORDS = 5
TEMPLATE_SHINGLE_ROWS = 50
"""A word 5-gram found in more rows than this is template text (a few-shot preamble, puzzle boilerplate): it
never makes two prompts candidates, though it counts in their Jaccard."""


@functools.lru_cache(maxsize=1 << 16)
def _shingles(prompt: str) -> frozenset[int]:
    # Cached per prompt (nested CV groups the same prompts once per outer fold); hashed, since ints intersect
    # faster than strings and a 64-bit collision between two 5-grams is not a concern at this size.
    words = prompt.casefold().split()
    return frozenset(hash(" ".join(words[k : k + SHINGLE_WORDS])) for k in range(max(1, len(words) - SHINGLE_WORDS + 1)))


def near_duplicate_pairs(prompts: Sequence[str], min_jaccard: float = NEAR_DUPLICATE_JACCARD) -> list[tuple[int, int]]:
    """Row pairs (i < j), sorted, whose prompts differ by `prompt_key` but whose word 5-gram sets have Jaccard ≥
    `min_jaccard`. Candidates share at least one 5-gram found in at most `TEMPLATE_SHINGLE_ROWS` rows."""
    keys = [prompt_key(p) for p in prompts]
    shingles = [_shingles(p) for p in prompts]
    # Which rows hold each 5-gram, by sorting (row, 5-gram) entries: a dict of lists took seconds under load.
    rows = np.repeat(np.arange(len(prompts)), [len(g) for g in shingles])
    grams = np.fromiter(itertools.chain.from_iterable(shingles), np.int64, count=rows.size)
    order = np.lexsort((rows, grams))
    rows, grams = rows[order], grams[order]
    starts = np.flatnonzero(np.r_[True, grams[1:] != grams[:-1]]) if len(grams) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(grams)])
    shared_not_template = (counts >= 2) & (counts <= TEMPLATE_SHINGLE_ROWS)
    candidates = set()
    for start, count in zip(starts[shared_not_template].tolist(), counts[shared_not_template].tolist()):
        group = rows[start : start + count].tolist()
        candidates.update((a, b) for n, a in enumerate(group) for b in group[n + 1 :])
    pairs = []
    for a, b in sorted(candidates):
        shared = len(shingles[a] & shingles[b])
        if keys[a] != keys[b] and shared >= min_jaccard * (len(shingles[a]) + len(shingles[b]) - shared):
            pairs.append((a, b))
    return pairs


def prompt_groups(prompts: Sequence[str], near_duplicates: bool = True) -> np.ndarray:
    """Per row, its group: rows with the same `prompt_key`, joined through `near_duplicate_pairs` (union-find)
    unless `near_duplicates` is False (the grouping before near-duplicates were found, kept to measure what they
    moved), numbered in order of first appearance."""
    return _groups_of(tuple(prompts), near_duplicates).copy()


@functools.lru_cache(maxsize=32)
def _groups_of(prompts: tuple[str, ...], near_duplicates: bool) -> np.ndarray:
    # Memoised: nested CV asks for the same prompts' groups many times (finding the pairs: ~2 s at load average 8).
    ids: dict[str, int] = {}
    key_ids = [ids.setdefault(prompt_key(p), len(ids)) for p in prompts]
    parent = list(range(len(ids)))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for a, b in near_duplicate_pairs(prompts) if near_duplicates else ():
        ra, rb = root(key_ids[a]), root(key_ids[b])
        parent[max(ra, rb)] = min(ra, rb)
    renumber: dict[int, int] = {}
    return np.asarray([renumber.setdefault(root(g), len(renumber)) for g in key_ids], dtype=np.int64)


def _fold(name: str, test_mask: np.ndarray) -> Fold:
    return Fold(name, np.flatnonzero(~test_mask), np.flatnonzero(test_mask))


def random_folds(prompts: Sequence[str], num_folds: int, rng: np.random.Generator,
                 near_duplicates: bool = True) -> list[Fold]:
    """`num_folds` folds of shuffled prompt groups (`prompt_groups`: duplicates together)."""
    groups = prompt_groups(prompts, near_duplicates)
    num_groups = int(groups.max()) + 1 if len(groups) else 0
    if not 2 <= num_folds <= num_groups:
        raise ValueError(f"need 2 ≤ folds ≤ distinct prompts, got folds={num_folds}, prompts={num_groups}")
    fold_of_group = np.empty(num_groups, dtype=np.int64)
    for k, part in enumerate(np.array_split(rng.permutation(num_groups), num_folds)):
        fold_of_group[part] = k
    return [_fold(f"random-{k}", fold_of_group[groups] == k) for k in range(num_folds)]


def task_balanced_folds(prompts: Sequence[str], tasks: Sequence[str], num_folds: int, rng: np.random.Generator,
                        near_duplicates: bool = True) -> list[Fold]:
    """`num_folds` folds stratified by task: each task's prompt groups are dealt round-robin from a shuffle."""
    groups = prompt_groups(prompts, near_duplicates)
    tasks = np.asarray(tasks, dtype=object)
    fold_of_group: dict[int, int] = {}  # a prompt under two task labels keeps its first fold
    position = 0
    for task in sorted(set(tasks.tolist())):
        for g in rng.permutation(np.unique(groups[tasks == task])):
            if int(g) not in fold_of_group:
                fold_of_group[int(g)] = position % num_folds
                position += 1  # carried across tasks, so small tasks do not all start in fold 0
    fold_of_row = np.asarray([fold_of_group[int(g)] for g in groups], dtype=np.int64)
    if len(set(fold_of_row.tolist())) < num_folds:
        raise ValueError(f"need at least {num_folds} prompts to make {num_folds} folds")
    return [_fold(f"task-balanced-{k}", fold_of_row == k) for k in range(num_folds)]


def leave_one_task_out_folds(prompts: Sequence[str], tasks: Sequence[str], near_duplicates: bool = True) -> list[Fold]:
    """One fold per task: test on the task, train on every other task's rows except copies of test prompts."""
    groups = prompt_groups(prompts, near_duplicates)
    tasks = np.asarray(tasks, dtype=object)
    names = sorted(set(tasks.tolist()))
    if len(names) < 2:
        raise ValueError(f"leave-one-task-out needs at least 2 tasks, got {names}")
    folds = []
    for task in names:
        test = tasks == task
        # A prompt that also appears under another task label would leak; it stays out of training.
        train = ~np.isin(groups, groups[test])
        folds.append(Fold(f"task:{task}", np.flatnonzero(train), np.flatnonzero(test)))
    return folds


def make_folds(
    kind: SplitKind, prompts: Sequence[str], tasks: Sequence[str] | None, num_folds: int, rng: np.random.Generator,
    near_duplicates: bool = True,
) -> list[Fold]:
    """The outer folds of a split. Task splits need `tasks` (raise ValueError without them). `near_duplicates`
    as in `prompt_groups`."""
    if kind is SplitKind.RANDOM:
        return random_folds(prompts, num_folds, rng, near_duplicates)
    if tasks is None or any(t is None for t in tasks):
        raise ValueError(f"the {kind.value} split needs a task label on every row")
    if kind is SplitKind.TASK_BALANCED:
        return task_balanced_folds(prompts, tasks, num_folds, rng, near_duplicates)
    return leave_one_task_out_folds(prompts, tasks, near_duplicates)


def inner_folds(
    kind: SplitKind, prompts: Sequence[str], tasks: Sequence[str] | None, num_folds: int, rng: np.random.Generator
) -> list[Fold]:
    """Folds inside an outer training part, of the same kind as the outer split so that selection and
    calibration see the shift they will be judged on. For LOTO the inner folds hold whole tasks out (tasks
    dealt into `num_folds` groups), which is LOTO's shift at a fraction of the fits."""
    if kind is not SplitKind.LEAVE_ONE_TASK_OUT:
        return make_folds(kind, prompts, tasks, num_folds, rng)
    assert tasks is not None
    tasks_arr = np.asarray(tasks, dtype=object)
    names = rng.permutation(sorted(set(tasks_arr.tolist())))
    if len(names) < num_folds:
        return random_folds(prompts, num_folds, rng)
    groups = prompt_groups(prompts)
    folds = []
    for k, part in enumerate(np.array_split(names, num_folds)):
        test = np.isin(tasks_arr, part)
        folds.append(Fold(f"tasks:{'+'.join(sorted(part))}", np.flatnonzero(~np.isin(groups, groups[test])), np.flatnonzero(test)))
    return folds


def check_no_leak(folds: Sequence[Fold], prompts: Sequence[str]) -> None:
    """Raises LeakError if any fold has a prompt (by `prompt_key`) or two near-duplicates (`near_duplicate_pairs`)
    split between its train and test rows, or a row in both."""
    keys = prompt_groups(prompts).tolist()
    for fold in folds:
        overlap_rows = np.intersect1d(fold.train, fold.test)
        if overlap_rows.size:
            raise LeakError(f"fold {fold.name}: row {int(overlap_rows[0])} is in both train and test")
        train_keys = {keys[i] for i in fold.train}
        for i in fold.test:
            if keys[i] in train_keys:
                raise LeakError(f"fold {fold.name}: prompt {prompts[i][:60]!r} (row {int(i)}) is also in its training rows, or a near-duplicate of one")


def check_covers(folds: Sequence[Fold], num_rows: int) -> None:
    """Raises ValueError unless every row is a test row of exactly one fold (so out-of-fold predictions exist)."""
    counts = np.bincount(np.concatenate([f.test for f in folds]), minlength=num_rows)
    if counts.shape[0] != num_rows or not np.all(counts == 1):
        raise ValueError("the folds' test parts do not cover every row exactly once")


def row_weights(kind: SplitKind, tasks: Sequence[str] | None, num_rows: int) -> np.ndarray:
    """Weights (summing to 1) that a split scores its out-of-fold predictions with: uniform for `random`,
    equal per task for the task splits."""
    if kind is SplitKind.RANDOM or tasks is None:
        return np.full(num_rows, 1.0 / num_rows)
    return task_balanced_weights(tasks)


def task_balanced_weights(tasks: Sequence[str]) -> np.ndarray:
    tasks_arr = np.asarray(tasks, dtype=object)
    names, inverse, counts = np.unique(tasks_arr.astype(str), return_inverse=True, return_counts=True)
    return 1.0 / (len(names) * counts[inverse])


def balanced_rows(tasks: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Row indices in which every task appears as often as the largest one: each task's rows repeated whole,
    the remainder drawn without replacement. Training on them weighs tasks as the task-balanced score does
    (importance weighting toward a mix where rare tasks are as common as any other; Shimodaira, 2000)."""
    tasks_arr = np.asarray(tasks, dtype=object).astype(str)
    names, inverse = np.unique(tasks_arr, return_inverse=True)
    target = int(np.bincount(inverse).max())
    parts = []
    for k in range(len(names)):
        rows = np.flatnonzero(inverse == k)
        repeats = target // len(rows)
        parts += [np.tile(rows, repeats), rng.choice(rows, target - repeats * len(rows), replace=False)]
    return np.sort(np.concatenate(parts))
