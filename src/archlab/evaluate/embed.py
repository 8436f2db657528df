"""``archlab embed CHECKPOINT --input texts.txt --out emb.npy``: sentence embeddings of a file
of texts (one per line), as the checkpoint's ``contrastive`` objective pools them (a run
directory's pooling; a model or Hugging Face checkpoint directory: the family's default,
mean pooling for an encoder), L2-normalised, one row per input line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from archlab.errors import ArchlabError

FORMATS = (".npy", ".safetensors")


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory, archlab model directory, or Hugging Face checkpoint directory")
    p.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text file, one text per line")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="embeddings (N, d_model) float32: .npy, or .safetensors (tensor 'embeddings')")
    p.add_argument("--which", default="auto", choices=("auto", "best", "final", "latest"),
                   help="which weights of a run directory (default: best, else final)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens kept of each text (default: the run's train.max_len - 2, else the model's)")
    p.add_argument("--no-progress", action="store_true")


def read_lines(path: str | Path) -> list[str]:
    """Every line of a UTF-8 text file (row i of the output is line i; empty lines included)."""
    from archlab.data.datasets import read_text

    p = Path(path)
    return read_text(p, f"--input {p}", dir_hint="give a text file, one text per line",
                       empty="no texts (the file is empty)").splitlines()


def load_embedder(checkpoint: str | Path, which: str = "auto") -> tuple[Any, Any, dict[str, Any], int | None]:
    """(model, tokenizer, objective options, run context) of a run, model or HF directory."""
    p = Path(checkpoint)
    if p.is_dir() and (p / "config.json").exists() and not (p / "model.yaml").exists() \
            and not (p / "config.yaml").exists():
        from archlab.convert import from_hf

        imp = from_hf(p)
        if imp.tokenizer is None:
            raise ArchlabError(f"{p}: no tokenizer.json in the checkpoint")
        return imp.model.eval(), imp.tokenizer, {}, None
    from archlab.run import load_run

    run = load_run(p, which)
    if run.tokenizer is None:
        raise ArchlabError(f"{run.model_path}: no tokenizer saved with the model")
    if run.config is None:
        return run.model, run.tokenizer, {}, None
    return run.model, run.tokenizer, dict(run.config.objective.options), run.config.train.max_len


def embed_file(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, which: str = "auto",
               batch_size: int = 64, max_tokens: int | None = None, progress: bool | None = None) -> tuple[int, int]:
    """Embed every line of ``input_path`` and write ``out``; returns (rows, dimension)."""
    import numpy as np

    from archlab.evaluate.retrieval import embed_ids, embedding_objective
    from archlab.evaluate.runner import _bar

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ArchlabError(f"--out {out}: unknown format {out.suffix or '(no suffix)'!r}; use .npy or .safetensors")
    if batch_size < 1:
        raise ArchlabError(f"--batch-size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ArchlabError(f"--max-tokens must be >= 1, got {max_tokens}")
    lines = read_lines(input_path)
    model, tok, options, max_len = load_embedder(checkpoint, which)
    obj = embedding_objective(model, tok, options=options, max_len=max_len)
    budget = max_tokens or obj.max_len - 2
    ids = tok.encode_batch(lines)
    bar = _bar(len(ids), "embed", progress)
    try:
        emb = embed_ids(model, obj, ids, budget=budget, batch_size=batch_size, progress=bar.update)
    finally:
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, emb, allow_pickle=False)
    else:
        from safetensors.numpy import save_file

        save_file({"embeddings": emb}, str(out), metadata={"pooling": obj.pooling, "normalized": "l2",
                                                           "checkpoint": str(checkpoint)})
    return emb.shape[0], emb.shape[1]


def run(args: argparse.Namespace) -> int:
    """Sentence embeddings of a text file, one per line (L2-normalised, the checkpoint's pooling).

    Writes an (N, d_model) float32 array to .npy or .safetensors (tensor 'embeddings')."""
    n, d = embed_file(args.checkpoint, args.input, args.out, which=args.which, batch_size=args.batch_size,
                      max_tokens=args.max_tokens, progress=False if args.no_progress else None)
    print(f"archlab embed: wrote {n} embeddings of dimension {d} to {args.out}", file=sys.stderr)
    return 0


COMMANDS = [("embed", _add, run)]
