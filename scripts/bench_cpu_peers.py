#!/usr/bin/env python3
"""CPU side by side, in one run: lcm's CPU backend, PyTorch (diffusers, f32) and OpenVINO (f32) on the same
random SD1.5- or SDXL-shaped weights, one UNet step and one VAE decode at each size.

    python3 scripts/bench_cpu_peers.py                               # SD1.5, 256 and 512, all three
    python3 scripts/bench_cpu_peers.py --arch sdxl --sizes 256 --engines lcm,torch
    python3 scripts/bench_cpu_peers.py --lcm target/release/lcm --repeat 5 --out table.md

Setup: without torch, diffusers and openvino importable, it makes a venv in .venv-bench/ from PyPI (the
versions of tests/fixtures/requirements.txt plus openvino) and re-runs itself there. lcm is the release
binary (`cargo build --release`), which it builds when missing.

What is timed (median and min-max of --repeat runs after --warmup):
  lcm       `lcm bench --device cpu --json` (its unet_step and vae_decode stages), a fresh process per size
  torch     diffusers' UNet2DConditionModel forward and AutoencoderKL.decode, f32, torch's threads = cores
  openvino  the same modules through openvino.convert_model, compiled for CPU with
            INFERENCE_PRECISION_HINT f32 (no bf16 downcast on AMX/AVX-512 machines), one infer request
The models are built from the configs lcm itself uses (crates/lcm-models/src/arch/{sd15,sdxl}.rs); weights are
diffusers' random init with a fixed seed: the timings do not depend on the values. Batch 1, text context
of 77 tokens, timestep 999. The markdown table it prints (and writes with --out) is the bench log's.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "crates" / "lcm-models" / "src" / "arch"
VENV = ROOT / ".venv-bench"
ENGINES = ("lcm", "torch", "openvino")


def ensure_python_deps(engines):
    """Re-runs this script in .venv-bench (made from PyPI) unless the needed modules import here."""
    need = ["torch", "diffusers"] + (["openvino"] if "openvino" in engines else [])
    try:
        for m in need:
            __import__(m)
        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if Path(sys.executable).resolve() == py.resolve():
        sys.exit(f"{py} lacks one of {need}: remove {VENV} and run again")
    if not py.exists():
        print(f"making {VENV} (torch, diffusers, openvino from PyPI; a few GB, once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        reqs = ROOT / "tests" / "fixtures" / "requirements.txt"
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(reqs), "openvino==2026.4.1"], check=True)
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def arch_config(arch, name):
    """A config lcm itself uses for synthetic weights (crates/lcm-models/src/arch/{sd15,sdxl}.rs)."""
    text = (MODELS / f"{arch}.rs").read_text()
    key = f'pub const {name}: &str = r#"'
    start = text.index(key) + len(key)
    cfg = json.loads(text[start:text.index('"#;', start)])
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def timed(fn, warmup, repeat):
    """(median, min, max) in ms of `repeat` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times), max(times)


def unet_inputs(torch, cfg, size):
    h = size // 8
    inputs = {
        "sample": torch.randn(1, cfg["in_channels"], h, h),
        "timestep": torch.tensor([999.0]),
        "encoder_hidden_states": torch.randn(1, 77, cfg["cross_attention_dim"]),
    }
    if cfg.get("addition_embed_type") == "text_time":
        # SDXL's added conditioning: the pooled text embedding and six time ids (sizes and crop).
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        inputs["text_embeds"] = torch.randn(1, pooled)
        inputs["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
    return inputs


def torch_modules(torch, arch):
    """The UNet and the VAE decoder as modules taking plain tensors (what openvino.convert_model traces)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch_config(arch, "UNET_CONFIG")).eval()
    vae = AutoencoderKL(**arch_config(arch, "VAE_CONFIG")).eval()

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
            added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added).sample

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z).sample

    return Unet().eval(), Decoder().eval()


def bench_torch(arch, size, args):
    import torch

    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count())
    unet, dec = torch_modules(torch, arch)
    x = unet_inputs(torch, unet.unet.config, size)
    z = torch.randn(1, 4, size // 8, size // 8)
    out = {"unet_step": timed(lambda: unet(**x), args.warmup, args.repeat),
           "vae_decode": timed(lambda: dec(z), args.warmup, args.repeat)}
    return out, f"torch {torch.__version__} ({torch.get_num_threads()} threads)"


def bench_openvino(arch, size, args):
    import openvino as ov
    import torch

    torch.set_grad_enabled(False)
    core = ov.Core()
    out = {}
    unet, dec = torch_modules(torch, arch)
    x = unet_inputs(torch, unet.unet.config, size)
    z = torch.randn(1, 4, size // 8, size // 8)
    for stage, module, example in [("unet_step", unet, x), ("vae_decode", dec, {"z": z})]:
        model = ov.convert_model(module, example_input=example)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        del model
        gc.collect()
        request = compiled.create_infer_request()
        feed = [v.numpy() for v in example.values()]
        out[stage] = timed(lambda: request.infer(feed), args.warmup, args.repeat)
        del request, compiled
        gc.collect()
    return out, f"OpenVINO {ov.get_version().split('-')[0]} f32"


def lcm_binary(path):
    if path:
        return Path(path)
    exe = ROOT / "target" / "release" / "lcm"
    if not exe.exists():
        print("building target/release/lcm...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--bin", "lcm"], cwd=ROOT, check=True)
    return exe


def bench_lcm(arch, size, args):
    exe = lcm_binary(args.lcm)
    cmd = [str(exe), "bench", "--device", "cpu", "--arch", arch, "--width", str(size), "--height", str(size),
           "--steps", "1", "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json"]
    j = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    stages = {s["name"]: (s["median_ms"], s["min_ms"], s["max_ms"]) for s in j["stages"]}
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()
    return {k: stages[k] for k in ("unet_step", "vae_decode")}, version or "lcm"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lcm", help="the lcm binary (default: target/release/lcm, built when missing)")
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15", help="the model shapes to time")
    ap.add_argument("--sizes", default="256,512", help="image sizes in pixels, comma-separated")
    ap.add_argument("--engines", default=",".join(ENGINES), help="which of lcm,torch,openvino to run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        sys.exit(f"--engines: {bad or 'none'}: expected some of {','.join(ENGINES)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % 64 for s in sizes):
        sys.exit("--sizes: multiples of 64 (the UNet's latents must halve three times)")
    ensure_python_deps(engines)

    run = {"lcm": bench_lcm, "torch": bench_torch, "openvino": bench_openvino}
    results, versions = {}, {}
    for size in sizes:
        for e in engines:
            print(f"{e} at {size}x{size}...", file=sys.stderr)
            results[(e, size)], versions[e] = run[e](args.arch, size, args)
            gc.collect()

    cell = lambda m: f"{m[0]:.0f} ({m[1]:.0f}-{m[2]:.0f})"
    ratios = [e for e in engines if e != "lcm"] if "lcm" in engines else []
    head = ["size", "stage"] + [f"{e} ms" for e in engines] + [f"lcm / {p}" for p in ratios]
    lines = [f"{args.arch}, CPU: {os.cpu_count()} cores, batch 1, f32, median (min-max) of {args.repeat} after "
             f"{args.warmup} warm-up; " + ", ".join(versions[e] for e in engines), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        for stage in ("unet_step", "vae_decode"):
            row = [f"{size}²", stage] + [cell(results[(e, size)][stage]) for e in engines]
            row += [f"{results[('lcm', size)][stage][0] / results[(p, size)][stage][0]:.2f}" for p in ratios]
            lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
