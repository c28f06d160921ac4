"""PixelCNN: masked convolutions over a binarized image, gated tanh·σ units, residual connections.

van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016 (masks A and B);
van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016 (gated units).

    h_0 = gate(conv_A(x)),   h_l = h_{l-1} + W_l · gate(conv_B(h_{l-1})),   logit = head(h_L)
    gate([a, b]) = tanh(a) · σ(b)

Mask A (first layer) hides the centre pixel and everything after it in raster order; mask B (later layers)
shows the centre too, so pixel i depends on x_<i only. The parallel pass is one convolution stack over the
whole image, each layer zero-padded to keep its size. The incremental step keeps the canvas of pixels drawn
so far and recomputes the network only on the receptive-field window of the next pixel: R rows above it and
R columns either side, R = first_kernel // 2 + n_layers * (kernel // 2). There every layer is a valid
convolution, so the window shrinks by that layer's reach and ends as the one target pixel (28x28 default:
252 cell-layers instead of 784 x 7); window cells outside the image are zeroed after every layer, exactly
as the full pass's padding, so the step's logit equals the parallel pass's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bernoulli_logits


def check_image_config(cfg, family: str) -> None:
    """Shared by the convolutional image families: a real image, odd kernels, binary pixels."""
    if cfg.height < 1 or cfg.width < 1:
        raise ValueError(f"image must be at least 1x1, got {cfg.height}x{cfg.width}")
    if cfg.first_kernel % 2 == 0 or cfg.kernel % 2 == 0:
        raise ValueError(f"kernels must be odd, got {cfg.first_kernel} and {cfg.kernel}")
    if cfg.vocab_size != 2:
        raise ValueError(f"{family} models binary pixels: vocab_size must be 2")


@dataclass(frozen=True)
class PixelCNNConfig:
    height: int = 28  # binarized MNIST
    width: int = 28
    # Hidden feature maps. 32 (~65 M MACs per image) trains one 60k-image epoch in ~15 min on 2 CPU cores,
    # so an hour's budget sees several epochs; 64 would be ~4x slower.
    channels: int = 32
    n_layers: int = 6  # gated residual mask-B layers after the first; receptive reach R = 3 + 6 = 9
    first_kernel: int = 7  # mask A, as in the paper
    kernel: int = 3  # mask B
    vocab_size: int = 2  # Bernoulli pixels

    def __post_init__(self):
        check_image_config(self, "PixelCNN")

    @property
    def length(self) -> int:
        return self.height * self.width

    @property
    def reach(self) -> int:
        """Rows above (and columns either side) of a pixel that its conditional can see."""
        return self.first_kernel // 2 + self.n_layers * (self.kernel // 2)


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees only pixels before the centre (mask A) or up to it (mask B).

    Every kernel row below the centre is masked, so only the top k // 2 + 1 rows are stored and computed.
    With pad=True the output has the input's size (zeros above and either side, as 'same' padding);
    with pad=False it is a valid convolution, k // 2 rows and 2 (k // 2) columns smaller.
    """

    def __init__(self, c_in: int, c_out: int, k: int, mask_type: str):
        super().__init__(c_in, c_out, (k // 2 + 1, k))
        mask = torch.ones(k // 2 + 1, k)
        mask[k // 2, k // 2 + (mask_type == "B"):] = 0  # the centre row, from the centre (A) or after it (B)
        self.register_buffer("mask", mask, persistent=False)
        self.pad = (k // 2, k // 2, k // 2, 0)  # (left, right, top, bottom)

    def forward(self, x: Tensor, pad: bool = True) -> Tensor:
        if pad:
            x = F.pad(x, self.pad)
        return F.conv2d(x, self.mask * self.weight, self.bias)


def gate(a: Tensor) -> Tensor:
    t, s = a.chunk(2, dim=1)
    return torch.tanh(t) * torch.sigmoid(s)


class PixelCNN(ARModel):
    family = "pixelcnn"
    config_class = PixelCNNConfig
    dist = "bernoulli"

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        C = config.channels
        self.first = MaskedConv2d(1, 2 * C, config.first_kernel, "A")
        self.convs = nn.ModuleList(MaskedConv2d(C, 2 * C, config.kernel, "B") for _ in range(config.n_layers))
        self.res = nn.ModuleList(nn.Conv2d(C, C, 1) for _ in range(config.n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, 1, 1))
        # The step's window: flat offsets of its cells in the padded canvas, and their (row, col) offsets
        # from the target pixel, used to tell which cells lie inside the image.
        R, Wp = config.reach, config.width + 2 * config.reach
        rows = torch.arange(R + 1).repeat_interleave(2 * R + 1)  # ((R+1) * (2R+1),)
        cols = torch.arange(2 * R + 1).repeat(R + 1)
        self.register_buffer("win_offset", rows * Wp + cols, persistent=False)
        self.register_buffer("win_drow", rows - R, persistent=False)
        self.register_buffer("win_dcol", cols - R, persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[PixelCNNConfig]:
        return [
            PixelCNNConfig(height=3, width=3, channels=4, n_layers=1, first_kernel=3),  # 2^9 images
            PixelCNNConfig(height=4, width=5, channels=6, n_layers=2, first_kernel=5),
            PixelCNNConfig(height=6, width=7, channels=5, n_layers=2, first_kernel=7, kernel=3),
            # deep, as the 12-layer recipe: the step's window (reach 6) is wider and taller than the image
            PixelCNNConfig(height=5, width=4, channels=3, n_layers=5, first_kernel=3, kernel=3),
        ]

    def state_spec(self):
        return [("canvas", (self.config.height, self.config.width), torch.float32)]

    def _net(self, img: Tensor, inside: Tensor | None = None) -> Tensor:
        """Full image (B, 1, H, W) -> logits (B, 1, H, W), or, given the window's `inside` mask, a step's
        window (B, 1, R+1, 2R+1) -> the target pixel's logit (B, 1, 1, 1)."""
        window = inside is not None  # a static choice of code path, not a tensor value
        h = clip(gate(self.first(img, pad=not window)), inside)  # (B, C, h, w)
        for conv, res in zip(self.convs, self.res, strict=True):
            z = res(gate(conv(h, pad=not window)))
            if window:  # valid convs shrink the window towards the target pixel
                h = crop(h, self.config.kernel // 2)
            h = clip(h + z, inside)
        return self.head(h)

    def _conditionals(self, x: Tensor) -> Tensor:
        cfg = self.config
        img = x.to(torch.float32).view(-1, 1, cfg.height, cfg.width)  # (B, 1, H, W)
        logit = self._net(img).view(-1, cfg.length)  # (B, D)
        return bernoulli_logits(logit)  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        cfg = self.config
        H, W, R = cfg.height, cfg.width, cfg.reach
        (canvas,) = state
        flat = canvas.reshape(-1, cfg.length)  # (B, D)
        # Write x_{pos-1} into the canvas; at pos == 0 rewrite pixel 0 with its own (zero) value.
        prev = (pos - 1).clamp(min=0).unsqueeze(1)  # (B, 1)
        value = torch.where(pos.unsqueeze(1) > 0, x_prev.to(flat.dtype).unsqueeze(1), flat.gather(1, prev))
        flat = flat.scatter(1, prev, value)
        canvas = flat.view(-1, H, W)
        # Gather the (R+1) x (2R+1) window whose bottom-centre cell is the target pixel (r, c).
        padded = F.pad(canvas, (R, R, R, 0)).flatten(1)  # (B, (H+R) * (W+2R))
        r = torch.div(pos, W, rounding_mode="floor")
        c = pos - r * W
        start = r * (W + 2 * R) + c  # the window's top-left cell, in padded coordinates
        window = padded.gather(1, start.unsqueeze(1) + self.win_offset)  # (B, (R+1)(2R+1))
        img_r = r.unsqueeze(1) + self.win_drow
        img_c = c.unsqueeze(1) + self.win_dcol
        inside = ((img_r >= 0) & (img_c >= 0) & (img_c < W)).to(window.dtype)  # rows below r never occur
        shape = (-1, 1, R + 1, 2 * R + 1)
        logit = self._net(window.view(shape), inside.view(shape))  # (B, 1, 1, 1)
        return bernoulli_logits(logit.view(-1)), (canvas,)


def crop(t: Tensor, k: int) -> Tensor:
    """Drop k rows from the top and k columns from either side: (B, C, h, w) -> (B, C, h-k, w-2k)."""
    return t[:, :, k:, k : t.shape[3] - k]


def clip(h: Tensor, inside: Tensor | None) -> Tensor:
    """Zero the cells of a window that lie outside the image, as the full pass's zero padding is."""
    if inside is None:
        return h
    h_rows, h_cols = h.shape[2], h.shape[3]  # a bottom-centred part of the window
    c = (inside.shape[3] - h_cols) // 2
    return h * inside[:, :, inside.shape[2] - h_rows :, c : c + h_cols]
