"""Import Hugging Face checkpoints into archlab and export archlab models back.

Library functions (no files): :func:`hf_to_archlab` (HF config dict + tensors -> ModelConfig +
state dict) and :func:`archlab_to_hf` (model -> HF config dict + tensors). On disk:
:func:`from_hf` (an HF checkpoint directory -> :class:`HFImport` with the model and tokenizer),
:func:`to_hf` (a model, an import, or an archlab model/run directory -> an HF checkpoint
directory), and the two helpers the trainer uses to start from HF weights,
:func:`hf_model_config` and :func:`load_hf_weights`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from archlab.config import ModelConfig
from archlab.convert.families import (
    DEFAULT_ARCHITECTURE,
    FAMILIES,
    MODEL_TYPES,
    Family,
    Rule,
)
from archlab.convert.hf_io import (
    GENERATION_CONFIG,
    TOKENIZER_FILES,
    HFCheckpoint,
    read_json,
    write_hf_dir,
)
from archlab.errors import ArchlabError, ConfigError

# HF config keys that describe the file, not the model: never carried into an export
_VOLATILE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
             "auto_map", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset",
             "quantization_config", "custom_pipelines")


# ---------------------------------------------------------------------------------------------
# Tensor views
# ---------------------------------------------------------------------------------------------


class _View:
    """Uniform access to an HF checkpoint's tensors (a directory or an in-memory mapping)."""

    def __init__(self, tensors: HFCheckpoint | Mapping[str, torch.Tensor], family: Family, where: str) -> None:
        self.src = tensors
        self.where = where
        keys = tensors.keys()
        self._keys = list(keys)
        self._set = set(self._keys)
        p = family.prefix
        self.prefix = p if p and any(k.startswith(p) for k in self._keys) else ""

    def keys(self) -> list[str]:
        return self._keys

    def has(self, key: str) -> bool:
        return key in self._set

    def get(self, key: str) -> torch.Tensor:
        if key not in self._set:
            raise ArchlabError(f"{self.where}: tensor {key} missing from the checkpoint")
        return self.src.get(key) if isinstance(self.src, HFCheckpoint) else self.src[key]

    def differs(self, a: str, b: str) -> bool:
        if not (self.has(a) and self.has(b)):
            return False
        x, y = self.get(a), self.get(b)
        return x.shape != y.shape or not torch.equal(x, y)

    def nonzero(self, key: str) -> bool:
        return self.has(key) and bool(self.get(key).any())


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _iter(items: list[Any], desc: str, progress: bool | None) -> Any:
    if not _progress(progress) or len(items) < 50:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", leave=False)


# ---------------------------------------------------------------------------------------------
# Family detection
# ---------------------------------------------------------------------------------------------


def detect_family(hf_config: Mapping[str, Any], where: str = "config.json") -> tuple[Family, str]:
    """(family, HF architecture class) of an HF config; unsupported ones raise ArchlabError."""
    mt = hf_config.get("model_type")
    if mt not in MODEL_TYPES:
        raise ArchlabError(f"{where}: model_type {mt!r} is not supported; archlab converts "
                           f"{', '.join(MODEL_TYPES)}")
    family = MODEL_TYPES[mt]
    archs = hf_config.get("architectures") or [DEFAULT_ARCHITECTURE[mt]]
    arch = str(archs[0])
    if arch not in family.architectures:
        raise ArchlabError(f"{where}: architecture {arch} is not supported; for {mt} archlab converts "
                           f"{', '.join(family.architectures)}")
    return family, arch


def _special_ids(tok_json: Path) -> dict[str, int]:
    """bos/eos ids from a tokenizer.json, for configs that leave them unset (BERT: [CLS] and
    [SEP] open and close every input)."""
    try:
        from tokenizers import Tokenizer as HFTok

        tok = HFTok.from_file(str(tok_json))
    except Exception:  # an unreadable tokenizer only costs the defaults
        return {}
    out: dict[str, int] = {}
    for key, names in (("bos_token_id", ("[CLS]", "<s>")), ("eos_token_id", ("[SEP]", "</s>"))):
        for name in names:
            i = tok.token_to_id(name)
            if i is not None:
                out[key] = i
                break
    return out


