"""PixelRNN with Row LSTM layers, over binarized images in raster order.

van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016 (section 3.1, the Row
LSTM); the lecture notes' "像素循环神经网络" (seed 001). LSTM: Hochreiter & Schmidhuber 1997.

    u^1 = conv_A(x)                              (a k0 x k0 convolution with mask A, as the paper's first layer)
    gates^l_r = K^is ⊛ u^l_r + K^ss ⊛ h^l_{r-1}    (row r of layer l, all W columns at once)
    c^l_r = σ(f) ⊙ c^l_{r-1} + σ(i) ⊙ tanh(g),   h^l_r = σ(o) ⊙ tanh(c^l_r)
    u^{l+1} = u^l + h^l                          (residual connections between layers)
    logit = head(u^{L+1}),   p(x = 1 | x_<i) = σ(logit)

This is the paper's Row LSTM itself (not a raster-scan LSTM). K^is is a 1-D convolution along the row with
mask B (columns c - k//2 .. c of the current row of the layer's input, which never holds pixel c itself: mask A
came first); K^ss is a width-k 1-D convolution over the previous row's hidden states. Row r depends on the rows
above only through h_{r-1} and on its own pixels only through the masked row convolutions, so the parallel pass
runs each layer as one loop over the H rows, every column of a row at once. As in the paper, the context is
triangular: the rows above within a cone that widens going up, and the k0//2 + L·(k//2) pixels to the left. The
residual connections add h^l directly (the paper also projects h up to 2h channels; we keep one width h).

The step is incremental and exact. Pixel (r, c) needs, per layer: the layer input u at columns c - k//2 .. c of
row r (columns < c were computed by earlier steps), the hidden states of row r - 1 at c - k//2 .. c + k//2, and
the cell state of row r - 1 at column c. So the state holds, per layer, the current row's inputs `u` and hidden
states `hcur`, the previous row's hidden states `hprev` (hcur becomes hprev when a row starts) and one row of
cell states `c` (column c is read, then overwritten with row r's value). Pixels are kept in a canvas for the
first convolution, evaluated on its (k0//2 + 1) x k0 window only. A step thus costs O(layers · k · h^2), not
a row's recomputation. Only buffer entries written by the current image are ever read (row 0 zeroes the row
above and its cells), so a batch slot can start a new image at position 0 without clearing its state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ARModel, State, bernoulli_logits
from models.pixelcnn import MaskedConv2d, check_image_config


@dataclass(frozen=True)
class PixelRNNConfig:
    height: int = 28  # binarized MNIST
    width: int = 28
    # h: LSTM units, also the width of the residual stream. The paper's Row LSTM uses h = 128 on CIFAR-10;
    # binary 28 x 28 digits need far less. 4 layers of 32 (84k parameters, ~66M MACs per image in 28 sequential
    # row steps per layer) measured ~32 images/s fwd + bwd (batch 32, one thread of the shared 2-core machine):
    # ~2 epochs of the 50k training images an hour, and an 8-minute run already reached 96 nats on validation.
    # h = 48 costs 2x per image for a model that would see half as many.
    hidden: int = 32
    n_layers: int = 4
    first_kernel: int = 7  # the mask-A convolution in front of the LSTM layers, 7 x 7 as in the paper
    kernel: int = 3  # K^ss width; K^is sees kernel // 2 columns to the left and the centre (the paper's k = 3)
    vocab_size: int = 2  # Bernoulli pixels

    def __post_init__(self):
        check_image_config(self, "PixelRNN")

    @property
    def length(self) -> int:
        return self.height * self.width


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Gate pre-activations (..., 4h) and the previous cell (..., h) -> new (hidden, cell)."""
    i, f, o, g = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def row_windows(t: Tensor, left: int, right: int) -> Tensor:
    """(..., W, h) -> (..., W, (left + 1 + right) * h): at column c, columns c-left .. c+right (zeros outside),
    tap-major. A 1-D convolution along the row is then one matmul (faster than conv1d here, backward too)."""
    W = t.shape[-2]
    padded = F.pad(t, (0, 0, left, right))
    return torch.cat([padded[..., j : j + W, :] for j in range(left + 1 + right)], dim=-1)


