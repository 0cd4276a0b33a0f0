"""Shared test-case generators and comparison helpers for every backend's tests."""

from __future__ import annotations

import torch

import sparsekit
from sparsekit import BlockLayout


def rel_err(a, b):
    """max |a - b| relative to max |a| (0 when both are all-zero)."""
    scale = a.abs().max().clamp_min(1e-12)
    return ((a - b).abs().max() / scale).item()


def make_layout(weight_shape, block, density, seed=0, empty_rows=(), full=False):
    """A random layout at ``density`` (elements), with some block rows forced empty."""
    g = torch.Generator().manual_seed(seed)
    layout = BlockLayout.random(weight_shape, block, density, generator=g)
    if full:
        layout.update(torch.ones(layout.grid, dtype=torch.bool))
    if empty_rows:
        bitmap = layout.bitmap.clone()
        bitmap[list(empty_rows)] = False
        layout.update(bitmap)
    return layout


def run_with_grads(backend, fn, tensors, seed=1, **kwargs):
    """Run ``fn(*tensors, **kwargs)`` on ``backend``; returns (output, grads of the leaf inputs)."""
    sparsekit.set_backend(backend)
    try:
        leaves = [t.detach().clone().requires_grad_(True) if t is not None and t.is_floating_point()
                  else t for t in tensors]
        y = fn(*leaves, **kwargs)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
        y.backward(dy)
        return y.detach(), [t.grad for t in leaves if t is not None and t.is_floating_point()]
    finally:
        sparsekit.set_backend("auto")


def assert_matches_reference(backend, fn, tensors, tol=1e-4, **kwargs):
    y0, g0 = run_with_grads("reference", fn, tensors, **kwargs)
    y1, g1 = run_with_grads(backend, fn, tensors, **kwargs)
    assert y1.shape == y0.shape
    names = ["output"] + [f"grad[{i}]" for i in range(len(g0))]
    for name, a, b in zip(names, [y0] + g0, [y1] + g1):
        assert b is not None, f"{name} missing"
        assert a.shape == b.shape, name
        err = rel_err(a, b)
        assert err <= tol, f"{backend} {name} differs from reference: rel err {err:.2e}"


def load_setup_module(monkeypatch):
    """The repository's setup.py imported as a module, for its pure helpers (ISA sources and
    flags); pybind11's build helpers are stubbed, so nothing is built."""
    import importlib.util
    import os
    import sys
    import types

    stub = types.ModuleType("pybind11.setup_helpers")
    stub.ParallelCompile = stub.Pybind11Extension = object
    stub.build_ext = type("build_ext", (), {})
    monkeypatch.setitem(sys.modules, "pybind11", types.ModuleType("pybind11"))
    monkeypatch.setitem(sys.modules, "pybind11.setup_helpers", stub)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    spec = importlib.util.spec_from_file_location("sparsekit_setup", os.path.join(root, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(code, timeout=120, **env):
    """Run ``code`` in a fresh interpreter from the repository root (so ``tests.cases`` imports),
    with ``env`` added to the environment; returns the CompletedProcess (text output)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=timeout)
