"""RecycleCallback on real Trainer runs of a tiny Llama: full fine-tunes, PEFT LoRA runs, Hub pushes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_recycle.errors import RecycleCallbackError
from hf_recycle.testing import models

SEQ_LEN = 12
GATE_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama and its char tokenizer saved in a folder (the adapters' base_model_name_or_path)."""
    model = models.build_model(models.tiny_llama_config(), seed=5)
    return models.save_checkpoint(model, tmp_path_factory.mktemp("callback-base") / "base")


def _recipe(tmp_path: Path, **search):
    """A recipe with one tiny loglikelihood task (8 examples, 4 searched, 4 held out) in ``tmp_path``."""
    from hf_recycle.recipe import Recipe

    data = tmp_path / "sums.jsonl"
    rows = [
        {"q": f"{a}+{b}", "a": str(a + b)}
        for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (4, 4), (6, 3), (2, 7), (1, 1)]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Recipe.model_validate(
        {
            "name": "callback-test",
            "merge": {"method": "linear", "dtype": "float32", "device": "cpu"},
            "search": {"sampler": "random", "trials": 4, "baselines": ["uniform"], "seed": 0, **search},
            "tasks": [
                {
                    "name": "sums",
                    "data": {"path": "json", "data_files": "sums.jsonl"},  # relative to tmp_path
                    "search_split": "train[:4]",
                    "test_split": "train[4:]",
                    "kind": "loglikelihood",
                    "prompt": "{q}=",
                    "target": "{a}",
                    "batch_size": 4,
                }
            ],
        }
    )


def _train_set(n: int = 16) -> list[dict[str, torch.Tensor]]:
    tok = models.build_char_tokenizer()
    texts = [f"{i % 7}+{i % 5}={i % 7 + i % 5}; {i}".ljust(SEQ_LEN)[:SEQ_LEN] for i in range(n)]
    rows = []
    for text in texts:
        ids = torch.tensor(tok(text)["input_ids"])
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return rows


def _trainer(model, out: Path, callback, *, tokenizer=True, **args):
    from transformers import Trainer, TrainingArguments

    defaults = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
        seed=0,
    )
    defaults.update(args)
    return Trainer(
        model=model,
        args=TrainingArguments(**defaults),
        train_dataset=_train_set(),
        processing_class=models.build_char_tokenizer() if tokenizer else None,
        callbacks=[callback, _LogCatcher()],
    )


class _NoSaveAtLastStep(TrainerCallback):
    """A user callback that skips the Trainer's save at the last step (the Trainer saves there by default)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


class _LogCatcher(TrainerCallback):
    """A stand-in for a reporter (TensorBoard, W&B): keeps every ``logs`` dict the Trainer sends on_log."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


class _CopyOnSave(TrainerCallback):
    """Copies each checkpoint's weights as the Trainer saves it (the Trainer may delete the folder later)."""

    def __init__(self, dest: Path):
        self.dest = dest

    def on_save(self, args, state, control, **kwargs):
        import shutil

        src = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "model.safetensors"
        (self.dest / f"checkpoint-{state.global_step}").mkdir(parents=True)
        shutil.copy2(src, self.dest / f"checkpoint-{state.global_step}" / "model.safetensors")


class _OtherRank(TrainerCallback):
    """Forwards every event to ``inner`` as another process of a distributed run sees it.

    The Trainer sets ``state.is_world_process_zero`` from ``args.process_index``; here each
    event reaches ``inner`` with a copy of the state whose ``is_world_process_zero`` is False,
    and with the real model and tokenizer, in the same folders as the main process.
    """

    def __init__(self, inner):
        self.inner = inner

    def _forward(self, event, args, state, control, **kwargs):
        return getattr(self.inner, event)(
            args, dataclasses.replace(state, is_world_process_zero=False), control, **kwargs
        )

    def on_train_begin(self, *args, **kwargs):
        return self._forward("on_train_begin", *args, **kwargs)

    def on_step_end(self, *args, **kwargs):
        return self._forward("on_step_end", *args, **kwargs)

    def on_epoch_end(self, *args, **kwargs):
        return self._forward("on_epoch_end", *args, **kwargs)

    def on_save(self, *args, **kwargs):
        return self._forward("on_save", *args, **kwargs)

    def on_train_end(self, *args, **kwargs):
        return self._forward("on_train_end", *args, **kwargs)


