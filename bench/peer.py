"""The peer: Hugging Face transformers `GPT2LMHeadModel.generate` beside arserve's GET /sample.

    python -m bench.peer --exported exported/ [--quick]

The shipped char-Transformer is a GPT-2 without biases, so its weights copy into a GPT2LMHeadModel of the same
shape (GPT-2's Conv1D holds nn.Linear's weight transposed; its biases stay zero). The copy is checked against
the TorchScript model's own step conditionals; if it does not match, HF times random weights of the same shape.
Our start token is the extra embedding row V; HF sees it as a token of a vocabulary of V + 1 whose head row is
zeros, and as bos = eos, so `min_new_tokens` masks it and both sides sample from the same V characters.

HF generates in this process (torch, ctx.threads); arserve is a real uvicorn server streaming SSE over HTTP,
so its figures include the HTTP, JSON and client costs that HF does not pay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from app.client import ArserveClient, AsyncArserveClient
from bench.common import Context, Figure, median_seconds, serve
from models.runtimes import TorchScriptRuntime, model_weights

log = logging.getLogger("bench.peer")
TOP_K = 40
BATCHES = (1, 8)
QUICK_TOKENS = 32
TOLERANCE = 1e-4  # max |difference| of the per-position log-softmax, nats


def text_transformer(ctx: Context) -> tuple[Path, dict] | None:
    for folder in ctx.models():
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("family") == "transformer" and manifest.get("modality") == "text":
            return folder, manifest
    return None


def gpt2_from(folder: Path, cfg: dict):
    """A GPT2LMHeadModel of the model's shape with its weights copied in; "copied", or "random" if the copy
    does not reproduce our conditionals."""
    from transformers import GPT2Config, GPT2LMHeadModel

    V, C = cfg["vocab_size"], cfg["n_embd"]
    config = GPT2Config(vocab_size=V + 1, n_positions=cfg["length"], n_embd=C, n_layer=cfg["n_layer"],
                        n_head=cfg["n_head"], activation_function="gelu", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                        bos_token_id=V, eos_token_id=V)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    ours = TorchScriptRuntime(folder / "model.pt").module
    src = model_weights(ours)
    copy = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}  # GPT-2's biases, absent here: zero
    copy["transformer.wte.weight"], copy["transformer.wpe.weight"] = src["wte.weight"], src["wpe.weight"]
    copy["lm_head.weight"][:V] = src["head.weight"]  # row V (the start token) stays zero; never sampled
    for name in ("ln_f.weight", "ln_f.bias"):
        if name in src:
            copy[f"transformer.{name}"] = src[name]
    pairs = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(cfg["n_layer"]):
        for theirs, mine in pairs.items():
            for kind in ("weight", "bias"):
                if f"blocks.{i}.{mine}.{kind}" in src:
                    w = src[f"blocks.{i}.{mine}.{kind}"]
                    copy[f"transformer.h.{i}.{theirs}.{kind}"] = w.t() if w.dim() == 2 else w  # Conv1D: (in, out)
    hf.load_state_dict(copy)
    diff = max_logsoftmax_diff(hf, ours, V, cfg["length"])
    log.info("copied weights: max |log-softmax difference| %.2e nats", diff)
    if diff <= TOLERANCE:
        return hf, "copied"
    log.warning("the copy does not reproduce the model (%.2e > %.0e): timing random weights", diff, TOLERANCE)
    return GPT2LMHeadModel(config).eval(), "random"


@torch.inference_mode()
def max_logsoftmax_diff(hf, ours, V: int, length: int) -> float:
    """Our step conditionals along a random sequence vs HF's logits[..., :V] on [BOS, x_0, ..., x_T-2]."""
    x = torch.randint(0, V, (1, length), generator=torch.Generator().manual_seed(0))
    state, mine = ours.init_state(1), []
    for t in range(length):
        params, state = ours.step(x[:, max(t - 1, 0)], torch.tensor([t]), state)  # x_prev ignored at t = 0
        mine.append(params)
    theirs = hf(torch.cat([torch.full((1, 1), V), x[:, :-1]], dim=1)).logits[0, :, :V]
    return (torch.stack(mine, 1)[0].log_softmax(-1) - theirs.log_softmax(-1)).abs().max().item()


def hf_seconds(hf, batch: int, tokens: int, repeats: int) -> float:
    V = hf.config.vocab_size - 1
    bos = torch.full((batch, 1), V)

    @torch.inference_mode()
    def generate():  # pad_token_id 0 is never written (no row ends early), but HF warns if pad equals the input
        out = hf.generate(input_ids=bos, attention_mask=torch.ones_like(bos), do_sample=True, top_k=TOP_K,
                          max_new_tokens=tokens, min_new_tokens=tokens, use_cache=True, pad_token_id=0)
        assert out.shape == (batch, tokens + 1) and bool((out[:, 1:] < V).all()), out

    return median_seconds(generate, repeats)


