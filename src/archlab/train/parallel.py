"""Data parallelism on PyTorch's own engine: DDP and FSDP2 under torchrun.

This is the one place that imports ``torch.distributed`` for training (torchtitan's
``parallelize`` step: the model never knows it is wrapped). What it guarantees, and how:

* **The same losses at any world size.** An optimizer step reads ``train.global_batch`` (each
  rank accumulating ``global_batch / world``; without it ``grad_accum x world``) micro-batches
  of the one deterministic global order; every rank *builds* all of them (the
  objectives' masking draws from one shared NumPy generator, so every rank holds the same
  batches and token counts) and *runs* its share, micro-batches ``rank, rank + world, ...``.
  Each micro-batch's loss is weighted by its share of the step's global target count; DDP and
  FSDP2 average gradients over ranks, so the local loss is scaled by ``world`` to make the
  all-reduced gradient the global token-weighted mean, the same as one process accumulating
  every micro-batch (fp32 to rounding). Gradient sync runs on the last local micro-batch only
  (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync``).
* **Randomness keyed by micro-batch, not by rank**: dropout and router jitter draw from
  torch's generator reseeded before every micro-batch from (seed, step, index of the
  micro-batch in the step's global batch), in one process as on N ranks. A micro-batch then
  gets the same dropout masks whichever rank runs it, so runs match across world sizes with
  dropout too (to fp32 rounding), and a resumed run draws what it would have drawn.
* **Parameters a step may leave unused**: DDP looks for them (``find_unused_parameters``)
  only for models and objectives that can leave some without gradients
  (:func:`may_leave_parameters_unused`); a parameter no rank used keeps ``grad`` None, so the
  optimizer skips it as one process does.
* **Checkpoints that do not depend on the world size**: rank 0 writes full (gathered) weights
  and optimizer state through the ordinary safetensors + SHA-256 manifest checkpoint
  (:mod:`archlab.train.checkpoint`; for FSDP2 through a host replica of the model that the
  full state dict is loaded into), so any world size, or a plain single process, resumes it.
  ``torch.distributed.checkpoint`` is not used: its ``.metadata`` is a pickle.
* MoE sigmoid-bias routers: the expert load behind each bias update is summed over ranks, so
  every rank moves its biases identically.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from archlab.errors import ConfigError


@dataclass
class DistEnv:
    """Where this process sits: rank, world size, local rank, and the wrapping used."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    kind: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active and self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_distributed(parallel: str, device: str) -> DistEnv:
    """Join the process group torchrun set up (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
    ``MASTER_ADDR``), or make a one-process group when ``parallel`` is set without torchrun.
    Backend nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel == "none":
        if world > 1:
            raise ConfigError(f"train.parallel=none, but torchrun started {world} processes; set "
                              "train.parallel=ddp or fsdp")
        return DistEnv()
    backend = "nccl" if _wants_cuda(device) else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend)
        else:  # a one-process group: the same code path as a launched run
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                                    world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if backend == "nccl":
        torch.cuda.set_device(local)
    return DistEnv(rank=rank, world_size=world, local_rank=local, kind=parallel)


def device_for(env: DistEnv, device: str) -> torch.device | None:
    """One device per ``LOCAL_RANK`` on CUDA; None: the trainer's own choice (CPU, one process)."""
    if env.active and _wants_cuda(device):
        return torch.device("cuda", env.local_rank)
    return None


def shutdown_if_initialized() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer/Mamba blocks of every stack: FSDP2's units (one all-gather each)."""
    out: list[nn.Module] = []
    for stack in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
        if stack is not None:
            out += list(stack.blocks)
    return out


