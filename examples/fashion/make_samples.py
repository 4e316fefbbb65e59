#!/usr/bin/env python3
"""Writes the sample images of examples/fashion/: the first image of each
class in the Fashion-MNIST test set (Debian's dataset-fashion-mnist), as
28x28 8-bit grey PNG named `<test index>_<class>.png` (class names with '-'
for ' ' and '/'). Standard library only.
"""
import gzip
import os
import struct
import zlib

SRC = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


def png(path, px, w, h):
    raw = b"".join(b"\x00" + px[y * w:(y + 1) * w] for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def main():
    images = gzip.open(os.path.join(SRC, "t10k-images-idx3-ubyte.gz")).read()[16:]
    labels = gzip.open(os.path.join(SRC, "t10k-labels-idx1-ubyte.gz")).read()[8:]
    here = os.path.dirname(os.path.abspath(__file__))
    for c, name in enumerate(CLASSES):
        i = labels.index(bytes([c]))
        out = os.path.join(here, f"{i:04d}_{name.replace('/', '-').replace(' ', '-')}.png")
        png(out, images[i * 784:(i + 1) * 784], 28, 28)
        print(out)


if __name__ == "__main__":
    main()
