"""The prepared GPU call (bench/device/), rehearsed at toy size on this CPU so it cannot rot between
lent machines: both calls run end to end through the real jobs (Ray Data infer and prep, Ray Train),
with the Ray subpackages that the carry trims blocked in every process, and their results become docs."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "device"))
import pack  # noqa: E402
import report  # noqa: E402


def run_call(number: int, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "bench" / "device" / "run.sh"), str(number), "--toy", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)


def test_both_calls_run_at_toy_size_and_become_docs(tmp_path):
    out = tmp_path / "out"
    first = run_call(1, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    env = json.loads((out / "env.json").read_text())
    assert env["ray"].startswith("2.") and env["torch"] and env["upload"] == "no CUDA here", env
    network = json.loads((out / "network.json").read_text())
    assert [r["batch"] for r in network["rows"]] == [1, 2] and all(r["mp_per_s"] > 0 for r in network["rows"])
    assert {v["variant"] for v in network["variants"]} == {"contiguous", "graphs"}, "each variant measured or its reason kept"
    infer = json.loads((out / "infer.json").read_text())
    assert [r["restored"] for r in infer["runs"]] == [3] and all(r["exit"] == 0 for r in infer["runs"]), infer
    assert "--tile-batch" in infer["runs"][0]["label"], "the toy runs the job with step b's best setting"
    train = json.loads((out / "train.json").read_text())
    assert (train["prep_exit"], train["train_exit"]) == (0, 0), (out / "log.txt").read_text()[-3000:]
    assert (out / "model.pt").stat().st_size > 0 and (out / "metrics.csv").read_text().startswith("step,")
    assert "trimmed from the Ray" not in (out / "log.txt").read_text(), "a job imported what the carry trims"

    second = run_call(2, out)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "training from " + str(out / "work" / "train-1" / "model.pt") in (out / "log.txt").read_text(), "call 2 continues call 1's model"
    assert "prep: the pairs of prep-1 reused" in (out / "log.txt").read_text(), "the toy's call 2 has call 1's very images"
    assert json.loads((out / "train-2.json").read_text())["train_exit"] == 0 and (out / "model-2.pt").is_file()
    assert "(stopped by --time-limit)" in (out / "log.txt").read_text(), "call 2's toy ends by train --time-limit, with its model"

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("benchmarks.md", "cost.md", "training.md"):
        (docs / name).write_text((REPO / "docs" / name).read_text())
    for _ in range(2):  # a later call replaces the block, it does not add a second one
        assert report.main([str(out), str(out), "--docs", str(docs), "--date", "2026-12-04"]) == 0
    bench = (docs / "benchmarks.md").read_text()
    assert bench.count(report.BEGIN) == 1 and "| fp32 | 2 |" in bench and "Against the targets" in bench
    assert "1 × no GPU, the infer job" in (docs / "cost.md").read_text()
    assert "Call 2:" in (docs / "training.md").read_text()


def test_the_blocker_refuses_what_the_carry_trims():
    blocked = REPO / "bench" / "device" / "blocked"
    result = subprocess.run([sys.executable, "-c", "import ray.serve"], env={"PYTHONPATH": str(blocked), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode != 0 and "trimmed from the Ray" in result.stderr
    tree = ast.parse((blocked / "sitecustomize.py").read_text())
    names = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "BLOCKED")
    python_packages = {t.strip("/").replace("/", ".") for t in pack.TRIMMED} - {"ray.jars", "ray.dashboard.client.build"}  # Java, web files
    assert set(names) == python_packages, "the rehearsal blocks exactly the Python packages the carry leaves out"


@pytest.mark.parametrize("wheel, ok", [
    ("ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", True), ("tzdata-2026.6-py2.py3-none-any.whl", True),
    ("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl", False), ("rpds_py-1-cp312-cp312-macosx_11_0_arm64.whl", False),
])
def test_only_wheels_the_device_loads_are_carried(wheel, ok):
    if ok:
        pack.check_tag(wheel)
    else:
        with pytest.raises(SystemExit):
            pack.check_tag(wheel)
