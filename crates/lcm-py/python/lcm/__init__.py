"""lcm: Latent Consistency Model inference (SD1.5, SD2, SDXL) on hand-written CUDA kernels or the CPU
reference, with diffusers' call shape::

    import lcm
    pipe = lcm.Pipeline.from_pretrained("models/lcm-dreamshaper-v7")
    image = pipe("a cabin in the snow", num_inference_steps=4, guidance_scale=8.0, seed=0).images[0]
    image.save("cabin.png")

The engine runs with the GIL released: other threads (another pipeline, an asyncio loop) go on while it
works. Ctrl-C cancels between steps. Errors: ``ValueError`` naming the argument, ``FileNotFoundError``
naming the file, ``lcm.LcmError`` for the rest (a file in the wrong format, the device). docs/python.md
has the full API.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _native
from ._native import LcmError

__all__ = ["Pipeline", "PipelineOutput", "PreparedLoras", "LcmError", "bench"]

PathLike = Union[str, "os.PathLike[str]"]
Loras = Sequence[Union[PathLike, Tuple[PathLike, float]]]

PreparedLoras = _native.PreparedLoras

OUTPUT_TYPES = ("pil", "np", "uint8", "latent")


@dataclass
class PipelineOutput:
    """What one call produced (diffusers' ``StableDiffusionPipelineOutput`` shape: ``out.images``,
    ``out[0]``).

    images: PIL images (``output_type="pil"``), a float32 array [N, H, W, 3] in [0, 1] (``"np"``, as
    diffusers), a uint8 array [N, H, W, 3] (``"uint8"``) or the latents (``"latent"``).
    latents: the final denoised latents, float32 [N, 4, H/8, W/8], before the VAE's scaling.
    timings: seconds per stage: text_encoder_s, unet_steps_s (a list), vae_decode_s, total_s.
    """

    images: Any
    latents: Any
    timings: Dict[str, Any] = field(default_factory=dict)
    nsfw_content_detected: Optional[List[bool]] = None

    def __getitem__(self, i: int) -> Any:
        return (self.images, self.nsfw_content_detected)[i]


def _loras(loras: Optional[Loras], name: str) -> List[Tuple[str, float]]:
    """LoRAs as (path, scale) pairs: a bare path has scale 1."""
    if isinstance(loras, (str, os.PathLike)):
        loras = [loras]
    out = []
    for item in loras or []:
        if isinstance(item, (str, os.PathLike)):
            out.append((os.fspath(item), 1.0))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((os.fspath(item[0]), float(item[1])))
        else:
            raise ValueError(f"{name}: {item!r}: expected a path or a (path, scale) pair")
    return out


def _pixels(image: Any, mode: str, name: str) -> Tuple[int, int, bytes]:
    """A PIL image or an array ([H, W, 3] uint8 RGB, or [H, W] uint8 for a mask) as (width, height,
    bytes); float arrays in [0, 1] are scaled as diffusers scales them."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image.Image
        img = image.convert(mode)
        return img.size[0], img.size[1], img.tobytes()
    try:
        import numpy as np
    except ImportError as e:  # pragma: no cover - numpy is a dependency
        raise ValueError(f"{name}: expected a PIL image or a NumPy array") from e
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{name}: dtype {a.dtype}: expected uint8, or floats in [0, 1]")
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if mode == "RGB" and (a.ndim != 3 or a.shape[2] != 3):
        raise ValueError(f"{name}: shape {a.shape}: expected [height, width, 3] RGB")
    if mode == "L" and a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if mode == "L" and a.ndim != 2:
        raise ValueError(f"{name}: shape {a.shape}: expected [height, width] gray")
    return a.shape[1], a.shape[0], np.ascontiguousarray(a).tobytes()


