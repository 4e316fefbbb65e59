#!/usr/bin/env python3
"""The `fashion_dinat` model (and any NAT/DiNAT config of `na_model::Config`) in
plain PyTorch, float32, for eager / torch.compile CPU baselines (for large maps
pass attention="gather": the default dense form is quadratic in tokens).

A transcription of the Rust model, not of the authors' code:

- config: `fashion(true)` of crates/na-model/src/config.rs (`FASHION_DINAT`
  below): embed_dim 32, mlp_ratio 3, depths [2, 2, 4], heads [1, 2, 4],
  kernel 5, dilations [[1, 2], [1, 1], [1, 1, 1, 1]], no layer scale,
  10 classes, 1 input channel, stem strides [1, 2];
- structure: crates/na-model/src/net.rs (`Net::new`, `Net::forward`,
  `Net::block`):
  stem `patch_embed.proj.0` (3x3 conv, stride s0, pad 1, bias, E/2 channels)
  then `patch_embed.proj.1` (3x3, stride s1, pad 1, bias, E channels), no
  activation between them, then `patch_embed.norm` (LayerNorm, channels last);
  per block `x + [g1 *] proj(NA(qkv(norm1(x))))` then
  `x + [g2 *] fc2(GELU(fc1(norm2(x))))` (exact erf GELU); a map smaller than
  `kernel * dilation` on an axis is zero-padded at its end after `norm1` and
  cropped before `proj`; between levels `downsample.reduction` (3x3 conv,
  stride 2, pad 1, no bias, C -> 2C) then `downsample.norm`; final `norm`,
  mean over tokens, `head`. LayerNorm eps 1e-5 everywhere;
- neighborhood attention: SPEC.md's window rule (non-causal, stride 1), the
  same index tables as tools/train_check/one_step.py (whose float64 version
  is the golden fixture of the Rust training step), with relative positional
  bias `rpb [heads, 2k-1, 2k-1]`; q is scaled by head_dim^-0.5. The tables
  are built once per map size, outside timed code. Two evaluations of the
  same function (`attention=`): "dense" (default: N x N scores plus a bias
  matrix of rpb inside each window and -inf outside, softmax, times v; plain
  matmuls; at 28x28, where the levels have 196, 49 and 25 (padded) tokens, it
  was the faster of the two in first eager comparisons) and "gather"
  (one_step.py's: each query's k*k keys and values gathered with
  index_select, linear in N);
- parameter names and shapes: `param_shapes` below, a transcription of
  `na_model::param_shapes` (classifier mode); `state_dict()` has exactly these
  keys, so the Rust-trained weights (crates/na-model/assets/fashion_dinat.safetensors)
  load as they are;
- initialisation: that of `ParamSet::init` (timm's): linear weights and rpb
  from N(0, 0.02) truncated to +-2 std, linear biases 0, convolutions
  PyTorch's default (uniform +-1/sqrt(fan_in), weights and biases), norms 1/0,
  gammas at layer_scale. Same distributions, not the same numbers.

`python model.py --check` checks the parameter count (866,944, what
`na info fashion_dinat` prints) and names, both attention evaluations against
one_step.py's float64 forward, and the shipped weights on the example PNGs
against `na classify` (when ./target/release/na exists).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

LN_EPS = 1e-5

# crates/na-model/src/config.rs, fn fashion(true).
FASHION_DINAT: Dict = {
    "arch": "dinat",
    "embed_dim": 32,
    "mlp_ratio": 3.0,
    "depths": [2, 2, 4],
    "num_heads": [1, 2, 4],
    "kernel_size": 5,
    "dilations": [[1, 2], [1, 1], [1, 1, 1, 1]],
    "layer_scale": None,
    "num_classes": 10,
    "in_chans": 1,
    "stem_strides": [1, 2],
}
# fn fashion(false): the same with dilation 1 everywhere.
FASHION_NAT: Dict = dict(FASHION_DINAT, arch="nat", dilations=None)
PRESETS = {"fashion_dinat": FASHION_DINAT, "fashion_nat": FASHION_NAT}

# `na info fashion_dinat` (and fashion_nat): parameters; 2 x multiply-adds of
# one 28x28 image (`na info fashion_dinat --size 28`: 24,964,352 MACs).
FASHION_PARAMS = 866_944
FASHION_GFLOP_28 = 2 * 24_964_352 / 1e9
IMAGE_SIZE = (28, 28)
# crates/na-model/src/train/run.rs: the trainer's input is (p/255 - mean)/std.
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                   "Shirt", "Sneaker", "Bag", "Ankle boot"]


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def level_dim(cfg: Dict, i: int) -> int:
    return cfg["embed_dim"] << i


def dilation_of(cfg: Dict, i: int, j: int) -> int:
    d = cfg.get("dilations")
    return 1 if d is None else d[i][j]


def stem_strides(cfg: Dict) -> Tuple[int, int]:
    s = cfg.get("stem_strides")
    return (2, 2) if s is None else (int(s[0]), int(s[1]))


def param_shapes(cfg: Dict) -> List[Tuple[str, List[int]]]:
    """`na_model::param_shapes(cfg, false)` for NAT/DiNAT: every weight's name and
    shape, in the Rust layout's order."""
    if cfg["arch"] not in ("nat", "dinat"):
        raise ValueError("only the hierarchical NAT/DiNAT (convolutional stem) is transcribed")
    e, cin, k = cfg["embed_dim"], cfg.get("in_chans", 3), cfg["kernel_size"]
    out = [
        ("patch_embed.proj.0.weight", [e // 2, cin, 3, 3]),
        ("patch_embed.proj.0.bias", [e // 2]),
        ("patch_embed.proj.1.weight", [e, e // 2, 3, 3]),
        ("patch_embed.proj.1.bias", [e]),
        ("patch_embed.norm.weight", [e]),
        ("patch_embed.norm.bias", [e]),
    ]
    n = len(cfg["depths"])
    for i in range(n):
        c, h = level_dim(cfg, i), cfg["num_heads"][i]
        hid = int(c * cfg["mlp_ratio"])
        for j in range(cfg["depths"][i]):
            p = f"levels.{i}.blocks.{j}"
            out += [
                (f"{p}.norm1.weight", [c]), (f"{p}.norm1.bias", [c]),
                (f"{p}.attn.qkv.weight", [3 * c, c]), (f"{p}.attn.qkv.bias", [3 * c]),
                (f"{p}.attn.rpb", [h, 2 * k - 1, 2 * k - 1]),
                (f"{p}.attn.proj.weight", [c, c]), (f"{p}.attn.proj.bias", [c]),
                (f"{p}.norm2.weight", [c]), (f"{p}.norm2.bias", [c]),
                (f"{p}.mlp.fc1.weight", [hid, c]), (f"{p}.mlp.fc1.bias", [hid]),
                (f"{p}.mlp.fc2.weight", [c, hid]), (f"{p}.mlp.fc2.bias", [c]),
            ]
            if cfg.get("layer_scale") is not None:
                out += [(f"{p}.gamma1", [c]), (f"{p}.gamma2", [c])]
        if i + 1 < n:
            p = f"levels.{i}.downsample"
            out += [(f"{p}.reduction.weight", [2 * c, c, 3, 3]),
                    (f"{p}.norm.weight", [2 * c]), (f"{p}.norm.bias", [2 * c])]
    f = level_dim(cfg, n - 1)
    out += [("norm.weight", [f]), ("norm.bias", [f])]
    if cfg["num_classes"] > 0:
        out += [("head.weight", [cfg["num_classes"], f]), ("head.bias", [cfg["num_classes"]])]
    return out


def param_count(cfg: Dict) -> int:
    return sum(math.prod(s) for _, s in param_shapes(cfg))


# --------------------------------------------------------------------------------------
# Neighborhood attention (SPEC.md window rule, non-causal, stride 1)
# --------------------------------------------------------------------------------------


def axis_window(length: int, k: int, d: int) -> Tuple[List[List[int]], List[List[int]]]:
    """Per position on one axis: its k key positions and the k rpb indices
    (tools/train_check/one_step.py's `axis_window`)."""
    keys, bias = [], []
    left, right = k // 2, k // 2 + (k % 2) - 1
    for i in range(length):
        g, ii = i % d, i // d
        lg = length // d + (1 if g < length % d else 0)
        lead = min(ii, lg - 1)
        start = max(lead - left, 0)
        if lead + right >= lg:
            start += lg - right - lead - 1
        js = list(range(start, start + k))
        keys.append([j * d + g for j in js])
        bias.append([j - ii + k - 1 for j in js])
    return keys, bias


def na_tables(h: int, w: int, k: int, d: int) -> Tuple[Tensor, Tensor]:
    """Flat key index [h*w, k*k] (token y*w + x) and flat rpb index [h*w, k*k]
    (into rpb[head].flatten(), (2k-1)^2 entries), window order (ky, kx)."""
    if h < k * d or w < k * d:
        raise ValueError(f"{h}x{w} map is smaller than kernel {k} x dilation {d}")
    ky, by = (torch.tensor(t) for t in axis_window(h, k, d))  # [h, k]
    kx, bx = (torch.tensor(t) for t in axis_window(w, k, d))  # [w, k]
    idx = ky[:, None, :, None] * w + kx[None, :, None, :]  # [h, w, k, k]
    rel = by[:, None, :, None] * (2 * k - 1) + bx[None, :, None, :]
    return idx.reshape(h * w, k * k).contiguous(), rel.reshape(h * w, k * k).contiguous()


ATTENTION = ("dense", "gather")


class NeighborhoodAttention(nn.Module):
    """Keys `qkv` (Linear C -> 3C, bias), `rpb` [heads, 2k-1, 2k-1], `proj`.
    Input: norm1's output [B, H, W, C]; the padding to kernel x dilation and the
    crop happen here, as in `Net::block`.

    Two evaluations of the same function (`attention`):
      "dense"   N x N scores q k^T plus a bias matrix holding rpb inside each
                query's window and -inf outside it, softmax, times v: plain
                matmuls, quadratic in N; at fashion's map sizes (14x14, 7x7,
                5x5 tokens) the faster of the two in eager PyTorch so far;
      "gather"  each query's k*k keys and values gathered by index_select
                (one_step.py's approach), linear in N.
    Both take the window (SPEC.md rule) and the rpb index from `na_tables`."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int,
                 attention: str = "dense"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.proj = nn.Linear(dim, dim)
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r} is not one of {ATTENTION}")
        self.attention = attention
        # (h, w) -> (key index [N, k*k], rpb index [N, k*k], dense bias index
        # [N, N]); filled by prepare() or on first use, never part of state_dict.
        self._tables: Dict[Tuple[int, int], Tuple[Tensor, Tensor, Tensor]] = {}

    def prepare(self, h: int, w: int) -> None:
        """Builds the index tables of an h x w map (after padding) ahead of time."""
        if (h, w) not in self._tables:
            dev = self.rpb.device
            idx, rel = na_tables(h, w, self.kernel_size, self.dilation)
            # Dense: entry (i, j) indexes rpb[head].flatten() when key j is in
            # query i's window, else the extra -inf entry (2k-1)^2.
            dense = torch.full((h * w, h * w), (2 * self.kernel_size - 1) ** 2, dtype=torch.long)
            dense.scatter_(1, idx, rel)
            self._tables[(h, w)] = (idx.to(dev), rel.to(dev), dense.to(dev))

    def forward(self, x: Tensor) -> Tensor:
        b, h0, w0, c = x.shape
        kd = self.kernel_size * self.dilation
        h, w = max(h0, kd), max(w0, kd)
        if (h, w) != (h0, w0):
            # Zero tokens at the end of each short axis (their qkv is qkv.bias).
            x = F.pad(x, (0, 0, 0, w - w0, 0, h - h0))
        self.prepare(h, w)
        idx, rel, dense = self._tables[(h, w)]
        n, nh, hd, kk = h * w, self.num_heads, self.head_dim, self.kernel_size ** 2
        qkv = self.qkv(x).reshape(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, hd]
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        if self.attention == "dense":
            ext = torch.cat([self.rpb.reshape(nh, -1),
                             self.rpb.new_full((nh, 1), float("-inf"))], dim=1)
            # Scores [B, heads, N, N]; exp(-inf) = 0 outside each query's window.
            attn = torch.softmax(q @ k.transpose(-1, -2) + ext[:, dense], dim=-1)
            out = attn @ v  # [B, heads, N, hd]
        else:
            flat = idx.reshape(-1)
            kw = k.index_select(2, flat).view(b, nh, n, kk, hd)
            vw = v.index_select(2, flat).view(b, nh, n, kk, hd)
            logits = (q.unsqueeze(3) @ kw.transpose(-1, -2)).squeeze(3)  # [B, heads, N, kk]
            attn = torch.softmax(logits + self.rpb.reshape(nh, -1)[:, rel], dim=-1)
            out = (attn.unsqueeze(3) @ vw).squeeze(3)  # [B, heads, N, hd]
        out = out.transpose(1, 2).reshape(b, h, w, c)
        if (h, w) != (h0, w0):
            out = out[:, :h0, :w0]
        return self.proj(out)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf), as na_model::ops::act
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """`levels.{i}.blocks.{j}`: norm1, attn, norm2, mlp [, gamma1, gamma2]."""

    def __init__(self, dim, num_heads, kernel_size, dilation, mlp_ratio, layer_scale,
                 attention="dense"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = NeighborhoodAttention(dim, num_heads, kernel_size, dilation, attention)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_scale:
            x = x + self.gamma1 * self.attn(self.norm1(x))
            return x + self.gamma2 * self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvStem(nn.Module):
    """`patch_embed.proj.{0,1}` (3x3 convs, pad 1, bias, strides s0, s1, no
    activation between them) and `patch_embed.norm` (channels last)."""

    def __init__(self, in_chans: int, embed_dim: int, strides: Tuple[int, int]):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, 3, stride=strides[0], padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=strides[1], padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """`levels.{i}.downsample`: reduction (3x3, stride 2, pad 1, no bias, C -> 2C), norm."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Level(nn.Module):
    def __init__(self, cfg: Dict, i: int, downsample: bool, attention: str):
        super().__init__()
        dim = level_dim(cfg, i)
        self.blocks = nn.ModuleList(
            Block(dim, cfg["num_heads"][i], cfg["kernel_size"], dilation_of(cfg, i, j),
                  cfg["mlp_ratio"], cfg.get("layer_scale"), attention)
            for j in range(cfg["depths"][i])
        )
        self.downsample = ConvDownsampler(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class DiNAT(nn.Module):
    """Classifier: input [B, in_chans, H, W] (NCHW), logits [B, num_classes]."""

    def __init__(self, cfg: Dict, image_size: Optional[Tuple[int, int]] = IMAGE_SIZE,
                 attention: str = "dense"):
        super().__init__()
        self.cfg = dict(cfg)
        n = len(cfg["depths"])
        self.patch_embed = ConvStem(cfg.get("in_chans", 3), cfg["embed_dim"], stem_strides(cfg))
        self.levels = nn.ModuleList(Level(cfg, i, i < n - 1, attention) for i in range(n))
        nf = level_dim(cfg, n - 1)
        self.norm = nn.LayerNorm(nf, eps=LN_EPS)
        self.head = nn.Linear(nf, cfg["num_classes"]) if cfg["num_classes"] > 0 else nn.Identity()
        self.reset_parameters()
        if image_size is not None:
            self.prepare(*image_size)

    def reset_parameters(self) -> None:
        """`ParamSet::init`'s distributions (convolutions keep PyTorch's default)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, NeighborhoodAttention):
                nn.init.trunc_normal_(m.rpb, std=0.02, a=-0.04, b=0.04)

    def level_sizes(self, h: int, w: int) -> List[Tuple[int, int]]:
        """Map size of every level for an h x w input (as `na_model::analyze`)."""
        def conv_out(n, s):
            return (n + 2 - 3) // s + 1
        s0, s1 = stem_strides(self.cfg)
        h, w = conv_out(conv_out(h, s0), s1), conv_out(conv_out(w, s0), s1)
        out = []
        for i in range(len(self.cfg["depths"])):
            out.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        return out

    def prepare(self, h: int, w: int) -> None:
        """Builds every attention index table of an h x w input (outside timed code)."""
        for level, (lh, lw) in zip(self.levels, self.level_sizes(h, w)):
            for blk in level.blocks:
                kd = blk.attn.kernel_size * blk.attn.dilation
                blk.attn.prepare(max(lh, kd), max(lw, kd))

    def _apply(self, fn, *args, **kwargs):
        # Keep the index tables on the parameters' device.
        out = super()._apply(fn, *args, **kwargs)
        for m in self.modules():
            if isinstance(m, NeighborhoodAttention):
                m._tables = {k: tuple(t.to(m.rpb.device) for t in v)
                             for k, v in m._tables.items()}
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        x = self.norm(x).mean(dim=(1, 2))
        return self.head(x)


def build(name_or_cfg="fashion_dinat", image_size=IMAGE_SIZE, seed: Optional[int] = 0,
          attention: str = "dense") -> DiNAT:
    """A model of a preset name (`fashion_dinat`, `fashion_nat`) or config dict,
    freshly initialised (seeded when `seed` is not None), with the `attention`
    evaluation "dense" or "gather" (see NeighborhoodAttention)."""
    cfg = PRESETS[name_or_cfg] if isinstance(name_or_cfg, str) else name_or_cfg
    if seed is not None:
        torch.manual_seed(seed)
    m = DiNAT(cfg, image_size, attention)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    want = {k: tuple(s) for k, s in param_shapes(cfg)}
    assert got == want, ("state_dict differs from na_model::param_shapes: "
                         f"{set(got.items()) ^ set(want.items())}")
    return m


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def load_weights(m: DiNAT, path: str) -> DiNAT:
    """Loads a safetensors file with the Rust/authors' key names (strict)."""
    from safetensors.torch import load_file

    m.load_state_dict(load_file(path), strict=True)
    return m


def decay_groups(m: nn.Module, weight_decay: float):
    """AdamW parameter groups as `na_model::train::AdamW`: weight decay on matrices
    and convolution kernels only (not norms, biases, rpb, gammas)."""
    decay, rest = [], []
    for n, p in m.named_parameters():
        (decay if p.ndim >= 2 and not n.endswith(".rpb") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------


def _read_png_grey(path: str) -> Tensor:
    from PIL import Image
    import numpy as np

    img = Image.open(path).convert("L")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def check() -> int:
    import re
    import subprocess

    ok = True
    m = build("fashion_dinat")
    n = count_params(m)
    print(f"parameters {n:,} (na info fashion_dinat: {FASHION_PARAMS:,}); "
          f"state_dict names and shapes equal na_model::param_shapes")
    assert n == FASHION_PARAMS == param_count(FASHION_DINAT)
    assert count_params(build("fashion_nat")) == FASHION_PARAMS

    # 1. Both attention evaluations against one_step.py's float64 forward (the
    #    Rust training step's golden fixture), random weights, whole model,
    #    float64: logits and every parameter's gradient of a cross-entropy.
    sys.path.insert(0, os.path.join(REPO, "tools", "train_check"))
    import one_step  # noqa: E402

    torch.manual_seed(3)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([1, 7, 4])
    ref_m = build("fashion_dinat", seed=3).double()
    with torch.no_grad():
        for q in ref_m.parameters():  # not small, so attention and rpb matter
            q.add_(0.1 * torch.randn_like(q))
    p = {k: v.clone().requires_grad_(True) for k, v in ref_m.state_dict().items()}
    ones = {}
    for name in p:
        if name.endswith(".norm1.weight"):
            pre, c = name[: -len(".norm1.weight")], p[name].shape[0]
            ones[f"{pre}.gamma1"] = ones[f"{pre}.gamma2"] = torch.ones(c, dtype=torch.float64)
    ref = one_step.forward({**p, **ones}, x, FASHION_DINAT)
    F.cross_entropy(ref, labels, label_smoothing=0.1).backward()
    for att in ATTENTION:
        m64 = build("fashion_dinat", attention=att).double()
        m64.load_state_dict(ref_m.state_dict())
        got = m64(x)
        F.cross_entropy(got, labels, label_smoothing=0.1).backward()
        err = (got - ref).abs().max().item() / ref.abs().max().item()
        gerr = max((q.grad - p[k].grad).abs().max().item() / p[k].grad.abs().max().item()
                   for k, q in m64.named_parameters())
        print(f"float64, attention {att!r}, vs tools/train_check/one_step.py: logits max rel. "
              f"difference {err:.1e}, gradients {gerr:.1e} (worst tensor, relative to its max)")
        ok &= err < 1e-12 and gerr < 1e-10

    # 2. Shipped weights on the example PNGs against `na classify`.
    weights = os.path.join(REPO, "crates", "na-model", "assets", "fashion_dinat.safetensors")
    folder = os.path.join(REPO, "examples", "fashion")
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    paths = [os.path.join(folder, f) for f in pngs]
    px = torch.stack([_read_png_grey(q) for q in paths]).float()
    x = ((px / 255.0 - FASHION_MEAN) / FASHION_STD).unsqueeze(1)
    na = os.path.join(REPO, "target", "release", "na")
    theirs = {}
    if os.path.exists(na):
        out = subprocess.run([na, "classify", "--threads", "1", "--top-k", "3", *paths],
                             capture_output=True, text=True)
        for line in out.stdout.splitlines():
            path, _, rest = line.partition(": ")
            theirs[os.path.basename(path)] = [
                (c.strip(), float(v)) for c, v in re.findall(r"([^,]+?) ([0-9.]+)%", rest)]
        ok &= len(theirs) == len(pngs)
    else:
        print(f"{na} not built: the comparison with na classify is left out")
    for att in ATTENTION:
        m = load_weights(build("fashion_dinat", attention=att), weights).eval()
        with torch.inference_mode():
            top = torch.softmax(m(x), dim=-1).topk(3, dim=-1)
        right = sum(FASHION_CLASSES[int(i[0])].replace("/", "-").replace(" ", "-") in f
                    for f, i in zip(pngs, top.indices))
        line = (f"shipped weights, attention {att!r}: {right}/{len(pngs)} example PNGs "
                f"classified as their file name says")
        ok &= right == len(pngs)
        if theirs:
            worst, same = 0.0, 0
            for f, v, i in zip(pngs, top.values, top.indices):
                ours = [(FASHION_CLASSES[j], 100 * float(s)) for s, j in zip(v, i)]
                t = theirs.get(f, [])
                if [a[0] for a in t] == [b[0] for b in ours]:
                    same += 1
                else:
                    print(f"  differs: {f}: na {t}, torch {ours}")
                worst = max([worst] + [abs(a[1] - b[1]) for a, b in zip(t, ours)])
            line += (f"; against `na classify`: same top-3 classes on {same}/{len(pngs)}, "
                     f"largest probability difference {worst:.2f} points (na prints 0.1)")
            ok &= same == len(pngs) and worst <= 0.1
        print(line)
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(check())
    m = build("fashion_dinat")
    print(m)
    print(f"parameters: {count_params(m):,}")
