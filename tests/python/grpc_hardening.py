"""Sends `maas serve --grpc-port` what issue 28 found the gRPC endpoint mishandled, with grpcio and
the stock tritonclient, and prints one JSON document of what came back; the Rust test
(tests/it/hardening_grpc.rs) judges it.

    grpc_hardening.py flood GRPC_ADDR API_KEY      # 16 MB of empty `inputs` / `outputs` entries
    grpc_hardening.py refusals GRPC_ADDR MAX_BODY  # malformed, oversize, compressed, two messages,
                                                   # odd versions, output parameters
    grpc_hardening.py live GRPC_ADDR               # ServerLive and ServerReady, 5 s deadline"""
import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

INFER = "/inference.GRPCInferenceService/ModelInfer"
# Room for a 16 MB message either way.
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def outcome(call):
    """[code, message] of a call: "OK" when it succeeded."""
    try:
        call()
    except InferenceServerException as e:
        return [str(e.status()), e.message()]
    except grpc.RpcError as e:
        return [str(e.code()), e.details()]
    return ["OK", ""]


def raw_infer(channel, message, metadata=None, compression=None):
    """ModelInfer with `message` sent as it is (bytes, not built by protobuf)."""
    call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    return lambda: call(message, metadata=metadata, timeout=60, compression=compression)


def request(version="", values=None):
    """A valid ModelInferRequest of one image, serialized."""
    values = np.full((1, 3, 32, 32), 0.5, dtype=np.float32) if values is None else values
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(values.shape))
    message = service_pb2.ModelInferRequest(model_name="maas", model_version=version, inputs=[tensor])
    message.raw_input_contents.append(values.tobytes())
    return message.SerializeToString()


def flood(addr, key):
    channel = grpc.insecure_channel(addr, options=OPTIONS)
    auth = [("authorization", "Bearer " + key)]
    # Field 5 (inputs) or 6 (outputs), each an empty message: 2 bytes on the wire.
    inputs = b"\x2a\x00" * 8_000_000
    outputs = b"\x32\x00" * 8_000_000
    seen = {
        "inputs_without_key": outcome(raw_infer(channel, inputs)),
        "inputs_with_key": outcome(raw_infer(channel, inputs, auth)),
        "outputs_with_key": outcome(raw_infer(channel, outputs, auth)),
        "valid_after": outcome(raw_infer(channel, request(), auth)),
    }
    print(json.dumps(seen))


def refusals(addr, max_body):
    channel = grpc.insecure_channel(addr, options=OPTIONS)
    two = channel.stream_unary(INFER, request_serializer=None, response_deserializer=None)
    client = grpcclient.InferenceServerClient(addr)
    tensor = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.full((1, 3, 32, 32), 0.5, dtype=np.float32))
    classes = grpcclient.InferRequestedOutput("probabilities", class_count=3)
    shared = grpcclient.InferRequestedOutput("probabilities")
    shared.set_shared_memory("region", 40)
    seen = {
        "valid": outcome(raw_infer(channel, request())),
        "malformed": outcome(raw_infer(channel, b"\xff\xff\xff")),
        "oversize": outcome(raw_infer(channel, b"\x0a" + b"\x00" * max_body)),
        "compressed": outcome(raw_infer(channel, request(), compression=grpc.Compression.Gzip)),
        "two_messages": outcome(lambda: two(iter([request(), request()]), timeout=60)),
        "version_1": outcome(raw_infer(channel, request("1"))),
        "version_plus_1": outcome(raw_infer(channel, request("+1"))),
        "version_01": outcome(raw_infer(channel, request("01"))),
        "classification": outcome(lambda: client.infer("maas", [tensor], outputs=[classes])),
        "shared_memory": outcome(lambda: client.infer("maas", [tensor], outputs=[shared])),
    }
    print(json.dumps(seen))


def live(addr):
    client = grpcclient.InferenceServerClient(addr)
    seen = {
        "live": outcome(lambda: client.is_server_live(client_timeout=5)),
        "ready": outcome(lambda: client.is_server_ready(client_timeout=5)),
    }
    seen["live_value"] = client.is_server_live(client_timeout=5) if seen["live"][0] == "OK" else None
    print(json.dumps(seen))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "flood":
        flood(args[0], args[1])
    elif mode == "refusals":
        refusals(args[0], int(args[1]))
    elif mode == "live":
        live(args[0])
    else:
        sys.exit(f"unknown mode {mode}")
