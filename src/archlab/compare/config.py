"""``archlab compare`` configuration: a task, a budget, a grid of (architecture, objective,
optional pretraining) entries, seeds, and shared training/decoding settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from archlab.config import apply_overrides, from_dict, load_yaml, merge
from archlab.errors import ConfigError
from archlab.train.config import EvalConfig, TokenizerConfig, TrainConfig


@dataclass
class PretrainConfig:
    """Optional first stage on unlabelled text with any training objective."""

    objective: str = "span-corruption"
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # data section; {} = the task's own text
    steps: int = 1000
    lr: float | None = None  # None: the fine-tuning lr


@dataclass
class EntryConfig:
    arch: Literal["encoder", "decoder", "prefix-lm", "encoder-decoder"] = "encoder-decoder"
    name: str | None = None  # default: arch (+ pretraining objective)
    objective: str | None = None  # task objective; None: the task's natural one
    objective_options: dict[str, Any] = field(default_factory=dict)
    pretrain: PretrainConfig | None = None
    model: dict[str, Any] = field(default_factory=dict)  # per-entry model overrides (skip sizing keys)
    # start from this checkpoint (an HF checkpoint or archlab model directory): its model is
    # used as is (not sized); tokenizer.path must then be that checkpoint's tokenizer
    init_from: str | None = None
    # train by distillation from the model of an earlier entry (same seed) of this compare
    distill_from: str | None = None
    distill: dict[str, Any] = field(default_factory=dict)  # distillation options: alpha, temperature, cosine

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.arch + (f"+{self.pretrain.objective}" if self.pretrain else "")


@dataclass
class BudgetConfig:
    match: Literal["params", "flops"] = "flops"
    reference: str = "encoder-decoder"  # arch whose base size sets the target ...
    target: float | None = None  # ... unless given: parameters, or forward FLOPs per example
    tolerance: float = 0.05  # sizing aims within this; entries outside 10 % are an error
    d_ff_multiple: int = 32


@dataclass
class DecodeConfig:
    num_beams: int = 4
    max_new_tokens: int = 96
    length_penalty: float = 1.0
    test_examples: int | None = 500  # held-out examples scored (None: whole test split)
    latency_examples: int = 32  # examples timed one at a time for latency per example
    batch_size: int = 32


@dataclass
class CompareConfig:
    name: str = "compare"
    out_dir: str | None = None  # default: runs/compare-<name>
    data: dict[str, Any] = field(default_factory=lambda: {"task": "translation-en-de"})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: dict[str, Any] = field(default_factory=dict)  # base block shared by all entries
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    entries: list[EntryConfig] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / f"compare-{self.name}"


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
_THREE = [{"arch": "encoder-decoder"}, {"arch": "decoder"}, {"arch": "prefix-lm"}]

PRESETS: dict[str, dict[str, Any]] = {
    # The default: sized for a 2-core CPU in about 20 minutes (see README for the measured run).
    "demo": {
        "name": "demo",
        "data": {"task": "translation-en-de", "max_source_chars": 100, "test_fraction": 0.05},
        "tokenizer": {"kind": "bpe", "vocab_size": 3000, "n_sentinels": 8},
        "model": {"d_model": 192, "n_heads": 3, "n_layers": 3, "d_ff": 768, "max_seq_len": 256,
                  "dropout": 0.0, "norm": "rmsnorm", "activation": "swiglu", "position": "rope"},
        "budget": {"match": "flops", "reference": "encoder-decoder"},
        "entries": _THREE,
        "seeds": [0],
        # warmup-stable-decay: short CPU runs gain most from staying at the full rate (cosine
        # over 1000 steps reached BLEU 3.9 here; a constant rate over 1650 steps 7.9)
        "train": {"steps": 1100, "lr": 2e-3, "warmup_steps": 100, "schedule": "wsd", "decay_fraction": 0.25,
                  "min_lr_ratio": 0.02, "weight_decay": 0.01, "tokens_per_batch": 3000, "max_len": 256,
                  "save_every": 250, "log_every": 25},
        "eval": {"every": 250, "max_examples": 300, "decode_examples": 0},
        "decode": {"num_beams": 4, "max_new_tokens": 96, "test_examples": 500},
    },
    # End-to-end check in about two minutes (tests use it).
    "smoke": {
        "name": "smoke",
        "data": {"task": "translation-en-de", "max_source_chars": 60, "max_examples": 600},
        "tokenizer": {"kind": "bpe", "vocab_size": 600, "n_sentinels": 4},
        "model": {"d_model": 64, "n_heads": 2, "n_layers": 2, "d_ff": 128, "max_seq_len": 128,
                  "dropout": 0.0},
        "budget": {"match": "flops"},
        "entries": _THREE,
        "seeds": [0, 1],
        "train": {"steps": 30, "lr": 3e-3, "warmup_steps": 5, "tokens_per_batch": 1024, "max_len": 96,
                  "save_every": 10, "log_every": 5},
        "eval": {"every": 15, "max_examples": 40, "decode_examples": 0},
        "decode": {"num_beams": 2, "max_new_tokens": 24, "test_examples": 24, "latency_examples": 4},
    },
    # The T5 paper's Table 2 grid (architecture x {denoising, LM} pretraining); meant for a GPU.
    "t5-table2": {
        "name": "t5-table2",
        "data": {"task": "translation-en-de"},
        "tokenizer": {"kind": "unigram", "vocab_size": 16000},
        "model": {"d_model": 512, "n_heads": 8, "n_layers": 6, "d_ff": 2048, "max_seq_len": 512,
                  "dropout": 0.1},
        "budget": {"match": "flops"},
        "entries": [
            {"arch": "encoder-decoder", "pretrain": {"objective": "span-corruption", "steps": 20000,
                                                     "data": {"task": "news-lm"}}},
            {"arch": "encoder-decoder", "pretrain": {"objective": "prefix-lm", "steps": 20000,
                                                     "data": {"task": "news-lm"}}},
            {"arch": "encoder-decoder", "model": {"share_encoder_decoder": True}, "name": "enc-dec shared",
             "pretrain": {"objective": "span-corruption", "steps": 20000, "data": {"task": "news-lm"}}},
            {"arch": "prefix-lm", "pretrain": {"objective": "span-corruption", "steps": 20000,
                                               "data": {"task": "news-lm"}}},
            {"arch": "prefix-lm", "pretrain": {"objective": "prefix-lm", "steps": 20000,
                                               "data": {"task": "news-lm"}}},
            {"arch": "decoder", "pretrain": {"objective": "span-corruption", "steps": 20000,
                                             "data": {"task": "news-lm"}}},
            {"arch": "decoder", "pretrain": {"objective": "causal-lm", "steps": 20000,
                                             "data": {"task": "news-lm"}}},
        ],
        "seeds": [0, 1, 2],
        "train": {"steps": 20000, "lr": 1e-3, "warmup_steps": 1000, "tokens_per_batch": 16384,
                  "precision": "bf16", "max_len": 512},
        "eval": {"every": 2000},
        "decode": {"num_beams": 4, "test_examples": 1000},
    },
}


def compare_config_from_dict(data: dict[str, Any], where: str) -> CompareConfig:
    try:
        cfg = from_dict(CompareConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not cfg.entries:
        raise ConfigError(f"{where}: entries: give at least one entry (arch: encoder-decoder, ...)")
    if not cfg.seeds:
        raise ConfigError(f"{where}: seeds: give at least one seed")
    labels = [e.label for e in cfg.entries]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ConfigError(f"{where}: entries: duplicate entry name {sorted(dup)[0]!r}; set name: to tell them apart")
    for i, e in enumerate(cfg.entries):
        if e.distill_from is not None and e.distill_from not in labels[:i]:
            raise ConfigError(f"{where}: entries[{i}].distill_from: {e.distill_from!r} is not an earlier entry; "
                              f"choose one of: {', '.join(labels[:i]) or '(none: list the teacher first)'}")
        if e.init_from is not None:
            if not Path(e.init_from).is_dir():
                raise ConfigError(f"{where}: entries[{i}].init_from: {e.init_from} is not a directory "
                                  "(an HF checkpoint or archlab model directory)")
            if not cfg.tokenizer.path:
                raise ConfigError(f"{where}: entries[{i}].init_from: set tokenizer.path to the checkpoint's "
                                  "tokenizer (all entries share one tokenizer)")
    if cfg.budget.reference not in {e.arch for e in cfg.entries} and cfg.budget.target is None:
        raise ConfigError(f"{where}: budget.reference={cfg.budget.reference} is not among the entries' "
                          "architectures; set budget.target or add such an entry")
    return cfg


def load_compare_config(
    path: str | None, overrides: list[str], preset: str | None = None
) -> CompareConfig:
    """The built-in default (``demo``) or ``preset``, merged with a YAML file and overrides."""
    name = preset or "demo"
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: unknown; choose one of: {', '.join(PRESETS)}")
    data = PRESETS[name]
    where = f"preset {name}"
    if path:
        data = merge(data, load_yaml(path))
        where = path
    data = apply_overrides(data, overrides)
    return compare_config_from_dict(data, where)
