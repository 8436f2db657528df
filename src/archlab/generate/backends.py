"""Decoding backends: how ``archlab.generate`` runs the model's weight products.

The model itself is plain PyTorch (``nn.Linear`` / ``F.linear``), so it trains, converts and
compiles like any other module. A backend is chosen per ``generate`` call
(``GenerationConfig.backend``) and changes nothing in the model after the call:

- ``eager``: the model as it is, on any device.
- ``cpu-blocked``: on CPU, the few-row products of a decoding step run as one ``bmm`` over row
  blocks of each weight (:func:`blocked_linear`).
- ``auto`` (the default): ``cpu-blocked`` for a float32 model on CPU with more than one
  thread, the case it was measured faster in (``bench/gemv.py``, ``bench/generate.py``);
  ``eager`` otherwise.

Why the blocked path: a decoding step multiplies a few rows (one new token per sequence) by
every weight matrix, a matrix-vector product bound by memory bandwidth. On CPU, PyTorch's BLAS
(MKL) runs such products on one thread: measured on this project's 2-core machine, the 25
matrices of a 6-layer d=384 decoder took 3.6 ms per token with ``F.linear`` (15 GB/s) against
1.1 ms (about 50 GB/s, the rate of a plain read of the same bytes) when the weight's rows are
cut into one block per thread and multiplied in one ``bmm``, which runs its blocks in
parallel. Its result equals ``F.linear``'s up to the order of floating-point sums.

How it is applied: for the length of the call, each ``nn.Linear`` of the model gets an instance
``forward`` (and the model an instance ``lm_logits``, whose tied vocabulary projection is no
module) that takes the blocked path when the calling thread is inside a ``cpu-blocked`` call
and the input has at most :data:`FEW_ROWS` rows, and is ``F.linear`` otherwise. The instance
attributes are removed when the last call using the model ends, so the model's modules, state
dict and ``torch.compile`` graphs are those of plain PyTorch outside the call. Another thread
using the model meanwhile (training it, or generating with ``eager``) gets ``F.linear``: whether
the blocked path applies is per thread. Parameters must not be replaced or moved while a call
runs (in-place changes are seen: the blocked views share storage).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archlab.errors import ArchlabError
from archlab.generate.config import BACKENDS

# Most rows a decoding step multiplies (batch x beams x 1 token) for which the blocked path is
# used; measured faster than F.linear up to 8 rows.
FEW_ROWS = 8


def resolve_backend(model: nn.Module, name: str) -> str:
    """The backend ``name`` (one of :data:`BACKENDS`) stands for with this model: ``auto``
    becomes ``cpu-blocked`` or ``eager``; ``cpu-blocked`` on a model that is not on CPU is an
    error."""
    if name not in BACKENDS:
        raise ArchlabError(f"generate.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    params = list(model.parameters())
    on_cpu = all(p.is_cpu for p in params)
    if name == "auto":
        fits = on_cpu and torch.get_num_threads() > 1 and all(p.dtype == torch.float32 for p in params)
        return "cpu-blocked" if fits else "eager"
    if name == "compiled":
        from archlab.model.moe import MoE
        from archlab.model.ssm import Mamba, Mamba2  # (a static cache holds attention layers only)

        kinds = {type(m) for m in model.modules()}
        why = ("Mamba layers" if kinds & {Mamba, Mamba2} else "mixture-of-experts layers" if MoE in kinds
               else "a sliding attention window" if getattr(getattr(model, "cfg", None), "attn_window", None)
               else None)
        if why:
            raise ArchlabError(f"generate.backend=compiled: the fixed-shape decoding step does not support "
                               f"{why} yet; use auto or eager")
    if name == "cpu-blocked" and not on_cpu:
        dev = next(p.device for p in params if not p.is_cpu)
        raise ArchlabError(f"generate.backend=cpu-blocked: the model is on {dev}; the blocked "
                           "matrix-vector path is for CPU (use auto or eager)")
    return name


# ---------------------------------------------------------------------------------------------
# The blocked product
# ---------------------------------------------------------------------------------------------


def _weight_blocks(weight: torch.Tensor) -> int:
    """Row blocks (one per thread) a contiguous weight is cut into; 0 when fewer than two."""
    blocks = min(torch.get_num_threads(), weight.shape[0])
    return blocks if blocks > 1 and weight.is_contiguous() else 0


def decode_blocks(x: torch.Tensor, weight: torch.Tensor) -> int:
    """How many row blocks :func:`blocked_linear` cuts ``weight`` into for ``x``; 0 means
    ``F.linear``: a CPU input of at most :data:`FEW_ROWS` rows, contiguous, of the weight's
    dtype, without autocast."""
    if not (x.is_cpu and x.is_contiguous() and x.dtype == weight.dtype) or torch.is_autocast_enabled("cpu"):
        return 0
    if not 0 < x.numel() <= FEW_ROWS * x.shape[-1]:
        return 0
    return _weight_blocks(weight)


def _blocked_views(weight: torch.Tensor, bias: torch.Tensor | None,
                   blocks: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(blocks, n, K) view of the first ``blocks * n`` weight rows, the matching (blocks, n, 1)
    bias view, and ``n``."""
    N, K = weight.shape
    n = N // blocks
    main = n * blocks
    w3 = (weight if main == N else weight[:main]).view(blocks, n, K)
    b3 = None if bias is None else (bias if main == N else bias[:main]).view(blocks, n, 1)
    return w3, b3, n


