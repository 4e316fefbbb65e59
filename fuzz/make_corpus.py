#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets under fuzz/corpus/<target>/.

Standard library only (no numpy or torch): the seeds are the repository's
own small fixtures (.npy, .pth, configurations) plus small valid files this
script writes in each format. Run from anywhere; it rewrites fuzz/corpus/
(files crashes added by hand, named crash-*, are kept).
"""
import glob
import gzip
import hashlib
import json
import os
import random
import struct
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data, name=None):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clean(target):
    d = os.path.join(CORPUS, target)
    for p in glob.glob(os.path.join(d, "*")):
        if not os.path.basename(p).startswith("crash-"):
            os.remove(p)


# --- npy -------------------------------------------------------------------
def npy(descr, shape, values, fmt, version=(1, 0)):
    shape_txt = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}"
    pre = 10 if version[0] == 1 else 12
    pad = (64 - (pre + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    lenfmt = "<H" if version[0] == 1 else "<I"
    body = b"".join(struct.pack(fmt, v) for v in values)
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(header)) + header.encode("latin1") + body


def make_npy():
    clean("npy")
    fixtures = sorted(glob.glob(os.path.join(ROOT, "crates/na-core/tests/fixtures/*.npy")))
    small = [p for p in fixtures if os.path.getsize(p) <= 1200][:8]
    for p in small:
        put("npy", open(p, "rb").read())
    put("npy", npy("<f4", (2, 3), [0.5, -1.0, 2.0, 3.5, -0.0, 1e-3], "<f"))
    put("npy", npy("<f2", (4,), [1.0, -2.0, 0.5, 65504.0], "<e"))
    put("npy", npy("<f8", (1, 2, 2), [1.0, 2.0, 3.0, 4.0], "<d", version=(2, 0)))
    put("npy", npy("<f4", (), [7.0], "<f", version=(3, 0)))
    put("npy", npy("<f4", (0, 5), [], "<f"))


# --- safetensors -----------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, body = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + body


def make_safetensors():
    clean("safetensors")
    f32 = lambda n: b"".join(struct.pack("<f", i * 0.25) for i in range(n))
    put("safetensors", safetensors({"patch_embed.norm.weight": ("F32", [4], f32(4)),
                                    "patch_embed.norm.bias": ("F32", [4], f32(4))}))
    put("safetensors", safetensors({"head.weight": ("F16", [2, 3], struct.pack("<6e", *range(6))),
                                    "head.bias": ("BF16", [2], b"\x80\x3f\x00\x40"),
                                    "norm.weight": ("F64", [1], struct.pack("<d", 1.5))},
                                   {"format": "pt"}))
    put("safetensors", safetensors({"nat.embeddings.norm.weight": ("F32", [2], f32(2)),
                                    "nat.encoder.levels.0.layers.0.attention.self.query.weight": ("F32", [2, 2], f32(4)),
                                    "classifier.bias": ("F32", [3], f32(3))}))
    put("safetensors", safetensors({"x": ("I64", [1], struct.pack("<q", 3))}))
    put("safetensors", safetensors({}))
    put("safetensors", safetensors({"scalar": ("F32", [], f32(1)), "empty": ("F32", [0, 3], b"")}))


# --- pth -------------------------------------------------------------------
def make_pth():
    clean("pth")
    paths = sorted(glob.glob(os.path.join(ROOT, "crates/na-model/tests/fixtures/pth/*.pth")))
    for p in paths:
        raw = open(p, "rb").read()
        put("pth", raw)  # whole archives (those starting with PK)
        try:
            z = zipfile.ZipFile(p)
        except zipfile.BadZipFile:
            continue
        # The pickle form: [u32 len][data.pkl][(key u8, len u16, bytes)...].
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if not pkl:
            continue
        prefix = pkl[0][: -len("data.pkl")]
        try:
            data = z.read(pkl[0])
        except Exception:
            continue
        out = struct.pack("<I", len(data)) + data
        for n in z.namelist():
            key = n[len(prefix) + len("data/"):] if n.startswith(prefix + "data/") else None
            if key is None or not key.isdigit() or int(key) > 255:
                continue
            try:
                b = z.read(n)
            except Exception:
                continue
            if len(b) > 0xFFFF:
                continue
            out += struct.pack("<BH", int(key), len(b)) + b
        put("pth", out)


# --- idx -------------------------------------------------------------------
def idx(dims, body):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(body)


def make_idx():
    clean("idx")
    img = idx([2, 3, 4], range(24))
    lbl = idx([5], [0, 9, 3, 1, 7])
    for b in (img, lbl, idx([1, 28, 28], [i % 256 for i in range(784)]), idx([1], [9])):
        put("idx", b)
        put("idx", gzip.compress(b, mtime=0))


# --- config ----------------------------------------------------------------
def config_input(cfg, h, w, batch=0):
    return bytes([0]) + struct.pack("<HHB", h, w, batch) + json.dumps(cfg).encode()


PRESET_JSON = {
    "fashion_dinat": {"arch": "dinat", "embed_dim": 32, "mlp_ratio": 3.0, "depths": [2, 2, 4],
                      "num_heads": [1, 2, 4], "kernel_size": 5,
                      "dilations": [[1, 2], [1, 1], [1, 1, 1, 1]], "layer_scale": None,
                      "num_classes": 10, "in_chans": 1, "stem_strides": [1, 2]},
    "nat_mini": {"arch": "nat", "embed_dim": 64, "mlp_ratio": 3.0, "depths": [3, 4, 6, 5],
                 "num_heads": [2, 4, 8, 16], "kernel_size": 7, "dilations": None,
                 "layer_scale": None, "num_classes": 1000, "in_chans": 3},
    "dinat_s_tiny": {"arch": "dinat_s", "embed_dim": 96, "mlp_ratio": 4.0, "depths": [2, 2, 6, 2],
                     "num_heads": [3, 6, 12, 24], "kernel_size": 7,
                     "dilations": [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]],
                     "layer_scale": None, "num_classes": 1000, "in_chans": 3},
    "isotropic": {"arch": "isotropic", "embed_dim": 384, "mlp_ratio": 4.0, "depths": [12],
                  "num_heads": [12], "kernel_size": 7,
                  "dilations": [[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]], "layer_scale": 1e-5,
                  "num_classes": 0, "in_chans": 3},
}


def make_config():
    clean("config")
    for name, cfg in PRESET_JSON.items():
        size = 28 if name.startswith("fashion") else 224
        put("config", config_input(cfg, size, size))
        put("config", config_input(cfg, 17, 300, 3))
    manifest = json.load(open(os.path.join(ROOT, "crates/na-model/tests/fixtures/models/manifest.json")))
    for case in manifest["cases"]:
        put("config", config_input(case["config"], 64, 48))
    # Large sizes, in the u64 form.
    put("config", bytes([0x80]) + struct.pack("<QQB", 4294967296, 4294967296, 0)
        + json.dumps(PRESET_JSON["fashion_dinat"]).encode())


# --- operator --------------------------------------------------------------
def make_operator():
    clean("operator")
    rng = random.Random(7)
    for _ in range(24):
        put("operator", bytes(rng.randrange(256) for _ in range(40)))


if __name__ == "__main__":
    make_npy()
    make_safetensors()
    make_pth()
    make_idx()
    make_config()
    make_operator()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes")
