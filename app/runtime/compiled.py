"""The compiled step: a model's step.pt2 compiled with AOTInductor on the serving machine (docs/compiled.md).

A manifest may declare a `step_program` (app/runtime/manifest.py): the step as a torch.export program with its
weights as inputs. Compiled code is specific to the CPU and the torch it was built with, so it is never shipped:
`build` loads the program and the weights it names from model.pt, makes the weights constants, exports it again
and compiles it with AOTInductor (freezing folds the weight packing into constants) into a cache folder keyed by
the artifacts' sha256, the torch version and the CPU. Two packages are built: one for a single row (what one
stream steps with) and one for any batch.

    python -m app.runtime.compiled exported/wavenet-fsdd ~/.cache/arserve/compiled   # = arserve compile

The service runs the build in a child process (it takes CPU minutes and a C++ compiler), never on the event
loop or the worker thread; app/runtime/backends.py: CompiledBackend serves through ONNX meanwhile. Only torch
is needed here, never this project's model code.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from app.runtime.manifest import Manifest, load_manifest

log = logging.getLogger("arserve")

VARIANTS = ("one", "any")  # a package for batch 1 (static shapes: the fastest) and one for any batch
MAX_BATCH = 4096
# Inductor options: freezing makes the weights constants (the stacking and concatenation fold at compile time);
# the CPP GEMM template inlines the small matmuls instead of calling into ATen (tens of them per step: autotuning
# picks it where it measures faster, which makes a build take minutes); stack
# allocation keeps the intermediates off the heap.
OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
           "aot_inductor.allow_stack_allocation": True}
BUILD_TIMEOUT_S = 1800.0
RECIPE = 2  # bumped when what build() makes changes: older cache entries are then not reused


class CompileUnavailable(RuntimeError):
    """torch, a C++ compiler or the program is missing, or the build failed: serve through ONNX instead."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arserve" / "compiled"


def cpu_signature() -> str:
    """What compiled code depends on: the architecture and the CPU's model and instruction-set flags."""
    info = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        info = "\n".join(sorted({line for line in text.splitlines() if line.startswith(("model name", "flags"))}))
    except OSError:
        info = platform.processor()
    return f"{platform.machine()}:{hashlib.sha256(info.encode()).hexdigest()[:16]}"


