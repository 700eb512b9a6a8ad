#!/usr/bin/env python3
"""lcm against diffusers on PyTorch: same SD1.5-shaped weights, same card, same call (issue 5, item 3).

Peers, each timed here on the folder scripts/torch_fullsize.py writes (text_encoder/, unet/, vae/, f16):
  eager    diffusers' StableDiffusionPipeline in f16 with its default attention (SDPA) and LCMScheduler,
           guidance 1 (LCM-LoRA merged is a plain UNet, so no CFG batch)
  compile  the same after torch.compile of the UNet, the VAE decoder and the text encoder (channels_last,
           --compile-mode), in a subprocess with a time cap (--compile-timeout): a compile that does not
           finish in time is skipped with a note, never waited for
  lcm      `lcm bench --json` outputs (--lcm-json), run just before on the same card by
           scripts/device-bench.sh; the table matches them to the configurations by size and batch

Stages as `lcm bench` times them (src/bench.rs): text_encoder (one prompt of 77 tokens), unet_step (one
UNet call on the batch), vae_decode (latents to image), end_to_end (prompt to decoded image: for
diffusers the pipeline call with output_type="np", for lcm CLIP + n steps + decode). Each number is the
median of --repeat runs after --warmup, host wall clock with torch.cuda.synchronize() on both sides.

Prints one table per configuration (each stage for lcm and each peer, and the ratios peer/lcm), last,
and writes them to --out with the suffix .txt; every number goes to --out as JSON.

  python3 scripts/bench_gpu_vs_torch.py --model /tmp/sd15 --lcm-json lcm_512.json --out results.json
  python3 scripts/bench_gpu_vs_torch.py --model /tmp/tiny --device cpu --no-compile   # smoke test
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGES = ["text_encoder", "unet_step", "vae_decode", "end_to_end"]
PROMPT = "a photograph of an astronaut riding a horse on mars, highly detailed"


def parse_config(s):
    """'512x512x1' -> (width, height, batch)."""
    w, h, b = (int(v) for v in s.lower().split("x"))
    return w, h, b


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, warmup, repeat):
    """Median, min and max milliseconds of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    ms = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def load_pipeline(model, device):
    import diffusers
    from diffusers import LCMScheduler, StableDiffusionPipeline

    diffusers.utils.logging.set_verbosity_error()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        model, dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def compile_pipeline(pipe, mode):
    """What diffusers' docs suggest for torch.compile: channels_last, 1x1 convs as matmuls."""
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True)
    pipe.text_encoder = torch.compile(pipe.text_encoder, mode=mode)
    return pipe


