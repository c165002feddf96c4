"""Drives a `maas serve --repository` with the stock tritonclient (HTTP): the repository index,
each version answering as its own file, a load after replacing a file, a corrupt file refused
while the old version keeps answering, unload, statistics, and the admin key (403 without one).

Arguments: URL REPO FILE_A FILE_B ADMIN_KEY URL_WITHOUT_ADMIN_KEY. Prints one JSON document of
what it saw; the Rust test (tests/it/repository.rs) judges it."""
import json
import os
import shutil
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, repo, file_a, file_b, key, url_no_admin = sys.argv[1:7]
admin = {"Authorization": "Bearer " + key}
client = httpclient.InferenceServerClient(url)
x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)


def infer(name, version="", values=x):
    tensor = httpclient.InferInput("input", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    result = client.infer(name, [tensor], model_version=version)
    return result.as_numpy("probabilities"), result.get_response()["model_version"]


def failure(call):
    """The HTTP status and message of a call that must fail."""
    try:
        call()
    except InferenceServerException as e:
        return [e.status(), e.message()]
    return ["no error", ""]


def replace(version, source):
    """Replaces repo/cifar/VERSION/model.maas the way a deployment would: a new file renamed over."""
    target = os.path.join(repo, "cifar", version, "model.maas")
    shutil.copyfile(source, target + ".new")
    os.replace(target + ".new", target)


seen = {}
seen["index"] = client.get_model_repository_index(headers=admin)
p1, v1 = infer("cifar", "1")
p2, v2 = infer("cifar", "2")
latest, v_latest = infer("cifar")
seen["versions"] = [v1, v2, v_latest]
seen["v1_differs_from_v2"] = not np.allclose(p1, p2, atol=1e-6)
seen["latest_is_v2"] = bool(np.allclose(latest, p2, atol=1e-6))
seen["metadata_versions"] = client.get_model_metadata("cifar")["versions"]
seen["wrong_key"] = failure(lambda: client.load_model("cifar", headers={"Authorization": "Bearer wrong"}))

# Version 1 gets version 2's file: after the load it answers as version 2 does.
replace("1", file_b)
client.load_model("cifar", headers=admin)
seen["v1_after_load_is_v2"] = bool(np.allclose(infer("cifar", "1")[0], p2, atol=1e-6))

# A corrupt version 2 is refused, with the reason, and the old file keeps answering.
with open(os.path.join(repo, "cifar", "2", "model.maas.bad"), "wb") as f:
    f.write(b"not a model at all")
os.replace(os.path.join(repo, "cifar", "2", "model.maas.bad"), os.path.join(repo, "cifar", "2", "model.maas"))
seen["corrupt_load"] = failure(lambda: client.load_model("cifar", headers=admin))
seen["v2_after_corrupt_is_old_v2"] = bool(np.allclose(infer("cifar", "2")[0], p2, atol=1e-6))
seen["index_after_corrupt"] = client.get_model_repository_index(headers=admin)

# Statistics count what was sent: two requests of three images, one refused request.
infer("other")
infer("other")
seen["bad_request"] = failure(lambda: infer("other", values=np.zeros((1, 3, 8, 8), dtype=np.float32)))
seen["stats_other"] = client.get_inference_statistics("other")
seen["stats_other_v1"] = client.get_inference_statistics("other", "1")
seen["stats_all_names"] = sorted(
    (s["name"], s["version"]) for s in client.get_inference_statistics()["model_stats"]
)

# Unload: no longer ready nor answering, listed as unloaded; a load brings it back.
client.unload_model("other", headers=admin)
seen["other_ready_after_unload"] = client.is_model_ready("other")
seen["infer_after_unload"] = failure(lambda: infer("other"))
seen["index_after_unload"] = client.get_model_repository_index(headers=admin)
client.load_model("other", headers=admin)
seen["other_ready_after_load"] = client.is_model_ready("other")

# A server started without --admin-key refuses every repository call.
plain = httpclient.InferenceServerClient(url_no_admin)
seen["no_admin_key"] = [
    failure(lambda: plain.get_model_repository_index()),
    failure(lambda: plain.load_model("cifar", headers=admin)),
    failure(lambda: plain.unload_model("cifar", headers=admin)),
]
print(json.dumps(seen))
