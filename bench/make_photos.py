#!/usr/bin/env python3
"""Photographs to measure with (issue #13), written into a folder; nothing here is committed.

    PEER_PYTHON=/tmp/peers/bin/python; $PEER_PYTHON bench/make_photos.py OUT [N]

Needs Pillow, numpy and scikit-learn (its two sample photos, china.jpg and flower.jpg, 640x427).
Writes OUT/china.jpg and OUT/flower.jpg as they are (quality 90), OUT/china-4000.jpg and
OUT/flower-4000.jpg enlarged to 4000x3000, and OUT/mixed/ with N (default 200) photos of mixed
sizes: crops and rescales of the two, from 160x120 to 4000x3000, deterministic (seed 0).
"""
import os
import random
import sys

from PIL import Image
from sklearn.datasets import load_sample_image


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    os.makedirs(os.path.join(out, "mixed"), exist_ok=True)
    photos = {name: Image.fromarray(load_sample_image(name + ".jpg")) for name in ("china", "flower")}
    for name, img in photos.items():
        img.save(os.path.join(out, name + ".jpg"), quality=90)
        img.resize((4000, 3000), Image.BICUBIC).save(os.path.join(out, name + "-4000.jpg"), quality=90)
    rng = random.Random(0)
    sizes = [(160, 120), (320, 240), (640, 427), (800, 600), (1024, 768), (1600, 1200), (4000, 3000)]
    # Most photos people send are small or medium; a few are full camera size.
    weights = [2, 4, 6, 4, 3, 2, 1]
    for i in range(n):
        img = photos[rng.choice(sorted(photos))]
        w, h = img.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        size = rng.choices(sizes, weights)[0]
        crop = img.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        crop.save(os.path.join(out, "mixed", f"{i:04d}.jpg"), quality=rng.choice([75, 85, 95]))


if __name__ == "__main__":
    main()
