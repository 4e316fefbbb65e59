#!/usr/bin/env python3
"""Write `imagenet_classes.txt`: the 1000 ImageNet-1k class names in index order.

Source: torchvision's weight metadata,
`torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]`
(the same list, in the same order, as every torchvision/timm ImageNet-1k
classifier, including the NAT/DiNAT checkpoints). No download is needed: the list
ships inside torchvision. Generated with torchvision 0.24.1.

    python3 crates/na-model/data/make_imagenet_classes.py
"""

from pathlib import Path

import torchvision
from torchvision.models import ResNet50_Weights

names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
assert len(names) == 1000 and all(n and "\n" not in n for n in names)
out = Path(__file__).resolve().parent / "imagenet_classes.txt"
out.write_text("".join(n + "\n" for n in names), encoding="utf-8")
print(f"wrote {len(names)} names from torchvision {torchvision.__version__} to {out}")
