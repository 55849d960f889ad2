"""What a pushed recipe says about local paths: the card template too is named without this machine's paths."""

from __future__ import annotations

import yaml

from hf_recycle.portable import PortableNames
from hf_recycle.recipe import Recipe


def test_card_template_is_named_relative_to_the_run(tmp_path):
    run = tmp_path / "run"
    inside = run / "cards" / "mine.md"
    outside = tmp_path / "elsewhere" / "theirs.md"
    names = PortableNames((run,))
    for template, want in ((inside, "cards/mine.md"), (outside, "theirs.md")):
        data = {"name": "x", "tasks": [], "card": {"template": str(template)}}
        recipe = Recipe.model_validate(data)
        assert names.recipe(recipe).card.template == want
        text = names.recipe_text(yaml.safe_dump(data), recipe)
        assert str(tmp_path) not in text and yaml.safe_load(text)["card"]["template"] == want
    assert names.recipe(Recipe.model_validate({"name": "x", "tasks": []})).card is None
