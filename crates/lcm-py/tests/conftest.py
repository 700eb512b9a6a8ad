"""Shared helpers for the Python module's tests: the repository's fixtures (tests/fixtures, made by the
scripts there; nothing is downloaded) and a safetensors reader for the records diffusers wrote."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import lcm

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = FIXTURES / "records"
DTYPES = {"F32": np.float32, "U8": np.uint8, "I64": np.int64}


def read_safetensors(path: Path) -> dict:
    """Every tensor of a .safetensors file as a NumPy array (the format: an 8-byte little-endian header
    length, the JSON header, then the data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64, as lcm_core::rel_l2."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="session")
def tiny_sd() -> lcm.Pipeline:
    return lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu")
