"""Every problem knowable before loading a model is reported before loading a model.

``tests/broken_recipes/*.yaml`` is a corpus of broken recipes; each opens with comments that
say what is wrong, the stage that must catch it (``validate``, or ``preflight``: a search,
after resolving the specs and before any download) and each expected problem as
``# expect: LINE: field: message``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hf_recycle.cli import main
from hf_recycle.errors import RecipeError, SearchError
from hf_recycle.preflight import baseline_trials, check_file, check_recipe, check_resolved
from hf_recycle.recipe import SINGLE_OBJECTIVE_SAMPLERS, Recipe, SamplerName, split_error
from hf_recycle.testing import models
from hf_recycle.testing.local_hub import LocalHub

CORPUS = Path(__file__).parent / "broken_recipes"
CASES = sorted(CORPUS.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+): (.+)$")


def _header(path: Path) -> tuple[str, list[tuple[int, str]]]:
    lines = path.read_text().splitlines()
    stage = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("# stage:"))
    expects = [(int(m[1]), m[2]) for m in map(_EXPECT.match, lines) if m]
    assert stage in ("validate", "preflight") and expects, path.name
    return stage, expects


def _assert_reported(path: Path, err: str, expects: list[tuple[int, str]]) -> None:
    lines = [line.removeprefix("error: ") for line in err.splitlines()]
    for line, text in expects:
        where = f"{path}:{line}: "
        assert any(got.startswith(where) and text in got[len(where) :] for got in lines), (where, text, err)


def test_corpus_size_and_coverage():
    stages = [_header(path)[0] for path in CASES]
    assert len(CASES) >= 40
    assert stages.count("validate") / len(stages) >= 0.9


@pytest.fixture
def in_corpus(monkeypatch):
    """Local checkpoint specs resolve against the current folder: the corpus folder."""
    monkeypatch.chdir(CORPUS)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_validate_reports_each_broken_recipe_with_its_line(path, in_corpus, capsys):
    stage, expects = _header(path)
    status = main(["validate", str(path)])
    err = capsys.readouterr().err
    if stage == "preflight":  # valid as far as the file says (maybe with a warning): the search catches it
        assert status == 0, err
        return
    assert status == 1, err
    _assert_reported(path, err, expects)
    counted = re.search(r": (\d+) problems? in the recipe:", err)
    assert (int(counted[1]) if counted else 1) == len(expects), err  # exactly the expected problems


# --- the cases that need the specs resolved: a search fails before any download ---------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local Hub with org/run branches step-1, step-2 and step-10 (three tiny fine-tunes)."""
    import huggingface_hub.constants as c

    _, ckpts = models.build_pool(tmp_path_factory.mktemp("preflight-models"), "llama", n=3, seed=7)
    with LocalHub() as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        for step, ckpt in zip(["step-1", "step-2", "step-10"], ckpts, strict=True):
            hub.publish(ckpt, "org/run", branch=step)
        yield hub


@pytest.fixture
def nothing_loads(served, monkeypatch, tmp_path):
    """Online against the local Hub; any download or checkpoint opening fails the test."""
    import huggingface_hub.constants as c

    import hf_recycle._merge.inputs as inputs
    import hf_recycle.hub.download as download

    armed = [True]  # a module imported meanwhile may keep a guard: it passes through once disarmed

    def guard(original):
        def refuse(*args, **kwargs):
            if armed:
                raise AssertionError("a checkpoint was downloaded or opened before the recipe was checked")
            return original(*args, **kwargs)

        return refuse

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(download, "_download", guard(download._download))
    monkeypatch.setattr(inputs, "open_inputs", guard(inputs.open_inputs))
    monkeypatch.chdir(tmp_path)  # outputs/<name> would land here
    yield served.endpoint
    armed.clear()


PREFLIGHT = [p for p in CASES if _header(p)[0] == "preflight"]


@pytest.mark.parametrize("command", ["search", "run"])
@pytest.mark.parametrize("path", PREFLIGHT, ids=lambda p: p.stem)
def test_search_and_run_refuse_before_any_download(path, command, nothing_loads, tmp_path, capsys):
    _, expects = _header(path)
    assert main([command, str(path), "--endpoint", nothing_loads]) == 1
    _assert_reported(path, capsys.readouterr().err, expects)
    assert not (tmp_path / "outputs").exists(), "the search wrote outputs"
    cache = tmp_path / "hf-cache"  # the session's huggingface_hub cache (tests/conftest.py)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), "something was downloaded"


def test_dry_run_checks_the_resolved_count(nothing_loads, capsys):
    path = CORPUS / "glob_trials_below_baselines.yaml"
    assert main(["run", str(path), "--dry-run", "--endpoint", nothing_loads]) == 1
    _assert_reported(path, capsys.readouterr().err, _header(path)[1])
    # --trials raises the budget: the same recipe plans fine
    assert main(["run", str(path), "--dry-run", "--trials", "6", "--endpoint", nothing_loads]) == 0


