"""The ``sofa`` command as a shell user meets it."""

from __future__ import annotations

import subprocess
import sys


def test_output_piped_into_a_reader_that_stops_early_is_no_error():
    """``sofa models | head -1``: the reader closes the pipe; sofa ends quietly with exit 0, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "sofa", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert first.startswith(b"model")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