def stream(client: ArserveClient, model: str, tokens: int, seed: int) -> tuple[float, float]:
    """Time to the first token event and to the done event, seconds, of one GET /sample stream."""
    t0 = time.perf_counter()
    events = client.sample(model, max_len=tokens, top_k=TOP_K, seed=seed)
    next(events)
    first = time.perf_counter()
    *_, done = events
    assert done.event == "done" and done.data["num_tokens"] == tokens, done
    return first - t0, time.perf_counter() - t0


async def streams(url: str, model: str, tokens: int, batch: int, seed: int) -> None:
    async def one(client: AsyncArserveClient, seed: int) -> None:
        events = [event async for event in client.sample(model, max_len=tokens, top_k=TOP_K, seed=seed)]
        assert events[-1].event == "done" and events[-1].data["num_tokens"] == tokens, events[-1]

    async with AsyncArserveClient(url, timeout=600) as client:
        await asyncio.gather(*(one(client, seed + i) for i in range(batch)))


def run(ctx: Context) -> list[Figure]:
    found = text_transformer(ctx)
    if found is None:
        log.warning("peer: no text transformer (family transformer, modality text) under %s", ctx.exported)
        return []
    import transformers

    folder, manifest = found
    name, cfg = manifest["name"], manifest["config"]
    tokens = QUICK_TOKENS if ctx.quick else cfg["length"] - 1  # BOS at position 0, then the rest of the context
    repeats = 2 if ctx.quick else ctx.repeats
    torch.set_num_threads(ctx.threads)
    hf, weights = gpt2_from(folder, cfg)
    base = {"model": name, "tokens": tokens, "top_k": TOP_K, "repeats": repeats, "threads": ctx.threads,
            "weights": weights, "bos_head_row": "zeros, masked by min_new_tokens (eos = BOS)",
            "transformers": transformers.__version__, "torch": torch.__version__}
    hf_rate = {}
    for batch in BATCHES:
        log.info("HF generate: batch %d, %d tokens", batch, tokens)
        hf_rate[batch] = batch * tokens / hf_seconds(hf, batch, tokens, repeats)
    ours_rate, ttft = {}, []
    # one client drives every stream: the per-client cap (docs/security.md) must not count them as an attack
    with (serve(ctx.exported, ctx.threads, ARSERVE_MAX_STREAMS_PER_CLIENT="32") as url,
          ArserveClient(url, timeout=600) as client):
        log.info("arserve /sample: batch 1, %d tokens", tokens)
        stream(client, name, tokens, seed=0)  # warm-up
        timings = [stream(client, name, tokens, seed=1 + i) for i in range(repeats)]
        ttft = statistics.median(first for first, _ in timings)
        ours_rate[1] = tokens / statistics.median(total for _, total in timings)
        log.info("arserve /sample: batch 8 concurrent streams, %d tokens", tokens)
        seconds = median_seconds(lambda: asyncio.run(streams(url, name, tokens, 8, seed=100)), repeats)
        ours_rate[8] = 8 * tokens / seconds
    figures = []
    for batch in BATCHES:
        hf_cfg = {**base, "batch": batch, "runtime": "transformers generate (use_cache, do_sample)"}
        ours_cfg = {**base, "batch": batch, "runtime": "arserve GET /sample over HTTP/SSE"
                    + ("" if batch == 1 else f", {batch} concurrent streams")}
        figures += [Figure("peer", f"HF generate batch {batch}", hf_rate[batch], "tokens/s", hf_cfg),
                    Figure("peer", f"arserve /sample batch {batch}", ours_rate[batch], "tokens/s", ours_cfg),
                    Figure("peer", f"arserve / HF batch {batch}", ours_rate[batch] / hf_rate[batch], "x",
                           {**ours_cfg, "target": ">= 1.5x at batch 1 (goal 3x)"})]
    figures.append(Figure("peer", "arserve /sample time to first token", 1000 * ttft, "ms",
                          {**base, "batch": 1, "runtime": "arserve GET /sample over HTTP/SSE"}))
    return figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exported", type=Path, default=Path("exported"), help="folder of exported models")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TOKENS} tokens, 2 repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    for f in run(Context(args.exported, args.quick, args.threads, args.repeats)):
        print(f"{f.name:40s} {f.value:12,.1f} {f.unit:9s} {json.dumps(f.config)}")


if __name__ == "__main__":
    main()
