#!/usr/bin/env python3
"""Torch baselines for scripts/gpu-check.sh, measured in the same run as bench_gpu.

Writes one JSON object per line (name, ms, and the sizes) to --out. The names match the
rows of docs/benchmarks.md and ../shared/design/PERFORMANCE.md:

  torch_copy_1GiB, torch_gemm_8192_{fp32,tf32,bf16}
  torch_class_means_C{10,1000,100000}      index_add_ + bincount, N = 2^20, D = 512
  torch_scatter_reduce_C{...}              scatter_reduce_ sum only
  torch_sigma_w                            centre by class means + X^T X (FP32), C = 100
  torch_nc1_pinv_d512_C100, torch_nc1_pinv_d2048_C100
  torch_topk_n{N}_d{D}_k{K}_{fp32,tf32}    cosine, leave-one-out, 4096-query chunks: mm + topk
  torch_mm_n{N}_d{D}_{fp32,tf32}           the same chunks, mm only

Times are medians of CUDA-event timings after a warm-up, with the L2 cache flushed (a 512 MiB
write) before each repetition, on random inputs.
"""
import argparse
import json
import sys

import torch


def timed(fn, reps, flush, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        flush.fill_(i & 0xFF)
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


class Out:
    def __init__(self, path):
        self.f = open(path, "w")

    def __call__(self, name, ms, **extra):
        rec = {"name": name, "ms": ms}
        rec.update(extra)
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        print(f"{name:<48} {ms:10.3f} ms", flush=True)


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def ceilings(out, flush, quick):
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 10, flush)
    out("torch_copy_1GiB", ms, gbps=2 * (1 << 30) / ms / 1e6)
    del src, dst
    n = 8192
    a = torch.randn(n, n, device="cuda")
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        set_tf32(tf32)
        x = a.to(dtype)
        ms = timed(lambda: x @ x, 3 if quick else 5, flush)
        out(f"torch_gemm_8192_{name}", ms, tflops=2 * n**3 / ms / 1e9)
    set_tf32(False)


def class_stats(out, flush, quick):
    set_tf32(False)
    n, d = 1 << 20, 512
    x = torch.randn(n, d, device="cuda") + 1.0
    for c in (10, 1000, 100000):
        y = torch.randint(0, c, (n,), device="cuda")

        def means():
            s = torch.zeros(c, d, device="cuda").index_add_(0, y, x)
            cnt = torch.bincount(y, minlength=c)
            return s / cnt.clamp(min=1).unsqueeze(1)

        def scatter():
            return torch.zeros(c, d, device="cuda").scatter_reduce_(0, y.unsqueeze(1).expand(-1, d), x, "sum")

        out(f"torch_class_means_C{c}", timed(means, 5, flush), n=n, d=d, C=c)
        out(f"torch_scatter_reduce_C{c}", timed(scatter, 5, flush), n=n, d=d, C=c)
    c = 100
    y = torch.randint(0, c, (n,), device="cuda")

    def sigma_w():
        s = torch.zeros(c, d, device="cuda").index_add_(0, y, x)
        mu = s / torch.bincount(y, minlength=c).clamp(min=1).unsqueeze(1)
        xc = x - mu[y]
        return xc.T @ xc / n

    out("torch_sigma_w", timed(sigma_w, 3, flush), n=n, d=d, C=c)


def nc1(out, flush, quick):
    set_tf32(False)
    for n, d in ((1 << 20, 512), (1 << 18, 2048)):
        c = 100
        x = torch.randn(n, d, device="cuda") + 0.5
        y = torch.randint(0, c, (n,), device="cuda")

        def run():
            s = torch.zeros(c, d, device="cuda").index_add_(0, y, x)
            cnt = torch.bincount(y, minlength=c).clamp(min=1).unsqueeze(1)
            mu = s / cnt
            xc = x - mu[y]
            sw = xc.T @ xc / n
            m = mu - x.mean(0)
            sb = m.T @ m / c
            return torch.trace(sw @ torch.linalg.pinv(sb)) / c

        out(f"torch_nc1_pinv_d{d}_C{c}", timed(run, 3, flush), n=n, d=d, C=c)
        del x, y


def topk(out, flush, quick, n, d, k, reps):
    x = torch.nn.functional.normalize(torch.randn(n, d, device="cuda"), dim=1)
    chunk = 4096
    for name, tf32 in (("fp32", False), ("tf32", True)):
        set_tf32(tf32)

        def search():
            for q0 in range(0, n, chunk):
                q1 = min(n, q0 + chunk)
                s = x[q0:q1] @ x.T
                s[torch.arange(q1 - q0, device="cuda"), torch.arange(q0, q1, device="cuda")] = float("-inf")
                s.topk(k, dim=1)

        def mm():
            for q0 in range(0, n, chunk):
                x[q0:min(n, q0 + chunk)] @ x.T

        flops = 2.0 * n * n * d
        ms = timed(search, reps, flush)
        out(f"torch_topk_n{n}_d{d}_k{k}_{name}", ms, tflops=flops / ms / 1e9, n=n, d=d, k=k)
        ms = timed(mm, reps, flush)
        out(f"torch_mm_n{n}_d{d}_k{k}_{name}", ms, tflops=flops / ms / 1e9, n=n, d=d)
    set_tf32(False)
    del x


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 77
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    out = Out(args.out)
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    ceilings(out, flush, args.quick)
    class_stats(out, flush, args.quick)
    nc1(out, flush, args.quick)
    topk(out, flush, args.quick, 60000, 512, 8, 3 if args.quick else 5)
    topk(out, flush, args.quick, 60000, 512, 1000, 3 if args.quick else 5)
    if not args.quick:
        topk(out, flush, args.quick, 200000, 512, 32, 2)
    topk(out, flush, args.quick, 400000, 128, 16, 1 if args.quick else 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