def _model_config(hf: Mapping[str, Any], view: _View, family: Family, arch: str,
                  overrides: Mapping[str, Any], tok_json: Path | None = None) -> ModelConfig:
    kwargs = family.model_config(dict(hf), arch, view)
    if tok_json is not None and tok_json.is_file() and not {"bos_token_id", "eos_token_id"} <= kwargs.keys():
        for k, v in _special_ids(tok_json).items():
            if v < kwargs.get("vocab_size", 0):
                kwargs.setdefault(k, v)
    unknown = [k for k in overrides if k not in ModelConfig.__dataclass_fields__]
    if unknown:
        raise ConfigError(f"unknown model key {unknown[0]}")
    kwargs.update(overrides)
    try:
        return ModelConfig(**kwargs)
    except ConfigError as e:
        raise ArchlabError(f"{view.where}: the {family.name} config gives an invalid archlab config: {e}") from None
    except TypeError as e:  # a null where a number is needed
        raise ArchlabError(f"{view.where}: {family.name} config has an invalid value ({e})") from None


# ---------------------------------------------------------------------------------------------
# HF -> archlab
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportedState:
    state: dict[str, torch.Tensor]  # archlab name -> tensor
    fresh: list[str]  # archlab parameters of heads the checkpoint lacks (keep their init)
    dropped: list[str]  # HF tensors of task heads the archlab model does not have


def _import_state(family: Family, cfg: ModelConfig, view: _View, *, strict: bool,
                  progress: bool | None = None) -> ImportedState:
    rules = family.rules(cfg, view.prefix)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    fresh: list[str] = []
    for rule in _iter(rules, "importing", progress):
        names = list(rule.theirs)
        missing = [n for n in names if not view.has(n)]
        if missing and rule.alt:
            found = [a for a in rule.alt if view.has(a)]
            if found:
                names, missing = [found[0]], []
        if missing:
            if rule.head is not None and not strict:
                fresh.append(rule.ours)
                continue
            raise ArchlabError(f"{view.where}: tensor {missing[0]} missing from the checkpoint "
                               f"(needed for archlab's {rule.ours})")
        state[rule.ours] = rule.to_ours([view.get(n) for n in names])
        used.update(names)
    for dup, src in family.aliases(cfg, view.prefix).items():
        if view.has(dup):
            if view.differs(dup, src):
                raise ArchlabError(f"{view.where}: {dup} differs from {src}; archlab ties them "
                                   "(untied weights of this kind are not supported)")
            used.add(dup)
    dropped: list[str] = []
    for k in view.keys():
        if k in used or family.ignored(k):
            continue
        if k.startswith(family.head_key_prefixes):
            dropped.append(k)
            continue
        raise ArchlabError(f"{view.where}: tensor {k} has no place in the archlab {family.name} model "
                           "(an unsupported variant of the architecture?)")
    return ImportedState(state, fresh, dropped)


def _check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor], rules: list[Rule], where: str) -> None:
    own = model.state_dict()
    by_ours = {r.ours: r for r in rules}
    for k, t in state.items():
        if k not in own:
            raise ArchlabError(f"{where}: archlab model has no parameter {k}")
        if tuple(t.shape) != tuple(own[k].shape):
            src = ", ".join(by_ours[k].theirs) if k in by_ours else k
            raise ArchlabError(f"{where}: {src} gives shape {tuple(t.shape)} but the archlab model "
                               f"expects {tuple(own[k].shape)} for {k}")


def _load_state(model: torch.nn.Module, imp: ImportedState, rules: list[Rule], where: str) -> None:
    _check_shapes(model, imp.state, rules, where)
    missing, unexpected = model.load_state_dict(imp.state, strict=False)
    missing = [m for m in missing if m not in imp.fresh]
    if missing or unexpected:
        what = f"no weights for {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ArchlabError(f"{where}: the checkpoint does not fill the archlab model ({what})")


