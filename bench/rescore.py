"""Re-score a binarized-MNIST split through a running server: what the model cards' test figures claim, measured
again over HTTP with the service's own runtime (`POST /logprob`, packed input).

    python -m app.serve &                                   # or any running arserve
    python -m bench.rescore pixelcnn48-mnist made2000-mnist  # --split test, --url http://127.0.0.1:8000

Prints the mean NLL in nats per image over the whole split; compare with the manifest's metrics (docs/models.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from app.client import ArserveClient
from models.data import data_dir

ROWS_PER_REQUEST = 64  # well inside the default work budget per request


def mean_nll(client: ArserveClient, model: str, images: np.ndarray) -> float:
    total = 0.0
    for i in range(0, len(images), ROWS_PER_REQUEST):
        answer = client.logprob_array(model, images[i:i + ROWS_PER_REQUEST])
        total += sum(r["logprob"] for r in answer["results"])
    return -total / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="binary-image models trained on binarized MNIST")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args()
    images = np.load(data_dir() / "mnist" / "binarized_mnist.npz")[args.split].astype(np.uint8)
    with ArserveClient(args.url, timeout=600, api_key=args.api_key) as client:
        for model in args.models:
            nll = mean_nll(client, model, images)
            print(f"{model}: {nll:.3f} nats/image over the {len(images):,} images of the {args.split} split")


if __name__ == "__main__":
    main()
