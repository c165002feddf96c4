"""The peers of `bench/run.py real`: ../shared/peers' MLP and CNN in PyTorch (same layers, Adam 1e-3,
batch 32, cross-entropy), with the training recipe of `maas train`: --augment (torchvision-style:
4-pixel zero padding, random 32x32 crop, horizontal flip), --schedule constant|cosine|onecycle
(CosineAnnealingLR to 0 / OneCycleLR with PyTorch's defaults, stepped every batch, max_lr = --lr)
and --seed; --keras-init starts from Keras' initialisation (Glorot uniform weights, zero biases)
with Keras' Adam epsilon 1e-7, as maas does (PyTorch adds it after the bias correction, Keras
before: the one difference left). Prints one JSON line with the test accuracy after every epoch.
Usage: torch_recipe.py --data DIR/cifar-10-batches-bin [--arch mlp|cnn] [--epochs N] [--seed S]
       [--augment] [--schedule S] [--keras-init]"""
import argparse, glob, json, os, time
import numpy as np, torch

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True); ap.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
ap.add_argument("--epochs", type=int, default=10); ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--augment", action="store_true"); ap.add_argument("--keras-init", action="store_true")
ap.add_argument("--schedule", default="constant", choices=["constant", "cosine", "onecycle"])
a = ap.parse_args()

def load(paths):
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, 3073) for p in paths])
    return (torch.from_numpy(raw[:, 1:].astype(np.float32).reshape(-1, 3, 32, 32) / 255),
            torch.from_numpy(raw[:, 0].astype(np.int64)))

xtr, ytr = load(sorted(glob.glob(os.path.join(a.data, "data_batch_*.bin"))))
xte, yte = load([os.path.join(a.data, "test_batch.bin")])
torch.manual_seed(a.seed); nn = torch.nn
if a.arch == "mlp":
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 64), nn.ReLU(), nn.Linear(64, 10))
else:
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
if a.keras_init:
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight); nn.init.zeros_(layer.bias)
opt = torch.optim.Adam(model.parameters(), a.lr, eps=1e-7 if a.keras_init else 1e-8)
steps = a.epochs * ((len(xtr) + a.batch - 1) // a.batch)
# Only the chosen schedule is made: making a scheduler rewrites the optimizer's rate (OneCycleLR
# also its momentum) at once, so building all of them in a dict trained every "constant" run at
# OneCycleLR's starting rate, lr/25 with beta1 0.95 (the bug of the first version of this file).
sched = {"constant": lambda: None,
         "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
         "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)}[a.schedule]()
lossf = nn.CrossEntropyLoss()

def augment(x):
    """torchvision's RandomCrop(32, padding=4) and RandomHorizontalFlip, per image."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (n,)), torch.randint(0, 9, (n,))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(3)
    return out

accs, epoch_s = [], []
for e in range(a.epochs):
    t = time.time(); perm = torch.randperm(len(xtr)); model.train()
    for i in range(0, len(xtr), a.batch):
        idx = perm[i:i + a.batch]
        x = augment(xtr[idx]) if a.augment else xtr[idx]
        opt.zero_grad(); lossf(model(x), ytr[idx]).backward(); opt.step()
        if sched: sched.step()
    epoch_s.append(time.time() - t)
    model.eval()
    with torch.no_grad():
        accs.append((model(xte).argmax(1) == yte).float().mean().item())
print(json.dumps({"peer": f"torch_{a.arch}", "seed": a.seed, "augment": a.augment, "schedule": a.schedule,
                  "keras_init": a.keras_init,
                  "epochs": a.epochs, "test_acc_per_epoch": accs, "test_acc": accs[-1],
                  "samples_per_s_last_epoch": len(xtr) / epoch_s[-1], "wall_s": sum(epoch_s)}))
