"""Writes generated CIFAR-10-shaped data in the real binary layout (3073-byte records: label, then
3072 pixel bytes, channel-major), the same files for maas and the peers. Each class has a fixed
random template and every image is 20% template, 80% uniform noise: learnable in an epoch or two
(maas, Keras and PyTorch all reach 99-100% test accuracy), so a loss or accuracy that fell behind
would show. (At 15% the outcome turned on the initial draw: in one sitting maas reached 99% at
batch 32 and 66% at batch 128, Keras 86% and 100%, PyTorch 100% and 100%.)

    python3 bench/make_data.py DIR N_TRAIN [N_TEST]

DIR/cifar-10-batches-bin/ gets data_batch_1..5.bin (N_TRAIN records between them),
test_batch.bin (N_TEST, default 10000) and batches.meta.txt."""
import os, sys
import numpy as np

out, n_train = sys.argv[1], int(sys.argv[2])
n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
folder = os.path.join(out, "cifar-10-batches-bin")
os.makedirs(folder, exist_ok=True)
rng = np.random.default_rng(0)

templates = rng.integers(0, 256, (10, 3072)).astype(np.float32)

def records(n):
    labels = rng.integers(0, 10, n)
    pixels = 0.2 * templates[labels] + 0.8 * rng.integers(0, 256, (n, 3072))
    r = np.empty((n, 3073), dtype=np.uint8)
    r[:, 0] = labels
    r[:, 1:] = np.clip(np.rint(pixels), 0, 255)
    return r

for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
    records(len(part)).tofile(os.path.join(folder, f"data_batch_{i}.bin"))
records(n_test).tofile(os.path.join(folder, "test_batch.bin"))
with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
    f.write("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n")
