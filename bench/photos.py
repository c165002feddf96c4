#!/usr/bin/env python3
"""Photos (issue #13): maas against PIL + PyTorch on real JPEG photographs, side by side, as ratios.

    PEER_PYTHON=/tmp/peers/bin/python bench/photos.py [--repeat N] [--requests N]

PEER_PYTHON needs torch, numpy, pillow, scikit-learn (the photos: bench/make_photos.py), and for
the serve part fastapi and uvicorn (the peer: ../shared/peers/torch_serve.py). The serve part needs
`ab` (apache2-utils). Builds maas and examples/photo_bench (`cargo build`), trains a small model as
bench/run.py does, then measures:

  preprocess  one 640x427 JPEG to model input on one core (taskset -c 0): maas (libjpeg-turbo)
              against PIL with draft (Image.draft, JPEG DCT scaling) and without, and against
              the pure-Rust jpeg-decoder at the same scale (examples/photo_bench);
  predict     `maas predict` on 200 photos of mixed sizes, whole process, against PIL + PyTorch in
              one process after import; `maas predict` of one 4000x3000 JPEG, cold process, and its
              peak RSS (/usr/bin/time -v);
  serve       /v1/predict with a 640x427 JPEG body, 64 keep-alive clients (ab -k), against the
              FastAPI peer with 2 uvicorn workers;
  quality     examples/photo_bench over the photos: where the time goes (decode, resize), the
              largest input difference against a full decode + resize, and the share of photos
              whose predicted class is unchanged.
Nothing here is part of the test suite.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as base  # noqa: E402  (bench/run.py: how maas is built and run)

REPO = base.REPO
MAAS = base.MAAS
PHOTO_BENCH = os.path.join(REPO, "target", "debug", "examples", "photo_bench")

PIL_ONE = r"""
import io, json, sys, time
from PIL import Image
data = open(sys.argv[1], 'rb').read()
def one(draft):
    im = Image.open(io.BytesIO(data))
    if draft:
        im.draft('RGB', (64, 64))
    return im.convert('RGB').resize((32, 32), Image.BILINEAR)
out = {}
for draft in (True, False):
    best = 1e9
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); one(draft); best = min(best, time.perf_counter() - t)
    out['draft' if draft else 'full'] = best
print(json.dumps(out))
"""

TORCH_PHOTOS = r"""
import glob, json, sys, time
import numpy as np, torch
from PIL import Image
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3072, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
files = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
draft = sys.argv[2] == "draft"
def load(f):
    im = Image.open(f)
    if draft:
        im.draft('RGB', (64, 64))
    return np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32)
t = time.perf_counter()
x = np.stack([load(f).transpose(2, 0, 1).reshape(-1) / 255.0 for f in files])
with torch.no_grad():
    p = torch.softmax(model(torch.from_numpy(x)), dim=1)
