"""Smoke test of the benchmark suite: `python -m bench --quick` on tiny exported models, every section.

Checks the report's structure only (the suite never asserts a timing): every section present, every figure
a positive finite number with its unit and configuration, the markdown and the JSON written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, meta_for

SECTIONS = {"generation", "backends", "served", "wavenet", "peer", "roofline"}


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory):
    import torch

    import models
    from models.export import export_model

    out = tmp_path_factory.mktemp("bench-exported")
    torch.manual_seed(0)
    zoo = {"tiny-text-transformer": models.build("transformer", {"vocab_size": 7, "length": 40, "n_layer": 1,
                                                                 "n_head": 2, "n_embd": 8, "dropout": 0.0}),
           "tiny-wavenet": models.tiny("wavenet", index=1),
           "tiny-nade": models.tiny("nade")}
    for name, model in zoo.items():
        export_model(model.eval(), out / name, meta_for(model, name))
    return out


def test_bench_quick_report(tiny_exported, tmp_path):
    pytest.importorskip("transformers", reason="the peer section needs the `bench` extra (make install has it)")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--exported", str(tiny_exported),
                           "--out", str(tmp_path), "--baseline", "none"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "quick.json").read_text())
    # `single` serves the shipped models beside an older commit's: tests/test_bench_load.py covers that client
    assert report["meta"]["mode"] == "quick" and report["meta"]["skipped"] == {"single": "--baseline none"}
    assert report["meta"]["compiled_steps"] == {"tiny-wavenet": "onnx: ARSERVE_COMPILE=off"}  # as conftest sets
    figures = report["figures"]
    assert {f["section"] for f in figures} == SECTIONS
    for f in figures:
        assert set(f) == {"section", "name", "value", "unit", "config"}, f
        assert math.isfinite(f["value"]) and f["unit"], f
        assert isinstance(f["config"], dict) and f["config"], f
        if f["unit"] in ("tokens/s", "examples/s", "ms", "x", "real-time factor"):
            assert f["value"] > 0, f
    names = {f["name"] for f in figures}
    for model in ("tiny-text-transformer", "tiny-wavenet", "tiny-nade"):
        assert f"{model} cached / naive (onnxruntime)" in names
    assert "tiny-nade cached, 64 per call / naive (onnxruntime)" in names  # the multi-token path, stepk.onnx
    markdown = (tmp_path / "quick.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in markdown
    assert markdown in proc.stdout


def test_bench_refuses_an_empty_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--exported", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no exported model" in proc.stderr
