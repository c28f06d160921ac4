"""The manifest's state declaration (docs/state.md): validated, enforced by the exporter, and format 1 still served."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from app.engine.generation import Batch, Generation, SampleSpec
from app.runtime.backends import load
from app.runtime.manifest import StateTensor, load_manifest


def slots(**edits) -> dict:
    return {"name": "cache", "shape": ["batch", 2, 10, 8], "dtype": "float32", "update": "slots", "slot_axis": 2,
            "rings": [[0, 10]], **edits}


@pytest.mark.parametrize("edits,match", [
    ({"slot_axis": None}, "slot_axis"),
    ({"slot_axis": 0}, "slot_axis"),
    ({"rings": [[0, 11]]}, "fit"),
    ({"rings": [[0, 4], [3, 2]]}, "disjoint"),
    ({"rings": []}, "fit"),
    ({"update": "replace"}, "belong to update 'slots'"),
])
def test_bad_state_declarations_are_refused(edits, match):
    with pytest.raises(ValidationError, match=match):
        StateTensor(**slots(**edits))


def test_a_good_declaration_and_the_replace_default():
    assert StateTensor(**slots(rings=[[0, 1], [1, 2], [3, 4]])).update == "slots"
    assert StateTensor(name="h", shape=["batch", 3], dtype="float32").update == "replace"


def test_the_gate_refuses_writes_outside_the_declared_slots():
    from models.export import ExportError, check_slots

    spec = [StateTensor(**slots())]
    before = np.zeros((2, 2, 10, 8), np.float32)
    after = before.copy()
    pos = np.array([3, 7])
    after[0, :, 3] = 1
    after[1, 1, 7] = 2
    check_slots(spec, [before], [after], pos)  # each row wrote its own slot pos
    after[1, 0, 6] = 5
    with pytest.raises(ExportError, match="changed slot 6 of row 1"):
        check_slots(spec, [before], [after], pos)


@pytest.mark.parametrize("family", ["wavenet", "transformer"])
def test_shipped_kinds_of_state_are_declared_in_place(artifacts, family):
    m = load_manifest(artifacts / f"tiny-{family}")
    assert m.format_version == 2 and all(s.update == "slots" for s in m.state)


def _draw(folder, backend_name: str) -> list:
    m = load_manifest(folder)
    backend = load(backend_name, folder, m, 1)
    batch = Batch(backend, max_rows=2)
    gens = [Generation(SampleSpec(max_new=6, prefix=np.zeros(0, np.int64), seed=s), False, m.token_dtype)
            for s in (3, 4)]
    for g in gens:
        batch.join(g)
    while len(batch):
        for g in batch.step(len(batch))[0]:
            batch.leave(g)
    return [g.tokens for g in gens]


def test_format_1_artifacts_keep_loading_with_state_copied(artifacts, tmp_path):
    """A format-1 manifest has no update fields: its state reads as "replace" (copied in and out, as before)
    and the same graphs draw the same samples."""
    old = tmp_path / "tiny-wavenet"
    shutil.copytree(artifacts / "tiny-wavenet", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    for s in manifest["state"]:
        for key in ("update", "slot_axis", "rings"):
            s.pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    m = load_manifest(old)
    assert [s.update for s in m.state] == ["replace"]
    for backend_name in ("onnx", "torchscript"):
        assert _draw(old, backend_name) == _draw(artifacts / "tiny-wavenet", backend_name)


@pytest.mark.parametrize("backend_name", ["onnx", "torchscript"])
@pytest.mark.parametrize("family", ["wavenet", "transformer"])
def test_verify_checks_the_slots_a_step_writes(artifacts, tmp_path, family, backend_name):
    """arserve verify's state property: a "slots" tensor is written in the buffer given, at its declared slots
    only. The real artifact passes; the same graphs with a ring declared half its size fail (a step at the last
    position writes a slot the declaration does not name)."""
    from app.engine.verify import check_state

    m = load_manifest(artifacts / f"tiny-{family}")
    check = check_state(load(backend_name, artifacts / f"tiny-{family}", m, 1), m)
    assert check.passed, check.detail
    wrong = tmp_path / f"tiny-{family}"
    shutil.copytree(artifacts / f"tiny-{family}", wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    s = max(manifest["state"], key=lambda s: s["rings"][-1][1])  # the tensor with the longest ring
    start, size = s["rings"][-1]
    s["rings"][-1] = [start, size // 2]
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    m = load_manifest(wrong)
    check = check_state(load(backend_name, wrong, m, 1), m)
    assert not check.passed and "outside its declared slots" in check.detail


def test_a_kept_binding_follows_the_callers_buffers(artifacts):
    """The ONNX backend keeps its binding (and a params buffer of its own) while the caller passes the same
    arrays, and binds anew for other arrays, new views of other rows or after release: every step gives the
    params and cache writes of a binding made for that call alone, and params it returned stay as returned."""
    folder = artifacts / "tiny-transformer"
    m = load_manifest(folder)
    kept, fresh = load("onnx", folder, m, 1), load("onnx", folder, m, 1)
    rng = np.random.default_rng(0)
    ours = [kept.init_state(3) for _ in range(2)]
    theirs = [[a.copy() for a in s] for s in ours]
    pos = np.zeros((2, 3), dtype=np.int64)
    same = [buf[1:3] for buf in ours[0]]  # one list of views, passed again and again
    plan = [(0, 1, 3, same)] * 3 + [(0, 0, 1, None), (0, 1, 3, same), (1, 0, 3, None), (0, 1, 3, None),
                                    (0, 1, 3, same), "release", (0, 1, 3, same), (1, 0, 2, None)]
    returned = []
    for item in plan:
        if item == "release":
            kept.release()
            continue
        b, lo, hi, views = item
        views = views or [buf[lo:hi] for buf in ours[b]]
        x_prev = rng.integers(0, m.vocab_size, hi - lo)
        at = pos[b, lo:hi].copy()
        params, _ = kept.step(x_prev, at, views)
        fresh.release()
        want, _ = fresh.step(x_prev, at, [buf[lo:hi] for buf in theirs[b]])
        assert np.array_equal(params, want)
        returned.append((params, params.copy()))
        pos[b, lo:hi] += 1
        for a, w in zip(ours[b], theirs[b], strict=True):
            assert np.array_equal(a, w)
    assert all(np.array_equal(p, copy) for p, copy in returned)
