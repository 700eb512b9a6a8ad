"""Bad input raises the documented exception, naming the argument or the file."""

from __future__ import annotations

import numpy as np
import pytest

import lcm
from conftest import FIXTURES


def test_missing_model_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        lcm.Pipeline.from_pretrained(tmp_path / "no-such-model", device="cpu")


def test_missing_lora_and_vae_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-lora"):
        lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu", loras=[tmp_path / "missing-lora.safetensors"])
    with pytest.raises(FileNotFoundError, match="missing-vae"):
        lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu", vae=tmp_path / "missing-vae")


def test_pickle_is_refused_by_name(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(lcm.LcmError, match="model.ckpt.*pickle|pickle.*model.ckpt"):
        lcm.Pipeline.from_pretrained(ckpt, device="cpu")


def test_config_needs_a_single_file():
    with pytest.raises(ValueError, match="^config: "):
        lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu", config=FIXTURES / "tiny-sd")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(device="gpu"), "device"),
        (dict(lora_mode="sometimes"), "lora_mode"),
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(loras=[("a.safetensors", 1.0, 2.0)]), "loras"),
    ],
)
def test_bad_load_arguments_are_value_errors(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=500), "num_inference_steps"),
        (dict(width=65), "width"),
        (dict(height=8), "height"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(output_type="tensor"), "output_type"),
        (dict(seed=-1), "seed"),
        (dict(prompt_syntax="comfy"), "prompt_syntax"),
        (dict(image=np.zeros((64, 64, 3), np.uint8), strength=0.0), "strength"),
        (dict(image=np.zeros((64, 64), np.uint8)), "image"),
        (dict(image=np.zeros((64, 64, 3), np.uint8), width=128), "width"),
        (dict(mask_image=np.zeros((64, 64), np.uint8)), "mask_image"),
        (dict(image=np.zeros((64, 64, 3), np.uint8), mask_image=np.zeros((32, 32), np.uint8)), "mask_image"),
    ],
)
def test_bad_call_arguments_are_value_errors(tiny_sd, kwargs, name):
    kw = dict(num_inference_steps=1, width=64, height=64, seed=0)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}: "):
        tiny_sd("a cat", **kw)


def test_a_broken_model_is_an_lcm_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(lcm.LcmError, match="broken.safetensors"):
        lcm.Pipeline.from_pretrained(bad, device="cpu")
