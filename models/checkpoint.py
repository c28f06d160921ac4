"""Checkpoints: one torch.save'd dict that rebuilds a model of any family without its training code.

    {"format": "arserve-checkpoint-1", "family", "config" (asdict of the frozen config), "state_dict",
     "meta" (name, modality, shape, vocabulary, description, training, metrics), "train_state" (or None)}

Everything in it is plain Python, tensors or numpy-free containers, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file. A checkpoint that
cannot be trusted fails with a ``CheckpointError`` that names the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from models.base import ARModel

FORMAT = "arserve-checkpoint-1"
META_REQUIRED = ("name", "modality", "shape")


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: missing, not a checkpoint, or not matching its own family/config."""


def save_checkpoint(path: str | Path, model: ARModel, meta: dict, train_state: dict | None = None) -> None:
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing} (needs at least {list(META_REQUIRED)})")
    torch.save(
        {
            "format": FORMAT,
            "family": model.family,
            "config": model.config_dict(),
            "state_dict": model.state_dict(),
            "meta": _plain(meta),
            "train_state": _plain(train_state),
        },
        path,
    )


def load_checkpoint(path: str | Path) -> tuple[ARModel, dict, dict | None]:
    """(model in eval mode, meta, train_state) from a checkpoint written by save_checkpoint."""
    path = Path(path)
    ckpt = _read(path)
    family = ckpt["family"]
    if family not in models.REGISTRY:
        raise CheckpointError(f"{path}: unknown family {family!r}; known: {sorted(models.REGISTRY)}")
    try:
        model = models.build(family, ckpt["config"])
    except (ValueError, TypeError) as e:  # an unknown field, or a value the config rejects
        raise CheckpointError(f"{path}: the config does not build a {family} model ({e})") from None
    problems = _state_dict_problems(model, ckpt["state_dict"])
    if problems:
        raise CheckpointError(f"{path}: state_dict does not match the {family} config: {'; '.join(problems)}")
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["meta"], ckpt["train_state"]


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage raises anything from UnpicklingError to struct.error: all mean "not ours"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an arserve checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in ("family", "config", "state_dict", "meta") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["meta"], dict):
        raise CheckpointError(f"{path}: config and meta must be dicts")
    ckpt.setdefault("train_state", None)
    return ckpt


def _state_dict_problems(model: ARModel, state_dict: Any) -> list[str]:
    if not isinstance(state_dict, dict):
        return [f"state_dict is a {type(state_dict).__name__}, not a dict"]
    expected = model.state_dict()
    problems = []
    if missing := sorted(set(expected) - set(state_dict)):
        problems.append(f"missing keys {missing}")
    if unexpected := sorted(set(state_dict) - set(expected)):
        problems.append(f"unexpected keys {unexpected}")
    for k in sorted(set(expected) & set(state_dict)):
        got = state_dict[k]
        if not isinstance(got, torch.Tensor):
            problems.append(f"{k} is a {type(got).__name__}, not a tensor")
        elif got.shape != expected[k].shape:
            problems.append(f"{k} has shape {tuple(got.shape)}, the config needs {tuple(expected[k].shape)}")
    return problems


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and tensors, so the file loads with weights_only=True."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj
