"""stepk.onnx: several positions per runtime call, for the models whose token costs less than a call.

One call of `step` per token costs ONNX Runtime's fixed ~7-10 µs plus the engine's Python around it, more than
the few µs of arithmetic of a NADE, FVSBN, MADE, finite-memory or RNADE token. stepk.onnx runs the model's own
traced step (`_multi_step` where the model has one: the same bits on fewer nodes, else `_step`) inside an ONNX
`Scan` over positions and draws each token in the graph, from random numbers that the caller drew beforehand
from each row's own Generator, so that a row advances up to `n[b]` positions in one call:

    inputs   x_prev [B], pos [B], *state, <draw inputs [B, M]>, n [B] int64 (positions wanted per row, >= 0)
    outputs  tokens [M, B], params [M, B, P] (position-major), pos_next [B], *new_state

A Scan rather than a Loop: the per-position inputs arrive sliced, with no Gather nodes, and its per-position
overhead is a few nodes' worth (~1 µs); each node costs ~0.5 µs, so the body is kept short.

Seeded samples must be exactly those of the one-token path (`step` + app/engine/sampling.py). The graph draws
with the same float64 arithmetic as numpy, but its `Exp` may round differently in the last bit, so each draw
also checks its own margin: where the draw lies within ~1e-10 (relative) of a boundary, where rounding could
decide, the row stops *before* that position (pos_next[b] - pos[b] says how many it took; its state is that of
the last taken position) and the caller draws that position through the one-token path. Beyond the margin a last-bit
difference cannot change the token, so every accepted token is numpy's. The draws (docs/state.md):

- "bernoulli" (p = σ(l)): the caller turns each uniform u into float32 bounds lo <= hi on the logit such that
  l >= hi certainly draws 1 and l <= lo certainly draws 0 in numpy (app/engine/sampling.py:
  bernoulli_bounds); between them the row stops. Inputs lo, hi [B, M] float32.
- "categorical": inverse CDF in float64 as numpy's (exp, cumsum, count below u x total); temperature 0 is the
  first argmax. Inputs u [B, M] float64, temperature [B] float64 (0 = greedy).
- "mixture" (RNADE): a component by the categorical draw of the mixture logits, then mu + T sigma z, rounded to
  float32 like numpy's astype; the row also stops where that rounding could go either way. Inputs u, z [B, M]
  float64 (uniform then normal, drawn alternately per position as the one-token path draws them), temperature
  [B] float64.

Only models whose state is all "replace" get one: a row that stops keeps the state of its last taken position.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from app.engine.generation import multi_token_problem
from app.runtime.backends import OnnxBackend
from app.runtime.manifest import Manifest, MultiStep
from models.base import ARModel

FILE = "stepk.onnx"
# The families whose token costs less than a runtime call (a few thousand multiply-adds), with all-"replace" state
FAMILIES = ("nade", "fvsbn", "made", "finite", "rnade")
MARGIN = 1e-10  # relative: a categorical draw this close to a CDF boundary is left to the one-token path
VALUE_MARGIN = 1e-12  # relative: a mixture value this close to a float32 rounding boundary, likewise
_OUTER = {"bernoulli": ["lo", "hi"], "categorical": ["u", "temperature"], "mixture": ["u", "z", "temperature"]}


def supported(model: ARModel) -> bool:
    return model.family in FAMILIES and not model.state_slots()


def declaration(model: ARModel) -> MultiStep:
    names = [n for n, _, _ in model.state_spec()]
    kind = draw_kind(model)
    return MultiStep(file=FILE, draw=kind, inputs=["x_prev", "pos", *names, *outer_inputs(kind)],
                     outputs=["tokens", "params", "pos_next", *[f"new_{n}" for n in names]])


def graphs(model: ARModel, opset: int) -> dict[str, onnx.ModelProto]:
    """{FILE: the graph} for the families that have one, else {} (the exporter adds it to what it writes)."""
    if not supported(model):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        return {FILE: write(model, Path(tmp) / FILE, opset)}


def draw_kind(model: ARModel) -> str:
    return {"bernoulli": "bernoulli", "categorical": "categorical", "gaussian_mixture": "mixture"}[model.dist]


def outer_inputs(kind: str) -> list[str]:
    return [*_OUTER[kind], "n"]


def _categorical(logits: Tensor, u: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
    """logits [B, V] float32, u [B] float64, temperature [B] float64 (0 = greedy) -> (tokens [B], unsure [B]):
    app/engine/sampling.py's draw in float64, and whether it came within MARGIN of a boundary."""
    greedy = temperature == 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    z = logits.double() / t.unsqueeze(1)  # numpy skips the division at T = 1: x / 1.0 == x, the same value
    p = torch.exp(z - torch.amax(z, dim=1, keepdim=True))  # (B, V)
    cdf = torch.cumsum(p, dim=1)  # left to right, as np.cumsum
    total = cdf[:, -1:]
    target = u.unsqueeze(1) * total
    drawn = (cdf < target).long().sum(1).clamp(max=logits.shape[1] - 1)
    near = torch.amin(torch.abs(cdf - target), dim=1) < MARGIN * total[:, 0]
    return torch.where(greedy, torch.argmax(logits, dim=1), drawn), near & ~greedy


