"""The house's layers: the numeric core and the options import neither Ray nor torch, and no job's
`--help` imports torch. Each check runs in a fresh interpreter (this one has both loaded)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = [
    "carray.config", "carray.cli", "carray.architectures", "carray.images", "carray.jpeg", "carray.patches", "carray.metrics",
    "carray.pairs", "carray.quality", "carray.storage", "carray.infer.layout", "carray.infer.packs", "carray.infer.plan",
    "carray.infer.sample", "carray.infer.scan", "carray.infer.compare", "carray.infer.cost", "carray.infer.page",
    "carray.infer.tiles", "carray.infer.decode", "carray.infer.restoring", "carray.infer.memory",
]


def loaded_after(code: str) -> set:
    """The heavy packages among sys.modules after running `code` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return set(eval(run.stdout.strip().splitlines()[-1]))


def test_the_numeric_core_and_the_options_import_neither_ray_nor_torch():
    assert loaded_after("\n".join(f"import {m}" for m in CORE)) == set()


@pytest.mark.parametrize("stage", ["prep", "train", "infer", "evaluate", "export"])
def test_help_does_not_import_torch(stage):
    code = f"from carray.cli import main\ntry:\n    main(['{stage}', '--help'])\nexcept SystemExit:\n    pass"
    assert "torch" not in loaded_after(code)
