"""Peak memory and CPU of `maas serve` (issue 28), run in a folder holding `model.maas` and
`repo/m/1/model.maas`:

    serve_memory.py MAAS load   # 60 keyless load requests of 15 MiB, then a keyed trickled one (point 3)
    serve_memory.py MAAS infer  # 200 binary infer requests of 16 MiB, RSS 30 s later (point 12)
    serve_memory.py MAAS json   # the same with JSON FP32 bodies of 15 MiB
"""
import os, socket, subprocess, sys, threading, time, json, struct
binary, part = sys.argv[1], sys.argv[2]
def start(args):
    p = subprocess.Popen([binary, "--device", "cpu", "serve", "--port", "0"] + args,
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "MAAS_NO_GRPC": "1"})
    for line in p.stderr:
        if line.startswith("listening on http://"):
            return p, line.split()[2][len("http://"):]
def status(pid):
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, v = l.split(":", 1); d[k] = v.strip()
    t = open(f"/proc/{pid}/stat").read().split()
    cpu = (int(t[13]) + int(t[14])) / os.sysconf("SC_CLK_TCK")
    return int(d["VmRSS"].split()[0]) // 1024, int(d["VmHWM"].split()[0]) // 1024, cpu
def send(addr, head, body, results):
    h, port = addr.split(":")
    s = socket.create_connection((h, int(port))); s.settimeout(120)
    t0 = time.time()
    try:
        s.sendall(head); s.sendall(body)
        results.append((s.recv(100).split(b"\r\n")[0].decode(), time.time() - t0))
    except Exception as e:
        results.append((repr(e), time.time() - t0))
    s.close()
if part == "load":
    p, addr = start(["--repository", "repo", "--admin-key", "sekrit", "--timeout-ms", "3000"])
    body = b" " * (15 << 20)
    head = f"POST /v2/repository/models/m/load HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    before = status(p.pid); res = []
    th = [threading.Thread(target=send, args=(addr, head, body, res)) for _ in range(60)]
    [t.start() for t in th]; [t.join() for t in th]
    after = status(p.pid)
    # A keyed load whose body trickles: how long the connection is held.
    keyed = f"POST /v2/repository/models/m/load HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\nContent-Length: 1000\r\n\r\n".encode()
    h, port = addr.split(":"); s = socket.create_connection((h, int(port))); s.settimeout(90); s.sendall(keyed + b" ")
    t0 = time.time()
    try: answer = s.recv(100).split(b"\r\n")[0].decode()
    except Exception as e: answer = repr(e)
    print(f"keyless 60 x 15 MiB: {sorted(set(r[0] for r in res))}, RSS before {before[0]} MB, peak {after[1]} MB, CPU {after[2]-before[2]:.2f} s; keyed trickle answered {answer!r} after {time.time()-t0:.1f} s")
else:
    # 200 infer requests of about 16 MiB, 20 at a time: binary FP32 tensors, or JSON numbers.
    p, addr = start(["--model", "model.maas", "--timeout-ms", "60000", "--max-body-bytes", str(17 << 20)])
    if part == "json":
        n = (16 << 20) // (3072 * 7)
        body = json.dumps({"inputs": [{"name": "input", "shape": [n, 3, 32, 32], "datatype": "FP32", "data": [0.123] * (n * 3072)}]}).encode()
        extra = ""
    else:
        n = (16 << 20) // 12288
        header = json.dumps({"inputs": [{"name": "input", "shape": [n, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": n * 12288}}]}).encode()
        body = header + struct.pack("<f", 0.5) * (n * 3072)
        extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
    head = f"POST /v2/models/maas/infer HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
    before = status(p.pid); res = []
    for wave in range(10):
        th = [threading.Thread(target=send, args=(addr, head, body, res)) for _ in range(20)]
        [t.start() for t in th]; [t.join() for t in th]
    burst = status(p.pid); time.sleep(30); idle = status(p.pid)
    print(f"200 x {len(body)>>20} MiB {part} requests: {sorted(set(r[0] for r in res))}, RSS before {before[0]} MB, peak {burst[1]} MB, after the burst {burst[0]} MB, 30 s idle {idle[0]} MB")
p.terminate(); p.wait()
