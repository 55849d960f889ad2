"""Registries of one module per entry: merge methods, samplers, task kinds, scoring engines.

Each registry is a package whose modules each define subclasses of one base class with a
``name``; :func:`discover` imports them (modules starting with ``_`` and the ones named in
``skip`` are machinery) and returns the classes, so that adding an entry is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T", bound=type)


def discover(package: str, base: T, skip: Iterable[str] = ()) -> list[T]:
    """The subclasses of ``base`` with their own ``name`` defined by the modules of ``package``.

    Sorted by their ``order`` attribute (100 when they have none), then name.

    Raises:
        RuntimeError: Two entries share a name.
    """
    skipped = set(skip)
    root = importlib.import_module(package)
    found: dict[str, T] = {}
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_") or info.name in skipped:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, base)
                and value.__module__ == module.__name__
                and "name" in vars(value)
            ):
                if value.name in found:
                    raise RuntimeError(
                        f"two {base.__name__} entries are named '{value.name}': "
                        f"{found[value.name].__module__} and {value.__module__}"
                    )
                found[value.name] = value
    return sorted(found.values(), key=lambda cls: (getattr(cls, "order", 100), cls.name))
