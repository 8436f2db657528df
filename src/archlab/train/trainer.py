"""The trainer: AdamW, warmup + decay, accumulation, clipping, bf16 autocast, periodic
evaluation, early stopping, and checkpoints from which a killed run resumes bit-exactly.

Bit-exact resume rests on three rules: (1) the data order is a pure function of
(seed, epoch) and the position is saved as (epoch, micro-batch index); (2) every random draw
is saved at optimizer step boundaries (objective masking: one NumPy generator) or is a pure
function of (seed, step, micro-batch index) (dropout, router jitter: torch's generator,
reseeded before each micro-batch, the same at any world size); (3) the learning rate is a
pure function of the step. A resumed run then
executes exactly the same operations as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archlab.errors import ArchlabError
from archlab.model.moe import collect_health, start_health, update_balancing_bias
from archlab.objectives import Batch, Example, Objective
from archlab.objectives.layout import batch_tokens
from archlab.run import RunDir
from archlab.train.checkpoint import (
    TrainState,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from archlab.train.config import EvalConfig, TrainConfig, micro_batches_per_process
from archlab.train.parallel import (
    DistEnv,
    HostReplica,
    device_for,
    grad_norm_value,
    grad_sync,
    may_leave_parameters_unused,
    micro_seed,
    parallelize,
    reduce_moe_load,
)

MetricFn = Callable[[torch.nn.Module, int], dict[str, float]]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine or
    linear decay to ``lr * min_lr_ratio`` at ``cfg.steps`` (Loshchilov & Hutter 2017), or
    ``wsd``: warmup-stable-decay, constant until the last ``decay_fraction`` of the steps,
    then linear decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024), which trains short runs
    at the full rate for longer."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        n_decay = max(int(round(cfg.steps * cfg.decay_fraction)), 1)
        start = max(cfg.steps - n_decay, cfg.warmup_steps)
        if step < start:
            return cfg.lr
        t = min((step - start) / max(cfg.steps - start, 1), 1.0)
        return floor + (cfg.lr - floor) * (1.0 - t)
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - t)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ArchlabError(f"train.device={name!r}: choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArchlabError(f"train.device={name}: CUDA is not available on this machine")
    return dev


def decays(name: str, param: torch.nn.Parameter, tables: set[str]) -> bool:
    """Whether AdamW's weight decay applies to a parameter, by its role: matrices and stacked
    matrices (ndim >= 2: linear weights whatever module holds them, e.g. (experts, out, in)
    expert weights) decay; biases and norm gains (ndim 1) and lookup tables (token, position,
    token-type and relative-position embeddings, named in ``tables``) do not, as in BERT,
    GPT-2 and most LLM recipes. A tied LM head is the token embedding: not decayed."""
    return param.ndim >= 2 and name not in tables


def lookup_tables(model: torch.nn.Module) -> set[str]:
    """Names of the parameters read as lookup tables: the weights of ``nn.Embedding`` modules,
    and the names any module lists in its ``no_weight_decay()`` (timm's convention, here per
    module, for tables kept as bare parameters)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        own = {"weight"} if isinstance(module, torch.nn.Embedding) else set()
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            own |= set(listed())
        names |= {f"{prefix}.{n}" if prefix else n for n in own}
    return names


