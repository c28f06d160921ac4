"""The model zoo: every autoregressive family behind one contract (see models/base.py)."""

from __future__ import annotations

import torch

from models.attnrnn import AttnRNN
from models.base import ARModel
from models.finite import FiniteMemory
from models.fvsbn import FVSBN
from models.made import MADE
from models.nade import NADE
from models.pixelcnn import PixelCNN
from models.pixelrnn import PixelRNN
from models.rnade import RNADE
from models.rnn import GRU, LSTM
from models.transformer import Transformer
from models.wavenet import WaveNet

# family name -> class; training, sampling, export and the tests are written once against the contract
REGISTRY: dict[str, type[ARModel]] = {
    cls.family: cls
    for cls in (FVSBN, NADE, MADE, RNADE, LSTM, GRU, PixelCNN, PixelRNN, WaveNet, Transformer, AttnRNN, FiniteMemory)
}


def get_class(family: str) -> type[ARModel]:
    if family not in REGISTRY:
        raise ValueError(f"unknown family {family!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[family]


def build(family: str, config: dict | None = None) -> ARModel:
    """Build a model from its family name and a config dict (as stored in checkpoints)."""
    cls = get_class(family)
    try:
        cfg = cls.config_class(**(config or {}))
    except TypeError as e:
        raise ValueError(f"config does not fit family {family!r}: {e}") from None
    return cls(cfg)


def tiny(family: str, index: int = 0, seed: int = 0) -> ARModel:
    """A small random-weight instance of a family (index picks one of its tiny configs)."""
    cls = get_class(family)
    torch.manual_seed(seed)
    model = cls(cls.tiny_configs()[index])
    _randomize(model)
    return model.eval()


def _randomize(model: ARModel) -> None:
    # Fresh models often start near-uniform (zero biases, tiny weights); tests need sharp conditionals.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
