"""stepk.onnx: several positions per runtime call, for the models whose token costs less than a call.

One call of `step` per token costs ONNX Runtime's fixed ~7-10 µs plus the engine's Python around it, more than
the few µs of arithmetic of a NADE, FVSBN, MADE, finite-memory or RNADE token. stepk.onnx runs the model's own
traced `_step` inside an ONNX `Loop` and draws each token in the graph, from random numbers that the caller
drew beforehand from each row's own Generator, so that a row advances up to `n[b]` positions in one call:

    inputs   x_prev [B], pos [B], *state, <draw inputs>, n [B] int64 (positions wanted per row, >= 0)
    outputs  tokens [M, B], params [M, B, P] (M = max n, position-major), count [B], *new_state

Seeded samples must be exactly those of the one-token path (`step` + app/engine/sampling.py). The graph draws
with the same float64 arithmetic as numpy, but its `Exp` may round differently in the last bit, so each draw
also checks its own margin: where the draw lies within ~1e-10 (relative) of a boundary, where rounding could
decide, the row stops *before* that position (count[b] says how many were taken; its state is that of the last
taken position) and the caller draws that position through the one-token path. Beyond the margin a last-bit
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
    """One iteration of the Loop: the model's step at each live row's position, then its draw."""

    def __init__(self, model: ARModel):
        super().__init__()
        self.model, self.kind = model, draw_kind(model)
        self.n_state = len(model.state_spec())
        self.register_buffer("last", torch.tensor(model.length - 1), persistent=False)
        self.eval()

    def forward(self, i: Tensor, cond: Tensor, x_prev: Tensor, pos: Tensor, live: Tensor, *rest: Tensor
                ) -> tuple[Tensor, ...]:
        state, outer = rest[: self.n_state], rest[self.n_state:]
        # a row past its last position keeps its pos (never read): clamp so that the step's gathers stay inside
        params, new = self.model._step(x_prev, torch.minimum(pos, self.last), tuple(state))
        token, take = self._draw(params, i, outer)
        take = live & take  # (B,) rows that accept this position; a row that stopped stays stopped
        grown = take.unsqueeze(1)
        kept = [torch.where(grown if s.dim() == 2 else take.view(-1, *[1] * (s.dim() - 1)), s_new, s)
                for s, s_new in zip(state, new, strict=True)]
        # The loop runs max(n) times whatever the rows do: a stopped row costs what a live one does, and
        # testing for "any row live" costs three nodes per position.
        return (cond, torch.where(take, token, x_prev), pos + take.long(), take, *kept, token, params)

    def _draw(self, params: Tensor, i: Tensor, outer: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """-> (token [B], sure [B]): the draw, and whether it is numpy's beyond doubt (and wanted: i < n)."""
        if self.kind == "bernoulli":  # positions past a row's n have bounds (-inf, inf): never sure
            lo, hi, _ = outer
            logit = params[:, 1]
            one = logit >= hi[:, i]
            return one.long(), one | (logit <= lo[:, i])
        wanted = i < outer[-1]
        if self.kind == "categorical":
            u, temperature, _ = outer
            token, unsure = _categorical(params, u[:, i], temperature)
            return token, wanted & ~unsure
        u, z, temperature, _ = outer
        K = params.shape[1] // 3
        logit_w, mu, log_sigma = params[:, :K], params[:, K : 2 * K].double(), params[:, 2 * K :].double()
        comp, unsure = _categorical(logit_w, u[:, i], torch.where(temperature > 0, 1.0, 0.0).double())
        mu_c, ls_c = mu.gather(1, comp.unsqueeze(1))[:, 0], log_sigma.gather(1, comp.unsqueeze(1))[:, 0]
        spread = temperature * torch.exp(ls_c) * z[:, i]  # numpy's order: (T * exp(log sigma)) * noise
        value = mu_c + spread
        eta = VALUE_MARGIN * (torch.abs(mu_c) + torch.abs(spread)) + 1e-300
        unsure = unsure | ((value + eta).float() != (value - eta).float())
        return value.float(), wanted & ~unsure