class _Body(nn.Module):
    """One position of the Scan: the model's step at each row's position, then its draw. Scanned inputs arrive
    one position at a time (lo, hi or u, z, wanted: [B] each); temperature [B] is read from the outer scope."""

    def __init__(self, model: ARModel):
        super().__init__()
        self.model, self.kind = model, draw_kind(model)
        self.n_state = len(model.state_spec())
        self.register_buffer("last", torch.tensor(model.length - 1), persistent=False)
        # The model's own step for the multi-token graph where it has one (the same bits as _step, fewer nodes:
        # x_prev is a drawn token, 0 at position 0; Bernoulli models return the logit alone), else _step.
        self.hooked = hasattr(model, "_multi_step")
        self.step = model._multi_step if self.hooked else model._step
        self.eval()

    def forward(self, x_prev: Tensor, live: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        state, (pos, *scanned) = rest[: self.n_state], rest[self.n_state:]
        # pos [B] is scanned: a row's start + j, clamped to the last position (a stopped row's is never read)
        params, new = self.step(x_prev if self.kind != "bernoulli" or self.hooked else x_prev.long(), pos,
                                tuple(state))  # (a hook reads a float pixel as it is; _step wants a token)
        if self.kind == "bernoulli" and params.dim() == 2:  # a _step's [0, l]: the draw reads l
            params = params[:, 1]
        token, sure = self._draw(params, scanned)
        take = live & sure  # (B,) rows that accept this position; a row that stopped stays stopped
        grown = take.unsqueeze(1)
        kept = [torch.where(grown if s.dim() == 2 else take.view(-1, *[1] * (s.dim() - 1)), s_new, s)
                for s, s_new in zip(state, new, strict=True)]
        # The scan runs M times whatever the rows do: a stopped row costs what a live one does. Bernoulli draws
        # carry x as a float 0 / 1 (what the step multiplies by); the positions taken are counted outside.
        x_next = torch.where(take, token.to(x_prev.dtype), x_prev)
        return (x_next, take, *kept, token, params, take.clone())

    def _draw(self, params: Tensor, scanned: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """-> (token [B], sure [B]): the draw, and whether it is numpy's beyond doubt (and the row wants it)."""
        if self.kind == "bernoulli":  # params is the logit [B]; past a row's n the bounds are (-inf, inf): never sure
            lo, hi = scanned
            one = params >= hi
            return one, one | (params <= lo)
        if self.kind == "categorical":
            u, wanted, temperature = scanned
            token, unsure = _categorical(params, u, temperature)
            return token, wanted & ~unsure
        u, z, wanted, temperature = scanned
        K = params.shape[1] // 3
        logit_w, mu, log_sigma = params[:, :K], params[:, K : 2 * K].double(), params[:, 2 * K :].double()
        comp, unsure = _categorical(logit_w, u, torch.where(temperature > 0, 1.0, 0.0).double())
        mu_c, ls_c = mu.gather(1, comp.unsqueeze(1))[:, 0], log_sigma.gather(1, comp.unsqueeze(1))[:, 0]
        spread = temperature * torch.exp(ls_c) * z  # numpy's order: (T * exp(log sigma)) * noise
        value = mu_c + spread
        eta = VALUE_MARGIN * (torch.abs(mu_c) + torch.abs(spread)) + 1e-300
        unsure = unsure | ((value + eta).float() != (value - eta).float())
        return value.float(), wanted & ~unsure


_SCANNED = {"bernoulli": ["lo", "hi"], "categorical": ["u", "wanted"], "mixture": ["u", "z", "wanted"]}


def write(model: ARModel, path: Path, opset: int) -> onnx.ModelProto:
    """Trace the per-position body, wrap it in a Scan and return the model (not yet saved: the exporter shares its
    weights with model.pt, then saves it)."""
    kind = draw_kind(model)
    names = [n for n, _, _ in model.state_spec()]
    B = 2
    x_prev = torch.zeros(B, dtype=torch.float32 if kind == "bernoulli" else model.token_dtype)
    pos = torch.tensor([0, 1], dtype=torch.long)
    state = list(model.init_state(B))
    f64 = torch.float64
    example = {"lo": torch.zeros(B), "hi": torch.ones(B), "u": torch.rand(B, dtype=f64),
               "z": torch.randn(B, dtype=f64), "wanted": torch.ones(B, dtype=torch.bool),
               "temperature": torch.ones(B, dtype=f64)}
    outer = _SCANNED[kind] + ([] if kind == "bernoulli" else ["temperature"])
    args = (x_prev, torch.ones(B, dtype=torch.bool), *state, pos, *[example[k] for k in outer])
    carried = ["x_prev", "live", *names]
    scanned = ["pos", *_SCANNED[kind]]
    body_in = [f"b_{c}_in" for c in carried] + [f"b_{k}" for k in scanned] + outer[len(_SCANNED[kind]):]
    body_out = [f"b_{c}_out" for c in carried] + ["b_token", "b_params", "b_take"]
    tmp = path.with_suffix(".body.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Body(model), args, str(tmp), input_names=body_in, output_names=body_out,
                          opset_version=opset, do_constant_folding=False, dynamo=False,
                          dynamic_axes={k: {0: "batch"} for k in body_in + body_out})
    body = onnx.load(str(tmp))
    tmp.unlink()
    return _wrap(body, model, kind, names, carried, opset)


def _value_info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name: str, elem: int, values: list, dims: list | None = None) -> onnx.NodeProto:
    dims = [len(values)] if dims is None else dims
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(f"{name}_v", elem, dims, values))


