"""The roofline of one stream: per shipped model, the arithmetic and bytes of one token, the time they would take
at this core's measured peak, and where the measured time goes instead.

    python -m bench.roofline [--models nade-mnist ...] [--quick] [--no-http] [--out bench/results]

Writes <out>/roofline.{md,json,png}; `run(ctx)` is the `python -m bench` section "roofline". docs/roofline.md
says what each column means. Everything runs at batch 1 on one thread through ONNX Runtime (the runtime that
serves), the figures are taken in rounds, in alternation:

- machine: a 512 x 512 sgemm (compute peak, GMAC/s) and a batch-1 MatMul (gemv) over a 16 MiB matrix and over
  one that fits in L2 (weight-streaming bandwidth, GB/s), each less the run cost of a one-node graph; the best
  of the rounds (a ceiling), where every other figure is a median.
- per model, from step.onnx run once at batch 1 with every intermediate kept (`capture`): multiply-adds per
  token (MatMul, Gemm, Conv, Einsum, LSTM/GRU/RNN, attention's q.k and p.v at the position, and the elementwise
  products with a weight row gathered per token that NADE-like steps are made of) and the weight bytes touched
  (whole weights, or the rows a Gather reads; the KV cache attention reads is counted apart). ideal = max(MACs /
  peak, bytes / bandwidth).
- the split, by subtraction of unprofiled timings (each the median over rounds of that round's difference):
  matmul (a graph of only the step's counted nodes, same shapes and weights, inputs bound once, less a one-node
  graph's run); call (a one-node graph through the backend's call path); nodes = step - matmul - call; draw +
  loop = app.engine.generation.generate per token - step; HTTP = GET /sample (SSE, chunk 1) per token through
  a real server - generate per token.
- node time by op: shares from ONNX Runtime's profiler over one walk (it inflates small kernels: shares only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.engine.generation import SampleSpec, generate
from app.runtime import backends
from app.runtime.manifest import Manifest, load_manifest
from bench import common
from bench.common import Context, Figure, machine, serve

log = logging.getLogger("bench.roofline")

TOKENS = {False: 256, True: 32}  # quick -> tokens per generation of variable-length models (fixed: their length)
QUICK_REPEATS = 2
PROFILE_TOKENS = 256  # positions of the profiled walk (shares only)
CHUNK = 64  # positions per call on the multi-token path (manifest multi_step)
BATCH_SECONDS = 0.01  # a timed batch of tiny calls lasts about this long
SGEMM_N = 512  # compute peak: an N x N x N MatMul
GEMV_BIG = (2048, 2048)  # bandwidth: [1, K] x [K, N] float32, 16 MiB: beyond L2, within L3
GEMV_L2 = (256, 512)  # ... 512 KiB: within one core's L2
MACHINE_ROUNDS = 7  # at least: the machine's figures are the best round (a shared machine only ever slows them)
MATMUL_OPS = {"MatMul", "Gemm", "Conv", "Einsum", "LSTM", "GRU", "RNN", "GroupQueryAttention"}
GATHERS = {"Gather", "GatherElements", "GatherND", "Slice"}  # a weight read through these is read in part
SPLIT = ["matmul", "nodes", "call", "draw+loop", "http"]  # the parts of one token's time, in order


# ----- counting: multiply-adds and bytes of one step, from the graph --------------------------------------


def feeds_at(m: Manifest, pos: int) -> dict[str, np.ndarray]:
    """step.onnx's inputs for one row at `pos` (token 0, zero state)."""
    values = [np.zeros(1, dtype=m.token_dtype), np.array([pos], dtype=np.int64),
              *(np.zeros((1, *s.shape[1:]), dtype=s.dtype) for s in m.state)]
    return dict(zip(m.io.step_inputs, values, strict=True))


