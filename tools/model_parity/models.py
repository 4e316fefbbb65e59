"""PyTorch reference for NAT, DiNAT, DiNAT_s and isotropic NAT/DiNAT.

Written from the facts in /work/shared/MODELS.md and SPEC.md, checked against the
authors' code (SHI-Labs/Neighborhood-Attention-Transformer: classification/nat.py,
dinat.py, dinats.py, isotropic.py, detection/nat.py).  Module and parameter names
are chosen so that ``state_dict()`` has exactly the authors' checkpoint keys.

Attention runs on NATTEN 0.17.5's unfused CPU ops (``natten.functional.na2d_qk``
with ``rpb`` and ``natten.functional.na2d_av``), called the way NATTEN 0.17.5's
``NeighborhoodAttention2D`` module calls them (q scaled before QK, softmax in
between).  NATTEN 0.17.5's module no longer pads small feature maps (it raises);
the checkpoints were trained with NATTEN <= 0.14, whose module zero-padded the
normalised input at the end of each axis up to ``kernel_size * dilation`` and
cropped before ``proj``.  ``NeighborhoodAttention`` below does that, which is
also what HuggingFace's ``NatLayer.maybe_pad`` / ``DinatLayer.maybe_pad`` do.

Configuration schema (shared with the Rust side, ``na_model::Config``)::

    {"arch": "nat" | "dinat" | "dinat_s" | "isotropic", "embed_dim": 16,
     "mlp_ratio": 3.0, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
     "kernel_size": 7, "dilations": [[1, 2], [1], [1, 2], [1]] | null,
     "layer_scale": 1e-5 | null, "num_classes": 10, "in_chans": 3}

Run ``python models.py`` to self-test NATTEN's ops against a plain-torch
implementation of SPEC.md's window rule.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from natten.functional import na2d_av, na2d_qk

CONFIG_KEYS = (
    "arch",
    "embed_dim",
    "mlp_ratio",
    "depths",
    "num_heads",
    "kernel_size",
    "dilations",
    "layer_scale",
    "num_classes",
    "in_chans",
)
ARCHS = ("nat", "dinat", "dinat_s", "isotropic")
LN_EPS = 1e-5  # torch default, what the authors' nn.LayerNorm uses


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def normalize_config(cfg: Dict) -> Dict:
    """Fills defaults, checks every field and returns a new dict with exactly CONFIG_KEYS."""
    unknown = set(cfg) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    c = {
        "arch": cfg["arch"],
        "embed_dim": int(cfg["embed_dim"]),
        "mlp_ratio": float(cfg["mlp_ratio"]),
        "depths": [int(d) for d in cfg["depths"]],
        "num_heads": [int(h) for h in cfg["num_heads"]],
        "kernel_size": int(cfg["kernel_size"]),
        "dilations": cfg.get("dilations"),
        "layer_scale": cfg.get("layer_scale"),
        "num_classes": int(cfg["num_classes"]),
        "in_chans": int(cfg.get("in_chans", 3)),
    }
    if c["arch"] not in ARCHS:
        raise ValueError(f"arch {c['arch']!r} not in {ARCHS}")
    levels = 1 if c["arch"] == "isotropic" else 4
    if len(c["depths"]) != levels or len(c["num_heads"]) != levels:
        raise ValueError(f"{c['arch']} needs {levels} entries in depths and num_heads")
    if c["dilations"] is not None:
        c["dilations"] = [[int(x) for x in lvl] for lvl in c["dilations"]]
        if [len(x) for x in c["dilations"]] != c["depths"]:
            raise ValueError("dilations must give one value per block of every level")
    if c["layer_scale"] is not None:
        c["layer_scale"] = float(c["layer_scale"])
        if c["arch"] in ("dinat_s", "isotropic"):
            raise ValueError("the authors' DiNAT_s and isotropic models have no layer scale")
    for i in range(levels):
        dim = level_dim(c, i)
        if dim % c["num_heads"][i]:
            raise ValueError(f"level {i}: {dim} channels do not split into {c['num_heads'][i]} heads")
    return c


def level_dim(cfg: Dict, i: int) -> int:
    return cfg["embed_dim"] if cfg["arch"] == "isotropic" else cfg["embed_dim"] * 2**i


def dilation_of(cfg: Dict, i: int, j: int) -> int:
    return 1 if cfg["dilations"] is None else cfg["dilations"][i][j]


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------


class NeighborhoodAttention(nn.Module):
    """Keys ``qkv`` (Linear C -> 3C, bias), ``rpb`` [heads, 2k-1, 2k-1], ``proj``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, H, W, C), already through norm1
        b, h0, w0, c = x.shape
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - h0), max(0, window - w0)
        if pad_h or pad_w:
            # zero-pad at the end of each short axis; padded tokens get qkv = qkv.bias
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, h, w, _ = x.shape
        qkv = (
            self.qkv(x)
            .reshape(b, h, w, 3, self.num_heads, self.head_dim)
            .permute(3, 0, 4, 1, 2, 5)  # (3, B, heads, H, W, hd)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = na2d_qk(q, k, kernel_size=self.kernel_size, dilation=self.dilation, rpb=self.rpb)
        attn = attn.softmax(dim=-1)  # (B, heads, H, W, k*k)
        x = na2d_av(attn, v, kernel_size=self.kernel_size, dilation=self.dilation)
        x = x.permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        if pad_h or pad_w:
            x = x[:, :h0, :w0, :]
        return self.proj(x)


class Mlp(nn.Module):
    """Keys ``fc1``, ``fc2``; exact (erf) GELU between them."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NATLayer(nn.Module):
    """One block: ``norm1``, ``attn``, ``norm2``, ``mlp`` and optional ``gamma1``/``gamma2``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        mlp_ratio: float,
        layer_scale: Optional[float],
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = NeighborhoodAttention(dim, num_heads, kernel_size, dilation)
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


# --------------------------------------------------------------------------------------
# NAT / DiNAT (hierarchical, convolutional tokenizer and downsampler)
# --------------------------------------------------------------------------------------


class ConvTokenizer(nn.Module):
    """``patch_embed.proj.{0,1}`` (3x3 stride-2 pad-1 convs, bias, no activation), ``patch_embed.norm``."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, ceil(H/4), ceil(W/4), E)


class ConvDownsampler(nn.Module):
    """``downsample.reduction`` (3x3 stride-2 pad-1 conv C -> 2C, no bias), ``downsample.norm``."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATLevel(nn.Module):
    """``levels.{i}``: ``blocks.{j}`` then, except on the last level, ``downsample``."""

    def __init__(self, cfg: Dict, i: int, downsample: bool):
        super().__init__()
        dim = level_dim(cfg, i)
        self.blocks = nn.ModuleList(
            NATLayer(
                dim,
                cfg["num_heads"][i],
                cfg["kernel_size"],
                dilation_of(cfg, i, j),
                cfg["mlp_ratio"],
                cfg["layer_scale"],
            )
            for j in range(cfg["depths"][i])
        )
        self.downsample = ConvDownsampler(dim) if downsample else None

    def forward(self, x: Tensor):
        for blk in self.blocks:
            x = blk(x)
        before = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, before


class NAT(nn.Module):
    """Classifier (``norm``, ``head``) or, with ``backbone=True``, the authors' detection
    backbone (per-level ``norm0..norm3`` on each level's output before its downsample,
    NCHW outputs, no ``norm``/``head``)."""

    def __init__(self, cfg: Dict, backbone: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        n = len(cfg["depths"])
        self.patch_embed = ConvTokenizer(cfg["in_chans"], cfg["embed_dim"])
        self.levels = nn.ModuleList(NATLevel(cfg, i, i < n - 1) for i in range(n))
        if backbone:
            for i in range(n):
                self.add_module(f"norm{i}", nn.LayerNorm(level_dim(cfg, i), eps=LN_EPS))
        else:
            nf = level_dim(cfg, n - 1)
            self.norm = nn.LayerNorm(nf, eps=LN_EPS)
            self.head = nn.Linear(nf, cfg["num_classes"]) if cfg["num_classes"] > 0 else nn.Identity()

    def forward(self, x: Tensor):
        x = self.patch_embed(x)
        if self.backbone:
            outs = []
            for i, level in enumerate(self.levels):
                x, before = level(x)
                outs.append(getattr(self, f"norm{i}")(before).permute(0, 3, 1, 2).contiguous())
            return outs
        for level in self.levels:
            x, _ = level(x)
        x = self.norm(x).flatten(1, 2).mean(dim=1)
        return self.head(x)


# --------------------------------------------------------------------------------------
# DiNAT_s (Swin-like: patchified embedding and patch merging)
# --------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """``patch_embed.proj`` (p x p conv, stride p, bias) + ``patch_embed.norm``; the input is
    zero-padded right/bottom to a multiple of p first."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        _, _, h, w = x.shape
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """``downsample.reduction`` (Linear 4C -> 2C, no bias) after ``downsample.norm`` (4C).
    Odd H/W are zero-padded at the bottom/right; the 2x2 neighbours are concatenated
    in the order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """``layers.{i}``: ``blocks.{j}`` then, except on the last level, ``downsample``."""

    def __init__(self, cfg: Dict, i: int, downsample: bool):
        super().__init__()
        dim = level_dim(cfg, i)
        self.blocks = nn.ModuleList(
            NATLayer(dim, cfg["num_heads"][i], cfg["kernel_size"], dilation_of(cfg, i, j), cfg["mlp_ratio"], None)
            for j in range(cfg["depths"][i])
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class DiNATs(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.cfg = cfg
        n = len(cfg["depths"])
        self.patch_embed = PatchEmbed(4, cfg["in_chans"], cfg["embed_dim"])
        self.layers = nn.ModuleList(BasicLayer(cfg, i, i < n - 1) for i in range(n))
        nf = level_dim(cfg, n - 1)
        self.norm = nn.LayerNorm(nf, eps=LN_EPS)
        self.head = nn.Linear(nf, cfg["num_classes"]) if cfg["num_classes"] > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x).flatten(1, 2).mean(dim=1)
        return self.head(x)


# --------------------------------------------------------------------------------------
# Isotropic NAT / DiNAT
# --------------------------------------------------------------------------------------


class NATIsotropic(nn.Module):
    """16x16 patch embedding (+ norm), ``layers.{i}`` blocks (an nn.Sequential), ``norm``, ``head``.

    The authors' forward reshapes the patch grid to ``img_size // 16`` squared (14x14 for
    their 224 checkpoints); here the grid is used as the patch embedding produces it,
    which is the same thing whenever the authors' code runs at all."""

    def __init__(self, cfg: Dict):
        super().__init__()
        self.cfg = cfg
        e = cfg["embed_dim"]
        self.patch_embed = PatchEmbed(16, cfg["in_chans"], e)
        self.layers = nn.Sequential(
            *[
                NATLayer(e, cfg["num_heads"][0], cfg["kernel_size"], dilation_of(cfg, 0, j), cfg["mlp_ratio"], None)
                for j in range(cfg["depths"][0])
            ]
        )
        self.norm = nn.LayerNorm(e, eps=LN_EPS)
        self.head = nn.Linear(e, cfg["num_classes"]) if cfg["num_classes"] > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.patch_embed(x))
        x = self.norm(x.flatten(1, 2)).mean(dim=1)
        return self.head(x)