def build_key(m: Manifest) -> str:
    """The cache entry of a model: its program and weights (sha256), the torch version and the CPU."""
    import torch

    p = m.step_program
    parts = [m.files[p.file].sha256, m.files[p.weights_file].sha256, torch.__version__, cpu_signature(),
             json.dumps(OPTIONS, sort_keys=True), str(RECIPE)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def entry(m: Manifest, cache: Path) -> Path:
    return Path(cache) / f"{m.name}-{build_key(m)}"


def why_not(m: Manifest) -> str | None:
    """Why this model's step cannot run compiled here (built or not), or None."""
    if m.step_program is None:
        return "its manifest declares no step_program"
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        return "torch is not installed (pip install 'arserve[torch]')"
    return None


def why_no_build(m: Manifest) -> str | None:
    """Why this model's step cannot be compiled here, or None (loading a build needs no compiler)."""
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler (g++) on PATH"
    return why_not(m)


def cached(folder: Path, m: Manifest, cache: Path) -> Path | None:
    """The cache entry holding this model's build, if it is complete."""
    if why_not(m):
        return None
    path = entry(m, cache)
    return path if all((path / f"{v}.pt2").is_file() for v in VARIANTS) else None


def build(folder: Path, m: Manifest, cache: Path, threads: int = 1) -> Path:
    """Compile folder's step_program into the cache (a no-op when it is there); returns the entry."""
    done = cached(folder, m, cache)
    if done:
        return done
    reason = why_no_build(m)
    if reason:
        raise CompileUnavailable(reason)
    import torch

    torch.set_num_threads(threads)
    path = entry(m, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        start = time.perf_counter()
        frozen = _frozen(folder, m)
        for variant in VARIANTS:
            program = _export(frozen, m, variant)
            torch._inductor.aoti_compile_and_package(program, package_path=str(work / f"{variant}.pt2"),
                                                     inductor_configs=dict(OPTIONS))  # it adds keys to the dict given
        (work / "build.json").write_text(json.dumps({
            "model": m.name, "torch": torch.__version__, "cpu": cpu_signature(), "options": OPTIONS, "recipe": RECIPE,
            "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
        work.chmod(0o755)
        try:
            work.rename(path)
        except OSError:  # another process finished the same build first
            if cached(folder, m, cache) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _frozen(folder: Path, m: Manifest):
    """The program with its weights (from model.pt) held as buffers: export then sees them as constants."""
    import torch

    p = m.step_program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: TorchScript is what ships
        saved = torch.jit.load(str(folder / p.weights_file), map_location="cpu").state_dict()
    program = torch.export.load(str(folder / p.file)).module()

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.program = program
            for i, name in enumerate(p.weights):
                self.register_buffer(f"w{i}", saved[name].detach().clone())

        def forward(self, x_prev, pos, state: list):
            return self.program(x_prev, pos, state, [getattr(self, f"w{i}") for i in range(len(p.weights))])

    return Frozen()


def _export(frozen, m: Manifest, variant: str):
    """The frozen program exported for one variant, with its constant subgraphs (the weight packing) computed
    once here: Inductor's freezing leaves a concatenation of constants to run at every call (measured: 328 KB of
    skip weights copied per WaveNet step), and its GEMM templates prepack only weights that are plain constants.
    Its compiled form takes flat inputs either way: x_prev, pos, then each state tensor."""
    import torch
    from torch.fx.experimental.const_fold import split_const_subgraphs

    B = 1 if variant == "one" else 2
    dtype = torch.float32 if m.token_dtype == "float32" else torch.int64
    state = [torch.zeros(B, *s.shape[1:], dtype=getattr(torch, s.dtype)) for s in m.state]
    example = (torch.zeros(B, dtype=dtype), torch.arange(B, dtype=torch.int64), state)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = None if variant == "one" else {"x_prev": {0: batch}, "pos": {0: batch},
                                             "state": [{0: batch}] * len(state)}
    with torch.no_grad():
        module = torch.export.export(frozen, example, dynamic_shapes=dynamic).module()
        for node in list(module.graph.nodes):  # export's input guards: they are checked again below
            if node.op == "call_module" and "guards" in str(node.target):
                module.graph.erase_node(node)
        module.recompile()
        folded = split_const_subgraphs(module)
        folded.run_folding()
        if list(inspect.signature(folded.forward).parameters)[-1] == "state":  # it kept the (x_prev, pos, state) form
            return torch.export.export(folded, example, dynamic_shapes=dynamic)
        flat_dynamic = None if dynamic is None else ({0: batch}, {0: batch}, *[{0: batch}] * len(state))
        return torch.export.export(folded, (example[0], example[1], *state), dynamic_shapes=flat_dynamic)


def build_in_child(folder: Path, cache: Path, timeout: float = BUILD_TIMEOUT_S) -> Path:
    """build() in a child process at low priority: the server keeps serving meanwhile, and a compiler that
    crashes or runs out of memory takes only the child down. Raises CompileUnavailable with its last words."""
    cmd = [sys.executable, "-m", "app.runtime.compiled", str(folder), str(cache)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: os.nice(10) if hasattr(os, "nice") else None)
    except subprocess.TimeoutExpired:
        raise CompileUnavailable(f"the build took over {timeout:.0f} s") from None
    if done.returncode != 0:  # the exception's line, not the hints torch prints after it
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        last = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1])
        raise CompileUnavailable(f"the build failed (exit {done.returncode}): {last}")
    return Path(done.stdout.strip().splitlines()[-1])


def load(path: Path, variant: str):
    """A compiled package as a function of the flat inputs [x_prev, pos, *state] -> [params, *replaced]: the
    package's loader called directly (its Python wrapper flattens and unflattens pytrees at every call, ~20 µs)."""
    import torch

    package = torch._inductor.aoti_load_package(str(path / f"{variant}.pt2"))
    return package.loader.boxed_run


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m app.runtime.compiled MODEL_FOLDER CACHE_FOLDER", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    folder = Path(args[0])
    try:
        path = build(folder, load_manifest(folder), Path(args[1]))
    except CompileUnavailable as e:
        print(f"cannot compile {folder}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