def hf_to_archlab(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    **overrides: Any,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """HF ``config.json`` (as a dict) and state dict -> (archlab ModelConfig, archlab state dict).

    ``overrides`` are ModelConfig fields to change (e.g. ``dropout=0.0``); structural changes
    that no longer match the weights raise ArchlabError."""
    family, arch = detect_family(hf_config)
    view = _View(tensors, family, "state dict")
    cfg = _model_config(hf_config, view, family, arch, overrides)
    imp = _import_state(family, cfg, view, strict=True)
    return cfg, imp.state


def hf_model_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """The archlab ModelConfig of an HF checkpoint directory (``overrides`` applied, e.g.
    ``n_classes=2`` to fine-tune a BertModel for classification)."""
    ckpt = HFCheckpoint(path)
    family, arch = detect_family(ckpt.config, str(ckpt.path / "config.json"))
    return _model_config(ckpt.config, _View(ckpt, family, str(ckpt.path)), family, arch, overrides,
                         ckpt.path / "tokenizer.json")


def load_hf_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = False,
                    progress: bool | None = None) -> ImportedState:
    """Copy the weights of HF checkpoint directory ``path`` into an archlab model built from
    (a variant of) :func:`hf_model_config`. Task heads the checkpoint lacks (a classification
    head added for fine-tuning) keep their initialisation unless ``strict``; heads the model
    lacks are dropped. Everything else must match exactly."""
    ckpt = HFCheckpoint(path)
    family, _ = detect_family(ckpt.config, str(ckpt.path / "config.json"))
    view = _View(ckpt, family, str(ckpt.path))
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    imp = _import_state(family, cfg, view, strict=strict, progress=progress)
    # a token-classification head (model.n_tags, added for fine-tuning: NER) is never read
    # from a checkpoint; it keeps its initialisation
    imp.fresh += [k for k in model.state_dict() if k.startswith("tag_head.")]
    with torch.no_grad():
        _load_state(model, imp, family.rules(cfg, view.prefix), str(ckpt.path))
    return imp


@dataclass
class HFImport:
    """What :func:`from_hf` returns: the archlab model (eval mode), its tokenizer (an
    ``archlab.data.Tokenizer`` when that module can read the directory's tokenizer, else None)
    and what is needed to export it back to the same family."""

    model: Any
    tokenizer: Any | None
    family: str
    architecture: str
    hf_config: dict[str, Any]
    source: Path
    tokenizer_files: list[Path] = field(default_factory=list)
    generation_config: dict[str, Any] | None = None
    tokenizer_config: dict[str, Any] | None = None
    dropped: list[str] = field(default_factory=list)  # HF head tensors not carried over
    kept: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # their values
    extra_meta: dict[str, Any] = field(default_factory=dict)  # more provenance (a GGUF import's "gguf")

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @property
    def meta(self) -> dict[str, Any]:
        """Provenance for an archlab model directory's archlab.json (``extra=`` of
        ``archlab.run.save_model_dir``); :func:`to_hf` reads it back."""
        hf: dict[str, Any] = {"family": self.family, "architecture": self.architecture,
                              "source": str(self.source), "config": self.hf_config}
        if self.generation_config:
            hf["generation_config"] = self.generation_config
        if self.tokenizer_config:
            hf["tokenizer_config"] = self.tokenizer_config
        if self.dropped:
            hf["dropped"] = self.dropped
        return {"hf": hf, **self.extra_meta}


def _load_archlab_tokenizer(path: Path) -> Any | None:
    """An archlab Tokenizer for the HF directory, when archlab.data provides one."""
    if not (path / "tokenizer.json").exists():
        return None
    try:
        from archlab.data import Tokenizer  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not hasattr(Tokenizer, "from_hf_dir"):
        return None
    try:
        return Tokenizer.from_hf_dir(path)
    except ArchlabError as e:  # the weights are still usable; the tokenizer files still travel
        warnings.warn(f"{path}: tokenizer not loaded ({e})", stacklevel=3)
        return None


