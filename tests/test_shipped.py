"""The shipped zoo in exported/: trained models whose manifests tell the truth.

For every folder: the manifest validates and its sha256s hold, the training record and held-out metrics are
there, and the held-out NLL of the manifest's fixed data slice, recomputed through the service's own ONNX
Runtime backend on the real data, agrees with the figure the trainer wrote. Skipped (with the reason) when
../shared/data is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from app.runtime.backends import load
from app.runtime.manifest import load_manifest
from models.data import DataUnavailable
from models.datasets import DATASETS

EXPORTED = Path(__file__).resolve().parent.parent / "exported"
SHIPPED = sorted(p for p in EXPORTED.glob("[!.]*") if p.is_dir())  # dot-folders are exports in progress
DATASET_OF = {d.name: key for key, d in DATASETS.items()}  # manifest's dataset name -> adapter


def test_the_zoo_is_shipped():
    assert len(SHIPPED) >= 3, f"only {len(SHIPPED)} trained models in {EXPORTED}"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_manifest_records_training_and_held_out_metrics(folder):
    m = load_manifest(folder, verify=True)
    assert m.name == folder.name
    t = m.training
    assert t["parameters"] > 0 and t["steps"] > 0 and t["wall_minutes"] > 0 and "CPU" in t["hardware"]
    assert t["recipe"]["family"] == m.family
    assert m.metrics["selected_on"] == "valid"
    assert "valid" in m.metrics
    # images and vectors: nats per example of `length` dimensions; text and audio: nats per char / sample
    dims = 1 if m.modality in ("text", "audio") else m.length
    for split in ("valid", "test"):
        if split in m.metrics:
            r = m.metrics[split]
            assert r["dataset"] in DATASET_OF and r["split"] == split and r["examples"] > 0
            assert math.isclose(r["bits_per_dim"] * math.log(2) * dims, r["nll"], rel_tol=1e-6)


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_held_out_slice_reproduces_the_manifest(folder):
    m = load_manifest(folder, verify=True)
    dataset = DATASETS[DATASET_OF[m.metrics["valid"]["dataset"]]]()
    try:
        xs = dataset.slice_examples(m.length)
    except DataUnavailable as e:
        pytest.skip(f"real data not available: {e}")
    recorded = m.metrics["check_slice"]
    assert len(xs) == recorded["count"]
    backend = load("onnx", folder, m, threads=1)
    dtype = np.float32 if m.token_dtype == "float32" else np.int64
    total, positions = 0.0, 0
    for x in xs:
        total -= float(backend.log_prob(np.asarray(x, dtype=dtype)[None]).astype(np.float64).sum())
        positions += len(x)
    assert positions == recorded["positions"]
    assert math.isclose(total, recorded["nll_nats_total"], rel_tol=1e-4, abs_tol=1e-2), (
        f"{m.name}: the artifact gives {total:.4f} nats on the {recorded['split']} slice, "
        f"the manifest says {recorded['nll_nats_total']:.4f}"
    )
