#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/seeds/<target>/) from tests/fixtures. Standard library only.
Inputs that once crashed a target (fuzz/seeds/<target>/crash-*) are kept by hand beside them.

Weight files are reduced to their headers (the targets synthesise the data section, see fuzz/src/lib.rs)
or to a few small tensors, so that each corpus stays small enough to commit.
"""
import json, os, struct, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "seeds")


def header(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return b[8 : 8 + n], b[8 + n :]


def subset(path, keep):
    """A real safetensors file holding the `keep` smallest tensors of `path`."""
    h, data = header(path)
    meta = json.loads(h)
    tensors = sorted(((k, v) for k, v in meta.items() if k != "__metadata__"), key=lambda kv: (kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0], kv[0]))
    out, blob = {}, b""
    for k, v in tensors[:keep]:
        a, e = v["data_offsets"]
        out[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [len(blob), len(blob) + e - a]}
        blob += data[a:e]
    if "__metadata__" in meta:
        out["__metadata__"] = meta["__metadata__"]
    hj = json.dumps(out, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + blob


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def png(w, h, color_type, depth, rows, interlace=0, plte=None, trns=None):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# safetensors: small real files of each dtype the fixtures hold, and two headers
put("safetensors", "unet_3", subset(f"{FIX}/tiny-sd/unet/diffusion_pytorch_model.safetensors", 3))
put("safetensors", "clip_fp16_3", subset(f"{FIX}/tiny-sd/text_encoder/model.fp16.safetensors", 3))
put("safetensors", "vae_header", header(f"{FIX}/single-file/vae_ldm.safetensors")[0])
put("safetensors", "empty_table", struct.pack("<Q", 2) + b"{}")

# shards: index + two shards
sep = b"\0SH\0"
a = subset(f"{FIX}/tiny-sd/unet/diffusion_pytorch_model.safetensors", 2)
b = subset(f"{FIX}/tiny-sd/vae/diffusion_pytorch_model.safetensors", 2)
names_a = [k for k in json.loads(a[8 : 8 + struct.unpack("<Q", a[:8])[0]]) if k != "__metadata__"]
names_b = [k for k in json.loads(b[8 : 8 + struct.unpack("<Q", b[:8])[0]]) if k != "__metadata__"]
wm = {n: "m-00001-of-00002.safetensors" for n in names_a}
wm.update({n: "m-00002-of-00002.safetensors" for n in names_b})
idx = json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}).encode()
put("shards", "two_shards", idx + sep + a + sep + b)

# config: every config.json of the fixtures
for comp in ["unet", "vae", "text_encoder", "scheduler"]:
    for model in ["tiny-sd", "tiny-lcm", "single-file/config"]:
        for fname in ["config.json", "scheduler_config.json"]:
            p = f"{FIX}/{model}/{comp}/{fname}"
            if os.path.exists(p):
                put("config", f"{model.replace('/', '_')}_{comp}", open(p, "rb").read())

# lora: headers of every fixture LoRA (kohya, kohya-LDM, peft, single-file; SD1.5 and SDXL), one small real file
for p in ["loras/lora_kohya", "loras/lora_kohya_ldm", "loras/lora_peft", "loras/lora2_peft", "single-file/lora_sf"]:
    put("lora", p.split("/")[1] + "_header", header(f"{FIX}/{p}.safetensors")[0])
put("lora", "peft_small", subset(f"{FIX}/loras/lora2_peft.safetensors", 4))
for p in ["lora_kohya", "lora_kohya_ldm", "lora_peft"]:
    put("lora", f"sdxl_{p}_header", header(f"{FIX}/sdxl/loras/{p}.safetensors")[0])

# single_file: checkpoint (SD1.5, SDXL) and VAE headers
put("single_file", "sd15_tiny_header", header(f"{FIX}/single-file/sd15_tiny.safetensors")[0])
put("single_file", "vae_ldm_header", header(f"{FIX}/single-file/vae_ldm.safetensors")[0])
put("single_file", "sdxl_tiny_header", header(f"{FIX}/sdxl/tiny_sdxl.safetensors")[0])

# tokenizer: the recorded prompts, and a few hostile ones
for i, c in enumerate(json.load(open(f"{FIX}/records/tokenizer_prompts.json"))["cases"]):
    put("tokenizer", f"prompt_{i}", c["prompt"].encode())
put("tokenizer", "controls", bytes(range(32)) + b"a cat\x7f\xc2\x80")
put("tokenizer", "invalid_utf8", b"a \xff\xfe cat \xed\xa0\x80")

# png: the fixture images and each colour type / depth / interlace
for n in ["init_64x64", "init_96x64"]:
    put("png", n, open(f"{FIX}/images/{n}.png", "rb").read())
put("png", "gray8", png(4, 3, 0, 8, [bytes([i * 20 + j for j in range(4)]) for i in range(3)]))
put("png", "gray16", png(4, 3, 0, 16, [bytes(range(8)) for _ in range(3)]))
put("png", "gray_alpha", png(4, 3, 4, 8, [bytes(range(8)) for _ in range(3)]))
put("png", "rgba8", png(2, 2, 6, 8, [bytes(range(8)) for _ in range(2)]))
put("png", "rgb16", png(2, 2, 2, 16, [bytes(range(12)) for _ in range(2)]))
put("png", "palette", png(4, 2, 3, 2, [b"\x1b", b"\xe4"], plte=bytes(range(12)), trns=b"\x80"))
put("png", "interlaced", png(9, 9, 2, 8, [bytes(range(27)) for _ in range(9)], interlace=1))
put("png", "huge_header", open(f"{FIX}/images/kinds/huge_header.png", "rb").read())
put("png", "palette4_trns", open(f"{FIX}/images/kinds/palette4.png", "rb").read())

# serve_request: the first byte picks the endpoint (0 OpenAI images, 1 A1111 txt2img, 2 img2img), then
# the body: the requests of crates/lcm-cli/tests/serve.rs and docs/serving.md, and a few refusals.
png64 = __import__("base64").b64encode(open(f"{FIX}/images/init_64x64.png", "rb").read()).decode()
bodies = [
    (0, {"prompt": "a red house", "size": "64x64", "seed": 7}),
    (0, {"prompt": "a cat", "n": 2, "size": "512x768", "steps": 4, "guidance_scale": 1.5,
         "negative_prompt": "blurry", "loras": [{"name": "style", "scale": 0.8}], "response_format": "b64_json"}),
    (1, {"prompt": "a boat <lora:style:0.5>", "seed": 11, "steps": 4, "cfg_scale": 1, "width": 64,
         "height": 64, "sampler_name": "LCM", "n_iter": 1, "batch_size": 2}),
    (2, {"prompt": "an oil painting", "init_images": [png64], "denoising_strength": 0.5, "seed": -1}),
    (0, {"prompt": "x", "size": "4096x4096"}),
    (1, {"prompt": "<lora:missing:1>", "steps": 999}),
]
for i, (api, body) in enumerate(bodies):
    put("serve_request", f"body_{i}", bytes([api]) + json.dumps(body).encode())
put("serve_request", "not_json", b"\x00{\"prompt\": ")
