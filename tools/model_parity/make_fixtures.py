"""Writes the model-parity fixtures of crates/na-model/tests/fixtures/models/.

Usage (from the repository root):

    .venv-natten0175/bin/python tools/model_parity/make_fixtures.py [--out DIR] [--sensitivity]

Every case is a tiny model of models.py with random normal weights (not the init
defaults), stored as float32 safetensors with the authors' key names (or HuggingFace's
for the "hf" cases), an input [B, 3, H, W] float32 .npy, and the model's output run in
float64 from those exact float32 weights and inputs, stored as float32 .npy (logits
[B, classes], or four NCHW feature maps for the backbone case).  manifest.json lists
the cases.  The output is deterministic (fixed seeds, CPU float64).

--sensitivity also prints, for each case, how far the outputs move under plausible
implementation mistakes (padding before norm1, transposed rpb, wrong merge order...),
to show that the 1e-3 tolerance catches them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "crates", "na-model", "tests", "fixtures", "models")


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


def cfg(arch, e, depths, heads, k=7, r=3.0, dil=None, ls=None, classes=10):
    return {
        "arch": arch,
        "embed_dim": e,
        "mlp_ratio": r,
        "depths": depths,
        "num_heads": heads,
        "kernel_size": k,
        "dilations": dil,
        "layer_scale": ls,
        "num_classes": classes,
        "in_chans": 3,
    }


CASES: List[Dict] = [
    {
        "name": "nat_k7",
        "config": cfg("nat", 8, [1, 1, 1, 1], [1, 2, 2, 4], k=7, r=2.0),
        "input": [1, 3, 64, 64],
        "description": "NAT k=7 on a square 64x64 input: maps 16, 8, 4, 2 (the padding rule at levels 2 and 3)",
    },
    {
        "name": "nat_k5_layerscale_b2",
        "config": cfg("nat", 8, [1, 1, 1, 1], [1, 2, 2, 4], k=5, r=3.0, ls=1e-5),
        "input": [2, 3, 72, 56],
        "description": "NAT k=5 with layer scale (gamma1/gamma2), batch 2, non-square 72x56: maps 18x14, 9x7, "
        "5x4 (only W padded), 3x2 (both padded)",
    },
    {
        "name": "dinat_dilated",
        "config": cfg("dinat", 8, [2, 2, 2, 1], [1, 2, 2, 4], k=7, r=2.0, dil=[[1, 3], [1, 2], [1, 2], [1]]),
        "input": [1, 3, 112, 96],
        "description": "DiNAT with dilations 3 and 2 on 112x96: 28x24 (d=3, groups of unequal length), "
        "14x12 (d=2 pads W to 14), 7x6 (d=1 pads W to 7, d=2 pads both to 14), 4x3",
    },
    {
        "name": "dinat_odd_hf",
        "config": cfg("dinat", 8, [1, 1, 2, 1], [1, 2, 2, 4], k=7, r=2.0, dil=[[2], [1], [1, 2], [1]], ls=1e-5),
        "input": [1, 3, 77, 61],
        "naming": "hf",
        "hf_prefix": "dinat",
        "description": "DiNAT with layer scale saved with HuggingFace names (dinat.*, split query/key/value, "
        "layer_scale_parameters [2, C]) on an odd 77x61 input: the stride-2 convs give ceil sizes "
        "39x31 -> 20x16, then 10x8, 5x4, 3x2",
    },
    {
        "name": "dinat_s_odd_b2",
        "config": cfg("dinat_s", 8, [2, 1, 2, 1], [1, 2, 2, 4], k=7, r=2.0, dil=[[1, 2], [1], [1, 2], [1]]),
        "input": [2, 3, 61, 75],
        "description": "DiNAT_s, batch 2, 61x75: the patch embedding pads to 64x76 -> 16x19; merging pads W "
        "(19 -> 20) -> 8x10 -> 4x5, pads W again (5 -> 6) -> 2x3; padding rule at levels 2 and 3",
    },
    {
        "name": "isotropic_nat",
        "config": cfg("isotropic", 16, [4], [2], k=7, r=4.0, dil=[[1, 1, 1, 1]]),
        "input": [1, 3, 100, 100],
        "pth": True,
        "description": "isotropic NAT: 100x100 zero-padded to 112 by the 16x16 patch embedding -> 7x7 grid "
        "(k=7 covers it exactly), 4 blocks; also saved as a .pth",
    },
    {
        "name": "isotropic_dinat",
        "config": cfg("isotropic", 16, [4], [2], k=5, r=4.0, dil=[[1, 2, 1, 2]]),
        "input": [1, 3, 112, 112],
        "description": "isotropic DiNAT: 112x112 -> 7x7 grid, k=5, dilations 1,2,1,2 (the d=2 blocks pad "
        "the grid to 10x10)",
    },
    {
        "name": "dinat_backbone",
        "config": cfg("dinat", 8, [1, 1, 2, 1], [1, 2, 2, 4], k=7, r=2.0, dil=[[2], [2], [1, 2], [1]], classes=0),
        "input": [1, 3, 80, 72],
        "backbone": True,
        "description": "DiNAT detection backbone (norm0..norm3 on each level output before its downsample, "
        "NCHW): features 20x18 (d=2), 10x9 (d=2 pads both to 14), 5x5, 3x3",
    },
]


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int) -> None:
    """Random normal weights that make every part of the model matter:
    linear/conv weights N(0, min(0.2, 1.5/sqrt(fan_in))^2) (0.2 for the narrow layers,
    smaller for wide fan-in so activations stay O(1)), biases N(0, 0.1^2) except the qkv
    bias N(0, 0.3^2) (padded tokens carry k/v equal to it), rpb N(0, 0.5^2),
    LayerNorm weight 1 + N(0, 0.1^2) and bias N(0, 0.1^2), gammas 0.5 + N(0, 0.1^2).
    Every value is float32-representable, so the float32 checkpoint is exact."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        with torch.no_grad():
            t.copy_((mean + std * torch.randn(t.shape, generator=g, dtype=torch.float32)).to(t.dtype))

    for name, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):
            normal(mod.weight, 0.1, 1.0)
            normal(mod.bias, 0.1)
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            fan_in = mod.weight[0].numel()
            normal(mod.weight, min(0.2, 1.5 / math.sqrt(fan_in)))
            if mod.bias is not None:
                normal(mod.bias, 0.3 if name.endswith("attn.qkv") else 0.1)
        elif isinstance(mod, M.NeighborhoodAttention):
            normal(mod.rpb, 0.5)
        elif isinstance(mod, M.NATLayer) and mod.layer_scale:
            normal(mod.gamma1, 0.1, 0.5)
            normal(mod.gamma2, 0.1, 0.5)