def weight_decay_split(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(names of the trainable parameters that decay, names of those that do not); a parameter
    shared by several modules is listed once, under its first name."""
    tables = lookup_tables(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared parameters once
        if p.requires_grad:
            (decay if decays(name, p, tables) else no_decay).append(name)
    return decay, no_decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019), weight decay by parameter role (:func:`decays`).
    Uses the fused kernel where PyTorch has one (CPU and CUDA; HF Trainer's default with
    torch >= 2.8)."""
    params = dict(model.named_parameters())
    decay_names, no_decay_names = weight_decay_split(model)
    decay = [params[n] for n in decay_names]
    no_decay = [params[n] for n in no_decay_names]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw: dict[str, Any] = {}
    if device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in decay + no_decay):
        kw["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kw)


def data_digest(examples: list[Example], crc: int = 0) -> int:
    """CRC-32 of the examples' token ids, chained onto ``crc``: a fingerprint of which
    examples a run read in which order, independent of the family's layout (two runs that
    log the same digest at a step trained on the same examples up to it)."""
    for ex in examples:
        parts = (ex.ids,) if ex.src is None else (ex.src, [-1], ex.tgt or [])
        for p in parts:
            crc = zlib.crc32(np.asarray(p, dtype=np.int32).tobytes(), crc)
        if ex.label is not None:
            crc = zlib.crc32(np.int32(ex.label).tobytes(), crc)
        crc = zlib.crc32(b"|", crc)
    return crc


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "completed" | "early_stopping" | "time_limit" | "evaluate_only"
    last_eval: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    train_time_s: float = 0.0
    tokens_seen: int = 0
    peak_memory_bytes: int = 0
    examples_truncated: int = 0  # training examples the objective cuts (counted once per run)
    teacher_flops: int = 0  # forward FLOPs spent in a distillation teacher
    examples_seen: int = 0  # training examples read, every micro-batch of every step


class Trainer:
    """Trains one model with one objective on tokenized examples.

    ``batches_for_epoch(epoch) -> list[list[Example]]`` must be deterministic in ``epoch``
    (archlab.data.Batcher.epoch_batches is). ``metric_fn(model, step)`` adds task metrics
    (BLEU, accuracy, ...) to each evaluation.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        objective: Objective,
        batches_for_epoch: Callable[[int], list[list[Example]]],
        valid_examples: list[Example],
        train_cfg: TrainConfig,
        eval_cfg: EvalConfig,
        run_dir: str | Path,
        metric_fn: MetricFn | None = None,
        on_save: Callable[[Path], None] | None = None,
        save_model_dir: Callable[[Path], None] | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        examples_truncated: int = 0,
        dist_env: DistEnv | None = None,
    ) -> None:
        # data parallelism (archlab.train.parallel): every rank builds each step's global batch
        # and runs its share; only rank 0 logs, writes metrics and saves
        self.env = env = dist_env or DistEnv()
        self.model = model
        self.examples_truncated = examples_truncated
        self.objective = objective
        self.batches_for_epoch = batches_for_epoch
        self.valid = valid_examples
        self.cfg = train_cfg
        self.eval_cfg = eval_cfg
        self.run_dir = Path(run_dir)
        self.metric_fn = metric_fn
        self.save_model_dir = save_model_dir
        self.progress = (sys.stderr.isatty() if progress is None else progress) and env.is_main
        self.log = (log or (lambda msg: print(msg, file=sys.stderr, flush=True))) if env.is_main else (lambda msg: None)
        self.device = device_for(env, train_cfg.device) or resolve_device(train_cfg.device)
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        self.model.to(self.device)
        self.module = self.model  # the model itself (DDP wraps it; FSDP2 shards it in place)
        self.replica: HostReplica | None = None
        if env.kind == "fsdp":  # full state for checkpoints goes through an unsharded host copy
            self.replica = HostReplica(self.model, lambda m, dev: make_optimizer(m, train_cfg, dev))
        if env.active or train_cfg.compile:
            # classification leaves the LM head without gradients, a prefix-LM's backward Mamba
            # scans go unused without a prefix: DDP must look for unused parameters then
            name = getattr(getattr(objective, "base", objective), "name", "")
            self.model = parallelize(self.model, env, self.device, compile_blocks=train_cfg.compile,
                                     find_unused=may_leave_parameters_unused(self.model, name))
        self.optimizer = make_optimizer(self.module, train_cfg, self.device)
        self.data_rng = np.random.default_rng(train_cfg.seed)
        self._epoch_cache: tuple[int, list[list[Example]]] | None = None
        layout = RunDir(self.run_dir)
        self.metrics_path = layout.metrics
        self.ckpt_dir = layout.checkpoints
        self.best_dir, self.final_dir = layout.best, layout.final
        self.last_moe_health: dict[str, Any] = {}  # expert health of the last evaluation

    # ---- data position --------------------------------------------------------------------
    def _epoch(self, epoch: int) -> list[list[Example]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            batches = self.batches_for_epoch(epoch)
            if not batches:
                raise ArchlabError("no training batches: the training split is empty after filtering")
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    def _next_examples(self, st: TrainState) -> list[Example]:
        batches = self._epoch(st.epoch)
        if st.batch_index >= len(batches):
            st.epoch += 1
            st.batch_index = 0
            batches = self._epoch(st.epoch)
        ex = batches[st.batch_index]
        st.batch_index += 1
        return ex

    # ---- full weights -------------------------------------------------------------------
    @property
    def host_model(self) -> torch.nn.Module:
        """The model with full weights, for writing model directories: the model itself, or
        under FSDP2 the host replica (current after :meth:`_gather`; rank 0 only)."""
        return self.replica.model if self.replica is not None else self.module

    def _gather(self, with_optimizer: bool) -> None:
        if self.replica is not None:  # collective: every rank takes part
            self.replica.pull(self.model, self.optimizer if with_optimizer else None, self.env)

    def _save_model_dir(self, path: Path) -> None:
        if self.save_model_dir is None:
            return
        self._gather(with_optimizer=False)
        if self.env.is_main:
            self.save_model_dir(path)
        self.env.barrier()

    def _save_checkpoint(self, st: TrainState) -> None:
        self._gather(with_optimizer=True)
        if self.env.is_main:
            model, opt = ((self.replica.model, self.replica.optimizer) if self.replica is not None
                          else (self.module, self.optimizer))
            save_checkpoint(self.ckpt_dir, model=model, optimizer=opt, state=st, data_rng=self.data_rng,
                            keep_last=self.cfg.keep_last)
        self.env.barrier()

    # ---- metrics file -------------------------------------------------------------------
    def _append_metrics(self, row: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step (they will be redone)."""
        if not self.env.is_main or not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if row.get("step", 0) <= step:
                keep.append(line)
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    # ---- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Validation loss (token-weighted) on a fixed subset with fixed masking, then task
        metrics. Uses its own RNG so evaluating never changes the training stream."""
        was_training = self.model.training
        self.model.eval()
        examples = self.valid[: self.eval_cfg.max_examples] if self.eval_cfg.max_examples else self.valid
        rng = np.random.default_rng(self.cfg.seed + 1_000_003)
        total, n_tok, n_correct = 0.0, 0, 0
        bs = max(1, self.cfg.tokens_per_batch // max(self.cfg.max_len, 1))
        start_health(self.module)  # MoE expert load over the validation batches
        for i in range(0, len(examples), bs):
            batch = to_device(self.objective.build(examples[i : i + bs], rng), self.device)
            with self._autocast():
                out = self.objective.loss(self.model, batch)
            total += float(out.loss) * out.n_tokens
            n_tok += out.n_tokens
            n_correct += out.n_correct or 0
        self.last_moe_health = collect_health(self.module)  # {} without MoE layers
        result: dict[str, float] = {}
        if n_tok:
            result["loss"] = total / n_tok
            if getattr(self.objective, "base", self.objective).name in ("classification", "contrastive",
                                                                        "token-classification"):
                # (contrastive: in-batch top-1 accuracy, query -> its positive; token
                # classification: accuracy over the labelled tokens)
                result["accuracy"] = n_correct / n_tok
            else:
                result["ppl"] = math.exp(min(result["loss"], 50.0))
        if self.metric_fn is not None:  # decoding needs the full model (DDP: the wrapped one)
            result.update(self.metric_fn(self.module, step))
        if was_training:
            self.model.train()
        return result

    def _autocast(self):  # noqa: ANN202
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def _improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        lower_is_better = self.eval_cfg.metric in ("loss", "ppl", "bpb")
        return value < best if lower_is_better else value > best

    def evaluate_only(self) -> TrainResult:
        """No training: evaluate the model as it starts (a checkpoint's zero-shot score) and
        write it as the run's final model, so the run directory loads like a trained one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.exists() and self.env.is_main:
            self.metrics_path.unlink()
        last_eval = self.evaluate(0)
        self._append_metrics({"step": 0, "tokens": 0, "eval": last_eval})
        self.log("eval step 0 (not trained): " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
        self._save_model_dir(self.final_dir)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _peak_rss()
        return TrainResult(self.run_dir, 0, "evaluate_only", last_eval, None, 0.0, 0, peak,
                           self.examples_truncated, 0, 0)

    # ---- main loop ----------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        env = self.env
        world, rank = env.world_size, env.rank
        per_rank = micro_batches_per_process(cfg, world)  # before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        st = TrainState(step=0, epoch=0, batch_index=0, examples_truncated=self.examples_truncated)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        if resume:
            ck = latest_valid_checkpoint(self.ckpt_dir, report=env.is_main)
            if ck is None:
                raise ArchlabError(f"{self.ckpt_dir}: no valid checkpoint to resume from "
                                   "(run without --resume to start fresh)")
            if self.replica is not None:  # every rank reads the full state, then shards it
                loaded = load_checkpoint(ck, model=self.replica.model, optimizer=self.replica.optimizer,
                                         data_rng=self.data_rng)
                self.replica.push(self.model, self.optimizer)
            else:
                loaded = load_checkpoint(ck, model=self.module, optimizer=self.optimizer,
                                         data_rng=self.data_rng)
            st = loaded.state
            self._truncate_metrics(st.step)
            self.log(f"resumed from {ck} (step {st.step}, epoch {st.epoch}, batch {st.batch_index})")
        elif self.metrics_path.exists() and env.is_main:
            self.metrics_path.unlink()
        env.barrier()

        last_eval: dict[str, float] = {}
        stopped = "completed"
        self.model.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=st.step, desc="train", unit="step",
                       dynamic_ncols=True, file=sys.stderr)
        t_window, tok_window = time.perf_counter(), 0
        eval_every = self.eval_cfg.every
        try:
            while st.step < cfg.steps:
                t0 = time.perf_counter()
                lr = lr_at(st.step, cfg)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                # the step's global batch: per_rank micro-batches per rank (global_batch / world,
                # or grad_accum), built by every rank in one order (same masking draws); this
                # rank runs micro-batches rank::world
                step_examples = [self._next_examples(st) for _ in range(per_rank * world)]
                micro = [self.objective.build(ex, self.data_rng) for ex in step_examples]
                for ex in step_examples:  # which examples, logged: equal across families
                    st.examples_seen += len(ex)
                    st.data_crc = data_digest(ex, st.data_crc)
                weights = [self._n_targets(b) for b in micro]
                total_w = max(sum(weights), 1)
                extra = getattr(self.objective, "teacher_flops", None)  # distillation's teacher
                for b in micro:  # global counts, from the host copies (no device sync)
                    if extra is not None:
                        st.teacher_flops += extra(b)
                    n_tok = batch_tokens(b)
                    st.tokens_seen += n_tok
                    tok_window += n_tok
                # this rank's micro-batches rank, rank + world, ... with their global index
                mine = list(zip(range(len(micro)), micro, weights))[rank::world]
                # losses accumulate on the device; read back only when logged, saved or
                # evaluated (a CUDA run is not synchronised every step; a CPU run reads every step)
                loss_t = torch.zeros((), dtype=torch.float64, device=self.device)
                aux_t: dict[str, torch.Tensor] = {}
                for j, (i, b, w) in enumerate(mine):
                    # dropout / jitter keyed by the micro-batch, not the rank: the same masks
                    # in one process and on any rank (2 ranks equal 1 process with dropout)
                    torch.manual_seed(micro_seed(cfg.seed, st.step, i))
                    b = to_device(b, self.device)
                    with grad_sync(self.model, env, sync=j == len(mine) - 1):
                        with self._autocast():
                            out = self.objective.loss(self.model, b)
                        # token-weighted mean over the step's global batch; DDP/FSDP2 average
                        # gradients over ranks, hence x world
                        (out.loss * (w * world / total_w)).backward()
                    loss_t += out.task_loss.detach().double() * w  # logged without aux terms
                    for k, v in out.aux.items():  # MoE balancing / z losses (unweighted)
                        aux_t[k] = aux_t.get(k, 0.0) + v.detach().double() * w
                if world > 1:  # the logged loss is the global one (one small all-reduce)
                    keys = sorted(aux_t)
                    t = env.all_reduce_sum(torch.stack([loss_t, *(aux_t[k] for k in keys)]))
                    loss_t, aux_t = t[0], dict(zip(keys, t[1:]))
                gnorm_t = None
                if cfg.grad_clip > 0:
                    gnorm_t = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                reduce_moe_load(self.module, env)  # every rank moves its router biases alike
                update_balancing_bias(self.module)  # sigmoid-bias MoE routers (no-op otherwise)
                self.optimizer.zero_grad(set_to_none=True)
                st.step += 1
                st.train_time_s += time.perf_counter() - t0
                read = (self.device.type != "cuda" or st.step % cfg.log_every == 0 or st.step == cfg.steps
                        or bool(cfg.save_every and st.step % cfg.save_every == 0)
                        or bool(eval_every and st.step % eval_every == 0) or cfg.max_time_s is not None)
                if read:  # (on CUDA a loss that went bad shows at the next read, before any save)
                    loss = float(loss_t) / total_w
                    if not math.isfinite(loss):
                        raise ArchlabError(f"loss became {loss} at step {st.step}; lower train.lr or "
                                           "use precision fp32")
                    gnorm = grad_norm_value(gnorm_t) if gnorm_t is not None else float("nan")
                    aux_sum = {k: float(v) for k, v in aux_t.items()}
                if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                    now = time.perf_counter()
                    tps = tok_window / max(now - t_window, 1e-9)
                    t_window, tok_window = now, 0
                    row = {"step": st.step, "loss": loss, "lr": lr, "grad_norm": gnorm,
                           "tokens": st.tokens_seen, "tokens_per_s": tps,
                           "examples": st.examples_seen, "data_crc": st.data_crc,
                           "epoch": st.epoch, "time_s": st.train_time_s}
                    if st.teacher_flops:
                        row["teacher_flops"] = st.teacher_flops
                    row.update({f"moe_{k}_loss": v / total_w for k, v in aux_sum.items()})
                    self._append_metrics(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}", lr=f"{lr:.2e}")
                    elif not self.progress:
                        eta = st.train_time_s / st.step * (cfg.steps - st.step) if st.step else 0
                        self.log(f"step {st.step}/{cfg.steps} loss {loss:.4f} lr {lr:.2e} "
                                 f"{tps:.0f} tok/s ETA {eta:.0f}s")
                if bar is not None:
                    bar.update(1)
                timed_out = cfg.max_time_s is not None and st.train_time_s >= cfg.max_time_s
                if cfg.max_time_s is not None and world > 1:  # one decision for all ranks
                    timed_out = bool(env.all_reduce_sum(torch.tensor([float(timed_out)], device=self.device)) > 0)
                is_last = st.step == cfg.steps or timed_out
                if (eval_every and st.step % eval_every == 0) or is_last:
                    last_eval = self.evaluate(st.step)
                    row = {"step": st.step, "tokens": st.tokens_seen, "eval": last_eval}
                    if self.last_moe_health:  # expert load per layer (MoE models)
                        row["moe"] = self.last_moe_health
                    self._append_metrics(row)
                    value = last_eval.get(self.eval_cfg.metric)
                    if value is not None:
                        if self._improved(value, st.best_metric):
                            st.best_metric = value
                            st.evals_without_improvement = 0
                            if self.eval_cfg.save_best and self.save_model_dir is not None:
                                self._save_model_dir(self.best_dir)
                        else:
                            st.evals_without_improvement += 1
                    if bar is not None:
                        bar.write(f"step {st.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
                    else:
                        self.log(f"eval step {st.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
                patience = self.eval_cfg.early_stopping_patience
                early = patience > 0 and st.evals_without_improvement >= patience
                if (cfg.save_every and st.step % cfg.save_every == 0) or is_last or early:
                    self._save_checkpoint(st)
                if early:
                    stopped = "early_stopping"
                    break
                if timed_out:
                    stopped = "time_limit"
                    break
        finally:
            if bar is not None:
                bar.close()
        self._save_model_dir(self.final_dir)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _peak_rss()
        return TrainResult(self.run_dir, st.step, stopped, last_eval, st.best_metric,
                           st.train_time_s, st.tokens_seen, peak, st.examples_truncated, st.teacher_flops,
                           st.examples_seen)

    @staticmethod
    def _n_targets(batch: Batch) -> int:
        for key in ("labels", "tag_labels"):  # (tag_labels: token classification's tags)
            if key in batch:
                return int((batch[key] != -100).sum())
        return int(batch["class_labels"].numel())


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (CPU runs)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(kb) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return 0
