"""lm-evaluation-harness as a real client: `local-completions` with its remote tokenizer, fully offline, against a
real uvicorn serving the shipped character Transformer, on the repo's two local tasks (evals/shakespeare).

Its figures must be what the native API gives for the same texts: bits-per-byte of the rolling perplexity task
equal to POST /logprob of each text after the advertised start token, and the multiple-choice accuracy equal to
picking, with POST /logprob, the most likely continuation. Marked `eval` (needs the `eval` extra; slow):
run with `pytest -m eval`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import httpx
import pytest
from conftest import ROOT

pytestmark = pytest.mark.eval

MODEL = "transformer-shakespeare"
TASKS = ROOT / "evals" / "shakespeare"


@pytest.fixture(autouse=True)
def _only_when_selected(request):
    if "eval" not in (request.config.option.markexpr or ""):
        pytest.skip("lm-evaluation-harness runs with -m eval")
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install -e '.[eval]' -c constraints/eval.txt")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bench.common import serve

    folder = tmp_path_factory.mktemp("served")
    (folder / MODEL).symlink_to(ROOT / "exported" / MODEL)
    with serve(folder, threads=1) as url:
        yield url


def lm_eval(server: str, out, tasks: str) -> dict:
    """Run the lm_eval command line as a user would; its results file's "results"."""
    info = httpx.get(f"{server}/tokenizer_info").json()
    model_args = (f"model={MODEL},base_url={server}/v1/completions,tokenizer_backend=remote,"
                  f"max_length={info['max_model_len']},custom_prefix_token_id={info['bos_token_id']}")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf")}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
           "--tasks", tasks, "--include_path", str(TASKS), "--output_path", str(out / "results")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = (out / "results").rglob("results_*.json")
    return json.loads(path.read_text())["results"]


def native(server: str, texts: list[str], prefix_len: int) -> list[float]:
    body = {"model": MODEL, "inputs": texts, "prefix_len": prefix_len}
    r = httpx.post(f"{server}/logprob", json=body, timeout=120)
    r.raise_for_status()
    return [x["logprob"] for x in r.json()["results"]]


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text(encoding="utf-8").splitlines()]


def test_lm_eval_agrees_with_native_logprob(server, tmp_path):
    results = lm_eval(server, tmp_path, "shakespeare_ppl,shakespeare_next_line")
    start = httpx.get(f"{server}/tokenizer_info").json()["bos_token"]

    # Rolling perplexity: every text conditioned on the start token, scored from its first character.
    texts = [r["text"] for r in rows("ppl.jsonl")]
    total = math.fsum(native(server, [start + t for t in texts], prefix_len=1))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    ours = -total / (nbytes * math.log(2))
    assert results["shakespeare_ppl"]["bits_per_byte,none"] == pytest.approx(ours, abs=1e-3)
    assert 1.5 < ours < 3.5  # a trained character model on held-out Shakespeare, not noise

    # Multiple choice: the continuation POST /logprob finds most likely, item by item.
    right = 0
    for item in rows("next_line.jsonl"):
        context = item["context"]
        scores = native(server, [context + c for c in item["choices"]], prefix_len=len(context))
        right += max(range(len(scores)), key=scores.__getitem__) == item["gold"]
    assert results["shakespeare_next_line"]["acc,none"] == pytest.approx(right / len(rows("next_line.jsonl")))
