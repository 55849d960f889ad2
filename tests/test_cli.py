import subprocess
import sys

from hf_recycle import cli


def test_help_lists_landed_commands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "hf-recycle" in out


def test_import_is_light():
    """Importing the package and building the CLI parser loads no heavy library."""
    code = (
        "import sys, hf_recycle, hf_recycle.cli as c; c.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'evaluate', 'optuna') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_units_parse_size():
    import pytest

    from hf_recycle.errors import MergeConfigError
    from hf_recycle.units import parse_size

    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("60KB") == 60_000
    assert parse_size(123) == 123
    with pytest.raises(MergeConfigError, match="max_shard_size"):
        parse_size("lots")


def test_cli_logging_follows_the_current_stderr(monkeypatch):
    """In-process runs: the log handler writes to sys.stderr as it is at emit time, not to a
    stream captured earlier and closed since."""
    import io
    import logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    cli._configure_logging(debug=False, quiet=False)
    logging.getLogger("hf_recycle.test").info("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("hf_recycle.test").info("two")
    assert second.getvalue() == "two\n"
