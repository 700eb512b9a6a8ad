"""The Python API against the recorded diffusers outputs and the Rust API (the `lcm` binary)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lcm
from conftest import FIXTURES, RECORDS, ROOT, read_safetensors, rel_l2

CASES = {c["name"]: c for c in json.loads((RECORDS / "pipeline" / "cases.json").read_text())}


@pytest.mark.parametrize("name", ["sd_4step", "sd_cfg_x2", "lcm_4step", "lora_peft", "sd_img2img"])
def test_recorded_diffusers_case_matches(name):
    """As crates/lcm-pipeline/tests/e2e.rs compares: latents rel L2 < 1e-3, image MAD < 1/255."""
    case = CASES[name]
    loras = [(FIXTURES / p, s) for p, s in case["loras"]]
    pipe = lcm.Pipeline.from_pretrained(FIXTURES / case["model"], device="cpu", loras=loras)
    image = Image.open(FIXTURES / case["image"]) if "image" in case else None
    out = pipe(
        case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        width=case["width"],
        height=case["height"],
        num_images_per_prompt=case["num_images"],
        seed=case["seed"],
        image=image,
        strength=case.get("strength", 0.8),
        output_type="np",
    )
    want = read_safetensors(RECORDS / "pipeline" / f"{name}.safetensors")
    assert out.latents.shape == want["latents"].shape
    assert rel_l2(out.latents, want["latents"]) < 1e-3
    assert out.images.shape == want["image_u8"].shape and out.images.dtype == np.float32
    ref = want["image"] if "image" in want else want["image_u8"] / 255.0
    assert np.abs(out.images - ref).mean() < 1.0 / 255.0


def test_output_types_agree(tiny_sd):
    kw = dict(num_inference_steps=2, width=64, height=80, num_images_per_prompt=2, seed=7)
    f = tiny_sd("a photo of a cat", output_type="np", **kw)
    u8 = tiny_sd("a photo of a cat", output_type="uint8", **kw)
    pil = tiny_sd("a photo of a cat", **kw)
    lat = tiny_sd("a photo of a cat", output_type="latent", **kw)
    assert u8.images.shape == (2, 80, 64, 3) and u8.images.dtype == np.uint8
    assert np.array_equal(u8.images, np.round(f.images * 255.0).astype(np.uint8))
    assert [im.size for im in pil.images] == [(64, 80)] * 2
    assert np.array_equal(np.asarray(pil.images[1]), u8.images[1])
    assert lat.images.shape == (2, 4, 10, 8) and np.array_equal(lat.images, f.latents)
    assert u8.images.flags["C_CONTIGUOUS"] and u8.images.flags["WRITEABLE"]
    images, nsfw = tiny_sd("a photo of a cat", output_type="uint8", return_dict=False, **kw)
    assert np.array_equal(images, u8.images) and nsfw is None
    assert set(f.timings) == {"text_encoder_s", "unet_steps_s", "vae_decode_s", "total_s"}
    assert len(f.timings["unet_steps_s"]) == 2


def test_same_latents_as_the_rust_api(tiny_sd, tmp_path):
    """`lcm generate --save-latents` (the CLI on the Rust API) and the Python API, same settings: the
    same latents, bit for bit."""
    exe = Path(os.environ.get("LCM_BIN", ROOT / "target" / "debug" / "lcm"))
    if not exe.is_file():
        pytest.skip(f"{exe} not built (scripts/test.sh builds it with cargo test first)")
    saved = tmp_path / "latents.safetensors"
    args = ["--model", FIXTURES / "tiny-sd", "--device", "cpu", "--prompt", "a red barn", "--steps", "3",
            "--seed", "11", "--width", "64", "--height", "72", "--guidance-scale", "2.0",
            "--negative-prompt", "fog", "--output", tmp_path / "x.png", "--save-latents", saved]
    subprocess.run([exe, "generate", *map(str, args)], check=True, capture_output=True)
    out = tiny_sd("a red barn", negative_prompt="fog", num_inference_steps=3, seed=11, width=64, height=72,
                  guidance_scale=2.0, output_type="latent")
    assert np.array_equal(out.images, read_safetensors(saved)["latents"])
    png = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))
    assert np.array_equal(png, tiny_sd("a red barn", negative_prompt="fog", num_inference_steps=3, seed=11,
                                       width=64, height=72, guidance_scale=2.0).images[0])


def test_loras_swap_to_the_recorded_case(tiny_sd):
    case = CASES["lora_peft"]
    want = read_safetensors(RECORDS / "pipeline" / "lora_peft.safetensors")["latents"]
    pipe = lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu")
    kw = dict(num_inference_steps=case["steps"], width=64, height=64, seed=case["seed"], output_type="latent")
    base = pipe(case["prompt"], **kw).images
    pipe.set_loras([(FIXTURES / "loras" / "lora_peft.safetensors", 1.0)])
    assert rel_l2(pipe(case["prompt"], **kw).images, want) < 1e-3
    pipe.set_loras([])
    assert np.array_equal(pipe(case["prompt"], **kw).images, base)
    prepared = pipe.prepare_loras([FIXTURES / "loras" / "lora_peft.safetensors"])
    assert prepared.loras == [(FIXTURES / "loras" / "lora_peft.safetensors", 1.0)]
    pipe.use_loras(prepared)
    assert rel_l2(pipe(case["prompt"], **kw).images, want) < 1e-3
    assert "lora_peft" in repr(pipe)


def test_bench_returns_stage_timings():
    report = lcm.bench(FIXTURES / "tiny-sd", device="cpu", width=64, height=64, num_inference_steps=2,
                       warmup=0, repeat=1)
    names = {s["name"] for s in report["stages"]}
    assert {"text_encoder", "unet_step", "vae_decode", "end_to_end"} <= names, names
    assert report["steps"] == 2 and report["width"] == 64
