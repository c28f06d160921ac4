"""The eager model and its exported artifacts behind one numpy interface: log_prob / init_state / step.

Used by the exporter's parity gate and by the benchmarks, so that the three runtimes are driven by the very
same code (and the same seeded sampler) when they are compared.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import models
from app.engine.sampling import sample_categorical, sample_mixture
from app.runtime.backends import BoundStep, direct_run
from app.runtime.manifest import GraphIO, StateTensor, StepProgram, load_manifest
from models.base import ARModel


class Runtime:
    """log_prob / init_state / step on numpy arrays, for the eager model or an exported artifact."""

    name = ""

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def init_state(self, batch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def step(self, x_prev: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        raise NotImplementedError


class EagerRuntime(Runtime):
    name = "eager"

    def __init__(self, model: ARModel, checked: bool = True):
        """checked=False calls the unchecked cores (`_step`), to time the algorithm without input validation."""
        self.model = model
        self._step = model.step if checked else model._step

    @classmethod
    def from_folder(cls, folder: str | Path, checked: bool = True) -> EagerRuntime:
        """The eager model of an exported folder: its family and config from the manifest, weights from model.pt."""
        m = load_manifest(folder)
        model = models.build(m.family, m.config)
        saved = model_weights(TorchScriptRuntime(Path(folder) / "model.pt").module)
        # TorchScript keeps non-persistent buffers (masks, slot tables) too; the model rebuilds those itself
        model.load_state_dict({k: saved[k] for k in model.state_dict()})
        return cls(model.eval(), checked)

    @torch.inference_mode()
    def log_prob(self, x):
        return self.model.log_prob(torch.from_numpy(x)).numpy()

    def init_state(self, batch):
        return [s.numpy() for s in self.model.init_state(batch)]

    @torch.inference_mode()
    def step(self, x_prev, pos, state):
        params, new = self._step(torch.from_numpy(x_prev), torch.from_numpy(pos),
                                 tuple(torch.from_numpy(s) for s in state))
        return params.numpy(), [s.numpy() for s in new]


class TorchScriptRuntime(Runtime):
    name = "torchscript"

    def __init__(self, path: str | Path):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def log_prob(self, x):
        return self.module.log_prob(torch.from_numpy(x)).numpy()

    def init_state(self, batch):
        return [s.numpy() for s in self.module.init_state(batch)]

    @torch.inference_mode()
    def step(self, x_prev, pos, state):
        params, new = self.module.step(torch.from_numpy(x_prev), torch.from_numpy(pos),
                                       [torch.from_numpy(s) for s in state])
        return params.numpy(), [s.numpy() for s in new]


def model_weights(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The model's own tensors in an exported model.pt, named as in the eager model."""
    prefix = "traced.model."  # TorchScriptModel -> traced _Core -> the model
    return {k[len(prefix):]: v for k, v in scripted.state_dict().items() if k.startswith(prefix)}


class ProgramRuntime(Runtime):
    """step.pt2 (the manifest's step_program) run eagerly, uncompiled, with its weights read from model.pt: what
    the service compiles, checked as it is shipped. It has no log_prob."""

    name = "step_program"

    def __init__(self, folder: str | Path, state: list[StateTensor], program: StepProgram):
        self.state = state
        self.replaced = [s.update != "slots" for s in state]
        self.fn = torch.export.load(str(Path(folder) / program.file)).module()
        weights = TorchScriptRuntime(Path(folder) / program.weights_file).module.state_dict()
        self.weights = [weights[name] for name in program.weights]

    def init_state(self, batch):
        return [np.zeros([batch, *s.shape[1:]], dtype=s.dtype) for s in self.state]

    @torch.inference_mode()
    def step(self, x_prev, pos, state):
        given = [torch.from_numpy(s) for s in state]
        out = self.fn(torch.from_numpy(x_prev), torch.from_numpy(pos), given, self.weights)
        params, *replaced = out if isinstance(out, (tuple, list)) else (out,)
        fresh = iter(replaced)
        return params.numpy(), [next(fresh).numpy() if r else s for r, s in zip(self.replaced, state, strict=True)]


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, folder: str | Path, state: list[StateTensor], threads: int | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.score = ort.InferenceSession(str(Path(folder) / "score.onnx"), opts, providers=providers)
        self.step_session = ort.InferenceSession(str(Path(folder) / "step.onnx"), opts, providers=providers)
        self.state = state
        self.run_step = direct_run(self.step_session)
        self.step_outputs = [o.name for o in self.step_session.get_outputs()]
        names = [s.name for s in state]
        self.io = GraphIO(step_inputs=["x_prev", "pos", *names], step_outputs=self.step_outputs)
        in_place = any(s.update == "slots" for s in state)
        self.bound_step = BoundStep(self.step_session, self.io, state) if in_place else None

    @classmethod
    def from_folder(cls, folder: str | Path, threads: int | None = None) -> OnnxRuntime:
        return cls(folder, load_manifest(folder).state, threads)

    def log_prob(self, x):
        return self.score.run(["log_prob"], {"x": x})[0]

    def init_state(self, batch):
        return [np.zeros([batch, *s.shape[1:]], dtype=s.dtype) for s in self.state]

    def step(self, x_prev, pos, state):
        if self.bound_step is not None:  # the service's way: "slots" tensors bound as input and output, in place
            return self.bound_step(x_prev, pos, state)
        feeds = {"x_prev": x_prev, "pos": pos, **{s.name: v for s, v in zip(self.state, state, strict=True)}}
        params, *new = self.run_step(self.step_outputs, feeds)
        return params, new


def draw(dist: str, params: np.ndarray, rng: np.random.Generator, temperature: float) -> np.ndarray:
    if dist == "gaussian_mixture":
        return sample_mixture(params, rng, temperature)
    return sample_categorical(params, rng, temperature)


def step_loop(rt: Runtime, dist: str, token_dtype: np.dtype, batch: int, steps: int, seed: int,
              temperature: float, in_place: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, steps], params [B, steps, P]) of a seeded generation through rt.step. The state tensors
    flagged in_place are kept (what step returns for them is ignored), as the service keeps them: a runtime
    that does not write them in place fails to reproduce."""
    rng = np.random.default_rng(seed)
    state = rt.init_state(batch)
    keep = in_place or [False] * len(state)
    x = np.zeros(batch, dtype=token_dtype)
    tokens, params_seen = [], []
    for t in range(steps):
        params, new = rt.step(x, np.full(batch, t, dtype=np.int64), state)
        state = [old if k else n for old, n, k in zip(state, new, keep, strict=True)]
        x = draw(dist, params, rng, temperature)
        tokens.append(x)
        params_seen.append(params)
    return np.stack(tokens, 1), np.stack(params_seen, 1)
