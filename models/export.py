"""Export a model to artifacts that run without this project's code: TorchScript, ONNX and a manifest.

    python -m models.export runs/nade-mnist/final.pt exported/nade-mnist

writes into the model's folder:

    model.pt       TorchScript module: log_prob(x) -> [B, T], init_state(batch) -> [state], step(x_prev, pos,
                   state) -> (params [B, P], new state)
    score.onnx     x [batch, T] -> log_prob [batch, T]            (T symbolic for variable-length models)
    step.onnx      x_prev [batch], pos [batch], *state -> params [batch, P], *new_state
    weights.bin    the ONNX initializers of both graphs as external data, each distinct tensor stored once
    step.pt2       (families with a step_program: WaveNet) the step as a torch.export program with the weights as
                   inputs, read from model.pt by whoever runs it; the service compiles it (docs/compiled.md)
    manifest.json  app.runtime.manifest.Manifest: shapes, vocabulary, state tensors (and how a step updates each:
                   replaced, or written in place at declared slots; docs/state.md), io names, sha256 of every file

The cores (``_conditionals`` + ``params_log_prob``, and ``_step``) are traced, at a batch size other than 1
and, for variable-length models, at a length shorter than the maximum, so that a shape baked into a trace
shows up in the parity gate: before anything is written, eager, TorchScript and ONNX Runtime must agree on
per-position log-probs (1e-4) at other batch sizes and lengths, and a seeded step loop must draw the same
tokens in all three, with "slots" state tensors kept as the service keeps them (written in place, ONNX Runtime
through shared input/output buffers), and a step from a random state may change them only at their declared
slots. An export that fails the gate raises ``ExportError`` and leaves out_dir untouched.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import shutil
import sys
import tempfile
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data
from torch import Tensor, nn

from app.runtime.manifest import MANIFEST, GraphIO, Manifest, StateTensor, StepProgram, sha256_file
from models import multistep
from models.base import ARModel, exporting_onnx, params_log_prob
from models.checkpoint import CheckpointError, load_checkpoint
from models.runtimes import EagerRuntime, OnnxRuntime, ProgramRuntime, Runtime, TorchScriptRuntime, step_loop
from models.stepgraph import fuse_step_graph

OPSET = 17  # LayerNormalization and the opset-17 reductions; every onnxruntime since 1.12 runs it
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops: GroupQueryAttention for the attention caches
WEIGHTS = "weights.bin"
FILES = ("model.pt", "score.onnx", "step.onnx", WEIGHTS)
PROGRAM = "step.pt2"  # the step as a torch.export program, for families that pack their weights (docs/compiled.md)
TORCHSCRIPT_PREFIX = "traced.model."  # a model's state-dict entries inside model.pt (TorchScriptModel -> _Core)
MAX_PROGRAM_BATCH = 4096  # the batch dimension step.pt2 is exported for: 1 .. this
INLINE_MAX_BYTES = 128  # smaller tensors stay inside the graph: not worth a seek
ALIGN = 64  # offsets of external tensors, so that a mapped file gives aligned arrays
ATOL = 1e-4  # eager vs TorchScript vs ONNX Runtime, per-position log-probs and step parameters ...
RTOL = 1e-5  # ... plus this much of the value: a log-density of -5000 is only resolved to ~5e-4 in float32
PARITY_SEED = 1234
_DTYPES = {torch.float32: "float32", torch.int64: "int64"}
_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


class ExportError(Exception):
    """An export that was refused: bad metadata, an untraceable model, or a failed parity check."""


# ----- what gets traced ----------------------------------------------------------------------------


class _Core(nn.Module):
    """The unchecked cores of a model behind two traceable methods (state as a list of tensors)."""

    def __init__(self, model: ARModel):
        super().__init__()
        self.model = model
        # Wrappers start in eval mode: torch.onnx.export restores the wrapper's mode on exit, recursively, and a
        # wrapper left in training mode would switch the model's dropout on for the parity check that follows.
        self.eval()

    def score(self, x: Tensor) -> Tensor:
        return params_log_prob(self.model.dist, self.model._conditionals(x), x)

    def step(self, x_prev: Tensor, pos: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        params, new = self.model._step(x_prev, pos, tuple(state))
        return params, list(new)


class _ScoreGraph(nn.Module):
    def __init__(self, model: ARModel):
        super().__init__()
        self.core = _Core(model)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.core.score(x)


class _StepGraph(nn.Module):
    """The step with every state tensor as its own argument and output, so that ONNX can name them."""

    def __init__(self, model: ARModel):
        super().__init__()
        self.core = _Core(model)
        self.eval()

    def forward(self, x_prev: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        params, new = self.core.step(x_prev, pos, list(state))
        return (params, *new)


class TorchScriptModel(nn.Module):
    """What model.pt holds: the traced cores plus init_state, scripted so it needs no Python source."""

    def __init__(self, traced: torch.jit.ScriptModule, spec: list[tuple[str, tuple[int, ...], torch.dtype]]):
        super().__init__()
        self.traced = traced
        # typed explicitly: a model may have no state, and TorchScript cannot type an empty list by itself
        self.state_names = torch.jit.Attribute([name for name, _, _ in spec], list[str])
        self.state_shapes = torch.jit.Attribute([list(shape) for _, shape, _ in spec], list[list[int]])
        # empty tensors that carry each state tensor's dtype
        self.state_templates = torch.jit.Attribute([torch.zeros(0, dtype=d) for _, _, d in spec], list[Tensor])

    def forward(self, x: Tensor) -> Tensor:
        return self.traced.score(x)

    @torch.jit.export
    def log_prob(self, x: Tensor) -> Tensor:
        return self.traced.score(x)

    @torch.jit.export
    def step(self, x_prev: Tensor, pos: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        return self.traced.step(x_prev, pos, state)

    @torch.jit.export
    def init_state(self, batch_size: int) -> list[Tensor]:
        out: list[Tensor] = []
        for i in range(len(self.state_shapes)):  # (TorchScript has no zip(strict=...))
            out.append(torch.zeros([batch_size] + self.state_shapes[i], dtype=self.state_templates[i].dtype))
        return out


# ----- example inputs ------------------------------------------------------------------------------


def random_x(model: ARModel, batch: int, length: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if model.token_dtype == torch.long:
        return torch.randint(0, model.vocab_size, (batch, length), generator=g)
    return torch.randn(batch, length, generator=g)


def _lengths(model: ARModel) -> tuple[int, list[int]]:
    """(length to trace at, lengths to verify at): for variable-length models the trace length is short."""
    L = model.length
    if not model.variable_length:
        return L, [L, L, L]
    traced = max(1, min(L - 1, 24))
    return traced, [traced, L, max(1, traced // 2)]


def _step_example(model: ARModel, batch: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    x_prev = random_x(model, batch, 1, seed=PARITY_SEED)[:, 0]
    pos = torch.arange(batch) * max(1, model.length // batch) % model.length  # rows at different positions
    return x_prev, pos, list(model.init_state(batch))


# ----- the parity gate -----------------------------------------------------------------------------


def check_close(what: str, expected: np.ndarray, got: np.ndarray, atol: float = ATOL) -> float:
    """Max abs difference of got from expected; raises ExportError where it exceeds atol + RTOL * |expected|
    (or on NaN / shape)."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        raise ExportError(f"parity check failed: {what} has shape {got.shape}, eager gives {expected.shape}")
    err = np.abs(expected - got)
    diff = float(np.max(err)) if expected.size else 0.0
    if not np.all(err <= atol + RTOL * np.abs(expected)):  # written so that NaN fails too
        raise ExportError(f"parity check failed: {what} is off from eager by {diff:.3g} "
                          f"(max abs; tolerance {atol:g} + {RTOL:g} x |value|)")
    return diff


