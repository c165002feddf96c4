"""Drives `maas serve --grpc-port` with KServe's own gRPC client (kserve.InferenceGRPCClient) and,
for the repository calls that client lacks, KServe's generated stub, which numbers their fields
as KServe's .proto does (tritonclient numbers them as Triton's; tests/python/triton_grpc.py).
Run in a process of its own: kserve and tritonclient[grpc] register messages of the same
`inference` package and cannot be imported together.

    kserve_grpc.py GRPC_ADDR API_KEY ADMIN_KEY

Prints one JSON document of what it saw; the Rust test (tests/it/grpc.rs) judges it."""
import asyncio
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

addr, key, admin_key = sys.argv[1:4]
x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)


async def infer(client, name):
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    response = await client.infer(InferRequest(model_name=name, infer_inputs=[tensor]),
                                  headers=[("authorization", "Bearer " + key)])
    return response.outputs[0].as_numpy()


async def main():
    seen = {}
    client = InferenceGRPCClient(addr)
    seen["live"] = await client.is_server_live()
    seen["ready"] = await client.is_model_ready("other", headers=[("authorization", "Bearer " + key)])
    probabilities = await infer(client, "other")
    seen["shape"] = list(probabilities.shape)
    seen["rows_sum_to_one"] = bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5))

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
    admin = [("authorization", "Bearer " + admin_key)]
    unloaded = stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="other"), metadata=admin)
    seen["unload"] = [unloaded.model_name, unloaded.isUnloaded]
    seen["ready_after_unload"] = await client.is_model_ready("other", headers=[("authorization", "Bearer " + key)])
    loaded = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="other"), metadata=admin)
    seen["load"] = [loaded.model_name, loaded.isLoaded]
    seen["same_after_load"] = bool(np.allclose(await infer(client, "other"), probabilities, atol=1e-6))
    try:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="../other"), metadata=admin)
        seen["outside"] = "no error"
    except grpc.RpcError as e:
        seen["outside"] = [str(e.code()), e.details()]
    await client.close()
    return seen


print(json.dumps(asyncio.run(main())))
