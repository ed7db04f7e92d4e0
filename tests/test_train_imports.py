"""The training package sits above the library: the models, checkpoints and data load nothing of ``sofa.train``
(which imports them), so the two never import each other."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import pkgutil, sys
import sofa, sofa.checkpoint, sofa.errors, sofa.data
for info in pkgutil.walk_packages(sofa.data.__path__, "sofa.data."):
    __import__(info.name)
print(" ".join(sorted(m for m in sys.modules if m == "sofa.train" or m.startswith("sofa.train."))))
"""


def test_models_checkpoints_and_data_import_nothing_of_the_training_package():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == [], f"imported: {p.stdout}"