def check_tokens(what: str, expected: np.ndarray, got: np.ndarray, atol: float = ATOL) -> None:
    """Sampled tokens must be identical (continuous values: within atol)."""
    if expected.shape != got.shape:
        raise ExportError(f"parity check failed: {what} drew shape {got.shape}, eager drew {expected.shape}")
    same = expected == got if expected.dtype.kind in "iub" else np.abs(expected - got) <= atol
    if not same.all():
        b, t = (int(i) for i in np.argwhere(~same)[0])
        raise ExportError(f"parity check failed: {what} drew {got[b, t]} at row {b}, step {t} where eager drew "
                          f"{expected[b, t]} ({int((~same).sum())} of {same.size} tokens differ)")


def _attempt(rt: Runtime, what: str, fn, *args):
    """fn(*args); a runtime that crashes (e.g. on a shape baked into a trace) fails the gate by name."""
    try:
        return fn(*args)
    except Exception as e:
        raise ExportError(f"parity check failed: {rt.name} {what} raised {type(e).__name__}: {e}") from e


def verify(model: ARModel, folder: Path, state: list[StateTensor], program: StepProgram | None = None) -> dict:
    """Eager vs TorchScript vs ONNX Runtime (and step.pt2, run eagerly, for the step) on the artifacts in
    folder; returns the figures measured."""
    eager = EagerRuntime(model)
    exported = [TorchScriptRuntime(folder / "model.pt"), OnnxRuntime(folder, state)]
    steppers = exported + ([ProgramRuntime(folder, state, program)] if program else [])
    _, lengths = _lengths(model)
    cases = list(zip([3, 1, 2], lengths, strict=True))
    lp_diff = {rt.name: 0.0 for rt in exported}
    for i, (B, T) in enumerate(cases):
        x = random_x(model, B, T, seed=PARITY_SEED + i).numpy()
        expected = eager.log_prob(x)
        for rt in exported:
            got = _attempt(rt, f"log_prob at [{B}, {T}]", rt.log_prob, x)
            lp_diff[rt.name] = max(lp_diff[rt.name], check_close(f"{rt.name} log_prob at [{B}, {T}]", expected, got))
    steps = min(model.length, 48)
    token_dtype = np.float32 if model.token_dtype == torch.float32 else np.int64
    in_place = [s.update == "slots" for s in state]
    step_diff = {rt.name: 0.0 for rt in steppers}
    for temperature, B in ((0.0, 1), (1.0, 3)):
        want_tokens, want_params = step_loop(eager, model.dist, token_dtype, B, steps, PARITY_SEED, temperature,
                                             in_place)
        for rt in steppers:
            what = f"step loop (temperature {temperature:g}, batch {B})"
            tokens, params = _attempt(rt, what, step_loop, rt, model.dist, token_dtype, B, steps, PARITY_SEED,
                                      temperature, in_place)
            check_tokens(f"{rt.name} {what}", want_tokens, tokens)
            step_diff[rt.name] = max(step_diff[rt.name], check_close(f"{rt.name} {what} params", want_params, params))
    # The loop covers the first positions only; one step with rows far apart covers the last one too, from a
    # state of random values, so that every slot written shows, and only the declared ones may change.
    x_prev = random_x(model, 3, 1, seed=PARITY_SEED)[:, 0].numpy()
    pos = np.array([model.length - 1, 0, model.length // 2], dtype=np.int64)
    before = _random_state(eager.init_state(3))
    want, want_state = eager.step(x_prev, pos, [a.copy() for a in before])
    check_slots(state, before, want_state, pos)
    for rt in steppers:
        given = [a.copy() for a in before]
        got, got_state = _attempt(rt, f"step at positions {pos.tolist()}", rt.step, x_prev, pos, given)
        diff = check_close(f"{rt.name} step params at positions {pos.tolist()}", want, got)
        step_diff[rt.name] = max(step_diff[rt.name], diff)
        for s, w, g, kept in zip(state, want_state, got_state, given, strict=True):
            check_close(f"{rt.name} new state {s.name!r} at positions {pos.tolist()}", w, kept if s.update == "slots"
                        else g)
    return {
        "atol": ATOL,
        "log_prob_cases": [list(c) for c in cases],
        "log_prob_max_abs_diff": lp_diff,
        "step_loop": {"steps": steps, "seed": PARITY_SEED, "temperatures": [0.0, 1.0], "tokens_equal": True},
        "step_positions_checked": pos.tolist(),
        "step_params_max_abs_diff": step_diff,
    }


def _random_state(state: list[np.ndarray]) -> list[np.ndarray]:
    rng = np.random.default_rng(PARITY_SEED)
    return [rng.standard_normal(a.shape).astype(a.dtype) if a.dtype.kind == "f" else a for a in state]


def check_slots(state: list[StateTensor], before: list[np.ndarray], after: list[np.ndarray], pos: np.ndarray) -> None:
    """A "slots" state tensor may change only at its declared slots: slot start + pos % size of each ring."""
    for s, a, b in zip(state, before, after, strict=True):
        if s.update != "slots":
            continue
        changed = np.moveaxis(a != b, s.slot_axis, 1).reshape(len(pos), a.shape[s.slot_axis], -1).any(axis=2)
        for start, size in s.rings:
            changed[np.arange(len(pos)), start + pos % size] = False
        if changed.any():
            row, slot = (int(i) for i in np.argwhere(changed)[0])
            raise ExportError(f"state tensor {s.name!r} is declared to change only at its ring slots, but a step at "
                              f"position {int(pos[row])} changed slot {slot} of row {row}")


# ----- writing the artifacts -----------------------------------------------------------------------


def _write_torchscript(model: ARModel, path: Path) -> None:
    T, _ = _lengths(model)
    x = random_x(model, 3, T, seed=PARITY_SEED)
    traced = torch.jit.trace_module(
        _Core(model), {"score": (x,), "step": _step_example(model, 2)}, strict=False, check_trace=False
    )
    torch.jit.save(torch.jit.script(TorchScriptModel(traced, model.state_spec())), str(path))


def _write_program(model: ARModel, folder: Path) -> StepProgram | None:
    """step.pt2: the family's step_program exported with a dynamic batch and its weights as inputs. The example
    inputs torch.export keeps (weights included) are dropped before saving: model.pt holds every weight once."""
    made = model.step_program()
    if made is None:
        return None
    module, names = made
    weights = model.state_dict()
    x_prev, pos, state = _step_example(model, 2)
    batch = torch.export.Dim("batch", min=1, max=MAX_PROGRAM_BATCH)
    dynamic = {"x_prev": {0: batch}, "pos": {0: batch}, "state": [{0: batch}] * len(state),
               "weights": [None] * len(names)}
    program = torch.export.export(module.eval(), (x_prev, pos, state, [weights[n] for n in names]),
                                  dynamic_shapes=dynamic)
    program.example_inputs = None
    torch.export.save(program, str(folder / PROGRAM))
    return StepProgram(file=PROGRAM, weights=[TORCHSCRIPT_PREFIX + n for n in names])


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 dynamic: dict[str, dict[int, str]], custom_opsets: dict[str, int] | None = None) -> None:
    # No constant folding: folded slices and transposes of a weight are new tensors that the other graph
    # does not hold, so the weights could no longer be shared; onnxruntime folds them itself at load time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, chosen on purpose
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=OPSET, do_constant_folding=False, dynamo=False,
                          custom_opsets=custom_opsets)


