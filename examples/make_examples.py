"""Writes the small example arrays used by the README's main command.

    python3 examples/make_examples.py

A 2D problem: batch 1, a 16x16 feature map, 2 heads of 8 channels, plus a
relative positional bias for a 5x5 window and an output gradient. Standard
normal values, fixed seed. Needs numpy only.
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
rng = np.random.default_rng(2024)
shape = (1, 16, 16, 2, 8)  # [batch, height, width, heads, head_dim]
for name in ("query", "key", "value", "grad_out"):
    np.save(HERE / f"{name}.npy", rng.standard_normal(shape).astype("<f4"))
np.save(HERE / "rpb.npy", rng.standard_normal((2, 9, 9)).astype("<f4"))  # [heads, 2k-1, 2k-1], k = 5
