"""The run configuration: one YAML file with ``model``, ``data``, ``tokenizer``, ``objective``,
``train`` and ``eval`` sections (typed dataclasses; unknown keys and wrong types are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from archlab.config import (
    ModelConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from archlab.errors import ConfigError
from archlab.generate.config import default_from_generation


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "unigram", "word"] = "bpe"  # word: one token per whitespace-separated word (probe tasks)
    vocab_size: int = 8000
    n_sentinels: int = 100  # T5 sentinels, needed by span-corruption
    min_frequency: int = 2
    path: str | None = None  # use this tokenizer (archlab tokenizer dir or HF model dir) instead of training
    max_texts: int | None = None  # train on at most this many texts (None: all training texts)


@dataclass
class ObjectiveConfig:
    # causal-lm | prefix-lm | masked-lm | span-corruption | denoising | seq2seq | classification |
    # contrastive | token-classification | distillation
    name: str = "causal-lm"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {rate: 0.15} for masked-lm

    @property
    def base_name(self) -> str:
        """The objective that sets data, layout and evaluation: distillation's ``base``."""
        if self.name == "distillation":
            return str(self.options.get("base") or self.name)
        return self.name


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying at the end
    weight_decay: float = 0.1  # on matrices (ndim >= 2); not on biases, norms and embeddings
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimizer step and process
    # micro-batches per optimizer step summed over all processes (null: grad_accum x world
    # size). When set, each process accumulates global_batch / world size, so 1, 2 or N
    # processes train the identical run; the world size must divide it, grad_accum stays 1
    global_batch: int | None = None
    tokens_per_batch: int = 8192  # padded tokens per micro-batch (length-bucketed batches)
    max_batch: int | None = None  # cap on examples per micro-batch
    max_len: int = 256  # longest model input (tokens); longer examples are truncated and counted
    # pair tasks: source / target tokens kept (special tokens not counted), the same for every
    # family; null: fill max_len as the family's layout allows (objectives.layout)
    max_source_len: int | None = None
    max_target_len: int | None = None
    pack: bool = False  # pack LM examples into max_len sequences (causal-lm / masked-lm / denoising)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast bf16 matmuls, fp32 master weights
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads (None: torch's default)
    log_every: int = 10
    save_every: int = 200  # checkpoint every N optimizer steps (and at the end); 0 = only at the end
    keep_last: int = 3  # checkpoints kept
    max_time_s: float | None = None  # stop (with a checkpoint) after this much training wall time
    init_from: str | None = None  # start from these weights: an archlab model/run dir or an HF checkpoint dir
    # data parallelism across the processes torchrun starts (archlab.train.parallel): none |
    # ddp | fsdp (FSDP2 fully_shard per block, then the root). Each optimizer step reads
    # global_batch (or grad_accum x world-size) micro-batches of one global order, so a run's
    # losses depend on that number only, not on how many processes share it
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    compile: bool = False  # torch.compile each block (and the root's remaining modules run eagerly)


@dataclass
class EvalConfig:
    every: int = 200  # evaluate every N optimizer steps (and at the end); 0 = only at the end
    max_examples: int | None = 500  # validation examples for the loss (None: all)
    decode_examples: int = 64  # validation examples decoded for task metrics (0 = none)
    max_new_tokens: int = field(default_factory=default_from_generation("max_new_tokens"))
    # greedy by default, unlike evaluate's beam search: periodic decoding is paid for every
    # `every` steps, so it tracks progress at the cheapest setting
    num_beams: int = 1
    early_stopping_patience: int = 0  # stop after N evaluations without improvement (0 = off)
    metric: str = "loss"  # what early stopping / best/ track: loss, or a task metric such as bleu
    save_best: bool = True  # write best/ (model dir) when the tracked metric improves


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # archlab.data.DataConfig (typed at load time)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def _expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    from archlab.model.presets import preset_dict

    model = data.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        base = preset_dict(str(model.pop("preset")))
        base.update(model)
        data = {**data, "model": base}
    return data


def run_config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Typed RunConfig from a mapping; every error names ``where`` and the dotted key."""
    from archlab.data import DataConfig

    try:
        data = _expand_model_preset(dict(data))
        data_section = data.pop("data", {}) or {}
        cfg = from_dict(RunConfig, data)
        cfg.data = from_dict(DataConfig, data_section, prefix="data")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    for key in ("steps", "grad_accum", "tokens_per_batch", "max_len", "log_every", "keep_last"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"{where}: train.{key} must be >= 1, got {getattr(cfg.train, key)}")
    for key in ("max_source_len", "max_target_len"):
        v = getattr(cfg.train, key)
        if v is not None and v < 1:
            raise ConfigError(f"{where}: train.{key} must be >= 1 or null, got {v}")
    check_global_batch(cfg.train, where)
    if cfg.train.lr <= 0:
        raise ConfigError(f"{where}: train.lr must be > 0, got {cfg.train.lr}")
    if not 0.0 < cfg.train.decay_fraction <= 1.0:
        raise ConfigError(f"{where}: train.decay_fraction must be in (0, 1], got {cfg.train.decay_fraction}")
    if cfg.train.max_len > cfg.model.max_seq_len and cfg.model.position in ("learned", "sinusoidal"):
        raise ConfigError(f"{where}: train.max_len={cfg.train.max_len} exceeds model.max_seq_len="
                          f"{cfg.model.max_seq_len} ({cfg.model.position} positions)")
    return cfg


def check_global_batch(train: TrainConfig, where: str = "config") -> None:
    """``train.global_batch`` sets the accumulation itself: >= 1, and no grad_accum beside it
    (a second, world-size dependent answer to the same question)."""
    g = train.global_batch
    if g is None:
        return
    if g < 1:
        raise ConfigError(f"{where}: train.global_batch must be >= 1 or null, got {g}")
    if train.grad_accum != 1:
        raise ConfigError(f"{where}: train.global_batch={g} and train.grad_accum={train.grad_accum} both set; "
                          "global_batch sets the accumulation (global_batch / world size): leave grad_accum out")


def micro_batches_per_process(train: TrainConfig, world_size: int) -> int:
    """Micro-batches each process accumulates per optimizer step at ``world_size`` processes:
    ``global_batch / world_size`` when global_batch is set (one line if it does not divide),
    else ``grad_accum``. An optimizer step reads this times ``world_size`` micro-batches."""
    g = train.global_batch
    if g is None:
        return train.grad_accum
    if g % world_size:
        raise ConfigError(f"train.global_batch={g} is not divisible by the world size {world_size} "
                          f"(processes); use a multiple of {world_size} or a world size that divides {g}")
    return g // world_size


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    data = apply_overrides(load_yaml(path), list(overrides))
    return run_config_from_dict(data, where=str(path))
