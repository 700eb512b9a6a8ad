"""lcm behind Ray Serve: one replica per GPU, requests batched (@serve.batch), LoRAs multiplexed per
replica (@serve.multiplexed: prepared once, swapped by copying), autoscaled on queued requests, with the
OpenAI images request shape (POST /v1/images/generations).

    pip install ./crates/lcm-py "ray[serve]"
    LCM_MODEL=models/lcm-dreamshaper-v7 serve run examples.ray_serve:app      # a cluster's GPUs
    python examples/ray_serve.py                                              # local demo (below)

Request: {"prompt": "...", "n": 1, "size": "512x512", "response_format": "b64_json", "seed": 0,
          "num_inference_steps": 4, "guidance_scale": 1.0, "lora": "NAME"}   (lora: LCM_LORA_DIR/NAME.safetensors)
Response: {"created": UNIX_TIME, "data": [{"b64_json": PNG_BASE64}, ...]}

Environment: LCM_MODEL (a model folder or single file), LCM_LORA_DIR (the LoRAs requests may name),
LCM_DEVICE (auto), LCM_GPUS_PER_REPLICA (1; 0 runs replicas on the CPU), LCM_MIN_REPLICAS and
LCM_MAX_REPLICAS (autoscaling bounds; default 1 and the cluster's GPU count).

`python examples/ray_serve.py` starts a local Ray with the tiny test model (tests/fixtures/tiny-sd) on
two CPU replicas, sends concurrent requests, prints which replica served each, and shuts down:
docs/python.md shows a run.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections import defaultdict
from typing import Any, Dict, List

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import lcm

GPUS = float(os.environ.get("LCM_GPUS_PER_REPLICA", "1"))
# The multiplexing key of "no LoRA" (Ray's model IDs cannot be empty).
NO_LORA = "none"


def _autoscaling() -> Dict[str, Any]:
    try:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 1)) if ray.is_initialized() else 1
    except Exception:
        gpus = 1
    lo = int(os.environ.get("LCM_MIN_REPLICAS", "1"))
    hi = int(os.environ.get("LCM_MAX_REPLICAS", str(max(gpus, lo))))
    # A replica keeps its GPU busy with a batch running and one forming: scale out past that.
    return {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": 8}


@serve.deployment(
    ray_actor_options={"num_gpus": GPUS},
    autoscaling_config=_autoscaling(),
    max_ongoing_requests=32,
)
class LcmImages:
    def __init__(self) -> None:
        # runtime LoRA mode: on CUDA a swap copies into fixed buffers instead of re-merging the UNet.
        # Read in the replica's process (Ray passes the environment in runtime_env).
        model = os.environ.get("LCM_MODEL", "models/lcm-dreamshaper-v7")
        self.lora_dir = os.environ.get("LCM_LORA_DIR", "loras")
        self.pipe = lcm.Pipeline.from_pretrained(model, device=os.environ.get("LCM_DEVICE", "auto"),
                                                 lora_mode="runtime")
        self.active = NO_LORA  # the LoRA key the pipeline holds now
        self.replica = f"pid {os.getpid()}"

    @serve.multiplexed(max_num_models_per_replica=8)
    async def get_loras(self, lora: str) -> lcm.PreparedLoras:
        """A LoRA read and laid out once per replica (evicted least recently used)."""
        files = [] if lora == NO_LORA else [(os.path.join(self.lora_dir, f"{lora}.safetensors"), 1.0)]
        return await asyncio.to_thread(self.pipe.prepare_loras, files)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, reqs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """One engine call per group of requests that can share a batch (same LoRA, size, steps and
        guidance): each prompt keeps its own seed, so a request's images do not depend on its batch."""
        groups: Dict[tuple, List[int]] = defaultdict(list)
        for i, r in enumerate(reqs):
            groups[(r["lora"], r["size"], r["steps"], r["guidance"])].append(i)
        results: List[Any] = [None] * len(reqs)
        for (lora, (w, h), steps, guidance), idx in groups.items():
            prepared = await self.get_loras(lora)
            prompts = [p for i in idx for p in [reqs[i]["prompt"]] * reqs[i]["n"]]
            seeds = [reqs[i]["seed"] + k for i in idx for k in range(reqs[i]["n"])]

            def run():
                if self.active != lora:
                    self.pipe.use_loras(prepared)
                    self.active = lora
                return self.pipe(prompts, seed=seeds, num_inference_steps=steps, guidance_scale=guidance,
                                 width=w, height=h)

            try:
                # The engine releases the GIL: the replica's event loop keeps taking requests meanwhile.
                out = await asyncio.to_thread(run)
            except (ValueError, FileNotFoundError, lcm.LcmError) as e:
                for i in idx:
                    results[i] = e
                continue
            at = 0
            for i in idx:
                n = reqs[i]["n"]
                results[i] = {"images": out.images[at : at + n], "batch": len(prompts), "replica": self.replica}
                at += n
        return results

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        try:
            w, h = (int(v) for v in str(body.get("size", "512x512")).split("x"))
            req = {
                "prompt": str(body["prompt"]),
                "n": int(body.get("n", 1)),
                "size": (w, h),
                "steps": int(body.get("num_inference_steps", 4)),
                "guidance": float(body.get("guidance_scale", 1.0)),
                "seed": int(body.get("seed", time.time_ns() % 2**31)),
                "lora": str(body.get("lora") or serve.get_multiplexed_model_id() or NO_LORA),
            }
        except (KeyError, ValueError) as e:
            return JSONResponse({"error": {"message": f"bad request: {e}", "type": "invalid_request_error"}}, 400)
        got = await self.generate(req)
        if isinstance(got, Exception):
            code = 404 if isinstance(got, FileNotFoundError) else 400 if isinstance(got, ValueError) else 500
            return JSONResponse({"error": {"message": str(got), "type": type(got).__name__}}, code)
        data = []
        for im in got["images"]:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data.append({"b64_json": base64.b64encode(buf.getvalue()).decode()})
        return JSONResponse({"created": int(time.time()), "data": data,
                             "lcm": {"replica": got["replica"], "batch": got["batch"]}})


