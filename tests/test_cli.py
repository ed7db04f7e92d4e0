"""The ``sofa`` command as a shell user meets it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sofa.cli import main


def test_output_piped_into_a_reader_that_stops_early_is_no_error():
    """``sofa models | head -1``: the reader closes the pipe; sofa ends quietly with exit 0, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "sofa", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert first.startswith(b"model")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.mark.parametrize("command", ["shapes", "listops"])
def test_a_user_error_of_any_command_is_one_line_and_exit_2(command, tmp_path, capsys):
    """``sofa data`` as well as ``sofa train``: bad input is one ``error:`` line on stderr, no traceback."""
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    assert main(["data", command, str(not_a_folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(not_a_folder) in err and len(err.splitlines()) == 1, err
