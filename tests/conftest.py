"""Test session setup.

Triton kernels run under the interpreter on CPU-only machines; the flag must be set before
anything imports triton, and only when no CUDA device exists (else GPU tests would silently
run in the interpreter).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """A fresh cache directory for the digit classifier (trained once per test session)."""
    old = os.environ.get("SPARSEKIT_CACHE")
    os.environ["SPARSEKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["SPARSEKIT_CACHE"]
    else:
        os.environ["SPARSEKIT_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    """The embedded digits at 32×32 (gan.data), loaded once."""
    from gan.data import load

    return load("digits")
