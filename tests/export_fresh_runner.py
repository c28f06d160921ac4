"""Reproduce a model's eager results from its exported artifacts alone, in a fresh interpreter.

    python -I tests/export_fresh_runner.py {torch|onnx} CASES.json RESULTS.json

CASES.json lists {"family", "artifact": folder, "reference": folder}. Each reference folder holds what the
eager model computed (reference.json, x_<i>.npy, log_prob_<i>.npy, tokens_<temperature>.npy). This script
imports only torch (mode torch) or only onnxruntime (mode onnx), plus numpy and json; it refuses to import
the project's app/ and models/ packages, reads everything else from manifest.json, and carries its own copy
of the sampling rule. It writes a result per family and exits 1 if any family does not reproduce.
"""

import json
import sys
from pathlib import Path

FORBIDDEN = ("app", "models")


class _RefuseProjectImports:
    """A meta-path finder that makes importing the project's packages an error (an editable install
    would otherwise make them importable from anywhere, even under -I)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"the fresh runner must not import {name!r}")
        return None


sys.meta_path.insert(0, _RefuseProjectImports)

import numpy as np  # noqa: E402  (after the import guard on purpose)

ATOL = 1e-4


# ----- the sampling rule, copied: temperature 0 (greedy) and 1, no top-k / top-p --------------------


def sample_categorical(logits, rng, temperature):
    logits = np.asarray(logits, dtype=np.float64)
    u = rng.random(logits.shape[0])  # one uniform per row every step, even when greedy
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    z = logits / temperature
    cdf = np.cumsum(np.exp(z - z.max(axis=-1, keepdims=True)), axis=-1)  # inverse CDF in vocabulary order
    idx = np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1), logits.shape[1] - 1)
    return idx.astype(np.int64)


def sample_mixture(params, rng, temperature):
    params = np.asarray(params, dtype=np.float64)
    logit_w, mu, log_sigma = np.split(params, 3, axis=-1)
    comp = sample_categorical(logit_w, rng, 1.0 if temperature > 0 else 0.0)
    noise = rng.standard_normal(params.shape[0])
    rows = np.arange(params.shape[0])
    return (mu[rows, comp] + temperature * np.exp(log_sigma[rows, comp]) * noise).astype(np.float32)


# ----- the two runtimes ----------------------------------------------------------------------------


class TorchArtifact:
    def __init__(self, folder, manifest):
        import torch

        self.torch = torch
        self.module = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()

    def log_prob(self, x):
        with self.torch.inference_mode():
            return self.module.log_prob(self.torch.from_numpy(x)).numpy()

    def init_state(self, batch):
        return [s.numpy() for s in self.module.init_state(batch)]

    def step(self, x_prev, pos, state):
        t = self.torch
        with t.inference_mode():
            params, new = self.module.step(t.from_numpy(x_prev), t.from_numpy(pos), [t.from_numpy(s) for s in state])
        return params.numpy(), [s.numpy() for s in new]


class OnnxArtifact:
    def __init__(self, folder, manifest):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.score = ort.InferenceSession(str(folder / "score.onnx"), opts, providers=["CPUExecutionProvider"])
        self.stepper = ort.InferenceSession(str(folder / "step.onnx"), opts, providers=["CPUExecutionProvider"])
        self.io, self.state = manifest["io"], manifest["state"]

    def log_prob(self, x):
        return self.score.run(self.io["score_outputs"], {self.io["score_inputs"][0]: x})[0]

    def init_state(self, batch):
        return [np.zeros([batch, *s["shape"][1:]], dtype=s["dtype"]) for s in self.state]

    def step(self, x_prev, pos, state):
        names = self.io["step_inputs"]
        params, *new = self.stepper.run(self.io["step_outputs"], dict(zip(names, [x_prev, pos, *state], strict=True)))
        return params, new


# ----- reproducing one family ----------------------------------------------------------------------


def generate(rt, manifest, batch, steps, seed, temperature):
    rng = np.random.default_rng(seed)
    mixture = manifest["distribution"] == "gaussian_mixture"
    state = rt.init_state(batch)
    x = np.zeros(batch, dtype=manifest["token_dtype"])
    out = []
    for t in range(steps):
        params, state = rt.step(x, np.full(batch, t, dtype=np.int64), state)
        x = sample_mixture(params, rng, temperature) if mixture else sample_categorical(params, rng, temperature)
        out.append(x)
    return np.stack(out, axis=1)


def check_family(mode, artifact, reference):
    manifest = json.loads((artifact / "manifest.json").read_text())
    ref = json.loads((reference / "reference.json").read_text())
    rt = (TorchArtifact if mode == "torch" else OnnxArtifact)(artifact, manifest)
    errors, worst = [], 0.0
    for i in range(ref["cases"]):
        x = np.load(reference / f"x_{i}.npy")
        expected = np.load(reference / f"log_prob_{i}.npy")
        got = rt.log_prob(x)
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape else np.inf
        worst = max(worst, diff)
        if not diff <= ATOL:
            errors.append(f"log_prob of x {list(x.shape)} off by {diff:.3g}")
    for temperature in ref["temperatures"]:
        expected = np.load(reference / f"tokens_{temperature:g}.npy")
        got = generate(rt, manifest, expected.shape[0], expected.shape[1], ref["seed"], temperature)
        if manifest["token_dtype"] == "int64":
            same = got.shape == expected.shape and np.array_equal(got, expected)
        else:
            same = got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= ATOL))
        if not same:
            errors.append(f"step loop at temperature {temperature:g} drew {got.tolist()}, "
                          f"eager drew {expected.tolist()}")
    return {"ok": not errors, "errors": errors, "log_prob_max_abs_diff": worst}


def main(argv):
    mode, cases_path, results_path = argv
    if mode not in ("torch", "onnx"):
        raise SystemExit(f"mode must be torch or onnx, got {mode!r}")
    results = {}
    for case in json.loads(Path(cases_path).read_text()):
        try:
            results[case["family"]] = check_family(mode, Path(case["artifact"]), Path(case["reference"]))
        except Exception as e:  # one broken artifact must not hide the others' results
            results[case["family"]] = {"ok": False, "errors": [f"{type(e).__name__}: {e}"]}
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    other = "onnxruntime" if mode == "torch" else "torch"
    results["_imports"] = {"forbidden": leaked, "other_runtime_loaded": other in sys.modules}
    Path(results_path).write_text(json.dumps(results, indent=2))
    assert not leaked, f"imported the project's code: {leaked}"
    assert other not in sys.modules, f"mode {mode} must not load {other}"
    return 0 if all(r["ok"] for name, r in results.items() if not name.startswith("_")) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
