"""Checkpoints that never lose a run.

A checkpoint is a directory ``checkpoints/step-000120/``::

    model.safetensors      weights
    optimizer.safetensors  optimizer state tensors (exp_avg, exp_avg_sq, step, ...)
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, data position, optimizer hyper-parameters, Python and
                           NumPy RNG states, counters: everything that is not a tensor
    MANIFEST.json          SHA-256 and size of every file above

This module knows a checkpoint directory's own files; which run a checkpoint belongs to, and
where in it checkpoints live, is ``archlab.run``'s (``RunDir``), which imports this module and
not the reverse.

Nothing is pickled: tensors go through safetensors and everything else through JSON, so
loading a checkpoint cannot execute code. A checkpoint is written into a temporary directory,
fsync'ed, checked against its manifest, and only then renamed into place; a crash mid-save
leaves the previous checkpoints untouched. Loading verifies the manifest; a truncated or
altered checkpoint is reported (naming the file) and the next older valid one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archlab.errors import ArchlabError
from archlab.weights import load_weights

MANIFEST = "MANIFEST.json"
CHECKPOINT_WEIGHTS = "model.safetensors"  # a checkpoint's files; where checkpoints live is archlab.run's
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# optimizer state <-> (tensors, json)
# ---------------------------------------------------------------------------------------------
def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, kv in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(kv)
    return {"state": state, "param_groups": meta["param_groups"]}


def _numpy_state(gen: np.random.Generator) -> dict[str, Any]:
    return gen.bit_generator.state  # plain dict of ints/str: JSON-safe


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What, besides weights and optimizer, a resumed run needs to continue bit-exactly."""

    step: int  # optimizer steps done
    epoch: int  # data position: epoch ...
    batch_index: int  # ... and micro-batch index within it
    tokens_seen: int = 0
    examples_truncated: int = 0
    best_metric: float | None = None
    evals_without_improvement: int = 0
    train_time_s: float = 0.0
    teacher_flops: int = 0  # forward FLOPs of a distillation teacher so far
    examples_seen: int = 0  # training examples read (every micro-batch of every step)
    data_crc: int = 0  # running CRC-32 of those examples' token ids, in order (data_digest)


def save_checkpoint(
    ckpt_dir: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    data_rng: np.random.Generator,
    keep_last: int = 3,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``ckpt_dir/step-N`` atomically; prune to the newest ``keep_last``."""
    from safetensors.torch import save_file, save_model

    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_model(model, str(tmp / CHECKPOINT_WEIGHTS))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        py_state = random.getstate()
        doc = {
            "format": 1,
            "train_state": state.__dict__,
            "optimizer": opt_meta,
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy_global": _np_global_state(),
                "data": _numpy_state(data_rng),
            },
            "extra": extra or {},
        }
        (tmp / "state.json").write_text(json.dumps(doc, default=_json_default))
        manifest = {}
        for f in sorted(tmp.iterdir()):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            manifest[f.name] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        with open(tmp / MANIFEST, "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. after a resume): replace atomically
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, keep_last)
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot store {type(o).__name__} in a checkpoint")


def _np_global_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory, newest first (validity not checked)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for _, p in list_checkpoints(root)[max(keep_last, 1):]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a crash during an earlier save (one writer per run)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# verify / load
# ---------------------------------------------------------------------------------------------
def verify_checkpoint(path: str | Path) -> None:
    """Raise ArchlabError naming the first file that is missing, truncated or altered."""
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.exists():
        raise ArchlabError(f"{mpath}: missing (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArchlabError(f"{mpath}: corrupt manifest") from None
    for name, info in manifest.items():
        f = p / name
        if not f.exists():
            raise ArchlabError(f"{f}: missing from checkpoint")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise ArchlabError(f"{f}: truncated or altered ({size} bytes, manifest says {info['bytes']})")
        if _sha256(f) != info["sha256"]:
            raise ArchlabError(f"{f}: content does not match its SHA-256 in {MANIFEST} (altered)")


def latest_valid_checkpoint(root: str | Path, *, report: bool = True) -> Path | None:
    """Newest checkpoint that passes verification; invalid ones are reported on stderr."""
    for _, p in list_checkpoints(root):
        try:
            verify_checkpoint(p)
            return p
        except ArchlabError as e:
            if report:
                print(f"archlab: skipping invalid checkpoint: {e}", file=sys.stderr)
    return None


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    extra: dict[str, Any]


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_rng: np.random.Generator,
) -> LoadedCheckpoint:
    """Restore model, optimizer and all RNG states in place (after verifying). The learning
    rate is a pure function of the step (archlab.train.trainer.lr_at), so there is no
    scheduler state to restore."""
    from safetensors.torch import load_file

    p = Path(path)
    verify_checkpoint(p)
    load_weights(model, p / CHECKPOINT_WEIGHTS)
    doc = json.loads((p / "state.json").read_text())
    device = next(model.parameters()).device
    opt_tensors = load_file(str(p / "optimizer.safetensors"), device=str(device))
    sd = _unflatten_optimizer(opt_tensors, doc["optimizer"])
    optimizer.load_state_dict(sd)
    rng = load_file(str(p / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    r = doc["rng"]
    py = r["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = r["numpy_global"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    data_rng.bit_generator.state = r["data"]
    state = TrainState(**doc["train_state"])
    return LoadedCheckpoint(p, state, doc.get("extra", {}))