def from_hf(path: str | Path, *, progress: bool | None = None, **overrides: Any) -> HFImport:
    """Import a local Hugging Face checkpoint directory.

    Reads ``config.json`` and ``model.safetensors`` (or sharded safetensors, or
    ``pytorch_model.bin`` with ``weights_only=True``) of a supported family (``FAMILIES``),
    builds the matching :class:`ModelConfig` and copies every weight by an explicit key map.
    ``overrides`` change ModelConfig fields (``n_classes=2`` adds a fresh classifier on top of
    a BertModel's pooler; ``dropout=0.0``). Anything archlab cannot reproduce exactly raises
    ArchlabError naming the option. A GGUF reference (a ``.gguf`` file, a directory holding
    one, a model name such as ``smollm2-135m``) is imported by :func:`from_gguf`.
    """
    from archlab.convert.gguf import is_gguf_ref
    from archlab.model import build_model

    if is_gguf_ref(path):
        return from_gguf(path, progress=progress, **overrides)
    ckpt = HFCheckpoint(path)
    where = str(ckpt.path)
    family, arch = detect_family(ckpt.config, f"{where}/config.json")
    view = _View(ckpt, family, where)
    cfg = _model_config(ckpt.config, view, family, arch, overrides, ckpt.path / "tokenizer.json")
    # a head the user adds (n_classes on a BertModel) starts fresh; nothing else may be missing
    imp = _import_state(family, cfg, view, strict=False, progress=progress)
    allowed_fresh = _added_heads(cfg, overrides)
    surprise = [k for k in imp.fresh if not k.startswith(allowed_fresh)]
    if surprise:
        raise ArchlabError(f"{where}: no weights for {surprise[0]} in the checkpoint")
    model = build_model(cfg)
    with torch.no_grad():
        _load_state(model, imp, family.rules(cfg, view.prefix), where)
    model.eval()
    gen = read_json(ckpt.path / GENERATION_CONFIG, "generation config") if (
        ckpt.path / GENERATION_CONFIG).exists() else None
    tok_cfg = read_json(ckpt.path / "tokenizer_config.json", "tokenizer config") if (
        ckpt.path / "tokenizer_config.json").exists() else None
    return HFImport(model=model, tokenizer=_load_archlab_tokenizer(ckpt.path), family=family.name,
                    architecture=arch, hf_config=dict(ckpt.config), source=ckpt.path.resolve(),
                    tokenizer_files=ckpt.tokenizer_files(), generation_config=gen,
                    tokenizer_config=tok_cfg, dropped=imp.dropped,
                    kept={k: ckpt.get(k) for k in imp.dropped if k in family.restorable})


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp files, read by archlab.convert.gguf)
# ---------------------------------------------------------------------------------------------


def gguf_model_dir(ref: str | Path, *, progress: bool | None = None) -> Path:
    """The archlab model directory of GGUF reference ``ref`` (a .gguf file, a directory holding
    one, a model name of ``archlab.convert.gguf.MODELS``), converted on first use and cached
    (``archlab.convert.gguf.cache_root``). Written atomically: a crash or a concurrent
    conversion never leaves half a directory."""
    from archlab.convert.gguf import MODELS, cache_dir, find_gguf, read_gguf
    from archlab.model import build_model
    from archlab.run import MODEL_CONFIG, save_model_dir

    path = find_gguf(ref)
    if path is None:
        raise ArchlabError(f"{ref}: not a GGUF file, a directory holding one, or a model name "
                           f"({', '.join(MODELS)})")
    out = cache_dir(path, str(ref) if str(ref) in MODELS else None)
    if (out / MODEL_CONFIG).exists():
        return out
    g = read_gguf(path, progress=progress)
    try:  # the Llama family's key map and shape checks, as for an HF checkpoint
        cfg, state = hf_to_archlab(g.hf_config, g.tensors)
    except ArchlabError as e:
        raise ArchlabError(f"{path}: {str(e).splitlines()[0]}") from None
    g.tensors.clear()  # the state holds what is still needed: peak memory ~2 copies, not 3
    model = build_model(cfg)
    with torch.no_grad():
        _load_state(model, ImportedState(state, [], []), FAMILIES["llama"].rules(cfg, "model."), str(path))
    del state
    save_model_dir(out, model, g.tokenizer, extra=g.meta)
    return out


