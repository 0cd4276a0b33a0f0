"""sparsekit: block-sparse linear and conv2d kernels with autograd, for sparse training.

    import sparsekit
    layer = sparsekit.SparseConv2d(256, 256, 3, padding=1, block=(32, 32), density=0.1)
    model = sparsekit.sparsify(model, density=0.2, block=(32, 32), exclude=["head"])

See ``sparsekit.ops`` for the functional API and dispatch, ``sparsekit.layout`` for the block
layout, ``sparsekit.BACKENDS`` for the backends (``sparsekit.backends``: one module each), and
``python -m sparsekit.info`` for what this machine can run.
"""

import torch  # noqa: F401  (loads torch's libgomp before our extension links against it)

from .layout import BlockLayout
from .nn import SparseConv2d, SparseLinear, sparse_layers, sparsify
from .ops import block_sparse_conv2d, block_sparse_linear, get_backend, set_backend

__version__ = "0.1.0"


def __getattr__(name):
    """``sparsekit.dst`` (the DST engine) is imported on first use, not with the kernels;
    ``sparsekit.BACKENDS`` (every backend's name, ``backends.names()``) is found on first use."""
    if name == "dst":
        import importlib

        return importlib.import_module(f"{__name__}.dst")
    if name == "BACKENDS":
        from .backends import names

        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "BlockLayout",
    "dst",
    "SparseConv2d",
    "SparseLinear",
    "block_sparse_conv2d",
    "block_sparse_linear",
    "get_backend",
    "set_backend",
    "sparse_layers",
    "sparsify",
]
