"""Shared rules of the state-space families (Mamba, Mamba-2, Jamba; transformers
``models/{mamba,mamba2,jamba}``): the mixer's tensors, its config fields, and what an exported
SSM family cannot hold. :class:`_PureSSM` is the (norm, mixer) stack of MambaForCausalLM and
Mamba2ForCausalLM (``backbone.layers.{i}.mixer``).
"""

from __future__ import annotations

import math
from typing import Any

from archlab.config import ModelConfig
from archlab.convert.families.base import Family, Rule, _lin

_MAMBA1 = ("A_log", "D", "conv1d.weight", "in_proj.weight", "x_proj.weight", "dt_proj.weight",
           "dt_proj.bias", "out_proj.weight")
_MAMBA2 = ("dt_bias", "A_log", "D", "conv1d.weight", "in_proj.weight", "norm.weight", "out_proj.weight")


def _mixer_rules(ours: str, theirs: str, kind: str, cfg: ModelConfig) -> list[Rule]:
    s = cfg.ssm_cfg
    names = list(_MAMBA1 if kind == "mamba" else _MAMBA2)
    if s.conv_bias:
        names.append("conv1d.bias")
    if s.proj_bias:
        names += ["in_proj.bias", "out_proj.bias"]
    if s.dtbc_norm:
        names += ["dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight"]
    return [Rule(f"{ours}.{n}", (f"{theirs}.{n}",)) for n in names]


def _expand(cfg: ModelConfig) -> float | int:
    di = cfg.ssm_cfg.inner(cfg.d_model)
    return di // cfg.d_model if di % cfg.d_model == 0 else di / cfg.d_model


def _inner(hf: dict[str, Any], d: int, key: str = "expand") -> int:
    return int(hf.get("intermediate_size") or int(hf.get(key, 2) * d))


def _rank(v: Any, d: int) -> int | None:
    r = math.ceil(d / 16) if v in (None, "auto") else int(v)
    return None if r == math.ceil(d / 16) else r


def _ssm_problems(cfg: ModelConfig, n: str, mixers: set[str], ffn: str,
                  ffns: tuple[str, ...] = ()) -> list[str]:
    """What an exported SSM family cannot hold (besides the layer pattern)."""
    p: list[str] = []
    s = cfg.ssm_cfg
    if cfg.arch != "decoder":
        p.append(f"arch is {cfg.arch} ({n} is a decoder)")
    if cfg.norm != "rmsnorm" or cfg.norm_position != "pre" or not cfg.use_final_norm:
        p.append(f"norm is {cfg.norm_position}-{cfg.norm} ({n} is pre-RMSNorm with a final norm)")
    if cfg.embedding_norm or cfg.type_vocab_size or cfg.embed_scale != 1.0 or cfg.lm_head_scale != 1.0 \
            or cfg.lm_head_bias or cfg.n_classes or cfg.n_tags:
        p.append(f"embedding norm / token types / scales / output bias / classifier are set ({n} has none)")
    if cfg.position in ("learned", "sinusoidal"):
        p.append(f"position is {cfg.position} ({n} adds no position embeddings)")
    if s.norm_eps is not None and s.norm_eps != cfg.norm_eps:
        p.append(f"ssm.norm_eps is {s.norm_eps} ({n} uses the model's norm eps)")
    kinds = cfg.layer_kinds("decoder") if cfg.arch == "decoder" else []
    if any(m not in mixers for m, _ in kinds):
        p.append(f"layers is {cfg.layers!r} ({n} has {'/'.join(sorted(mixers))} layers only)")
    if any(f not in (ffn, *ffns) for _, f in kinds):
        what = "no" if ffn == "none" else "a dense or MoE" if ffns else "a dense"
        p.append(f"ffn is {cfg.ffn!r} ({n} layers have {what} feed-forward)")
    if "mamba" in mixers and (s.dtbc_norm != (n == "jamba")):
        p.append(f"ssm.dtbc_norm is {s.dtbc_norm} ({n} {'has' if n == 'jamba' else 'has no'} dt/B/C norms)")
    return p


class _PureSSM(Family):
    """A stack of (norm, Mamba mixer) layers as HF's MambaForCausalLM / Mamba2ForCausalLM lay
    it out (``backbone.layers.{i}.mixer``); the two differ only in the mixer."""

    prefix = "backbone."
    mixer = "mamba"

    def rules(self, cfg, prefix):
        p = prefix
        r = [Rule("embed_tokens.weight", (f"{p}embeddings.weight",))]
        for i in range(cfg.n_layers):
            r += _lin(f"decoder.blocks.{i}.ssm_norm", f"{p}layers.{i}.norm", False)
            r += _mixer_rules(f"decoder.blocks.{i}.ssm", f"{p}layers.{i}.mixer", self.mixer, cfg)
        r += _lin("decoder.final_norm", f"{p}norm_f", False)
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        return {"lm_head.weight": f"{prefix}embeddings.weight"} if cfg.tie_embeddings else {}
