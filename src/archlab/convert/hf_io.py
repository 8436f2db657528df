"""Reading and writing Hugging Face checkpoint directories, without importing ``transformers``.

A checkpoint directory holds ``config.json`` and the weights in one of the layouts
``save_pretrained`` writes: ``model.safetensors``, sharded safetensors with
``model.safetensors.index.json``, or (legacy) ``pytorch_model.bin`` / its sharded index. Pickled
``.bin`` files are only read with ``torch.load(..., weights_only=True)``, which refuses arbitrary
objects. Tensors are read lazily, one at a time, so converting a large model never holds two
copies of every weight.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from archlab.errors import ArchlabError

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PT_BIN = "pytorch_model.bin"
PT_BIN_INDEX = "pytorch_model.bin.index.json"

# Files of the Hugging Face tokenizers that travel with a checkpoint (fast and slow formats).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchlabError(f"{path}: {what} missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchlabError(f"{path}: not valid JSON ({type(e).__name__})") from None
    except OSError as e:
        raise ArchlabError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ArchlabError(f"{path}: expected a JSON object")
    return data


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of an HF checkpoint directory as a dict."""
    p = Path(path)
    if not p.is_dir():
        raise ArchlabError(f"{p}: no such Hugging Face checkpoint directory")
    return read_json(p / CONFIG, "config.json (not a Hugging Face checkpoint directory)")


class HFCheckpoint:
    """The config and (lazily read) tensors of a local Hugging Face checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = read_hf_config(self.path)
        self._where: dict[str, Path] = {}  # tensor name -> file
        self._open: dict[Path, Any] = {}  # open safetensors handles / loaded .bin dicts
        p = self.path
        if (p / SAFETENSORS).exists():
            self._index_single(p / SAFETENSORS)
        elif (p / SAFETENSORS_INDEX).exists():
            self._index_sharded(p / SAFETENSORS_INDEX)
        elif (p / PT_BIN).exists():
            self._index_single(p / PT_BIN)
        elif (p / PT_BIN_INDEX).exists():
            self._index_sharded(p / PT_BIN_INDEX)
        else:
            raise ArchlabError(f"{p}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                               f"{PT_BIN} or {PT_BIN_INDEX})")

    # ---- indexing ---------------------------------------------------------------------------
    def _index_single(self, file: Path) -> None:
        for k in self._handle(file).keys():
            self._where[k] = file

    def _index_sharded(self, index: Path) -> None:
        weight_map = read_json(index, "weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ArchlabError(f"{index}: no weight_map")
        for key, name in weight_map.items():
            file = (index.parent / str(name)).resolve()
            if file.parent != index.parent.resolve():
                raise ArchlabError(f"{index}: shard {name!r} lies outside the checkpoint directory")
            if not file.exists():
                raise ArchlabError(f"{index}: shard {name} (holding {key}) is missing")
            self._where[key] = file

    def _handle(self, file: Path) -> Any:
        h = self._open.get(file)
        if h is not None:
            return h
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                h = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as e:
                raise ArchlabError(f"{file}: not a readable safetensors file ({_first_line(e)})") from None
        else:
            try:  # weights_only: plain tensors only, never arbitrary pickled objects
                h = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                try:  # legacy (non-zip) files cannot be memory-mapped
                    h = torch.load(file, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise ArchlabError(f"{file}: cannot load with weights_only=True ({_first_line(e)})") from None
            except Exception as e:
                raise ArchlabError(f"{file}: cannot load with weights_only=True ({_first_line(e)})") from None
            if not isinstance(h, dict):
                raise ArchlabError(f"{file}: expected a dict of tensors")
            h = _DictHandle(h)
        self._open[file] = h
        return h

    # ---- access -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        file = self._where.get(key)
        if file is None:
            raise ArchlabError(f"{self.path}: tensor {key} missing from the checkpoint")
        t = self._handle(file).get_tensor(key)
        if not isinstance(t, torch.Tensor):
            raise ArchlabError(f"{file}: {key} is not a tensor")
        return t

    def tokenizer_files(self) -> list[Path]:
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]


class _DictHandle:
    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    def keys(self) -> Iterable[str]:
        return self.d.keys()

    def get_tensor(self, key: str) -> Any:
        return self.d[key]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]


def write_hf_dir(
    path: str | Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    generation_config: dict[str, Any] | None = None,
    tokenizer_files: Iterable[Path] = (),
    tokenizer_config: dict[str, Any] | None = None,
) -> Path:
    """Write an HF checkpoint directory atomically: config.json, model.safetensors (with the
    ``format: pt`` metadata transformers checks), optional generation_config.json and tokenizer
    files. An existing directory is replaced only once the new one is complete."""
    from safetensors.torch import save_file

    from archlab.run import _atomic_dir, _replace_dir

    final = Path(path)
    if final.exists() and not final.is_dir():
        raise ArchlabError(f"{final}: exists and is not a directory")
    tmp = _atomic_dir(final)
    try:
        # safetensors stores each tensor on its own: no shared storage, contiguous
        out = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(out, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if generation_config:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(generation_config, indent=2, sort_keys=True) + "\n")
        for f in tokenizer_files:
            shutil.copyfile(f, tmp / Path(f).name)
        if tokenizer_config is not None and not (tmp / "tokenizer_config.json").exists():
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