@pytest.fixture
def local_hub(monkeypatch):
    """A local Hub server that huggingface_hub, and the Trainer's pushes, talk to."""
    import huggingface_hub.constants as c
    import transformers.utils.hub as transformers_hub

    from hf_recycle.testing.local_hub import LocalHub

    with LocalHub() as hub:
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setenv("HF_TOKEN", hub.token)
        # the Trainer pushes through one HfApi shared by the process, which keeps the endpoint it
        # was created with: a fresh one for this server
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
        yield hub


class _UploadGate(TrainerCallback):
    """Holds the Trainer's background Hub uploads until the training reaches a given state.

    Every upload a save starts runs only after that save's ``on_save``: the Trainer has rotated
    old checkpoints by then. (Its ``every_save`` upload lists the whole ``output_dir``, rotated
    checkpoint folders included, and fails when a folder is deleted during the listing: a race
    inside transformers that a test must not depend on.) The first ``slow`` uploads are held
    longer, as on a slow network: through the next save (its push decision and its rotation),
    unless somebody waits for them first (:meth:`waiting`). Nothing here depends on time: each
    upload waits on the event of a training state.
    """

    def __init__(self, slow: int):
        import collections
        import threading

        self.slow = slow
        self.submitted = 0
        self.saves = 0  # on_save events so far
        self.saving = False  # between a step end that asks for a save and that save's on_save
        self.saved = collections.defaultdict(threading.Event)  # save number -> its on_save fired
        self.let_go = collections.defaultdict(threading.Event)  # save number -> its slow uploads may run

    def hold(self) -> list:
        """The events the upload being submitted now waits for (none outside a save)."""
        if not self.saving:
            return []
        save = self.saves + 1
        events = [self.saved[save]]
        if self.submitted < self.slow:
            events.append(self.let_go[save])
        self.submitted += 1
        return events

    def waiting(self) -> None:
        """Somebody waits for the uploads in flight: the slow ones go now."""
        for event in list(self.let_go.values()):
            event.set()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.saving = True

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1
        self.saving = False
        self.saved[self.saves].set()
        if self.saves > 1:
            self.let_go[self.saves - 1].set()

    def on_train_end(self, args, state, control, **kwargs):
        for event in [*self.saved.values(), *self.let_go.values()]:
            event.set()


@pytest.fixture
def slow_uploads(monkeypatch):
    """The Trainer's background Hub jobs (``upload_folder(run_as_future=True)``) wait on an :class:`_UploadGate`.

    The first two are still in flight at the next save unless the callback waits for them: the
    Trainer then skips that save's push, and its rotation deletes the folder that a queued
    upload is about to read. Put the gate in the Trainer with :func:`_gate_uploads`.
    """
    from concurrent import futures

    from huggingface_hub import HfApi

    import hf_recycle.integrations.trainer.callback as callback_module

    gate = _UploadGate(slow=2)
    submit = HfApi.run_as_future

    def run_gated(self, fn, *args, **kwargs):
        events = gate.hold()

        def gated(*a, **kw):
            for event in events:
                if not event.wait(timeout=GATE_TIMEOUT_S):  # a guard against a hang, not a timing
                    raise RuntimeError("the test's upload gate was never opened: a training state never came")
            return fn(*a, **kw)

        return submit(self, gated, *args, **kwargs)

    class _Futures:  # the callback module's ``futures``, telling the gate when the callback waits
        def __getattr__(self, name):
            return getattr(futures, name)

        @staticmethod
        def wait(*args, **kwargs):
            gate.waiting()
            return futures.wait(*args, **kwargs)

    monkeypatch.setattr(HfApi, "run_as_future", run_gated)
    monkeypatch.setattr(callback_module, "futures", _Futures())
    return gate


def _gate_uploads(trainer, gate: _UploadGate) -> None:
    """Put ``gate`` among the Trainer's callbacks after its flow callback (which decides the saves)
    and before the RecycleCallback (which waits for uploads in ``on_step_end`` and ``on_train_end``)."""
    from hf_recycle import RecycleCallback

    callbacks = trainer.callback_handler.callbacks
    at = next(i for i, c in enumerate(callbacks) if isinstance(c, RecycleCallback))
    callbacks.insert(at, gate)


def _commits_by_title(hub, repo: str) -> dict[str, str]:
    return {c.title: c.commit_id for c in hub.api().list_repo_commits(repo)}


