"""The small protocol the engine runs models through, and its implementations: ONNX Runtime, TorchScript, and
the compiled step (ONNX Runtime with the step compiled by AOTInductor where the model ships a step program).

A backend turns an exported folder into three numpy functions; everything about the model (graph input
and output names, state tensors, dtypes, how a step updates each state tensor) comes from the manifest.
State is a list of numpy arrays with the batch first. A state tensor declared `update: "slots"` is written
in place by `step`, in the caller's array (which must be C-contiguous): ONNX Runtime gets the same buffer
bound as the graph's input and output, TorchScript writes the tensor it was given.
"""

from __future__ import annotations

import logging
import operator
import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from app.runtime.config import BackendName
from app.runtime.manifest import Manifest, StateTensor

log = logging.getLogger("arserve")

FILES: dict[str, tuple[str, ...]] = {"onnx": ("score.onnx", "step.onnx"), "torchscript": ("model.pt",),
                                     "compiled": ("score.onnx", "step.onnx")}  # and a step_program (available)
# A log_prob call over at least this many positions hands ONNX Runtime's arena back to the OS when it ends.
# Measured on wavenet-fsdd, 20,000 samples a row (python -m bench.arena): the arena kept 214 MB after 1 row and
# 428 MB after 2 (it grows by powers of two and keeps its peak); with the arena off, malloc still kept 113-279 MB;
# with shrinkage 5 / 10 MB, at the same speed. Small calls keep their arena warm (shrinking after every call
# cost MADE 8-36 %).
SHRINK_ARENA_POSITIONS = 16384

TORCH_MISSING = ("torch is not installed: this install serves ONNX only. For TorchScript, pip install "
                 "'arserve[torch]', or build the image with `docker build --build-arg TORCH=1` (docs/deployment.md)")


class MissingDependency(RuntimeError):
    """A backend's library is not installed: an operator's choice to fix, not a broken artifact."""


