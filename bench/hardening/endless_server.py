"""A server that answers every request with a chunked body without end (issue 28, point 5).

    endless_server.py PORT &
    maas bench --url http://127.0.0.1:PORT --protocol v1-image --concurrency 1 --duration 8 --json
    (the client's VmHWM read from /proc/PID/status meanwhile)
"""
import socket, sys, threading
def handle(c):
    try:
        f = c.makefile('rb')
        while True:
            length = 0
            line = f.readline()
            if not line: return
            while True:
                h = f.readline()
                if h in (b'\r\n', b'\n', b''): break
                k, _, v = h.partition(b':')
                if k.strip().lower() == b'content-length': length = int(v)
            f.read(length)
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
            chunk = b'%x\r\n' % (1 << 20) + b' ' * (1 << 20) + b'\r\n'
            while True: c.sendall(chunk)
    except OSError:
        pass
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
