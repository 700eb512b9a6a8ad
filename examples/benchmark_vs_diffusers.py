"""lcm and diffusers side by side in one process: the same model folder, prompt and seed; prints each
one's time per image and how far apart their latents and pixels are.

    pip install ./crates/lcm-py diffusers transformers torch   # torch's CUDA build for a GPU
    python examples/benchmark_vs_diffusers.py --model models/lcm-dreamshaper-v7 --steps 4 --guidance 8

A diffusers folder of an LCM (LatentConsistencyModelPipeline), or SD1.5 with --lora for the LCM-LoRA.
Runs each pipeline --warmup times untimed, then --repeat times; reports the median. diffusers runs in
float16 on CUDA (as lcm does there) and float32 on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lcm


def median_time(fn, warmup: int, repeat: int):
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers model folder")
    ap.add_argument("--lora", help="a LoRA file (e.g. the LCM-LoRA's pytorch_lora_weights.safetensors)")
    ap.add_argument("--prompt", default="a photo of a cabin in the snow, golden hour")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="auto", help="lcm's device: auto, cpu, cuda")
    args = ap.parse_args()

    import torch
    from diffusers import DiffusionPipeline, LCMScheduler

    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.size, height=args.size)

    pipe = lcm.Pipeline.from_pretrained(args.model, device=args.device,
                                        loras=[args.lora] if args.lora else None)
    cuda = pipe.device.startswith("cuda") and torch.cuda.is_available()
    t_lcm, ours = median_time(lambda: pipe(args.prompt, seed=args.seed, output_type="np", **kw),
                              args.warmup, args.repeat)

    dtype = torch.float16 if cuda else torch.float32
    ref = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None)
    ref.scheduler = LCMScheduler.from_config(ref.scheduler.config)
    if args.lora:
        ref.load_lora_weights(args.lora)
        ref.fuse_lora()
    ref = ref.to("cuda" if cuda else "cpu")
    ref.set_progress_bar_config(disable=True)

    def run_diffusers():
        # The same stream lcm draws from: torch.Generator("cpu").manual_seed(seed).
        g = torch.Generator("cpu").manual_seed(args.seed)
        out = ref(args.prompt, generator=g, output_type="np", **kw)
        if cuda:
            torch.cuda.synchronize()
        return out

    t_ref, theirs = median_time(run_diffusers, args.warmup, args.repeat)

    a, b = ours.images[0].astype(np.float64), np.asarray(theirs.images[0], np.float64)
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}, "
          f"seed {args.seed}; lcm on {pipe.device}, diffusers on {'cuda' if cuda else 'cpu'} ({dtype})")
    print(f"lcm        {t_lcm * 1e3:9.1f} ms/image  (stages: {ours.timings})")
    print(f"diffusers  {t_ref * 1e3:9.1f} ms/image")
    print(f"speed-up   {t_ref / t_lcm:9.2f}x")
    print(f"pixels: mean |lcm - diffusers| {np.abs(a - b).mean() * 255:.2f}/255, "
          f"max {np.abs(a - b).max() * 255:.0f}/255")


if __name__ == "__main__":
    main()
