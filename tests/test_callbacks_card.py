"""RecycleCallback refuses a bad card template when it is made, before any training."""

from __future__ import annotations

import pytest

from hf_recycle.errors import RecycleCallbackError
from hf_recycle.recipe import Recipe

TASK = {"name": "t", "data": {"path": "json", "data_files": "d.jsonl"}, "prompt": "{q}", "target": "{a}"}


def _recipe(template: str) -> Recipe:
    return Recipe.model_validate({"name": "cb", "tasks": [TASK], "card": {"template": template}})


def test_missing_and_broken_templates_fail_at_construction(tmp_path):
    from hf_recycle import RecycleCallback

    with pytest.raises(RecycleCallbackError, match=r"card.template: .*missing\.md"):
        RecycleCallback(_recipe("missing.md"), base_dir=tmp_path)
    (tmp_path / "broken.md").write_text("{{ card_data }}\n{% if %}\n")
    with pytest.raises(RecycleCallbackError, match=r"card.template: .*broken\.md"):
        RecycleCallback(_recipe("broken.md"), base_dir=tmp_path)
    (tmp_path / "good.md").write_text("---\n{{ card_data }}\n---\n# {{ title }}\n")
    callback = RecycleCallback(_recipe("good.md"), base_dir=tmp_path)
    assert callback.recipe.card.template == "good.md"