def _merged_state(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted((folder / "model").glob("*.safetensors"))
    assert files, f"no merged weights under {folder}"
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def _assert_recycled(out: Path, trainer, n_pool: int) -> dict:
    recycled = out / "_recycled"
    results = json.loads((recycled / "results.json").read_text())
    assert (recycled / "model" / "README.md").is_file()
    assert (recycled / "model" / "results.json").is_file()
    assert len(results["checkpoints"]) == n_pool
    weights = results["winner"]["weights"]
    assert len(weights) == n_pool and min(weights) >= 0
    assert sum(weights) == pytest.approx(1.0, abs=1e-6)
    logged = [e for e in trainer.state.log_history if "recycle/search/mean" in e]
    assert len(logged) == 1
    assert logged[0]["recycle/search/mean"] == pytest.approx(results["winner"]["search"]["mean"])
    assert logged[0]["recycle/test/mean"] == pytest.approx(results["winner"]["test"]["mean"])
    assert [logged[0][f"recycle/weight/{i}"] for i in range(n_pool)] == pytest.approx(weights)
    (catcher,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, _LogCatcher)]
    sent = [logs for logs in catcher.logs if "recycle/search/mean" in logs]  # what reporters got, via on_log
    assert len(sent) == 1 and sent[0]["recycle/search/mean"] == logged[0]["recycle/search/mean"]
    return results


