"""The merge writers do not import each other: the shared output-folder pieces have their own module."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('hf_recycle')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_lora_output_does_not_import_the_engine():
    assert "hf_recycle._merge.engine" not in _loaded_after("hf_recycle._merge.lora_output")
