"""The MLP in PyTorch with Keras' initialisation and epsilon (as `torch_recipe.py --keras-init`),
seed 3, 10 epochs, printing after each epoch how many of the 64 hidden ReLUs are dead (never
active on 2,000 test images) and the test accuracy. Usage: dead_units.py (data in /tmp/cifar)."""
import glob, os, numpy as np, torch
torch.manual_seed(3); nn = torch.nn
def load(paths):
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, 3073) for p in paths])
    return torch.from_numpy(raw[:, 1:].astype(np.float32) / 255), torch.from_numpy(raw[:, 0].astype(np.int64))
d = "/tmp/cifar/cifar-10-batches-bin"
xtr, ytr = load(sorted(glob.glob(d + "/data_batch_*.bin"))); xte, _ = load([d + "/test_batch.bin"])
model = nn.Sequential(nn.Linear(3072, 64), nn.ReLU(), nn.Linear(64, 10))
for l in (model[0], model[2]): nn.init.xavier_uniform_(l.weight); nn.init.zeros_(l.bias)
opt = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-7); lossf = nn.CrossEntropyLoss()
def dead():
    with torch.no_grad(): h = model[0](xte[:2000]); return int(((h > 0).float().mean(0) == 0).sum())
for e in range(10):
    perm = torch.randperm(len(xtr))
    for k, i in enumerate(range(0, len(xtr), 32)):
        idx = perm[i:i+32]; opt.zero_grad(); lossf(model(xtr[idx]), ytr[idx]).backward(); opt.step()
    with torch.no_grad(): acc = (model(xte).argmax(1) == load([d + "/test_batch.bin"])[1]).float().mean().item()
    print("torch epoch", e + 1, "dead units", dead(), "test acc", round(acc, 4), flush=True)