@pytest.mark.slow
def test_full_run_recycles_checkpoints_and_final_weights(tmp_path, base_dir, caplog, monkeypatch):
    import yaml
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    recipe_file = tmp_path / "recipe.yaml"
    data = _recipe(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
    del data["checkpoints"]  # the run supplies them
    recipe_file.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(base_dir)  # task data paths resolve against the recipe file's folder, not the cwd
    out = tmp_path / "run"
    callback = RecycleCallback(recipe_file, keep_checkpoints=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # saves at steps 4 and 8, not at the last step 10 (so the callback saves the final weights itself);
    # save_total_limit=1 deletes checkpoint-4, which keep_checkpoints keeps in the pool.
    trainer = _trainer(model, out, callback, max_steps=10, save_steps=4, save_total_limit=1)
    trainer.add_callback(_NoSaveAtLastStep())
    with caplog.at_level(logging.WARNING, logger="hf_recycle"):
        trainer.train()

    assert [c.step for c in callback.checkpoints] == [4, 8]
    assert (
        not (out / "checkpoint-4").exists()
        and (out / "_recycle/pool/checkpoint-4/model.safetensors").is_file()
    )
    assert not (out / "_recycle/pool/checkpoint-4/optimizer.pt").exists()
    assert (out / "_recycle/final/model.safetensors").is_file()
    assert not any("leave the pool" in r.message for r in caplog.records)

    results = _assert_recycled(out, trainer, 3)
    pool = json.loads((out / "_recycled/pool.json").read_text())
    sources = [Path(c["spec"]) for c in pool["checkpoints"]]
    assert [c["name"] for c in pool["checkpoints"]] == ["checkpoint-4", "checkpoint-8", "final"]
    assert sources[0] == out / "_recycle/pool/checkpoint-4"

    merged = _merged_state(out / "_recycled")
    states = [models.load_state_dict(s) for s in sources]
    w = np.asarray(results["winner"]["weights"])
    assert set(merged) == set(states[0])
    for key, value in merged.items():
        expected = sum(float(wi) * s[key].double() for wi, s in zip(w, states, strict=True))
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_peft_run_recycles_adapter_checkpoints(tmp_path, base_dir):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer = _trainer(model, out, callback, max_steps=8, save_steps=4, learning_rate=2e-2)
    trainer.train()

    assert [(c.step, c.kind) for c in callback.checkpoints] == [(4, "lora"), (8, "lora")]
    assert not (out / "_recycle/final").exists()  # the last save was at the last step
    results = _assert_recycled(out, trainer, 2)

    # merged = base + Σ wᵢ ΔWᵢ, ΔWᵢ from peft's own merge of each adapter checkpoint
    w = results["winner"]["weights"]
    merged = _merged_state(out / "_recycled")
    base = models.load_state_dict(base_dir)
    expected = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in base.items()}
    for wi, step in zip(w, (4, 8), strict=True):
        full = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        state = PeftModel.from_pretrained(full, out / f"checkpoint-{step}").merge_and_unload().state_dict()
        for key in expected:
            expected[key] += wi * state[key].double()
    changed = 0
    for key, value in expected.items():
        torch.testing.assert_close(merged[key].double(), value, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(merged[key], base[key])
    assert changed > 0


def test_fewer_than_two_checkpoints_warns_and_does_nothing(tmp_path, base_dir, caplog):
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    trainer = _trainer(model, out, callback, max_steps=8, save_steps=4, save_total_limit=1)
    with caplog.at_level(logging.WARNING, logger="hf_recycle"):
        trainer.train()

    messages = [r.getMessage() for r in caplog.records]
    assert [r.funcName for r in caplog.records if "save_total_limit=1" in r.getMessage()] == [
        "on_train_begin"
    ]
    assert any("save_total_limit=1" in m and "keep_checkpoints=True" in m for m in messages)
    assert any("leave the pool: checkpoint-4" in m for m in messages)
    assert any("needs at least 2: nothing recycled" in m for m in messages)
    assert not (out / "_recycled/results.json").exists()
    assert callback.results is None
    assert not any("recycle/search/mean" in e for e in trainer.state.log_history)


def test_trainer_without_tokenizer_fails_before_training(tmp_path, base_dir):
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    trainer = _trainer(
        model,
        tmp_path / "run",
        RecycleCallback(_recipe(tmp_path), base_dir=tmp_path),
        tokenizer=False,
        max_steps=4,
    )
    with pytest.raises(RecycleCallbackError, match="needs a tokenizer"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_recipe_checks_and_overrides(tmp_path):
    from hf_recycle import RecycleCallback

    recipe = _recipe(tmp_path)
    with pytest.raises(RecycleCallbackError, match="no tasks"):
        RecycleCallback(recipe.model_copy(update={"tasks": []}))
    with pytest.raises(RecycleCallbackError, match="no push: section"):
        RecycleCallback(recipe, push=True)
    callback = RecycleCallback(recipe, trials=7, push_to="me/recycled")
    assert callback.recipe.search.trials == 7
    assert callback.recipe.push.repo == "me/recycled" and callback.push
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntasks: []\nsearch: {trails: 3}\n")
    from hf_recycle.errors import RecipeError

    with pytest.raises(RecipeError, match="trails"):
        RecycleCallback(path)


def test_only_the_main_process_records(tmp_path, base_dir):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    models.save_checkpoint(models.build_model(models.tiny_llama_config()), out / "checkpoint-3")
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True)
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path)
    other = TrainerState(global_step=3, is_world_process_zero=False)
    callback.on_train_begin(args, other, TrainerControl())  # no tokenizer check off the main process
    callback.on_save(args, other, TrainerControl())
    callback.on_train_end(args, other, TrainerControl())
    assert callback.checkpoints == [] and not (out / "_recycled").exists()

    main = TrainerState(global_step=3, is_world_process_zero=True)
    callback.on_save(args, main, TrainerControl())
    assert [(c.step, c.kind, c.spec()) for c in callback.checkpoints] == [
        (3, "full", str(out / "checkpoint-3"))
    ]


@pytest.mark.slow
def test_hub_all_checkpoints_brings_back_rotated_checkpoints_and_pushes(
    tmp_path, base_dir, local_hub, slow_uploads
):
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, push_to="me/run-recycled")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # saves at 4 and 8; save_total_limit=1 deletes checkpoint-4 at the save of step 8, while the
    # Trainer's upload of checkpoint-4 may still be queued: the callback waits for it before that save
    trainer = _trainer(
        model,
        out,
        callback,
        max_steps=8,
        save_steps=4,
        save_total_limit=1,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_strategy="all_checkpoints",
    )
    trainer.add_callback(_CopyOnSave(tmp_path / "copies"))
    _gate_uploads(trainer, slow_uploads)
    trainer.train()

    commits = _commits_by_title(local_hub, "me/run")
    pushed = [commits[f"Training in progress, step {n}, checkpoint"] for n in (4, 8)]
    assert [c.hub_spec for c in callback.checkpoints] == [
        f"me/run@{pushed[0]}:checkpoint-4",
        f"me/run@{pushed[1]}:checkpoint-8",
    ]
    assert not (out / "checkpoint-4").exists()
    results = _assert_recycled(out, trainer, 2)
    first, second = results["checkpoints"]
    assert (first["repo_id"], first["commit"], first["subfolder"]) == ("me/run", pushed[0], "checkpoint-4")
    assert second["path"] == str((out / "checkpoint-8").resolve())

    # checkpoint-4 on the Hub holds the weights the Trainer saved at step 4
    on_hub = hf_hub_download("me/run", "checkpoint-4/model.safetensors", revision=pushed[0])
    saved = models.load_state_dict(tmp_path / "copies/checkpoint-4")
    hub_state = load_file(on_hub)
    assert set(hub_state) == set(saved)
    assert all(torch.equal(hub_state[k], saved[k]) for k in saved)
    files = local_hub.api().list_repo_files("me/run-recycled")
    assert "README.md" in files and any(f.endswith(".safetensors") for f in files)


