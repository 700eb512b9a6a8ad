#!/usr/bin/env python3
"""CPU side by side: lcm's CPU backend against PyTorch (diffusers, f32) at SD1.5 shapes, same machine, same run.

Times one UNet forward and one VAE decode in diffusers (random SD1.5-shaped weights; the numbers do not
depend on the values), then runs `lcm bench --device cpu --json` at the same size, and prints a table
with the ratios (lcm time / torch time; the goal is <= 1.5).

    python scripts/bench_cpu_vs_torch.py --lcm target/release/lcm --size 256 --repeat 3

Needs torch and diffusers (tests/fixtures/requirements.txt).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

HERE = os.path.dirname(os.path.abspath(__file__))
SD15 = os.path.join(HERE, "..", "crates", "lcm-models", "src", "sd15.rs")


def sd15_config(name):
    """The SD1.5 configs lcm itself uses for synthetic weights (crates/lcm-models/src/sd15.rs)."""
    text = open(SD15).read()
    start = text.index(f"pub const {name}: &str = r#\"") + len(f"pub const {name}: &str = r#\"")
    cfg = json.loads(text[start:text.index("\"#;", start)])
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def median_ms(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lcm", default=os.path.join(HERE, "..", "target", "release", "lcm"))
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latents are size/8)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    h = args.size // 8
    unet = UNet2DConditionModel(**sd15_config("UNET_CONFIG")).eval()
    vae = AutoencoderKL(**sd15_config("VAE_CONFIG")).eval()
    sample = torch.randn(1, 4, h, h)
    ctx = torch.randn(1, 77, 768)
    t = torch.tensor(999)
    torch_unet = median_ms(lambda: unet(sample, t, encoder_hidden_states=ctx), args.warmup, args.repeat)
    torch_vae = median_ms(lambda: vae.decode(sample), args.warmup, args.repeat)
    del unet, vae

    cmd = [args.lcm, "bench", "--device", "cpu", "--width", str(args.size), "--height", str(args.size),
           "--steps", "1", "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    stages = {s["name"]: s["median_ms"] for s in json.loads(out)["stages"]}

    print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{args.size}x{args.size} batch 1, median of {args.repeat}")
    print(f"{'stage':<12} {'torch ms':>10} {'lcm ms':>10} {'lcm/torch':>10}")
    for name, tm, lm in [("unet step", torch_unet, stages["unet_step"]), ("vae decode", torch_vae, stages["vae_decode"])]:
        print(f"{name:<12} {tm:>10.1f} {lm:>10.1f} {lm / tm:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