def _blocked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             blocks: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as one bmm over ``blocks`` row blocks of the weight;
    x must be contiguous."""
    N, K = weight.shape
    w3, b3, n = _blocked_views(weight, bias, blocks)
    main = n * blocks
    M = x.numel() // K
    xb = x.as_strided((blocks, K, M), (0, 1, K))  # every block sees all M rows, no copy
    # (blocks, n, K) @ (blocks, K, M) -> (blocks, n, M): one matrix-vector product per thread
    out = torch.bmm(w3, xb) if b3 is None else torch.baddbmm(b3, w3, xb)
    if M == 1 and main == N:
        return out.view(*x.shape[:-1], N)
    out = out.view(main, M).t()  # (M, main)
    if main < N:  # the last N % blocks rows
        rest = F.linear(x.view(M, K), weight[main:], None if bias is None else bias[main:])
        out = torch.cat([out, rest], dim=1)
    return out.reshape(*x.shape[:-1], N)


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (x: (..., K), weight: (N, K) -> (..., N)), through row blocks of the weight
    where :func:`decode_blocks` says they apply."""
    blocks = decode_blocks(x, weight)
    if not blocks:
        return F.linear(x, weight, bias)
    return _blocked(x, weight, bias, blocks)


def _product(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> F.linear(x, weight, bias)`` for a decoding call, with the blocked views made once.

    The one-row case (a batch-1 step: most of decoding's time) goes straight to one bmm over
    views kept for the call: deciding per token whether the blocked path applies, and making
    the views, cost a few microseconds per matrix, about 0.1 ms of a 1.7 ms batch-1 step of the
    bench model. Other row counts go through :func:`blocked_linear`."""
    N, K = weight.shape
    blocks = _weight_blocks(weight) if weight.is_cpu else 0
    if not blocks or N % blocks:  # with a remainder block: the general path
        return lambda x: blocked_linear(x, weight, bias)
    w3, b3, _ = _blocked_views(weight, bias, blocks)
    dtype = weight.dtype

    def product(x: torch.Tensor) -> torch.Tensor:
        if x.numel() == K and x.dtype == dtype and x.is_contiguous() and not torch.is_autocast_enabled("cpu"):
            xb = x.as_strided((blocks, K, 1), (0, 1, K))  # (blocks, n, K) @ (blocks, K, 1)
            out = torch.bmm(w3, xb) if b3 is None else torch.baddbmm(b3, w3, xb)
            return out.view(*x.shape[:-1], N)  # (ints, not a torch.Size: a faster view call)
        return blocked_linear(x, weight, bias)

    return product


# ---------------------------------------------------------------------------------------------
# Applying it to a model for the length of a call
# ---------------------------------------------------------------------------------------------


class _ThreadState(threading.local):
    depth = 0  # cpu-blocked calls this thread is inside


_THREAD = _ThreadState()
_LOCK = threading.Lock()
# id(model) -> [model, number of calls using it, [(object, attribute name), ...] set on it].
# The entry holds the model, so its id cannot be reused while the entry exists.
_APPLIED: dict[int, list[Any]] = {}


def blocked_active() -> bool:
    """Whether the calling thread is inside a ``cpu-blocked`` decoding call."""
    return _THREAD.depth > 0


def _linear_forward(module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    product = _product(module.weight, module.bias)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if _THREAD.depth:
            return product(x)
        return F.linear(x, module.weight, module.bias)  # another thread: nn.Linear's own forward

    return forward


def _lm_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    plain = type(model).lm_logits.__get__(model)
    product = _product(*model.lm_head_weight())

    def lm_logits(hidden: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        if _THREAD.depth:
            return product(model.lm_head_input(hidden))
        return plain(hidden)

    return lm_logits


def _expert_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return blocked_linear(x, w, b) if _THREAD.depth else F.linear(x, w, b)


def _apply(model: nn.Module) -> list[tuple[Any, str]]:
    """Set the blocked forwards on the model; what was set, to be removed on exit."""
    applied = []
    for module in model.modules():
        # plain nn.Linear only (a subclass's own forward is left alone), 2-D CPU weights
        if type(module).forward is nn.Linear.forward and "forward" not in vars(module):
            if module.weight.dim() == 2 and module.weight.is_cpu:
                module.forward = _linear_forward(module)
                applied.append((module, "forward"))
        # mixture-of-experts layers (model.moe.MoE): their per-expert products, on the chosen
        # experts' weight slices only (views made per call: the slices are temporaries)
        if hasattr(type(module), "expert_linear") and "expert_linear" not in vars(module):
            module.expert_linear = _expert_linear
            applied.append((module, "expert_linear"))
    if hasattr(type(model), "lm_head_weight") and "lm_logits" not in vars(model):
        model.lm_logits = _lm_logits(model)
        applied.append((model, "lm_logits"))
    return applied


@contextmanager
def cpu_blocked(model: nn.Module) -> Iterator[None]:
    """Within this context the calling thread's decoding products of ``model`` take the
    blocked path (see the module docstring); on exit the model is as it was."""
    key = id(model)
    with _LOCK:
        entry = _APPLIED.get(key)
        if entry is None:
            entry = _APPLIED[key] = [model, 0, _apply(model)]
        entry[1] += 1
    _THREAD.depth += 1
    try:
        yield
    finally:
        _THREAD.depth -= 1
        with _LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                for obj, name in entry[2]:
                    # the instance attribute shadowing the class's method
                    object.__delattr__(obj, name)
                del _APPLIED[key]


# ---------------------------------------------------------------------------------------------
# The compiled step
# ---------------------------------------------------------------------------------------------
_COMPILED: dict[str, Any] = {}


def _static_step(model: nn.Module, cache: Any, tokens: torch.Tensor, positions: torch.Tensor,
                 encoder_mask: torch.Tensor | None) -> torch.Tensor:
    """One decoding step over a StaticKVCache: (N, 1) tokens at (N, 1) positions -> (N, V)
    float logits. Every call has the same shapes, so one compiled graph serves every step."""
    hidden = model.decode(tokens, None, encoder_mask=encoder_mask, position_ids=positions, cache=cache)
    return model.lm_logits(hidden[:, -1]).float()


def compiled_step(device: torch.device) -> Any:
    """``torch.compile`` of :func:`_static_step`, made once per process: CUDA graphs on a GPU
    (``mode="reduce-overhead"``: the step replays as one graph launch), the default
    (inductor) elsewhere. ``dynamic=False``: the shapes never change within a call."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_static_step, mode=mode, dynamic=False)
    return _COMPILED[mode]


@contextmanager
def decoding_backend(model: nn.Module, name: str) -> Iterator[str]:
    """Run ``model``'s decoding with backend ``name`` inside the context; yields the resolved
    name (``eager`` or ``cpu-blocked``)."""
    resolved = resolve_backend(model, name)
    if resolved == "cpu-blocked":
        with cpu_blocked(model):
            yield resolved
    else:
        yield resolved