def _wrap(body: onnx.ModelProto, model: ARModel, kind: str, names: list[str], carried: list[str],
          opset: int) -> onnx.ModelProto:
    g = body.graph
    I64, F32, F64, BOOL = TensorProto.INT64, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BOOL
    tok = F32 if kind == "mixture" else I64
    bernoulli = kind == "bernoulli"
    spec = {n: (shp, {torch.float32: F32, torch.int64: I64}[d]) for n, shp, d in model.state_spec()}
    types = {"x_prev": F32 if bernoulli else tok, "live": BOOL, **{n: spec[n][1] for n in names}}

    def shape(c: str) -> list:
        return ["batch", *spec[c][0]] if c in spec else ["batch"]

    # The body's inputs: the carried values, then one position of each scanned input; temperature comes from the
    # outer scope (a body input of that name is dropped: the outer graph's input is read instead).
    scan_types = {"pos": I64, "lo": F32, "hi": F32, "u": F64, "z": F64, "wanted": BOOL}
    scanned = ["pos", *_SCANNED[kind]]
    inputs = [_value_info(f"b_{c}_in", types[c], shape(c)) for c in carried]
    inputs += [_value_info(f"b_{k}", scan_types[k], ["batch"]) for k in scanned]
    del g.input[:]
    g.input.extend(inputs)
    initializers = list(g.initializer)  # the weights: outer-graph initializers, which the exporter shares
    del g.initializer[:]
    outer_in = [_value_info("x_prev", tok, ["batch"]), _value_info("pos", I64, ["batch"])]
    outer_in += [_value_info(n, types[n], shape(n)) for n in names]
    draw_types = {"lo": (F32, ["batch", "steps"]), "hi": (F32, ["batch", "steps"]), "u": (F64, ["batch", "steps"]),
                  "z": (F64, ["batch", "steps"]), "temperature": (F64, ["batch"]), "n": (I64, ["batch"])}
    outer_in += [_value_info(k, *draw_types[k]) for k in outer_inputs(kind)]
    first = scanned[1]  # a [B, M] input: M positions
    nodes = [
        _const("k_zero", I64, [0], []),
        _const("k_one", I64, [1], []),
        _const("k_last", I64, [model.length - 1], []),
        _const("k_axis0", I64, [0]),
        _const("k_axis1", I64, [1]),
        _const("k_zero_tok", tok, [0], []),
        helper.make_node("Equal", ["pos", "k_zero"], ["k_first"]),
        helper.make_node("Where", ["k_first", "k_zero_tok", "x_prev"], ["k_x0_tok"]),  # x_prev is 0 at position 0
        *([helper.make_node("Cast", ["k_x0_tok"], ["k_x0"], to=F32)] if bernoulli else
          [helper.make_node("Identity", ["k_x0_tok"], ["k_x0"])]),
        helper.make_node("Greater", ["n", "k_zero"], ["k_live"]),
        # the positions [B, M]: pos + j, clamped inside the model (a row past its end never reads its own)
        helper.make_node("Shape", [first], ["k_shape"]),
        helper.make_node("Gather", ["k_shape", "k_one"], ["k_steps"], axis=0),
        helper.make_node("Range", ["k_zero", "k_steps", "k_one"], ["k_j"]),
        helper.make_node("Unsqueeze", ["k_j", "k_axis0"], ["k_j_row"]),
        helper.make_node("Unsqueeze", ["pos", "k_axis1"], ["k_pos_col"]),
        helper.make_node("Add", ["k_pos_col", "k_j_row"], ["k_pos_all"]),
        helper.make_node("Min", ["k_pos_all", "k_last"], ["k_positions"]),
    ]
    scan_in = ["k_positions", *_SCANNED[kind]]
    if "wanted" in scanned:  # wanted [B, M]: position j < n[b]
        nodes += [
            helper.make_node("Unsqueeze", ["n", "k_axis1"], ["k_n_col"]),
            helper.make_node("Less", ["k_j_row", "k_n_col"], ["wanted"]),
        ]
    scan_out = ["k_tokens" if bernoulli else "tokens", "k_logits" if bernoulli else "params", "k_takes"]
    nodes.append(helper.make_node(
        "Scan", ["k_x0", "k_live", *names, *scan_in],
        ["k_x_last", "k_live_last", *[f"new_{n_}" for n_ in names], *scan_out],
        body=g, num_scan_inputs=len(scan_in), scan_input_axes=[1] * len(scan_in)))
    nodes += [  # pos_next = pos + the positions each row took
        helper.make_node("Cast", ["k_takes"], ["k_takes_i"], to=I64),
        helper.make_node("ReduceSum", ["k_takes_i", "k_axis0"], ["k_took"], keepdims=0),
        helper.make_node("Add", ["pos", "k_took"], ["pos_next"]),
    ]
    if bernoulli:  # the logits [M, B] -> [M, B, 2] as bernoulli_logits makes them: [l x 0, l x 1], once per call
        nodes += [
            helper.make_node("Cast", ["k_tokens"], ["tokens"], to=I64),
            _const("k_axis2", I64, [2]),
            _const("k_zero_one", F32, [0.0, 1.0]),
            helper.make_node("Unsqueeze", ["k_logits", "k_axis2"], ["k_logits3"]),
            helper.make_node("Mul", ["k_logits3", "k_zero_one"], ["params"]),
        ]
    outputs = [_value_info("tokens", tok, ["steps", "batch"]),
               _value_info("params", F32, ["steps", "batch", model.num_params]),
               _value_info("pos_next", I64, ["batch"])]
    outputs += [_value_info(f"new_{n_}", types[n_], shape(n_)) for n_ in names]
    graph = helper.make_graph(nodes, "stepk", outer_in, outputs, initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="arserve models.multistep")
    proto.ir_version = body.ir_version
    return proto


# ----- the parity gate: the multi-token path draws what the one-token path draws ---------------------------


def verify(folder: Path, manifest: Manifest, length: int, mixture: bool, seed: int) -> dict:
    """Generate through the engine (app/engine/generation.py) over the artifacts in folder, one position per call
    and up to `chunk` per call, for 1 and 3 rows at once and several temperatures: every token and log-prob must
    be the same bits. Raises ValueError naming the first difference; returns what was checked."""
    steps = min(length, 160)
    temperatures = [1.0, 0.0] if mixture else [1.0, 0.0, 0.7]
    problem, checked = multi_token_problem(OnnxBackend(folder, manifest), mixture, manifest.token_dtype, steps, seed,
                                           temperatures)
    if problem:
        raise ValueError(problem)
    return {"tokens_checked": checked, "steps": steps, "chunks": [7, 64], "rows": [1, 3],
            "temperatures": temperatures, "seed": seed, "tokens_equal": True, "logprobs_equal": True}
