"""Type stubs for the lcm package (python/lcm/__init__.py over the extension lcm._native)."""

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike[str]]
Loras = Sequence[Union[PathLike, Tuple[PathLike, float]]]

class LcmError(Exception):
    """An engine error: a model file in the wrong format, a tensor that does not fit the model, the
    device failing. The message names the file or tensor."""

class PreparedLoras:
    """LoRAs read by ``Pipeline.prepare_loras`` for ``Pipeline.use_loras``."""

    @property
    def loras(self) -> List[Tuple[Path, float]]: ...

class PipelineOutput:
    images: Any
    latents: Any
    timings: Dict[str, Any]
    nsfw_content_detected: Optional[List[bool]]
    def __getitem__(self, i: int) -> Any: ...

class Pipeline:
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: PathLike,
        *,
        device: Literal["auto", "cpu", "cuda", "emulated"] = "auto",
        loras: Optional[Loras] = None,
        lora_mode: Literal["merged", "runtime"] = "merged",
        max_lora_rank: Optional[int] = None,
        vae: Optional[PathLike] = None,
        config: Optional[PathLike] = None,
        clip_skip: int = 0,
        prediction_type: Optional[Literal["epsilon", "v_prediction"]] = None,
        embeddings: Optional[Sequence[Union[PathLike, Tuple[PathLike, Optional[str]]]]] = None,
        embeddings_dir: Optional[PathLike] = None,
    ) -> Pipeline: ...
    @property
    def device(self) -> str: ...
    @property
    def default_size(self) -> int: ...
    @property
    def busy(self) -> bool: ...
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
        prompt_syntax: Literal["plain", "a1111"] = "plain",
        output_type: Literal["pil", "np", "uint8", "latent"] = "pil",
        callback: Optional[Callable[[int, float, float], None]] = None,
        return_dict: bool = True,
    ) -> Union[PipelineOutput, Tuple[Any, None]]: ...
    def set_loras(self, loras: Loras) -> None: ...
    def prepare_loras(self, loras: Loras) -> PreparedLoras: ...
    def use_loras(self, prepared: PreparedLoras) -> None: ...

def bench(
    model: Optional[PathLike] = None,
    *,
    device: Literal["auto", "cpu", "cuda", "emulated"] = ...,
    arch: Literal["sd15", "sd2", "sdxl", "ssd1b"] = ...,
    width: Optional[int] = ...,
    height: Optional[int] = ...,
    num_inference_steps: int = ...,
    num_images_per_prompt: int = ...,
    warmup: int = ...,
    repeat: int = ...,
    seed: int = ...,
) -> Dict[str, Any]: ...
