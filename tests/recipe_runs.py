"""Helpers of the ``hf-recycle run`` tests (test_pipeline.py, test_final_merge.py).

A local Hub serves ``demo/tiny-lm`` (fixtures ``tiny_lm_served`` and ``tiny_lm_hub`` in
conftest.py): branch ``base`` and the ``step-*`` branches holding three fine-tunes. The
recipes here search them on two small tasks whose data :func:`write_data` writes.
"""

from __future__ import annotations

import json

import yaml

from hf_recycle.testing import models

STEPS = ["step-1", "step-2", "step-10"]


def write_data(folder):
    """Write the data of the recipe's tasks: data/addition.jsonl and data/reversal.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "addition.jsonl").write_text(
        "".join(json.dumps({"question": f"{i}+{i + 1}", "answer": str(2 * i + 1)}) + "\n" for i in range(8))
    )
    words = ["abc", "hello", "merge", "tiny", "model", "step", "data", "soup"]
    (folder / "reversal.jsonl").write_text(
        "".join(json.dumps({"word": w, "reversed": w[::-1]}) + "\n" for w in words)
    )


def write_recipe(tmp_path, name, **overrides):
    """Write ``tmp_path/<name>.yaml`` (and its data) searching demo/tiny-lm@step-*; ``overrides``
    update the recipe's sections."""
    recipe = {
        "name": name,
        "checkpoints": ["demo/tiny-lm@step-*"],
        "base": "demo/tiny-lm@base",
        "merge": {"method": "linear", "dtype": "float32", "device": "cpu"},
        "search": {"sampler": "cmaes", "trials": 8, "seed": 0},
        "tasks": [
            {
                "name": "addition",
                "data": {"path": "json", "data_files": "data/addition.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "generate",
                "prompt": "{question}=",
                "target": "{answer}",
                "max_new_tokens": 2,
            },
            {
                "name": "reversal",
                "data": {"path": "json", "data_files": "data/reversal.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{word}>",
                "target": "{reversed}",
            },
        ],
        "output": {"dir": str(tmp_path / "out" / name)},
        "push": {"repo": f"demo/{name}"},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    write_data(tmp_path / "data")
    path = tmp_path / f"{name}.yaml"
    path.write_text("# hf-recycle run " + path.name + " --push\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def download_state(repo, revision, endpoint, tmp_path):
    """Download ``repo@revision`` with huggingface_hub: ``(folder, state dict)``."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo, revision=revision, endpoint=endpoint, cache_dir=tmp_path / "verify-cache"
    )
    return folder, models.load_state_dict(folder)
