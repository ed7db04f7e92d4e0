"""The run directory: one writer at a time, and a failed write (disk full) ends the run with one clear line."""

from __future__ import annotations

import errno
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sofa import checkpoint as ckpt
from sofa.cli import main
from sofa.data.synthetic import make_image_folder

from helpers import ONE_THREAD, TINY_TRAIN, train_held_after_step

TINY = [*TINY_TRAIN, "--log-interval", "1", "-b", "4"]
FREE = r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free on /"


def sofa(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("shapes"), num_classes=3, train_per_class=4, val_per_class=1)


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(folder, tmp_path, capsys):
    out = tmp_path / "run"
    log = tmp_path / "first.txt"
    # the first run saves every step and, after step 2, waits (holding the run directory)
    held = ["--data", folder, *TINY, "--epochs", 2, "--save-every-steps", 1]
    with train_held_after_step(2, held, out, log) as first:
        log_txt = (out / "log.txt").read_text()
        capsys.readouterr()
        # a --resume of the run, and a new run into the same directory, both refuse and name the holder
        assert sofa("train", "--resume", out) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another sofa train (pid {first.pid} on " in err, err
        assert sofa("train", "--data", folder, *TINY, "--epochs", 2, "--output", out) == 2
        assert f"(pid {first.pid} on " in capsys.readouterr().err
        assert (out / "log.txt").read_text() == log_txt  # the refused runs wrote nothing
        assert first.poll() is None
    # the holder died without releasing: its record is left, its lock is not
    assert f"pid {first.pid} on " in (out / ".lock").read_text()
    assert sofa("train", "--resume", out) == 0
    text = capsys.readouterr().out
    assert f"note: took over {out / '.lock'}, left by a run that ended without releasing it (pid {first.pid} " in text
    assert "done" in text
    assert not (out / ".lock").exists()  # released at the end


def test_disk_full_while_saving_ends_with_one_line_naming_the_file_and_free_space(
    folder, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = ckpt.atomic_write

    def disk_full_for_last_pt(path, write):
        if Path(path).name == "last.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", disk_full_for_last_pt)
    capsys.readouterr()
    code = sofa("train", "--data", folder, *TINY, "--epochs", 1, "--output", out)
    captured = capsys.readouterr()
    assert code == 74, captured
    assert "Traceback" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1, captured.err
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(out / 'last.pt'))}: No space left on device \({FREE}.*\)", errors[0]
    ), errors[0]
    assert (out / "log.txt").read_text().splitlines()[-1] == errors[0]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / ".lock").exists()


def test_a_real_failed_write_of_the_weights_is_reported_the_same_way(folder, tmp_path):
    """A file-size limit below the size of the weights makes the kernel refuse the first save (EFBIG), which
    torch.save reports as a RuntimeError around the OSError: the run still ends with one line naming the file."""
    out = tmp_path / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    p = subprocess.run(
        [sys.executable, "-m", "sofa", "train", "--data", str(folder), *TINY, "--epochs", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert p.returncode == 74, p.stderr[-3000:]
    assert "Traceback" not in p.stdout + p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, p.stderr
    assert re.match(
        rf"error: cannot write {re.escape(str(out))}/(model\.safetensors|last\.pt): File too large "
        rf"\({FREE}",
        errors[0],
    ), errors[0]
    assert (out / "log.txt").read_text().splitlines()[-1] == errors[0]


def test_resuming_a_run_whose_epochs_are_done_says_so(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert sofa("train", "--data", folder, *TINY, "--epochs", 1, "--output", out) == 0
    capsys.readouterr()
    assert sofa("train", "--resume", out) == 0
    text = capsys.readouterr().out
    assert f"nothing to train: {out} has run its 1 epoch(s) already (a larger --epochs goes on)" in text, text
