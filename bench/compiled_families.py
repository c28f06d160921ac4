"""Would a compiled step pay for a family? `python -m bench.compiled_families MODEL [--fast]`

AOTInductor (freezing, stack allocation, and max_autotune over the CPP GEMM template and ATen unless --fast) of
the model's own `_step` with its weights as constants, built for batch 1 and for batch 16, against the shipped
step.onnx through the server's backend, CPU time per step interleaved (medians of 7 rounds of 200 steps), with
the largest difference of their outputs. This is the question issue #19 asks of the Transformer, PixelCNN and the
RNNs before a step program is shipped for them (docs/compiled.md, "Other families"); nothing here is served.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import models
from app.runtime import backends
from app.runtime.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


class Step(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x_prev, pos, *state):
        params, new = self.inner._step(x_prev, pos, tuple(state))
        return (params, *new)


def eager_model(folder: Path, m):
    """The family's module with the shipped weights (model.pt's state dict)."""
    cfg = json.loads((folder / "manifest.json").read_text())["config"]
    model = models.build(m.family, cfg).eval()
    sd = {k.removeprefix("traced.model."): v for k, v in torch.jit.load(str(folder / "model.pt")).state_dict().items()
          if k.startswith("traced.model.")}
    model.load_state_dict(sd)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--fast", action="store_true", help="no max_autotune (minutes less for many-conv steps)")
    ap.add_argument("--exported", type=Path, default=ROOT / "exported")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    name, mode = args.model, "fast" if args.fast else "tune"
    folder = args.exported / name
    m = load_manifest(folder)
    print(name, json.dumps(measure(folder, m, mode)))
    return 0


def measure(folder: Path, m, mode: str) -> dict:
    """{batch: {"onnx": µs, "compiled": µs, "build_s": s, "max_diff": |params difference|}} for batches 1 and 16."""
    model, onnx, out = eager_model(folder, m), backends.load("onnx", folder, m, 1), {}
    options = {"freezing": True, "aot_inductor.allow_stack_allocation": True}
    if mode == "tune":
        options.update({"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"})
    for B in (1, 16):
        state = onnx.init_state(B)
        x, pos = np.zeros(B, dtype=np.int64), np.full(B, 5, dtype=np.int64)
        args = (torch.from_numpy(x), torch.from_numpy(pos), *[torch.from_numpy(s.copy()) for s in state])
        with torch.no_grad():
            program = torch.export.export(Step(model), args)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(tmp) / "step.pt2"),
                                                            inductor_configs=options)
            build = time.time() - t0
            runner = torch._inductor.aoti_load_package(path)
        with torch.inference_mode():
            got = runner(*args)[0].numpy()
        want = onnx.step(x, pos, [s.copy() for s in state])[0]
        calls = {"onnx": lambda x=x, pos=pos, state=state: onnx.step(x, pos, state),
                 "compiled": lambda runner=runner, args=args: runner(*args)}
        times: dict[str, list[float]] = {k: [] for k in calls}
        with torch.inference_mode():
            for _ in range(7):  # rounds, each timing both: a drift of the machine's load hits both alike
                for k, call in calls.items():
                    t0 = time.thread_time()
                    for _ in range(200):
                        call()
                    times[k].append((time.thread_time() - t0) / 200 * 1e6)
        out[B] = {k: round(statistics.median(v), 1) for k, v in times.items()}
        out[B] |= {"build_s": round(build), "max_diff": float(np.abs(got - want).max())}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
