"""CUDA graphs of the trainer's steps (``--cuda-graphs``): warm up, capture once, replay.

One graph per *step* (the D step, the G step, the EMA update), not per iteration. The host has to
act between the steps: D's engine runs after every D step (a mask update or DDST adjustment fires
after the first D step of its iteration, and the remaining D steps train on the new mask), G's
engine after G's step, the balance-ratio sample reads D's logits on the host, and the EMA follows
G's mask update. Those run eagerly between replays, exactly where the eager loop runs them;
``BlockLayout.update`` rewrites the index buffers in place, so the next replay trains on the new
masks. So after the warm-ups every step of every iteration is a replay, at the price of one replay
per step rather than one per iteration.

**What a capture bakes in keys it.** Python values read while capturing are constants of the
graph, so :meth:`StepGraphs.run` takes a key holding the step's kind (``"D"``, ``"G"``, ``"EMA"``)
and every such value: whether G's and D's layers compute the
dense dW (``layout.dense_dw``, a bool argument of every sparse op, forward passes included; on
around a gradient-regrowth mask update or DDST adjustment) and, for G, the DGL stage (stage 2 adds
the teacher term). "A second, dense-dW graph" is thus e.g. the variant ``("D", False, True)`` of
``("D", False, False)``; each variant is captured when first needed after its own warm-ups.

**Static** (the same memory at every replay; the trainer keeps it so): parameters, buffers,
layouts' index buffers and optimizer state (updated in place); gradients (zeroed in place, never
set to None, so the engines read the ``.grad`` of whichever graph ran last); the learning rates
(device tensors in capturable Adam's param groups, filled before each iteration); the inputs (real
batch, noise, EMA weight), copied into buffers owned here before every run; and the outputs, the
tensors the capture returned, valid until the graph's next replay. A capture that makes a lasting
tensor raises :class:`GraphMemoryError`; tensors that move afterwards (a checkpoint load) drop the
graphs (:meth:`StepGraphs.check`, ``reset``). Every graph has its own memory pool: torch calls a
shared pool safe only for graphs replayed in the order they were captured, and the variants of a
step are not.

**Eager**: the first ``warmup`` runs of every key — real training steps, on a side stream, so
lazy optimizer state, Triton compilation and cuBLAS workspaces happen before capture — and all the
host's work between steps.

Backends: :class:`CUDAGraphs` (``torch.cuda.CUDAGraph``) and :class:`EmulatedGraphs`, the CPU
stand-in tests use (:func:`emulated`): a capture runs under :class:`HostGuard`, where host reads of
tensor values raise :class:`HostSyncError`, and every replay reruns the captured function and must
repeat its op trace (:class:`GraphDivergence` when a baked-in value or address changed). What it
cannot see: device transfers (everything is on the CPU) and the GPU kernels themselves.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections import Counter
from typing import Callable
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import sparsekit.ops

_ADAM = importlib.import_module("torch.optim.adam")  # torch.optim deletes its submodules' names
WARMUP = 3  # eager runs of a step before its capture (torch's whole-network example uses 3)
NOT_DISTRIBUTED = ("--cuda-graphs runs in one process for now: capturing DDP's gradient "
                   "all-reduce is not supported yet; launch without torchrun")


class GraphMemoryError(RuntimeError):
    """A captured step made a lasting tensor (parameter, gradient, buffer, optimizer state)."""


class HostSyncError(RuntimeError):
    """A captured step read a device value on the host (a CUDA graph cannot)."""


class GraphDivergence(RuntimeError):
    """A replay did not repeat its capture: a value the graph baked in changed."""


class StepGraphs:
    """The captured steps of one trainer (see the module docstring).

    Args:
        backend: :class:`CUDAGraphs` or :class:`EmulatedGraphs`.
        warmup: eager runs of each key before it is captured.
        addresses: returns the set of addresses of every lasting tensor the steps read or write
            (parameters, gradients, buffers, optimizer state). A capture that adds one raises
            :class:`GraphMemoryError`; :meth:`check` compares them with those at capture.
    """

    def __init__(self, backend, warmup: int, addresses: Callable[[], set]):
        self.backend, self.warmup, self.addresses = backend, warmup, addresses
        self.replays: Counter = Counter()  # key -> replays (captures count as one)
        self._steps: dict[tuple, _Step] = {}
        self._captured_addresses: set | None = None

    def run(self, key: tuple, fn: Callable, *inputs):
        """``fn(*inputs)`` through the graph of ``key`` (``key[0]``: the step's kind): copies
        ``inputs`` (tensors, or floats held as 0-d float32 tensors) into the key's static buffers,
        then runs ``fn`` on them eagerly during warm-up, captures it the first time after, and
        replays the capture from then on (``fn`` is then not called: a replay repeats what the
        capture recorded). Returns ``fn``'s outputs, a tuple of tensors or None."""
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = _Step(key, inputs, self.backend.device)
        step.load(inputs)
        if step.graph is not None:
            self.backend.replay(step.graph)
            self.replays[key] += 1
            return step.outputs
        if step.warmups < self.warmup:
            step.warmups += 1
            return self.backend.warm_up(fn, step.inputs)
        if self.check():  # the graphs captured so far are gone: this key warms up again
            return self.run(key, fn, *inputs)
        before = self.addresses()
        step.graph, step.outputs = self.backend.capture(key, fn, step.inputs)
        self._captured_addresses = self.addresses()
        made = len(self._captured_addresses - before)
        if made:
            raise GraphMemoryError(
                f"step {key} made {made} lasting tensors while captured (a .grad set to None "
                "and made again, optimizer state made lazily, ...): they would live in this "
                "graph's private memory, apart from their twins in the other graphs (an engine "
                "would read another graph's .grad); make them before capture (in the warm-up) "
                "and update them in place")
        self.replays[key] += 1
        return step.outputs

    def check(self) -> bool:
        """Drop every graph (each key then warms up and is captured again) if a tensor that
        existed at the last capture has moved; True if one had. Tensors made since (a first
        step's gradients and optimizer state) are no graph's business yet. The trainer calls it
        after every mask change and DDST adjustment."""
        if self._captured_addresses is None or self._captured_addresses <= self.addresses():
            return False
        self.reset()
        return True

    def reset(self):
        """Drop every graph, e.g. after loading a checkpoint replaced the optimizer state."""
        self._steps.clear()
        self._captured_addresses = None


class _Step:
    """One key's static inputs, warm-up count, graph and outputs."""

    def __init__(self, key, inputs, device):
        self.key, self.warmups, self.graph, self.outputs = key, 0, None, None
        self.inputs = tuple(torch.empty((), dtype=torch.float32, device=device)
                            if isinstance(x, float) else torch.empty_like(x) for x in inputs)

    def load(self, inputs):
        for i, (static, x) in enumerate(zip(self.inputs, inputs)):
            if isinstance(x, float):
                static.fill_(x)
                continue
            if x.shape != static.shape or x.dtype != static.dtype:
                raise ValueError(f"input {i} of step {self.key} changed from {tuple(static.shape)} "
                                 f"{static.dtype} to {tuple(x.shape)} {x.dtype}: a graph replays "
                                 "fixed shapes")
            static.copy_(x)


# ----------------------------------------------------------------------------------- CUDA
class CUDAGraphs:
    """``torch.cuda.CUDAGraph`` per key, as torch's whole-network capture: warm-up on a side
    stream, capture (into the graph's own memory pool), replay on the current stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self._stream = torch.cuda.Stream(device)

    def warm_up(self, fn, inputs):
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            outputs = fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return outputs

    def capture(self, key, fn, inputs):
        """Capture ``fn(*inputs)`` and replay it once (a capture records without running)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn(*inputs)
        graph.replay()
        return graph, outputs

    def replay(self, graph):
        graph.replay()


# ----------------------------------------------------------------------------------- CPU stand-in
# Ops whose result reaches the host or whose output shape depends on tensor values: under CUDA
# graph capture they synchronise (illegal) or bake one iteration's data into the graph.
_HOST_OPS = {
    "aten._local_scalar_dense": ".item(), float(), int() or bool() of a tensor",
    "aten.is_nonzero": "bool() of a tensor",
    "aten.equal": "torch.equal",
    "aten.nonzero": "nonzero() (its output shape depends on the values)",
    "aten.masked_select": "masked_select (its output shape depends on the values)",
    "aten.unique_consecutive": "unique (its output shape depends on the values)",
    "aten._unique2": "unique (its output shape depends on the values)",
    "aten.unique_dim": "unique (its output shape depends on the values)",
}
_INDEX_OPS = ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_")
_HOST_METHODS = ("tolist", "numpy", "cpu")
_PLAIN = (bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
          torch.memory_format)


def registered_ops():
    """Inside: the sparse layers run through their registered ops (``torch.ops.sparsekit``), not
    the eager path, whose CPU dense route (``reference.dense_autograd``) rounds differently."""
    return mock.patch.object(sparsekit.ops, "_EAGER_AVAILABLE", False)


class HostGuard(TorchDispatchMode):
    """Runs a step as a CUDA-graph capture must: any host read of a device value raises
    :class:`HostSyncError`; records the op trace (op, arguments, tensor shapes and addresses) in
    ``trace``.

    The sparse layers run through their registered ops (the path ``torch.compile`` takes; the
    same kernels), so each sparse op is one traced call with its ``dense_dw`` flag, and the CPU
    kernels' own reads of the live block count — host memory on CPU (DESIGN §2), never read by
    the GPU backends — stay inside it.
    """

    def __init__(self):
        super().__init__()
        self.trace: list = []
        self._made: dict[int, int] = {}  # storage address -> index of the op that allocated it
        self._depth = 0
        self._patches = contextlib.ExitStack()

    def __enter__(self):
        self._patches.enter_context(registered_ops())
        for name in _HOST_METHODS:
            self._patches.enter_context(mock.patch.object(torch.Tensor, name,
                                                          self._refusing(name)))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()

    def _refusing(self, name):
        method = getattr(torch.Tensor, name)

        def guarded(tensor, *args, **kwargs):
            if self._depth == 0:
                raise HostSyncError(f"Tensor.{name}() inside a captured step: a CUDA graph cannot "
                                    "read device values on the host; move it out of the step")
            return method(tensor, *args, **kwargs)
        return guarded

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        reason = _HOST_OPS.get(name)
        if reason is None and name in _INDEX_OPS and any(
                isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
                for t in tree_flatten(args[1:2])[0]):
            reason = "boolean-mask indexing x[mask] (its output shape depends on the values)"
        if reason is not None:
            raise HostSyncError(f"{func} inside a captured step: {reason}. A CUDA graph cannot "
                                "read device values on the host; keep the step on the device "
                                "(torch.where, masked_fill) or move this out of it")
        if name == "aten.lift_fresh":  # torch.tensor(data): a new tensor whose values are baked in
            self.trace.append((str(func), torch._C.TensorBase.tolist(args[0])))
        else:
            self.trace.append((str(func), self._describe(args), self._describe(kwargs)))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and name != "aten.lift_fresh"}
        self._depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self._depth -= 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self._made[t.untyped_storage().data_ptr()] = len(self.trace) - 1
        return out

    def _describe(self, value):
        """A comparable image of an op argument: numbers and flags as they are, tensors as shape,
        dtype and where they live — made by op k of this run, or the address of one from outside
        (which must not move between replays)."""
        if isinstance(value, torch.Tensor):
            made = self._made.get(value.untyped_storage().data_ptr())
            where = ("empty" if value.numel() == 0 else ("made by op", made) if made is not None
                     else ("at", value.data_ptr()))
            return ("tensor", tuple(value.shape), value.dtype, where)
        if isinstance(value, dict):
            return tuple((k, self._describe(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(v) for v in value)
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if value is None or isinstance(value, _PLAIN):
            return value
        return ("object", type(value).__name__)  # e.g. a profiler handle


class _Recording:
    """An emulated graph: the captured function, its static inputs and outputs, and its trace."""

    def __init__(self, key, fn, inputs, outputs, trace):
        self.key, self.fn, self.inputs, self.outputs, self.trace = key, fn, inputs, outputs, trace


class EmulatedGraphs:
    """A CPU stand-in for :class:`CUDAGraphs` with its semantics, for tests.

    Warm-ups run the sparse layers through their registered ops, as captures and replays do.
    Capture runs the step once under :class:`HostGuard` and keeps the function, its outputs and
    its op trace. Replay runs the *captured* function again (never a later one: a real graph
    replays what it recorded) under the guard, raises :class:`GraphDivergence` unless the trace is
    the capture's — same ops, same Python numbers and flags, same addresses of tensors from
    outside — and copies the results into the captured outputs.
    """

    device = torch.device("cpu")

    def warm_up(self, fn, inputs):
        with registered_ops():  # as capture: a step's arithmetic must not depend on being captured
            return fn(*inputs)

    def capture(self, key, fn, inputs):
        with HostGuard() as guard:
            outputs = fn(*inputs)
        return _Recording(key, fn, inputs, outputs, guard.trace), outputs

    def replay(self, graph):
        with HostGuard() as guard:
            outputs = graph.fn(*graph.inputs)
        for i, (captured, replayed) in enumerate(zip(graph.trace, guard.trace)):
            if captured != replayed:
                where, was, now = _first_difference(captured[1:], replayed[1:])
                raise GraphDivergence(
                    f"replay of step {graph.key} differs from its capture at op {i} "
                    f"({captured[0]} / {replayed[0]}), argument {where}: captured {was!r}, "
                    f"replayed {now!r}. A Python value or tensor the graph baked in changed "
                    "between runs: pass it as an input (a static buffer, updated in place) or "
                    "make it part of the step's key")
        if len(graph.trace) != len(guard.trace):
            raise GraphDivergence(f"replay of step {graph.key} ran {len(guard.trace)} ops, its "
                                  f"capture {len(graph.trace)}: the step's control flow depends "
                                  "on a value that changed; make it part of the step's key")
        with torch.no_grad():
            for static, new in zip(graph.outputs, outputs):
                if static is not None:
                    static.copy_(new)


def _first_difference(a, b, where=()):
    """(index path, a's part, b's part) of the first place two trace entries differ (a tensor's
    description counts as one part)."""
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and a[:1] != ("tensor",):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, where + (i,))
    return where, a, b


# ----------------------------------------------------------------------------------- factory
_emulation: int | None = None  # warm-up count while emulated() is active


@contextlib.contextmanager
def emulated(warmup: int = 1):
    """Run ``--cuda-graphs`` on the CPU through :class:`EmulatedGraphs` inside the block (tests):
    ``make`` returns emulated graphs with ``warmup`` warm-ups, and Adam accepts
    ``capturable=True`` for CPU tensors (torch allows it on accelerators only; the arithmetic is
    the same)."""
    global _emulation
    devices = _ADAM._get_capturable_supported_devices
    previous, _emulation = _emulation, warmup
    try:
        with mock.patch.object(_ADAM, "_get_capturable_supported_devices",
                               lambda supports_xla=True: devices(supports_xla) + ["cpu"]):
            yield
    finally:
        _emulation = previous


def check_device(device: str):
    """ValueError unless ``--cuda-graphs`` can run on ``device`` ("cuda"; also "cpu" while
    :func:`emulated`)."""
    if device != "cuda" and _emulation is None:
        raise ValueError(f"--cuda-graphs needs --device cuda (CUDA graphs record CUDA kernels), "
                         f"got --device {device}")


def make(device: torch.device, addresses: Callable[[], set]) -> StepGraphs:
    """The step graphs of a trainer on ``device`` (see :class:`StepGraphs` for ``addresses``)."""
    check_device(device.type)
    if _emulation is not None:
        return StepGraphs(EmulatedGraphs(), _emulation, addresses)
    return StepGraphs(CUDAGraphs(device), WARMUP, addresses)
