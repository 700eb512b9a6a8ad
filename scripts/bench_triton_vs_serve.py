"""Requests/s through Triton (the lcm backend) and through `lcm serve`, same model, same requests, the
same concurrency (docs/BENCH_LOG.md; docs/triton.md). Each server must already be running; pass the
ones to measure. Every request is txt2img of PROMPT at SIZE x SIZE, STEPS steps, its own seed.

  python scripts/bench_triton_vs_serve.py --triton 127.0.0.1:8000 --serve http://127.0.0.1:7860 \
      --requests 32 --concurrency 8 --size 64 --steps 2
Plain Python (urllib) for both."""

import argparse
import concurrent.futures
import json
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return r.read()


def triton_call(url):
    """KServe v2 over HTTP (what tritonclient sends; the same plain client as for lcm serve, as
    tritonclient's gevent client is not for threads), the image back as binary data."""

    def call(seed, size, steps):
        scalar = lambda name, dtype, v: {"name": name, "shape": [1, 1], "datatype": dtype, "data": [v]}
        inputs = [
            scalar("prompt", "BYTES", "a red fox"),
            scalar("seed", "INT64", seed),
            scalar("steps", "INT32", steps),
            scalar("width", "INT32", size),
            scalar("height", "INT32", size),
        ]
        out = post(f"http://{url}/v2/models/lcm/infer", {"inputs": inputs, "outputs": [{"name": "image", "parameters": {"binary_data": True}}]})
        assert len(out) >= size * size * 3

    return call


def serve_call(url):
    def call(seed, size, steps):
        body = {"prompt": "a red fox", "size": f"{size}x{size}", "n": 1, "seed": seed, "steps": steps}
        json.loads(post(url + "/v1/images/generations", body))

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
