"""Count-based character n-grams with add-one smoothing: the baseline the finite-memory model must beat.

`python -m models.ngram [k ...]` prints the validation NLL (nats/char) of an order-(k+1) model — k previous
characters, as the finite-memory MLP sees — on Tiny Shakespeare, scored exactly as the neural text models
are: consecutive windows from the start token, so the first k positions of a window see start tokens.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from models import data


def contexts(ids: np.ndarray, k: int, window: int, bos: int) -> np.ndarray:
    """(N, k + 1) rows of (k previous tokens, token), padding each window's start with `bos`."""
    rows = []
    for s in range(0, len(ids), window):
        w = ids[s : s + window].astype(np.int64)
        padded = np.concatenate([np.full(k, bos), w])
        rows.append(np.stack([padded[i : i + len(w)] for i in range(k + 1)], axis=1))
    return np.concatenate(rows)


def add_one_nll(train: np.ndarray, valid: np.ndarray, k: int, vocab: int, window: int) -> float:
    """Mean -log p(x | previous k) with p = (count(ctx, x) + 1) / (count(ctx) + V)."""
    tr, va = contexts(train, k, window, vocab), contexts(valid, k, window, vocab)
    full = Counter(map(bytes, tr.astype(np.uint8)))
    ctx = Counter(map(bytes, tr[:, :k].astype(np.uint8)))
    nll = [
        -np.log((full[bytes(row)] + 1) / (ctx[bytes(row[:k])] + vocab)) for row in va.astype(np.uint8)
    ]
    return float(np.mean(nll))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("k", nargs="*", type=int, default=[1, 2, 3, 4, 8], help="context lengths")
    ap.add_argument("--window", type=int, default=1024, help="scoring window (the model's length)")
    args = ap.parse_args(argv)
    chars, splits = data.shakespeare()
    print("| k (context) | order | add-one validation NLL (nats/char) |\n|---:|---:|---:|")
    for k in args.k:
        print(f"| {k} | {k + 1} | {add_one_nll(splits.train, splits.valid, k, len(chars), args.window):.3f} |")


if __name__ == "__main__":
    main()