def _value_info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def write(model: ARModel, path: Path, opset: int) -> onnx.ModelProto:
    """Trace the loop body, wrap it in a Loop and return the model (not yet saved: the exporter shares its
    weights with model.pt, then saves it at path)."""
    kind = draw_kind(model)
    spec = model.state_spec()
    names = [n for n, _, _ in spec]
    B, M = 2, 3
    tok_dtype = model.token_dtype
    x_prev = torch.zeros(B, dtype=tok_dtype)
    pos = torch.tensor([0, 1], dtype=torch.long)
    state = list(model.init_state(B))
    if kind == "bernoulli":
        outer = [torch.zeros(B, M), torch.ones(B, M)]
    elif kind == "categorical":
        outer = [torch.rand(B, M, dtype=torch.float64), torch.ones(B, dtype=torch.float64)]
    else:
        outer = [torch.rand(B, M, dtype=torch.float64), torch.randn(B, M, dtype=torch.float64),
                 torch.ones(B, dtype=torch.float64)]
    n = torch.full((B,), M, dtype=torch.long)
    args = (torch.tensor(0), torch.tensor(True), x_prev, pos, torch.ones(B, dtype=torch.bool), *state, *outer, n)
    carried = ["x_prev", "pos", "live", *names]
    body_in = ["i", "cond_in", *[f"b_{c}_in" for c in carried]] + outer_inputs(kind)
    body_out = ["cond_out", *[f"b_{c}_out" for c in carried], "b_token", "b_params"]
    tmp = path.with_suffix(".body.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Body(model), args, str(tmp), input_names=body_in, output_names=body_out,
                          opset_version=opset, do_constant_folding=False, dynamo=False,
                          dynamic_axes={k: {0: "batch"} for k in body_in[2:] + body_out[1:]})
    body = onnx.load(str(tmp))
    tmp.unlink()
    return _wrap(body, model, kind, names, carried, opset)


def _wrap(body: onnx.ModelProto, model: ARModel, kind: str, names: list[str], carried: list[str],
          opset: int) -> onnx.ModelProto:
    g = body.graph
    tok = TensorProto.FLOAT if kind == "mixture" else TensorProto.INT64
    types = {"x_prev": tok, "pos": TensorProto.INT64, "live": TensorProto.BOOL}
    spec = {n: (s, d) for n, s, d in model.state_spec()}
    elem = {torch.float32: TensorProto.FLOAT, torch.int64: TensorProto.INT64}
    for n_ in names:
        types[n_] = elem[spec[n_][1]]

    def shape(c: str) -> list:
        return ["batch", *spec[c][0]] if c in spec else ["batch"]

    # the body's inputs: iteration, condition, then the carried values (the outer ones are read from the scope)
    inputs = [_value_info("i", TensorProto.INT64, []), _value_info("cond_in", TensorProto.BOOL, [])]
    inputs += [_value_info(f"b_{c}_in", types[c], shape(c)) for c in carried]
    del g.input[:]
    g.input.extend(inputs)
    initializers = list(g.initializer)
    del g.initializer[:]
    f64, f32 = TensorProto.DOUBLE, TensorProto.FLOAT
    draw_types = {"lo": (f32, ["batch", "steps"]), "hi": (f32, ["batch", "steps"]), "u": (f64, ["batch", "steps"]),
                  "z": (f64, ["batch", "steps"]), "temperature": (f64, ["batch"]), "n": (TensorProto.INT64, ["batch"])}
    outer_in = [_value_info("x_prev", tok, ["batch"]), _value_info("pos", TensorProto.INT64, ["batch"])]
    outer_in += [_value_info(n_, types[n_], shape(n_)) for n_ in names]
    outer_in += [_value_info(k, *draw_types[k]) for k in outer_inputs(kind)]
    P = model.num_params
    nodes = [
        helper.make_node("ReduceMax", ["n"], ["k_trips"], keepdims=0),
        helper.make_node("Constant", [], ["k_cond"], value=helper.make_tensor("k_true", TensorProto.BOOL, [], [True])),
        helper.make_node("Constant", [], ["k_zero"], value=helper.make_tensor("k_zero_v", TensorProto.INT64, [], [0])),
        helper.make_node("Greater", ["n", "k_zero"], ["k_live"]),
        helper.make_node("Loop", ["k_trips", "k_cond", "x_prev", "pos", "k_live", *names],
                         ["k_x_last", "pos_next", "k_live_last", *[f"new_{n_}" for n_ in names],
                          "tokens", "params"], body=g),
    ]
    outputs = [_value_info("tokens", tok, ["steps", "batch"]), _value_info("params", f32, ["steps", "batch", P]),
               _value_info("pos_next", TensorProto.INT64, ["batch"])]
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