def bench_config(pipe, device, cfg, steps, warmup, repeat):
    """Every stage at one (width, height, batch)."""
    w, h, b = cfg
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = ids.input_ids.to(device)
    dtype = pipe.unet.dtype
    gen = torch.Generator(device).manual_seed(0)
    latents = torch.randn(b, pipe.unet.config.in_channels, h // 8, w // 8, generator=gen, device=device, dtype=dtype)
    t = torch.tensor(999, device=device)
    z = latents / pipe.vae.config.scaling_factor
    out = {}
    with torch.inference_mode():
        ctx = pipe.text_encoder(ids)[0].repeat(b, 1, 1)
        fns = {
            "text_encoder": lambda: pipe.text_encoder(ids)[0],
            "unet_step": lambda: pipe.unet(latents, t, encoder_hidden_states=ctx).sample,
            "vae_decode": lambda: pipe.vae.decode(z).sample,
            "end_to_end": lambda: pipe(
                PROMPT,
                num_inference_steps=steps,
                guidance_scale=1.0,
                width=w,
                height=h,
                num_images_per_prompt=b,
                output_type="np",
                generator=torch.Generator(device).manual_seed(0),
            ),
        }
        for name in STAGES:
            out[name] = timed(fns[name], device, warmup, repeat)
    return out


def run_peer(args, configs):
    """This process's peer (eager, or compile when called as the worker): {config: {stage: times}}."""
    t0 = time.time()
    pipe = load_pipeline(args.model, args.device)
    print(f"[{args.peer}] pipeline loaded in {time.time() - t0:.1f} s", flush=True)
    if args.peer == "compile":
        pipe = compile_pipeline(pipe, args.compile_mode)
    results = {}
    for cfg in configs:
        t0 = time.time()
        # A compile happens in the first warm-up calls of each stage (and again per new shape).
        warmup = args.warmup + (2 if args.peer == "compile" else 0)
        results["x".join(map(str, cfg))] = bench_config(pipe, args.device, cfg, args.steps, warmup, args.repeat)
        print(f"[{args.peer}] {cfg}: {time.time() - t0:.1f} s", flush=True)
    return results


def run_compile_worker(args, log_dir):
    """torch.compile in a child process with a cap, so a slow compile cannot eat the device call."""
    result = log_dir / "compile_result.json"
    log = log_dir / "compile.log"
    cmd = [sys.executable, __file__, "--worker", "compile", "--model", str(args.model), "--device", args.device]
    cmd += ["--configs", args.compile_configs, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--repeat", str(args.repeat), "--compile-mode", args.compile_mode, "--out", str(result)]
    # A fresh inductor cache: a compile killed earlier on this machine can leave a truncated library in
    # the shared one, which the next compile would load and fail on.
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-"))
    t0 = time.time()
    with open(log, "w") as f:
        # Own session: on timeout the whole group goes, inductor's compile workers included.
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, f"skipped: not done within --compile-timeout {args.compile_timeout} s (mode {args.compile_mode})"
    if rc != 0 or not result.is_file():
        tail = log.read_text().strip().splitlines()[-3:]
        return None, f"failed (exit {rc} after {time.time() - t0:.0f} s): " + " | ".join(tail)
    return json.loads(result.read_text()), f"mode {args.compile_mode}, compiled and timed in {time.time() - t0:.0f} s"


def read_lcm(paths):
    """`lcm bench --json` outputs -> {(w, h, b, lora_rank): {stage: median ms}}."""
    found = {}
    for p in paths:
        lines = Path(p).read_text().strip().splitlines() if Path(p).is_file() else []
        if not lines:
            print(f"note: {p} is missing or empty (lcm bench failed? see its log)")
        for line in lines:  # one JSON object per line (a .jsonl of several runs works too)
            j = json.loads(line)
            key = (j["width"], j["height"], j["batch"], j.get("lora_rank"))
            found[key] = {s["name"]: s["median_ms"] for s in j["stages"]} | {"_device": j["device"]}
    return found


def table(cfg, steps, lcm, lcm_lora, peers):
    w, h, b = cfg
    names = [p for p, r in peers.items() if r is not None]
    head = f"{'stage (median ms)':<18} {'lcm':>9}" + "".join(f" {p:>9}" for p in names)
    head += "".join(f" {p + '/lcm':>12}" for p in names)
    lines = [f"=== {w}x{h}, batch {b}, {steps} steps, guidance 1", head]
    for s in STAGES:
        ours = lcm.get(s) if lcm else None
        row = f"{s:<18} {ours if ours is not None else float('nan'):>9.2f}"
        for p in names:
            row += f" {peers[p][s]['median_ms']:>9.2f}"
        for p in names:
            ratio = peers[p][s]["median_ms"] / ours if ours else float("nan")
            row += f" {ratio:>11.2f}x"
        lines.append(row)
    if lcm_lora and lcm:
        rank = lcm_lora["_rank"]
        extra = lcm_lora["unet_step"] / lcm["unet_step"] - 1
        lines.append(
            f"lcm + unmerged LoRA rank {rank}: unet_step {lcm_lora['unet_step']:.2f} ms ({100 * extra:+.0f}% over "
            f"merged), end_to_end {lcm_lora['end_to_end']:.2f} ms"
        )
        if "lora_swap" in lcm_lora:
            # Issue 10: a swap must cost less than one UNet step. lora_swap loads a prepared LoRA (one
            # device copy, Pipeline::use_loras); lora_set fills the buffers from the host (set_loras).
            lines.append(
                f"LoRA swap rank {rank}: prepared {lcm_lora['lora_swap']:.3f} ms "
                f"({lcm_lora['lora_swap'] / lcm_lora['unet_step']:.3f} of a UNet step), from the host "
                f"{lcm_lora['lora_set']:.2f} ms ({lcm_lora['lora_set'] / lcm_lora['unet_step']:.2f} of a step)"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="diffusers folder from torch_fullsize.py")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", default="512x512x1,768x768x1,512x512x4", help="WxHxB list for lcm and eager")
    ap.add_argument("--compile-configs", default="512x512x1", help="WxHxB list for torch.compile")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--compile-mode", default="default", help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"')
    ap.add_argument("--compile-timeout", type=int, default=180, help="seconds for torch.compile, loading included")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--lcm-json", nargs="*", default=[], help="`lcm bench --json` outputs to compare")
    ap.add_argument("--out", type=Path, default=Path("bench_vs_torch.json"), help="where the JSON results go")
    ap.add_argument("--worker", choices=["compile"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # the child that run_compile_worker starts
        args.peer = "compile"
        res = run_peer(args, [parse_config(c) for c in args.configs.split(",")])  # the parent passes them here
        args.out.write_text(json.dumps(res))
        return 0

    configs = [parse_config(c) for c in args.configs.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    args.peer = "eager"
    eager = run_peer(args, configs)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the eager pipeline is gone: leave the card to the compile worker
    compiled, compile_note = (None, "skipped: --no-compile") if args.no_compile else run_compile_worker(
        args, args.out.resolve().parent
    )
    print(f"[compile] {compile_note}")

    lcm = read_lcm(args.lcm_json)
    report = {"env": env, "steps": args.steps, "compile_note": compile_note, "configs": []}
    tables = []
    for cfg in configs:
        key = "x".join(map(str, cfg))
        ours = lcm.get((*cfg, None))
        lora = next(({**v, "_rank": k[3]} for k, v in lcm.items() if k[:3] == cfg and k[3]), None)
        peers = {"eager": eager[key], "compile": (compiled or {}).get(key)}
        tables.append(table(cfg, args.steps, ours, lora, peers))
        report["configs"].append({"config": key, "lcm": ours, "lcm_lora": lora, **peers})
    args.out.write_text(json.dumps(report, indent=1))
    text = f"{env} | torch.compile: {compile_note}\n\n" + "\n\n".join(tables) + "\n"
    args.out.with_suffix(".txt").write_text(text)
    print("\n" + text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
