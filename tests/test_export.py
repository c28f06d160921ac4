"""The exporter: artifacts that reproduce the eager model without the project's code, checked ONNX, a
manifest the service validates, refused exports that leave nothing behind, and bad checkpoints that say why.

Every registered family is exported once (tiny random-weight model) into a module-scoped folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from app.runtime.manifest import ArtifactError, load_manifest
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.export import (
    FILES,
    INLINE_MAX_BYTES,
    WEIGHTS,
    ExportError,
    check_close,
    check_tokens,
    export_checkpoint,
    export_model,
    main,
    placeholder_meta,
)
from models.generate import generate_cached
from models.runtimes import OnnxRuntime, TorchScriptRuntime

FAMILIES = sorted(models.REGISTRY)
RUNNER = Path(__file__).with_name("export_fresh_runner.py")
REPO = Path(__file__).resolve().parents[1]
SEED = 11
TEMPERATURES = (0.0, 1.0)


def _x(model, batch: int, length: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    if model.token_dtype == torch.long:
        return torch.randint(0, model.vocab_size, (batch, length), generator=g).numpy()
    return torch.randn(batch, length, generator=g).numpy()


def _write_reference(model, folder: Path) -> None:
    """What the eager model computes: log-probs of a few inputs, and greedy and sampled step-loop tokens."""
    folder.mkdir(parents=True)
    L = model.length
    shapes = [(3, L)] + ([(2, max(1, L // 2))] if model.variable_length else [])
    with torch.no_grad():
        for i, (B, T) in enumerate(shapes):
            x = _x(model, B, T, seed=100 + i)
            np.save(folder / f"x_{i}.npy", x)
            np.save(folder / f"log_prob_{i}.npy", model.log_prob(torch.from_numpy(x)).numpy())
    for t in TEMPERATURES:
        tokens = generate_cached(model, 3, min(L, 32), seed=SEED, temperature=t)
        np.save(folder / f"tokens_{t:g}.npy", tokens.numpy())
    (folder / "reference.json").write_text(json.dumps({"cases": len(shapes), "seed": SEED,
                                                       "temperatures": list(TEMPERATURES)}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """family -> (artifact folder, reference folder), or the exception its export raised."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for family in FAMILIES:
        model = models.tiny(family)
        try:
            export_model(model, root / "artifacts" / family, placeholder_meta(model, f"tiny-{family}"))
            _write_reference(model, root / "reference" / family)
            out[family] = (root / "artifacts" / family, root / "reference" / family)
        except Exception as e:  # reported by each of that family's tests, not as an error of every test
            out[family] = e
    return out


def _artifact(exported: dict, family: str) -> tuple[Path, Path]:
    got = exported[family]
    if isinstance(got, Exception):
        pytest.fail(f"{family} did not export: {type(got).__name__}: {got}")
    return got


