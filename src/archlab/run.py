"""Model directories and run directories on disk.

A **model directory** holds one network and what is needed to use it::

    model.safetensors     weights (safetensors only; shared tensors stored once)
    model.yaml            the ModelConfig
    tokenizer/            archlab tokenizer (tokenizer.json + archlab_tokenizer.json), optional
    archlab.json          format version, tokenizer hash/size, provenance (e.g. the HF family)

A **run directory** (written by ``archlab train``) holds::

    config.yaml           the resolved run config
    run.json              the tokenizer's hash and size (checked on resume)
    tokenizer/            the tokenizer the run trained with
    metrics.jsonl         one JSON object per logged step / evaluation
    checkpoints/step-N/   resumable training state (see archlab.train.checkpoint)
    best/                 model directory of the best validation checkpoint (when evaluated)
    model/                model directory of the final weights

This module is the one place that knows these layouts (:class:`RunDir`); the trainer and the
checkpoint code are given the paths. ``load_run`` accepts either kind of directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from archlab.config import ModelConfig, from_dict, to_dict
from archlab.errors import ArchlabError
from archlab.weights import load_weights  # (also imported from here)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.yaml"
META = "archlab.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory (see the module docstring)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_meta(self) -> Path:
        return self.root / "run.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def final(self) -> Path:
        return self.root / "model"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run directory a checkpoint (``RUN/checkpoints/step-N``) belongs to."""
        return cls(Path(checkpoint).parent.parent)


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` into place as ``final``; an existing ``final`` is only removed after the new
    one is complete, so a crash leaves one of the two intact."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_model_dir(
    path: str | Path,
    model: Any,
    tokenizer: Any | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically (temporary directory, then rename)."""
    from safetensors.torch import save_model

    final = Path(path)
    tmp = _atomic_dir(final)
    try:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / MODEL_CONFIG).write_text(yaml.safe_dump(to_dict(model.cfg), sort_keys=False))
        meta: dict[str, Any] = {"format": FORMAT_VERSION}
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
            meta["tokenizer"] = {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}
        meta.update(extra or {})
        (tmp / META).write_text(json.dumps(meta, indent=2))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_model_config(path: str | Path) -> ModelConfig:
    p = Path(path) / MODEL_CONFIG
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchlabError(f"{p}: missing (not an archlab model directory)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ArchlabError(f"{p}: unreadable model config ({type(e).__name__})") from None
    return from_dict(ModelConfig, data or {}, prefix="model")


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / META
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArchlabError(f"{p}: not valid JSON") from None


def load_tokenizer(path: str | Path, meta: dict[str, Any] | None = None) -> Any | None:
    tdir = Path(path) / TOKENIZER_DIR
    if not tdir.exists():
        return None
    from archlab.data import Tokenizer

    tok = Tokenizer.load(tdir)
    want = (meta or {}).get("tokenizer")
    if want:
        tok.check_matches(want["sha256"], want["vocab_size"], str(tdir))
    return tok


def load_model_dir(path: str | Path, *, device: str | None = None) -> tuple[Any, Any | None, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, meta) from a model directory."""
    from archlab.model import build_model

    p = Path(path)
    cfg = read_model_config(p)
    meta = read_meta(p)
    model = build_model(cfg)
    load_weights(model, p / WEIGHTS)
    if device:
        model.to(device)
    return model.eval(), load_tokenizer(p, meta), meta


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any | None
    config: Any | None  # RunConfig of a training run, None for a bare model directory
    path: Path  # the run (or model) directory
    model_path: Path  # the model directory the weights came from
    meta: dict[str, Any]


def load_run(path: str | Path, which: str = "auto", *, device: str | None = None) -> LoadedRun:
    """Load a model directory, or a run directory's ``best`` / ``final`` / ``latest`` weights.

    ``auto``: a model directory itself, else ``best/`` if the run evaluated, else ``model/``,
    else the latest valid checkpoint.
    """
    p = Path(path)
    if not p.is_dir():
        raise ArchlabError(f"{p}: no such run or model directory")
    if (p / MODEL_CONFIG).exists():
        model, tok, meta = load_model_dir(p, device=device)
        return LoadedRun(model, tok, None, p, p, meta)
    run = RunDir(p)
    if not run.config.exists():
        raise ArchlabError(f"{p}: neither a run directory ({run.config.name}) nor a model directory "
                           f"({MODEL_CONFIG})")
    from archlab.train.config import load_run_config

    cfg = load_run_config(run.config)
    choices = {"best": run.best, "final": run.final}
    if which == "auto":
        order = [choices["best"], choices["final"]]
    elif which in choices:
        order = [choices[which]]
    elif which == "latest":
        order = []
    else:
        raise ArchlabError(f"which={which!r}: choose auto, best, final or latest")
    for d in order:
        if (d / MODEL_CONFIG).exists():
            model, tok, meta = load_model_dir(d, device=device)
            return LoadedRun(model, tok, cfg, p, d, meta)
    from archlab.train.checkpoint import latest_valid_checkpoint

    ck = latest_valid_checkpoint(run.checkpoints)
    if ck is None:
        raise ArchlabError(f"{p}: no model yet (no best/, model/ or valid checkpoint)")
    model = load_checkpoint_model(ck, cfg.model)
    if device:
        model.to(device)
    tok = load_tokenizer(p)
    return LoadedRun(model.eval(), tok, cfg, p, ck, {})


def load_checkpoint_model(checkpoint: str | Path, model_cfg: ModelConfig | None = None) -> Any:
    """The model of a training checkpoint; its config is ``model_cfg``, else the model section
    of the config of the run the checkpoint belongs to."""
    from archlab.model import build_model
    from archlab.train.checkpoint import CHECKPOINT_WEIGHTS

    if model_cfg is None:
        from archlab.train.config import load_run_config

        model_cfg = load_run_config(RunDir.of_checkpoint(checkpoint).config).model
    model = build_model(model_cfg)
    load_weights(model, Path(checkpoint) / CHECKPOINT_WEIGHTS)
    return model