top = p.topk(3, dim=1)
print(json.dumps({"seconds": time.perf_counter() - t, "images": len(files)}))
"""


def build():
    base.run(["cargo", "build", "--quiet", "--features", "turbojpeg", "--bin", "maas", "--example", "photo_bench"], cwd=REPO)


def train_model(work):
    data, ck, model = (os.path.join(work, n) for n in ("small", "ck", "model.maas"))
    base.run([sys.executable, os.path.join(HERE, "make_data.py"), data, "1000", "1000"])
    base.run([MAAS, "-q", "--device", "cpu", "train", "--data", data, "--epochs", "1",
              "--checkpoints", ck, "--overwrite"])
    base.run([MAAS, "-q", "export", "--checkpoints", ck, "-o", model])
    return model


def maas_one_core_ms(photo, repeat):
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    best, before = float("inf"), float("inf")
    for _ in range(repeat):
        out = base.run(["taskset", "-c", "0", PHOTO_BENCH, photo], env=env).stdout
        row = next(line for line in out.splitlines() if line.startswith("640x427"))
        best = min(best, float(row.split()[-2]))
        before = min(before, float(row.split()[-4]))
    return best, before


def bench_preprocess(py, photos, args):
    print("\npreprocessing one 640x427 JPEG to model input, one core (taskset -c 0), best of runs:")
    for name in ("china", "flower"):
        photo = os.path.join(photos, name + ".jpg")
        m, jd = maas_one_core_ms(photo, args.repeat)
        peer = {"draft": float("inf"), "full": float("inf")}
        for _ in range(args.repeat):
            out = base.run(["taskset", "-c", "0", py, "-c", PIL_ONE, photo, "20"]).stdout
            got = base.json.loads(out.strip().splitlines()[-1])
            peer = {k: min(peer[k], got[k] * 1e3) for k in peer}
        print(f"  {name}.jpg: maas {m:.2f} ms, PIL draft {peer['draft']:.2f} ms "
              f"(ratio {peer['draft'] / m:.2f}x), PIL full {peer['full']:.2f} ms "
              f"(ratio {peer['full'] / m:.2f}x); jpeg-decoder at the same scale {jd:.2f} ms "
              f"(ratio {peer['draft'] / jd:.2f}x)")


def bench_predict(py, photos, model, args):
    mixed = os.path.join(photos, "mixed")
    n = len(os.listdir(mixed))
    m = base.wall([MAAS, "--device", "cpu", "predict", mixed, "--model", model, "--json"], args.repeat)
    peer = {}
    for how in ("full", "draft"):
        runs = [base.json.loads(base.run([py, "-c", TORCH_PHOTOS, mixed, how]).stdout.strip()
                                .splitlines()[-1])["seconds"] for _ in range(args.repeat)]
        peer[how] = min(runs)
    print(f"\npredict {n} photos of mixed sizes: maas whole process {m:.3f} s; PIL + PyTorch in "
          f"process after import {peer['full']:.3f} s (ratio {peer['full'] / m:.2f}x), with draft "
          f"{peer['draft']:.3f} s (ratio {peer['draft'] / m:.2f}x)")
    big = os.path.join(photos, "china-4000.jpg")
    cold = base.wall([MAAS, "--device", "cpu", "predict", big, "--model", model], 10)
    out = subprocess.run(["/usr/bin/time", "-v", MAAS, "--device", "cpu", "predict", big,
                          "--model", model], capture_output=True, text=True, check=True).stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out).group(1))
    print(f"maas predict one 4000x3000 JPEG, cold process: {cold * 1000:.1f} ms (best of 10), "
          f"peak RSS {rss / 1024:.1f} MiB")


def wait_ready(url):
    for _ in range(400):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP answer: up
                return
            time.sleep(0.05)


def ab(url, body, requests):
    out = base.run(["ab", "-q", "-k", "-n", str(requests), "-c", "64", "-p", body,
                    "-T", "image/jpeg", url]).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return rps, int(bad.group(1)) if bad else 0


def bench_serve(py, photos, model, args):
    if shutil.which("ab") is None:
        print("\nserve: skipped, `ab` (apache2-utils) is not installed")
        return
    body = os.path.join(photos, "china.jpg")
    port = base.free_port()
    maas = subprocess.Popen([MAAS, "--device", "cpu", "-q", "serve", "--model", model,
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer_port = base.free_port()
    peer = subprocess.Popen([py, os.path.join(base.PEERS, "torch_serve.py"), "--port", str(peer_port),
                             "--workers", "2"], cwd=base.PEERS,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        wait_ready(f"http://127.0.0.1:{peer_port}/docs")
        best_m, best_p = (0, 0), (0, 0)
        for _ in range(args.repeat):  # interleaved
            best_m = max(best_m, ab(f"http://127.0.0.1:{port}/v1/predict", body, args.requests))
            best_p = max(best_p, ab(f"http://127.0.0.1:{peer_port}/v1/predict", body, args.requests))
        print(f"\n/v1/predict, a 640x427 JPEG body, 64 keep-alive clients (ab -k, best of "
              f"{args.repeat}): maas {best_m[0]:.0f} req/s ({best_m[1]} non-2xx), FastAPI peer "
              f"{best_p[0]:.0f} req/s ({best_p[1]} non-2xx): ratio {best_m[0] / best_p[0]:.2f}x")
    finally:
        for p in (maas, peer):
            p.terminate()
            p.wait()


def bench_quality(photos, model):
    files = [os.path.join(photos, f) for f in ("china.jpg", "flower.jpg", "china-4000.jpg",
                                               "flower-4000.jpg")]
    mixed = os.path.join(photos, "mixed")
    files += sorted(os.path.join(mixed, f) for f in os.listdir(mixed))
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    out = base.run([PHOTO_BENCH, "--model", model] + files, env=env).stdout
    print("\nwhere one photo's time goes (one thread), and what the DCT scaling changes "
          "(examples/photo_bench):")
    print("  " + out.strip().replace("\n", "\n  "))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="*", default=["preprocess", "predict", "serve", "quality"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    py = os.environ.get("PEER_PYTHON", "python3")
    build()
    with tempfile.TemporaryDirectory() as work:
        photos = os.path.join(work, "photos")
        base.run([py, os.path.join(HERE, "make_photos.py"), photos, "200"])
        model = train_model(work)
        if "preprocess" in args.parts:
            bench_preprocess(py, photos, args)
        if "predict" in args.parts:
            bench_predict(py, photos, model, args)
        if "serve" in args.parts:
            bench_serve(py, photos, model, args)
        if "quality" in args.parts:
            bench_quality(photos, model)


if __name__ == "__main__":
    main()