def build_model(cfg: Dict, backbone: bool = False) -> nn.Module:
    cfg = normalize_config(cfg)
    if backbone and cfg["arch"] not in ("nat", "dinat"):
        raise ValueError("backbone mode exists for the hierarchical NAT/DiNAT only")
    if cfg["arch"] in ("nat", "dinat"):
        return NAT(cfg, backbone=backbone)
    if cfg["arch"] == "dinat_s":
        return DiNATs(cfg)
    return NATIsotropic(cfg)


# --------------------------------------------------------------------------------------
# HuggingFace key names (transformers' modeling_nat.py / modeling_dinat.py)
# --------------------------------------------------------------------------------------


def to_hf_state_dict(sd: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Renames an authors' NAT/DiNAT classifier state dict to HuggingFace's
    ``NatForImageClassification`` (prefix "nat") / ``DinatForImageClassification``
    (prefix "dinat") names; qkv is split into query/key/value, gamma1/gamma2 are
    stacked into ``layer_scale_parameters`` [2, C]."""
    out: Dict[str, Tensor] = {}
    done = set()
    for key, t in sd.items():
        if key in done:
            continue
        parts = key.split(".")
        if key.startswith("patch_embed.proj."):
            out[f"{prefix}.embeddings.patch_embeddings.projection." + ".".join(parts[2:])] = t
        elif key.startswith("patch_embed.norm."):
            out[f"{prefix}.embeddings.norm.{parts[-1]}"] = t
        elif key.startswith("norm."):
            out[f"{prefix}.layernorm.{parts[-1]}"] = t
        elif key.startswith("head."):
            out[f"classifier.{parts[-1]}"] = t
        elif parts[0] == "levels" and parts[2] == "downsample":
            out[f"{prefix}.encoder.levels.{parts[1]}.downsample." + ".".join(parts[3:])] = t
        elif parts[0] == "levels" and parts[2] == "blocks":
            i, j, rest = parts[1], parts[3], ".".join(parts[4:])
            base = f"{prefix}.encoder.levels.{i}.layers.{j}."
            if rest.startswith("norm1."):
                out[base + "layernorm_before." + parts[-1]] = t
            elif rest.startswith("norm2."):
                out[base + "layernorm_after." + parts[-1]] = t
            elif rest == "attn.rpb":
                out[base + "attention.self.rpb"] = t
            elif rest.startswith("attn.qkv."):
                q, k, v = t.chunk(3, dim=0)
                for name, part in (("query", q), ("key", k), ("value", v)):
                    out[base + f"attention.self.{name}.{parts[-1]}"] = part.clone()
            elif rest.startswith("attn.proj."):
                out[base + "attention.output.dense." + parts[-1]] = t
            elif rest.startswith("mlp.fc1."):
                out[base + "intermediate.dense." + parts[-1]] = t
            elif rest.startswith("mlp.fc2."):
                out[base + "output.dense." + parts[-1]] = t
            elif rest in ("gamma1", "gamma2"):
                g1 = sd[key.rsplit(".", 1)[0] + ".gamma1"]
                g2 = sd[key.rsplit(".", 1)[0] + ".gamma2"]
                out[base + "layer_scale_parameters"] = torch.stack([g1, g2])
                done.add(key.rsplit(".", 1)[0] + ".gamma1")
                done.add(key.rsplit(".", 1)[0] + ".gamma2")
            else:
                raise KeyError(key)
        else:
            raise KeyError(f"no HuggingFace name for {key}")
    return out


def from_hf_state_dict(sd: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Inverse of ``to_hf_state_dict`` (used to check that the renaming round-trips)."""
    out: Dict[str, Tensor] = {}
    qkv: Dict[str, Dict[str, Tensor]] = {}
    p = prefix + "."
    for key, t in sd.items():
        last = key.split(".")[-1]
        if key.startswith("classifier."):
            out["head." + last] = t
            continue
        if not key.startswith(p):
            raise KeyError(key)
        parts = key[len(p):].split(".")
        if parts[:2] == ["embeddings", "patch_embeddings"]:
            out["patch_embed.proj." + ".".join(parts[3:])] = t
        elif parts[:2] == ["embeddings", "norm"]:
            out["patch_embed.norm." + last] = t
        elif parts[0] == "layernorm":
            out["norm." + last] = t
        elif parts[:2] == ["encoder", "levels"] and parts[3] == "downsample":
            out[f"levels.{parts[2]}.downsample." + ".".join(parts[4:])] = t
        elif parts[:2] == ["encoder", "levels"] and parts[3] == "layers":
            i, j, rest = parts[2], parts[4], ".".join(parts[5:])
            base = f"levels.{i}.blocks.{j}."
            if rest.startswith("layernorm_before."):
                out[base + "norm1." + last] = t
            elif rest.startswith("layernorm_after."):
                out[base + "norm2." + last] = t
            elif rest == "attention.self.rpb":
                out[base + "attn.rpb"] = t
            elif rest.startswith("attention.self."):
                qkv.setdefault(base + "attn.qkv." + last, {})[parts[-2]] = t
            elif rest.startswith("attention.output.dense."):
                out[base + "attn.proj." + last] = t
            elif rest.startswith("intermediate.dense."):
                out[base + "mlp.fc1." + last] = t
            elif rest.startswith("output.dense."):
                out[base + "mlp.fc2." + last] = t
            elif rest == "layer_scale_parameters":
                out[base + "gamma1"] = t[0].clone()
                out[base + "gamma2"] = t[1].clone()
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    for key, d in qkv.items():
        out[key] = torch.cat([d["query"], d["key"], d["value"]], dim=0)
    return out


# --------------------------------------------------------------------------------------
# Self-test: NATTEN's ops against a plain-torch version of SPEC.md
# --------------------------------------------------------------------------------------


def _window_starts(length: int, k: int, d: int) -> List[int]:
    """SPEC.md's non-causal, stride-1 window: first in-group index for every coordinate."""
    starts = []
    left, right = k // 2, k // 2 + k % 2 - 1
    for i in range(length):
        g, ii = i % d, i // d
        lg = length // d + (1 if g < length % d else 0)
        lead = min(ii, lg - 1)
        start = max(lead - left, 0)
        if lead + right >= lg:
            start += lg - right - lead - 1
        starts.append(start)
    return starts


def reference_na2d(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor, ks: int, dil: int) -> Tensor:
    """q, k, v: (B, heads, H, W, D), q already scaled. Returns (B, heads, H, W, D)."""
    b, nh, h, w, _ = q.shape
    sh, sw = _window_starts(h, ks, dil), _window_starts(w, ks, dil)
    out = torch.empty_like(v)
    for y in range(h):
        ys = [(sh[y] + a) * dil + y % dil for a in range(ks)]
        for x in range(w):
            xs = [(sw[x] + a) * dil + x % dil for a in range(ks)]
            kk = k[:, :, ys][:, :, :, xs]  # (B, nh, ks, ks, D)
            vv = v[:, :, ys][:, :, :, xs]
            logits = torch.einsum("bnd,bnijd->bnij", q[:, :, y, x], kk)
            bi = torch.tensor([yy // dil - y // dil + ks - 1 for yy in ys])
            bj = torch.tensor([xx // dil - x // dil + ks - 1 for xx in xs])
            logits = logits + rpb[:, bi][:, :, bj]
            p = logits.flatten(2).softmax(-1).view_as(logits)
            out[:, :, y, x] = torch.einsum("bnij,bnijd->bnd", p, vv)
    return out


def _selftest() -> None:
    torch.manual_seed(0)
    cases = [(9, 8, 7, 1), (14, 12, 5, 2), (13, 7, 3, 2), (7, 7, 7, 1), (20, 16, 3, 5), (11, 15, 3, 3)]
    for h, w, ks, dil in cases:
        q = torch.randn(2, 3, h, w, 4, dtype=torch.float64)
        k, v = torch.randn_like(q), torch.randn_like(q)
        rpb = torch.randn(3, 2 * ks - 1, 2 * ks - 1, dtype=torch.float64)
        attn = na2d_qk(q, k, kernel_size=ks, dilation=dil, rpb=rpb).softmax(-1)
        got = na2d_av(attn, v, kernel_size=ks, dilation=dil)
        want = reference_na2d(q, k, v, rpb, ks, dil)
        err = (got - want).abs().max().item()
        print(f"na2d H={h} W={w} k={ks} d={dil}: max |natten - SPEC| = {err:.2e}")
        assert err < 1e-12, err
        # the check has teeth: a transposed bias table is caught
        bad = reference_na2d(q, k, v, rpb.transpose(1, 2).flip(1), ks, dil)
        assert (got - bad).abs().max().item() > 1e-3
    # HF renaming round trip
    cfg = {"arch": "dinat", "embed_dim": 16, "mlp_ratio": 2.0, "depths": [1, 1, 2, 1],
           "num_heads": [1, 2, 2, 4], "kernel_size": 5, "dilations": [[2], [1], [1, 2], [1]],
           "layer_scale": 0.5, "num_classes": 7, "in_chans": 3}
    sd = build_model(cfg).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(sd, "dinat"), "dinat")
    assert set(back) == set(sd), set(back) ^ set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    print("HF renaming round-trips")


if __name__ == "__main__":
    _selftest()
