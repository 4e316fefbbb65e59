#!/usr/bin/env python3
"""One full training step of a tiny DiNAT in PyTorch (float64): the golden
fixture of `crates/na-model/tests/suite/train_step.rs`.

The model is the one `na_model::train::TrainNet` trains, written out in
plain PyTorch (no NATTEN: neighborhood attention is gathered with index
tables built from SPEC.md's window rule), with the authors' key names:

- stem: 3x3 conv stride 1 (1 -> E/2), 3x3 conv stride 2 (E/2 -> E), LayerNorm;
- level 0: 12x12 input -> 6x6 tokens, blocks with dilation 2 and 1; level 1
  after a 3x3 stride-2 conv + LayerNorm: 3x3 tokens, one block of dilation 2
  (zero-padded to 6x6 around the attention, cropped after), one of dilation 1;
- layer scale (gamma1/gamma2), final LayerNorm, mean over tokens, head.

The step: softmax cross-entropy with label smoothing 0.1 (batch mean), then
`torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)` with weight decay
0.05 on matrices and convolution kernels only (not on norms, biases, rpb,
gammas), as `na_model::train::AdamW` does.

Writes, into crates/na-model/tests/fixtures/train_step/:
- before.safetensors: every parameter (float32, the values both sides start
  from) and `input` [3, 1, 12, 12], `labels` [3] (as float32);
- grads.safetensors: d loss / d parameter (float64 computation, stored f32);
- after.safetensors: the parameters after the AdamW step;
- step.json: the configuration, loss, lr, weight decay, label smoothing,
  torch version.

Run: python tools/train_check/one_step.py (needs torch and safetensors).
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "na-model", "tests", "fixtures", "train_step")

CFG = {
    "arch": "dinat",
    "embed_dim": 8,
    "mlp_ratio": 2.0,
    "depths": [2, 2],
    "num_heads": [2, 2],
    "kernel_size": 3,
    "dilations": [[2, 1], [2, 1]],
    "layer_scale": 0.5,
    "num_classes": 5,
    "in_chans": 1,
    "stem_strides": [1, 2],
}
SIDE, BATCH, LR, WD, LS = 12, 3, 1e-3, 0.05, 0.1


def param_shapes(cfg):
    e, cin, k = cfg["embed_dim"], cfg["in_chans"], cfg["kernel_size"]
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
        c, h = e << i, cfg["num_heads"][i]
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
                (f"{p}.gamma1", [c]), (f"{p}.gamma2", [c]),
            ]
        if i + 1 < n:
            p = f"levels.{i}.downsample"
            out += [(f"{p}.reduction.weight", [2 * c, c, 3, 3]),
                    (f"{p}.norm.weight", [2 * c]), (f"{p}.norm.bias", [2 * c])]
    f = e << (n - 1)
    out += [("norm.weight", [f]), ("norm.bias", [f]),
            ("head.weight", [cfg["num_classes"], f]), ("head.bias", [cfg["num_classes"]])]
    return out


def axis_window(length, k, d):
    """Per position: the k key positions and the k bias indices (SPEC.md,
    non-causal, stride 1)."""
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
    return torch.tensor(keys), torch.tensor(bias)


def na2d(q, kk, v, rpb, k, d):
    """q, kk, v: [B, H, W, heads, hd]; rpb [heads, 2k-1, 2k-1]."""
    b, h, w, nh, hd = q.shape
    ky, by = axis_window(h, k, d)
    kx, bx = axis_window(w, k, d)
    # Gather keys/values: [B, H, W, k, k, heads, hd].
    iy = ky[:, None, :, None].expand(h, w, k, k)
    ix = kx[None, :, None, :].expand(h, w, k, k)
    kg = kk[:, iy, ix]
    vg = v[:, iy, ix]
    logits = torch.einsum("zhwnd,zhwijnd->zhwijn", q, kg) * hd ** -0.5
    biy = by[:, None, :, None].expand(h, w, k, k)
    bix = bx[None, :, None, :].expand(h, w, k, k)
    bias = rpb[:, biy, bix].permute(1, 2, 3, 4, 0)  # [H, W, k, k, heads]
    logits = logits + bias[None]
    a = torch.softmax(logits.reshape(b, h, w, k * k, nh), dim=3).reshape(logits.shape)
    return torch.einsum("zhwijn,zhwijnd->zhwnd", a, vg)


def ln(x, p, name):
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)


def forward(p, x, cfg):
    s0, s1 = cfg["stem_strides"]
    y = F.conv2d(x, p["patch_embed.proj.0.weight"], p["patch_embed.proj.0.bias"], stride=s0, padding=1)
    y = F.conv2d(y, p["patch_embed.proj.1.weight"], p["patch_embed.proj.1.bias"], stride=s1, padding=1)
    y = ln(y.permute(0, 2, 3, 1), p, "patch_embed.norm")
    k = cfg["kernel_size"]
    n = len(cfg["depths"])
    for i in range(n):
        nh = cfg["num_heads"][i]
        for j in range(cfg["depths"][i]):
            pre = f"levels.{i}.blocks.{j}"
            d = cfg["dilations"][i][j]
            b, h, w, c = y.shape
            kd = k * d
            t = ln(y, p, f"{pre}.norm1")
            hp, wp = max(h, kd), max(w, kd)
            if (hp, wp) != (h, w):
                t = F.pad(t, (0, 0, 0, wp - w, 0, hp - h))
            qkv = F.linear(t, p[f"{pre}.attn.qkv.weight"], p[f"{pre}.attn.qkv.bias"])
            q, kk, v = qkv.reshape(b, hp, wp, 3, nh, c // nh).unbind(3)
            a = na2d(q, kk, v, p[f"{pre}.attn.rpb"], k, d).reshape(b, hp, wp, c)
            a = a[:, :h, :w]
            a = F.linear(a, p[f"{pre}.attn.proj.weight"], p[f"{pre}.attn.proj.bias"])
            y = y + p[f"{pre}.gamma1"] * a
            t = ln(y, p, f"{pre}.norm2")
            t = F.gelu(F.linear(t, p[f"{pre}.mlp.fc1.weight"], p[f"{pre}.mlp.fc1.bias"]))
            t = F.linear(t, p[f"{pre}.mlp.fc2.weight"], p[f"{pre}.mlp.fc2.bias"])
            y = y + p[f"{pre}.gamma2"] * t
        if i + 1 < n:
            pre = f"levels.{i}.downsample"
            z = F.conv2d(y.permute(0, 3, 1, 2), p[f"{pre}.reduction.weight"], None, stride=2, padding=1)
            y = ln(z.permute(0, 2, 3, 1), p, f"{pre}.norm")
    y = ln(y, p, "norm").mean(dim=(1, 2))
    return F.linear(y, p["head.weight"], p["head.bias"])


def main():
    torch.manual_seed(7)
    shapes = param_shapes(CFG)
    p32 = {}
    for name, shape in shapes:
        if name.endswith("gamma1") or name.endswith("gamma2"):
            t = 0.5 + 0.1 * torch.randn(shape)
        elif "norm" in name and name.endswith(".weight"):
            t = 1.0 + 0.1 * torch.randn(shape)
        elif len(shape) >= 2 and not name.endswith(".rpb"):
            t = torch.randn(shape) / math.sqrt(math.prod(shape[1:]))
        else:
            t = 0.1 * torch.randn(shape)
        p32[name] = t.float().contiguous()
    x32 = torch.randn(BATCH, 1, SIDE, SIDE).float()
    labels = torch.tensor([1, 4, 0])
    params = {n: torch.nn.Parameter(t.double().clone()) for n, t in p32.items()}
    logits = forward(params, x32.double(), CFG)
    loss = F.cross_entropy(logits, labels, label_smoothing=LS)
    loss.backward()
    grads = {n: p.grad.detach().float().contiguous() for n, p in params.items()}
    decay = [p for n, p in params.items() if len(p.shape) >= 2 and not n.endswith(".rpb")]
    rest = [p for n, p in params.items() if not (len(p.shape) >= 2 and not n.endswith(".rpb"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.999), eps=1e-8,
    )
    opt.step()
    after = {n: p.detach().float().contiguous() for n, p in params.items()}
    os.makedirs(OUT, exist_ok=True)
    before = dict(p32)
    before["input"] = x32.contiguous()
    before["labels"] = labels.float()
    save_file(before, os.path.join(OUT, "before.safetensors"))
    save_file(grads, os.path.join(OUT, "grads.safetensors"))
    save_file(after, os.path.join(OUT, "after.safetensors"))
    meta = {
        "config": CFG,
        "loss": loss.item(),
        "logits": logits.detach().tolist(),
        "lr": LR,
        "weight_decay": WD,
        "label_smoothing": LS,
        "torch": torch.__version__,
        "generator": "tools/train_check/one_step.py",
    }
    with open(os.path.join(OUT, "step.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"loss {loss.item():.6f}; wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
