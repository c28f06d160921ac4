"""Smoke test of the load benchmark: `python -m bench.load --quick --baseline HEAD` on tiny exported models.

Checks the report's structure only (no timing is asserted): both trees measured at every level, every
level's figures finite and complete, nothing failed, the server's own histograms read back, the HF peer and
the targets present, the markdown and the JSON written.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, meta_for

LATENCIES = ("ttft_ms", "tpot_ms", "e2el_ms")  # and ITL, absent when every stream came in one delivery


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory):
    import torch

    import models
    from models.export import export_model

    out = tmp_path_factory.mktemp("load-exported")
    torch.manual_seed(0)
    zoo = {"tiny-text-transformer": models.build("transformer", {"vocab_size": 7, "length": 40, "n_layer": 1,
                                                                 "n_head": 2, "n_embd": 8, "dropout": 0.0}),
           "tiny-fvsbn": models.tiny("fvsbn")}
    for name, model in zoo.items():
        export_model(model.eval(), out / name, meta_for(model, name))
    return out


def finite_stats(d: dict) -> bool:
    return set(d) == {"mean", "median", "p99"} and all(math.isfinite(v) and v >= 0 for v in d.values())


def test_load_quick_report(tiny_exported, tmp_path):
    pytest.importorskip("transformers", reason="the HF peer needs the `bench` extra (make install has it)")
    cmd = [sys.executable, "-m", "bench.load", "--quick", "--exported", str(tiny_exported), "--out", str(tmp_path),
           "--models", "tiny-text-transformer", "--logprob-models", "tiny-fvsbn", "--baseline", "HEAD"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "load-quick.json").read_text())
    meta = report["meta"]
    assert meta["mode"] == "quick" and set(meta["trees"]) == {"current", "baseline"}
    levels = meta["concurrency"]

    sample = report["sample"]
    assert sorted((r["tree"], r["concurrency"]) for r in sample) == sorted(
        (t, c) for t in ("current", "baseline") for c in levels)
    for r in sample:
        assert r["errors"] == 0 and r["completed"] == r["requests"] >= r["concurrency"], r
        assert r["output_tokens"] == r["completed"] * r["max_len"], r  # every stream ran to its length
        assert r["output_tokens_per_s"] > 0 and r["request_throughput"] > 0
        assert all(finite_stats(r[k]) for k in LATENCIES), r
        assert r["itl_ms"] is None or finite_stats(r["itl_ms"]), r
        assert r["ttft_ms"]["median"] <= r["e2el_ms"]["median"]
        if r["concurrency"] > 1:
            spread = r["stream_tokens_per_s"]
            assert spread["min_over_median"] <= 1 <= spread["max_over_median"]
        if r["tree"] == "current":  # this tree's server exports the histograms the benchmark reads back
            assert r["ttft_ms_mean"] > 0 and r["itl_ms_mean"] >= 0 and r["queue_wait_ms_mean"] >= 0, r

    logprob = report["logprob"]
    assert sorted((r["tree"], r["clients"], r["batch"]) for r in logprob) == sorted(
        (t, c, b) for t in ("current", "baseline") for c in levels for b in (1, 16))
    for r in logprob:
        assert r["errors"] == 0 and r["examples"] == r["completed"] * r["batch"] > 0, r
        assert r["examples_per_s"] > 0 and finite_stats(r["latency_ms"]), r

    assert [h["batch"] for h in report["peer"]] == [1, 4]
    assert all(h["tokens_per_s"] > 0 and h["model"] == "tiny-text-transformer" for h in report["peer"])

    targets = {(t["what"], t["model"]): t for t in report["targets"]}
    for what in ("tokens/s, 16 streams / 1 stream (baseline)", "no regression: 1-stream tokens/s, current / baseline",
                 "fairness: slowest stream's tokens/s / median, 16 streams"):
        t = targets[(what, "tiny-text-transformer")]
        assert t["value"] > 0 and t["met"] in (True, False), t
    assert targets[("/logprob: 16 single-example clients / 1 client x 16", "tiny-fvsbn")]["value"] > 0

    markdown = (tmp_path / "load-quick.md").read_text()
    for heading in ("## targets (issue #13)", "## GET /sample", "## POST /logprob", "## Hugging Face generate"):
        assert heading in markdown
    assert markdown in proc.stdout
    baseline = re.search(r"serving baseline \(\w+\) from (\S+)", proc.stderr).group(1)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert baseline not in worktrees and not Path(baseline).exists()  # the baseline's worktree is gone


def test_load_refuses_an_unknown_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.load", "--quick", "--models", "no-such-model",
                           "--logprob-models", "", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "no exported model no-such-model" in proc.stderr
