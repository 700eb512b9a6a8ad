"""Drives a tritonserver running the lcm backend through tritonclient (HTTP and gRPC); run by
tests/triton_server.rs with the expected pixels it computed through the pipeline.

Checks: the pixels of one request over HTTP and one over gRPC; 8 concurrent requests (the dynamic
batcher gathers them for the 2 instances) each with its own correct image; 10 malformed requests each
answered with an error (those the backend sees name the input), and the server still serving after.
Prints one line per check; exits 1 on the first failure.
"""

import argparse
import concurrent.futures
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "lcm"


def inputs(mod, prompt="a red fox", **tensors):
    """The request's input tensors: prompt plus any of seed/steps/width/height/... as numpy arrays
    (batch dimension first). prompt: text, bytes, an array of its own, or None (left out)."""
    arrays = {}
    if isinstance(prompt, np.ndarray):
        arrays["prompt"] = prompt
    elif prompt is not None:
        arrays["prompt"] = np.array([[prompt.encode() if isinstance(prompt, str) else prompt]], dtype=np.object_)
    arrays.update(tensors)
    out = []
    for name, arr in arrays.items():
        dtype = {np.object_: "BYTES", np.uint8: "UINT8", np.int32: "INT32", np.int64: "INT64", np.float32: "FP32"}[
            arr.dtype.type
        ]
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def good(seed, steps, size):
    return dict(
        seed=np.array([[seed]], dtype=np.int64),
        steps=np.array([[steps]], dtype=np.int32),
        width=np.array([[size]], dtype=np.int32),
        height=np.array([[size]], dtype=np.int32),
    )


def image(result):
    return result.as_numpy("image")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--expected", required=True, help="JSON: {seed: path of raw RGB}, steps, size")
    args = ap.parse_args()
    spec = json.load(open(args.expected))
    steps, size = spec["steps"], spec["size"]
    expected = {int(s): np.fromfile(p, dtype=np.uint8).reshape(size, size, 3) for s, p in spec["images"].items()}
    http = httpclient.InferenceServerClient(args.http, concurrency=8, network_timeout=600.0)
    grpc = grpcclient.InferenceServerClient(args.grpc)

    def check(name, got, seed):
        want = expected[seed]
        if got.shape != (1, size, size, 3) or not np.array_equal(got[0], want):
            diff = "shape %s" % (got.shape,) if got.shape != (1, size, size, 3) else "max diff %d" % np.abs(
                got[0].astype(int) - want.astype(int)
            ).max()
            sys.exit("FAIL %s: seed %d differs from the pipeline's image (%s)" % (name, seed, diff))

    check("http", image(http.infer(MODEL, inputs(httpclient, **good(1, steps, size)))), 1)
    print("ok: HTTP request, same pixels as the pipeline")
    check("grpc", image(grpc.infer(MODEL, inputs(grpcclient, **good(2, steps, size)))), 2)
    print("ok: gRPC request, same pixels as the pipeline")

    seeds = sorted(expected)[:8]
    pending = [(s, http.async_infer(MODEL, inputs(httpclient, **good(s, steps, size)))) for s in seeds]
    for s, p in pending:
        check("concurrent", image(p.get_result()), s)
    stats = http.get_inference_statistics(MODEL)["model_stats"][0]
    inferences, executions = stats["inference_count"], stats["execution_count"]
    if executions >= inferences:
        sys.exit("FAIL concurrent: %d executions for %d inferences: nothing was batched" % (executions, inferences))
    print("ok: %d concurrent requests, each its own correct image (%d inferences in %d executions)"
          % (len(seeds), inferences, executions))

    g = good(3, steps, size)
    malformed = [
        ("missing prompt", dict(prompt=None, **g), None),
        ("seed as FP32", dict(g, seed=np.array([[3.0]], dtype=np.float32)), None),
        ("steps of shape [1, 2]", dict(g, steps=np.array([[2, 2]], dtype=np.int32)), None),
        ("width 60", dict(g, width=np.array([[60]], dtype=np.int32)), "width"),
        ("negative steps", dict(g, steps=np.array([[-1]], dtype=np.int32)), "steps"),
        ("a batch of 64", dict(prompt=np.array([[b"x"]] * 64, dtype=np.object_)), None),
        ("strength without an image", dict(g, strength=np.array([[0.5]], dtype=np.float32)), "strength"),
        ("image with 4 channels", dict(g, image=np.zeros((1, 64, 64, 4), dtype=np.uint8)), None),
        ("a prompt that is not UTF-8", dict(g, prompt=b"\xff\xfe"), "prompt"),
        ("seed -2", dict(g, seed=np.array([[-2]], dtype=np.int64)), "seed"),
    ]
    for what, kwargs, names in malformed:
        try:
            http.infer(MODEL, inputs(httpclient, **kwargs))
        except InferenceServerException as e:
            msg = e.message()
            if names is not None and ("input '%s'" % names) not in msg:
                sys.exit("FAIL malformed (%s): the error does not name input '%s': %s" % (what, names, msg))
            print("ok: malformed (%s): %s" % (what, msg))
            continue
        sys.exit("FAIL malformed (%s): answered without an error" % what)

    check("after malformed", image(grpc.infer(MODEL, inputs(grpcclient, **good(4, steps, size)))), 4)
    print("ok: still serving after the malformed requests")


if __name__ == "__main__":
    main()
