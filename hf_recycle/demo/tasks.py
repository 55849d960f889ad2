"""The demo's two synthetic tasks: data files for the recipe and training batches for the pool.

- ``addition``: ``"347+8="`` -> ``"355"`` (a number below :data:`ADD_A_MAX` plus one below
  :data:`ADD_B_MAX`).
- ``reversal``: ``"kqzt>"`` -> ``"tzqk"`` (lowercase strings of
  :data:`REV_MIN_LEN`..:data:`REV_MAX_LEN` letters).

The evaluation examples (``recipes/data/<task>.jsonl``: the search split first, then the
held-out test split) are generated from a fixed seed, and the training sampler never
draws them, so every score the demo prints is on examples no checkpoint saw.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ADD_A_MAX = 1000
ADD_B_MAX = 10
REV_MIN_LEN = 3
REV_MAX_LEN = 7
EVAL_SEED = 1234
SEARCH_SIZE = 128  # rows [0, SEARCH_SIZE) of each data file: the search split
TEST_SIZE = 384  # the rows after them: the held-out test split
TASK_NAMES = ("addition", "reversal")


def addition_example(rng: random.Random) -> tuple[str, str]:
    """One ``(question, answer)`` of the addition task."""
    a, b = rng.randrange(ADD_A_MAX), rng.randrange(ADD_B_MAX)
    return f"{a}+{b}", str(a + b)


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
    "addition": SyntheticTask(
        "addition", addition_example, "{question}=", len(str(ADD_A_MAX + ADD_B_MAX - 2))
    ),
    "reversal": SyntheticTask("reversal", reversal_example, "{question}>", REV_MAX_LEN),
}


def eval_examples(task: str, seed: int = EVAL_SEED) -> list[tuple[str, str]]:
    """The task's evaluation examples: ``SEARCH_SIZE + TEST_SIZE`` distinct questions, in order."""
    rng = random.Random(f"{seed}-{task}")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    while len(rows) < SEARCH_SIZE + TEST_SIZE:
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


class TrainingStream:
    """Training examples of a task mixture, never one of the evaluation questions.

    Args:
        seed: Seed of this stream (each training stage has its own).
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._held_out = {task: {q for q, _ in eval_examples(task)} for task in TASK_NAMES}

    def sample(self, addition_share: float) -> tuple[str, str]:
        """One ``(prompt, answer)``: an addition example with probability ``addition_share``."""
        task = TASKS["addition" if self._rng.random() < addition_share else "reversal"]
        while True:
            question, answer = task.make(self._rng)
            if question not in self._held_out[task.name]:
                return task.prompt.format(question=question), answer
