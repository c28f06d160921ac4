"""Training resumes exactly: a run interrupted and resumed from its checkpoint ends with the very weights of a
run that was never interrupted; the end of training evaluates, records and exports. On real MNIST (skipped
when ../shared/data is absent) with a tiny NADE, so it takes seconds."""

from __future__ import annotations

import json

import pytest
import torch

from app.runtime.manifest import load_manifest
from models.data import DataUnavailable, mnist
from models.train import Recipe, TrainConfig, Trainer


def recipe(max_steps: int) -> Recipe:
    # constant learning rate (no warm-up, no decay), so the schedule does not depend on max_steps
    train = TrainConfig(batch_size=8, lr=1e-2, min_lr_ratio=1.0, warmup_steps=0, max_steps=max_steps,
                        max_minutes=60, eval_every=3, eval_limit=50, threads=1)
    return Recipe(name="tiny-nade", family="nade", dataset="mnist", model={"hidden": 6}, train=train)


@pytest.fixture(scope="module", autouse=True)
def real_data():
    try:
        mnist()
    except DataUnavailable as e:
        pytest.skip(f"real data not available: {e}")


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    whole = Trainer(recipe(6), tmp_path / "whole")
    whole.run_dir.mkdir()
    whole.run()

    first = Trainer(recipe(3), tmp_path / "split")
    first.run_dir.mkdir()
    first.run()  # "interrupted" after 3 steps: last.pt is all that survives
    resumed = Trainer(recipe(6), tmp_path / "split")
    assert resumed.resume() and resumed.step == 3
    resumed.run()

    assert resumed.step == whole.step == 6
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
    assert [h["valid"] for h in resumed.history] == [h["valid"] for h in whole.history]


def test_finish_evaluates_records_and_exports(tmp_path):
    t = Trainer(recipe(3), tmp_path / "run")
    t.run_dir.mkdir()
    t.run()
    metrics = t.finish(tmp_path / "exported" / "tiny-nade")
    assert {"valid", "test", "check_slice"} <= set(metrics)
    assert metrics["test"]["examples"] == 10_000 and metrics["test"]["unit"] == "nats/image"
    manifest = load_manifest(tmp_path / "exported" / "tiny-nade", verify=True)
    assert manifest.metrics["test"]["nll"] == pytest.approx(metrics["test"]["nll"])
    assert manifest.training["steps"] == 3 and manifest.training["recipe"]["family"] == "nade"
    report = json.loads((t.run_dir / "report.json").read_text())
    assert report["metrics"]["valid"]["nll"] == pytest.approx(metrics["valid"]["nll"])


def test_sigterm_stops_after_a_step_with_a_checkpoint_to_resume_from(tmp_path):
    """`kill` on a real `python -m models.train` process: it saves last.pt at the step it reached and exits 143."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from models.checkpoint import load_checkpoint

    (tmp_path / "tiny.toml").write_text(
        'name = "tiny-nade"\nfamily = "nade"\ndataset = "mnist"\n[model]\nhidden = 6\n'
        "[train]\nbatch_size = 8\nmax_steps = 1000000\nmax_minutes = 5\neval_every = 1000000\nthreads = 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "models.train", str(tmp_path / "tiny.toml"), "--runs",
                             str(tmp_path / "runs"), "--no-export"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(8)  # past the data loading, into the steps
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:]
    assert "stopped at step" in out
    _, _, state = load_checkpoint(tmp_path / "runs" / "tiny-nade" / "last.pt")
    assert state["step"] > 0 and not (tmp_path / "runs" / "tiny-nade" / "final.pt").exists()
