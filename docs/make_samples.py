"""What each shipped model makes, drawn from the exported artifacts by the service's own code.

    .venv/bin/python docs/make_samples.py [--exported exported] [--out docs/samples] [--only NAME ...] [--seed 0]

Run from the repository root (paths are relative to it; --backend torchscript instead of ONNX Runtime). Each
model is loaded by app.runtime.backends and sampled by app.engine.generation's loop, one Generation per seed
batched into one `step` call per position as the service's worker batches streams, so image sample i is what
`GET /sample` with seed SEED+i returns; app.engine.codecs renders them. models/ is never imported. Writes
docs/samples/NAME.png (a 4x4 grid: binary_image, vector), NAME.txt (text) or NAME.wav (audio), then rewrites
docs/README.md from every manifest.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the service's package app/ lives at the repository root

from app.engine import codecs  # noqa: E402
from app.engine.generation import Batch, Generation, SampleSpec  # noqa: E402
from app.http.errors import APIError  # noqa: E402
from app.runtime.backends import load  # noqa: E402
from app.runtime.manifest import Manifest, load_manifest  # noqa: E402

log = logging.getLogger("make_samples")

GRID, ZOOM, GAP = 4, 4, 2  # 4x4 samples, each upscaled 4x (nearest), 2 gray pixels between them
MIN_TILE = 112  # smaller images (8x8 digits) are upscaled further, to at least this many pixels
PROMPT, TEXT_CHARS, TEXT_TEMPERATURE = "ROMEO:\n", 600, 0.8
AUDIO_SAMPLES = 8000  # 1 s at 8 kHz
EXT = {"binary_image": "png", "vector": "png", "text": "txt", "audio": "wav"}


def generate(backend, m: Manifest, seeds, prefix: np.ndarray, n: int, temperature: float) -> list[Generation]:
    """One Generation per seed, all advanced together: one batched `step` call per position."""
    mixture = m.distribution == "gaussian_mixture"
    gens = [Generation(SampleSpec(n, prefix, s, temperature), mixture, m.token_dtype)
            for s in seeds]  # each its own Generator, as the service makes them
    every = max(1, gens[0].end // 4)
    batch = Batch(backend, len(gens))  # the worker's slot buffers, stepped the same way
    for g in gens:
        batch.join(g)
    steps = 0
    while len(batch):
        done, _ = batch.step(len(batch))
        for g in done:
            batch.leave(g)
        steps += 1
        if steps % every == 0:
            log.info("%s: %d/%d positions", m.name, steps, gens[0].end)
    return gens


def data_url_bytes(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


def tile(x: np.ndarray, m: Manifest) -> np.ndarray:
    """One full sample -> (H, W) uint8, upscaled; binary images go through the done event's PNG codec."""
    if m.modality == "binary_image":
        pixels = np.asarray(Image.open(io.BytesIO(data_url_bytes(codecs.render(x, list(x), m)["png"]))))
    else:  # vector data in [0, 1) as gray levels: the service has no image codec for continuous values
        h, w = m.shape if len(m.shape) == 2 else (m.vocabulary.height, m.vocabulary.width)
        pixels = (np.clip(x, 0.0, 1.0) * 255).round().astype(np.uint8).reshape(h, w)  # (H, W)
    zoom = max(ZOOM, -(-MIN_TILE // max(pixels.shape)))
    return pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)


def image_grid(backend, m: Manifest, seed: int) -> bytes:
    gens = generate(backend, m, range(seed, seed + GRID * GRID), np.zeros(0, m.token_dtype), m.length, 1.0)
    tiles = [tile(np.asarray(g.tokens, dtype=m.token_dtype), m) for g in gens]
    h, w = tiles[0].shape
    grid = np.full((GRID * (h + GAP) - GAP, GRID * (w + GAP) - GAP), 128, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, GRID)
        grid[r * (h + GAP) : r * (h + GAP) + h, c * (w + GAP) : c * (w + GAP) + w] = t
    buf = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def text_excerpt(backend, m: Manifest, seed: int) -> bytes:
    """PROMPT and TEXT_CHARS drawn characters; past the model's length, windows prompted with the last half."""
    try:
        tokens = list(codecs.encode_text(PROMPT, m, "prompt"))
    except APIError:  # the vocabulary lacks a character of the prompt: draw unconditionally
        tokens = []
    end, window = len(tokens) + TEXT_CHARS, 0
    while len(tokens) < end:
        context = tokens if len(tokens) < m.length else tokens[len(tokens) - m.length // 2 :]
        n = min(end - len(tokens), m.length - len(context))
        (gen,) = generate(backend, m, [seed + window], np.array(context, np.int64), n, TEXT_TEMPERATURE)
        tokens += gen.tokens
        window += 1
    return codecs.decode_text(tokens, m).encode()


def audio_clip(backend, m: Manifest, seed: int) -> bytes:
    (gen,) = generate(backend, m, [seed], np.zeros(0, np.int64), min(AUDIO_SAMPLES, m.length), 1.0)
    return data_url_bytes(codecs.render(np.asarray(gen.tokens), gen.tokens, m)["wav"])


MAKERS = {"binary_image": image_grid, "vector": image_grid, "text": text_excerpt, "audio": audio_clip}


def about(m: Manifest) -> str:
    """One line on where a sample came from: family, size and the manifest's held-out NLL."""
    parts = [f"Family `{m.family}`", m.modality]
    if "parameters" in m.training:
        parts.append(f"{m.training['parameters']:,} parameters")
    for split in ("test", "valid"):
        r = m.metrics.get(split)
        if isinstance(r, dict) and "nll" in r:
            bits = f" ({r['bits_per_dim']:.4f} bits/dim)" if "bits_per_dim" in r else ""
            parts.append(f"{split} NLL {r['nll']:.2f} {r.get('unit', 'nats')}{bits}")
    density = " (a log-density of continuous data: it can be negative)" * (m.distribution == "gaussian_mixture")
    return " · ".join(parts) + density


def fenced(text: str) -> list[str]:
    fence = "```"
    while fence in text:  # a fence the excerpt cannot close
        fence += "`"
    return [fence + "text", text, fence]


def readme(models: list[Manifest], out: Path, path: Path, command: str, seed: int) -> str:
    lines = ["# What the shipped models make", "",
             "Every sample on this page was drawn from the artifacts in `exported/` by the service's own code",
             "(app.runtime.backends, app.engine.generation, app.engine.sampling, app.engine.codecs; models/ is",
             "never imported). This page and docs/samples/ are written by:", "", "```sh", command, "```", "",
             f"- images: a {GRID}x{GRID} grid, seeds {seed}..{seed + GRID * GRID - 1} left to right and top to "
             "bottom, temperature 1, upscaled (nearest);",
             f"- text: {TEXT_CHARS} characters drawn at temperature {TEXT_TEMPERATURE} after the prompt "
             f"`{PROMPT.strip()}` and a newline, seed {seed};",
             f"- audio: {AUDIO_SAMPLES} mu-law samples drawn at temperature 1, seed {seed}, as a 16-bit PCM WAV.", ""]
    for m in models:
        f = out / f"{m.name}.{EXT[m.modality]}"
        lines += [f"## {m.name}", "", m.description, "", about(m), ""]
        if not f.is_file():
            lines += ["*No sample yet: run the command above.*"]
        elif m.modality == "text":
            if not set(PROMPT) <= set(m.vocabulary.chars):
                lines += ["The prompt holds characters this model does not know: drawn unconditionally.", ""]
            if m.length < len(PROMPT) + TEXT_CHARS:
                lines += [f"The model's context is {m.length} characters: past it, the excerpt goes on in windows, "
                          f"each prompted with the last {m.length // 2} characters (seeds {seed}, {seed + 1}, ...).",
                          ""]
            lines += fenced(f.read_text())
        elif m.modality == "audio":
            lines += [f"[{f.name}]({os.path.relpath(f, path.parent)}) ({m.vocabulary.sample_rate} Hz)"]
        else:
            lines += [f"![{m.name} samples]({os.path.relpath(f, path.parent)})"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exported", type=Path, default=Path("exported"))
    p.add_argument("--out", type=Path, default=Path("docs/samples"))
    p.add_argument("--readme", type=Path, default=Path("docs/README.md"), help="the gallery page to rewrite")
    p.add_argument("--only", nargs="+", metavar="NAME", help="sample only these models (the page lists all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["onnx", "torchscript"], default="onnx")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    folders = sorted(d for d in args.exported.iterdir() if d.is_dir() and not d.name.startswith("."))
    models = [(d, load_manifest(d)) for d in folders]
    unknown = set(args.only or ()) - {m.name for _, m in models}
    if unknown:
        p.error(f"no such model in {args.exported}: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for d, m in models:
        if args.only and m.name not in args.only:
            continue
        t0 = time.perf_counter()
        data = MAKERS[m.modality](load(args.backend, d, m, 1), m, args.seed)
        f = args.out / f"{m.name}.{EXT[m.modality]}"
        f.write_bytes(data)
        print(f"{m.name:28s} wrote {f} ({len(data):,} bytes) in {time.perf_counter() - t0:.1f} s")
    command = ".venv/bin/python docs/make_samples.py" + (f" --seed {args.seed}" if args.seed else "") + (
        f" --backend {args.backend}" if args.backend != "onnx" else "")
    args.readme.write_text(readme([m for _, m in models], args.out, args.readme, command, args.seed))
    print(f"{'(gallery)':28s} wrote {args.readme}")


if __name__ == "__main__":
    main()
