"""bench/roofline.py: the multiply-add counter against counts worked out by hand from the shipped models'
architectures, and the section end to end on one shipped model (quick, with a real server)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT

from app.runtime.manifest import load_manifest
from bench import roofline

EXPORTED = ROOT / "exported"


def test_counts_the_char_transformer_by_hand():
    """Per layer: qkv (d x 3d), the attention projection (d x d), the MLP (d x 4d, 4d x d); then the head (d x V);
    and attention's q.k and p.v over the pos + 1 positions so far (every head, head size d / heads)."""
    folder = EXPORTED / "transformer-shakespeare"
    m = load_manifest(folder)
    cfg = m.config
    L, d, V = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
    matmuls = L * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + d * V
    assert matmuls == 4 * (192 * 576 + 192 * 192 + 192 * 768 + 768 * 192) + 192 * 65
    for pos in (0, 100):
        c, _, _ = roofline.count_step(folder, m, pos)
        assert c.macs == matmuls + L * 2 * (pos + 1) * d, (pos, c.by_op)
        # every weight matrix read whole, plus embedding rows and layer norms: a few KB more
        assert 4 * matmuls <= c.weight_bytes <= 4 * matmuls * 1.01
        assert c.kv_bytes == L * 2 * (pos + 1) * d * 4  # keys and values of the positions attended to


def test_counts_nade_by_hand():
    """NADE's step: a += W[:, i-1] x_{i-1} (hidden multiply-adds), then V[i] . sigmoid(a) (hidden more), each a
    weight row gathered for the position."""
    folder = EXPORTED / "nade-mnist"
    m = load_manifest(folder)
    hidden = m.config["hidden"]
    c, _, _ = roofline.count_step(folder, m, pos=10)
    assert c.macs == 2 * hidden and c.by_op == {"Mul": 2 * hidden}
    assert 4 * 3 * hidden <= c.weight_bytes < 4 * 3 * hidden + 64  # W and V rows, c whole; b[i] and constants


def test_machine_bound():
    mach = roofline.Machine(gmacs=50, gbs=50, gbs_l2=100, l2_bytes=1 << 20)
    assert mach.ideal(10**6, 10**3) == (pytest.approx(20e-6), "compute")
    assert mach.ideal(10**3, 8 << 20) == (pytest.approx((8 << 20) / 50e9), "bytes")
    assert mach.bandwidth(1 << 19) == 100  # within L2


def test_quick_section_on_nade(tmp_path):
    """The whole section on one shipped model, through a real server: every figure there and consistent."""
    assert roofline.main(["--quick", "--models", "nade-mnist", "--exported", str(EXPORTED),
                          "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "roofline.json").read_text())
    (row,) = record["rows"]
    assert row["model"] == "nade-mnist" and row["macs"] == 2 * 500 and row["bound"] == "bytes"
    assert record["machine"]["gmacs"] > 0 and record["machine"]["gbs"] > 0
    # Timings: positive, and nested where one contains the other by construction, with room for the noise of
    # a few quick rounds on a shared machine (a one-node call can take longer than a step in a slow moment).
    assert all(row[k] > 0 for k in ("call", "step", "generate", "http", "achieved_http", "achieved_step"))
    assert row["step"] < row["http"] and row["achieved_http"] < 100 and row["achieved_step"] < 100
    split = row["split"]
    assert set(split) == {"matmul", "nodes", "call", "draw+loop", "http"}, split
    assert sum(split.values()) == pytest.approx(row["http"], rel=0.5)  # the parts add up to the time over HTTP
    assert row["chunk_generate"] > 0 and row["chunk_http"] > 0  # NADE ships the multi-token graph
    for f in record["figures"]:
        assert math.isfinite(f["value"]) and f["unit"], f
    assert "| nade-mnist | nade | 1,000 |" in (tmp_path / "roofline.md").read_text()
    # the report again from the saved JSON, measuring nothing: the same table, and the README's row
    again = tmp_path / "again"
    assert roofline.main(["--from", str(tmp_path / "roofline.json"), "--out", str(again)]) == 0
    text = (again / "roofline.md").read_text()
    assert text == (tmp_path / "roofline.md").read_text() and "| nade (nade-mnist) | 1,000 | bytes |" in text
