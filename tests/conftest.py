"""Test session setup.

Triton kernels run under the interpreter on CPU-only machines; the flag must be set before
anything imports triton, and only when no CUDA device exists (else GPU tests would silently
run in the interpreter).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
