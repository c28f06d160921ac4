"""Several positions per runtime call (stepk.onnx) draw exactly the samples of one position per call.

For the five families that ship a multi-token graph, seeded samples through the engine with chunk > 1 (the graph
draws up to `chunk` positions per call from random numbers each row drew beforehand) must be those of chunk 1
(one step.onnx call and one numpy draw per position), bit for bit: tokens, log-probs, the most likely tokens
of every position; for any batch, chunk, temperature, prefix, with rows of other settings beside them, and
when the graph stops a row early (a draw too close to call), which then goes one position through step.onnx.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.engine.generation import Batch, Generation, SampleSpec, generate
from app.engine.sampling import bernoulli_bounds, draw_row, sample_rows
from app.engine.verify import FAST, check_multi_step, plan
from app.runtime.backends import OnnxBackend, load
from app.runtime.manifest import Manifest, load_manifest, sha256_file

MULTI = ["nade", "fvsbn", "made", "finite", "rnade"]
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["nade-mnist", "fvsbn-mnist", "made2000-mnist", "finite-shakespeare", "rnade-digits"]


class Counted:
    """A real backend, with its calls counted (to see which path ran)."""

    def __init__(self, backend):
        self.inner, self.calls = backend, {"step": 0, "step_k": 0}
        self.name, self.updates, self.batch_invariant = backend.name, backend.updates, backend.batch_invariant
        self.step_k = _CountedRunner(self) if backend.step_k is not None else None

    def init_state(self, batch):
        return self.inner.init_state(batch)

    def log_prob(self, x):
        return self.inner.log_prob(x)

    def step(self, *args):
        self.calls["step"] += 1
        return self.inner.step(*args)



class _CountedRunner:
    def __init__(self, counted: Counted):
        self.counted, self.draw = counted, counted.inner.step_k.draw

    def __call__(self, *args):
        self.counted.calls["step_k"] += 1
        return self.counted.inner.step_k(*args)


def _spec(m: Manifest, seed: int, chunk: int, **kw) -> SampleSpec:
    n = kw.pop("max_new", min(m.length, 40))
    prefix = np.asarray(kw.pop("prefix", []), dtype=m.token_dtype)
    return SampleSpec(max_new=n - len(prefix), prefix=prefix, seed=seed, chunk=chunk, **kw)


def _run(backend, m: Manifest, specs: list[SampleSpec]) -> list[Generation]:
    return generate(backend, specs, m.distribution == "gaussian_mixture", m.token_dtype)


def _same(a: list[Generation], b: list[Generation]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.tokens == y.tokens
        assert x.logprobs == y.logprobs  # the same bits, not close
        assert x.top == y.top


@pytest.fixture(scope="module")
def tiny(artifacts):
    def get(family: str):
        folder = artifacts / f"tiny-{family}"
        m = load_manifest(folder)
        return Counted(OnnxBackend(folder, m)), m

    return get


@pytest.mark.parametrize("family", MULTI)
def test_the_exporter_declares_a_multi_token_graph_whose_weights_live_in_model_pt(artifacts, family):
    m = load_manifest(artifacts / f"tiny-{family}")
    assert m.multi_step is not None and m.multi_step.file in m.files
    assert m.export["parity"]["multi_step"]["tokens_equal"]
    proto = onnx.load(str(artifacts / f"tiny-{family}" / m.multi_step.file), load_external_data=False)
    assert [n.op_type for n in proto.graph.node].count("Scan") == 1
    external = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert external <= {"model.pt", "weights.bin"}


def test_families_with_costly_tokens_or_in_place_state_have_none(artifacts):
    for family in ("lstm", "transformer", "wavenet", "pixelcnn"):
        assert load_manifest(artifacts / f"tiny-{family}").multi_step is None


@pytest.mark.parametrize("family", MULTI)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("chunk", [2, 5, 64])
def test_chunks_draw_the_one_token_samples(tiny, family, rows, chunk):
    backend, m = tiny(family)
    temperatures = [1.0, 0.0, 0.6] if m.distribution != "gaussian_mixture" else [1.0, 0.0, 1.7]
    for t in temperatures:
        want = _run(backend, m, [_spec(m, 10 + r, 1, temperature=t) for r in range(rows)])
        before = dict(backend.calls)
        got = _run(backend, m, [_spec(m, 10 + r, chunk, temperature=t) for r in range(rows)])
        _same(want, got)
        assert backend.calls["step_k"] > before["step_k"], "the multi-token graph did not run"


@pytest.mark.parametrize("family", MULTI)
def test_prefix_top_logprobs_and_neighbours_with_other_settings(tiny, family):
    """A prefix goes one position per call, then the graph draws; top_logprobs are recorded at every position;
    rows that cannot use the graph (chunk 1, top-p, min-p) run beside rows that do, each drawing its own sample."""
    backend, m = tiny(family)
    mixture = m.distribution == "gaussian_mixture"
    prefix = [0.5, -0.25, 1.0] if mixture else [1, 0, 1]
    others = [{}] if mixture else [{"top_p": 0.8}, {"min_p": 0.2}, {"top_k": 1}, {"top_logprobs": 2}]
    specs = [_spec(m, 1, 16, prefix=prefix, **({} if mixture else {"top_logprobs": 2})), _spec(m, 2, 1),
             *[_spec(m, 3 + i, 8, **kw) for i, kw in enumerate(others)]]
    together = _run(backend, m, specs)
    for spec, gen in zip(specs, together, strict=True):
        _same(_run(backend, m, [replace(spec, chunk=1)]), [gen])


@pytest.mark.parametrize("family", MULTI)
def test_a_row_the_graph_stops_early_goes_on_one_token_with_the_same_sample(tiny, family):
    """Where a draw is too close to call the graph stops that row before it; here stops are forced at random
    positions (Bernoulli: bounds that never settle; the others: a smaller n), and the samples must not change."""
    backend, m = tiny(family)
    rng = np.random.default_rng(0)
    inner = backend.inner.step_k
    stops = []

    def stopping(x_prev, pos, state, draws, n):
        draws, n = dict(draws), n.copy()
        for r in range(len(n)):
            if n[r] > 1 and rng.random() < 0.7:
                j = int(rng.integers(0, n[r]))
                stops.append(j)
                if inner.draw == "bernoulli":
                    draws["lo"], draws["hi"] = draws["lo"].copy(), draws["hi"].copy()
                    draws["lo"][r, j], draws["hi"][r, j] = -np.inf, np.inf
                else:
                    n[r] = j
        return inner(x_prev, pos, state, draws, n)

    stopping.draw = inner.draw
    backend.inner.step_k = stopping
    try:
        for rows in (1, 3):
            want = _run(backend, m, [_spec(m, 20 + r, 1) for r in range(rows)])
            _same(want, _run(backend, m, [_spec(m, 20 + r, 6) for r in range(rows)]))
    finally:
        backend.inner.step_k = inner
    assert stops


def test_members_joining_and_leaving_a_multi_token_batch(tiny):
    """Rows at different positions, joining mid-way and leaving, in one Batch: each draws its own sample."""
    backend, m = tiny("nade")
    specs = [_spec(m, s, c) for s, c in ((1, 3), (2, 64), (3, 1), (4, 5))]
    alone = [_run(backend, m, [replace(s, chunk=1)])[0] for s in specs]
    batch = Batch(backend, 4)
    gens = [Generation(s, False, m.token_dtype) for s in specs]
    batch.join(gens[0])
    batch.join(gens[1])
    turns = 0
    while len(batch) or turns < 3:
        if turns == 1:
            batch.join(gens[2])
        if turns == 2:
            batch.join(gens[3])
        done, _ = batch.step(len(batch))
        for g in done:
            batch.leave(g)
        turns += 1
    _same(alone, gens)


def test_the_torchscript_backend_draws_one_position_per_call_with_the_same_sample(artifacts, tiny):
    backend, m = tiny("fvsbn")
    ts = load("torchscript", artifacts / "tiny-fvsbn", m, 1)
    assert getattr(ts, "step_k", None) is None
    _same(_run(ts, m, [_spec(m, 5, 1)]), _run(ts, m, [_spec(m, 5, 32)]))


@pytest.mark.parametrize("temperature", [1.0, 0.35, 4.0, 0.0])
def test_bernoulli_bounds_settle_numpys_draw(temperature):
    """l >= hi always draws 1 and l <= lo always 0, in the one-row and the many-row draw alike: at the bounds,
    one float32 beyond them, and at random logits (the edges of [0, 1) included)."""
    rng = np.random.default_rng(1)
    u = rng.random(20000)
    u[:4] = [0.0, 1 - 2**-53, 2**-53, 0.5]
    lo, hi = bernoulli_bounds(u, np.full(len(u), temperature))
    assert (lo <= hi).all()
    up, down = np.float32(np.inf), np.float32(-np.inf)
    finite = lambda v: np.where(np.isfinite(v), v, np.float32(1.0))  # noqa: E731
    for logit in (hi, lo, np.nextafter(hi, up), np.nextafter(lo, down), (rng.standard_normal(len(u)) * 6)):
        logit = finite(np.asarray(logit, dtype=np.float32))
        one, zero = logit >= hi, logit <= lo
        params = np.stack([logit * np.float32(0), logit], 1).astype(np.float64)
        sure = np.flatnonzero(one | zero)
        assert len(sure) > len(u) // 2
        assert (sample_rows(params[sure], u[sure], temperature) == one[sure]).all()
        for i in sure[:2000]:
            assert draw_row(params[i], float(u[i]), temperature) == int(one[i])


def test_verify_checks_the_multi_token_graph_and_catches_a_broken_one(artifacts, tmp_path):
    import shutil

    folder = tmp_path / "nade"
    shutil.copytree(artifacts / "tiny-nade", folder)
    m = load_manifest(folder)
    check = check_multi_step(OnnxBackend(folder, m), m, plan(m, FAST), FAST)
    assert check.passed, check.detail
    # invert the graph's draw (l <= hi instead of l >= hi): a graph that samples something else
    proto = onnx.load(str(folder / "stepk.onnx"), load_external_data=False)
    body = next(n for n in proto.graph.node if n.op_type == "Scan").attribute[0].g
    next(n for n in body.node if n.op_type == "GreaterOrEqual").op_type = "LessOrEqual"
    onnx.save(proto, str(folder / "stepk.onnx"))
    raw = json.loads((folder / "manifest.json").read_text())
    raw["files"]["stepk.onnx"] = {"sha256": sha256_file(folder / "stepk.onnx"),
                                  "bytes": (folder / "stepk.onnx").stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(folder)
    check = check_multi_step(OnnxBackend(folder, m), m, plan(m, FAST), FAST)
    assert check.passed is False and "differ" in check.detail


def test_a_manifest_without_multi_step_loads_and_one_naming_a_missing_file_does_not(artifacts):
    raw = json.loads((artifacts / "tiny-nade" / "manifest.json").read_text())
    raw.pop("multi_step")
    assert Manifest.model_validate(raw).multi_step is None
    raw = json.loads((artifacts / "tiny-nade" / "manifest.json").read_text())
    del raw["files"]["stepk.onnx"]
    with pytest.raises(ValueError, match="multi_step.file"):
        Manifest.model_validate(raw)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_draw_the_same_samples_several_positions_per_call(name):
    folder = ROOT / "exported" / name
    m = load_manifest(folder)
    assert m.multi_step is not None
    backend = Counted(OnnxBackend(folder, m))
    n = min(m.length, 300)
    for rows in (1, 2):
        want = _run(backend, m, [_spec(m, 40 + r, 1, max_new=n) for r in range(rows)])
        _same(want, _run(backend, m, [_spec(m, 40 + r, 50, max_new=n) for r in range(rows)]))
    assert backend.calls["step_k"]


@pytest.mark.anyio
@pytest.mark.parametrize("family", MULTI)
async def test_get_sample_events_hold_chunk_tokens_and_the_sample_does_not_change(client, family):
    """Through the HTTP API: the same seed at chunk 1 and chunk 3 (several positions per call) gives the same
    tokens and log-probs, in events of 3 tokens (the last may hold fewer)."""
    from conftest import sse_events

    model = f"tiny-{family}"
    one = await sse_events(client, model=model, seed=7, chunk=1, max_len=9)
    three = await sse_events(client, model=model, seed=7, chunk=3, max_len=9)
    done_one, done_three = one[-1][1], three[-1][1]
    assert one[-1][0] == three[-1][0] == "done"
    assert done_one["tokens"] == done_three["tokens"] and done_one["logprob"] == done_three["logprob"]
    sizes = [len(d["tokens"]) for e, d in three if e == "token"]
    assert sizes and all(s == 3 for s in sizes[:-1]) and 1 <= sizes[-1] <= 3
    assert [t for e, d in three if e == "token" for t in d["tokens"]] == done_three["tokens"]
