"""Which backend ``auto`` runs on CUDA tensors, per pass and dtype: a table measured on a GPU.

``auto`` on a CUDA tensor tries the backends in the order :func:`cuda_order` gives for the op's
pass (``fwd``, ``dx``, ``dw``) and dtype, taking the first that supports the call. The table is
data (``gpu_tuning.json`` beside this file, written by ``python -m benchmarks.tune_gpu`` on a GPU)
so a new measurement replaces it without touching code; the same file holds the Triton launch
table (``backends/triton/tuning.py``). ``SPARSEKIT_GPU_TUNING=PATH`` points both at another such
file (how the tuning run checks its own result before it is committed).

The backends a route may name, and the order of a pass/dtype the file does not name, are those
serving CUDA tensors by their declared priority (``backends.serving("cuda")``: ``triton``, then
``cuda``).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from . import serving

DEFAULT_FILE = Path(__file__).with_name("gpu_tuning.json")
PASSES = {"linear_fwd": "fwd", "conv2d_fwd": "fwd", "linear_dx": "dx", "conv2d_dx": "dx",
          "linear_dw": "dw", "conv2d_dw": "dw"}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', 'float16': the names the tuning file uses."""
    return str(dtype).removeprefix("torch.")


def gpu_backends() -> tuple[str, ...]:
    """The backends ``auto`` may pick for CUDA tensors, highest priority first."""
    return serving("cuda")


@functools.cache
def tuning_file() -> dict:
    """The GPU tuning document: ``SPARSEKIT_GPU_TUNING`` if set, else the committed file.

    Raises ValueError naming the file if it cannot be read or lacks the expected sections.
    """
    path = Path(os.environ.get("SPARSEKIT_GPU_TUNING") or DEFAULT_FILE)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"GPU tuning file {path} could not be read: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("routes"), dict) \
            or not isinstance(doc.get("triton"), dict):
        raise ValueError(f"GPU tuning file {path} must be a JSON object with 'routes' and "
                         "'triton' objects (see python -m benchmarks.tune_gpu)")
    for key, name in doc["routes"].items():
        if name not in gpu_backends():
            raise ValueError(f"GPU tuning file {path}: route {key!r} names {name!r}, expected "
                             f"one of {gpu_backends()}")
    return doc


def cuda_order(op: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Backends ``auto`` tries, in order, for ``op`` (e.g. "conv2d_dw") on CUDA ``dtype``."""
    default = gpu_backends()
    first = tuning_file()["routes"].get(f"{PASSES[op]}/{dtype_name(dtype)}", default[0])
    return (first,) + tuple(b for b in default if b != first)


def dump_tuning(doc: dict) -> str:
    """``doc`` as the tuning file's JSON text: one line per route and per Triton entry."""
    lines = ["{"]
    for key in ("about", "measured_on"):
        lines.append(f" {json.dumps(key)}: {json.dumps(doc.get(key, ''))},")
    for section in ("routes", "triton"):
        items = list(doc[section].items())
        lines.append(f' "{section}": {{')
        lines += [f"  {json.dumps(k)}: {json.dumps(v)}" + ("," if i + 1 < len(items) else "")
                  for i, (k, v) in enumerate(items)]
        lines.append(" }" + ("," if section == "routes" else ""))
    return "\n".join(lines + ["}"]) + "\n"
