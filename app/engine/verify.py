"""Black-box conformance of an exported artifact: does it behave as an exact autoregressive model?

Written against the backend protocol only (`log_prob`, `init_state`, `step`; app/runtime/backends.py), never
against model code or raw graph files, so it judges an artifact however it was made. Each property is one
function returning a `Check` with the worst deviation it measured:

    state       the state tensors that init_state and step produce are the ones the manifest declares, and
                a "slots" tensor is written in place, at its declared slots only (docs/state.md)
    score_step  sequences stepped one token at a time give the parallel (score) log-probs, position by position
    causal      changing x_j changes no log-prob before position j
    normalized  each conditional of the score graph sums (integrates, for mixtures) to one over x_i
    batching    rows batched at different positions get the answers they get alone
    held_out    the manifest's held-out check slice reproduces (when the caller has the data)
    multi_step  the multi-token graph (stepk.onnx, where the manifest declares one) draws exactly the seeded
                tokens and log-probs of one step per position

The server runs these with the FAST budget when it loads a backend (ARSERVE_VERIFY_ON_LOAD) and refuses a
model that fails; `arserve verify` runs them with FULL on every backend and adds the manifest and hashes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.engine.generation import multi_token_problem
from app.engine.sampling import log_softmax, mixture_log_density, sample_categorical, sample_mixture
from app.runtime.backends import Backend
from app.runtime.manifest import ArtifactError, Manifest, load_manifest, revision

ATOL, RTOL = 1e-4, 1e-5  # step vs score, batched vs alone: the exporter's parity tolerance
CAUSAL_ATOL, CAUSAL_RTOL = 1e-5, 1e-6  # rows of one call: unchanged inputs should give identical outputs
SUM_ATOL = 1e-4  # |log sum_v p(x_i = v)| for discrete conditionals
INTEGRAL_ATOL = 1e-3  # |integral of p(x_i) - 1| for mixtures (a quadrature on a grid)
SLICE_RTOL, SLICE_ATOL = 1e-4, 1e-2  # held-out slice total (nats), as tests/test_shipped.py holds it
SLICE_FILE = "check_slice.npy"

PROPERTIES = {
    "manifest": "manifest validates and every file matches its sha256",
    "load": "the runtime loads the graphs",
    "state": "state tensors match the manifest (count, shapes, dtypes; slots written in place, only there)",
    "score_step": "stepping one token at a time equals the parallel log-probs",
    "causal": "no log-prob depends on a later token",
    "normalized": "each conditional sums (or integrates) to 1",
    "batching": "rows batched at different positions answer as alone",
    "held_out": "the manifest's held-out check slice reproduces",
    "multi_step": "several positions per call draw exactly what one position per call draws",
}


@dataclass(frozen=True)
class Budget:
    """How hard to look. The checks are sound at any budget; a bigger one covers more positions."""

    sequences: int  # sequences stepped one token at a time (half drawn from the model, half uniform tokens)
    positions: int  # positions stepped per sequence (at most the model's length)
    probes: int  # positions probed for causality and normalization
    rows: int  # rows batched at different positions
    grid: int = 241  # mixtures: quadrature points per component over +-12 standard deviations
    seed: int = 0


FAST = Budget(sequences=2, positions=12, probes=2, rows=3, grid=121)  # the server's check at load time
FULL = Budget(sequences=4, positions=96, probes=8, rows=4)  # `arserve verify`


@dataclass(frozen=True)
class Check:
    name: str  # a key of PROPERTIES
    passed: bool | None  # None: skipped (detail says why)
    worst: float | None = None  # the worst deviation measured
    tolerance: float | None = None
    detail: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.passed is None else "pass" if self.passed else "FAIL"


@dataclass
class Report:
    model: str
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def message(self) -> str:
        """One line naming every failed property: what the server logs when it refuses the model."""
        fails = "; ".join(f"{c.name}: {c.detail}" for c in self.failures)
        return f"{self.model} ({self.backend}) fails conformance: {fails}" if fails else f"{self.model} conforms"

    def to_json(self) -> dict:
        return {"model": self.model, "backend": self.backend, "ok": self.ok,
                "checks": [{"property": c.name, "status": c.status, "worst": c.worst, "tolerance": c.tolerance,
                            "detail": c.detail} for c in self.checks]}


# ----- the model's conditionals, from step parameters -------------------------------------------------


def _mixture(m: Manifest) -> bool:
    return m.distribution == "gaussian_mixture"


def token_logprobs(m: Manifest, params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(token) under each row's step parameters: params [B, P], tokens [B] -> [B]."""
    if _mixture(m):
        return mixture_log_density(params, tokens)
    return log_softmax(params)[np.arange(len(tokens)), np.asarray(tokens, dtype=np.int64)]


