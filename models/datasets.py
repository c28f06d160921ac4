"""Training and evaluation adapters over models/data.py: one per dataset, one small interface.

Each adapter gives training batches (x, mask), evaluates held-out NLL in the dataset's natural unit, and
names a small fixed slice of held-out data whose NLL goes into the manifest so that the shipped artifact
can be checked against it later.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models import data
from models.base import ARModel

LN2 = math.log(2)


class Dataset:
    name = ""
    modality = ""
    unit = ""  # what one NLL figure is per: image, char, sample, example
    slice_split, slice_count = "test", 32

    def meta(self, model: ARModel) -> dict:
        raise NotImplementedError

    def split(self, split: str):
        raise NotImplementedError

    def held_out_splits(self) -> list[str]:
        return ["valid", "test"]

    def train_batch(self, rng: np.random.Generator, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def examples(self, split: str, model: ARModel, limit: int | None = None) -> list[np.ndarray]:
        """Held-out examples as the model scores them (fixed order, so figures are reproducible)."""
        return self._examples(split, model.length, limit)

    def slice_examples(self, model_length: int) -> list[np.ndarray]:
        return self._examples(self.slice_split, model_length, self.slice_count)

    def _examples(self, split: str, model_length: int, limit: int | None) -> list[np.ndarray]:
        raise NotImplementedError

    @torch.no_grad()
    def nll(self, model: ARModel, xs: list[np.ndarray], batch: int = 64) -> tuple[float, int]:
        """(total nats, number of scored positions) over the examples."""
        model.eval()
        total, count = 0.0, 0
        dtype = model.token_dtype
        for i in range(0, len(xs), batch):
            group = xs[i : i + batch]
            for length in sorted({len(x) for x in group}):  # same-length examples go through together
                same = [x for x in group if len(x) == length]
                t = torch.as_tensor(np.stack(same)).to(dtype)
                total -= model.log_prob(t).double().sum().item()
                count += t.numel()
        return total, count

    def evaluate(self, model: ARModel, split: str, limit: int | None = None) -> dict:
        xs = self.examples(split, model, limit)
        nats, n = self.nll(model, xs)
        per_dim = nats / n
        return {
            "dataset": self.name,
            "split": split,
            "examples": len(xs),
            "nll": self.headline(nats, xs),
            "unit": f"nats/{self.unit}",
            "bits_per_dim": per_dim / LN2,
        }

    def headline(self, nats: float, xs: list[np.ndarray]) -> float:
        return nats / len(xs)

    def check_slice(self, model: ARModel) -> dict:
        xs = self.slice_examples(model.length)
        nats, n = self.nll(model, xs)
        return {"split": self.slice_split, "count": len(xs), "nll_nats_total": nats, "positions": n}


class MNIST(Dataset):
    name, modality, unit = "binarized_mnist", "binary_image", "image"

    def meta(self, model):
        return {"modality": self.modality, "shape": [28, 28], "vocabulary": {"height": 28, "width": 28}}

    def split(self, split):
        return getattr(data.mnist(), split)

    def train_batch(self, rng, batch, seq_len):
        x = torch.from_numpy(self.split("train")[rng.integers(0, 50_000, batch)].astype(np.int64))
        return x, torch.ones(x.shape)

    def _examples(self, split, model_length, limit):
        return list(self.split(split)[:limit].astype(np.int64))


class Shakespeare(Dataset):
    """Validation is the last 10%; scored in consecutive windows of the model's length, each from BOS."""

    name, modality, unit = "tiny_shakespeare", "text", "char"
    slice_split, slice_count = "valid", 4

    def meta(self, model):
        chars, _ = data.shakespeare()
        return {"modality": self.modality, "shape": [model.length], "vocabulary": {"chars": chars}}

    def held_out_splits(self):
        return ["valid"]

    def split(self, split):
        return getattr(data.shakespeare()[1], split)

    def train_batch(self, rng, batch, seq_len):
        ids = self.split("train")
        starts = rng.integers(0, len(ids) - seq_len, batch)
        x = torch.from_numpy(np.stack([ids[s : s + seq_len] for s in starts]).astype(np.int64))
        return x, torch.ones(x.shape)

    def _examples(self, split, model_length, limit):
        ids = self.split(split).astype(np.int64)
        windows = [ids[s : s + model_length] for s in range(0, len(ids), model_length)]
        return windows[:limit]

    def headline(self, nats, xs):
        return nats / sum(len(x) for x in xs)


class FSDD(Dataset):
    """Whole clips (cropped to the model's length), each from BOS; the headline is bits per sample."""

    name, modality, unit = "fsdd_8k_mulaw", "audio", "sample"
    slice_count = 4

    def meta(self, model):
        vocab = {"sample_rate": data.SAMPLE_RATE, "mu": data.MU}
        return {"modality": self.modality, "shape": [model.length], "vocabulary": vocab}

    def split(self, split):
        return getattr(data.fsdd(), split)

    def train_batch(self, rng, batch, seq_len):
        clips = self.split("train")
        x = np.full((batch, seq_len), 128, dtype=np.int64)  # 128 = silence in mu-law; masked out anyway
        mask = np.zeros((batch, seq_len), dtype=np.float32)
        for b, i in enumerate(rng.integers(0, len(clips), batch)):
            clip = clips[i]
            start = rng.integers(0, max(1, len(clip) - seq_len + 1))
            piece = clip[start : start + seq_len]
            x[b, : len(piece)], mask[b, : len(piece)] = piece, 1
        return torch.from_numpy(x), torch.from_numpy(mask)

    def _examples(self, split, model_length, limit):
        return [c[:model_length].astype(np.int64) for c in self.split(split)[:limit]]

    def headline(self, nats, xs):
        return nats / sum(len(x) for x in xs)


class Digits(Dataset):
    name, modality, unit = "sklearn_digits_dequantized", "vector", "example"

    def meta(self, model):
        return {"modality": self.modality, "shape": [8, 8], "vocabulary": {"height": 8, "width": 8}}

    def split(self, split):
        return getattr(data.digits(), split)

    def train_batch(self, rng, batch, seq_len):
        train = self.split("train")
        x = torch.from_numpy(train[rng.integers(0, len(train), batch)])
        return x, torch.ones(x.shape)

    def _examples(self, split, model_length, limit):
        return list(self.split(split)[:limit])


DATASETS: dict[str, type[Dataset]] = {"mnist": MNIST, "shakespeare": Shakespeare, "fsdd": FSDD, "digits": Digits}
