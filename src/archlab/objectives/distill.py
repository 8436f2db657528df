"""Knowledge distillation (Hinton et al. 2015; DistilBERT: Sanh et al. 2019).

A trained *teacher* supplies soft targets: at every position where the student's own objective
(``base``: seq2seq, causal-lm, masked-lm, classification, ...) predicts a token, the student is
pulled toward the teacher's distribution softened at temperature ``T``:

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
           + (1 - alpha) * (the base objective's loss)
           + cosine * (1 - cos(h_s, h_t))

The ``T^2`` keeps the soft-target gradients on the scale of the hard-target ones as ``T``
changes (Hinton et al. 2015, Sec. 2). The cosine term is DistilBERT's alignment of the last
hidden states (only when student and teacher have the same width).

Student and teacher may be of different families: the teacher reads the same examples in its
own layout (a seq2seq pair is ``<bos> src <sep> tgt <eos>`` for a decoder-only model and
``src <eos>`` -> ``tgt <eos>`` for an encoder-decoder one), built with the same random draws,
and the predicted positions of both are matched row by row in order (they predict the same
target tokens; positions where truncation makes the two disagree are left out). So an
encoder-decoder teacher distils into a decoder-only student for translation (token-level KD of
Kim & Rush 2016).

The teacher is an archlab run or model directory, or a Hugging Face checkpoint directory
(imported with ``archlab.convert``), and must share the student's tokenizer. It runs in eval
mode under ``torch.inference_mode``; its forward FLOPs per batch (:meth:`teacher_flops`) are
counted into the run's FLOPs by the trainer. Evaluation reports the base objective's loss,
comparable with runs trained without a teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from archlab.errors import ArchlabError, ConfigError
from archlab.objectives.base import (
    IGNORE,
    Batch,
    Example,
    LossOutput,
    Objective,
    SpecialTokens,
    lm_loss_head,
    model_config,
    with_aux,
)
from archlab.objectives.registry import BASE_OBJECTIVES, make_base_objective

KEY = "objective.options"
_T = "teacher_"  # prefix of the teacher's batch tensors (when its layout differs)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, averaged over rows: (N, V), (N, V) -> scalar."""
    T = temperature
    log_ps = F.log_softmax(student_logits.float() / T, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / T, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (N,)
    return kl.mean() * (T * T)


def load_teacher(path: str | Path) -> tuple[Any, Any | None]:
    """(model in eval mode, its archlab Tokenizer or None) from an archlab run/model directory
    or an HF checkpoint directory."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{KEY}.teacher: {p} is not a directory (an archlab run or model directory, "
                          "or a Hugging Face checkpoint)")
    if (p / "config.json").exists() and not (p / "model.yaml").exists() and not (p / "config.yaml").exists():
        from archlab.convert import from_hf

        try:
            imp = from_hf(p, progress=False)
        except ArchlabError as e:
            raise ConfigError(f"{KEY}.teacher: {e}") from None
        return imp.model.eval(), imp.tokenizer
    from archlab.run import load_run

    try:
        run = load_run(p)
    except ArchlabError as e:
        raise ConfigError(f"{KEY}.teacher: {e}") from None
    return run.model.eval(), run.tokenizer


class Distillation(Objective):
    name = "distillation"
    archs = ("encoder", "decoder", "prefix-lm", "encoder-decoder")

    def __init__(
        self,
        special: SpecialTokens,
        arch: str,
        max_len: int = 512,
        *,
        teacher: Any = None,
        base: str | None = None,
        alpha: float = 0.5,
        temperature: float = 2.0,
        cosine: float = 0.0,
        base_options: dict[str, Any] | None = None,
        decoder_start: int | None = None,
        label_smoothing: float = 0.0,
        max_source_len: int | None = None,
        max_target_len: int | None = None,
    ) -> None:
        budget = {"max_source_len": max_source_len, "max_target_len": max_target_len}
        super().__init__(special, arch, max_len, decoder_start=decoder_start, label_smoothing=label_smoothing,
                         **budget)
        choices = ", ".join(BASE_OBJECTIVES)
        if teacher is None or teacher == "":
            raise ConfigError(f"{KEY}.teacher: distillation needs a teacher (an archlab run or model "
                              "directory, or a Hugging Face checkpoint directory)")
        if base is None or base not in BASE_OBJECTIVES:
            raise ConfigError(f"{KEY}.base: {base!r} is not valid; the student's own objective, one of: {choices}")
        if base == "contrastive":  # soft targets here are token or class distributions, not embeddings
            raise ConfigError(f"{KEY}.base: contrastive is not supported (distillation matches token or class "
                              "distributions); train the bi-encoder with objective contrastive")
        if base == "token-classification":  # (no soft tag targets from a teacher's head yet)
            raise ConfigError(f"{KEY}.base: token-classification is not supported; train the tagger with "
                              "objective token-classification")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"{KEY}.alpha: must be in [0, 1] (weight of the KL term), got {alpha}")
        if not temperature > 0:
            raise ConfigError(f"{KEY}.temperature: must be > 0, got {temperature}")
        if cosine < 0:
            raise ConfigError(f"{KEY}.cosine: must be >= 0, got {cosine}")
        if isinstance(teacher, (str, Path)) and not Path(teacher).is_dir():
            raise ConfigError(f"{KEY}.teacher: {teacher} is not a directory (an archlab run or model "
                              "directory, or a Hugging Face checkpoint)")
        self.teacher_source = teacher
        self.alpha, self.temperature, self.cosine = float(alpha), float(temperature), float(cosine)
        self.base_options = dict(base_options or {})
        self.base = make_base_objective(base, special, arch, max_len, decoder_start=decoder_start,
                                        label_smoothing=label_smoothing, **budget, **self.base_options)
        self.needs = self.base.needs
        self.teacher: Any = None
        self.teacher_base: Objective | None = None
        if isinstance(teacher, torch.nn.Module):
            self.attach(teacher)

    # ---- the teacher --------------------------------------------------------------------
    def prepare(self, tokenizer: Any) -> None:
        """Load the teacher (when given as a path) and check it shares ``tokenizer``."""
        if self.teacher is None:
            model, tok = load_teacher(self.teacher_source)
            if tok is None:
                raise ConfigError(f"{KEY}.teacher: {self.teacher_source} has no tokenizer to check "
                                  "against the student's")
            if tok.sha256 != tokenizer.sha256 or tok.vocab_size != tokenizer.vocab_size:
                raise ConfigError(
                    f"{KEY}.teacher: {self.teacher_source} uses another tokenizer ({tok.vocab_size} tokens, "
                    f"sha256 {tok.sha256[:12]}) than the student ({tokenizer.vocab_size} tokens, sha256 "
                    f"{tokenizer.sha256[:12]}); set tokenizer.path to the teacher's tokenizer")
            self.attach(model)

    def attach(self, teacher: Any) -> None:
        """Use the model ``teacher`` (eval mode, no gradients)."""
        t_arch = teacher.cfg.arch
        try:
            self.teacher_base = make_base_objective(self.base.name, self.special, t_arch, self.max_len,
                                                    decoder_start=teacher.cfg.start_token_id,
                                                    **self.base_options)
        except ConfigError:
            raise ConfigError(f"{KEY}.teacher: a {t_arch} teacher cannot supply {self.base.name} targets "
                              f"(that objective runs on {', '.join(type(self.base).archs)})") from None
        if self.base.name == "masked-lm" and t_arch != self.arch:
            raise ConfigError(f"{KEY}.teacher: masked-lm distillation needs an encoder teacher (got {t_arch})")
        if self.base.name == "classification" and teacher.cfg.n_classes < 1:
            raise ConfigError(f"{KEY}.teacher: the teacher has no classification head (model.n_classes)")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    def check_student(self, model: Any) -> None:
        t = self.teacher.cfg
        student = model_config(model)  # (behind a data-parallel wrapper too)
        if t.vocab_size != student.vocab_size and self.base.name != "classification":
            raise ConfigError(f"{KEY}.teacher: vocab_size {t.vocab_size} differs from the student's "
                              f"{student.vocab_size} (distillation needs one vocabulary)")
        if self.base.name == "classification" and t.n_classes != student.n_classes:
            raise ConfigError(f"{KEY}.teacher: {t.n_classes} classes, the student has {student.n_classes}")
        if self.cosine and t.d_model != student.d_model:
            raise ConfigError(f"{KEY}.cosine: the hidden-state cosine loss needs equal widths (student "
                              f"d_model {student.d_model}, teacher {t.d_model}); set it to 0")

    def _same_layout(self) -> bool:
        return self.teacher.cfg.arch == self.arch or self.base.name in ("causal-lm", "classification",
                                                                        "masked-lm")

    # ---- batches ------------------------------------------------------------------------
    def truncated(self, ex: Example) -> bool:
        return self.base.truncated(ex)  # the student's inputs are the base objective's

    def batch_length(self, ex: Example) -> int:
        return self.base.batch_length(ex)

    def build(self, examples: Sequence[Example], rng: np.random.Generator) -> Batch:
        if self.teacher is None:
            raise ArchlabError("distillation: no teacher attached (call prepare(tokenizer) or attach(model))")
        t_rng = copy.deepcopy(rng)  # the teacher's layout sees the same random draws
        batch = self.base.build(examples, rng)
        if self.base.name == "classification":
            return batch
        if self._same_layout():
            labels = batch["labels"]
            idx = (labels != IGNORE).flatten().nonzero().flatten()
            batch["kd_student_index"] = idx
            batch["kd_teacher_index"] = idx
            return batch
        tb = self.teacher_base.build(examples, t_rng)
        s_idx, t_idx = _align(batch["labels"], tb["labels"])
        batch.update({_T + k: v for k, v in tb.items()})
        batch["kd_student_index"], batch["kd_teacher_index"] = s_idx, t_idx
        return batch

    def _teacher_batch(self, batch: Batch) -> Batch:
        if not any(k.startswith(_T) for k in batch):
            return batch
        return {k[len(_T):]: v for k, v in batch.items() if k.startswith(_T)}

    def _teacher_on(self, model: Any) -> Any:
        p = next(model.parameters())
        q = next(self.teacher.parameters())
        if q.device != p.device:
            self.teacher.to(p.device)
        return self.teacher

    # ---- loss ---------------------------------------------------------------------------
    def forward(self, model: Any, batch: Batch, head: Any = None) -> Any:
        return self.base.forward(model, batch, head)

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        if not model.training:  # evaluation: the student's own loss, comparable across runs
            return self.base.loss(model, batch)
        self.check_student(model)
        teacher = self._teacher_on(model)
        tb = self._teacher_batch(batch)
        # the student runs once, through its forward (a data-parallel wrapper sees every use
        # of its weights); the teacher is a plain module without gradients
        if self.base.name == "classification":
            out = model(batch["input_ids"], batch["attention_mask"], classify=True)
            s_logits = out.class_logits
            y = batch["class_labels"]
            own = LossOutput(F.cross_entropy(s_logits.float(), y), int((y != IGNORE).sum()),
                             int((s_logits.argmax(-1) == y).sum()))
            with torch.inference_mode():
                t_logits = teacher.classify(tb["input_ids"], tb["attention_mask"])
            kd = soft_kl(s_logits, t_logits.clone(), self.temperature)
            total = self.alpha * kd + (1 - self.alpha) * own.loss
            return with_aux(LossOutput(total, own.n_tokens, own.n_correct), out, True)
        smoothing = self.label_smoothing if model.training else 0.0
        ce = lm_loss_head(batch["labels"], smoothing)
        idx = batch["kd_student_index"]

        def head(hidden: torch.Tensor, lm: Any) -> tuple[LossOutput, torch.Tensor | None]:
            hs_sel = hidden.flatten(0, 1)[idx]  # (N, C)
            return ce(hidden, lm), (lm.logits(hs_sel) if hs_sel.shape[0] else None)

        out = self.base.forward(model, batch, head=head)
        own, s_logits = out.head_out
        hs = out.hidden  # (B, T, C)
        with torch.inference_mode():
            ht = self.teacher_base.forward(teacher, tb).hidden  # (B, T', C')
            ht_sel = ht.flatten(0, 1)[batch["kd_teacher_index"]]  # (N, C')
            t_logits = teacher.lm_logits(ht_sel)  # (N, V)
        if s_logits is None:
            return with_aux(own, out, True)
        kd = soft_kl(s_logits, t_logits.clone(), self.temperature)
        total = self.alpha * kd + (1 - self.alpha) * own.loss
        if self.cosine:
            hs_sel = hs.flatten(0, 1)[idx]
            hs_c, ht_c = self._cosine_pairs(hs, ht, batch, hs_sel, ht_sel)
            cos = 1.0 - F.cosine_similarity(hs_c.float(), ht_c.clone().float(), dim=-1).mean()
            total = total + self.cosine * cos
        return with_aux(LossOutput(total, own.n_tokens), out, True)

    def _cosine_pairs(self, hs: torch.Tensor, ht: torch.Tensor, batch: Batch, hs_sel: torch.Tensor,
                      ht_sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DistilBERT aligns the hidden states of every real position; across layouts only the
        matched predicted positions correspond."""
        if _T + "labels" in batch or hs.shape[:2] != ht.shape[:2]:
            return hs_sel, ht_sel
        # the output stack's mask: the decoder's for seq2seq-style batches, else the input's
        m = batch.get("decoder_attention_mask", batch["attention_mask"]).bool()  # (B, T)
        with torch.inference_mode():
            t = ht[m]
        return hs[m], t

    # ---- cost ---------------------------------------------------------------------------
    def teacher_flops(self, batch: Batch) -> int:
        """Forward FLOPs of the teacher on this batch (padded shapes; its LM head only at the
        distilled positions), in the accounting of ``archlab.model.flops``."""
        if self.teacher is None or "input_ids" not in batch:
            return 0
        from archlab.model.flops import flops_per_example

        tb = self._teacher_batch(batch)
        cfg = self.teacher.cfg
        B, S = tb["input_ids"].shape
        n_pred = int(batch["kd_teacher_index"].numel()) if "kd_teacher_index" in batch else 0
        if self.base.name == "causal-lm" and cfg.arch == "encoder-decoder":
            f = flops_per_example(cfg, src_len=1, tgt_len=S, predicted=0)
        elif cfg.arch == "encoder-decoder":
            f = flops_per_example(cfg, src_len=S, tgt_len=tb["decoder_input_ids"].shape[1], predicted=0)
        elif cfg.arch == "encoder":
            f = flops_per_example(cfg, src_len=S, predicted=0)
        else:
            pre = tb.get("prefix_lengths")
            prefix = int(pre.float().mean()) if pre is not None and cfg.arch == "prefix-lm" else 0
            f = flops_per_example(cfg, tgt_len=S, prefix_len=prefix, predicted=0)
        head = 2 * cfg.d_model * cfg.vocab_size * n_pred
        if cfg.arch == "encoder" and cfg.mlm_transform:
            head += 2 * cfg.d_model * cfg.d_model * n_pred
        if self.base.name == "classification":
            head = B * 2 * (cfg.d_model * cfg.d_model + cfg.d_model * cfg.n_classes)
        return B * f.forward + head


def _align(s_labels: torch.Tensor, t_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of matching predicted positions: row by row, the k-th predicted position of
    the student with the k-th of the teacher, kept where both predict the same token."""
    Ts, Tt = s_labels.shape[1], t_labels.shape[1]
    s_out, t_out = [], []
    for b in range(s_labels.shape[0]):
        sp = (s_labels[b] != IGNORE).nonzero().flatten()
        tp = (t_labels[b] != IGNORE).nonzero().flatten()
        n = min(len(sp), len(tp))
        sp, tp = sp[:n], tp[:n]
        same = s_labels[b, sp] == t_labels[b, tp]
        s_out.append(sp[same] + b * Ts)
        t_out.append(tp[same] + b * Tt)
    return torch.cat(s_out), torch.cat(t_out)


@torch.inference_mode()
def kl_to_teacher(student: Any, objective: Distillation, examples: Sequence[Example], *,
                  batch_size: int = 32, seed: int = 0) -> float:
    """Mean per-token KL(teacher || student) at temperature 1 over the distilled positions of
    ``examples`` (held-out data): how close the student's predictions are to the teacher's."""
    was = student.training
    student.eval()
    teacher = objective._teacher_on(student)
    rng = np.random.default_rng(seed)
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        b = objective.build(examples[i : i + batch_size], rng)
        tb = objective._teacher_batch(b)
        if objective.base.name == "classification":
            s = student.classify(b["input_ids"], b["attention_mask"])
            t = teacher.classify(tb["input_ids"], tb["attention_mask"])
        else:
            s = student.lm_logits(objective.base.forward(student, b).hidden.flatten(0, 1)[b["kd_student_index"]])
            t = teacher.lm_logits(objective.teacher_base.forward(teacher, tb).hidden.flatten(0, 1)
                                  [b["kd_teacher_index"]])
        total += float(soft_kl(s, t, 1.0)) * s.shape[0]
        n += s.shape[0]
    student.train(was)
    return total / max(n, 1)