def from_gguf(ref: str | Path, *, progress: bool | None = None, **overrides: Any) -> HFImport:
    """Import a GGUF checkpoint (see :func:`gguf_model_dir`) as an :class:`HFImport` of the
    Llama family (so :func:`to_hf` exports it as an HF Llama). Weights are the file's values
    dequantised to fp32. ``overrides`` change ModelConfig fields (``dropout=0.1``;
    ``n_classes=2`` adds a fresh classification head)."""
    from dataclasses import replace

    from archlab.model import build_model
    from archlab.run import WEIGHTS, load_tokenizer, load_weights, read_meta, read_model_config

    d = gguf_model_dir(ref, progress=progress)
    meta = read_meta(d)
    base = read_model_config(d)
    unknown = [k for k in overrides if k not in ModelConfig.__dataclass_fields__]
    if unknown:
        raise ConfigError(f"unknown model key {unknown[0]}")
    try:
        cfg = replace(base, **overrides)
    except (ConfigError, TypeError) as e:
        raise ArchlabError(f"{ref}: {str(e).splitlines()[0]}") from None
    model = build_model(cfg)
    load_weights(model, d / WEIGHTS, allow_missing=_added_heads(cfg, overrides))
    model.eval()
    hf = meta.get("hf") or {}
    tok_json = d / "tokenizer" / "tokenizer.json"
    return HFImport(model=model, tokenizer=load_tokenizer(d, meta), family="llama",
                    architecture="LlamaForCausalLM", hf_config=dict(hf.get("config") or {}),
                    source=Path(str(hf.get("source") or ref)),
                    tokenizer_files=[tok_json] if tok_json.is_file() else [],
                    tokenizer_config=hf.get("tokenizer_config"),
                    extra_meta={"gguf": meta["gguf"]} if "gguf" in meta else {})


def resolve_checkpoint(ref: str) -> str:
    """``ref`` with a GGUF reference replaced by its cached archlab model directory (converted
    on first use); an HF or archlab directory unchanged. Everything that starts from a
    checkpoint (``train.init_from``, compare entries, ``tokenizer.path``) goes through this."""
    from archlab.convert.gguf import is_gguf_ref

    return str(gguf_model_dir(ref)) if is_gguf_ref(ref) else ref


def _added_heads(cfg: ModelConfig, overrides: Mapping[str, Any]) -> tuple[str, ...]:
    heads: list[str] = []
    if overrides.get("n_classes"):
        heads.append("cls_head.")
    if "mlm_transform" in overrides or "lm_head_bias" in overrides or "tie_embeddings" in overrides:
        heads += ["mlm_transform.", "lm_bias", "lm_head."]
    return tuple(heads)  # "".startswith(()) is False: nothing else may start fresh


# ---------------------------------------------------------------------------------------------
# archlab -> HF
# ---------------------------------------------------------------------------------------------


def hf_family_for(cfg: ModelConfig, family: str | None = None) -> Family:
    """The HF family that represents ``cfg`` exactly (``family`` forces one); ArchlabError
    naming what does not fit otherwise."""
    if family is not None:
        if family not in FAMILIES:
            raise ArchlabError(f"family {family!r}: choose one of {', '.join(FAMILIES)}")
        problems = FAMILIES[family].problems(cfg)
        if problems:
            raise ArchlabError(f"the model cannot be exported as {family}: {'; '.join(problems)}")
        return FAMILIES[family]
    scored = sorted((len(f.problems(cfg)), i, f) for i, f in enumerate(FAMILIES.values()))
    best = scored[0][2]
    problems = best.problems(cfg)
    if not problems:
        return best
    if cfg.arch == "prefix-lm":
        raise ArchlabError("arch prefix-lm has no Hugging Face equivalent among "
                           f"{', '.join(FAMILIES)}")
    raise ArchlabError(f"no Hugging Face family represents this model exactly; closest is "
                       f"{best.name}, but {'; '.join(problems)}")


