"""What a run tells: rank 0's lines (stdout and ``log.txt``), its progress bar, ``metrics.jsonl``, and the
formatting of the numbers in them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

from sofa import checkpoint as ckpt
from sofa.errors import writing


class Reporter:
    """Rank 0's voice: lines to stdout and RUN/log.txt, a tqdm bar on a terminal, metrics.jsonl, the plot."""

    def __init__(self, is_main: bool, mode: str = "auto", run_dir: Path | None = None):
        self.is_main = is_main
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.run_dir = run_dir
        self._log_file = None
        if is_main and run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            with writing(run_dir / "log.txt"):
                self._log_file = open(run_dir / "log.txt", "a", buffering=1)

    def log(self, msg: str) -> None:
        """A line on stdout (lines that start with error, warning or stopped also under --progress none) and
        in log.txt."""
        if not self.is_main:
            return
        if self.mode == "bar":
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)
        elif self.mode != "none" or msg.startswith(("error", "warning", "stopped")):
            print(msg, flush=True)
        if self._log_file is not None:
            with writing(self.run_dir / "log.txt"):
                self._log_file.write(msg + "\n")

    def record(self, msg: str) -> None:
        """A line in log.txt only (what the command line prints itself, e.g. the error that ends the run); a
        log.txt that cannot be written is left as it is."""
        if self._log_file is None:
            return
        try:
            self._log_file.write(msg + "\n")
            self._log_file.flush()
        except OSError:
            pass

    def bar(self, total: int, initial: int, desc: str):
        if not self.is_main or self.mode != "bar":
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr)

    def progress(self, it: Iterable, desc: str) -> Iterable:
        bar = self.bar(len(it) if hasattr(it, "__len__") else None, 0, desc)  # type: ignore[arg-type]
        if bar is None:
            yield from it
            return
        try:
            for x in it:
                yield x
                bar.update(1)
        finally:
            bar.close()

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, ``"type": "step"`` (every log interval) or ``"epoch"``."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, global_step: int) -> None:
        """Drop records of steps after ``global_step`` (written by a run that was killed, then resumed)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if rec.get("global_step", 0) <= global_step:
                keep.append(json.dumps(rec))
        with writing(self.path):
            ckpt.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def epoch_line(rec: dict[str, Any], epochs: int, primary: str, unit: str = "img") -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}"]
    tr = [f"{k[6:]} {fmt_value(v)}" for k, v in rec.items() if k.startswith("train_")]
    if tr:
        parts.append("train " + " ".join(tr))
    va = [f"{k[4:]} {fmt_value(v)}" for k, v in rec.items() if k.startswith("val_") and k != "val_count"]
    if va:
        parts.append("val " + " ".join(va))
    em = [f"{k[8:]} {fmt_value(v)}" for k, v in rec.items() if k.startswith("ema_val_") and k[8:] == primary]
    if em:
        parts.append("ema " + " ".join(em))
    parts.append(f"lr {rec['lr']:.3g}")
    parts.append(f"{rec['images_per_s']:.0f} {unit}/s")
    parts.append(f"{rec['epoch_time_s']:.1f}s")
    return "  ".join(parts)


def yaml_text(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=True)