def _restore_inputs(proto: onnx.ModelProto, wanted: list[tuple[str, str, list]]) -> None:
    """The exporter drops inputs a graph never reads (e.g. pos in a step that ignores it); callers feed every
    declared name, so put them back, in the declared order."""
    have = {i.name: i for i in proto.graph.input}
    inputs = [have.get(name) or onnx.helper.make_tensor_value_info(name, _ONNX_DTYPES[dtype], shape)
              for name, dtype, shape in wanted]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def _write_onnx(model: ARModel, folder: Path) -> dict[str, onnx.ModelProto]:
    T, _ = _lengths(model)
    tok = _DTYPES[model.token_dtype]
    x_axes = {0: "batch", 1: "length"} if model.variable_length else {0: "batch"}
    x_shape = ["batch", "length" if model.variable_length else model.length]
    _onnx_export(_ScoreGraph(model), (random_x(model, 3, T, seed=PARITY_SEED),), folder / "score.tmp.onnx",
                 ["x"], ["log_prob"], {"x": x_axes, "log_prob": x_axes})
    spec = model.state_spec()
    names = [n for n, _, _ in spec]
    step_in, step_out = ["x_prev", "pos", *names], ["params", *[f"new_{n}" for n in names]]
    x_prev, pos, state = _step_example(model, 2)
    with exporting_onnx():  # attention caches as ONNX Runtime's in-place GroupQueryAttention
        _onnx_export(_StepGraph(model), (x_prev, pos, *state), folder / "step.tmp.onnx", step_in, step_out,
                     {n: {0: "batch"} for n in step_in + step_out},
                     {CONTRIB_DOMAIN: 1} if model.state_slots() else None)
    score, step = (onnx.load(str(folder / f"{n}.tmp.onnx")) for n in ("score", "step"))
    _restore_inputs(score, [("x", tok, x_shape)])
    _restore_inputs(step, [("x_prev", tok, ["batch"]), ("pos", "int64", ["batch"])]
                    + [(n, _DTYPES[d], ["batch", *s]) for n, s, d in spec])
    for n in ("score", "step"):
        (folder / f"{n}.tmp.onnx").unlink()
    fuse_step_graph(step.graph)  # what ONNX Runtime's optimizer leaves per token (models/stepgraph.py)
    return {"score.onnx": score, "step.onnx": step}