def hf_config_for(cfg: ModelConfig, family: Family, arch: str,
                  base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json for ``cfg``; keys of ``base`` (the config it was imported from) that
    archlab does not model (label names, task parameters) are kept."""
    out: dict[str, Any] = {}
    if base and base.get("model_type") == family.model_type:
        out.update({k: v for k, v in base.items() if k not in _VOLATILE})
    ours = family.hf_config(cfg, arch)
    if base and "id2label" in ours and isinstance(base.get("id2label"), dict) and len(
            base["id2label"]) == len(ours["id2label"]):
        ours.pop("id2label")
        ours.pop("label2id")
    out.update(ours)
    out["model_type"] = family.model_type
    out["architectures"] = [arch]
    out["dtype"] = "float32"
    return out


def archlab_to_hf(
    model: Any,
    family: str | None = None,
    *,
    base_config: Mapping[str, Any] | None = None,
    kept: Mapping[str, torch.Tensor] | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """archlab model -> (HF config.json dict, HF state dict) of the family that represents it.

    ``kept``: HF tensors archlab does not model (a BertModel's pooler), from the checkpoint the
    model was imported from; they fill those slots instead of neutral values."""
    cfg: ModelConfig = model.cfg
    fam = hf_family_for(cfg, family)
    arch = fam.export_architecture(cfg)
    heads = fam.export_heads(arch)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for rule in _iter(fam.rules(cfg, fam.prefix_for(arch)), "exporting", progress):
        if rule.head is not None and rule.head not in heads:
            dropped.append(rule.ours)
            continue
        for name, t in zip(rule.theirs, rule.to_theirs(state[rule.ours])):
            tensors[name] = t.float() if t.is_floating_point() else t
    neutral: list[str] = []
    for name, t in fam.extra_tensors(cfg, arch, state).items():
        if name in tensors:
            continue
        k = (kept or {}).get(name)
        if name in fam.restorable and k is not None and k.shape == t.shape:
            tensors[name] = k.float()
        else:
            tensors[name] = t
            if name in fam.restorable:
                neutral.append(name)
    if dropped:
        warnings.warn(f"{arch} has no place for archlab's {', '.join(sorted({d.split('.')[0] for d in dropped}))}"
                      f" ({len(dropped)} tensors not exported)", stacklevel=2)
    if neutral:
        warnings.warn(f"{', '.join(neutral)} written as zeros: archlab does not model them and the "
                      "checkpoint the model came from is not available (outputs that use them differ)",
                      stacklevel=2)
    return hf_config_for(cfg, fam, arch, base_config), tensors


def _hf_meta_of(path: Path) -> dict[str, Any]:
    """The ``hf`` provenance of an HF checkpoint directory (as :attr:`HFImport.meta` has it)."""
    hf = read_json(path / "config.json", "config.json")
    family, arch = detect_family(hf, str(path / "config.json"))
    out: dict[str, Any] = {"family": family.name, "architecture": arch, "source": str(path.resolve()),
                           "config": hf}
    for key, name in (("generation_config", GENERATION_CONFIG), ("tokenizer_config", "tokenizer_config.json")):
        if (path / name).is_file():
            out[key] = read_json(path / name, name)
    return out


def _resolve(model_or_dir: Any, which: str) -> tuple[Any, dict[str, Any], list[Path], Path | None, dict]:
    """(model, meta, HF tokenizer files, archlab tokenizer dir, kept HF tensors)."""
    if isinstance(model_or_dir, HFImport):
        return model_or_dir.model, model_or_dir.meta, list(model_or_dir.tokenizer_files), None, model_or_dir.kept
    if isinstance(model_or_dir, (str, Path)):
        from archlab.run import MODEL_CONFIG, load_run

        p = Path(model_or_dir)
        if (p / "config.json").exists() and not (p / MODEL_CONFIG).exists() and not (p / "config.yaml").exists():
            raise ArchlabError(f"{p}: already a Hugging Face checkpoint (no archlab model.yaml)")
        run = load_run(p, which)
        tdir = next((d / "tokenizer" for d in (run.model_path, run.path) if (d / "tokenizer").is_dir()), None)
        meta = dict(run.meta or {})
        init = getattr(getattr(run.config, "train", None), "init_from", None)
        if "hf" not in meta and init and (Path(init) / "config.json").is_file():
            meta["hf"] = _hf_meta_of(Path(init))  # fine-tuned from an HF checkpoint
        return run.model, meta, [], tdir, {}
    if hasattr(model_or_dir, "cfg") and isinstance(model_or_dir, torch.nn.Module):
        return model_or_dir, {}, [], None, {}
    raise ArchlabError(f"to_hf: expected an archlab model, an HFImport or a model/run directory, "
                       f"got {type(model_or_dir).__name__}")


def _tokenizer_config_for(tok_json: Path, cfg: ModelConfig, family: Family) -> dict[str, Any]:
    """A tokenizer_config.json for a bare tokenizer.json: the fast tokenizer class plus the
    special tokens named by the model's ids."""
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "model_max_length": cfg.max_seq_len}
    try:
        from tokenizers import Tokenizer as HFTok

        tok = HFTok.from_file(str(tok_json))
    except Exception:
        return out
    ids = {"pad_token": cfg.pad_token_id}
    if family.name != "bert":
        ids.update(bos_token=cfg.bos_token_id, eos_token=cfg.eos_token_id)
    for key, i in ids.items():
        s = tok.id_to_token(i)
        if s is not None:
            out[key] = s
    if family.name == "bert":
        for key, s in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]"),
                       ("unk_token", "[UNK]")):
            if tok.token_to_id(s) is not None:
                out[key] = s
    return out


