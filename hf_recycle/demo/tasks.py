"""The demo's two synthetic tasks: data files for the recipe and training batches for the pool.

- ``sorting``: ``"gcaebj:"`` -> ``"abcegj"``, the letters in alphabetical order
  (:data:`SORT_MIN_LEN`..:data:`SORT_MAX_LEN` letters drawn from :data:`SORT_ALPHABET`).
- ``reversal``: ``"kqztbw>"`` -> ``"wbtzqk"`` (lowercase strings of
  :data:`REV_MIN_LEN`..:data:`REV_MAX_LEN` letters).

Both map a string of letters to a permutation of it, so a tiny model that learns one
pulls the other's circuit its own way: training on one task costs the other, which
gives the pool real trade-offs. Both are long enough that exact match stays well below
1.0 for every checkpoint of the pool.

The evaluation examples (``recipes/data/<task>.jsonl``: the search split first, then the
validation split the returned model is chosen on, then the held-out test split) are
generated from a fixed seed, and the training sampler never draws them, so every score the
demo prints is on examples no checkpoint saw.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SORT_ALPHABET = string.ascii_lowercase[:10]
SORT_MIN_LEN = 5
SORT_MAX_LEN = 10
REV_MIN_LEN = 6
REV_MAX_LEN = 12
EVAL_SEED = 1234
SEARCH_SIZE = 256  # rows [0, SEARCH_SIZE) of each data file: the search split
VALIDATION_SIZE = 2048  # the rows after them: the validation split (the winner is chosen there)
TEST_SIZE = 512  # the rows after those: the held-out test split
TASK_NAMES = ("sorting", "reversal")


def sorting_example(rng: random.Random) -> tuple[str, str]:
    """One ``(question, answer)`` of the sorting task."""
    word = "".join(rng.choice(SORT_ALPHABET) for _ in range(rng.randint(SORT_MIN_LEN, SORT_MAX_LEN)))
    return word, "".join(sorted(word))


def reversal_example(rng: random.Random) -> tuple[str, str]:
    """One ``(question, answer)`` of the reversal task."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(REV_MIN_LEN, REV_MAX_LEN)))
    return word, word[::-1]


@dataclass(frozen=True)
class SyntheticTask:
    """A task: its example generator and how a question becomes a prompt.

    Attributes:
        name: Task name (the recipe's task name and data file stem).
        make: ``rng -> (question, answer)``.
        prompt: ``str.format`` template of the prompt over ``question`` (the recipe's ``prompt``).
        max_answer_chars: The longest answer (the recipe's ``max_new_tokens`` must cover it).
    """

    name: str
    make: Callable[[random.Random], tuple[str, str]]
    prompt: str
    max_answer_chars: int


TASKS: dict[str, SyntheticTask] = {
    "sorting": SyntheticTask("sorting", sorting_example, "{question}:", SORT_MAX_LEN),
    "reversal": SyntheticTask("reversal", reversal_example, "{question}>", REV_MAX_LEN),
}


def eval_examples(task: str, seed: int = EVAL_SEED) -> list[tuple[str, str]]:
    """The task's evaluation examples: ``SEARCH_SIZE + VALIDATION_SIZE + TEST_SIZE`` distinct questions, in order."""
    rng = random.Random(f"{seed}-{task}")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    while len(rows) < SEARCH_SIZE + VALIDATION_SIZE + TEST_SIZE:
        question, answer = TASKS[task].make(rng)
        if question not in seen:
            seen.add(question)
            rows.append((question, answer))
    return rows


def write_task_data(folder: str | Path, tasks: Sequence[str] = TASK_NAMES) -> list[Path]:
    """Write ``<folder>/<task>.jsonl`` (fields ``question`` and ``answer``) for every task."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        path = folder / f"{task}.jsonl"
        lines = [json.dumps({"question": q, "answer": a}) for q, a in eval_examples(task)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def mixture_of(sorting: float) -> dict[str, float]:
    """A data mixture of the two tasks: ``sorting`` is the share of sorting examples."""
    if not 0.0 <= sorting <= 1.0:
        raise ValueError(f"the sorting share must be in [0, 1], got {sorting}")
    return {"sorting": sorting, "reversal": 1.0 - sorting}


class TrainingStream:
    """Training examples of a task mixture, never one of the evaluation questions.

    Args:
        seed: Seed of this stream (each training stage has its own).
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._held_out = {task: {q for q, _ in eval_examples(task)} for task in TASK_NAMES}

    def sample(self, shares: Mapping[str, float]) -> tuple[str, str]:
        """One ``(prompt, answer)`` of a task drawn with probability proportional to its share."""
        names = [name for name, share in shares.items() if share > 0]
        if not names:
            raise ValueError(f"a mixture needs a task with a positive share, got {dict(shares)}")
        task = TASKS[self._rng.choices(names, weights=[shares[n] for n in names])[0]]
        while True:
            question, answer = task.make(self._rng)
            if question not in self._held_out[task.name]:
                return task.prompt.format(question=question), answer