def _torchscript_records(path: Path) -> dict[bytes, tuple[int, int]]:
    """sha256 -> (offset, length) of every tensor record inside a TorchScript archive.

    torch.jit.save writes each tensor's bytes as an uncompressed, 64-byte aligned zip entry, so an ONNX
    initializer holding the same bytes can point straight into model.pt: the weights are stored once for
    both runtimes (and checked once, by model.pt's sha256)."""
    records = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset)
            header = f.read(30)  # the local file header: name and extra-field lengths at bytes 26..29
            start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(
                header[28:30], "little")
            f.seek(start)
            records.setdefault(hashlib.sha256(f.read(info.file_size)).digest(), (start, info.file_size))
    return records


def _share_weights(graphs: dict[str, onnx.ModelProto], folder: Path) -> None:
    """Store every initializer of at least INLINE_MAX_BYTES once: as a range of model.pt where TorchScript
    holds the same bytes, otherwise in weights.bin (each distinct byte string once); then save the graphs."""
    in_torchscript = _torchscript_records(folder / "model.pt")
    blob, ranges = bytearray(), {}
    for proto in graphs.values():
        _constants_to_initializers(proto.graph)
        for t in proto.graph.initializer:
            if t.data_type == onnx.TensorProto.STRING:
                continue
            if not t.HasField("raw_data"):  # typed fields (float_data ...) -> raw little-endian bytes
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
            raw = t.raw_data
            if len(raw) < INLINE_MAX_BYTES:
                continue
            key = hashlib.sha256(raw).digest()
            if key in in_torchscript:
                set_external_data(t, "model.pt", *in_torchscript[key])
            else:
                if key not in ranges:
                    blob += b"\0" * (-len(blob) % ALIGN)
                    ranges[key] = (len(blob), len(raw))
                    blob += raw
                set_external_data(t, WEIGHTS, *ranges[key])
            t.ClearField("raw_data")
    (folder / WEIGHTS).write_bytes(bytes(blob))
    for name, proto in graphs.items():
        onnx.save_model(proto, str(folder / name))


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Large Constant nodes (folded masks, tables) become initializers, so that they can go external too."""
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if (attr is not None and attr.name == "value" and node.output[0] not in outputs
                and len(numpy_helper.to_array(attr.t).tobytes()) >= INLINE_MAX_BYTES):
            t = copy.deepcopy(attr.t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _check_onnx(folder: Path) -> None:
    for name in ("score.onnx", "step.onnx", *[multistep.FILE] * (folder / multistep.FILE).is_file()):
        try:
            onnx.checker.check_model(str(folder / name), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"{name} fails onnx.checker: {e}") from None


# ----- the manifest and the public entry points ----------------------------------------------------


def _manifest(model: ARModel, meta: dict, files: dict, export: dict, program: StepProgram | None = None
              ) -> Manifest:
    missing = [k for k in ("name", "modality", "shape") if k not in meta]
    if missing:
        raise ExportError(f"metadata lacks {missing}")
    spec = model.state_spec()
    bad = [f"{n} ({d})" for n, _, d in spec if d not in _DTYPES]
    if bad:
        raise ExportError(f"state tensors must be float32 or int64: {bad}")
    names = [n for n, _, _ in spec]
    try:
        return Manifest(
            name=meta["name"], family=model.family, modality=meta["modality"],
            description=meta.get("description", ""), length=model.length, variable_length=model.variable_length,
            shape=list(meta["shape"]), token_dtype=_DTYPES[model.token_dtype],
            vocab_size=None if model.dist == "gaussian_mixture" else model.vocab_size,
            num_params=model.num_params, distribution=model.dist, vocabulary=meta.get("vocabulary") or {},
            state=[_state_tensor(n, s, d, model.state_slots().get(n)) for n, s, d in spec],
            io=GraphIO(step_inputs=["x_prev", "pos", *names], step_outputs=["params", *[f"new_{n}" for n in names]]),
            files=files, config=model.config_dict(), training=meta.get("training") or {},
            metrics=meta.get("metrics") or {}, export=export, step_program=program,
            multi_step=multistep.declaration(model) if multistep.supported(model) else None,
        )
    except ValueError as e:  # pydantic's ValidationError
        raise ExportError(f"metadata does not make a valid manifest: {e}") from None


def _state_tensor(name: str, shape: tuple, dtype: torch.dtype, slots: tuple | None) -> StateTensor:
    if slots is None:
        return StateTensor(name=name, shape=["batch", *shape], dtype=_DTYPES[dtype])
    axis, rings = slots
    return StateTensor(name=name, shape=["batch", *shape], dtype=_DTYPES[dtype], update="slots", slot_axis=axis,
                       rings=[tuple(r) for r in rings])


def export_model(model: ARModel, out_dir: str | Path, meta: dict) -> Manifest:
    """Write model.pt, score.onnx, step.onnx, weights.bin and manifest.json into out_dir, after parity."""
    out_dir = Path(out_dir)
    model = copy.deepcopy(model).eval().requires_grad_(False)  # the caller's model is left as it was
    created = datetime.now(UTC).isoformat(timespec="seconds")
    draft = _manifest(model, meta, {}, {})  # bad metadata fails before any tracing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer and exporter warnings ("might cause the trace to be incorrect", "batch size other than 1
            # with LSTM") are what the parity gate settles: it runs the artifacts at other sizes and fails loudly.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated in favour of torch.export, but it is the format the service loads
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            _stage("TorchScript tracing", lambda: _write_torchscript(model, build / "model.pt"))
            _stage("ONNX export", lambda: _share_weights(_write_onnx(model, build) | multistep.graphs(model, OPSET),
                                                         build))
            program = []
            _stage("torch.export of the step", lambda: program.append(_write_program(model, build)))
        _check_onnx(build)
        parity = verify(model, build, draft.state, program[0])
        if draft.multi_step is not None:
            parity["multi_step"] = _verify_multistep(model, build, draft)
        export = {
            "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "created_utc": created, "external_data": WEIGHTS, "inline_max_bytes": INLINE_MAX_BYTES, "parity": parity,
        }
        names = FILES + (multistep.FILE,) + ((PROGRAM,) if program[0] else ())
        files = {f: {"sha256": sha256_file(build / f), "bytes": (build / f).stat().st_size}
                 for f in names if (build / f).is_file()}
        manifest = _manifest(model, meta, files, export, program[0])
        (build / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        _replace_dir(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return manifest


def _verify_multistep(model: ARModel, build: Path, draft: Manifest) -> dict:
    """stepk.onnx draws, through the engine, exactly the tokens and log-probs of one step.onnx call per position."""
    try:
        return multistep.verify(build, draft, model.length, model.dist == "gaussian_mixture", PARITY_SEED)
    except ValueError as e:
        raise ExportError(f"parity check failed: {e}") from None


def _stage(name: str, fn) -> None:
    try:
        fn()
    except Exception as e:  # an untraceable model: say which stage, keep the cause attached
        raise ExportError(f"{name} failed: {type(e).__name__}: {e}") from e


def _replace_dir(src: Path, dst: Path) -> None:
    """Put src at dst; an existing dst is swapped out by renames, so readers never see half a model."""
    if not dst.exists():
        src.rename(dst)
        return
    if not dst.is_dir():
        raise ExportError(f"{dst} exists and is not a folder")
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Manifest:
    model, meta, _ = load_checkpoint(checkpoint_path)
    return export_model(model, out_dir, meta)


def placeholder_meta(model: ARModel, name: str) -> dict:
    """Metadata for an untrained model (tests, benchmarks): a modality and shape that fit its family."""
    L = model.length
    if model.dist == "gaussian_mixture":
        return {"name": name, "modality": "vector", "shape": [L]}
    if model.family == "wavenet":
        cfg = model.config_dict()
        vocabulary = {"sample_rate": cfg.get("sample_rate", 8000), "mu": cfg.get("mu", model.vocab_size - 1)}
        return {"name": name, "modality": "audio", "shape": [L], "vocabulary": vocabulary}
    if model.variable_length:
        chars = "".join(chr(0x21 + i) if i < 94 else chr(0x100 + i) for i in range(model.vocab_size))
        return {"name": name, "modality": "text", "shape": [L], "vocabulary": {"chars": chars}}
    if model.dist == "bernoulli":
        h = max(d for d in range(1, int(L**0.5) + 1) if L % d == 0)  # the most square raster
        return {"name": name, "modality": "binary_image", "shape": [h, L // h],
                "vocabulary": {"height": h, "width": L // h}}
    return {"name": name, "modality": "vector", "shape": [L]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Export a checkpoint to TorchScript + ONNX + manifest.json.")
    ap.add_argument("checkpoint", help="a checkpoint written by models.checkpoint.save_checkpoint")
    ap.add_argument("out_dir", help="the model's folder, e.g. exported/nade-mnist (replaced only on success)")
    args = ap.parse_args(argv)
    try:
        manifest = export_checkpoint(args.checkpoint, args.out_dir)
    except (CheckpointError, ExportError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    parity = manifest.export["parity"]
    print(f"exported {manifest.name} ({manifest.family}) to {args.out_dir}: "
          f"log_prob max diff {parity['log_prob_max_abs_diff']}, step tokens equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
