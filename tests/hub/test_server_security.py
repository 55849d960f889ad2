"""The local Hub's guarantees: paths stay under --root, a token for writes and private reads
(never logged), loopback unless allowed, and a listen queue deep enough for many clients."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hf_recycle import cli
from hf_recycle.commands.hub import TOKEN_ENV
from hf_recycle.errors import LocalHubConfigError
from hf_recycle.testing.hub_store import git_blob_sha
from hf_recycle.testing.local_hub import LocalHub
from hf_recycle.testing.server import LocalHubServer, make_server, new_token

OUTSIDE = "SENTINEL-OUTSIDE-THE-ROOT"
WRONG = "hf_not_the_server_token"


def _request(endpoint: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes = b""):
    """One raw request (no redirect following, no client-side path normalisation)."""
    url = urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _server_log(level: int):
    """The server module's log lines (a handler of its own: the CLI may have stopped propagation)."""
    logger = logging.getLogger("hf_recycle.testing.server")
    lines: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: lines.append(record.getMessage())
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A hub with public ``org/open`` and private ``org/closed``, next to files outside its root."""
    import huggingface_hub.constants as c

    tmp = tmp_path_factory.mktemp("secured")
    fake_repo = tmp / "outside" / "org" / "name"  # looks like a repo folder, but outside the root
    fake_repo.mkdir(parents=True)
    (fake_repo / "repo.json").write_text(json.dumps({"private": False, "note": OUTSIDE}))
    (fake_repo / "refs.json").write_text(
        json.dumps({"heads": {"main": "0" * 40, OUTSIDE: "0" * 40}, "tags": {}})
    )
    (tmp / "sentinel.txt").write_text(OUTSIDE)
    for name, weights in [("open", b"public weights"), ("closed", b"private weights")]:
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text('{"a": 1}')
        (tmp / name / "model.safetensors").write_bytes(weights)
    with LocalHub(tmp / "root") as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        shas = {
            "open": hub.publish(tmp / "open", "org/open"),
            "closed": hub.publish(tmp / "closed", "org/closed", private=True),
        }
        (hub.root / "repos" / "models" / "linked").symlink_to(tmp / "outside" / "org")
        yield hub, tmp, shas


@pytest.fixture
def hub(secured, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    return secured[0]


# --- 1. paths and object ids stay under the root -------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/_blobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/_blobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd?type=model&repo=org%2Fopen&commit=main",
        "SENTINEL_BLOB",  # an oid whose tail is the absolute path of a file outside the root
        "/api/models/..%2F..%2F..%2Foutside%2Forg/name",
        "/api/models/..%2F..%2F..%2Foutside%2Forg/name/refs",
        "/..%2F..%2F..%2Foutside%2Forg/name/resolve/main/config.json",
        "/api/models/linked/name/refs",  # a symlink under the root that leads out of it
        "/api/models/..%2F..%2F..%2Foutside%2Forg/name/tree/main",
    ],
)
def test_no_route_reads_outside_the_root(hub, secured, path):
    if path == "SENTINEL_BLOB":
        path = "/_blobs/" + quote("xx" + str(secured[1] / "sentinel.txt"), safe="")
    for headers in ({}, _bearer(hub.token)):
        status, _, body = _request(hub.endpoint, path, headers=headers)
        assert status in (400, 401, 404), (path, status, body[:200])
        assert OUTSIDE.encode() not in body and b"root:" not in body


def test_a_blob_is_served_only_through_a_repo_that_holds_it(hub, secured, tmp_path):
    shas = secured[2]
    private_oid = git_blob_sha(b"private weights")
    status, headers, _ = _request(
        hub.endpoint, "/org/closed/resolve/main/model.safetensors", "HEAD", _bearer(hub.token)
    )
    assert status == 302 and headers["X-Repo-Commit"] == shas["closed"]
    location = headers["Location"]
    # the redirect target checks access like /resolve/ does
    assert _request(hub.endpoint, location)[0] == 401
    assert _request(hub.endpoint, location, headers=_bearer(WRONG))[0] == 401
    status, headers, body = _request(hub.endpoint, location, headers=_bearer(hub.token))
    assert (status, body, headers["X-Repo-Commit"]) == (200, b"private weights", shas["closed"])
    # a bare object id, or one asked through a repo that does not hold it, is no way around it
    for path in (
        f"/_blobs/{private_oid}",
        f"/_blobs/{private_oid}?type=model&repo=org%2Fopen&commit={shas['open']}",
        f"/_blobs/{private_oid}?type=model&repo=org%2Fopen&commit={shas['closed']}",
    ):
        status, _, body = _request(hub.endpoint, path, headers=_bearer(hub.token))
        assert status == 404 and b"private weights" not in body
    # the real client downloads through the redirect with the token, and not without it
    from huggingface_hub import hf_hub_download

    path = hf_hub_download("org/closed", "model.safetensors", endpoint=hub.endpoint, token=hub.token)
    assert Path(path).read_bytes() == b"private weights"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "org/closed", "model.safetensors", endpoint=hub.endpoint, token=False, cache_dir=tmp_path
        )


# --- 2. the token ----------------------------------------------------------------------------


WRITES = {
    "create_repo": lambda api: api.create_repo("org/new"),
    "delete_repo": lambda api: api.delete_repo("org/open"),
    "settings": lambda api: api.update_repo_settings("org/open", private=True),
    "commit": lambda api: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/open"),
    "delete_file": lambda api: api.delete_file("config.json", repo_id="org/open"),
    "create_branch": lambda api: api.create_branch("org/open", branch="b"),
    "delete_branch": lambda api: api.delete_branch("org/open", branch="main"),
    "create_tag": lambda api: api.create_tag("org/open", tag="t"),
    "delete_tag": lambda api: api.delete_tag("org/open", tag="v0"),
}


@pytest.mark.parametrize("token", [False, WRONG], ids=["no-token", "wrong-token"])
@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_needs_the_token(hub, write, token):
    api = hub.api()
    api.create_tag("org/open", tag="v0", exist_ok=True)
    before = api.list_repo_refs("org/open"), api.model_info("org/open")
    with pytest.raises(HfHubHTTPError) as info:
        WRITES[write](HfApi(endpoint=hub.endpoint, token=token))
    assert info.value.response.status_code == 401
    after = api.list_repo_refs("org/open"), api.model_info("org/open")
    assert after[0] == before[0] and after[1].sha == before[1].sha and not after[1].private
    assert not api.repo_exists("org/new")


def test_private_reads_need_the_token_and_a_wrong_token_is_refused_everywhere(hub):
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError) as info:
        anonymous.model_info("org/closed")
    assert info.value.response.status_code == 401
    wrong = HfApi(endpoint=hub.endpoint, token=WRONG)
    for call in (lambda: wrong.model_info("org/closed"), lambda: wrong.model_info("org/open"), wrong.whoami):
        with pytest.raises(HfHubHTTPError) as info:
            call()
        assert info.value.response.status_code == 401
        assert info.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert hub.api().model_info("org/closed").private
    assert anonymous.model_info("org/open").sha  # public reads need no token
    assert hub.api().whoami()["name"] == "user"


def test_the_token_is_never_read_from_a_query_nor_logged(hub):
    body = json.dumps({"name": "from-query", "organization": "org"}).encode()
    for name in ("token", "access_token", "hf_token", "authorization"):
        status, _, _ = _request(hub.endpoint, f"/api/repos/create?{name}={hub.token}", "POST", body=body)
        assert status == 401
    with _server_log(logging.DEBUG) as lines:
        _request(hub.endpoint, "/api/models/org/closed", headers=_bearer(hub.token))
        _request(hub.endpoint, f"/api/models/org/closed?token={hub.token}", headers=_bearer(WRONG))
        hub.api().list_repo_refs("org/closed")
    text = "\n".join(lines)
    assert "/api/models/org/closed" in text and "/refs" in text  # requests are logged...
    assert hub.token not in text and WRONG not in text  # ...without their token


def test_local_hub_tokens_are_random_and_checked(tmp_path):
    a, b = LocalHub(tmp_path / "a"), LocalHub(tmp_path / "b")
    assert a.token != b.token and a.token.startswith("hf_") and len(a.token) > 40
    assert LocalHub(tmp_path / "c", token="hf_chosen").token == "hf_chosen"
    for bad in ("", "two words", "caf\u00e9", "line\nbreak"):
        with pytest.raises(LocalHubConfigError, match="visible ASCII") as info:
            LocalHub(tmp_path / "d", token=bad)
        assert not bad or bad not in str(info.value)
    assert not (tmp_path / "d").exists()


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.slow
def test_cli_prints_a_generated_token_once_and_never_a_given_one(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    given = new_token()
    for server_env, token in [(env, None), ({**env, TOKEN_ENV: given}, given)]:
        server = subprocess.Popen(
            [sys.executable, "-m", "hf_recycle.cli", "hub", "serve", "--root", str(tmp_path / "root")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=server_env,
        )
        err_lines: queue.Queue[str] = queue.Queue()  # stderr, read aside so that no read blocks forever
        reader = threading.Thread(target=_pump, args=(server.stderr, err_lines), daemon=True)
        reader.start()
        try:
            url = server.stdout.readline().strip()
            seen = [""]
            if token is None:  # generated: on stderr, once
                while "token" not in seen[-1]:
                    seen.append(err_lines.get(timeout=120))
                token = seen[-1].strip().rsplit(" ", 1)[-1]
            HfApi(endpoint=url, token=token).create_repo("org/cli", exist_ok=True)
            with pytest.raises(HfHubHTTPError):
                HfApi(endpoint=url, token=False).create_repo("org/cli2")
        finally:
            server.terminate()
            out = server.communicate(timeout=30)[0]
            reader.join(timeout=30)
        printed = url + "\n" + out + "".join(seen + list(err_lines.queue))
        assert printed.count(token) == (0 if token == given else 1)


# --- 3. loopback only, unless allowed ----------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.1", "example.com"])
def test_non_loopback_hosts_are_refused(tmp_path, capsys, host):
    with pytest.raises(LocalHubConfigError, match="--allow-remote"):
        make_server(tmp_path / "root", host)
    with pytest.raises(LocalHubConfigError, match="allow_remote"):
        LocalHub(tmp_path / "root", host=host)
    assert cli.main(["hub", "serve", "--root", str(tmp_path / "root"), "--host", host]) == 1
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "Traceback" not in err
    assert not (tmp_path / "root").exists()  # refused before anything is written


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_are_served(tmp_path, host, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    try:
        hub = LocalHub(tmp_path, host=host).start()
    except OSError as exc:  # e.g. no IPv6 on this machine
        pytest.skip(f"cannot bind {host}: {exc}")
    try:
        assert hub.api().whoami()["name"] == "user"
    finally:
        hub.stop()


def test_allow_remote_binds_every_interface_with_a_warning(tmp_path):
    with _server_log(logging.WARNING) as lines:
        server = make_server(tmp_path, "0.0.0.0", allow_remote=True)
    try:
        assert server.server_address[0] == "0.0.0.0"
        text = "\n".join(lines)
        assert "other machines" in text and "plain HTTP" in text and server.token not in text
    finally:
        server.server_close()


# --- 5. many clients at once ------------------------------------------------------------------


def test_the_listen_queue_is_deep(hub):
    assert LocalHubServer.request_queue_size >= 128
    assert hub._server.request_queue_size == LocalHubServer.request_queue_size


def test_200_concurrent_downloads_all_succeed(hub):
    clients = 200
    barrier = threading.Barrier(clients)

    def download(_):
        barrier.wait(timeout=120)  # everyone connects at once
        return _request(hub.endpoint, "/org/open/resolve/main/config.json")

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(download, range(clients)))
    assert [(status, body) for status, _, body in results] == [(200, b'{"a": 1}')] * clients


def test_an_oversized_json_body_is_refused_before_it_is_read(hub):
    url = urlsplit(hub.endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.putrequest("POST", "/api/validate-yaml")
        conn.putheader("Content-Length", str(1 << 30))  # announced, never sent
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and resp.getheader("Connection") == "close"
    finally:
        conn.close()