# --------------------------------------------------------------------------------------
# File writers
# --------------------------------------------------------------------------------------


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """The safetensors layout: u64 little-endian header size, JSON header (padded with
    spaces to a multiple of 8), then the raw little-endian data of every tensor."""
    header: Dict = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy()).astype("<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + s : base + e], dtype="<f4").reshape(info["shape"])
    return out


# --------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------


def level_sizes(case: Dict) -> List[List[int]]:
    """Token-map size (H, W) entering each level."""
    _, _, h, w = case["input"]
    arch = case["config"]["arch"]
    if arch == "isotropic":
        return [[-(-h // 16), -(-w // 16)]]
    h, w = -(-h // 4), -(-w // 4)
    sizes = [[h, w]]
    for _ in range(3):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append([h, w])
    return sizes


def build_case(case: Dict, seed: int):
    model = M.build_model(case["config"], backbone=case.get("backbone", False))
    randomize(model, seed)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(case["input"], generator=g, dtype=torch.float32)
    return model, x


def run(model: nn.Module, x: torch.Tensor, dtype=torch.float64):
    m = model.to(dtype)
    with torch.no_grad():
        y = m(x.to(dtype))
    model.to(torch.float32)
    return y


def max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(max_diff(p, q) for p, q in zip(a, b))
    return (a.double() - b.double()).abs().max().item()


# --------------------------------------------------------------------------------------
# Sensitivity: how far plausible mistakes move the outputs
# --------------------------------------------------------------------------------------


def _mutations():
    """(name, applies-to(case), context manager factory) for plausible mistakes."""
    import contextlib

    @contextlib.contextmanager
    def patch(obj, attr, value):
        old = getattr(obj, attr)
        setattr(obj, attr, value)
        try:
            yield
        finally:
            setattr(obj, attr, old)

    orig_attn = M.NeighborhoodAttention.forward

    def pad_before_norm(self, x):
        # pad the block input, then norm1: padded tokens become LayerNorm's bias, not 0
        h0, w0 = x.shape[1:3]
        win = self.attn.kernel_size * self.attn.dilation
        ph, pw = max(0, win - h0), max(0, win - w0)
        xp = F.pad(x, (0, 0, 0, pw, 0, ph))
        a = orig_attn(self.attn, self.norm1(xp))[:, :h0, :w0]
        g1 = self.gamma1 if self.layer_scale else 1.0
        g2 = self.gamma2 if self.layer_scale else 1.0
        x = x + g1 * a
        return x + g2 * self.mlp(self.norm2(x))

    def pad_to_k_only(self, x):
        # pad to kernel_size, ignoring dilation: then clamp dilation so NATTEN accepts it
        h0, w0 = x.shape[1:3]
        d = self.dilation
        if min(h0, w0) < self.kernel_size * d:
            d_eff = max(1, min(max(h0, self.kernel_size), max(w0, self.kernel_size)) // self.kernel_size)
            with patch(self, "dilation", d_eff):
                return orig_attn(self, x)
        return orig_attn(self, x)

    def rpb_transposed(self, x):
        with torch.no_grad():
            self.rpb.data = self.rpb.data.transpose(1, 2).contiguous()
        try:
            return orig_attn(self, x)
        finally:
            with torch.no_grad():
                self.rpb.data = self.rpb.data.transpose(1, 2).contiguous()

    orig_layer = M.NATLayer.forward

    def swapped_gammas(self, x):
        if not self.layer_scale:
            return orig_layer(self, x)
        x = x + self.gamma2 * self.attn(self.norm1(x))
        return x + self.gamma1 * self.mlp(self.norm2(x))

    def merge_order_swapped(self, x):
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))

    def embed_pad_top_left(self, x):
        p = self.patch_size
        _, _, h, w = x.shape
        x = F.pad(x, ((p - w % p) % p, 0, (p - h % p) % p, 0))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))

    def gelu_tanh(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    return [
        ("padding before norm1", lambda c: True, lambda: patch(M.NATLayer, "forward", pad_before_norm)),
        ("pad to k, not k*d", lambda c: c["config"]["dilations"] is not None,
         lambda: patch(M.NeighborhoodAttention, "forward", pad_to_k_only)),
        ("rpb transposed", lambda c: True, lambda: patch(M.NeighborhoodAttention, "forward", rpb_transposed)),
        ("gamma1/gamma2 swapped", lambda c: c["config"]["layer_scale"] is not None,
         lambda: patch(M.NATLayer, "forward", swapped_gammas)),
        ("merge order x1<->x2", lambda c: c["config"]["arch"] == "dinat_s",
         lambda: patch(M.PatchMerging, "forward", merge_order_swapped)),
        ("patch-embed pad top/left", lambda c: c["config"]["arch"] in ("dinat_s", "isotropic"),
         lambda: patch(M.PatchEmbed, "forward", embed_pad_top_left)),
        ("tanh GELU", lambda c: True, lambda: patch(M.Mlp, "forward", gelu_tanh)),
    ]


def sensitivity(cases: List[Dict]) -> None:
    muts = _mutations()
    for idx, case in enumerate(cases):
        model, x = build_case(case, seed=idx)
        ref = run(model, x)
        parts = []
        for name, applies, ctx in muts:
            if not applies(case):
                continue
            try:
                with ctx():
                    y = run(model, x)
                parts.append(f"{name}: {max_diff(ref, y):.3g}")
            except RuntimeError as e:  # e.g. NATTEN refuses the mutated shapes
                parts.append(f"{name}: error ({str(e)[:40]})")
        print(f"{case['name']:22s} " + "; ".join(parts))


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--sensitivity", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)

    if args.sensitivity:
        sensitivity(CASES)
        return

    import natten

    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "generator": "tools/model_parity/make_fixtures.py (PyTorch models of tools/model_parity/models.py)",
        "natten": natten.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "compute_dtype": "float64 (from the float32 weights and inputs; outputs stored as float32)",
        "tolerance_abs": 1e-3,
        "cases": [],
    }
    for idx, case in enumerate(CASES):
        name = case["name"]
        conf = M.normalize_config(case["config"])
        backbone = case.get("backbone", False)
        naming = case.get("naming", "authors")
        model, x = build_case(case, seed=idx)
        y64 = run(model, x, torch.float64)
        y32 = run(model, x, torch.float32)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if naming == "hf":
            sd = M.to_hf_state_dict(sd, case["hf_prefix"])
        weights = f"{name}.safetensors"
        write_safetensors(os.path.join(args.out, weights), sd, {"format": "pt", "naming": naming})
        back = read_safetensors(os.path.join(args.out, weights))
        assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
        np.save(os.path.join(args.out, f"{name}.input.npy"), x.numpy().astype("<f4"))
        entry = {
            "name": name,
            "description": case["description"],
            "config": conf,
            "weights": weights,
            "naming": naming,
            "input": f"{name}.input.npy",
            "input_shape": case["input"],
            "level_sizes": level_sizes(case),
            "logits": None,
            "features": None,
            "backbone": backbone,
            "pth": None,
            "f32_vs_f64_max_abs": max_diff(y32, y64),
        }
        if naming == "hf":
            entry["hf_prefix"] = case["hf_prefix"]
        if backbone:
            entry["features"] = []
            for i, f in enumerate(y64):
                p = f"{name}.features{i}.npy"
                np.save(os.path.join(args.out, p), f.numpy().astype("<f4"))
                entry["features"].append(p)
            entry["output_max_abs"] = max(f.abs().max().item() for f in y64)
        else:
            p = f"{name}.logits.npy"
            np.save(os.path.join(args.out, p), y64.numpy().astype("<f4"))
            entry["logits"] = p
            entry["output_max_abs"] = y64.abs().max().item()
        if case.get("pth"):
            p = f"{name}.pth"
            torch.save({k: v.to(torch.float32).contiguous() for k, v in sd.items()}, os.path.join(args.out, p))
            entry["pth"] = p
        manifest["cases"].append(entry)
        print(
            f"{name:22s} {str(case['input']):18s} out max |.| {entry['output_max_abs']:8.3f}  "
            f"f32 vs f64 {entry['f32_vs_f64_max_abs']:.1e}  params {sum(v.numel() for v in sd.values())}"
        )
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(CASES)} cases to {args.out}")


if __name__ == "__main__":
    main()
