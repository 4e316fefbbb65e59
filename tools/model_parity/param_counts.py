"""Parameter counts of every named preset of MODELS.md, built with models.py at 1000 classes.

Usage (from the repository root):

    .venv-natten0175/bin/python tools/model_parity/param_counts.py

writes tools/model_parity/param_counts.json: for each preset its config dict (the schema
shared with the Rust side), its parameter count, the count MODELS.md states, and the
authors' source of the preset.  The models are built on the "meta" device, so nothing is
allocated.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import build_model, normalize_config  # noqa: E402


def alt(depths, d):
    """Dilations 1 on even blocks and d on odd blocks (0-based), per level."""
    return [1 if j % 2 == 0 else d for j in range(depths)]


def nat(depths, e, heads, r, ls, dilated):
    return {
        "arch": "dinat" if dilated else "nat",
        "embed_dim": e,
        "mlp_ratio": float(r),
        "depths": depths,
        "num_heads": heads,
        "kernel_size": 7,
        "dilations": [alt(n, d) for n, d in zip(depths, (8, 4, 2, 1))] if dilated else None,
        "layer_scale": ls,
        "num_classes": 1000,
        "in_chans": 3,
    }


def dinat_s(depths, e, heads):
    return {
        "arch": "dinat_s",
        "embed_dim": e,
        "mlp_ratio": 4.0,
        "depths": depths,
        "num_heads": heads,
        "kernel_size": 7,
        "dilations": [alt(n, d) for n, d in zip(depths, (8, 4, 2, 1))],
        "layer_scale": None,
        "num_classes": 1000,
        "in_chans": 3,
    }


def iso(e, heads, d):
    return {
        "arch": "isotropic",
        "embed_dim": e,
        "mlp_ratio": 4.0,
        "depths": [12],
        "num_heads": [heads],
        "kernel_size": 7,
        "dilations": [alt(12, d)],
        "layer_scale": None,
        "num_classes": 1000,
        "in_chans": 3,
    }


MINI, DEEP = [3, 4, 6, 5], [3, 4, 18, 5]
S_TINY, S_DEEP = [2, 2, 6, 2], [2, 2, 18, 2]

# name -> (config, MODELS.md count in millions, authors' source)
PRESETS = {
    "nat_mini": (nat(MINI, 64, [2, 4, 8, 16], 3, None, False), 19.98, "classification/nat.py nat_mini"),
    "nat_tiny": (nat(DEEP, 64, [2, 4, 8, 16], 3, None, False), 27.90, "classification/nat.py nat_tiny"),
    "nat_small": (nat(DEEP, 96, [3, 6, 12, 24], 2, 1e-5, False), 50.74, "classification/nat.py nat_small"),
    "nat_base": (nat(DEEP, 128, [4, 8, 16, 32], 2, 1e-5, False), 89.77, "classification/nat.py nat_base"),
    "dinat_mini": (nat(MINI, 64, [2, 4, 8, 16], 3, None, True), 19.98, "classification/dinat.py dinat_mini"),
    "dinat_tiny": (nat(DEEP, 64, [2, 4, 8, 16], 3, None, True), 27.90, "classification/dinat.py dinat_tiny"),
    "dinat_small": (nat(DEEP, 96, [3, 6, 12, 24], 2, None, True), 50.72, "classification/dinat.py dinat_small"),
    "dinat_base": (nat(DEEP, 128, [4, 8, 16, 32], 2, 1e-5, True), 89.77, "classification/dinat.py dinat_base"),
    "dinat_large": (nat(DEEP, 192, [6, 12, 24, 48], 2, None, True), 200.94, "classification/dinat.py dinat_large"),
    "dinat_s_tiny": (dinat_s(S_TINY, 96, [3, 6, 12, 24]), 28.29, "classification/dinats.py dinat_s_tiny"),
    "dinat_s_small": (dinat_s(S_DEEP, 96, [3, 6, 12, 24]), 49.61, "classification/dinats.py dinat_s_small"),
    "dinat_s_base": (dinat_s(S_DEEP, 128, [4, 8, 16, 32]), 87.77, "classification/dinats.py dinat_s_base"),
    "dinat_s_large": (
        dinat_s(S_DEEP, 192, [6, 12, 24, 48]),
        196.53,
        "MODELS.md / paper Table I (32 x 6) / segmentation configs; classification/dinats.py says [4, 8, 16, 32]",
    ),
    "nat_isotropic_small": (iso(384, 12, 1), 22.00, "classification/isotropic.py nat_isotropic_small"),
    "nat_isotropic_base": (iso(768, 24, 1), 86.47, "classification/isotropic.py nat_isotropic_base"),
    "dinat_isotropic_small": (iso(384, 12, 2), 22.00, "classification/isotropic.py dinat_isotropic_small"),
    "dinat_isotropic_base": (iso(768, 24, 2), 86.47, "classification/isotropic.py dinat_isotropic_base"),
}

# Variants that the authors' code has but MODELS.md does not list as presets.
EXTRA = {
    "dinat_s_large_heads_4_8_16_32": (
        dinat_s(S_DEEP, 192, [4, 8, 16, 32]),
        None,
        "classification/dinats.py dinat_s_large as read (commits 0266241, 7816457): num_heads [4, 8, 16, 32]",
    ),
    "dinat_large_384_11x11": (
        dict(nat(DEEP, 192, [6, 12, 24, 48], 2, None, True), kernel_size=11),
        None,
        "classification/dinat.py dinat_large_384_11x11 (kernel 11, dilations as at 224 px)",
    ),
}


def count(cfg) -> int:
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    out = {"generator": "tools/model_parity/param_counts.py", "presets": {}, "extra": {}}
    rows = []
    for group, table in (("presets", PRESETS), ("extra", EXTRA)):
        for name, (cfg, stated, source) in table.items():
            cfg = normalize_config(cfg)
            n = count(cfg)
            out[group][name] = {
                "config": cfg,
                "params": n,
                "params_m": round(n / 1e6, 2),
                "models_md_m": stated,
                "matches_models_md": None if stated is None else round(n / 1e6, 2) == stated,
                "source": source,
            }
            rows.append((name, n, stated))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "param_counts.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{'preset':34s} {'params':>12s} {'M':>8s} {'MODELS.md':>10s}")
    for name, n, stated in rows:
        flag = "" if stated is None or round(n / 1e6, 2) == stated else "  <-- differs"
        print(f"{name:34s} {n:12d} {n / 1e6:8.2f} {stated if stated is not None else '-':>10}{flag}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
