#!/usr/bin/env python3
"""NC-Init + perturbation injection (Park et al., AAAI 2026) in a plain PyTorch loop.

The protocol of the C++ demo (examples/finetune_omniglot) on the bundled data, CPU only:
a small CNN pretrained as an MNIST digit classifier gets a new linear embedding and is
finetuned with Proxy-Anchor (written in torch) on the characters of Omniglot alphabets
{0, 2, 4, 6}, then evaluated zero-shot on alphabets {1, 3, 5, 7}. Three arms:

  baseline    proxies Kaiming-normal (the Proxy-Anchor reference code's initialization)
  nc_init     proxies = ncml.init_head(E0, y): each class's first principal direction of the
              embeddings before any step (the paper's Algorithm 1)
  nc_init_pi  nc_init, and every warm-up step's forward and backward pass inside
              `with pert.perturb(proxies, step):` (Algorithm 2: gradient at clean + noise,
              optimizer step on the clean proxies)

Each epoch: Recall@{1,2,4,8} and MAP@R of the test embeddings (ncml.evaluate_retrieval, which
reads the torch tensor in place), NC1 of the test embeddings (ncml.nc1) and the proxies' drift
from the initial NC directions (ncml.DriftTracker). Under a minute on one core (--quick:
about half of that).

    PYTHONPATH=build/python python3 python/examples/finetune.py [--quick] [--verify]
"""
import argparse
import contextlib
import copy
import gzip
import os
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("finetune.py needs PyTorch (Debian: python3-torch); skipped")
    sys.exit(77)

import ncml

HERE = os.path.dirname(os.path.abspath(__file__))
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081  # the "pretrained model's" input statistics (MNIST)


def read_idx(path):
    """An IDX file (the MNIST format: zero bytes, type 0x08 = uint8, rank, big-endian sizes), gzipped."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=rank, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


def images(a):
    return torch.from_numpy(((a.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD)[:, None])


def load_data(data_dir):
    mnist_x = read_idx(os.path.join(data_dir, "mnist-images-idx3-ubyte.gz"))
    mnist_y = read_idx(os.path.join(data_dir, "mnist-labels-idx1-ubyte.gz")).astype(np.int64)
    order = np.random.default_rng(20260101).permutation(len(mnist_y))   # fixed 9000 / 1000 split
    n_train = len(order) * 9 // 10
    mnist = {"train": (images(mnist_x[order[:n_train]]), torch.from_numpy(mnist_y[order[:n_train]])),
             "heldout": (images(mnist_x[order[n_train:]]), torch.from_numpy(mnist_y[order[n_train:]]))}
    omni_x = read_idx(os.path.join(data_dir, "omniglot-images28-idx3-ubyte.gz"))
    omni_y = read_idx(os.path.join(data_dir, "omniglot-labels-idx1-ubyte.gz")).astype(np.int64)
    alphabet = read_idx(os.path.join(data_dir, "omniglot-alphabets-idx1-ubyte.gz"))

    def split(alphabets):
        rows = np.flatnonzero(np.isin(alphabet, alphabets))
        _, labels = np.unique(omni_y[rows], return_inverse=True)   # characters renumbered 0..C-1
        return images(omni_x[rows]), torch.from_numpy(labels.astype(np.int64))

    return mnist, split([0, 2, 4, 6]), split([1, 3, 5, 7])


class Backbone(nn.Module):
    """The C++ demo's CNN: three conv-BN-ReLU-maxpool stages (16, 32, 64 channels) and a BN-ReLU
    linear layer, 128 nonnegative features like a ResNet's pooled ones."""

    features = 128

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (16, 32, 64):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(64 * 3 * 3, self.features, bias=False), nn.BatchNorm1d(self.features),
                   nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def freeze_except_batch_norm(self, frozen):
        for m in self.modules():
            bn = isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
            for p in m.parameters(recurse=False):
                p.requires_grad_(bn or not frozen)