def capture(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The value of every graph input, weight and node output of one run (ONNX Runtime, no graph optimization,
    so that every node of the graph runs as written)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in node.output if o and o not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    values.update(feeds)
    values.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    return values


def constants(model: onnx.ModelProto) -> set[str]:
    """Values known before any input: weights, Constant nodes, and what is computed from those alone (ONNX
    Runtime folds them when it loads the graph)."""
    const = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # topological order
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(node.output)
    return const


@dataclass
class Count:
    """One step at batch 1: multiply-adds, bytes of weights read, bytes of KV cache read by attention."""

    macs: int = 0
    weight_bytes: int = 0
    kv_bytes: int = 0
    nodes: int = 0  # nodes left after folding the constant ones
    by_op: dict[str, int] = field(default_factory=dict)  # op type -> multiply-adds
    counted: list[int] = field(default_factory=list)  # indices of the nodes whose multiply-adds are counted

    def add(self, op: str, macs: int) -> None:
        self.macs += macs
        self.by_op[op] = self.by_op.get(op, 0) + macs


def node_macs(node: onnx.NodeProto, values: dict[str, np.ndarray], producer: dict[str, onnx.NodeProto],
              const: set[str]) -> tuple[int, int]:
    """(multiply-adds, KV-cache bytes read) of one node at the captured shapes; (0, 0) if it does no counted
    arithmetic."""
    shape = lambda i: values[node.input[i]].shape  # noqa: E731
    out = values[node.output[0]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "MatMul":
        a = shape(0)
        return out.size * a[-1], 0
    if op == "Gemm":
        a = shape(0)
        return out.size * (a[0] if attrs.get("transA") else a[1]), 0
    if op == "Conv":
        return out.size * int(np.prod(shape(1)[1:])), 0
    if op == "Einsum":  # a contraction: one multiply-add per combination of its indices
        terms = attrs["equation"].decode().replace(" ", "").split("->")[0].split(",")
        if any("." in term or len(term) != len(shape(i)) for i, term in enumerate(terms)):
            log.warning("%s: Einsum %s with an ellipsis: not counted", node.name, attrs["equation"])
            return 0, 0
        sizes = {}
        for i, term in enumerate(terms):
            sizes.update(zip(term, shape(i), strict=True))
        return int(np.prod(list(sizes.values()))), 0
    if op in ("LSTM", "GRU", "RNN"):
        seq, batch, width = shape(0)
        dirs, gates_h, hidden = shape(2)  # R: [directions, gates * hidden, hidden]
        return seq * batch * dirs * gates_h * (width + hidden), 0
    if op == "GroupQueryAttention":  # q.k over the positions so far, then p.v
        batch, tokens, _ = shape(0)
        _, kv_heads, _, head = shape(3)
        # the positions attended to: seqlens_k + 1 (the total_sequence_length input may be the buffer's length)
        total = int(values[node.input[5]].reshape(-1)[0]) + 1
        return (2 * batch * tokens * attrs["num_heads"] * total * head,
                2 * batch * kv_heads * total * head * values[node.input[3]].itemsize)
    if op == "Mul" and any(gathered_weight(i, producer, const) for i in node.input):
        return out.size, 0  # a weight row gathered for this token times activations: NADE, MADE, FVSBN, RNADE
    return 0, 0


def gathered_weight(name: str, producer: dict[str, onnx.NodeProto], const: set[str]) -> bool:
    node = producer.get(name)
    return node is not None and node.op_type in GATHERS and node.input[0] in const and name not in const


def count(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> Count:
    const = constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    c = Count()
    for i, node in enumerate(model.graph.node):
        if all(o in const for o in node.output):
            continue  # folded when the session loads
        c.nodes += 1
        macs, kv = node_macs(node, values, producer, const)
        if macs:
            c.add(node.op_type, macs)
            c.counted.append(i)
        c.kv_bytes += kv
        for j, name in enumerate(node.input):
            v = values.get(name) if name in const else None
            if v is None or v.size < 2 or v.dtype.kind != "f":
                continue  # shapes, indices and scalars: not weights
            c.weight_bytes += values[node.output[0]].nbytes if node.op_type in GATHERS and j == 0 else v.nbytes
    return c


def count_step(folder: Path, m: Manifest, pos: int) -> tuple[Count, onnx.ModelProto, dict[str, np.ndarray]]:
    model = onnx.load(str(folder / "step.onnx"))
    values = capture(model, feeds_at(m, pos))
    return count(model, values), model, values


# ----- timing ----------------------------------------------------------------------------------------------


def session(model: onnx.ModelProto | bytes, threads: int = 1):
    """An ONNX Runtime session with the options OnnxBackend gives step.onnx."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class BoundGraph:
    """A graph whose inputs and outputs are bound once (OrtValues over numpy arrays): a call is only
    run_with_iobinding, the runtime's own cost. `aliases` binds an output over an input's buffer (an in-place
    KV cache, as the backend binds it)."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                 aliases: dict[str, str] | None = None, threads: int = 1):
        import onnxruntime as ort

        self.session = session(model, threads)
        self.binding = self.session.io_binding()
        self.keep = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for name, v in
                     {**feeds, **outputs}.items()}
        for name in feeds:
            self.binding.bind_ortvalue_input(name, self.keep[name])
        for name in outputs:
            target = (aliases or {}).get(name, name)
            self.binding.bind_ortvalue_output(name, self.keep[target])

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def tensor_info(name: str, v: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))


def graph_of(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray], const: set[str],
             model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The nodes alone in a graph: their constant inputs as weights (the captured values), the others as
    inputs; every output kept. -> (model, feeds, outputs)."""
    inputs, weights, outputs = {}, {}, {}
    for node in nodes:
        for name in node.input:
            if name:
                (weights if name in const else inputs)[name] = values[name]
        outputs.update({o: values[o] for o in node.output if o})
    for o in outputs:
        inputs.pop(o, None)
    graph = helper.make_graph(list(nodes), "counted", [tensor_info(n, v) for n, v in inputs.items()],
                              [tensor_info(n, v) for n, v in outputs.items()],
                              [numpy_helper.from_array(np.ascontiguousarray(v), n) for n, v in weights.items()])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return out, inputs, outputs


def matmul_graph(model: onnx.ModelProto, values: dict[str, np.ndarray], c: Count) -> BoundGraph:
    """The step's counted nodes alone, same shapes and weights; attention's present KV bound over its past one
    (in place, as the backend runs it)."""
    nodes = [model.graph.node[i] for i in c.counted]
    g, feeds, outputs = graph_of(nodes, values, constants(model), model)
    aliases = {n.output[k]: n.input[k + 2] for n in nodes if n.op_type == "GroupQueryAttention" for k in (1, 2)
               if len(n.output) > k and n.output[k]}
    return BoundGraph(g, feeds, outputs, aliases)


def one_node_graph(inputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A graph of one Cast node reading the first input (the others are declared, unused): a run's fixed cost."""
    first = next(iter(inputs))
    node = helper.make_node("Cast", [first], ["params"], to=TensorProto.FLOAT)
    shape = list(inputs[first].shape)
    graph = helper.make_graph([node], "one", [tensor_info(n, v) for n, v in inputs.items()],
                              [helper.make_tensor_value_info("params", TensorProto.FLOAT, ["batch", *shape[1:]])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class CallPath:
    """The backend's own step call (app.runtime.backends: IO binding when the model has "slots" state, else the
    direct session run) around a one-node graph: what a step pays before and after its nodes."""

    def __init__(self, m: Manifest):
        x_prev, pos = (np.zeros(1, dtype=m.token_dtype), np.zeros(1, dtype=np.int64))
        sess = session(one_node_graph({"pos": pos, "x_prev": x_prev}))
        self.args = (x_prev, pos)
        if any(s.update == "slots" for s in m.state):
            io = types.SimpleNamespace(step_inputs=["x_prev", "pos"], step_outputs=["params"])
            self.fn = backends.BoundStep(sess, io, [])
            self.fn(x_prev, pos, [])
            self.call = lambda: self.fn(x_prev, pos, [])
        else:
            run = backends.direct_run(sess)
            feed = {"x_prev": x_prev, "pos": pos}
            self.call = lambda: run(["params"], feed)


def per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_for(fn: Callable[[], object]) -> int:
    """How many calls make a timed batch of about BATCH_SECONDS (after two warm-up calls)."""
    fn()
    fn()
    return int(min(5000, max(3, BATCH_SECONDS / per_call(fn, 5))))


class Timings:
    """Named timings taken in alternation: every round times each once; the medians are reported."""

    def __init__(self):
        self.rounds: dict[str, list[float]] = {}
        self.jobs: list[tuple[str, Callable[[], float]]] = []

    def add(self, name: str, seconds: Callable[[], float], warm: bool = False) -> None:
        """warm: one untimed call first (a server loads a backend at its first request)."""
        if warm:
            seconds()
        self.jobs.append((name, seconds))

    def tiny(self, name: str, fn: Callable[[], object]) -> None:
        """A call of microseconds: timed in batches of many calls."""
        calls = calls_for(fn)
        self.add(name, lambda: per_call(fn, calls))

    def run(self, rounds: int, pick: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
        for _ in range(rounds):
            for name, seconds in self.jobs:
                self.rounds.setdefault(name, []).append(seconds())
        return {name: pick(v) for name, v in self.rounds.items()}

    def difference(self, name: str, *minus: str, plus: tuple[str, ...] = ()) -> float | None:
        """The median over rounds of name - sum(minus) + sum(plus), each round's timings taken together (a
        drift of the machine's load between rounds cancels); None if a timing is missing."""
        if any(n not in self.rounds for n in (name, *minus, *plus)):
            return None
        per_round = zip(*(self.rounds[n] for n in (name, *minus, *plus)), strict=True)
        k = 1 + len(minus)
        return statistics.median(v[0] - sum(v[1:k]) + sum(v[k:]) for v in per_round)


def profile_shares(folder: Path, m: Manifest, T: int, threads: int, top: int = 4) -> list[tuple[str, float]]:
    """The op types that take most of the step's node time, with their share in %, from ONNX Runtime's profiler
    over one walk of T positions (the profiler inflates small kernels: shares only, never times)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="roofline-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "step")
        sess = ort.InferenceSession(str(folder / "step.onnx"), opts, providers=["CPUExecutionProvider"])
        bound = backends.BoundStep(sess, m.io, m.state) if any(s.update == "slots" for s in m.state) else None
        run = backends.direct_run(sess)
        state = [np.zeros((1, *s.shape[1:]), dtype=s.dtype) for s in m.state]
        x_prev = np.zeros(1, dtype=m.token_dtype)
        for t in range(T):
            pos = np.array([t], dtype=np.int64)
            if bound is not None:
                bound(x_prev, pos, state)
            else:
                state = run(m.io.step_outputs, dict(zip(m.io.step_inputs, [x_prev, pos, *state], strict=True)))[1:]
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return [(op, round(100 * us_ / total, 1)) for op, us_ in ranked]


# ----- the machine ---------------------------------------------------------------------------------------


@dataclass
class Machine:
    gmacs: float  # sgemm, GMAC/s
    gbs: float  # gemv over a matrix beyond L2, GB/s
    gbs_l2: float  # gemv over a matrix within L2, GB/s
    l2_bytes: int  # one core's L2

    def bandwidth(self, nbytes: int) -> float:
        return self.gbs_l2 if nbytes <= self.l2_bytes else self.gbs

    def ideal(self, macs: int, nbytes: int) -> tuple[float, str]:
        """(seconds, what bounds them)"""
        compute, memory = macs / (self.gmacs * 1e9), nbytes / (self.bandwidth(nbytes) * 1e9)
        return (compute, "compute") if compute >= memory else (memory, "bytes")


def l2_size() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        return int(text[:-1]) * {"K": 1024, "M": 1024 ** 2}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 1 << 20


def matmul_model(a: tuple[int, int], b: tuple[int, int], rng: np.random.Generator) -> BoundGraph:
    """x [a] @ W [b] (W a weight), bound once."""
    x = rng.standard_normal(a).astype(np.float32)
    w = rng.standard_normal(b).astype(np.float32)
    y = np.zeros((a[0], b[1]), dtype=np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph([node], "mm", [tensor_info("x", x)], [tensor_info("y", y)],
                              [numpy_helper.from_array(w, "W")])
    return BoundGraph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x}, {"y": y})


def measure_machine(repeats: int) -> Machine:
    rng = np.random.default_rng(0)
    sgemm = matmul_model((SGEMM_N, SGEMM_N), (SGEMM_N, SGEMM_N), rng)
    big = matmul_model((1, GEMV_BIG[0]), GEMV_BIG, rng)
    small = matmul_model((1, GEMV_L2[0]), GEMV_L2, rng)
    nothing = BoundGraph(one_node_graph({"x": np.zeros(1, dtype=np.int64)}), {"x": np.zeros(1, dtype=np.int64)},
                         {"params": np.zeros(1, dtype=np.float32)})
    t = Timings()
    t.add("sgemm", lambda: per_call(sgemm, 3))
    t.tiny("gemv", big)
    t.tiny("gemv_l2", small)
    t.tiny("run", nothing)
    s = t.run(max(repeats, MACHINE_ROUNDS), pick=min)  # a ceiling: the best round, not the typical one
    return Machine(gmacs=SGEMM_N ** 3 / (s["sgemm"] - s["run"]) / 1e9,
                   gbs=4 * GEMV_BIG[0] * GEMV_BIG[1] / (s["gemv"] - s["run"]) / 1e9,
                   gbs_l2=4 * GEMV_L2[0] * GEMV_L2[1] / (s["gemv_l2"] - s["run"]) / 1e9, l2_bytes=l2_size())


# ----- one model -------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model's figures (seconds per token unless named otherwise)."""

    model: str
    family: str
    backend: str
    tokens: int
    macs: int
    weight_bytes: int
    kv_bytes: int
    nodes: int
    by_op: dict
    bound: str
    ideal: float
    step: float
    generate: float
    http: float | None = None
    matmul: float | None = None  # the counted nodes alone (less a run's fixed cost)
    call: float | None = None
    parts: dict = field(default_factory=dict)  # the split: part -> seconds (medians of per-round differences)
    chunk_generate: float | None = None  # multi-token path, `CHUNK` positions per call
    chunk_http: float | None = None
    profile: list = field(default_factory=list)  # [(op type, % of node time)], from ONNX Runtime's profiler
    note: str = ""

    @property
    def split(self) -> dict[str, float | None]:
        return {k: self.parts.get(k) for k in SPLIT}

    def achieved(self, seconds: float | None) -> float | None:
        return None if seconds is None else 100 * self.ideal / seconds


def tokens_of(m: Manifest, quick: bool) -> int:
    """Tokens per timed generation in-process: variable-length models draw TOKENS, fixed-length ones a whole
    sample (all the server draws for them), except in quick mode (TOKENS; their HTTP figure stays a whole sample,
    per token)."""
    return min(m.length, TOKENS[quick]) if m.variable_length or quick else m.length


def step_walk(backend, m: Manifest, T: int) -> Callable[[], float]:
    """Seconds per step over positions 0 .. T-1 from a zero state (the position sets attention's cost)."""
    x_prev = np.zeros(1, dtype=m.token_dtype)
    positions = [np.array([t], dtype=np.int64) for t in range(T)]

    def seconds() -> float:
        state = backend.init_state(1)
        t0 = time.perf_counter()
        for pos in positions:
            _, state = backend.step(x_prev, pos, state)
        return (time.perf_counter() - t0) / T

    return seconds


def generate_seconds(backend, m: Manifest, T: int, chunk: int = 1) -> Callable[[], float]:
    """Seconds per token of the engine's own generation loop (one stream, seeded)."""
    spec = SampleSpec(T, np.zeros(0, dtype=m.token_dtype), seed=0, chunk=chunk)

    def seconds() -> float:
        t0 = time.perf_counter()
        generate(backend, [spec], m.distribution == "gaussian_mixture", m.token_dtype)
        return (time.perf_counter() - t0) / T

    return seconds


def http_seconds(client, m: Manifest, T: int, chunk: int = 1, backend: str = "onnx") -> Callable[[], float]:
    """Seconds per token of one GET /sample stream (SSE) of T tokens through the server, read to its end (of a
    whole sample for fixed-length models)."""
    max_len, T = (T, T) if m.variable_length else (None, m.length)

    def seconds() -> float:
        t0 = time.perf_counter()
        n = 0
        for event in client.sample(m.name, seed=0, max_len=max_len, chunk=chunk, backend=backend):
            if event.event == "done":
                n = event.data["num_tokens"]
        if n != T:
            raise RuntimeError(f"{m.name}: asked for {T} tokens, got {n}")
        return (time.perf_counter() - t0) / T

    return seconds


def measure_model(folder: Path, ctx: Context, mach: Machine, client, rounds: int,
                  compiled_cache: Path | None) -> list[Row]:
    """The model's row (ONNX Runtime), and a row for its compiled step where a build is in the cache."""
    m = load_manifest(folder)
    T = tokens_of(m, ctx.quick)
    c, model, values = count_step(folder, m, pos=T // 2)  # attention's cost at the middle: its mean over the walk
    backend = backends.load("onnx", folder, m, ctx.threads)
    t = Timings()
    t.tiny("matmul", matmul_graph(model, values, c))
    inputs = {n: v for n, v in feeds_at(m, 0).items() if n in ("x_prev", "pos")}
    empty = BoundGraph(one_node_graph(inputs), inputs, {"params": np.zeros(1, dtype=np.float32)})
    t.tiny("run", empty)
    t.tiny("call", CallPath(m).call)
    t.add("step", step_walk(backend, m, T))
    t.add("generate", generate_seconds(backend, m, T))
    if client is not None:
        t.add("http", http_seconds(client, m, T), warm=not ctx.quick)
    multi = m.multi_step is not None
    if multi:
        t.add("chunk_generate", generate_seconds(backend, m, T, CHUNK))
        if client is not None:
            t.add("chunk_http", http_seconds(client, m, T, CHUNK), warm=not ctx.quick)
    compiled_backend = None
    if compiled_cache is not None and m.step_program is not None:
        compiled_backend = backends.CompiledBackend(folder, m, ctx.threads, mode="cached", cache=compiled_cache)
        if compiled_backend.status == "compiled":
            t.add("compiled_step", step_walk(compiled_backend, m, T))
            t.add("compiled_generate", generate_seconds(compiled_backend, m, T))
            if client is not None:
                t.add("compiled_http", http_seconds(client, m, T, backend="compiled"), warm=True)  # loads it
    s = t.run(rounds)
    shares = profile_shares(folder, m, min(T, PROFILE_TOKENS), ctx.threads)
    nbytes = c.weight_bytes + c.kv_bytes
    ideal, bound = mach.ideal(c.macs, nbytes)
    base = dict(model=m.name, family=m.family, tokens=T, macs=c.macs, weight_bytes=c.weight_bytes,
                kv_bytes=c.kv_bytes, nodes=c.nodes, by_op=c.by_op, bound=bound, ideal=ideal)
    matmul = max(0.0, t.difference("matmul", "run"))
    parts = {"matmul": matmul, "nodes": t.difference("step", "matmul", "call", plus=("run",)), "call": s["call"],
             "draw+loop": t.difference("generate", "step"), "http": t.difference("http", "generate")}
    rows = [Row(backend="onnx", step=s["step"], generate=s["generate"], http=s.get("http"), matmul=matmul,
                call=s["call"], parts=parts, chunk_generate=s.get("chunk_generate"), chunk_http=s.get("chunk_http"),
                profile=shares, **base)]
    if compiled_backend is not None:
        if "compiled_step" in s:
            parts = {"draw+loop": t.difference("compiled_generate", "compiled_step"),
                     "http": t.difference("compiled_http", "compiled_generate")}
            rows.append(Row(backend="compiled", step=s["compiled_step"], generate=s["compiled_generate"],
                            http=s.get("compiled_http"), parts=parts, note="AOTInductor step: no ONNX nodes to split",
                            **base))
        else:
            rows[0].note = f"compiled step: {compiled_backend.status}"
    return rows


# ----- the report ------------------------------------------------------------------------------------------


def us(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1e6 * seconds:,.1f}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def label(r: Row) -> str:
    return r.model if r.backend == "onnx" else f"{r.model} ({r.backend})"


def table(rows: list[Row]) -> list[str]:
    out = ["| model | family | MACs/token | weight MB/token | bound | ideal µs | step µs | HTTP µs/token | "
           "achieved: step / HTTP | matmul | other nodes | call | draw+loop | HTTP | chunk 64: in-process / HTTP "
           "µs/token | node time by op (profile, %) |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
           "---:|---:|---:|---|"]
    for r in rows:
        sp = r.split
        chunk = "—" if r.chunk_generate is None else f"{us(r.chunk_generate)} / {us(r.chunk_http)}"
        profiled = " · ".join(f"{op} {share:.0f}" for op, share in r.profile) or "—"
        out.append(f"| {label(r)} | {r.family} | {r.macs:,} | {r.weight_bytes / 1e6:.3g} | {r.bound} | "
                   f"{us(r.ideal)} | {us(r.step)} | {us(r.http)} | {pct(r.achieved(r.step))} / "
                   f"{pct(r.achieved(r.http))} | " + " | ".join(us(sp[k]) for k in SPLIT)
                   + f" | {chunk} | {profiled} |")
    return out


def figures(rows: list[Row], mach: Machine, ctx: Context) -> list[Figure]:
    """The `python -m bench` figures: the machine's, then per model the count, the bound and the split."""
    cfg = {"model": "machine (1 thread)", "threads": ctx.threads, "repeats": ctx.repeats}
    figs = [Figure("roofline", "machine (1 thread) sgemm", mach.gmacs, "GMAC/s", {**cfg, "n": SGEMM_N}),
            Figure("roofline", "machine (1 thread) gemv", mach.gbs, "GB/s", {**cfg, "matrix": list(GEMV_BIG)}),
            Figure("roofline", "machine (1 thread) gemv in L2", mach.gbs_l2, "GB/s",
                   {**cfg, "matrix": list(GEMV_L2)})]
    return figs + [f for r in rows for f in row_figures(r)]


def row_figures(r: Row) -> list[Figure]:
    name = label(r)
    cfg = {"model": name, "family": r.family, "backend": r.backend, "tokens": r.tokens, "bound": r.bound,
           "kv_bytes": r.kv_bytes, "nodes": r.nodes, "macs_by_op": r.by_op, "node_time_by_op": r.profile}
    f = lambda what, value, unit: Figure("roofline", f"{name} {what}", value, unit, cfg)  # noqa: E731
    figs = [f("MACs/token", r.macs, "MAC"), f("weight MB/token", r.weight_bytes / 1e6, "MB"),
            f("ideal", 1e6 * r.ideal, "µs"), f("step", 1e6 * r.step, "µs")]
    if r.http is not None:
        figs += [f("http", 1e6 * r.http, "µs/token"), f("achieved http", r.achieved(r.http), "%")]
    figs.append(f("achieved step", r.achieved(r.step), "%"))
    figs += [f(f"split {k}", 1e6 * v, "µs") for k, v in r.split.items() if v is not None]
    if r.chunk_generate is not None:
        figs.append(f(f"chunk {CHUNK} in-process", 1e6 * r.chunk_generate, "µs/token"))
    if r.chunk_http is not None:
        figs.append(f(f"chunk {CHUNK} http", 1e6 * r.chunk_http, "µs/token"))
    return figs


def load_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load: unknown (no uptime)"


def markdown(rows: list[Row], mach: Machine, meta: dict) -> str:
    out = ["# Roofline of one stream (batch 1, 1 thread)", "",
           f"`{meta['command']}` on {meta['machine']}, {meta['finished_utc']}, {meta['seconds']:.0f} s; "
           f"load before / after: `{meta['load_before']}` / `{meta['load_after']}`.", "",
           f"Machine, measured through ONNX Runtime at 1 thread: sgemm {SGEMM_N}³ **{mach.gmacs:.1f} GMAC/s**; "
           f"gemv (batch-1 MatMul) over {4 * GEMV_BIG[0] * GEMV_BIG[1] >> 20} MiB **{mach.gbs:.1f} GB/s**, over "
           f"{4 * GEMV_L2[0] * GEMV_L2[1] >> 10} KiB (within L2, {mach.l2_bytes >> 10} KiB) "
           f"**{mach.gbs_l2:.1f} GB/s**. Times in µs per token, medians of {meta['repeats']} rounds taken in "
           "alternation; the split is by subtraction (docs/roofline.md).", "", *table(rows), ""]
    notes = [f"- {label(r)}: {r.note}" for r in rows if r.note]
    compact = ["## One row per family", "", "Each family's largest model by its fastest shipped path over HTTP (chunk "
               "1), and the two largest parts of its token's time besides the counted arithmetic.", "",
               *family_table(rows), ""]
    return "\n".join(out + notes + ([""] if notes else []) + compact)


def family_table(rows: list[Row]) -> list[str]:
    """One row per family: its largest model (most multiply-adds per token), by its fastest path over HTTP (or
    in-process without HTTP). The README's table."""
    best: dict[str, Row] = {}
    for r in rows:
        key = lambda x: (-x.macs, x.http if x.http is not None else x.generate)  # noqa: E731
        if r.family not in best or key(r) < key(best[r.family]):
            best[r.family] = r
    out = ["| family (model) | MACs/token | bound | ideal µs | step µs | HTTP µs/token | achieved: step / HTTP | "
           "most of the rest, µs |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for family, r in sorted(best.items()):
        others = sorted(((v, k) for k, v in r.split.items() if k != "matmul" and v is not None), reverse=True)
        top = " · ".join(f"{k} {us(v)}" for v, k in others[:2]) or "—"
        out.append(f"| {family} ({label(r)}) | {r.macs:,} | {r.bound} | {us(r.ideal)} | {us(r.step)} | "
                   f"{us(r.http)} | {pct(r.achieved(r.step))} / {pct(r.achieved(r.http))} | {top} |")
    return out


def plot(rows: list[Row], path: Path) -> bool:
    """A bar per model: the share of each part in one token's time over HTTP (in-process without HTTP), the
    total at its end, and a tick at the ideal's share (the achieved fraction)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("no matplotlib: no %s", path)
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    names = [label(r) for r in rows][::-1]
    parts = {r.model + r.backend: {**r.split, "step, unsplit": r.step if r.matmul is None else None} for r in rows}
    order = ["matmul", "nodes", "call", "step, unsplit", "draw+loop", "http"]
    totals = [sum(max(0.0, v or 0.0) for v in parts[r.model + r.backend].values()) for r in rows][::-1]
    left = np.zeros(len(rows))
    for i, part in enumerate(order):
        widths = 100 * np.array([max(0.0, parts[r.model + r.backend][part] or 0.0) for r in rows][::-1]) / totals
        if widths.any():
            ax.barh(names, widths, left=left, label=part, color=f"C{i}")
        left += widths
    ax.scatter(100 * np.array([r.ideal for r in rows][::-1]) / totals, names, marker="|", s=250, color="black",
               label="ideal", zorder=3)
    for y, total in enumerate(totals):
        ax.text(101, y, f"{1e6 * total:,.0f} µs", va="center", fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_xlabel("% of one token's time (batch 1, 1 thread; over HTTP)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=7, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----- the section -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def only(exported: Path, names: list[str] | None) -> Iterator[Path]:
    """exported, or a folder holding links to the named models only (what the server then loads)."""
    if not names:
        yield exported
        return
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        for name in names:
            if not (exported / name / "manifest.json").is_file():
                raise SystemExit(f"no model {name!r} in {exported}")
            (Path(tmp) / name).symlink_to((exported / name).resolve())
        yield Path(tmp)


def measure(ctx: Context, http: bool = True, compile_cache: Path | None = None
            ) -> tuple[list[Row], Machine, dict]:
    rounds = min(ctx.repeats, QUICK_REPEATS) if ctx.quick else ctx.repeats
    t0, before = time.perf_counter(), load_line()
    folders = ctx.models()
    cache = compile_cache or common.compile_cache()
    if compile_cache is None:
        common.prepare_compiled(folders, build=not ctx.quick)  # (python -m bench did it already: a no-op then)
    if os.environ.get("ARSERVE_COMPILE") == "off":  # (the test suite's setting) no compiled row
        cache = None
    mach = measure_machine(rounds)
    rows: list[Row] = []
    env = {"ARSERVE_COMPILE": "cached", "ARSERVE_COMPILE_CACHE": str(cache)} if cache else {}
    with contextlib.ExitStack() as stack:
        client = None
        if http:
            from app.client import ArserveClient

            url = stack.enter_context(serve(ctx.exported, ctx.threads, **env))
            client = stack.enter_context(ArserveClient(url, timeout=600))
        for folder in folders:
            log.info("roofline: %s", folder.name)
            rows += measure_model(folder, ctx, mach, client, rounds, cache)
    meta = {"machine": machine(), "threads": ctx.threads, "repeats": rounds, "quick": ctx.quick, "http": http,
            "seconds": time.perf_counter() - t0, "load_before": before, "load_after": load_line(),
            "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "compile_cache": str(cache) if cache else None}
    return rows, mach, meta


def run(ctx: Context) -> list[Figure]:
    """The `python -m bench` section."""
    rows, mach, _ = measure(ctx)
    return figures(rows, mach, ctx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.splitlines()[0])
    ap.add_argument("--exported", type=Path, default=Path("exported"), help="folder of exported models")
    ap.add_argument("--models", nargs="+", help="only these models (folder names); default: every one")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where roofline.{md,json,png} go")
    ap.add_argument("--quick", action="store_true", help="few tokens and rounds, no compile build: seconds")
    ap.add_argument("--no-http", dest="http", action="store_false", help="skip the server (no HTTP column)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of timings (medians reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-cache", type=Path, help="compiled steps, used as they are (default: the server's, "
                                                       "$ARSERVE_COMPILE_CACHE or ~/.cache/arserve/compiled, where "
                                                       "missing builds are made first)")
    ap.add_argument("--from", dest="saved", type=Path, help="a saved roofline.json: write its table and plot "
                                                                "again, measuring nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.saved:
        record = json.loads(args.saved.read_text())
        names = set(Row.__dataclass_fields__)
        rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in record["rows"]]
        mach, meta = Machine(**record["machine"]), record["meta"]
    else:
        with only(args.exported.resolve(), args.models) as exported:
            ctx = Context(exported, args.quick, args.threads, args.repeats)
            rows, mach, meta = measure(ctx, args.http, args.compile_cache)
        meta["command"] = " ".join(["python -m bench.roofline", *(argv if argv is not None else sys.argv[1:])])
        record = {"meta": meta, "machine": asdict(mach),
                  "rows": [{**asdict(r), "split": r.split, "achieved_step": r.achieved(r.step),
                            "achieved_http": r.achieved(r.http)} for r in rows],
                  "figures": [f.to_json() for f in figures(rows, mach, ctx)]}
        (args.out / "roofline.json").write_text(json.dumps(record, indent=1) + "\n")
    report = markdown(rows, mach, meta)
    (args.out / "roofline.md").write_text(report)
    plot(rows, args.out / "roofline.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
