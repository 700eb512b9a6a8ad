#!/usr/bin/env python3
"""Full-size SD1.5-shaped random models and PyTorch's outputs on them (issue 4), for tests/gpu_fullsize.rs
and the benchmark comparison (scripts/bench_gpu_vs_torch.py).

What it writes into --out:
  text_encoder/, unet/, vae/   CLIPTextModel, UNet2DConditionModel, AutoencoderKL built from the SD1.5
                               configs in crates/lcm-models/src/arch/sd15.rs, f16 safetensors
  tokenizer/, scheduler/, model_index.json
                               copied from tests/fixtures/tiny-sd (the real CLIP vocabulary, SD1.5's
                               scheduler config), so the folder is a StableDiffusionPipeline too
  reference.safetensors        inputs and f32 outputs (see REFERENCE below); skipped with --no-reference
  done.json                    the arguments it was made with: a rerun with the same ones reuses the folder

Weights: drawn on the device from a seeded generator, away from diffusers' init so a dropped bias or
norm affine shows (the fixtures' recipe: linear/conv weights N(0,1)/sqrt(fan_in), biases 0.1*N, norm
scales 1 + 0.1*N, embedding tables 0.5*N), then rounded to f16. The references are computed in f32 on
the GPU from exactly those f16 values, with TF32 off, so the comparison measures lcm's f16 arithmetic
and nothing else. Generating on the GPU and saving f16 takes seconds; nothing is downloaded.

Run on the GPU machine (diffusers from the carried wheel):  python3 scripts/torch_fullsize.py --out /tmp/sd15
Smoke test on a CPU:  python3 scripts/torch_fullsize.py --out /tmp/tiny --device cpu --tiny
"""

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SD15_RS = ROOT / "crates/lcm-models/src/arch/sd15.rs"
FIXTURE = ROOT / "tests/fixtures/tiny-sd"

# reference.safetensors (all F32; NCHW as diffusers takes and returns them):
REFERENCE = """
  unet_b1_sample [1,4,h,w]  unet_b1_timestep [1]  unet_b1_context [1,77,D]  unet_b1_out [1,4,h,w]
  unet_cfg_sample [2,4,h,w] (one latent twice, as CFG batches it)  unet_cfg_timestep [2]
  unet_cfg_context [2,77,D] ([uncond, cond])  unet_cfg_out [2,4,h,w]
  vae_latents [1,4,h,w] (already divided by scaling_factor)  vae_image [1,3,8h,8w] = vae.decode(z).sample
  clip_ids [2,77] (token ids as floats)  clip_hidden [2,77,D] = CLIPTextModel(ids).last_hidden_state
"""


def sd15_configs():
    """The JSON constants of sd15.rs, so Rust and Python build the same models from one source."""
    text = SD15_RS.read_text()
    found = dict(re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', text, re.S))
    return {k: json.loads(v) for k, v in found.items()}


def tiny(cfgs):
    """SD1.5's block structure at widths a CPU runs in seconds (for checking this script and the Rust
    reader without a GPU)."""
    u, v, t = dict(cfgs["UNET_CONFIG"]), dict(cfgs["VAE_CONFIG"]), dict(cfgs["TEXT_ENCODER_CONFIG"])
    u.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1, cross_attention_dim=32, attention_head_dim=2)
    v.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    t.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return u, v, t


