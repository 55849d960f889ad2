"""The examples of README.md and docs/*.md run as written, their links resolve, and the README
stays under 12,000 bytes (the reference lives in docs/).

A fenced block is run when the line before its fence is an HTML comment (invisible on GitHub):

- ``<!-- runnable -->`` before a ``bash``/``shell`` block (run with ``bash -e -o pipefail``) or a
  ``python`` block (run with the venv's python);
- ``<!-- runnable file=PATH -->`` before any block: its text is written to ``PATH`` (a recipe,
  a data file) for the blocks after it;
- ``exit=N`` (with either) when the example shows a command that fails with status N.

The runnable blocks of one page run in order, in one fresh working folder per page, against a
local Hub server (``hf_recycle.testing.local_hub.LocalHub``) that the subprocesses reach through
``HF_ENDPOINT`` and ``HF_TOKEN``; every other host is sent to a closed proxy port, so an
example that would reach the internet fails. The Hub and the working folder hold
what the examples name (see ``HUB_REPOS`` and ``_seed_workspace``):

- Hub repos: ``my-org/tiny-llama`` (branches ``step-100``, ``step-200``, ``step-300``; the base
  on ``main``), ``org/run`` (branches ``step-1``, ``step-2``, ``step-10``) and ``demo/tiny-lm``
  (``base`` and ``step-0`` ... ``step-2``), tiny random Llamas;
- local folders: checkpoints ``base``, ``ft-math``, ``ft-code``, ``a``, ``b``, ``full-ft``,
  ``ckpt-0`` ... ``ckpt-2``, ``runs/ckpt-1000`` ... ``runs/ckpt-3000``, LoRA adapters ``lora-a``
  and ``lora-b`` over ``base``, ``data/addition.jsonl`` and a copy of ``recipes/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 12_000
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
BLOCK_TIMEOUT_S = 300

MARKER = re.compile(r"^<!--\s*runnable(?P<args>(?:\s+[\w-]+=\S+)*)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
RUN_LANGS = {"bash": "bash", "shell": "bash", "sh": "bash", "python": "python"}

# repo -> [(branch, index in the pool: -1 is the base)]
HUB_REPOS: dict[str, list[tuple[str, int]]] = {
    "my-org/tiny-llama": [("main", -1), ("step-100", 0), ("step-200", 1), ("step-300", 2)],
    "org/run": [("step-1", 0), ("step-2", 1), ("step-10", 2)],
    "demo/tiny-lm": [("base", -1), ("step-0", 0), ("step-1", 1), ("step-2", 2)],
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    file: str | None  # runnable file=PATH: write the text there instead of running it
    exit: int = 0  # runnable exit=N: the exit status the example shows (a refused recipe: 1)

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def marked_blocks(page: Path) -> list[Block]:
    """The blocks of ``page`` preceded by a ``<!-- runnable ... -->`` comment, in page order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = MARKER.match(lines[i].strip())
        if not match:
            i += 1
            continue
        args = dict(arg.split("=", 1) for arg in match.group("args").split())
        unknown = set(args) - {"file", "exit"}
        assert not unknown, f"{page.name}:{i + 1}: unknown runnable option(s) {sorted(unknown)}"
        opening = lines[i + 1] if i + 1 < len(lines) else ""
        indent = len(opening) - len(opening.lstrip())  # a block inside a list item is indented
        fence = FENCE.match(opening.lstrip())
        assert fence, f"{page.name}:{i + 1}: a runnable marker must be followed by a fenced code block"
        lang = fence.group("lang").lower()
        end = i + 2
        while end < len(lines) and not lines[end].lstrip().startswith(fence.group("fence")):
            end += 1
        assert end < len(lines), f"{page.name}:{i + 2}: the fenced block is not closed"
        if "file" not in args:
            assert lang in RUN_LANGS, (
                f"{page.name}:{i + 2}: a runnable block must be bash or python (or name a file=PATH), not {lang!r}"
            )
        text = "\n".join(line[indent:] for line in lines[i + 2 : end]) + "\n"
        blocks.append(Block(page, i + 2, lang, text, args.get("file"), int(args.get("exit", 0))))
        i = end + 1
    return blocks


# --------------------------------------------------------------------------------------------
# links