def canonical(m: Manifest, params: np.ndarray) -> np.ndarray:
    """Step parameters in a form where equal distributions give equal numbers (logits are shift-free)."""
    if _mixture(m):
        logit_w, mu, log_sigma = np.split(np.asarray(params, dtype=np.float64), 3, axis=-1)
        return np.concatenate([log_softmax(logit_w), mu, log_sigma], axis=-1)
    return log_softmax(params)


def _draw(m: Manifest, params: np.ndarray, rng: np.random.Generator):
    if _mixture(m):
        return sample_mixture(params[None], rng)[0]
    return sample_categorical(params[None], rng)[0]


def _random_tokens(m: Manifest, n: int, rng: np.random.Generator) -> np.ndarray:
    if _mixture(m):
        return rng.standard_normal(n).astype(np.float32)
    return rng.integers(0, m.vocab_size, n).astype(np.int64)


def _within(expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """(|difference|, ok) elementwise; NaN is never ok."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    err = np.abs(expected - got)
    ok = err <= atol + rtol * np.abs(expected)
    return np.where(np.isnan(err), np.inf, err), ok


def _worst(err: np.ndarray) -> float:
    return float(err.max()) if err.size else 0.0


# ----- the material the checks share: sequences stepped one token at a time ------------------------------


@dataclass
class Walk:
    """One sequence fed through `step` from position 0: its tokens, the step parameters at every stepped
    position, and copies of the state at chosen positions (for the batching check)."""

    tokens: np.ndarray  # [T] the whole sequence as score sees it (stepped prefix, then random filler)
    params: np.ndarray  # [K, P] step parameters at positions 0 .. K-1
    states: dict[int, list[np.ndarray]]  # position -> the state a step at that position receives


def walk(backend: Backend, m: Manifest, steps: int, length: int, rng: np.random.Generator, draw: bool,
         keep: Sequence[int] = ()) -> Walk:
    """Step one row for `steps` positions, drawing each token from the model (draw) or uniformly at random."""
    forced = _random_tokens(m, length, rng)  # also the filler after the stepped prefix
    tokens = forced.copy()
    state = backend.init_state(1)
    x_prev = np.zeros(1, dtype=m.token_dtype)
    params, states = [], {}
    for pos in range(steps):
        if pos in keep:
            states[pos] = [np.array(s, copy=True) for s in state]  # a step may reuse the buffers it was given
        p, state = backend.step(x_prev, np.array([pos], dtype=np.int64), state)
        p = np.asarray(p, dtype=np.float64)[0]  # (P,)
        if draw:
            tokens[pos] = _draw(m, p, rng)
        params.append(p)
        x_prev = tokens[pos : pos + 1].astype(m.token_dtype)
    return Walk(tokens, np.stack(params), states)


@dataclass(frozen=True)
class Plan:
    """What to check where, fixed up front from the budget and the model's length."""

    steps: int  # K positions stepped per sequence
    length: int  # T positions scored (the model's length for fixed-length models, else K)
    offsets: list[tuple[int, int]]  # batching rows: (sequence, first position)
    span: int  # positions each batching row is stepped


def plan(m: Manifest, budget: Budget) -> Plan:
    K = max(1, min(m.length, budget.positions))
    T = K if m.variable_length else m.length
    span = max(1, K // 2)
    R = max(2, budget.rows)
    offsets = [(r % max(1, budget.sequences), round(r * (K - span) / (R - 1))) for r in range(R)]
    return Plan(K, T, offsets, span)


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    """A backend that raises fails the property being checked, with what it raised."""
    try:
        return fn()
    except Exception as e:  # an artifact may fail in any way; the report names the property and the error
        return Check(name, False, detail=f"raised {_one_line(e)}")


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]


# ----- the properties ---------------------------------------------------------------------------------


def state_problems(m: Manifest, state: Sequence[np.ndarray], batch: int, where: str) -> list[str]:
    """Differences between state tensors and the manifest's declaration (the only place that reads it)."""
    if len(state) != len(m.state):
        return [f"{where} gives {len(state)} state tensors, the manifest declares {len(m.state)}"]
    problems = []
    for spec, s in zip(m.state, state, strict=True):
        want = (batch, *spec.shape[1:])
        if tuple(np.shape(s)) != want:
            problems.append(f"{where} gives {spec.name!r} the shape {tuple(np.shape(s))}, the manifest "
                            f"declares {want}")
        if np.asarray(s).dtype != np.dtype(spec.dtype):
            problems.append(f"{where} gives {spec.name!r} dtype {np.asarray(s).dtype}, the manifest declares "
                            f"{spec.dtype}")
    return problems


def check_state(backend: Backend, m: Manifest) -> Check:
    B = 2
    state = backend.init_state(B)
    problems = state_problems(m, state, B, "init_state")
    try:
        params, new = backend.step(np.zeros(B, dtype=m.token_dtype), np.array([0, 1], dtype=np.int64), state)
    except Exception as e:
        problems.append(f"step refuses the declared state: {_one_line(e)}")
    else:
        problems += state_problems(m, new, B, "step")
        if tuple(np.shape(params)) != (B, m.num_params):
            problems.append(f"step gives params of shape {tuple(np.shape(params))}, the manifest declares "
                            f"{(B, m.num_params)} (num_params)")
    if not problems and any(s.update == "slots" for s in m.state):
        problems += slots_problems(backend, m)
    return Check("state", not problems, detail="; ".join(problems))


def slots_problems(backend: Backend, m: Manifest) -> list[str]:
    """One step from a state of random values, rows at the last, first and middle positions: each "slots" tensor
    must be written in the buffer the step was given (the engine keeps that buffer and ignores the output), and
    only at the slots its declaration names (start + pos % size of each ring along slot_axis)."""
    pos = np.array([m.length - 1, 0, m.length // 2], dtype=np.int64)
    state = backend.init_state(len(pos))
    rng = np.random.default_rng(0)
    for s in state:
        if s.dtype.kind == "f":
            s[...] = rng.standard_normal(s.shape)
    before = [np.array(s, copy=True) for s in state]
    _, new = backend.step(np.zeros(len(pos), dtype=m.token_dtype), pos, state)
    problems = []
    for spec, given, old, out in zip(m.state, state, before, new, strict=True):
        if spec.update != "slots":
            continue
        if not np.array_equal(given, np.asarray(out), equal_nan=given.dtype.kind == "f"):
            problems.append(f"step does not write {spec.name!r} in place: its output differs from the buffer it "
                            f"was given (declared update 'slots')")
            continue
        changed = np.moveaxis(given != old, spec.slot_axis, 1).reshape(len(pos), given.shape[spec.slot_axis], -1)
        changed = changed.any(axis=2)
        for start, size in spec.rings:
            changed[np.arange(len(pos)), start + pos % size] = False
        if changed.any():
            row, slot = (int(i) for i in np.argwhere(changed)[0])
            problems.append(f"step at position {int(pos[row])} changed slot {slot} of {spec.name!r} in row {row}, "
                            f"outside its declared slots")
    return problems


def check_score_step(backend: Backend, m: Manifest, walks: list[Walk], p: Plan) -> Check:
    x = np.stack([w.tokens[: p.length] for w in walks])  # (S, T)
    scored = np.asarray(backend.log_prob(x), dtype=np.float64)  # (S, T)
    if scored.shape != x.shape:
        return Check("score_step", False, detail=f"score gives shape {scored.shape} for x of shape {x.shape}")
    stepped = np.stack([token_logprobs(m, w.params, w.tokens[: p.steps]) for w in walks])  # (S, K)
    err, ok = _within(scored[:, : p.steps], stepped, ATOL, RTOL)
    detail = f"{len(walks)} sequences x {p.steps} positions"
    if not ok.all():
        s, i = (int(v) for v in np.argwhere(~ok)[0])
        detail = (f"at position {i} of sequence {s}, step gives {stepped[s, i]:.6g} and score "
                  f"{scored[s, i]:.6g} ({int((~ok).sum())} of {ok.size} positions differ)")
    return Check("score_step", bool(ok.all()), _worst(err), ATOL, detail)


def check_causal(backend: Backend, m: Manifest, x: np.ndarray, probes: list[int], rng: np.random.Generator
                 ) -> Check:
    """x [T]; one call scores x and, per probe j, x with x_j changed: positions before j must not move."""
    probes = [j for j in probes if j >= 1]
    rows = [x]
    for j in probes:
        y = x.copy()
        y[j] = (x[j] + rng.integers(1, m.vocab_size)) % m.vocab_size if not _mixture(m) else x[j] + 1.0
        rows.append(y)
    lp = np.asarray(backend.log_prob(np.stack(rows)), dtype=np.float64)  # (1 + P, T)
    worst, detail, passed = 0.0, f"changed x_j at j = {probes}", True
    for r, j in enumerate(probes, start=1):
        err, ok = _within(lp[0, :j], lp[r, :j], CAUSAL_ATOL, CAUSAL_RTOL)
        worst = max(worst, _worst(err))
        if passed and not ok.all():
            i = int(np.argmax(~ok))
            passed, detail = False, (f"the log-prob at position {i} changes by {err[i]:.3g} when x_{j} changes: "
                                     f"the model sees the future")
    return Check("causal", passed, worst, CAUSAL_ATOL, detail)


def check_normalized(backend: Backend, m: Manifest, w: Walk, probes: list[int], p: Plan, grid: int) -> Check:
    if _mixture(m):
        return _integrates_to_one(backend, w, probes, p, grid)
    V = m.vocab_size
    T = p.length if not m.variable_length else max(probes) + 1  # causal: later positions are not needed
    rows = np.repeat(w.tokens[None, :T], len(probes) * V, axis=0)  # (P * V, T)
    for k, i in enumerate(probes):
        rows[k * V : (k + 1) * V, i] = np.arange(V)
    lp = np.asarray(backend.log_prob(rows), dtype=np.float64)  # (P * V, T)
    sums = np.array([_logsumexp(lp[k * V : (k + 1) * V, i]) for k, i in enumerate(probes)])  # (P,)
    err = np.where(np.isnan(sums), np.inf, np.abs(sums))
    k = int(np.argmax(err))
    passed = bool((err <= SUM_ATOL).all())
    detail = (f"positions {probes}" if passed else
              f"the conditional at position {probes[k]} sums to {math.exp(min(sums[k], 700)):.6g}, not 1")
    return Check("normalized", passed, _worst(err), SUM_ATOL, detail)


def _logsumexp(v: np.ndarray) -> float:
    top = v.max()
    return float(top + np.log(np.exp(v - top).sum())) if np.isfinite(top) else float(top)


def _integrates_to_one(backend: Backend, w: Walk, probes: list[int], p: Plan, points: int) -> Check:
    """Mixtures: the score graph's density at position i, integrated by the trapezoid rule over a grid dense
    around every component of the step's mixture there (error ~4e-5 with 241 points, ~2e-4 with 121)."""
    worst, detail = 0.0, f"positions {probes}"
    for i in probes:
        _, mu, log_sigma = np.split(w.params[i], 3)
        sigma = np.exp(log_sigma)
        grid = np.unique(np.concatenate([mu_c + s_c * np.linspace(-12, 12, points) for mu_c, s_c in zip(mu, sigma,
                                                                                                      strict=True)]))
        rows = np.repeat(w.tokens[None, : p.length], len(grid), axis=0)
        rows[:, i] = grid.astype(np.float32)
        density = np.exp(np.asarray(backend.log_prob(rows), dtype=np.float64)[:, i])
        x = rows[:, i].astype(np.float64)
        err = abs(float(np.sum((density[1:] + density[:-1]) * np.diff(x)) / 2) - 1.0)
        err = math.inf if math.isnan(err) else err
        if err > worst:
            worst = err
        if err > INTEGRAL_ATOL:
            return Check("normalized", False, worst, INTEGRAL_ATOL,
                         f"the density at position {i} integrates to {1 + err:.6g} or {1 - err:.6g}, not 1")
    return Check("normalized", True, worst, INTEGRAL_ATOL, detail)


def check_batching(backend: Backend, m: Manifest, walks: list[Walk], p: Plan) -> Check:
    """Rows resumed from states saved at different positions, stepped together, against their own walks."""
    rows = [(walks[s], start) for s, start in p.offsets]
    state = [np.concatenate(parts) for parts in zip(*(w.states[start] for w, start in rows), strict=True)]
    worst, first_bad = 0.0, None
    for t in range(p.span):
        pos = np.array([start + t for _, start in rows], dtype=np.int64)  # (R,) every row at its own position
        x_prev = np.array([w.tokens[q - 1] if q > 0 else 0 for (w, _), q in zip(rows, pos, strict=True)],
                          dtype=m.token_dtype)
        params, state = backend.step(x_prev, pos, state)
        got = canonical(m, np.asarray(params, dtype=np.float64))  # (R, P)
        want = canonical(m, np.stack([w.params[q] for (w, _), q in zip(rows, pos, strict=True)]))
        err, ok = _within(want, got, ATOL, RTOL)
        worst = max(worst, _worst(err))
        if first_bad is None and not ok.all():
            r = int(np.argwhere(~ok)[0][0])
            first_bad = (f"row {r} at position {pos[r]} (batched with rows at {pos.tolist()}) is off by "
                         f"{err[r].max():.3g}")
    starts = [start for _, start in rows]
    detail = first_bad or f"{len(rows)} rows starting at positions {starts}, {p.span} steps"
    return Check("batching", first_bad is None, worst, ATOL, detail)


def check_held_out(backend: Backend, m: Manifest, examples: list[np.ndarray] | None, why_none: str) -> Check:
    recorded = m.metrics.get("check_slice")
    if not recorded:
        return Check("held_out", None, detail="the manifest records no check slice")
    if examples is None:
        return Check("held_out", None, detail=why_none)
    if len(examples) != recorded.get("count", len(examples)):
        return Check("held_out", False, detail=f"{len(examples)} examples, the manifest's slice has "
                                               f"{recorded['count']}")
    total = 0.0
    for length in sorted({len(x) for x in examples}):
        same = [np.asarray(x, dtype=m.token_dtype) for x in examples if len(x) == length]
        for i in range(0, len(same), 16):
            total -= float(np.asarray(backend.log_prob(np.stack(same[i : i + 16])), dtype=np.float64).sum())
    want = float(recorded["nll_nats_total"])
    err = abs(total - want)
    tol = max(SLICE_ATOL, SLICE_RTOL * abs(want))
    detail = f"{len(examples)} {recorded.get('split', '')} examples: {total:.4f} nats, the manifest says {want:.4f}"
    return Check("held_out", err <= tol, err, tol, detail)


# ----- running them -----------------------------------------------------------------------------------


def verify_backend(backend: Backend, m: Manifest, budget: Budget = FAST, held_out: list[np.ndarray] | None = None,
                   why_no_data: str = "no held-out data given") -> Report:
    """Every property but the manifest's, on one loaded backend. Never raises for a broken artifact."""
    report = Report(m.name, getattr(backend, "name", "?"))
    p = plan(m, budget)
    rng = np.random.default_rng(budget.seed)
    report.checks.append(_guard("state", lambda: check_state(backend, m)))
    keep = {start for _, start in p.offsets}
    walks: list[Walk] = []

    def stepped() -> Check:
        for s in range(max(1, budget.sequences)):
            draw = _mixture(m) or s % 2 == 0  # half the sequences are the model's own, half uniform tokens
            walks.append(walk(backend, m, p.steps, p.length, rng, draw, keep))
        return check_score_step(backend, m, walks, p)

    report.checks.append(_guard("score_step", stepped))
    x = walks[0].tokens[: p.length] if walks else _random_tokens(m, p.length, rng)
    causal_probes = sorted({p.length - 1, *rng.integers(1, max(2, p.length), budget.probes).tolist()})
    report.checks.append(_guard("causal", lambda: check_causal(backend, m, x, causal_probes, rng)))
    probes = sorted({0, *rng.integers(0, p.steps, max(0, budget.probes - 1)).tolist()})
    if walks:
        normalized = lambda: check_normalized(backend, m, walks[0], probes, p, budget.grid)  # noqa: E731
        report.checks.append(_guard("normalized", normalized))
        report.checks.append(_guard("batching", lambda: check_batching(backend, m, walks, p)))
    else:
        for name in ("normalized", "batching"):
            report.checks.append(Check(name, False, detail="not checked: stepping the model raised (see score_step)"))
    report.checks.append(_guard("held_out", lambda: check_held_out(backend, m, held_out, why_no_data)))
    report.checks.append(_guard("multi_step", lambda: check_multi_step(backend, m, p, budget)))
    return report


def check_multi_step(backend: Backend, m: Manifest, p: Plan, budget: Budget) -> Check:
    """Seeded samples drawn several positions per call (the manifest's multi_step graph) equal, token for token and
    log-prob for log-prob, those drawn one position per call: through the engine's own generation loop."""
    if m.multi_step is None or getattr(backend, "step_k", None) is None:
        why = "no multi_step graph declared" if m.multi_step is None else "this backend runs one position per call"
        return Check("multi_step", None, detail=why)
    temperatures = [1.0, 0.0] if _mixture(m) else [1.0, 0.0, 0.7]
    problem, checked = multi_token_problem(backend, _mixture(m), m.token_dtype, p.steps, budget.seed, temperatures)
    if problem:
        return Check("multi_step", False, detail=problem)
    return Check("multi_step", True, 0.0, 0.0, f"{checked} tokens and log-probs identical (chunks 7 and 64, 1 and 3 "
                                                f"rows, temperatures {temperatures})")


def check_manifest(folder: Path) -> tuple[Check, Manifest | None]:
    """The manifest validates and every file it lists is there with its size and sha256."""
    try:
        m = load_manifest(folder, verify=True)
    except ArtifactError as e:
        return Check("manifest", False, detail=str(e)), None
    return Check("manifest", True, detail=f"{len(m.files)} files, revision {revision(folder)}"), m


def artifact_slice(folder: Path, m: Manifest) -> list[np.ndarray] | None:
    """A hand-made artifact may carry its own check slice: check_slice.npy ([N, T] examples), listed in files."""
    if SLICE_FILE not in m.files:
        return None
    return list(np.load(folder / SLICE_FILE, allow_pickle=False).astype(m.token_dtype))
