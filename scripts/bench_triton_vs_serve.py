"""Requests/s through Triton (the lcm backend) and through `lcm serve`, same model, same requests, the
same concurrency (docs/BENCH_LOG.md; docs/triton.md). Each server must already be running; pass the
ones to measure. Every request is txt2img of PROMPT at SIZE x SIZE, STEPS steps, its own seed.

  python scripts/bench_triton_vs_serve.py --triton 127.0.0.1:8000 --serve http://127.0.0.1:7860 \
      --requests 32 --concurrency 8 --size 64 --steps 2
Run it with the venv of scripts/triton-venv.sh (tritonclient, numpy)."""

import argparse
import concurrent.futures
import json
import time
import urllib.request

import numpy as np


def triton_call(url):
    import tritonclient.http as http

    client = http.InferenceServerClient(url, concurrency=64, network_timeout=3600.0)

    def call(seed, size, steps):
        tensors = []
        for name, arr, dtype in [
            ("prompt", np.array([[b"a red fox"]], dtype=np.object_), "BYTES"),
            ("seed", np.array([[seed]], dtype=np.int64), "INT64"),
            ("steps", np.array([[steps]], dtype=np.int32), "INT32"),
            ("width", np.array([[size]], dtype=np.int32), "INT32"),
            ("height", np.array([[size]], dtype=np.int32), "INT32"),
        ]:
            t = http.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        client.infer("lcm", tensors).as_numpy("image")

    return call


def serve_call(url):
    def call(seed, size, steps):
        body = json.dumps({"prompt": "a red fox", "size": f"{size}x{size}", "n": 1, "seed": seed, "steps": steps})
        req = urllib.request.Request(
            url + "/v1/images/generations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=3600) as r:
            json.load(r)

    return call


def measure(call, args):
    call(0, args.size, args.steps)  # warm up
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(lambda s: call(s, args.size, args.steps), range(1, args.requests + 1)))
    return args.requests / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--triton")
    ap.add_argument("--serve")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    for name, url, make in [("triton", args.triton, triton_call), ("lcm serve", args.serve, serve_call)]:
        if url:
            print(f"{name}: {measure(make(url), args):.2f} requests/s ({args.requests} requests, "
                  f"{args.concurrency} concurrent, {args.size}x{args.size}, {args.steps} steps)")


if __name__ == "__main__":
    main()
