"""``bench/gpu_suite.sh --cpu``: the GPU check's steps run on the CPU (interpreted Triton, a tiny
model), so a short GPU slot only meets GPU problems: every step, the first-call rows, the
headline, the three-file output, and the time box that skips what the budget cannot hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from qgen_infer.export import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"


@pytest.mark.slow
def test_smoke_test_ids_exist() -> None:
    """Every GPU smoke test the suite names by id is collected (a stale id would fail the whole
    pytest call on the GPU, where a slot is short)."""
    text = SUITE.read_text()
    files = dict(re.findall(r"^([A-Z])=(tests/\S+\.py)$", text, flags=re.M))
    ids = [files[v] + rest for v, rest in re.findall(r'"\$([A-Z])(::[^"]+)"', text)]
    assert len(ids) >= 10
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "",
                           "-p", "no:cacheprovider", *ids], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{len(ids)} tests collected" in proc.stdout


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoint, tmp_path_factory) -> Path:
    """A folder of ``mnist-m25-{bits}bit.qgen`` files holding the tiny test MLP."""
    folder = tmp_path_factory.mktemp("suite-models")
    for bits in (1, 4):
        export_checkpoint(tiny_checkpoint("mlp", bits, "tensor"),
                          folder / f"mnist-m25-{bits}bit.qgen")
    return folder


def _suite(out: Path, models: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QGEN_SUITE_MODELS": str(models), "QGEN_SUITE_STEPS": "1",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SUITE), "--cpu", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_suite_runs_every_step_on_the_cpu(tiny_models, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _suite(out, tiny_models)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-suite.tar.gz", "headline.md",
                                                     "steps.txt"]
    steps = (out / "steps.txt").read_text()
    for name in ("env", "tests", "data-w1", "cold-w1", "data-w4", "cold-w4", "reconstruct"):
        assert f"{name} rc=0 " in steps, steps
    headline = (out / "headline.md").read_text()
    assert headline in proc.stdout  # the headline is printed
    assert "| 1 | " in headline and "| 4 | " in headline and "(met)" in headline
    assert "passed" in headline and "failed" not in headline
    with tarfile.open(out / "gpu-suite.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-suite/cold-w1/metrics.json" in names and "gpu-suite/reconstruct.jsonl" in names
    assert max(n.count("/") for n in names) <= 2  # at most two folders deep
    assert not any("cache" in n or n.endswith(".npy") for n in names)


@pytest.mark.slow
def test_suite_time_box_skips_what_does_not_fit(tiny_models, tmp_path) -> None:
    """With a budget that holds only the first steps, the rest are skipped, not started, and
    the headline and archive are still written."""
    out = tmp_path / "out"
    proc = _suite(out, tiny_models, QGEN_SUITE_SECONDS="30")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = (out / "steps.txt").read_text()
    assert "reconstruct skipped (no time left)" in steps, steps
    assert "env rc=0" in steps
    assert (out / "gpu-suite.tar.gz").is_file()
    assert "no rows" in (out / "headline.md").read_text()