# --- the checks one by one ------------------------------------------------------------------------

TASK = {
    "name": "qa",
    "data": {"path": "json", "data_files": "qa.jsonl"},
    "search_split": "train[:2]",
    "test_split": "train[2:]",
    "prompt": "{question}=",
    "target": "{answer}",
}


def _recipe_file(tmp_path: Path, *, data: dict | None = None, **task) -> Path:
    import yaml

    recipe = {
        "name": "t",
        "checkpoints": ["org/run@step-1", "org/run@step-2"],
        "tasks": [{**TASK, **({"data": data} if data else {}), **task}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _messages(report) -> list[str]:
    return [msg for _, msg in report.errors]


def test_first_row_of_each_json_shape_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    shapes = {
        "lines.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        "list.json": json.dumps(rows, indent=2),
        "columns.json": json.dumps({"question": ["1+1"], "answer": ["2"]}),
    }
    for name, text in shapes.items():
        (tmp_path / name).write_text(text)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    data_files = {n: {"path": "json", "data_files": n} for n in shapes}
    data_files["rows.parquet"] = {"path": "parquet", "data_files": "rows.parquet"}
    for name, data in data_files.items():
        assert _messages(check_file(_recipe_file(tmp_path, data=data))) == [], name
        bad = check_file(_recipe_file(tmp_path, data=data, prompt="{q}="))
        assert _messages(bad) == [
            f"names field 'q' but the first row of '{name}' has only question, answer"
        ], name


def test_what_cannot_be_read_cheaply_is_left_to_the_scorer(tmp_path):
    import gzip

    (tmp_path / "qa.jsonl.gz").write_bytes(gzip.compress(b'{"x": 1}\n'))
    (tmp_path / "notes.txt").write_text("a line\n")
    (tmp_path / "qa.csv").write_text("question,answer\n")  # a header and no row
    assert (
        _messages(check_file(_recipe_file(tmp_path, data={"path": "json", "data_files": "qa.jsonl.gz"})))
        == []
    )
    text = check_file(_recipe_file(tmp_path, data={"path": "text", "data_files": "notes.txt"}))
    assert _messages(text) == [
        "names field 'question' but the first row of 'notes.txt' has only text",
        "names field 'answer' but the first row of 'notes.txt' has only text",
    ]
    assert _messages(check_file(_recipe_file(tmp_path, data={"path": "csv", "data_files": "qa.csv"}))) == [
        "data file 'qa.csv' holds no rows"
    ]
    hub = check_file(_recipe_file(tmp_path, data={"path": "openai/gsm8k", "name": "main"}))
    assert hub.errors == [] and hub.warnings == []  # a Hub dataset: nothing to check offline


def test_data_paths_resolve_against_the_recipe_folder_like_the_scorer(tmp_path, monkeypatch):
    from hf_recycle._score.data import load_split
    from hf_recycle._score.tasks import TaskSpec

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "qa.jsonl").write_text(
        '{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n'
    )
    path = _recipe_file(folder)
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    assert check_file(path).errors == []
    assert len(load_split(TaskSpec.model_validate(TASK), "search", folder)) == 2  # the scorer agrees
    (folder / "qa.jsonl").rename(tmp_path / "qa.jsonl")  # now only in the current folder
    assert "data file 'qa.jsonl' does not exist" in _messages(check_file(path))[0]


@pytest.mark.parametrize(
    "split", ["train", "train[:1]", "train[1:]", "train[:50%]", "train[: 1]", "train[:64",
              "train[5]", "train[:1](pct1_dropremainder)", "train[:200%]", "train[-1:]"],
)  # fmt: skip
def test_split_check_agrees_with_load_dataset(split, tmp_path):
    """What the recipe check refuses is exactly what datasets.load_dataset refuses to parse."""
    import datasets

    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"q": i}) + "\n" for i in range(4)))
    try:
        datasets.load_dataset("json", data_files=str(tmp_path / "qa.jsonl"), split=split)
        loads = True
    except ValueError as exc:
        assert "instruction" in str(exc).lower() or "rounding" in str(exc) or "Percent" in str(exc), exc
        loads = False
    assert (split_error(split) is None) == loads


