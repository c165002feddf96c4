"""Two (N) scan-bomb JPEGs sent at once to `maas serve` while readiness and a small PNG infer are
probed every 0.25 s: the server's CPU, peak memory, and what the probes saw (issue 28, point 1).

    jpeg_serve.py MAAS MODEL BOMB [N] [TIMEOUT_MS] [serve flags...]
"""
import sys, os, time, subprocess, threading, urllib.request, urllib.error, io, socket, json
from PIL import Image
maas, model, bomb = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else os.cpu_count()
tmo = sys.argv[5] if len(sys.argv) > 5 else "3000"
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = dict(os.environ, MAAS_DEVICE="cpu", MAAS_PROGRESS="never", MAAS_NO_GRPC="1")
p = subprocess.Popen([maas, "serve", "--quiet", "--model", model,
                      "--port", str(port), "--timeout-ms", tmo] + sys.argv[6:], env=env, stderr=subprocess.PIPE)
base = f"http://127.0.0.1:{port}"
def req(path, body=None, timeout=600):
    try:
        r = urllib.request.urlopen(urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET"), timeout=timeout)
        return r.status, r.read().decode()[:200]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:200]
    except Exception as e:
        return -1, str(e)[:200]
for _ in range(200):
    if req("/v2/health/ready", timeout=1)[0] == 200: break
    time.sleep(0.1)
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def hwm():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmHWM"): return l.split()[1] + " KB"
buf = io.BytesIO(); Image.new("RGB", (256, 256), (9, 99, 199)).save(buf, "PNG"); small = buf.getvalue()
data = open(bomb, "rb").read()
print(f"{os.path.basename(maas)} {os.path.basename(bomb)} x{n}, --timeout-ms {tmo}, idle rss {hwm()}, cpu {cpu():.2f}")
c0 = cpu(); t0 = time.time(); answers = []
def send():
    st, body = req("/v1/predict", data)
    answers.append((round(time.time() - t0, 2), st, body[:120]))
ts = [threading.Thread(target=send) for _ in range(n)]
for t in ts: t.start()
time.sleep(0.3)
bad_ready = []; bad_infer = []; last_cpu = cpu(); idle_since = None
while True:
    t = round(time.time() - t0, 2)
    rs, rb = req("/v2/health/ready", timeout=30)
    if rs != 200: bad_ready.append((t, rs, rb[:150]))
    st, sb = req("/v1/predict", small, timeout=30)
    if st != 200: bad_infer.append((t, st, sb[:100]))
    time.sleep(0.25)
    c = cpu()
    if c - last_cpu < 0.02 and all(not x.is_alive() for x in ts):
        idle_since = idle_since or time.time()
        if time.time() - idle_since > 1: break
    else: idle_since = None
    last_cpu = c
    if time.time() - t0 > 300: print("gave up at 300 s"); break
print("bomb answers:", answers)
def span(xs): return f"{len(xs)} probes, from {xs[0][0]} s to {xs[-1][0]} s: {xs[0][1]} {xs[0][2]!r}" if xs else "none"
print("ready not 200:", span(bad_ready))
print("small infer not 200:", span(bad_infer))
print(f"server cpu for the bombs: {cpu() - c0:.2f} s; busy until ~{time.time() - t0 - 1.25:.1f} s; peak rss {hwm()}")
p.terminate(); p.wait()