def to_hf(
    model_or_dir: Any,
    path: str | Path,
    *,
    family: str | None = None,
    which: str = "auto",
    tokenizer: str | Path | None = None,
    progress: bool | None = None,
) -> Path:
    """Write a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer files)
    that ``transformers.AutoModel*.from_pretrained(path)`` loads with the same logits.

    ``model_or_dir``: an archlab model, an :class:`HFImport`, or an archlab model/run directory
    (``which`` picks best / final / latest weights of a run). The family is the one the model was
    imported from when it still fits, else the one that represents the config exactly
    (``family`` forces one). ``tokenizer``: a directory whose HF tokenizer files are copied
    (default: the imported or archlab tokenizer).
    """
    model, meta, tok_files, tok_dir, kept = _resolve(model_or_dir, which)
    hf_meta = (meta or {}).get("hf") or {}
    if family is None and hf_meta.get("family") in FAMILIES and not FAMILIES[hf_meta["family"]].problems(model.cfg):
        family = hf_meta["family"]
    fam = hf_family_for(model.cfg, family)
    base = hf_meta.get("config") if hf_meta.get("family") == fam.name else None
    src = Path(str(hf_meta["source"])) if hf_meta.get("source") else None
    if not kept and base is not None and fam.restorable and src is not None and src.is_dir():
        try:  # tensors archlab does not model, from the checkpoint the model was imported from
            ck = HFCheckpoint(src)
            kept = {k: ck.get(k) for k in fam.restorable if k in ck}
        except ArchlabError:
            kept = {}
    config, tensors = archlab_to_hf(model, fam.name, base_config=base, kept=kept, progress=progress)
    tok_cfg = None
    if tokenizer is not None:
        tdir = Path(tokenizer)
        if not tdir.is_dir():
            raise ArchlabError(f"{tdir}: tokenizer directory not found")
        tok_files = [tdir / n for n in TOKENIZER_FILES if (tdir / n).is_file()]
        if not tok_files:
            raise ArchlabError(f"{tdir}: no Hugging Face tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    elif not tok_files and tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
        tok_files = [tok_dir / "tokenizer.json"]
        tok_cfg = hf_meta.get("tokenizer_config") or _tokenizer_config_for(tok_dir / "tokenizer.json",
                                                                           model.cfg, fam)
    elif not tok_files and base is not None and base.get("vocab_size") == model.cfg.vocab_size:
        # imported from HF without an archlab tokenizer: the source directory's tokenizer, if
        # it is still there (same family and vocabulary size, so the same tokenizer)
        if src is not None and src.is_dir():
            tok_files = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
    gen = None
    if hf_meta.get("generation_config") and base is not None:
        gen = dict(hf_meta["generation_config"])
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if key in config:
                gen[key] = config[key]
    return write_hf_dir(path, config, tensors, generation_config=gen, tokenizer_files=tok_files,
                        tokenizer_config=tok_cfg)


def describe_import(imp: HFImport) -> dict[str, Any]:
    """A JSON-able summary of an import (for the CLI)."""
    cfg = imp.cfg
    n = sum(p.numel() for p in imp.model.parameters())
    return {"family": imp.family, "architecture": imp.architecture, "arch": cfg.arch,
            "params": n, "d_model": cfg.d_model, "layers": f"{cfg.encoder_layers}+{cfg.decoder_layers}"
            if cfg.arch == "encoder-decoder" else cfg.n_layers, "tokenizer": bool(imp.tokenizer_files),
            "dropped": imp.dropped}


__all__ = [
    "HFImport",
    "ImportedState",
    "archlab_to_hf",
    "describe_import",
    "detect_family",
    "from_gguf",
    "from_hf",
    "gguf_model_dir",
    "hf_config_for",
    "hf_family_for",
    "hf_model_config",
    "hf_to_archlab",
    "load_hf_weights",
    "resolve_checkpoint",
    "to_hf",
]

