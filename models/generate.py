"""Generation written once against the contract: cached (through `step`) and naive (recomputing
`conditionals` on the growing prefix). With the same seed both must draw exactly the same sample."""

from __future__ import annotations

import numpy as np
import torch

from app.engine.sampling import sample_categorical, sample_mixture
from models.base import ARModel


def draw(model: ARModel, params: torch.Tensor, rng: np.random.Generator, temperature: float, top_k: int,
         top_p: float) -> torch.Tensor:
    p = params.detach().to(torch.float64).numpy()
    if model.dist == "gaussian_mixture":
        return torch.from_numpy(sample_mixture(p, rng, temperature))
    return torch.from_numpy(sample_categorical(p, rng, temperature, top_k, top_p))


@torch.inference_mode()
def generate_cached(model: ARModel, batch: int, steps: int, seed: int = 0, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, checked: bool = True) -> torch.Tensor:
    """[batch, steps] sample drawn one `step` at a time (checked=False skips the per-call input validation,
    to time the algorithm alone)."""
    step = model.step if checked else model._step
    rng = np.random.default_rng(seed)
    state = model.init_state(batch)
    x = torch.zeros(batch, dtype=model.token_dtype)
    out = []
    for t in range(steps):
        pos = torch.full((batch,), t, dtype=torch.long)
        params, state = step(x, pos, state)
        x = draw(model, params, rng, temperature, top_k, top_p)
        out.append(x)
    return torch.stack(out, dim=1)


@torch.inference_mode()
def generate_naive(model: ARModel, batch: int, steps: int, seed: int = 0, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The same sample, recomputing the full parallel pass on the prefix at every position."""
    rng = np.random.default_rng(seed)
    width = steps if model.variable_length else model.length
    x = torch.zeros(batch, width, dtype=model.token_dtype)
    for t in range(steps):
        prefix = x[:, : t + 1] if model.variable_length else x  # causality: x_>=t cannot matter
        params = model._conditionals(prefix)[:, t]
        x[:, t] = draw(model, params, rng, temperature, top_k, top_p)
    return x[:, :steps]
