#!/usr/bin/env python3
"""The shapes of benches/kernels.rs through PyTorch (cuDNN convolution, cuBLAS linear, SDPA attention,
GroupNorm + SiLU), f16 and channels_last, so the kernel table of `LCM_BENCH_QUICK=1 kernels` has a
reference beside it measured on the same card in the same call (scripts/device-bench.sh).

Each case: 3 warm-up calls, then the mean of --reps back-to-back calls between two CUDA events.

  python3 scripts/torch_kernel_reference.py [--reps 20]
"""

import argparse

import torch
import torch.nn.functional as F

F16 = dict(device="cuda", dtype=torch.float16)


def time_us(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def row(name, us, flops):
    rate = f"{flops / us / 1e6:10.1f}" if flops else f"{'-':>10}"
    print(f"{name:<44} {us:>10.1f} {rate}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"{'torch reference (' + torch.cuda.get_device_name() + ')':<44} {'time (us)':>10} {'TFLOP/s':>10}")

    # conv 3x3 / 1x1 at UNet and VAE-decoder shapes: (size, c_in, c_out, kernel)
    for h, ci, co, k in [(64, 320, 320, 3), (32, 640, 640, 3), (16, 1280, 1280, 3), (128, 512, 512, 3),
                         (256, 256, 256, 3), (512, 128, 128, 3)]:
        x = torch.randn(1, ci, h, h, **F16).to(memory_format=torch.channels_last)
        w = torch.randn(co, ci, k, k, **F16).to(memory_format=torch.channels_last)
        b = torch.randn(co, **F16)
        us = time_us(lambda: F.conv2d(x, w, b, padding=k // 2), args.reps)
        row(f"conv {h}x{h} {ci}->{co} k{k}", us, 2 * h * h * ci * co * k * k)

    # transformer linears at 64x64 latents, and CLIP's
    for m, kk, n in [(4096, 320, 320), (4096, 320, 2560), (4096, 1280, 320), (77, 768, 768)]:
        x, w, b = torch.randn(m, kk, **F16), torch.randn(n, kk, **F16), torch.randn(n, **F16)
        row(f"linear {m}x{kk}->{n}", time_us(lambda: F.linear(x, w, b), args.reps), 2 * m * kk * n)

    # attention: (queries, keys, heads, head dim, causal)
    for nq, nkv, heads, d, causal in [(4096, 4096, 8, 40, False), (4096, 77, 8, 40, False),
                                      (1024, 1024, 8, 80, False), (256, 256, 8, 160, False),
                                      (77, 77, 12, 64, True), (4096, 4096, 1, 512, False)]:
        q = torch.randn(1, heads, nq, d, **F16)
        k, v = torch.randn(1, heads, nkv, d, **F16), torch.randn(1, heads, nkv, d, **F16)
        us = time_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), args.reps)
        row(f"sdpa nq{nq} nkv{nkv} {heads}x{d}", us, 4 * nq * nkv * heads * d * (0.5 if causal else 1))

    for h, c in [(64, 320), (512, 128)]:
        x = torch.randn(1, c, h, h, **F16).to(memory_format=torch.channels_last)
        gn = torch.nn.GroupNorm(32, c).half().cuda()
        row(f"group_norm+silu {h}x{h} C{c}", time_us(lambda: F.silu(gn(x)), args.reps), 0)


if __name__ == "__main__":
    main()
