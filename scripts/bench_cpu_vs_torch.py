#!/usr/bin/env python3
"""CPU side by side: lcm's CPU backend against PyTorch (diffusers, f32) at SD1.5 or SDXL shapes, same machine, same run.

Times one UNet forward and one VAE decode in diffusers (random weights of the --arch's shapes; the numbers
do not depend on the values), then runs `lcm bench --device cpu --arch ARCH --json` at the same size, and
prints a table with the ratios (lcm time / torch time; the goal is <= 1.5).

    python scripts/bench_cpu_vs_torch.py --lcm target/release/lcm --size 256 --repeat 3
    python scripts/bench_cpu_vs_torch.py --lcm target/release/lcm --arch sdxl --size 512 --repeat 2

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
MODELS = os.path.join(HERE, "..", "crates", "lcm-models", "src")


def arch_config(arch, name):
    """The configs lcm itself uses for synthetic weights (crates/lcm-models/src/{sd15,sdxl}.rs)."""
    text = open(os.path.join(MODELS, f"{arch}.rs")).read()
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
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15", help="the model shapes to time")
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latents are size/8)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    h = args.size // 8
    unet_config = arch_config(args.arch, "UNET_CONFIG")
    unet = UNet2DConditionModel(**unet_config).eval()
    vae = AutoencoderKL(**arch_config(args.arch, "VAE_CONFIG")).eval()
    sample = torch.randn(1, 4, h, h)
    ctx = torch.randn(1, 77, unet_config["cross_attention_dim"])
    t = torch.tensor(999)
    added = None
    if unet_config.get("addition_embed_type") == "text_time":
        # SDXL's added conditioning: the pooled text embedding and six time ids (sizes and crop).
        pooled = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(1, pooled),
                 "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]], dtype=torch.float32)}
    torch_unet = median_ms(lambda: unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added),
                           args.warmup, args.repeat)
    torch_vae = median_ms(lambda: vae.decode(sample), args.warmup, args.repeat)
    del unet, vae

    cmd = [args.lcm, "bench", "--device", "cpu", "--arch", args.arch,
           "--width", str(args.size), "--height", str(args.size),
           "--steps", "1", "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    stages = {s["name"]: s["median_ms"] for s in json.loads(out)["stages"]}

    print(f"{args.arch}, CPU, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{args.size}x{args.size} batch 1, median of {args.repeat}")
    print(f"{'stage':<12} {'torch ms':>10} {'lcm ms':>10} {'lcm/torch':>10}")
    for name, tm, lm in [("unet step", torch_unet, stages["unet_step"]), ("vae decode", torch_vae, stages["vae_decode"])]:
        print(f"{name:<12} {tm:>10.1f} {lm:>10.1f} {lm / tm:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
