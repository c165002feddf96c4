#!/usr/bin/env python3
"""One client program, two transports: the same v2 infer request (one 3x32x32 FP32 image) sent
over gRPC (tritonclient.grpc) and over REST with binary tensors (tritonclient.http) to one
`maas serve`, by N threads for S seconds each. Prints JSON: requests/s and latency percentiles
per transport and client count. Called by `bench/run.py grpc`; the client (Python) is part of
what is measured, the same for both sides.

    grpc_vs_rest.py GRPC_ADDR HTTP_ADDR SECONDS CLIENTS...
"""
import json
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

grpc_addr, http_addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
levels = [int(c) for c in sys.argv[4:]]
x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def caller(kind):
    """A function making one infer call on a client of its own."""
    if kind == "grpc":
        client = grpcclient.InferenceServerClient(grpc_addr)
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
    else:
        client = httpclient.InferenceServerClient(http_addr)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
    return lambda: client.infer("maas", [tensor]).as_numpy("probabilities")


def measure(kind, clients):
    latencies, errors = [], [0]
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work():
        call = caller(kind)
        call()  # connect and warm up outside the measured time
        start.wait()
        mine = []
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                call()
                mine.append(time.perf_counter() - t)
            except Exception:  # noqa: BLE001 - counted, not raised
                errors[0] += 1
        latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    return {"transport": kind, "clients": clients, "requests_per_s": len(latencies) / took,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "errors": errors[0]}


results = []
for clients in levels:
    for kind in ("rest", "grpc"):  # interleaved: both see the same machine
        results.append(measure(kind, clients))
print(json.dumps(results))