app = LcmImages.bind()


def _demo() -> None:
    """Two CPU replicas of the tiny test model, 8 concurrent requests (two LoRA keys)."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import ray

    root = Path(__file__).resolve().parents[1]
    fixtures = root / "tests" / "fixtures"
    os.environ.update(LCM_MODEL=str(fixtures / "tiny-sd"), LCM_LORA_DIR=str(fixtures / "loras"),
                      LCM_DEVICE="cpu", LCM_GPUS_PER_REPLICA="0", LCM_MIN_REPLICAS="2", LCM_MAX_REPLICAS="2")
    ray.init(num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in os.environ if k.startswith("LCM_")}})
    # The module-level deployment read the environment at import; rebuild it with the demo's settings.
    demo = LcmImages.options(ray_actor_options={"num_gpus": 0, "num_cpus": 1},
                             autoscaling_config={"min_replicas": 2, "max_replicas": 2,
                                                 "target_ongoing_requests": 8})
    serve.run(demo.bind(), route_prefix="/v1/images/generations")

    def post(i: int) -> Dict[str, Any]:
        body = {"prompt": f"a photo of a cat, take {i}", "n": 1 + i % 2, "size": "64x64", "seed": i,
                "lora": "lora_peft" if i % 4 == 0 else NO_LORA}
        r = urllib.request.Request("http://127.0.0.1:8000/v1/images/generations", json.dumps(body).encode(),
                                   {"Content-Type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(r, timeout=300) as resp:
            out = json.load(resp)
        return {"i": i, "ms": (time.perf_counter() - t) * 1e3, "images": len(out["data"]), **out["lcm"],
                "lora": body["lora"]}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(post, range(8)))
    wall = time.perf_counter() - t0
    for row in rows:
        print(f"request {row['i']}: {row['images']} image(s), lora {row['lora']:<9} served by {row['replica']} "
              f"in a batch of {row['batch']}, {row['ms']:.0f} ms")
    print(f"{len(rows)} concurrent requests in {wall:.2f} s on {len({r['replica'] for r in rows})} replicas")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    _demo()