@pytest.mark.slow
def test_hub_every_save_recycles_rotated_checkpoints_from_their_commits(
    tmp_path, base_dir, local_hub, slow_uploads
):
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # saves at 4, 8 and 12, each one a commit of the repo's root; save_total_limit=1 leaves only
    # checkpoint-12 on disk, so checkpoints 4 and 8 come back from the commits that pushed them
    trainer = _trainer(
        model,
        out,
        callback,
        max_steps=12,
        save_steps=4,
        save_total_limit=1,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_strategy="every_save",
    )
    trainer.add_callback(_CopyOnSave(tmp_path / "copies"))
    _gate_uploads(trainer, slow_uploads)
    trainer.train()

    commits = _commits_by_title(local_hub, "me/run")
    shas = [commits[f"Training in progress, step {n}"] for n in (4, 8, 12)]  # every save was pushed
    assert [(c.step, c.hub_spec) for c in callback.checkpoints] == [
        (n, f"me/run@{sha}") for n, sha in zip((4, 8, 12), shas, strict=True)
    ]
    assert not (out / "checkpoint-4").exists() and not (out / "checkpoint-8").exists()
    results = _assert_recycled(out, trainer, 3)
    assert [c.get("commit") for c in results["checkpoints"][:2]] == shas[:2]
    assert results["checkpoints"][2]["path"] == str((out / "checkpoint-12").resolve())

    # each pushed commit holds the weights the Trainer saved at that step
    sources = []
    for n, sha in zip((4, 8), shas[:2], strict=True):
        hub_state = load_file(hf_hub_download("me/run", "model.safetensors", revision=sha))
        saved = models.load_state_dict(tmp_path / f"copies/checkpoint-{n}")
        assert set(hub_state) == set(saved) and all(torch.equal(hub_state[k], saved[k]) for k in saved)
        sources.append(hub_state)
    sources.append(models.load_state_dict(out / "checkpoint-12"))
    assert not all(torch.equal(sources[0][k], sources[1][k]) for k in sources[0])  # training moved them

    merged = _merged_state(out / "_recycled")
    w = results["winner"]["weights"]
    assert set(merged) == set(sources[0])
    for key, value in merged.items():
        expected = sum(float(wi) * s[key].double() for wi, s in zip(w, sources, strict=True))
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_other_processes_of_a_distributed_run_do_nothing(tmp_path, base_dir):
    from transformers import AutoModelForCausalLM

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    main = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path)
    other = RecycleCallback(
        _recipe(tmp_path), base_dir=tmp_path, keep_checkpoints=True, output_dir=tmp_path / "other"
    )
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    trainer = _trainer(model, out, main, max_steps=6, save_steps=3, save_total_limit=1)
    trainer.add_callback(_OtherRank(other))
    trainer.add_callback(_NoSaveAtLastStep())
    trainer.train()

    # the main process recycled checkpoint-3 and the final weights (the last save was not at step 6)
    _assert_recycled(out, trainer, 2)
    # the other process recorded, kept, saved and recycled nothing, and logged no score
    assert other.checkpoints == [] and other.results is None
    assert not (tmp_path / "other").exists() and not (out / "_recycle/pool").exists()
    assert len([e for e in trainer.state.log_history if "recycle/search/mean" in e]) == 1


def test_resumed_run_picks_up_earlier_checkpoints(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    model = models.build_model(models.tiny_llama_config())
    models.save_checkpoint(model, out / "_recycle/pool/checkpoint-2")  # kept, then rotated away
    models.save_checkpoint(model, out / "checkpoint-4")
    models.save_checkpoint(model, out / "checkpoint-9")  # from an earlier, longer run: not ours
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True)
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, tokenizer=models.build_char_tokenizer())
    callback.on_train_begin(args, TrainerState(global_step=4), TrainerControl())
    assert [(c.step, c.spec()) for c in callback.checkpoints] == [
        (2, str(out / "_recycle/pool/checkpoint-2")),
        (4, str(out / "checkpoint-4")),
    ]
