"""``hf-recycle push`` against the local Hub server: repo and branch creation, one commit, errors."""

from __future__ import annotations

import logging

import pytest

from hf_recycle.cli import main
from hf_recycle.errors import HubPushError
from hf_recycle.hub.push import push_folder
from hf_recycle.testing.local_hub import LocalHub


@pytest.fixture(scope="module")
def hub_server():
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The server, with huggingface_hub online and pointed at it, and its token in HF_TOKEN."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setattr(c, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return hub_server


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "model"
    (out / "plots").mkdir(parents=True)
    (out / "README.md").write_text("---\nlicense: mit\n---\n# merged\n")
    (out / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (out / "plots" / "history.png").write_bytes(b"\x89PNG fake image bytes")
    (out / "study.db").write_bytes(b"sqlite")  # never uploaded
    return out


def _files(hub, repo, revision="main"):
    return sorted(f for f in hub.api().list_repo_files(repo, revision=revision) if f != ".gitattributes")


def test_push_creates_repo_and_uploads_one_commit(hub, folder, capsys):
    assert main(["push", "--repo", "me/merged", "--from", str(folder), "--endpoint", hub.endpoint]) == 0
    url = capsys.readouterr().out.strip()
    commits = hub.api().list_repo_commits("me/merged")
    assert url == f"{hub.endpoint}/me/merged/commit/{commits[0].commit_id}"
    assert commits[0].title == "Upload model with hf-recycle"
    assert _files(hub, "me/merged") == ["README.md", "model.safetensors", "plots/history.png"]
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        "me/merged", "model.safetensors", revision=commits[0].commit_id, endpoint=hub.endpoint
    )
    assert open(path, "rb").read() == (folder / "model.safetensors").read_bytes()
    # pushing again into the existing repo is a new commit, not an error
    (folder / "README.md").write_text("# merged v2\n")
    assert (
        main(
            [
                "push",
                "--repo",
                "me/merged",
                "--from",
                str(folder),
                "--message",
                "second",
                "--endpoint",
                hub.endpoint,
            ]
        )
        == 0
    )
    assert hub.api().list_repo_commits("me/merged")[0].title == "second"


def test_push_to_new_branch(hub, folder):
    result = push_folder(folder, "me/branched", branch="trial-7", endpoint=hub.endpoint)
    refs = {b.name: b.target_commit for b in hub.api().list_repo_refs("me/branched").branches}
    assert refs["trial-7"] == result.commit_sha and result.branch == "trial-7"
    assert "model.safetensors" in _files(hub, "me/branched", "trial-7")
    assert "model.safetensors" not in _files(hub, "me/branched", "main")


def _heads(hub, repo):
    return {b.name: b.target_commit for b in hub.api().list_repo_refs(repo).branches}


def test_unchanged_files_to_a_new_branch_report_the_branch_head(hub, folder, capsys):
    assert main(["push", "--repo", "me/same", "--from", str(folder), "--endpoint", hub.endpoint]) == 0
    capsys.readouterr()
    n_commits = len(hub.api().list_repo_commits("me/same"))
    argv = ["push", "--repo", "me/same", "--from", str(folder), "--branch", "v2", "--endpoint", hub.endpoint]
    assert main(argv) == 0
    captured = capsys.readouterr()
    heads = _heads(hub, "me/same")
    # the branch exists, created at main's head (which already holds the files): no new commit
    assert heads["v2"] == heads["main"] and len(hub.api().list_repo_commits("me/same")) == n_commits
    assert captured.out.strip() == f"{hub.endpoint}/me/same/commit/{heads['v2']}"
    assert (
        "made no commit" in captured.err
        and "branch 'v2' of me/same is at commit " + heads["v2"] in captured.err
    )
    result = push_folder(folder, "me/same", branch="v3", endpoint=hub.endpoint)
    assert not result.created_commit and result.branch == "v3"
    assert result.commit_sha == _heads(hub, "me/same")["v3"]
    assert _files(hub, "me/same", "v3") == _files(hub, "me/same", "main")


