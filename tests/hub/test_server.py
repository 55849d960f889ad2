"""The local Hub server: raw protocol details, persistence, and a user who sets HF_ENDPOINT."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from hf_recycle.commands.hub import TOKEN_ENV
from hf_recycle.testing.hub_store import git_blob_sha
from hf_recycle.testing.local_hub import LocalHub
from hf_recycle.testing.server import new_token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _request(url, method="GET"):
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, method=method)) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_resolve_urls_head_get_and_redirect(local_hub):
    sha = local_hub.shas["org/run@step-1"]
    data = (local_hub.ckpts[0] / "config.json").read_bytes()
    for method in ("HEAD", "GET"):
        status, headers, body = _request(f"{local_hub.endpoint}/org/run/resolve/step-1/config.json", method)
        assert status == 200
        assert headers["X-Repo-Commit"] == sha
        assert headers["ETag"] == f'"{git_blob_sha(data)}"'
        assert int(headers["Content-Length"]) == len(data)
        assert body == (data if method == "GET" else b"")
    status, headers, _ = _request(f"{local_hub.endpoint}/org/run/resolve/step-1/model.safetensors", "HEAD")
    size = (local_hub.ckpts[0] / "model.safetensors").stat().st_size
    assert status == 302 and headers["X-Linked-Size"] == str(size) and headers["X-Repo-Commit"] == sha
    status, headers, body = _request(local_hub.endpoint + headers["Location"])
    assert status == 200 and len(body) == size and headers["X-Repo-Commit"] == sha
    status, headers, _ = _request(f"{local_hub.endpoint}/org/run/resolve/step-1/nope.json", "HEAD")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    status, headers, _ = _request(f"{local_hub.endpoint}/org/secret/resolve/main/config.json", "HEAD")
    assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"


def test_tree_listing_and_commits(local_hub):
    api = local_hub.hub.api()
    top = {e.path for e in api.list_repo_tree("org/subs")}
    assert {"checkpoint-2", "checkpoint-10", "logs", ".gitattributes"} == top
    files = api.list_repo_files("org/subs", revision=local_hub.shas["org/subs@checkpoint-10"])
    assert "checkpoint-10/model.safetensors" in files and "logs/events.txt" not in files
    sub = {e.path for e in api.list_repo_tree("org/subs", path_in_repo="checkpoint-2")}
    assert "checkpoint-2/model.safetensors" in sub
    commits = api.list_repo_commits("org/trainer")
    assert commits[-1].title == "initial commit"
    assert [c.commit_id for c in commits if c.title.startswith("Training")][::-1] == local_hub.history
    assert api.model_info("org/run", revision="best").sha == local_hub.shas["org/run@step-2"]


def test_storage_survives_restart(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    with LocalHub(tmp_path / "root") as hub:
        sha = hub.publish(folder, "org/keep", branch="b1", tag="t1")
    with LocalHub(tmp_path / "root") as hub:
        refs = hub.api().list_repo_refs("org/keep")
        assert {b.name: b.target_commit for b in refs.branches}["b1"] == sha
        assert [t.target_commit for t in refs.tags] == [sha]
        commit = hub.api().list_repo_commits("org/keep", revision="b1")
        assert commit[0].commit_id == sha and len(commit) == 2


@pytest.mark.slow
def test_cli_serve_with_hf_endpoint_in_a_fresh_python(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "home")
    token = new_token()
    server = subprocess.Popen(
        [sys.executable, "-m", "hf_recycle.cli", "hub", "serve", "--root", str(tmp_path / "root")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, TOKEN_ENV: token},
    )
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        (tmp_path / "up").mkdir()
        (tmp_path / "up" / "config.json").write_text('{"a": 1}')
        code = (
            "import sys\n"
            "from huggingface_hub import HfApi, snapshot_download\n"
            "api = HfApi()\n"
            "api.create_repo('demo/x')\n"
            "sha = api.upload_folder(repo_id='demo/x', folder_path=sys.argv[1]).oid\n"
            "assert api.list_repo_refs('demo/x').branches[0].target_commit == sha\n"
            "print(open(snapshot_download('demo/x') + '/config.json').read())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "up")],
            env={**env, "HF_ENDPOINT": url, "HF_TOKEN": token, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == '{"a": 1}'
    finally:
        server.terminate()
        server.wait(timeout=10)