class Backend(Protocol):
    name: str
    # Whether a row's log-probs are the same bits in any batch of two or more rows (app/engine/scoring.py checks
    # it per model before merging rows of different requests into one call).
    batch_invariant: bool
    updates: list[str]  # per state tensor, how a step changes it: "replace" or "slots" (in place)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """x [B, T] -> per-position log-probabilities (log-densities for continuous models) [B, T]."""
        ...

    def init_state(self, batch: int) -> list[np.ndarray]: ...

    def step(self, x_prev: np.ndarray, pos: np.ndarray, state: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """x_prev [B] (token at pos - 1), pos [B] int64, state -> (params [B, P], new state). The "slots"
        tensors of state are updated in place (and returned as given); the others are returned new."""
        ...


def direct_run(session):
    """session.run without the Python wrapper's per-call checks (property reads through pybind on every call:
    ~4 µs of NADE's ~30 µs step on onnxruntime 1.32, up to 15 µs on a busy machine). Callers feed every input
    the graph declares: the manifest lists them and the exporter keeps unused ones, so the checks never fail."""
    inner = getattr(session, "_sess", None)
    return session.run if inner is None else (lambda outputs, feed: inner.run(outputs, feed, None))


class BoundStep:
    """step.onnx runs with "slots" state tensors bound as both input and output over the caller's arrays, so
    that the graph's in-place ops (GroupQueryAttention's shared KV buffer, ScatterElements) write the caller's
    buffer and nothing is copied. The binding is kept between runs while the caller passes the same buffers
    (binding an output costs tens of µs); only x_prev and pos are bound anew.

    Per call it costs a few µs on top of the run (a lone Transformer stream's step is ~150 µs): the caller's
    arrays are checked by identity first (the engine passes the same views while its rows stay put; reading a
    data pointer costs ~1 µs an array), and with only "slots" tensors the params are written into a buffer of
    ours bound as the output, so that no output list is fetched (~8 µs for 9 outputs)."""

    def __init__(self, session, io, spec: list[StateTensor]):
        self.session, self.io, self.spec = session, io, spec
        self.all_slots = all(s.update == "slots" for s in spec)
        self.key: tuple | None = None
        self.binding = None
        self.arrays: list[np.ndarray] = []  # the state arrays bound now (held, so that their memory stays)
        self.params: np.ndarray | None = None  # the bound params output, once its shape is known

    def _same_arrays(self, state) -> bool:
        """The very arrays bound now (an array's memory and shape stay with the object)."""
        return (self.binding is not None and len(state) == len(self.arrays)
                and all(map(operator.is_, state, self.arrays)))

    def _bind(self, state, key: tuple) -> None:
        import onnxruntime as ort

        self.binding, self.key, self.params = self.session.io_binding(), key, None
        self.binding.bind_output(self.io.step_outputs[0])
        for s, name, out, value in zip(self.spec, self.io.step_inputs[2:], self.io.step_outputs[1:], state,
                                       strict=True):
            if s.update == "slots":
                shared = ort.OrtValue.ortvalue_from_numpy(value)  # wraps the array's memory (CPU): no copy
                self.binding.bind_ortvalue_input(name, shared)
                self.binding.bind_ortvalue_output(out, shared)
            else:
                self.binding.bind_cpu_input(name, value)  # backed by the array's memory, read at each run
                self.binding.bind_output(out)

    def __call__(self, x_prev, pos, state) -> tuple[np.ndarray, list[np.ndarray]]:
        if not self._same_arrays(state):
            key = tuple((a.__array_interface__["data"][0], a.shape) for a in state)
            if key != self.key:
                self._bind(state, key)
            self.arrays = list(state)
        self.binding.bind_cpu_input(self.io.step_inputs[0], x_prev)
        self.binding.bind_cpu_input(self.io.step_inputs[1], pos)
        self.session.run_with_iobinding(self.binding)
        if self.params is not None:
            return self.params.copy(), list(state)
        # In binding order: params, then the state tensors. The binding keeps its output buffers for the next run,
        # so what is returned is copied out (params and "replace" tensors: small).
        outputs = self.binding.get_outputs()
        params = np.array(outputs[0].numpy())
        if self.all_slots:  # from now on ORT writes the params into a buffer of ours: no outputs to fetch
            import onnxruntime as ort

            self.params = params.copy()
            self.binding.bind_ortvalue_output(self.io.step_outputs[0], ort.OrtValue.ortvalue_from_numpy(self.params))
        new = [value if s.update == "slots" else np.array(o.numpy())
               for s, value, o in zip(self.spec, state, outputs[1:], strict=True)]
        return params, new

    def release(self) -> None:
        """Forget the binding and the arrays it holds."""
        self.key = self.binding = self.params = None
        self.arrays = []


class MultiStepRunner:
    """stepk.onnx (manifest `multi_step`): up to n[b] positions per row in one call, the draws in the graph."""

    def __init__(self, session, spec):
        self.session, self.spec, self.draw = session, spec, spec.draw
        self.run = direct_run(session)

    def __call__(self, x_prev, pos, state, draws: dict[str, np.ndarray], n
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """-> (tokens [M, B], params [M, B, P], pos_next [B], new state): row b took pos_next[b] - pos[b] <= n[b]
        positions; the first pos_next - pos of its tokens and params are valid."""
        feed = dict(zip(self.spec.inputs, [x_prev, pos, *state], strict=False))
        feed.update(draws)
        feed["n"] = n
        tokens, params, pos_next, *new = self.run(self.spec.outputs, feed)
        return tokens, params, pos_next, new


class OnnxBackend:
    name = "onnx"
    batch_invariant = True  # MLAS computes every row of a batch alike (a lone row may take its GEMV path)

    def __init__(self, folder: Path, m: Manifest, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning threads burn a core between the tiny step calls of a stream; sleeping costs ~µs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        # (soak, issue #12) No arena for scoring: its shapes change with every request, and the arena kept each
        # new peak for good (RSS crept under mixed load); malloc hands the blocks back (app/serve.py tune_malloc).
        opts.enable_cpu_mem_arena = False
        self.score = ort.InferenceSession(str(folder / "score.onnx"), opts, providers=providers)
        opts.enable_cpu_mem_arena = True
        self.stepper = ort.InferenceSession(str(folder / "step.onnx"), opts, providers=providers)
        self.run_step = direct_run(self.stepper)
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.shrink = None  # (soak, issue #12) score.onnx runs without an arena (above): nothing to shrink
        self.io = m.io
        self.state_spec = m.state
        self.updates = [s.update for s in m.state]
        self.bound_step = BoundStep(self.stepper, m.io, m.state) if "slots" in self.updates else None
        self.step_k = None  # several positions per call, where the model ships stepk.onnx
        if m.multi_step is not None:
            self.step_k = MultiStepRunner(ort.InferenceSession(str(folder / m.multi_step.file), opts,
                                                               providers=providers), m.multi_step)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        options = self.shrink if x.size >= SHRINK_ARENA_POSITIONS else None
        return self.score.run(self.io.score_outputs[:1], {self.io.score_inputs[0]: x}, options)[0]

    def init_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, *s.shape[1:]), dtype=s.dtype) for s in self.state_spec]

    def release(self) -> None:
        """Forget the kept binding (it holds the caller's buffers)."""
        if self.bound_step is not None:
            self.bound_step.release()

    def step(self, x_prev, pos, state):
        if self.bound_step is not None:
            return self.bound_step(x_prev, pos, state)
        feed = dict(zip(self.io.step_inputs, [x_prev, pos, *state], strict=True))
        params, *new_state = self.run_step(self.io.step_outputs, feed)
        return params, new_state


