"""One discovery for every registry: one module per entry, ordered, duplicate names refused."""

from __future__ import annotations

import sys

import pytest

from hf_recycle.plugins import discover


class Base:
    name = "base"


def _package(tmp_path, monkeypatch, name: str, modules: dict[str, str]) -> str:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, code in modules.items():
        (pkg / f"{module}.py").write_text("from tests_plugins_base import Base\n" + code)
    (tmp_path / "tests_plugins_base.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "tests_plugins_base", sys.modules[__name__])
    return name


def test_entries_are_found_ordered_and_machinery_skipped(tmp_path, monkeypatch):
    package = _package(
        tmp_path,
        monkeypatch,
        "plugpkg_order",
        {
            "b": "class B(Base):\n    name = 'b'\n    order = 0\n",
            "a": "class A(Base):\n    name = 'a'\n",
            "_private": "class P(Base):\n    name = 'p'\n",
            "helpers": "class H(Base):\n    name = 'h'\nclass NoName(Base):\n    pass\n",
        },
    )
    assert [c.name for c in discover(package, Base, skip=["helpers"])] == ["b", "a"]
    assert [c.name for c in discover(package, Base)] == ["b", "a", "h"]


def test_two_entries_with_one_name_are_refused(tmp_path, monkeypatch):
    package = _package(
        tmp_path,
        monkeypatch,
        "plugpkg_same",
        {"x": "class X(Base):\n    name = 'same'\n", "y": "class Y(Base):\n    name = 'same'\n"},
    )
    with pytest.raises(
        RuntimeError, match="two Base entries are named 'same': plugpkg_same.x and plugpkg_same.y"
    ):
        discover(package, Base)