def github_slug(heading: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading (lowercase, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


def _prose_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced and indented code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line.lstrip())
        if fence is None and match:
            fence = match.group("fence")
            continue
        if fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            continue
        if line.startswith("    "):  # an indented code block (a list item's text is indented by 2)
            continue
        out.append((n, line))
    return out


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            found.add(github_slug(heading.group(1), seen))
        found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', line))
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code."""
    found = []
    for n, line in _prose_lines(page):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        found.extend((n, target) for target in LINK.findall(line))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: (not checked offline)
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{n}: {target}"
        if not dest.exists():
            problems.append(
                f"{where}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist"
            )
        elif anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading of {dest.name} has the anchor #{anchor}")
    return problems


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move reference text to docs/*.md"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked():
    linked = set()
    for page in PAGES:
        for _, target in links(page):
            path_part = target.partition("#")[0]
            if path_part and not re.match(r"^[a-z][a-z0-9+.-]*:", path_part):
                linked.add((page.parent / path_part).resolve())
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages no other page links to: {orphans}"


def test_readme_has_runnable_examples():
    langs = {RUN_LANGS.get(b.lang) for b in marked_blocks(README) if b.file is None}
    assert {"bash", "python"} <= langs, (
        "README.md should mark its Hub example (python) and its commands (bash)"
    )


# --------------------------------------------------------------------------------------------
# running the examples


@pytest.fixture(scope="session")
def doc_models(tmp_path_factory):
    """A tiny Llama base and three fine-tunes of it, and two LoRA adapters over the base."""
    from hf_recycle.testing import models

    root = tmp_path_factory.mktemp("doc-models")
    base, ckpts = models.build_pool(root / "pool", "llama", n=3, seed=5)
    loras = [models.build_lora_adapter(base, root / f"lora-{i}", seed=i) for i in range(2)]
    return base, ckpts, loras


@pytest.fixture(scope="session")
def doc_hub(doc_models, tmp_path_factory):
    """A local Hub server holding ``HUB_REPOS`` (stopped at the end of the session)."""
    import huggingface_hub.constants as c

    from hf_recycle.testing.local_hub import LocalHub

    base, ckpts, _ = doc_models
    hub = LocalHub(root=tmp_path_factory.mktemp("doc-hub")).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(c, "HF_HUB_OFFLINE", False)
            mp.setattr(c, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
            for repo, branches in HUB_REPOS.items():
                for branch, index in branches:
                    folder = base if index < 0 else ckpts[index]
                    hub.publish(folder, repo, branch=branch, message=f"{branch}")
        yield hub
    finally:
        hub.stop()


def _addition_rows(n: int = 96) -> str:
    lines = []
    for i in range(n):
        a, b = (i * 7) % 50, (i * 13) % 50
        lines.append(f'{{"question": "{a}+{b}", "answer": "{a + b}"}}')
    return "\n".join(lines) + "\n"


def _seed_workspace(work: Path, doc_models) -> None:
    base, ckpts, loras = doc_models
    copies = {
        "base": base,
        "ft-math": ckpts[0],
        "ft-code": ckpts[1],
        "full-ft": ckpts[2],
        "a": ckpts[0],
        "b": ckpts[1],
        "lora-a": loras[0],
        "lora-b": loras[1],
        **{f"ckpt-{i}": ckpt for i, ckpt in enumerate(ckpts)},
        **{f"runs/ckpt-{1000 * (i + 1)}": ckpt for i, ckpt in enumerate(ckpts)},
    }
    for name, src in copies.items():
        shutil.copytree(src, work / name)
    (work / "data").mkdir()
    (work / "data" / "addition.jsonl").write_text(_addition_rows())
    shutil.copytree(ROOT / "recipes", work / "recipes")


def _env(hub, home: Path) -> dict[str, str]:
    skip = ("HF_", "HUGGING_FACE", "TRANSFORMERS_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(skip)}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN=hub.token,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_OFFLINE="1",  # task data are local files
        HF_EVALUATE_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
        PYTHONUNBUFFERED="1",
        # anything but the local Hub goes to a closed port: an example that would reach the internet fails
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost,::1",
    )
    return env


def _run_block(block: Block, work: Path, env: dict[str, str]) -> None:
    if block.file is not None:
        path = work / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)
        return
    if RUN_LANGS[block.lang] == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        cmd = [str(VENV_BIN / "python"), "-c", block.text]
    log = work.parent / "example-output.txt"
    with log.open("w") as out:  # a file, not a pipe: a server the example leaves running keeps its pipes open
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        finally:
            try:  # whatever the example started in the background (a Hub server) ends with it
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    output = log.read_text(errors="replace")[-6000:]
    assert not timed_out, f"{block.where}: the example ran past {BLOCK_TIMEOUT_S} s:\n{output}"
    assert proc.returncode == block.exit, (
        f"{block.where}: the example exited with status {proc.returncode} (expected {block.exit}):\n"
        f"{block.text}\n--- output ---\n{output}"
    )


RUNNABLE_PAGES = [page for page in PAGES if marked_blocks(page)]


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, doc_models, doc_hub, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _seed_workspace(work, doc_models)
    env = _env(doc_hub, tmp_path / "hf-home")
    for block in marked_blocks(page):
        _run_block(block, work, env)
