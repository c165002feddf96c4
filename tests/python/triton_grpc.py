"""Drives `maas serve --grpc-port` with the stock tritonclient (gRPC), against the same server's
REST answers through tritonclient (HTTP): health, metadata, every version answering as over REST
(FP32 and encoded images), typed contents as well as raw ones, API keys, errors with their gRPC
codes, the repository calls (load, a corrupt file refused, unload) and statistics.

    triton_grpc.py full GRPC_ADDR HTTP_ADDR REPO FILE_B API_KEY ADMIN_KEY PNG
    triton_grpc.py tls GRPC_ADDR HTTPS_URL API_KEY CACERT
    triton_grpc.py steady GRPC_ADDR SECONDS CLIENTS   # calls without pause; counts failures

Prints one JSON document of what it saw; the Rust test (tests/it/grpc.rs) judges it."""
import json
import os
import shutil
import ssl
import sys
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)


def failure(call):
    """The gRPC status code and message of a call that must fail."""
    try:
        call()
    except InferenceServerException as e:
        return [str(e.status()), e.message()]
    except grpc.RpcError as e:
        return [str(e.code()), e.details()]
    return ["no error", ""]


def grpc_infer(client, name, version="", values=x, headers=None, datatype="FP32"):
    tensor = grpcclient.InferInput("input", list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    result = client.infer(name, [tensor], model_version=version, headers=headers)
    return result.as_numpy("probabilities"), result.get_response().model_version


def full(grpc_addr, http_addr, repo, file_b, key, admin_key, png):
    auth = {"authorization": "Bearer " + key}
    admin = {"authorization": "Bearer " + admin_key}
    client = grpcclient.InferenceServerClient(grpc_addr)
    http = httpclient.InferenceServerClient(http_addr)

    def http_infer(name, version="", values=x, datatype="FP32"):
        tensor = httpclient.InferInput("input", list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=True)
        result = http.infer(name, [tensor], model_version=version, headers={"Authorization": auth["authorization"]})
        return result.as_numpy("probabilities")

    seen = {}
    # Triton's repository index, with the admin key only.
    seen["index"] = client.get_model_repository_index(headers=admin, as_json=True)["models"]
    seen["index_with_api_key"] = failure(lambda: client.get_model_repository_index(headers=auth))
    # Health needs no key; everything else does.
    seen["live"] = client.is_server_live()
    seen["ready"] = client.is_server_ready()
    seen["metadata_without_key"] = failure(lambda: client.get_server_metadata())
    seen["server_metadata"] = client.get_server_metadata(headers=auth, as_json=True)
    seen["model_metadata"] = client.get_model_metadata("cifar", headers=auth, as_json=True)
    seen["ready_v1"] = client.is_model_ready("cifar", "1", headers=auth)
    seen["ready_unknown"] = client.is_model_ready("nope", headers=auth)

    # Every version answers over gRPC as over REST.
    g1, v1 = grpc_infer(client, "cifar", "1", headers=auth)
    g2, v2 = grpc_infer(client, "cifar", "2", headers=auth)
    latest, v_latest = grpc_infer(client, "cifar", headers=auth)
    seen["versions"] = [v1, v2, v_latest]
    seen["shape"] = list(g1.shape)
    seen["v1_as_rest"] = bool(np.allclose(g1, http_infer("cifar", "1"), atol=1e-6))
    seen["v2_as_rest"] = bool(np.allclose(g2, http_infer("cifar", "2"), atol=1e-6))
    seen["v1_differs_from_v2"] = not np.allclose(g1, g2, atol=1e-6)
    seen["latest_is_v2"] = bool(np.allclose(latest, g2, atol=1e-6))

    # Encoded images (BYTES), as over REST.
    with open(png, "rb") as f:
        image = np.array([f.read()], dtype=np.object_)
    grpc_bytes, _ = grpc_infer(client, "cifar", "1", values=image, headers=auth, datatype="BYTES")
    seen["bytes_as_rest"] = bool(np.allclose(grpc_bytes, http_infer("cifar", "1", values=image, datatype="BYTES"), atol=1e-6))

    # Typed contents (fp32_contents) instead of raw_input_contents, by the generated stub.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_addr))
    request = service_pb2.ModelInferRequest(model_name="cifar", model_version="1", id="typed-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    response = stub.ModelInfer(request, metadata=[("authorization", auth["authorization"])])
    typed = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    seen["typed_as_raw"] = bool(np.allclose(typed, g1, atol=1e-6))
    seen["typed_id"] = response.id

    # Errors, with the codes Triton's gRPC endpoint uses.
    seen["wrong_key"] = failure(lambda: grpc_infer(client, "cifar", headers={"authorization": "Bearer nope"}))
    seen["unknown_model"] = failure(lambda: grpc_infer(client, "nope", headers=auth))
    seen["bad_shape"] = failure(lambda: grpc_infer(client, "cifar", values=np.zeros((1, 3, 8, 8), np.float32), headers=auth))
    seen["out_of_range"] = failure(lambda: grpc_infer(client, "cifar", values=np.full((1, 3, 32, 32), 2.0, np.float32), headers=auth))
    seen["too_large"] = failure(lambda: grpc_infer(client, "cifar", values=np.zeros((64, 3, 32, 32), np.float32), headers=auth))

    # The repository calls: the admin key, a load after replacing a file, a corrupt file refused
    # while the old version keeps answering, unload and load.
    seen["load_with_api_key"] = failure(lambda: client.load_model("cifar", headers=auth))
    seen["load_with_config"] = failure(lambda: client.load_model("cifar", headers=admin, config="{}"))
    target = os.path.join(repo, "cifar", "1", "model.maas")
    shutil.copyfile(file_b, target + ".new")
    os.replace(target + ".new", target)
    client.load_model("cifar", headers=admin)
    seen["v1_after_load_is_v2"] = bool(np.allclose(grpc_infer(client, "cifar", "1", headers=auth)[0], g2, atol=1e-6))
    corrupt = os.path.join(repo, "cifar", "2", "model.maas")
    with open(corrupt + ".bad", "wb") as f:
        f.write(b"not a model at all")
    os.replace(corrupt + ".bad", corrupt)
    seen["corrupt_load"] = failure(lambda: client.load_model("cifar", headers=admin))
    seen["v2_after_corrupt_is_old_v2"] = bool(np.allclose(grpc_infer(client, "cifar", "2", headers=auth)[0], g2, atol=1e-6))
    client.unload_model("other", headers=admin)
    seen["other_ready_after_unload"] = client.is_model_ready("other", headers=auth)
    seen["infer_after_unload"] = failure(lambda: grpc_infer(client, "other", headers=auth))
    # The index lists the unloaded model, except when asked for ready models only (by the stub:
    # tritonclient does not offer `ready`).
    admin_metadata = [("authorization", admin["authorization"])]
    index = lambda ready: sorted(f"{m.name}:{m.version}:{m.state}" for m in stub.RepositoryIndex(
        service_pb2.RepositoryIndexRequest(ready=ready), metadata=admin_metadata).models)
    seen["index_after_unload"] = index(False)
    seen["ready_index_after_unload"] = index(True)
    client.load_model("other", headers=admin)
    seen["other_ready_after_load"] = client.is_model_ready("other", headers=auth)

    # Statistics (read over REST: KServe's gRPC protocol has no statistics call) count the gRPC
    # requests: two of three images answered, one refused.
    grpc_infer(client, "other", headers=auth)
    grpc_infer(client, "other", headers=auth)
    failure(lambda: grpc_infer(client, "other", values=np.zeros((1, 3, 8, 8), np.float32), headers=auth))
    seen["stats_other"] = http.get_inference_statistics("other", headers={"Authorization": auth["authorization"]})
    # The same figures through Triton's gRPC statistics call (uint64 comes as strings in JSON).
    grpc_stats = client.get_inference_statistics("other", headers=auth, as_json=True)["model_stats"][0]
    rest_stats = seen["stats_other"]["model_stats"][0]
    figures = lambda s: [int(s["inference_count"]), int(s["execution_count"])] + [
        int(s["inference_stats"][k]["count"]) for k in ("success", "fail", "queue", "compute_infer")]
    seen["grpc_stats"] = figures(grpc_stats)
    seen["grpc_stats_equal_rest"] = figures(grpc_stats) == figures(rest_stats)
    seen["grpc_stats_all"] = sorted((s["name"], s["version"]) for s in
                                    client.get_inference_statistics(headers=auth, as_json=True)["model_stats"])
    return seen


def tls(grpc_addr, https_url, key, cacert):
    auth = {"authorization": "Bearer " + key}
    with open(cacert, "rb") as f:
        root = f.read()
    client = grpcclient.InferenceServerClient(grpc_addr, ssl=True, root_certificates=cacert)
    seen = {"live": client.is_server_live()}
    probabilities, _ = grpc_infer(client, "maas", headers=auth)
    seen["wrong_key"] = failure(lambda: grpc_infer(client, "maas", headers={"authorization": "Bearer nope"}))
    # This server has no admin key: the repository calls are off.
    seen["no_admin_key"] = [
        failure(lambda: client.get_model_repository_index(headers=auth)),
        failure(lambda: client.load_model("maas", headers=auth)),
        failure(lambda: client.unload_model("maas", headers=auth)),
    ]
    # The same request over HTTPS (REST, JSON), trusting the same certificate.
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.flatten().tolist()}]}).encode()
    request = urllib.request.Request(https_url + "/v2/models/maas/infer", data=body,
                                     headers={"Authorization": auth["authorization"], "Content-Type": "application/json"})
    context = ssl.create_default_context(cadata=root.decode())
    with urllib.request.urlopen(request, context=context) as answer:
        rest = np.array(json.load(answer)["outputs"][0]["data"], dtype=np.float32).reshape(probabilities.shape)
    seen["as_rest"] = bool(np.allclose(probabilities, rest, atol=1e-6))
    # A plaintext client cannot talk to the TLS port.
    seen["plaintext"] = failure(lambda: grpcclient.InferenceServerClient(grpc_addr).is_server_live())
    return seen


def steady(grpc_addr, seconds, clients):
    """CLIENTS threads, each with its own client, infer `cifar` without pause for SECONDS."""
    import threading
    import time

    stop_at = time.monotonic() + float(seconds)
    counts = {"requests": 0, "failed": 0, "first_error": None}
    lock = threading.Lock()

    def work():
        client = grpcclient.InferenceServerClient(grpc_addr)
        done = failed = 0
        error = None
        while time.monotonic() < stop_at:
            try:
                probabilities, _ = grpc_infer(client, "cifar", values=x[:1])
                assert probabilities.shape == (1, 10)
            except Exception as e:  # noqa: BLE001 - counted and reported
                failed += 1
                error = error or repr(e)
            done += 1
        with lock:
            counts["requests"] += done
            counts["failed"] += failed
            counts["first_error"] = counts["first_error"] or error

    threads = [threading.Thread(target=work) for _ in range(int(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    print(json.dumps({"full": full, "tls": tls, "steady": steady}[mode](*args)))