def _run_fresh(mode: str, cases: list[dict], workdir: Path) -> tuple[int, dict, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = "1"
    # -I: no PYTHONPATH, no user site, no script folder on sys.path; cwd is outside the repository
    proc = subprocess.run([sys.executable, "-I", str(RUNNER), mode, "cases.json", "results.json"], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)
    results = json.loads((workdir / "results.json").read_text()) if (workdir / "results.json").is_file() else {}
    return proc.returncode, results, proc.stderr


@pytest.fixture(scope="module", params=["torch", "onnx"])
def fresh(request, exported, tmp_path_factory) -> tuple[str, int, dict, str]:
    cases = [{"family": f, "artifact": str(a[0]), "reference": str(a[1])}
             for f, a in exported.items() if not isinstance(a, Exception)]
    rc, results, stderr = _run_fresh(request.param, cases, tmp_path_factory.mktemp(f"fresh-{request.param}"))
    return request.param, rc, results, stderr


# ----- the artifacts reproduce the eager model in a fresh process ----------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_process_reproduces_eager(family, exported, fresh):
    _artifact(exported, family)
    mode, rc, results, stderr = fresh
    assert family in results, f"the {mode} runner produced no result for {family}: {stderr[-2000:]}"
    assert results[family]["ok"], f"{mode}: {results[family]['errors']}"


def test_fresh_process_imports_only_its_runtime(fresh):
    mode, rc, results, stderr = fresh
    assert results.get("_imports") == {"forbidden": [], "other_runtime_loaded": False}, stderr[-2000:]
    families_ok = all(r["ok"] for name, r in results.items() if not name.startswith("_"))
    assert (rc == 0) == families_ok, f"exit code {rc} disagrees with the results: {stderr[-2000:]}"


def test_fresh_runner_fails_on_a_mismatch(exported, tmp_path):
    """The runner is not a rubber stamp: perturbed references make it fail, naming what differs."""
    family = next(f for f in FAMILIES if not isinstance(exported[f], Exception))
    art, ref = exported[family]
    bad_lp, bad_tok = tmp_path / "bad_lp", tmp_path / "bad_tok"
    shutil.copytree(ref, bad_lp)
    shutil.copytree(ref, bad_tok)
    lp = np.load(bad_lp / "log_prob_0.npy")
    lp[0, -1] += 1e-3
    np.save(bad_lp / "log_prob_0.npy", lp)
    tok = np.load(bad_tok / "tokens_1.npy")
    tok[1, 0] = tok[1, 0] + 1 if tok.dtype.kind == "f" else (tok[1, 0] + 1) % models.tiny(family).vocab_size
    np.save(bad_tok / "tokens_1.npy", tok)
    cases = [{"family": "lp", "artifact": str(art), "reference": str(bad_lp)},
             {"family": "tok", "artifact": str(art), "reference": str(bad_tok)},
             {"family": "good", "artifact": str(art), "reference": str(ref)}]
    rc, results, stderr = _run_fresh("onnx", cases, tmp_path / "run")
    assert rc == 1, stderr
    assert not results["lp"]["ok"] and "log_prob" in results["lp"]["errors"][0]
    assert not results["tok"]["ok"] and "temperature 1" in results["tok"]["errors"][0]
    assert results["good"]["ok"]


# ----- ONNX graphs, shared weights and the manifest ------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_graphs_pass_the_full_checker(family, exported):
    art, _ = _artifact(exported, family)
    for name in ("score.onnx", "step.onnx"):
        onnx.checker.check_model(str(art / name), full_check=True)  # a path: the weights are external


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_stored_once_and_shared(family, exported):
    """ONNX initializers point into model.pt's own tensor records or, for bytes TorchScript does not hold,
    into weights.bin; no byte string is stored twice, and the two graphs read the same ranges."""
    art, _ = _artifact(exported, family)
    files = {name: (art / name).read_bytes() for name in ("model.pt", WEIGHTS)}
    ranges = {}
    for name in ("score.onnx", "step.onnx"):
        proto = onnx.load(str(art / name), load_external_data=False)
        for t in proto.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                ext = {e.key: e.value for e in t.external_data}
                assert ext["location"] in files, f"{name}:{t.name} points into {ext['location']}"
                r = (ext["location"], int(ext["offset"]), int(ext["length"]))
                assert r[1] + r[2] <= len(files[r[0]]), f"{name}:{t.name} points past the end of {r[0]}"
                ranges.setdefault(r, set()).add(name)
    contents = [files[f][o : o + n] for f, o, n in ranges]
    assert len(set(contents)) == len(contents), "the same bytes are stored twice"
    in_weights = sum(n for f, _, n in ranges if f == WEIGHTS)
    assert in_weights <= len(files[WEIGHTS])
    big = [r for r in ranges if r[2] >= INLINE_MAX_BYTES]
    assert big, "no large initializer is external"
    assert any(f == "model.pt" for f, _, _ in big), "no ONNX weight is shared with model.pt"
    assert any(len(users) == 2 for users in ranges.values()), "score.onnx and step.onnx share no weights"


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_describes_the_artifacts(family, exported):
    art, _ = _artifact(exported, family)
    m = load_manifest(art, verify=True)
    model = models.tiny(family)
    assert (m.family, m.length, m.variable_length, m.num_params) == (family, model.length, model.variable_length,
                                                                     model.num_params)
    extra = {m.multi_step.file} if m.multi_step else set()  # stepk.onnx: tests/test_multistep.py
    extra |= {"step.pt2"} if model.step_program() else set()  # WaveNet's packed step (docs/compiled.md)
    assert set(m.files) == set(FILES) | extra == {p.name for p in art.iterdir()} - {"manifest.json"}
    assert [s.name for s in m.state] == [n for n, _, _ in model.state_spec()]
    assert m.config == json.loads(json.dumps(model.config_dict()))
    assert m.export["opset"] >= 17 and m.export["parity"]["step_loop"]["tokens_equal"]
    # the io names are the graphs' own names, which is what a runtime feeds
    step = ort.InferenceSession(str(art / "step.onnx"), providers=["CPUExecutionProvider"])
    score = ort.InferenceSession(str(art / "score.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in step.get_inputs()] == m.io.step_inputs
    assert [o.name for o in step.get_outputs()] == m.io.step_outputs
    assert [i.name for i in score.get_inputs()] == m.io.score_inputs
    assert all(i.shape[0] == "batch" for i in step.get_inputs() + step.get_outputs() + score.get_inputs())
    ts = TorchScriptRuntime(art / "model.pt").module
    state = ts.init_state(2)
    assert [list(s.shape) for s in state] == [[2, *s.shape[1:]] for s in m.state]


def test_editing_one_byte_fails_the_sha256_check(exported, tmp_path):
    family = next(f for f in FAMILIES if not isinstance(exported[f], Exception))
    art, _ = exported[family]
    for name in FILES:
        copy = tmp_path / name
        shutil.copytree(art, copy)
        data = bytearray((copy / name).read_bytes())
        if data:
            data[len(data) // 2] ^= 0x01
        else:  # weights.bin is empty when model.pt holds every weight: one byte added is an edit too
            data.append(0)
        (copy / name).write_bytes(bytes(data))
        load_manifest(copy, verify=False)  # still a valid manifest ...
        with pytest.raises(ArtifactError, match="sha256"):  # ... but the file is not the one exported
            load_manifest(copy, verify=True)


# ----- the parity gate refuses, and a refused export leaves nothing behind -------------------------


def test_comparisons_raise_on_a_perturbed_output():
    expected = np.log(np.full((3, 5), 0.5))
    assert check_close("onnxruntime log_prob", expected, expected + 5e-5) <= 1e-4
    with pytest.raises(ExportError, match=r"onnxruntime log_prob is off from eager by 0\.0002"):
        check_close("onnxruntime log_prob", expected, expected + np.eye(3, 5) * 2e-4)
    with pytest.raises(ExportError, match="nan"):
        check_close("torchscript log_prob", expected, expected * np.nan)
    tokens = np.arange(6).reshape(2, 3)
    check_tokens("torchscript step loop", tokens, tokens.copy())
    changed = tokens.copy()
    changed[1, 2] = 0
    with pytest.raises(ExportError, match="torchscript step loop drew 0 at row 1, step 2 where eager drew 5"):
        check_tokens("torchscript step loop", tokens, changed)


def _perturbed(method, noise: float | None):
    """method with noise added to its output (step: to the parameters), or, with noise None, a crash."""
    def wrapper(self, *args):
        if noise is None:
            raise RuntimeError("shape mismatch in node /Gather")
        out = method(self, *args)
        if isinstance(out, tuple):
            return out[0] + noise, out[1]
        return out + noise
    return wrapper


@pytest.mark.parametrize("runtime,method,noise,match", [
    (OnnxRuntime, "log_prob", 1e-3, r"onnxruntime log_prob at \[3, \d+\] is off from eager by 0\.001"),
    (TorchScriptRuntime, "step", 1e-3, r"torchscript step loop .* (drew|params is off)"),
    (OnnxRuntime, "step", None, r"onnxruntime step loop .* raised RuntimeError: shape mismatch"),
], ids=["onnx-log_prob", "torchscript-step", "onnx-crash"])
def test_a_failed_parity_check_leaves_out_dir_untouched(runtime, method, noise, match, tmp_path, monkeypatch):
    model = models.tiny("nade")
    monkeypatch.setattr(runtime, method, _perturbed(getattr(runtime, method), noise))
    with pytest.raises(ExportError, match=match):
        export_model(model, tmp_path / "fresh", placeholder_meta(model, "nade-x"))
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("the previous export")
    with pytest.raises(ExportError):
        export_model(model, tmp_path / "old", placeholder_meta(model, "nade-x"))
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # no half-built folder left next to it either
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


DROPOUT = [f for f in FAMILIES if "dropout" in models.tiny(f).config_dict()]


@pytest.mark.parametrize("family", DROPOUT)
def test_models_with_dropout_export_in_eval_mode(family, tmp_path):
    """A model handed over in training mode, with dropout on: the artifacts (and the parity check's eager
    reference) must be the deterministic eval-mode model, and the caller's model keeps its mode."""
    cls = models.REGISTRY[family]
    model = cls(cls.config_class(**{**models.tiny(family).config_dict(), "dropout": 0.5})).train()
    export_model(model, tmp_path / family, placeholder_meta(model, f"{family}-dropout"))
    assert model.training
    x = _x(model, 2, model.length, seed=3)
    with torch.no_grad():
        expected = model.eval().log_prob(torch.from_numpy(x)).numpy()
    got = OnnxRuntime.from_folder(tmp_path / family).log_prob(x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_bad_metadata_is_refused_before_any_work(tmp_path):
    model = models.tiny("nade")
    meta = placeholder_meta(model, "nade-x")
    with pytest.raises(ExportError, match=r"metadata lacks \['modality'\]"):
        export_model(model, tmp_path / "a", {k: v for k, v in meta.items() if k != "modality"})
    with pytest.raises(ExportError, match="holds 10 values but length is 8"):
        export_model(model, tmp_path / "a", {**meta, "shape": [2, 5]})
    assert list(tmp_path.iterdir()) == []


# ----- checkpoints ---------------------------------------------------------------------------------


def _save(path: Path, **edits) -> Path:
    """A tiny NADE checkpoint, then each edit replaces (or maps, if callable) one entry of the saved dict."""
    model = models.tiny("nade")
    save_checkpoint(path, model, {**placeholder_meta(model, "nade-ckpt"), "metrics": {"test": {"nll": 1.5}}},
                    {"step": np.int64(7), "best": np.float64(1.25)})
    if edits:
        ckpt = torch.load(path, weights_only=True)
        for key, value in edits.items():
            ckpt[key] = value(ckpt[key]) if callable(value) else value
        torch.save(ckpt, path)
    return path


def test_checkpoint_round_trip_and_cli_export(tmp_path, capsys):
    path = _save(tmp_path / "nade.pt")
    model, meta, train_state = load_checkpoint(path)
    assert train_state == {"step": 7, "best": 1.25}  # numpy scalars saved as plain numbers
    # what a trainer keeps to resume (optimizer, numpy and torch RNG states) loads with weights_only too
    trained = models.tiny("nade")
    opt = torch.optim.AdamW(trained.parameters())
    trained.log_prob(torch.zeros(1, trained.length, dtype=torch.long)).sum().neg().backward()
    opt.step()
    rng = np.random.default_rng(5)
    state = {"optimizer": opt.state_dict(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "resume.pt", trained, meta, state)
    _, _, loaded = load_checkpoint(tmp_path / "resume.pt")
    rng.bit_generator.state = loaded["rng"]
    assert rng.random() == np.random.default_rng(5).random()
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    x = torch.from_numpy(_x(model, 2, model.length, seed=0))
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), models.tiny("nade").log_prob(x))
    assert main([str(path), str(tmp_path / "out")]) == 0
    assert "exported nade-ckpt" in capsys.readouterr().out
    m = load_manifest(tmp_path / "out")
    assert m.metrics == {"test": {"nll": 1.5}} and m.vocabulary.height * m.vocabulary.width == model.length


def _tiny_config(index: int) -> dict:
    return models.tiny("nade", index).config_dict()


@pytest.mark.parametrize("make,match", [
    (lambda p: p, "no such checkpoint file"),
    (lambda p: p.write_bytes(b"definitely not a checkpoint\n" * 10) and p, "not a readable torch checkpoint"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p) or p, "not an arserve checkpoint"),
    (lambda p: _save(p, family="nope"), "unknown family 'nope'"),
    (lambda p: _save(p, config=lambda c: {**c, "bogus": 1}), "does not build a nade model.*bogus"),
    (lambda p: _save(p, config=_tiny_config(1)), r"state_dict does not match.*W has shape \(8, 16\), the config"),
    (lambda p: _save(p, state_dict=lambda s: {k: v for k, v in s.items() if k != "V"}), r"missing keys \['V'\]"),
    (lambda p: _save(p, state_dict=lambda s: {**s, "extra": torch.zeros(1)}), r"unexpected keys \['extra'\]"),
], ids=["missing", "garbage", "foreign", "family", "config", "shapes", "missing-key", "unexpected-key"])
def test_bad_checkpoints_say_what_is_wrong(make, match, tmp_path, capsys):
    path = make(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=match):
        export_checkpoint(path, tmp_path / "out")
    assert main([str(path), str(tmp_path / "out")]) == 1
    assert "export failed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_exits_nonzero_with_the_message(tmp_path):
    (tmp_path / "junk.pt").write_text("junk")
    proc = subprocess.run([sys.executable, "-m", "models.export", str(tmp_path / "junk.pt"), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "not a readable torch checkpoint" in proc.stderr


def _step_ops(folder: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(folder / "step.onnx"), load_external_data=False).graph.node]


def _seeded_draws(folder: Path) -> list:
    from app.engine.generation import SampleSpec, generate
    from app.runtime.backends import load

    m = load_manifest(folder)
    specs = [SampleSpec(max_new=m.length - 1, prefix=np.zeros(0, np.int64), seed=s) for s in range(3)]
    gens = generate(load("onnx", folder, m, 1), specs, False, m.token_dtype)
    return [(g.tokens, g.logprobs) for g in gens]


def test_the_step_graph_is_rewritten_and_an_old_one_upgraded_alone(artifacts, tmp_path, monkeypatch):
    """Fresh exports carry models/stepgraph.py's rewrites; `models.upgrade --step-graph` applies them to a folder
    exported without them, changing step.onnx and its manifest entry only, with the same seeded draws."""
    import models.export as export
    from models.upgrade import main as upgrade_main
    from models.upgrade import upgrade_step_graph

    fresh = _step_ops(artifacts / "tiny-transformer")
    assert "GroupQueryAttention" in fresh and not {"Split", "ConstantOfShape", "ReduceMax"} & set(fresh)
    model = models.tiny("transformer")
    monkeypatch.setattr(export, "fuse_step_graph", lambda graph: [])  # a folder from before the rewrites
    folder = tmp_path / "old-transformer"
    export.export_model(model, folder, export.placeholder_meta(model, "old-transformer"))
    monkeypatch.undo()
    assert {"Split", "ConstantOfShape", "ReduceMax"} <= set(_step_ops(folder))
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    draws = _seeded_draws(folder)

    assert upgrade_step_graph(folder) == ["2 packed qkv", "2 constant total", "1 scalar fill"]
    after = {f.name: f.read_bytes() for f in folder.iterdir()}
    assert after.keys() == before.keys()
    assert {f for f in after if after[f] != before[f]} == {"step.onnx", "manifest.json"}
    assert load_manifest(folder).export["step_graph"]["rewrites"][0] == "2 packed qkv"  # sha256s checked on load
    ops = _step_ops(folder)
    assert ops.count("GroupQueryAttention") == 2 and not {"Split", "ConstantOfShape", "ReduceMax"} & set(ops)
    upgraded = _seeded_draws(folder)
    for (tokens, lps), (want_tokens, want_lps) in zip(upgraded, draws, strict=True):
        assert tokens == want_tokens and lps == want_lps  # the same arithmetic: the same bits
    assert upgrade_main(["--step-graph", str(folder)]) == 0  # nothing left to rewrite: the folder stays
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == after