class TorchScriptBackend:
    name = "torchscript"
    batch_invariant = False  # its CPU kernels pick algorithms by batch size (measured: NADE row 9 of 10 differs)

    def __init__(self, folder: Path, m: Manifest, threads: int = 1):
        try:
            import torch  # only deployments that use TorchScript pay for importing torch
        except ModuleNotFoundError as e:
            raise MissingDependency(TORCH_MISSING) from e

        torch.set_num_threads(threads)
        self.torch = torch
        self.updates = [s.update for s in m.state]
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": TorchScript is the artifact we ship
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a))  # shares a contiguous array: in-place writes land in it

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module.log_prob(self._t(x)).numpy()

    def init_state(self, batch: int) -> list[np.ndarray]:
        with self.torch.inference_mode():
            return [s.numpy() for s in self.module.init_state(batch)]

    def step(self, x_prev, pos, state):
        with self.torch.inference_mode():
            params, new_state = self.module.step(self._t(x_prev), self._t(pos), [self._t(s) for s in state])
            return params.numpy(), [s.numpy() for s in new_state]


class CompiledBackend(OnnxBackend):
    """ONNX Runtime, with `step` run by the model's step program compiled for this machine (app/runtime/compiled.py,
    docs/compiled.md) once that is ready: taken from the cache, or built in a child process (mode "auto") while
    ONNX Runtime steps. Scoring stays on ONNX Runtime. Before it is used, the compiled step must match ONNX
    Runtime's (params within 1e-4, the same state, the same seeded tokens); when torch, a compiler or the build
    is missing or fails, that is logged and every step stays on ONNX Runtime. The state stays the caller's numpy
    arrays, shared with torch without a copy, and its "slots" tensors are written in place, as ONNX writes them."""

    name = "compiled"

    def __init__(self, folder: Path, m: Manifest, threads: int = 1, mode: str = "auto", cache: Path | None = None,
                 torch_threads: int = 1, implicit: bool = False):
        """implicit: the backend was picked by the default ("auto"), not asked for, so that this machine cannot
        compile (the slim install has no torch, the torch image no compiler) is logged as news, not a warning."""
        super().__init__(folder, m, threads)
        from app.runtime import compiled

        self.folder, self.manifest, self.threads = folder, m, torch_threads
        self.cache = Path(cache) if cache else compiled.default_cache()
        self.programs = None  # (batch-1 package, any-batch package) once checked
        self.status = "onnx"  # "building", "compiled", or why not: what the log and `arserve verify` say
        self.ready = threading.Event()  # set when the compiled step is in use or will not be
        reason = "ARSERVE_COMPILE=off" if mode == "off" else compiled.why_not(m)
        path = None if reason else compiled.cached(folder, m, self.cache)
        if path is None and reason is None and mode == "auto":
            reason = compiled.why_no_build(m)
        if path is not None:
            self._adopt(path)
        elif reason is None and mode == "auto":
            self.status = "building"
            log.info("%s: compiling its step in the background into %s; ONNX Runtime steps meanwhile", m.name,
                     self.cache)
            threading.Thread(target=self._build, name=f"compile-{m.name}", daemon=True).start()
        else:
            self._give_up(reason or f"no build in {self.cache} (ARSERVE_COMPILE=cached: run `arserve compile`)",
                          logging.INFO if implicit else logging.WARNING)

    def _give_up(self, why: str, level: int = logging.WARNING) -> None:
        self.status = f"onnx: {why}"
        log.log(level, "%s: no compiled step (%s); its steps run on ONNX Runtime", self.manifest.name, why)
        self.ready.set()

    def _build(self) -> None:
        from app.runtime import compiled

        try:
            path = compiled.build_in_child(self.folder, self.cache)
        except Exception as e:
            self._give_up(f"build failed: {e}")
            return
        self._adopt(path)

    def _adopt(self, path: Path) -> None:
        """Load the packages and check them against ONNX Runtime; only then do steps use them."""
        from app.runtime import compiled

        try:
            import torch

            torch.set_num_threads(self.threads)
            self.torch = torch
            programs = tuple(compiled.load(path, v) for v in compiled.VARIANTS)
            problem = self._mismatch(programs)
        except Exception as e:
            self._give_up(f"cannot load {path}: {type(e).__name__}: {e}")
            return
        if problem:
            self._give_up(f"the compiled step disagrees with ONNX Runtime: {problem}")
            return
        self.programs, self.status = programs, "compiled"
        log.info("%s: steps run compiled (%s)", self.manifest.name, path)
        self.ready.set()

    def _run(self, program, x_prev, pos, state) -> tuple[np.ndarray, list[np.ndarray]]:
        t = self.torch.from_numpy  # shares the arrays' memory: the program writes "slots" tensors in place
        if x_prev.dtype != self.manifest.token_dtype:
            x_prev = x_prev.astype(self.manifest.token_dtype)
        out = program([t(x_prev), t(np.ascontiguousarray(pos, dtype=np.int64)), *[t(s) for s in state]])
        fresh = iter(out[1:])
        return out[0].numpy(), [s if u == "slots" else next(fresh).numpy() for u, s in zip(self.updates, state,
                                                                                           strict=True)]

    def _onnx(self, x_prev, pos, state):
        """ONNX Runtime as the worker runs it ("slots" tensors bound in place: a plain run of a GroupQueryAttention
        graph leaves the unwritten cache slots undefined), on a binding of its own (the worker's is not shared)."""
        if "slots" not in self.updates:
            return super().step(x_prev, pos, state)
        return BoundStep(self.stepper, self.io, self.state_spec)(x_prev, pos, state)

    def _mismatch(self, programs) -> str | None:
        """One step from a random state at far-apart positions (batch 3, then row by row), and a seeded 48-step
        walk at temperature 1: params within 1e-4 (+1e-5 relative), state alike, tokens equal."""
        m, rng = self.manifest, np.random.default_rng(0)
        pos = np.array([m.length - 1, 0, m.length // 2], dtype=np.int64)
        x_prev = rng.integers(0, m.vocab_size or 2, 3).astype(m.token_dtype)
        start = [rng.standard_normal((3, *s.shape[1:])).astype(s.dtype) for s in m.state]
        for rows, program in ((slice(0, 3), programs[1]), *((slice(i, i + 1), programs[0]) for i in range(3))):
            want = self._onnx(x_prev[rows], pos[rows], [a[rows].copy() for a in start])
            got = self._run(program, x_prev[rows], pos[rows], [a[rows].copy() for a in start])
            for what, w, g in (("params", want[0], got[0]), *zip(["state"] * len(start), want[1], got[1], strict=True)):
                if not np.all(np.abs(w - g) <= 1e-4 + 1e-5 * np.abs(w)):
                    return f"{what} at positions {pos[rows].tolist()} off by {float(np.max(np.abs(w - g))):.3g}"
        if m.distribution == "gaussian_mixture":
            return None
        walks = []
        for step in (self._onnx, lambda x, p, s: self._run(programs[0], x, p, s)):
            state, x, draws = self.init_state(1), np.zeros(1, dtype=m.token_dtype), np.random.default_rng(1234)
            tokens = []
            for t in range(min(48, m.length)):
                params, state = step(x, np.array([t], dtype=np.int64), state)
                p = np.exp(params[0] - params[0].max())
                x = np.array([min(int(np.searchsorted(np.cumsum(p / p.sum()), draws.random())), len(p) - 1)])
                tokens.append(int(x[0]))
            walks.append(tokens)
        return None if walks[0] == walks[1] else "a seeded walk drew other tokens"

    def step(self, x_prev, pos, state):
        programs = self.programs
        if programs is None:
            return super().step(x_prev, pos, state)
        return self._run(programs[0] if len(pos) == 1 else programs[1], x_prev, pos, state)


_CLASSES: dict[str, type] = {"onnx": OnnxBackend, "torchscript": TorchScriptBackend, "compiled": CompiledBackend}


def available(m: Manifest) -> list[BackendName]:
    """The backends whose files this model folder ships ("compiled" where it declares a step program)."""
    return [name for name, files in FILES.items()
            if all(f in m.files for f in files) and (name != "compiled" or m.step_program is not None)]


def load(name: BackendName, folder: Path, m: Manifest, threads: int, settings=None) -> Backend:
    """settings (app.runtime.config.Settings): the compiled backend's mode and cache; defaults without."""
    log.info("loading %s backend of %s", name, m.name)
    if name == "compiled" and settings is not None:
        return CompiledBackend(folder, m, threads, settings.compile, settings.compile_cache, settings.torch_threads,
                               implicit=settings.backend_for(m.name) == "auto")
    return _CLASSES[name](folder, m, threads)