def test_every_sampler_is_classified_as_optuna_behaves():
    """SINGLE_OBJECTIVE_SAMPLERS is exactly the samplers that Optuna refuses in a 2-objective study."""
    import optuna

    from hf_recycle._search.samplers import SAMPLERS, make_sampler
    from hf_recycle._search.space import SearchSpace

    assert set(SAMPLERS) == set(SamplerName.__args__)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    single = set()
    for name in SAMPLERS:
        sampler = make_sampler(name, SearchSpace(2), seed=0, n_objectives=1, trials=12)
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        try:
            study.optimize(lambda t: (t.suggest_float("a", 0, 1), -t.suggest_float("b", 0, 1)), n_trials=6)
        except ValueError:
            single.add(name)
    assert single == set(SINGLE_OBJECTIVE_SAMPLERS)


def test_metric_needing_the_network_is_a_warning_online_and_an_error_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as c

    path = _recipe_file(tmp_path, metric="bleu")
    (tmp_path / "qa.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    offline = check_file(path)
    assert offline.warnings == [] and "the Hub is offline" in _messages(offline)[0]
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_EVALUATE_OFFLINE")
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}:14: tasks[0].metric: warning: metric 'bleu' is not bundled" in err, err
    assert "download it from the Hub when scoring starts" in err


def test_a_metric_in_the_evaluate_cache_needs_nothing(tmp_path):
    """The cache layout the check looks at is the one evaluate.load really reads offline."""
    import shutil

    import evaluate
    from evaluate import config

    from hf_recycle._score.metric import BUNDLED_DIR

    name = "preflight_cached_metric"
    path = _recipe_file(tmp_path, metric=name)
    (tmp_path / "qa.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    assert "not in the evaluate cache" in _messages(check_file(path))[0]
    entry = Path(config.HF_MODULES_CACHE) / config.MODULE_NAME_FOR_DYNAMIC_MODULES / "metrics"
    entry = entry / f"evaluate-metric--{name}" / ("0" * 64)
    entry.mkdir(parents=True)
    try:
        shutil.copy(BUNDLED_DIR / "exact_match" / "exact_match.py", entry / f"{name}.py")
        assert check_file(path).errors == []
        assert evaluate.load(name).compute(predictions=["a"], references=["a"]) == {"exact_match": 1.0}
    finally:
        shutil.rmtree(entry.parent)


def test_a_local_metric_resolves_like_the_scorer(tmp_path):
    from hf_recycle._score.metric import BUNDLED_DIR

    (tmp_path / "qa.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    path = _recipe_file(tmp_path, metric="mine/mine.py")
    assert "metric file 'mine/mine.py' does not exist" in _messages(check_file(path))[0]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.py").write_text((BUNDLED_DIR / "exact_match" / "exact_match.py").read_text())
    assert check_file(path).errors == []


def test_trials_override_and_the_baseline_count():
    assert [baseline_trials(k, ["uniform", "best_single", "greedy_soup"]) for k in (2, 3, 5)] == [3, 6, 10]
    assert baseline_trials(4, ["uniform"]) == 1 and baseline_trials(4, []) == 0
    path = CORPUS / "trials_below_baselines.yaml"
    assert check_file(path, trials=6).errors == []  # --trials 6 covers the 6 baseline trials
    assert "trials (4) is below" in _messages(check_file(path, trials=4))[0]


def test_checks_of_a_recipe_object_locate_problems_in_its_file(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    path = _recipe_file(tmp_path, prompt="{q}=")
    recipe = Recipe.from_yaml(path)  # the schema alone accepts it
    with pytest.raises(RecipeError, match=rf"{re.escape(str(path))}:12: tasks\[0\].prompt: names field 'q'"):
        check_recipe(recipe.model_copy(update={"name": "renamed"}), base_dir=tmp_path)
    built = Recipe.model_validate(recipe.model_dump(by_alias=True))
    assert (
        built == recipe and built.origin is None and recipe.origin is not None
    )  # the origin is not the value
    with pytest.raises(RecipeError, match=r"recipe 't': tasks\[0\].prompt: names field 'q'"):
        check_recipe(built, base_dir=tmp_path)
    with pytest.raises(SearchError, match=rf"{re.escape(str(path))}:2: checkpoints: .* give 1"):
        check_resolved(recipe, 1)
    with pytest.raises(SearchError, match=r"recipe 't': search.trials: trials \(2\) is below the 3"):
        check_resolved(built, 2, trials=2)
    check_resolved(built, 2, trials=3)


def test_merge_refuses_a_bare_b_shard_size_before_resolving(monkeypatch, tmp_path, capsys):
    import hf_recycle.hub.resolve as resolve

    monkeypatch.setattr(resolve, "resolve", lambda *a, **k: pytest.fail("resolved before checking the size"))
    assert main(["merge", "org/run@step-*", "--output", str(tmp_path / "m"), "--max-shard-size", "5B"]) == 1
    err = capsys.readouterr().err
    assert "--max-shard-size '5B' ends in a bare B" in err and "KB, MB, GB, TB, KiB, MiB, GiB" in err
    assert not (tmp_path / "m").exists()