def test_unchanged_files_on_a_branch_ahead_of_main_report_that_branch(hub, folder):
    push_folder(folder, "me/ahead", endpoint=hub.endpoint)
    (folder / "README.md").write_text("# merged, trial 7\n")
    first = push_folder(folder, "me/ahead", branch="trial-7", endpoint=hub.endpoint)
    assert first.created_commit and first.commit_sha == _heads(hub, "me/ahead")["trial-7"]
    again = push_folder(folder, "me/ahead", branch="trial-7", endpoint=hub.endpoint)
    heads = _heads(hub, "me/ahead")
    assert not again.created_commit and again.commit_sha == heads["trial-7"] == first.commit_sha
    assert again.commit_sha != heads["main"]
    assert again.commit_url == f"{hub.endpoint}/me/ahead/commit/{first.commit_sha}"


def test_no_commit_is_read_from_the_branch_not_from_the_client(hub, folder, monkeypatch):
    """A client that reports main's commit for an upload that made none (as the bug report saw)
    does not change what the push reports: the commit the branch points at."""
    from huggingface_hub import CommitInfo, HfApi

    push_folder(folder, "me/client", endpoint=hub.endpoint)
    (folder / "README.md").write_text("# merged, trial 3\n")
    first = push_folder(folder, "me/client", branch="trial-3", endpoint=hub.endpoint)
    main_sha = _heads(hub, "me/client")["main"]
    real_upload = HfApi.upload_folder

    def upload_reporting_main(self, **kwargs):
        real_upload(self, **kwargs)  # makes no commit: every file is already on the branch
        url = f"{hub.endpoint}/me/client/commit/{main_sha}"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid=main_sha)

    monkeypatch.setattr(HfApi, "upload_folder", upload_reporting_main)
    again = push_folder(folder, "me/client", branch="trial-3", endpoint=hub.endpoint)
    assert again.commit_sha == first.commit_sha == _heads(hub, "me/client")["trial-3"] != main_sha
    assert not again.created_commit and again.commit_url.endswith(f"/commit/{first.commit_sha}")


def test_private_repo_uses_the_token_and_never_shows_it(hub, folder, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    with caplog.at_level(logging.DEBUG):
        assert (
            main(
                [
                    "push",
                    "--repo",
                    "me/private",
                    "--from",
                    str(folder),
                    "--private",
                    "--endpoint",
                    hub.endpoint,
                ]
            )
            == 0
        )
    out = capsys.readouterr()
    assert hub.token not in out.out + out.err + caplog.text
    assert hub.api().model_info("me/private").private
    monkeypatch.delenv("HF_TOKEN")
    # without a token the private repo cannot be written: a typed error that says what to do
    with pytest.raises(HubPushError, match="no token was found.*hf auth login") as info:
        push_folder(folder, "me/private", endpoint=hub.endpoint)
    assert "hf-recycle push --repo me/private --from" in str(info.value)


def test_create_pr_is_passed_through(hub, folder, capsys):
    # The local server has no pull requests: huggingface_hub opens one with POST .../discussions, which the
    # server answers 404. Seeing that request in the error proves create_pr was passed through.
    before = sorted(p.name for p in folder.rglob("*"))
    code = main(["push", "--repo", "me/pr", "--from", str(folder), "--create-pr", "--endpoint", hub.endpoint])
    err = " ".join(capsys.readouterr().err.split())  # the CLI wraps long messages
    assert code == 1
    assert "POST /api/models/me/pr/discussions" in err
    assert "--create-pr" in err and "retry with" in err
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_unreachable_hub_keeps_the_folder_and_says_how_to_retry(hub, folder):
    with pytest.raises(HubPushError) as info:
        push_folder(folder, "me/merged", branch="b1", endpoint="http://127.0.0.1:9")
    message = str(info.value)
    assert "cannot reach the Hub" in message
    assert f"hf-recycle push --repo me/merged --from {folder} --branch b1" in message
    assert (folder / "model.safetensors").is_file()


def test_dry_run_and_bad_arguments(hub, folder, tmp_path, capsys):
    assert main(["push", "--repo", "me/dry", "--from", str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would push 3 file(s)" in out and "model.safetensors" in out and "study.db" not in out
    assert not hub.api().repo_exists("me/dry")
    assert main(["push", "--repo", "not a repo", "--from", str(folder)]) == 1
    assert "is not a repo id" in capsys.readouterr().err
    assert main(["push", "--repo", "me/x", "--from", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
