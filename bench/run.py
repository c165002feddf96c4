#!/usr/bin/env python3
"""maas against PyTorch on this machine, in one run: the ratios of issue #4.

    PEER_PYTHON=/tmp/peers/bin/python bench/run.py            # everything (a few minutes)
    PEER_PYTHON=/tmp/peers/bin/python bench/run.py train      # only some parts:
                                                              # train load predict serve call
                                                              # grpc cnn real
    PEER_PYTHON=/tmp/peers/bin/python bench/run.py real --data /tmp/cifar [--cnn-epochs 15]

PEER_PYTHON is a Python with torch, numpy and pillow (see bench/README.md). The script builds maas
(`cargo build`), writes its data into a temporary folder, runs the peer and maas one after the
other on the same files, and prints a table; with --json FILE it also saves the figures.
Nothing here is part of the test suite.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS = os.environ.get("PEERS", os.path.join(REPO, "..", "shared", "peers"))
# MAAS_BIN: a binary built before (a long run then cannot pick up a build made while it runs).
MAAS = os.environ.get("MAAS_BIN") or os.path.join(REPO, "target", "debug", "maas")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wall(cmd, repeat):
    """Best wall time of `cmd` over `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def maas_train(data, batch, epochs, out, extra=()):
    res = run([MAAS, "--device", "cpu", "-q", "train", "--data", data, "--epochs", str(epochs),
               "--batch-size", str(batch), "--checkpoints", out, "--overwrite", "--json", *extra])
    summary = json.loads(res.stdout)
    last = summary["history"][-1]
    return {"samples_per_s": last["samples_per_second"],
            "test_acc": summary["final_test_accuracy"],
            "train_loss": [round(h["train_loss"], 4) for h in summary["history"]],
            "test_loss": [round(h["test_loss"], 4) for h in summary["history"]]}


def best_of_pairs(repeat, theirs, ours):
    """`repeat` runs of the peer's training and of maas's, interleaved so that both see the same
    machine: the fastest of each (by samples/s) and maas's ratio to the peer's."""
    t_runs, m_runs = [], []
    for _ in range(repeat):
        t_runs.append(theirs())
        m_runs.append(ours())
    t = max(t_runs, key=lambda r: r["samples_per_s"])
    m = max(m_runs, key=lambda r: r["samples_per_s"])
    return t, m, m["samples_per_s"] / t["samples_per_s"]


def peer_train(py, script, data, batch, epochs):
    res = run([py, os.path.join(PEERS, script), "--data", data, "--epochs", str(epochs),
               "--batch", str(batch)])
    peer = json.loads(res.stdout.strip().splitlines()[-1])
    return {"samples_per_s": peer["samples_per_s_last_epoch"], "test_acc": peer["test_acc"]}


def bench_train(py, work, args, results):
    data = os.path.join(work, "train20k")
    run([sys.executable, os.path.join(HERE, "make_data.py"), data, str(args.train_n)])
    bin_dir = os.path.join(data, "cifar-10-batches-bin")
    print(f"\ntraining: {args.train_n} generated images, {args.epochs} epochs, samples/s of the "
          f"last epoch, best of {args.repeat}")
    print(f"{'batch':>5} {'torch':>9} {'maas':>9} {'ratio':>6}   test acc torch / maas   maas train loss per epoch")
    for batch in (32, 128):
        t, m, ratio = best_of_pairs(args.repeat, lambda: peer_train(py, "torch_mlp.py", bin_dir, batch, args.epochs),
                                    lambda: maas_train(data, batch, args.epochs, os.path.join(work, f"ck{batch}")))
        print(f"{batch:>5} {t['samples_per_s']:>9.0f} {m['samples_per_s']:>9.0f} {ratio:>5.2f}x"
              f"   {t['test_acc']:.4f} / {m['test_acc']:.4f}        {m['train_loss']}")
        results[f"train_batch_{batch}"] = {"torch": t, "maas": m, "ratio": ratio}
        if args.keras:
            # Keras is the seed program: the same initialisation (Glorot uniform, zero biases) and
            # Adam's epsilon as maas, so its accuracy is the one maas's should match.
            k = peer_train(py, "keras_mlp.py", bin_dir, batch, args.epochs)
            print(f"{'':>5} keras: {k['samples_per_s']:.0f} samples/s, test acc {k['test_acc']:.4f}"
                  f" (maas / keras {m['samples_per_s'] / k['samples_per_s']:.2f}x)")
            results[f"train_batch_{batch}"]["keras"] = k


def bench_load(work, results):
    data = os.path.join(work, "full")
    run([sys.executable, os.path.join(HERE, "make_data.py"), data, "50000", "10000"])
    seconds = []
    for _ in range(3):
        res = run([MAAS, "--device", "cpu", "--progress", "never", "train", "--data", data, "--epochs", "1",
                   "--checkpoints", os.path.join(work, "ck-load"), "--overwrite"])
        found = re.search(r"testing on (\d+) \(([\d.]+) s to load\)", res.stderr)
        seconds.append(float(found.group(2)))
    print(f"\nloading 50,000 + 10,000 records into training-ready tensors: {min(seconds):.3f} s "
          f"(best of 3; target < 0.3 s)")
    results["load_60k_s"] = min(seconds)


def write_images(py, folder, count):
    script = (
        "import sys, numpy as np; from PIL import Image\n"
        "rng = np.random.default_rng(1)\n"
        "for i in range(int(sys.argv[2])):\n"
        "    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f'{sys.argv[1]}/{i:05d}.png')\n")
    os.makedirs(folder, exist_ok=True)
    run([py, "-c", script, folder, str(count)])


TORCH_PREDICT = r"""
import glob, json, sys, time
import numpy as np, torch
from PIL import Image
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3072, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
files = sorted(glob.glob(sys.argv[1] + "/*.png"))
t = time.perf_counter()
x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32).transpose(2, 0, 1).reshape(-1) / 255.0
              for f in files])
with torch.no_grad():
    p = torch.softmax(model(torch.from_numpy(x)), dim=1)
top = p.topk(3, dim=1)
print(json.dumps({"seconds": time.perf_counter() - t, "images": len(files)}))
"""


def bench_predict(py, work, args, results):
    model = os.path.join(work, "model.maas")
    data = os.path.join(work, "small")
    run([sys.executable, os.path.join(HERE, "make_data.py"), data, "1000", "1000"])
    run([MAAS, "-q", "--device", "cpu", "train", "--data", data, "--epochs", "1",
         "--checkpoints", os.path.join(work, "ck-small"), "--overwrite"])
    run([MAAS, "-q", "export", "--checkpoints", os.path.join(work, "ck-small"), "-o", model])
    images = os.path.join(work, "images")
    write_images(py, images, args.images)
    one = os.path.join(images, "00000.png")
    print(f"\npredict (whole process, best of 10):")
    for device in ("auto", "cpu"):
        s = wall([MAAS, "--device", device, "predict", one, "--model", model], 10)
        print(f"  maas --device {device} predict one.png: {s * 1000:.1f} ms (target < 30 ms)")
        results[f"predict_one_{device}_ms"] = s * 1000
    m = wall([MAAS, "--device", "cpu", "predict", images, "--model", model, "--json"], 3)
    peer = []
    for _ in range(3):
        out = run([py, "-c", TORCH_PREDICT, images]).stdout
        peer.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    t = min(peer)
    print(f"  {args.images} images: maas whole process {m:.3f} s, torch in-process (decode + "
          f"forward, no start-up) {t:.3f} s: ratio {t / m:.2f}x")
    results["predict_many"] = {"images": args.images, "maas_s": m, "torch_s": t, "ratio": t / m}
    return model, one


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, grpc_port=0):
    """`maas serve` of `model` on a free port, once it answers ready: the process and its URL.
    gRPC on `grpc_port`, off when 0."""
    port = free_port()
    grpc = ["--grpc-port", str(grpc_port)] if grpc_port else ["--no-grpc"]
    server = subprocess.Popen([MAAS, "--device", "cpu", "-q", "serve", "--model", model, "--port", str(port)]
                              + grpc,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return server, url


def bench_serve(work, args, results, model=None, one=None):
    if model is None:
        print("\nserve: needs the predict part's model; run `bench/run.py predict serve`")
        return
    if shutil.which("ab") is None:
        print("\nserve: skipped, `ab` (apache2-utils) is not installed")
        return
    server, url = start_server(model)
    try:
        print(f"\nserve: /v1/predict, one PNG per request, ab on the same machine:")
        for keep_alive in (False, True):
            for clients in (1, 64):
                out = run(["ab", "-q"] + (["-k"] if keep_alive else []) +
                          ["-n", str(args.requests), "-c", str(clients), "-p", one, "-T", "image/png",
                           url + "/v1/predict"]).stdout
                rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
                non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
                how = "keep-alive" if keep_alive else "a connection each"
                print(f"  {clients:>2} clients, {how}: {rps:>8.0f} requests/s"
                      + (f" ({non2xx.group(1)} non-2xx!)" if non2xx else ""))
                results[f"serve_{clients}_clients{'_keepalive' if keep_alive else ''}_rps"] = rps
    finally:
        server.terminate()
        server.wait(timeout=30)


def small_model(work, name, n_train, n_test):
    """A model trained for one epoch on generated data and exported as WORK/NAME.maas."""
    data = os.path.join(work, f"{name}-data")
    run([sys.executable, os.path.join(HERE, "make_data.py"), data, str(n_train), str(n_test)])
    run([MAAS, "-q", "--device", "cpu", "train", "--data", data, "--epochs", "1",
         "--checkpoints", os.path.join(work, f"ck-{name}"), "--overwrite"])
    model = os.path.join(work, f"{name}.maas")
    run([MAAS, "-q", "export", "--checkpoints", os.path.join(work, f"ck-{name}"), "-o", model])
    return model


WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()
"""


def bench_call(work, args, results, model=None):
    """The deployed model called from the CLI: `predict --url` on 1,000 images against local
    `predict`, and `maas bench` against `wrk` on the same server and route."""
    if model is None:
        model = small_model(work, "call", 1000, 1000)
    images = os.path.join(work, "call-images")
    write_images(sys.executable, images, 1000)
    one = os.path.join(images, "00000.png")
    server, url = start_server(model)
    try:
        local = wall([MAAS, "--device", "cpu", "predict", images, "--model", model, "--json"], 3)
        remote = wall([MAAS, "predict", images, "--url", url, "--json"], 3)
        print(f"\ncall: 1,000 PNGs, whole process (best of 3): local predict {local:.3f} s, "
              f"predict --url {remote:.3f} s: ratio {remote / local:.2f}x")
        results["call_predict_1000"] = {"local_s": local, "url_s": remote}
        seconds = args.call_seconds
        for clients in (1, 64):
            out = run([MAAS, "-q", "bench", "--url", url, "--protocol", "v1-image", "--image", one,
                       "--concurrency", str(clients), "--duration", str(seconds), "--json"]).stdout
            ours = json.loads(out)["results"][0]
            line = (f"  /v1/predict, {clients:>2} clients: maas bench {ours['requests_per_s']:>8.0f} "
                    f"requests/s (p50 {ours['latency_ms']['p50']:.2f} ms, p99 "
                    f"{ours['latency_ms']['p99']:.2f} ms, {ours['errors']} errors)")
            entry = {"maas_bench_rps": ours["requests_per_s"], "maas_bench_latency_ms": ours["latency_ms"]}
            if shutil.which("wrk"):
                script = os.path.join(work, "post.lua")
                with open(script, "w") as f:
                    f.write(WRK_POST % one)
                threads = str(min(clients, os.cpu_count() or 1))
                wrk = run(["wrk", "-t", threads, "-c", str(clients), "-d", f"{seconds}s",
                           "--latency", "-s", script, url + "/v1/predict"]).stdout
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
                p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", wrk)
                p50_ms = float(p50.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
                line += f"; wrk {rps:>8.0f} requests/s (p50 {p50_ms:.2f} ms): ratio {ours['requests_per_s'] / rps:.2f}"
                entry.update({"wrk_rps": rps, "wrk_p50_ms": p50_ms})
            print(line)
            results[f"call_bench_{clients}_clients"] = entry
        out = run([MAAS, "-q", "bench", "--url", url, "--concurrency", "1,64", "--duration",
                   str(seconds), "--batch", "1", "--json"]).stdout
        for r in json.loads(out)["results"]:
            print(f"  v2 infer (binary tensors), {r['concurrency']:>2} clients: maas bench "
                  f"{r['requests_per_s']:>8.0f} requests/s (p50 {r['latency_ms']['p50']:.2f} ms)")
            results[f"call_bench_v2_{r['concurrency']}_clients_rps"] = r["requests_per_s"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_grpc(work, args, results):
    """The same infer request over gRPC and over REST (binary tensors), from the same Python
    client program (tritonclient), against one server."""
    model = small_model(work, "grpc", 500, 100)
    grpc_port = free_port()
    server, url = start_server(model, grpc_port)
    try:
        out = run([sys.executable, os.path.join(HERE, "grpc_vs_rest.py"), f"127.0.0.1:{grpc_port}",
                   url.removeprefix("http://"), str(args.call_seconds), "1", "8"]).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\ngrpc: v2 infer of one image, tritonclient (Python) threads, gRPC against REST:")
    for r in json.loads(out):
        print(f"  {r['transport']:>4}, {r['clients']} clients: {r['requests_per_s']:>7.0f} requests/s "
              f"(p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['errors']} errors)")
        results[f"grpc_{r['transport']}_{r['clients']}_clients"] = r


def bench_cnn(py, work, args, results):
    """The small CNN (`--arch cnn`) against torch_cnn.py, the same network: training at batch 32
    and 128; then the trained model's test pass (`maas eval`), and `maas serve` of it against the
    FastAPI peer serving the same network (needs `ab`, and fastapi + uvicorn in PEER_PYTHON)."""
    data = os.path.join(work, "cnn")
    run([sys.executable, os.path.join(HERE, "make_data.py"), data, str(args.cnn_n), str(args.cnn_test_n)])
    bin_dir = os.path.join(data, "cifar-10-batches-bin")
    print(f"\ncnn training: {args.cnn_n} generated images, 2 epochs, samples/s of the last epoch, "
          f"best of {args.repeat}")
    checkpoints = os.path.join(work, "ckcnn")
    for batch in (32, 128):
        t, m, ratio = best_of_pairs(args.repeat, lambda: peer_train(py, "torch_cnn.py", bin_dir, batch, 2),
                                    lambda: maas_train(data, batch, 2, checkpoints, ["--arch", "cnn"]))
        print(f"  batch {batch:>3}: torch {t['samples_per_s']:.0f}, maas {m['samples_per_s']:.0f} samples/s: "
              f"{ratio:.2f}x   test acc torch / maas {t['test_acc']:.4f} / {m['test_acc']:.4f}")
        results[f"cnn_train_batch_{batch}"] = {"torch": t, "maas": m, "ratio": ratio}
    model = os.path.join(work, "cnn.maas")
    run([MAAS, "-q", "export", "--checkpoints", checkpoints, "-o", model])
    s = wall([MAAS, "--device", "cpu", "-q", "eval", "--model", model, "--data", data, "--json"], 3)
    print(f"  maas eval of the cnn on {args.cnn_test_n} test images (whole process, best of 3): {s:.3f} s, "
          f"{args.cnn_test_n / s:.0f} images/s")
    results["cnn_eval"] = {"images": args.cnn_test_n, "seconds": s}
    bench_cnn_serve(py, work, args, results, model)


def torch_cnn_serve(folder):
    """The FastAPI peer (torch_serve.py) with the cnn's layers in place of its MLP, written into
    `folder` under the peer's own name (uvicorn imports it by that name)."""
    with open(os.path.join(PEERS, "torch_serve.py")) as f:
        source = f.read()
    mlp = ("model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 64), torch.nn.ReLU(), "
           "torch.nn.Linear(64, 10)).eval()")
    cnn = ("nn = torch.nn\n"
           "model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), "
           "nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), "
           "nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10)).eval()")
    if mlp not in source:
        raise SystemExit("bench: torch_serve.py's model line changed; update torch_cnn_serve")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "torch_serve.py"), "w") as f:
        f.write(source.replace(mlp, cnn))


def ab_rps(url, one, clients, requests):
    out = run(["ab", "-q", "-k", "-n", str(requests), "-c", str(clients), "-p", one, "-T", "image/png",
               url + "/v1/predict"]).stdout
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if non2xx:
        raise SystemExit(f"bench: {non2xx.group(1)} non-2xx answers from {url}")
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def bench_cnn_serve(py, work, args, results, model):
    """`maas serve` of the cnn against the FastAPI peer serving the same network (2 workers, as
    the peer runs by default), one PNG per request, 64 keep-alive clients of ab."""
    if shutil.which("ab") is None:
        print("  cnn serve: skipped, `ab` (apache2-utils) is not installed")
        return
    if subprocess.run([py, "-c", "import fastapi, uvicorn"], capture_output=True).returncode != 0:
        print(f"  cnn serve: skipped, {py} lacks fastapi or uvicorn")
        return
    images = os.path.join(work, "cnn-images")
    write_images(py, images, 1)
    one = os.path.join(images, "00000.png")
    clients, requests = 64, args.cnn_requests
    server, url = start_server(model)
    try:
        ab_rps(url, one, clients, max(clients, requests // 10))  # warm up
        ours = ab_rps(url, one, clients, requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
    folder = os.path.join(work, "torch-cnn-serve")
    torch_cnn_serve(folder)
    port = free_port()
    peer = subprocess.Popen([py, "torch_serve.py", "--port", str(port)], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                ab_rps(peer_url, one, 1, 1)
                break
            except (subprocess.CalledProcessError, SystemExit):
                time.sleep(0.1)
        ab_rps(peer_url, one, clients, max(clients, requests // 10))
        theirs = ab_rps(peer_url, one, clients, requests)
    finally:
        peer.terminate()
        peer.wait(timeout=30)
    print(f"  cnn serve, /v1/predict, {clients} keep-alive clients of ab, {requests} requests: maas "
          f"{ours:.0f}, FastAPI + torch {theirs:.0f} requests/s: {ours / theirs:.2f}x")
    results["cnn_serve_64_clients_keepalive_rps"] = {"maas": ours, "torch": theirs, "ratio": ours / theirs}


def bench_real(py, work, args, results):
    """Real CIFAR-10 (--data: the folder holding cifar-10-batches-bin): the card's MLP with the
    constant rate and with --lr-schedule cosine over --seeds, beside PyTorch's same MLP (constant,
    the same seeds); with --cnn-epochs N, the cnn with --augment --lr-schedule onecycle beside
    PyTorch with the same recipe (bench/peers/torch_recipe.py). Runs are interleaved."""
    if not args.data:
        sys.exit("bench/run.py real needs --data DIR (a folder holding cifar-10-batches-bin)")
    bin_dir = os.path.join(args.data, "cifar-10-batches-bin")
    peer = os.path.join(HERE, "peers", "torch_recipe.py")
    epochs = args.real_epochs

    def ours(seed, extra):
        res = run([MAAS, "--device", "cpu", "-q", "train", "--data", args.data, "--epochs", str(epochs),
                   "--seed", str(seed), "--checkpoints", os.path.join(work, "ckreal"), "--overwrite",
                   "--json", *extra])
        s = json.loads(res.stdout)
        return {"acc": [h["test_accuracy"] for h in s["history"]], "train_loss": s["final_train_loss"],
                "samples_per_s": s["history"][-1]["samples_per_second"]}

    def theirs(seed, extra):
        res = run([py, peer, "--data", bin_dir, "--epochs", str(epochs), "--seed", str(seed), *extra])
        p = json.loads(res.stdout.strip().splitlines()[-1])
        return {"acc": p["test_acc_per_epoch"], "samples_per_s": p["samples_per_s_last_epoch"]}

    def summary(name, runs):
        final = [r["acc"][-1] for r in runs]
        mean = statistics.mean(final)
        spread = max(final) - min(final)
        sd = statistics.stdev(final) if len(final) > 1 else 0.0
        speed = statistics.median(r["samples_per_s"] for r in runs)
        per_epoch = [round(statistics.mean(r["acc"][e] for r in runs), 4) for e in range(epochs)]
        print(f"{name:<34} final test acc {', '.join(f'{f:.3f}' for f in final)}: mean {mean:.4f}, "
              f"spread {spread:.4f}, sd {sd:.4f}; {speed:,.0f} samples/s")
        print(f"{'':<34} mean per epoch {per_epoch}", flush=True)
        return {"final": final, "mean": mean, "spread": spread, "sd": sd, "samples_per_s": speed,
                "mean_per_epoch": per_epoch, "runs": runs}

    print(f"\nreal CIFAR-10 ({args.data}): {epochs} epochs at batch 32, seeds {args.seeds}", flush=True)
    # Each seed's runs side by side: PyTorch as its users run it and with the card's (Keras')
    # initialisation and epsilon, maas with the card's recipe and with each schedule.
    variants = {
        "torch constant": (theirs, ["--arch", "mlp"]),
        "torch constant, Keras init": (theirs, ["--arch", "mlp", "--keras-init"]),
        "torch onecycle": (theirs, ["--arch", "mlp", "--schedule", "onecycle"]),
        "maas constant": (ours, []),
        "maas cosine, no warmup": (ours, ["--lr-schedule", "cosine", "--warmup-epochs", "0"]),
        "maas cosine": (ours, ["--lr-schedule", "cosine"]),  # warms up over a tenth of the run
        "maas onecycle": (ours, ["--lr-schedule", "onecycle"]),
    }
    if args.real_only:
        variants = {n: v for n, v in variants.items() if any(o in n for o in args.real_only)}
    mlp = {name: [] for name in variants}
    for seed in args.seeds if epochs else []:
        for name, (how, extra) in variants.items():
            mlp[name].append(how(seed, extra))
            print(json.dumps({"run": name, "seed": seed, **mlp[name][-1]}), flush=True)
    if epochs:
        results["real_mlp"] = {name: summary(f"MLP, {name}", runs) for name, runs in mlp.items()}
    if args.cnn_epochs:
        epochs = args.cnn_epochs
        cnn = {"maas": [], "torch": []}
        for seed in args.seeds[: args.cnn_seeds]:
            cnn["torch"].append(theirs(seed, ["--arch", "cnn", "--augment", "--schedule", "onecycle"]))
            cnn["maas"].append(ours(seed, ["--arch", "cnn", "--augment", "--lr-schedule", "onecycle"]))
            for name in ("torch", "maas"):
                print(json.dumps({"run": f"cnn {name}", "seed": seed, **cnn[name][-1]}), flush=True)
        results["real_cnn_recipe"] = {n: summary(f"cnn, augment + onecycle, {n}", r) for n, r in cnn.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["train", "load", "predict", "serve"])
    ap.add_argument("--train-n", type=int, default=20000, help="generated training images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="training runs of each, interleaved")
    ap.add_argument("--keras", action="store_true", help="also train the Keras peer (needs tensorflow)")
    ap.add_argument("--images", type=int, default=10000, help="images for the batch predict")
    ap.add_argument("--requests", type=int, default=20000, help="requests per serve measurement")
    ap.add_argument("--call-seconds", type=int, default=5, help="seconds per maas bench / wrk level")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--cnn-n", type=int, default=2000, help="generated training images for `cnn`")
    ap.add_argument("--cnn-test-n", type=int, default=10000, help="generated test images for `cnn` (its eval)")
    ap.add_argument("--cnn-requests", type=int, default=5000, help="requests per cnn serve measurement")
    ap.add_argument("--data", help="`real`: a folder holding real CIFAR-10's cifar-10-batches-bin")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="`real`: seeds of each run")
    ap.add_argument("--real-epochs", type=int, default=10, help="`real`: the MLP's epochs (0: skip)")
    ap.add_argument("--real-only", nargs="+", help="`real`: only the MLP runs whose name holds one of these")
    ap.add_argument("--cnn-epochs", type=int, default=0, help="`real`: the cnn recipe's epochs (0: skip)")
    ap.add_argument("--cnn-seeds", type=int, default=1, help="`real`: seeds of the cnn recipe")
    args = ap.parse_args()
    py = os.environ.get("PEER_PYTHON", "python3")
    if not os.environ.get("MAAS_BIN"):
        run(["cargo", "build", "--quiet", "--features", "turbojpeg"], cwd=REPO)
    print(f"machine: {os.cpu_count()} cores; {run(['uname', '-srm']).stdout.strip()}")
    results = {"cores": os.cpu_count()}
    work = tempfile.mkdtemp(prefix="maas-bench-")
    try:
        if "train" in args.parts:
            bench_train(py, work, args, results)
        if "cnn" in args.parts:
            bench_cnn(py, work, args, results)
        if "real" in args.parts:
            bench_real(py, work, args, results)
        if "load" in args.parts:
            bench_load(work, results)
        model = one = None
        if "predict" in args.parts:
            model, one = bench_predict(py, work, args, results)
        if "serve" in args.parts:
            bench_serve(work, args, results, model, one)
        if "call" in args.parts:
            bench_call(work, args, results, model)
        if "grpc" in args.parts:
            bench_grpc(work, args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
