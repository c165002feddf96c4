"""KServe's Python model server (the `kserve` package) serving maas's ONNX export through
onnxruntime: an Open Inference Protocol server that maas did not write, for tests/it/remote.rs.

    python3 tests/kserve_onnx_model.py MODEL.onnx PORT [NAME]

Its metadata gives no class names and no output shape, and it does not list the binary tensor
data extension, so maas's client learns the classes from an answer and sends JSON tensors."""

import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32)
        (probabilities,) = self.session.run(["probabilities"], {"input": x})
        output = InferOutput(
            name="probabilities", shape=list(probabilities.shape), datatype="FP32"
        )
        output.set_data_from_numpy(probabilities, binary_data=False)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[output]
        )


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "cifar"
    ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start(
        [OnnxModel(name, path)]
    )
