"""Every spec form against the local Hub, checked against the shas the uploads returned."""

from __future__ import annotations

import pytest

from hf_recycle.errors import (
    CheckpointNotFoundError,
    HubAuthError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    SpecError,
)
from hf_recycle.hub.resolve import resolve


def test_repo_defaults_to_main(local_hub):
    main = {b.name: b.target_commit for b in local_hub.hub.api().list_repo_refs("org/trainer").branches}[
        "main"
    ]
    (pin,) = resolve(["org/trainer"], endpoint=local_hub.endpoint)
    assert (pin.repo_id, pin.revision, pin.commit, pin.subfolder, pin.kind) == (
        "org/trainer",
        "main",
        main,
        None,
        "full",
    )
    assert pin.spec == "org/trainer@main"


def test_branch_tag_and_sha(local_hub):
    sha = local_hub.shas["org/run@step-2"]
    pins = resolve(
        ["org/run@step-2", "org/run@best", f"org/run@{sha}", f"org/run@{sha[:10]}"],
        endpoint=local_hub.endpoint,
    )
    assert [p.commit for p in pins] == [sha] * 4
    assert [p.revision for p in pins] == ["step-2", "best", sha, sha[:10]]


def test_branch_glob_in_natural_order(local_hub):
    pins = resolve("org/run@step-*", endpoint=local_hub.endpoint)
    assert [p.revision for p in pins] == ["step-1", "step-2", "step-10"]
    assert [p.commit for p in pins] == [
        local_hub.shas[f"org/run@{r}"] for r in ("step-1", "step-2", "step-10")
    ]
    assert [p.spec for p in pins] == ["org/run@step-1", "org/run@step-2", "org/run@step-10"]


def test_glob_matches_tags_too(local_hub):
    (pin,) = resolve("org/run@be?t", endpoint=local_hub.endpoint)
    assert (pin.revision, pin.commit) == ("best", local_hub.shas["org/run@step-2"])


def test_subfolder_glob_in_natural_order_skips_folders_without_weights(local_hub):
    pins = resolve("org/subs@main:*", endpoint=local_hub.endpoint)
    assert [p.subfolder for p in pins] == ["checkpoint-2", "checkpoint-10"]  # not logs
    head = local_hub.shas["org/subs@main"]
    assert {p.commit for p in pins} == {head}
    assert pins[1].spec == "org/subs@main:checkpoint-10"


def test_subfolder_at_revision(local_hub):
    sha = local_hub.shas["org/subs@checkpoint-2"]  # checkpoint-10 did not exist yet
    (pin,) = resolve(f"org/subs@{sha}:checkpoint-2", endpoint=local_hub.endpoint)
    assert (pin.commit, pin.subfolder) == (sha, "checkpoint-2")
    with pytest.raises(CheckpointNotFoundError, match="checkpoint-10"):
        resolve(f"org/subs@{sha}:checkpoint-10", endpoint=local_hub.endpoint)


def test_history_keeps_commits_that_changed_weights(local_hub):
    pins = resolve("org/trainer@history", endpoint=local_hub.endpoint)
    assert [p.commit for p in pins] == local_hub.history  # oldest first; no README or initial commit
    assert all(p.revision == p.commit for p in pins)
    assert local_hub.shas["org/trainer@readme"] not in {p.commit for p in pins}


def test_kind_lora_and_local_folders(local_hub, tmp_path):
    (pin,) = resolve("org/lora", endpoint=local_hub.endpoint)
    assert pin.kind == "lora"
    local = resolve([str(local_hub.folders["lora"]), str(local_hub.ckpts[0])])
    assert [p.kind for p in local] == ["lora", "full"]
    assert local[1].to_json() == {
        "repo_id": None,
        "revision": None,
        "commit": None,
        "subfolder": None,
        "kind": "full",
        "path": str(local_hub.ckpts[0].resolve()),
    }


def test_default_endpoint_is_huggingface_hub_constant(local_hub):
    (pin,) = resolve("org/run@step-1")  # the fixture pointed constants.ENDPOINT at the server
    assert pin.commit == local_hub.shas["org/run@step-1"]


def test_private_repo_needs_a_token(local_hub):
    with pytest.raises(HubAuthError, match=r"org/secret.*(no token|HF_TOKEN)"):
        resolve("org/secret", endpoint=local_hub.endpoint)
    (pin,) = resolve("org/secret", endpoint=local_hub.endpoint, token=local_hub.hub.token)
    assert pin.commit == local_hub.shas["org/secret@main"]


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("org/run@nope-*", SpecError, r"'org/run@nope-\*' expands to nothing.*step-10"),
        ("org/subs@main:ckpt-*", SpecError, r"'org/subs@main:ckpt-\*' expands to nothing"),
        ("org/missing", HubRepoNotFoundError, r"'org/missing'.*does not exist"),
        ("org/run@step-99", HubRevisionNotFoundError, r"'step-99'.*org/run@step-99"),
        ("org/empty", CheckpointNotFoundError, r"org/empty@main.*holds no weights"),
        ("org/subs@main:logs", CheckpointNotFoundError, r"'logs'.*holds no weights"),
    ],
)
def test_errors_name_the_spec(local_hub, spec, error, match):
    with pytest.raises(error, match=match):
        resolve(spec, endpoint=local_hub.endpoint)


def test_missing_local_folder(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="holds no weights"):
        resolve(str(tmp_path / "empty"))