def perturb(model, gen):
    """Replaces every parameter with the fixtures' recipe (see the module docstring), in place."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                z = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
                if isinstance(module, norms) and name == "weight":
                    v = 1 + 0.1 * z
                elif name == "bias" or p.dim() == 1:
                    v = 0.1 * z
                elif isinstance(module, torch.nn.Embedding):
                    v = 0.5 * z
                else:
                    fan_in = p[0].numel()
                    v = z / fan_in**0.5
                # Round to f16 here: the saved file and the f32 reference see the same numbers.
                p.copy_(v.half().float())


def build(kind, cfg, device, gen):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    plain = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"}
    # Built on the device: the default init of 860 M parameters on the host would take longer than
    # everything else here.
    with torch.device(device):
        if kind == "text_encoder":
            model = CLIPTextModel(CLIPTextConfig(**plain))
        elif kind == "unet":
            model = UNet2DConditionModel.from_config(plain)
        else:
            model = AutoencoderKL.from_config(plain)
    model = model.to(device=device, dtype=torch.float32).eval()
    perturb(model, gen)
    return model


def save_f16(model, path):
    """save_pretrained in f16 (the numbers are f16 already, so the round trip is exact), back to f32."""
    model.to(torch.float16).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)


def copy_pipeline_files(out):
    shutil.copytree(FIXTURE / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(FIXTURE / "scheduler", out / "scheduler", dirs_exist_ok=True)
    shutil.copy(FIXTURE / "model_index.json", out / "model_index.json")


def references(models, cfg_u, latent, device, gen):
    """Inputs drawn from `gen`, outputs in f32 with TF32 off (see REFERENCE)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    d = cfg_u["cross_attention_dim"]
    f32 = dict(device=device, dtype=torch.float32)
    r = {}
    with torch.no_grad():
        x = torch.randn(1, 4, latent, latent, generator=gen, **f32)
        ctx = torch.randn(1, 77, d, generator=gen, **f32)
        ts = torch.tensor([759.0], **f32)
        r.update(unet_b1_sample=x, unet_b1_timestep=ts, unet_b1_context=ctx)
        r["unet_b1_out"] = models["unet"](x, ts, encoder_hidden_states=ctx).sample
        x = torch.randn(1, 4, latent, latent, generator=gen, **f32).repeat(2, 1, 1, 1)
        ctx = torch.randn(2, 77, d, generator=gen, **f32)
        ts = torch.tensor([499.0, 499.0], **f32)
        r.update(unet_cfg_sample=x, unet_cfg_timestep=ts, unet_cfg_context=ctx)
        r["unet_cfg_out"] = models["unet"](x, ts, encoder_hidden_states=ctx).sample
        # Decoder input as the pipeline hands it over: latents of std ~1 divided by scaling_factor.
        sf = models["vae"].config.scaling_factor
        z = torch.randn(1, 4, latent, latent, generator=gen, **f32) / sf
        r["vae_latents"] = z
        r["vae_image"] = models["vae"].decode(z).sample
        ids = torch.full((2, 77), 49407, dtype=torch.long, device=device)
        ids[:, 0] = 49406
        ids[:, 1:21] = torch.randint(0, 49406, (2, 20), generator=gen, device=device)
        ids[1, 12:] = 49407  # a shorter second prompt
        r["clip_ids"] = ids.float()
        r["clip_hidden"] = models["text_encoder"](input_ids=ids).last_hidden_state
    for k, v in r.items():
        assert torch.isfinite(v).all(), f"{k} is not finite"
        print(f"  {k:<20} {str(tuple(v.shape)):<18} std {v.float().std().item():.3f}" if v.numel() > 2 else f"  {k:<20} {v.tolist()}")
    return {k: v.float().contiguous().cpu() for k, v in r.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    ap.add_argument("--device", default="cuda", help="torch device for weights and references (default cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny widths, 16x16 latents: a CPU smoke test")
    ap.add_argument("--no-reference", action="store_true", help="weights only (what the benchmark needs)")
    args = ap.parse_args()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # its f16-cast note is about from_pretrained, not this

    stamp = {"seed": args.seed, "tiny": args.tiny, "reference": not args.no_reference}
    done = args.out / "done.json"
    if done.is_file():
        # A folder made earlier on this machine (the check's call, when the bench call follows while
        # the machine is still warm): same weights, and references if they are wanted.
        old = json.loads(done.read_text())
        if old["seed"] == args.seed and old["tiny"] == args.tiny and (old["reference"] or args.no_reference):
            print(f"{args.out}: already made with {old}; reusing it")
            return 0
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    cfgs = sd15_configs()
    cfg_u, cfg_v, cfg_t = (
        tiny(cfgs) if args.tiny else (cfgs["UNET_CONFIG"], cfgs["VAE_CONFIG"], cfgs["TEXT_ENCODER_CONFIG"])
    )
    latent = 16 if args.tiny else 64
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    models = {}
    for kind, cfg in [("text_encoder", cfg_t), ("unet", cfg_u), ("vae", cfg_v)]:
        t0 = time.time()
        models[kind] = build(kind, cfg, args.device, gen)
        n = sum(p.numel() for p in models[kind].parameters())
        save_f16(models[kind], args.out / kind)
        print(f"{kind}: {n / 1e6:.1f} M parameters, built and saved (f16) in {time.time() - t0:.1f} s")
    copy_pipeline_files(args.out)

    if not args.no_reference:
        from safetensors.torch import save_file

        t0 = time.time()
        refs = references(models, cfg_u, latent, args.device, gen)
        meta = {"seed": str(args.seed), "tiny": str(args.tiny), "torch": torch.__version__, "layout": REFERENCE.strip()}
        save_file(refs, str(args.out / "reference.safetensors"), metadata=meta)
        print(f"references computed and saved in {time.time() - t0:.1f} s")
    done.write_text(json.dumps(stamp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