class RowLSTM(nn.Module):
    def __init__(self, h: int, k: int):
        super().__init__()
        self.p = k // 2
        self.input_to_state = nn.Linear((self.p + 1) * h, 4 * h)  # K^is, mask B: only left and centre taps exist
        self.state_to_state = nn.Linear(k * h, 4 * h, bias=False)  # K^ss over the row above
        with torch.no_grad():  # forget gates start open (bias 1), the usual LSTM initialisation
            self.input_to_state.bias[h : 2 * h] = 1.0
        self.register_buffer("taps", torch.arange(k).view(1, -1, 1), persistent=False)  # (1, k, 1)

    def forward(self, u: Tensor) -> Tensor:
        """The layer input (B, H, W, h) -> its hidden states (B, H, W, h), one row at a time."""
        a = self.input_to_state(row_windows(u, self.p, 0))  # (B, H, W, 4h) for every row at once
        h = c = u.new_zeros(u.shape[0], u.shape[2], u.shape[3])  # (B, W, h): the row above the image
        rows = []
        for a_r in a.unbind(1):  # a static loop over the image height; unbind keeps the backward O(H)
            h, c = lstm_update(a_r + self.state_to_state(row_windows(h, self.p, self.p)), c)
            rows.append(h)
        return torch.stack(rows, dim=1)

    def step(self, u: Tensor, c: Tensor, new_row: Tensor, above: Tensor,
             u_row: Tensor, h_prev: Tensor, h_cur: Tensor, c_row: Tensor) -> tuple[Tensor, ...]:
        """Column c (B,) of the current row, given its input u (B, h) and the row buffers (B, W, h); new_row and
        above (B, 1, 1) say whether c == 0 and whether a row lies above. Returns h (B, h) and the new buffers."""
        p, B, hd = self.p, u.shape[0], u.shape[1]
        col = c.view(-1, 1, 1).expand(-1, 1, hd)  # (B, 1, h)
        u_row = u_row.scatter(1, col, u.unsqueeze(1))
        h_prev = torch.where(new_row, h_cur * above, h_prev)  # a new row: the finished one moves up
        index = (c.view(-1, 1, 1) + self.taps).expand(-1, -1, hd)  # (B, k, h): padded columns c .. c+2p
        win_u = F.pad(u_row, (0, 0, p, 0)).gather(1, index[:, : p + 1])  # (B, p+1, h): columns c-p .. c
        win_h = F.pad(h_prev, (0, 0, p, p)).gather(1, index)  # (B, 2p+1, h): columns c-p .. c+p of the row above
        gates = self.input_to_state(win_u.reshape(B, -1)) + self.state_to_state(win_h.reshape(B, -1))  # (B, 4h)
        h, c_new = lstm_update(gates, (c_row.gather(1, col) * above)[:, 0])  # row 0 has no cell above it
        return h, u_row, h_prev, h_cur.scatter(1, col, h.unsqueeze(1)), c_row.scatter(1, col, c_new.unsqueeze(1))


class PixelRNN(ARModel):
    family = "pixelrnn"
    config_class = PixelRNNConfig
    dist = "bernoulli"

    def __init__(self, config: PixelRNNConfig):
        super().__init__(config)
        h = config.hidden
        self.first = MaskedConv2d(1, h, config.first_kernel, "A")
        self.layers = nn.ModuleList(RowLSTM(h, config.kernel) for _ in range(config.n_layers))
        # The paper's output layers: ReLU and 1 x 1 convolutions, i.e. per-pixel linear maps (channels last here).
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        # The first convolution's window in the padded canvas (flat offsets), as in models/pixelcnn.py.
        R, Wp = config.first_kernel // 2, config.width + 2 * (config.first_kernel // 2)
        rows = torch.arange(R + 1).repeat_interleave(2 * R + 1)  # ((R+1) * (2R+1),)
        cols = torch.arange(2 * R + 1).repeat(R + 1)
        self.register_buffer("win_offset", rows * Wp + cols, persistent=False)

    @classmethod
    def tiny_configs(cls) -> list[PixelRNNConfig]:
        return [
            PixelRNNConfig(height=3, width=3, hidden=4, n_layers=2, first_kernel=3),  # 2^9 images
            PixelRNNConfig(height=4, width=5, hidden=3, n_layers=1, first_kernel=5, kernel=5),
            PixelRNNConfig(height=6, width=7, hidden=5, n_layers=3, first_kernel=7, kernel=3),
        ]

    def state_spec(self):
        cfg = self.config
        row = (cfg.width, cfg.hidden)
        layers = [(f"layer{i}.{name}", row, torch.float32)
                  for i in range(cfg.n_layers) for name in ("u", "hprev", "hcur", "c")]
        return [("canvas", (cfg.height, cfg.width), torch.float32), *layers]

    def _conditionals(self, x: Tensor) -> Tensor:
        cfg = self.config
        u = self.first(x.to(torch.float32).view(-1, 1, cfg.height, cfg.width))  # (B, h, H, W)
        u = u.permute(0, 2, 3, 1)  # (B, H, W, h)
        for layer in self.layers:
            u = u + layer(u)
        return bernoulli_logits(self.head(u).view(-1, cfg.length))  # (B, D, 2)

    def _step(self, x_prev: Tensor, pos: Tensor, state: State) -> tuple[Tensor, State]:
        cfg = self.config
        H, W, R = cfg.height, cfg.width, cfg.first_kernel // 2
        canvas, buffers = state[0], state[1:]
        flat = canvas.reshape(-1, cfg.length)  # (B, D)
        # Write x_{pos-1} into the canvas; at pos == 0 rewrite pixel 0 with its own value.
        prev = (pos - 1).clamp(min=0).unsqueeze(1)  # (B, 1)
        value = torch.where(pos.unsqueeze(1) > 0, x_prev.to(flat.dtype).unsqueeze(1), flat.gather(1, prev))
        canvas = flat.scatter(1, prev, value).view(-1, H, W)
        r = torch.div(pos, W, rounding_mode="floor")
        c = pos - r * W
        # The first convolution at (r, c) only: its (R+1) x (2R+1) window has the target as bottom-centre cell;
        # the canvas's zero padding stands in for the full pass's, and mask A hides the cells not yet drawn.
        padded = F.pad(canvas, (R, R, R, 0)).flatten(1)  # (B, (H+R) * (W+2R))
        window = padded.gather(1, (r * (W + 2 * R) + c).unsqueeze(1) + self.win_offset)  # (B, (R+1)(2R+1))
        u = self.first(window.view(-1, 1, R + 1, 2 * R + 1), pad=False).view(-1, cfg.hidden)  # (B, h)
        new_row = (c == 0).view(-1, 1, 1)
        above = (r > 0).to(u.dtype).view(-1, 1, 1)
        new_state = [canvas]
        for i, layer in enumerate(self.layers):
            h, *bufs = layer.step(u, c, new_row, above, *buffers[4 * i : 4 * i + 4])
            u = u + h
            new_state += bufs
        logit = self.head(u).view(-1)  # (B,)
        return bernoulli_logits(logit), tuple(new_state)
