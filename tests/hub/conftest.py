"""Fixtures of the hub tests: one local Hub server per session, populated with tiny models.

Layout of the served repos (every sha is the one the real client got back on upload):

- ``org/run``: branches ``step-1``, ``step-2``, ``step-10`` (fine-tunes 0, 1, 2), tag ``best`` on step-2.
- ``org/trainer``: ``main`` history like a Trainer with ``hub_strategy="every_save"``: three
  "Training in progress" commits with new weights, and one README-only commit between them.
- ``org/subs``: ``main`` with ``checkpoint-2`` and ``checkpoint-10`` subfolders (with Trainer
  pickles optimizer.pt / training_args.bin next to them) and a ``logs`` folder without weights.
- ``org/lora``: a PEFT adapter at the root. ``org/pickle``: only ``pytorch_model.bin``.
- ``org/empty``: a README only. ``org/secret``: private, a copy of fine-tune 0.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from hf_recycle.testing import models
from hf_recycle.testing.local_hub import LocalHub


@dataclass
class PopulatedHub:
    hub: LocalHub
    base: Path
    ckpts: list[Path]
    shas: dict[str, str] = field(default_factory=dict)  # "org/run@step-1" -> sha the upload returned
    history: list[str] = field(default_factory=list)  # weight commits of org/trainer main, oldest first
    folders: dict[str, Path] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint


def _lora_folder(path: Path) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    )
    gen = torch.Generator().manual_seed(0)
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(
                2, 32, generator=gen
            ),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(
                32, 2, generator=gen
            ),
        },
        str(path / "adapter_model.safetensors"),
    )
    return path


def _publish_all(hub: LocalHub, root: Path, base: Path, ckpts: list[Path]) -> PopulatedHub:
    pop = PopulatedHub(hub=hub, base=base, ckpts=ckpts)
    for name, ckpt in zip(["step-1", "step-2", "step-10"], ckpts, strict=True):
        pop.shas[f"org/run@{name}"] = hub.publish(ckpt, "org/run", branch=name, message=f"step {name}")
    hub.api().create_tag("org/run", tag="best", revision=pop.shas["org/run@step-2"])

    readme = root / "readme-only"
    readme.mkdir()
    (readme / "README.md").write_text("# a model card\n")
    for i, ckpt in enumerate(ckpts):
        pop.history.append(hub.publish(ckpt, "org/trainer", message=f"Training in progress, step {i + 1}"))
        if i == 0:
            pop.shas["org/trainer@readme"] = hub.publish(readme, "org/trainer", message="Update README")
    pop.shas["org/empty@main"] = hub.publish(readme, "org/empty", message="Add README")

    for step, ckpt in [("2", ckpts[0]), ("10", ckpts[1])]:
        folder = root / f"checkpoint-{step}"
        shutil.copytree(ckpt, folder)
        torch.save({"state": {}}, folder / "optimizer.pt")
        torch.save({"args": 1}, folder / "training_args.bin")
        pop.shas[f"org/subs@checkpoint-{step}"] = hub.publish(folder, "org/subs", path_in_repo=folder.name)
    logs = root / "logs"
    logs.mkdir()
    (logs / "events.txt").write_text("loss 1.0\n")
    pop.shas["org/subs@main"] = hub.publish(logs, "org/subs", path_in_repo="logs")

    pop.folders["lora"] = _lora_folder(root / "lora")
    pop.shas["org/lora@main"] = hub.publish(pop.folders["lora"], "org/lora")

    pickle = root / "pickle"
    pickle.mkdir()
    shutil.copy(ckpts[0] / "config.json", pickle / "config.json")
    torch.save(models.load_state_dict(ckpts[0]), pickle / "pytorch_model.bin")
    pop.folders["pickle"] = pickle
    pop.shas["org/pickle@main"] = hub.publish(pickle, "org/pickle")

    pop.shas["org/secret@main"] = hub.publish(ckpts[0], "org/secret", private=True)
    return pop


@pytest.fixture(scope="session")
def populated_hub(tmp_path_factory) -> PopulatedHub:
    """The session's local Hub server with the repos of the module docstring (stopped at the end)."""
    import huggingface_hub.constants as c

    root = tmp_path_factory.mktemp("hub-models")
    base, ckpts = models.build_pool(root / "pool", "llama", n=3, seed=11)
    hub = LocalHub(root=tmp_path_factory.mktemp("hub-storage")).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(c, "HF_HUB_OFFLINE", False)
            mp.setattr(c, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
            pop = _publish_all(hub, root, base, ckpts)
        yield pop
    finally:
        hub.stop()


@pytest.fixture
def local_hub(populated_hub, monkeypatch) -> PopulatedHub:
    """The populated server, with huggingface_hub online and pointed at it (ENDPOINT and URL template)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", populated_hub.endpoint)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", populated_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return populated_hub