class Embedder(nn.Module):
    """backbone -> new linear embedding -> L2 normalization."""

    def __init__(self, backbone, dim):
        super().__init__()
        self.backbone = backbone
        self.embedding = nn.Linear(Backbone.features, dim)

    def forward(self, x):
        return F.normalize(self.embedding(self.backbone(x)), dim=1)


@torch.no_grad()
def embed_all(model, x, batch=500):
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def pretrain(mnist, epochs, digits, seed):
    torch.manual_seed(seed)
    backbone = Backbone()
    model = nn.Sequential(backbone, nn.Linear(Backbone.features, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = (t[:digits] for t in mnist["train"])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - 1, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    hx, hy = mnist["heldout"]
    accuracy = (embed_all(model, hx).argmax(1) == hy).double().mean().item()
    return backbone, accuracy


def proxy_anchor(x, y, proxies, alpha=32.0, delta=0.1):
    """Proxy-Anchor (Kim et al. 2020) as in the authors' reference code: x unit embeddings [B, D]."""
    cos = x @ F.normalize(proxies, dim=1).T
    pos = F.one_hot(y, proxies.shape[0]).to(cos.dtype)
    neg = 1 - pos
    pos_sum = (torch.exp(-alpha * (cos - delta)) * pos).sum(0)
    neg_sum = (torch.exp(alpha * (cos + delta)) * neg).sum(0)
    with_pos = (pos.sum(0) > 0).sum()
    return torch.log1p(pos_sum).sum() / with_pos + torch.log1p(neg_sum).sum() / proxies.shape[0]


def evaluate(model, test, proxies, drift, threads):
    te = embed_all(model, test[0])                     # a torch tensor: ncml reads it in place
    rep = ncml.evaluate_retrieval(te, test[1], ks=[1, 2, 4, 8], threads=threads)
    drift.update(proxies.detach())
    return {"recall": rep["recall_at_k"], "map_at_r": rep["map_at_r"],
            "nc1_test": ncml.nc1(te, test[1], threads=threads), "drift": drift.mean_squared_distance()}


def train_arm(arm, backbone, train, test, args, seed):
    torch.manual_seed(seed)                            # the same new embedding layer for every arm
    model = Embedder(copy.deepcopy(backbone), args.dim)
    x, y = train
    C = int(y.max()) + 1
    e0 = embed_all(model, x)                           # the embeddings the proxies live in (E_c)
    drift = ncml.DriftTracker(ncml.nc_directions(e0, y, threads=args.threads))
    if arm == "baseline":
        w0 = torch.from_numpy(ncml.init_head(C, args.dim, "kaiming_normal", seed=seed))
    else:
        w0 = ncml.init_head(e0, y, "nc_pc1", threads=args.threads)   # torch in, torch out
    proxies = nn.Parameter(w0)
    log = [dict(epoch=0, loss=float("nan"), **evaluate(model, test, proxies, drift, args.threads))]

    opt = torch.optim.AdamW([
        {"params": model.backbone.parameters(), "lr": args.lr},
        {"params": model.embedding.parameters(), "lr": args.lr},
        {"params": [proxies], "lr": args.lr * 100},
    ], weight_decay=1e-4)
    pert = ncml.Perturbation(sigma=args.sigma, seed=seed) if arm == "nc_init_pi" else None
    gen = torch.Generator().manual_seed(seed)
    step, agreement = 0, None
    for epoch in range(1, args.epochs + 1):
        warmup = epoch <= args.warmup
        model.backbone.freeze_except_batch_norm(warmup)
        perturb = pert is not None and (warmup or args.pi_after_warmup)
        model.train()
        order = torch.randperm(len(y), generator=gen)
        losses = []
        for i in range(0, len(y) - 1, args.batch):    # a last batch of one cannot train batch norm
            idx = order[i:i + args.batch]
            # Algorithm 2: forward and backward at clean + noise; the clean proxies are back
            # before the optimizer step, which so updates them.
            with pert.perturb(proxies, step) if perturb else contextlib.nullcontext():
                emb = model(x[idx])
                loss = proxy_anchor(emb, y[idx], proxies)
                opt.zero_grad()
                loss.backward()
                if agreement is None:                  # torch's loss vs ncml's analytic one
                    value, _, grad = ncml.proxy_anchor_loss(emb.detach(), y[idx], proxies.detach())
                    agreement = (abs(value - loss.item()) / abs(value),
                                 ((grad - proxies.grad).abs().max() / grad.abs().max()).item())
            opt.step()
            losses.append(loss.item())
            step += 1
        log.append(dict(epoch=epoch, loss=float(np.mean(losses)), **evaluate(model, test, proxies, drift, args.threads)))
    return log, agreement


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "data"), help="bundled data directory")
    p.add_argument("--arms", default="baseline,nc_init,nc_init_pi")
    p.add_argument("--epochs", type=int, default=4, help="epochs in all, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="warm-up epochs: backbone frozen except batch norm")
    p.add_argument("--sigma", type=float, default=1e-2, help="perturbation noise of nc_init_pi")
    p.add_argument("--pi-after-warmup", action="store_true", help="keep perturbing after the warm-up")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4, help="backbone and embedding (proxies x100)")
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--pretrain-digits", type=int, default=9000, help="MNIST training images used (at most 9000)")
    p.add_argument("--seed", type=int, default=0)
    # One thread: on small convolutions torch's thread team costs more than it gains (and a
    # busy machine makes its barriers much slower).
    p.add_argument("--threads", type=int, default=1, help="torch and ncml threads")
    p.add_argument("--quick", action="store_true", help="2 epochs (1 warm-up), pretraining on 3000 digits")
    p.add_argument("--verify", action="store_true", help="check the results; exit 1 if not plausible")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.warmup, args.pretrain_digits = 2, 1, 3000
    torch.set_num_threads(args.threads)
    t0 = time.time()

    mnist, train, test = load_data(args.data)
    backbone, accuracy = pretrain(mnist, args.pretrain_epochs, args.pretrain_digits, args.seed)
    print(f"ncml {ncml.__version__}; backbone pretrained on MNIST: held-out accuracy {100 * accuracy:.1f}% "
          f"({time.time() - t0:.1f} s)")
    print(f"Omniglot: train {len(train[1])} images of {int(train[1].max()) + 1} characters, "
          f"test {len(test[1])} images of {int(test[1].max()) + 1} characters")

    problems, results = [], {}
    for arm in args.arms.split(","):
        t = time.time()
        log, agreement = train_arm(arm, backbone, train, test, args, args.seed)
        results[arm] = log
        first, last = log[0], log[-1]
        print(f"  {arm:<11} R@1 {100 * first['recall'][0]:5.1f} -> {100 * last['recall'][0]:5.1f}  "
              f"R@8 {100 * last['recall'][3]:5.1f}  MAP@R {100 * last['map_at_r']:5.1f}  "
              f"NC1 test {last['nc1_test']:.3g}  drift {first['drift']:.3f} -> {last['drift']:.3f}  "
              f"({time.time() - t:.1f} s)")
        for e in log:
            if not all(0.0 <= r <= 1.0 for r in e["recall"]) or not np.isfinite(e["nc1_test"]):
                problems.append(f"{arm} epoch {e['epoch']}: metrics out of range")
        if arm != "baseline" and first["drift"] > 1e-6:
            problems.append(f"{arm}: NC-Init proxies should start on the NC directions (drift {first['drift']:.2e})")
        if arm == "baseline" and not 1.0 < first["drift"] < 3.0:
            problems.append(f"baseline: random proxies should start near drift 2 (got {first['drift']:.3f})")
        if agreement and max(agreement) > 1e-4:
            problems.append(f"{arm}: torch and ncml Proxy-Anchor disagree (relative {agreement})")
        if last["recall"][0] <= 0.2:
            problems.append(f"{arm}: R@1 {last['recall'][0]:.3f} is implausibly low")
    print(f"done in {time.time() - t0:.1f} s")
    if args.verify:
        for msg in problems:
            print("verify:", msg)
        if problems:
            sys.exit(1)
        print("verify: ok")


if __name__ == "__main__":
    main()