class Pipeline:
    """A model loaded on one device (``Pipeline.from_pretrained``), called like a diffusers pipeline.

    Thread-safe: calls on one pipeline from several threads take turns; two pipelines run side by side.
    """

    def __init__(self, native: "_native.Pipeline"):
        self._native = native

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: PathLike,
        *,
        device: str = "auto",
        loras: Optional[Loras] = None,
        lora_mode: str = "merged",
        max_lora_rank: Optional[int] = None,
        vae: Optional[PathLike] = None,
        config: Optional[PathLike] = None,
        clip_skip: int = 0,
        prediction_type: Optional[str] = None,
        embeddings: Optional[Sequence[Union[PathLike, Tuple[PathLike, Optional[str]]]]] = None,
        embeddings_dir: Optional[PathLike] = None,
    ) -> "Pipeline":
        """Loads a model by the CLI's rules (``lcm generate --model``): a diffusers folder, or a
        single-file checkpoint (``.safetensors``; ``config`` a diffusers folder whose configs it uses).
        Nothing is downloaded: give a local path.

        device: ``auto`` (CUDA when a GPU and the kernels are present, else the CPU), ``cpu``, ``cuda``
        or ``emulated``. loras: paths or (path, scale) pairs, merged at load (``lora_mode="merged"``) or
        run unmerged from buffers that ``set_loras``/``use_loras`` swap by copying (``"runtime"``, CUDA).
        vae: a separate VAE (folder or file). Pickles (.ckpt, .bin, .pt) are refused by name.
        """
        embs = []
        for e in embeddings or []:
            if isinstance(e, (str, os.PathLike)):
                embs.append((os.fspath(e), None))
            else:
                embs.append((os.fspath(e[0]), e[1]))
        fs = lambda p: None if p is None else os.fspath(p)  # noqa: E731
        native = _native.Pipeline.load(
            os.fspath(pretrained_model_name_or_path),
            device=device,
            loras=_loras(loras, "loras"),
            lora_mode=lora_mode,
            max_lora_rank=max_lora_rank,
            vae=fs(vae),
            config=fs(config),
            clip_skip=clip_skip,
            prediction_type=prediction_type,
            embeddings=embs,
            embeddings_dir=fs(embeddings_dir),
        )
        return cls(native)

    @property
    def device(self) -> str:
        """The backend it runs on: cpu, cuda or cuda (emulated)."""
        return self._native.device

    @property
    def busy(self) -> bool:
        """Whether a generation or a LoRA swap holds the pipeline now (another thread's call waits)."""
        return self._native.busy

    @property
    def default_size(self) -> int:
        """The model's own image side: the default width and height (512 SD1.5, 1024 SDXL)."""
        return self._native.default_size

    def __call__(
        self,
        prompt: Union[str, Sequence[str]] = "",
        *,
        negative_prompt: Union[None, str, Sequence[Optional[str]]] = None,
        num_inference_steps: int = 4,
        guidance_scale: float = 1.0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_images_per_prompt: int = 1,
        seed: Union[None, int, Sequence[int]] = None,
        image: Any = None,
        mask_image: Any = None,
        strength: float = 0.8,
        prompt_syntax: str = "plain",
        output_type: str = "pil",
        callback: Optional[Callable[[int, float, float], None]] = None,
        return_dict: bool = True,
    ) -> Union[PipelineOutput, Tuple[Any, None]]:
        """Generates images, as diffusers' pipelines do with the same arguments.

        prompt: a string, or a list run as one batch (each prompt with its own generator: diffusers with
        ``generator=[torch.Generator().manual_seed(s) for s in seed]``); negative_prompt: one for all or
        one per prompt. seed: seeds ``torch.Generator("cpu").manual_seed(seed)``'s stream, the same seed
        gives diffusers' image; a list: one per prompt (an int with several prompts: seed, seed+1, ...);
        None draws one per prompt. image: img2img from a PIL image or uint8 [H, W, 3] array (its size is the
        output's); mask_image with it: inpainting (white repaints). strength: how much of ``image`` to
        repaint, in (0, 1]. output_type: ``pil``, ``np`` (float32 [N, H, W, 3] in [0, 1]), ``uint8``
        ([N, H, W, 3], no copy) or ``latent``. callback(step, timestep, elapsed_s) after each step; an
        exception from it cancels the generation and is raised. prompt_syntax: ``plain`` (as diffusers)
        or ``a1111`` (weights, BREAK, long prompts).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: `{output_type}`: expected one of {', '.join(OUTPUT_TYPES)}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt] * n
        else:
            negatives = list(negative_prompt)
        if seed is None:
            seeds = [random.getrandbits(32) for _ in prompts]
        elif isinstance(seed, int):
            seeds = [seed] * n if n == 1 else [seed + i for i in range(n)]
        else:
            seeds = list(seed)
        for s in seeds:
            if not isinstance(s, int) or s < 0:
                raise ValueError(f"seed: {s!r}: expected a non-negative integer")
        latents, images, timings = self._native.generate(
            prompts,
            negative_prompts=negatives,
            seeds=seeds,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            num_images_per_prompt=num_images_per_prompt,
            image=None if image is None else _pixels(image, "RGB", "image"),
            mask_image=None if mask_image is None else _pixels(mask_image, "L", "mask_image"),
            strength=strength,
            prompt_syntax=prompt_syntax,
            output="uint8" if output_type == "pil" else output_type,
            callback=callback,
        )
        if output_type == "latent":
            images = latents
        elif output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(a) for a in images]
        if not return_dict:
            return images, None
        return PipelineOutput(images=images, latents=latents, timings=timings)

    def set_loras(self, loras: Loras) -> None:
        """Replaces the LoRAs (paths or (path, scale) pairs; [] removes them)."""
        self._native.set_loras(_loras(loras, "loras"))

    def prepare_loras(self, loras: Loras) -> PreparedLoras:
        """Reads LoRAs for ``use_loras`` without touching the running model (a service prepares the next
        adapter while the current one serves)."""
        return self._native.prepare_loras(_loras(loras, "loras"))

    def use_loras(self, prepared: PreparedLoras) -> None:
        """Swaps to prepared LoRAs: a copy into fixed buffers in CUDA's runtime mode."""
        self._native.use_loras(prepared)

    def __repr__(self) -> str:
        spec = self._native.spec()
        return f"lcm.Pipeline({spec['model']!r}, device={self.device!r}, loras={spec['loras']!r})"


def bench(model: Optional[PathLike] = None, **kwargs: Any) -> Dict[str, Any]:
    """``lcm bench``'s per-stage timings as ``lcm bench --json``'s dict (stages: name, median_ms, min_ms,
    max_ms). model None: a synthetic model of family ``arch`` (sd15, sd2, sdxl, ssd1b) with random
    weights. Keywords: device, arch, width, height, num_inference_steps, num_images_per_prompt, warmup,
    repeat, seed."""
    return _native.bench(None if model is None else os.fspath(model), **kwargs)