def parallelize(model: nn.Module, env: DistEnv, device: torch.device, *, compile_blocks: bool = False,
                find_unused: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``device``) for ``env.kind``; ``compile_blocks``: torch.compile
    each block first (as torchtitan does, so FSDP2's hooks stay outside the compiled graphs)."""
    if compile_blocks:
        for b in blocks_of(model):
            b.compile()
    if env.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers are not broadcast: constant tables, and MoE biases kept equal by all-reduced loads
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                   find_unused_parameters=find_unused, broadcast_buffers=False)
    if env.kind == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (env.world_size,))
        # blocks that share weights with another stack's (share_encoder_decoder) stay in the
        # root's group: a parameter may belong to one FSDP unit only
        if not getattr(getattr(model, "cfg", None), "share_encoder_decoder", False):
            for b in blocks_of(model):
                fully_shard(b, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model as .module


@contextlib.contextmanager
def grad_sync(model: nn.Module, env: DistEnv, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last local micro-batch."""
    if env.kind == "ddp" and not sync:
        with model.no_sync():  # type: ignore[operator]
            yield
        return
    if env.kind == "fsdp":
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
    yield


def micro_seed(seed: int, step: int, micro: int) -> int:
    """torch's generator seed for micro-batch ``micro`` (its index in the step's global batch,
    0 .. grad_accum * world - 1) of optimizer step ``step`` (dropout, router jitter). No rank
    in the key: the micro-batch draws the same masks on any rank and at any world size."""
    import numpy as np

    hi, lo = np.random.SeedSequence([seed, step, micro]).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def may_leave_parameters_unused(model: nn.Module, objective_name: str) -> bool:
    """Whether a training step can leave parameters without gradients (DDP must then look for
    them, ``find_unused_parameters``, or it stops at the next step): classification,
    contrastive and token classification do not use the LM head; a prefix-LM's bidirectional Mamba layers run their backward scan only over
    a prefix, so a batch without one (causal-LM on a prefix-LM) leaves ``ssm_bwd`` unused.
    Other models use every parameter in every step (MoE experts are stacked tensors), and
    DDP's search for unused ones (a walk over the autograd graph each step) is not paid."""
    # contrastive and token-classification: no LM head either (token classification of tags; its
    # probe answers skip the tag head), and an encoder-decoder's encoder leaves its decoder unused
    if objective_name in ("classification", "contrastive", "token-classification"):
        return True
    decoder = getattr(model, "decoder", None)
    return any(getattr(b, "ssm_bwd", None) is not None for b in getattr(decoder, "blocks", ()))


def grad_norm_value(norm: torch.Tensor) -> float:
    """The global gradient norm as a float (FSDP2's is a DTensor over the mesh)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def reduce_moe_load(model: nn.Module, env: DistEnv) -> None:
    """Sum each sigmoid-bias router's pending expert load over ranks before its bias moves."""
    if not (env.active and env.world_size > 1):
        return
    from archlab.model.moe import moe_layers

    for _, m in moe_layers(unwrap(model)):
        if m.expert_bias is not None:
            dist.all_reduce(m.pending_load, op=dist.ReduceOp.SUM)


# ---- full state for checkpoints and model directories -------------------------------------
class HostReplica:
    """FSDP2 only: an unsharded copy of the model (and an optimizer over it) on the host, which
    the gathered full state is loaded into, so that the ordinary single-process checkpoint and
    model-directory writers see an ordinary module."""

    def __init__(self, model: nn.Module, make_opt: Any) -> None:
        self.model = copy.deepcopy(model).to("cpu")
        self.optimizer = make_opt(self.model, torch.device("cpu"))

    def pull(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, env: DistEnv) -> None:
        """Gather the full weights (and optimizer state) from every rank into the replica.
        Collective: every rank calls it; only rank 0 receives the tensors (cpu_offload)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
        if env.is_main:
            self.model.load_state_dict(msd)
            if osd is not None:
                set_optimizer_state_dict(self.model, self.optimizer, osd, options=_optim_load_options())

    def push(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the replica's full state (read from a checkpoint on every rank) into the
        sharded model and optimizer."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, self.model.state_dict(), options=opts)
        osd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        set_optimizer_state_dict(model, optimizer, osd, options=_optim_load_options())


def _optim_load_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # strict=False for the optimizer only: a parameter no step has used yet (a prefix-LM's
    # backward Mamba scans under causal-LM, :func:`may_leave_parameters_unused`) has no AdamW
    # state, as in one process; the model's weights still load strictly
    return StateDictOptions(full_state_dict=True, strict=False)


def check_supported(env: DistEnv, *, decode_metrics: bool) -> None:
    if env.kind == "fsdp" and decode_metrics:
        raise ConfigError("train.parallel=fsdp: periodic decoding (eval.decode_examples > 0) needs the full "
                          "model on every rank; set eval.decode_examples=0 (score the final model with "
                          "archlab evaluate) or use train.parallel=ddp")


def rank_died_message(error: Any) -> str:
    """One line for torch elastic's ChildFailedError: the first rank that failed, and how."""
    rank, f = error.get_first_failure()
    code = getattr(f, "exitcode", None)
    how = f"exit code {code}"
    if isinstance(code, int) and code < 0:
        import signal

        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    return f"rank {rank} died ({how})"


__all__ = ["DistEnv", "HostReplica", "blocks_of", "check_supported", "device_for", "grad_norm_value", "grad_sync",
           "init_distributed", "may_leave_parameters_unused", "micro_seed", "parallelize", "rank_died_message",
           "reduce_moe_load", "shutdown_if_initialized", "unwrap"]
