"""Jamba (Lieber et al. 2024; transformers ``models/jamba``): ``JambaForCausalLM``, dense or with
its mixture-of-experts feed-forwards. ``JambaMambaMixer`` has RMSNorms on dt, B and C; the
attention has no position encoding; ``JambaSparseMoeBlock`` routes by top-k of a softmax
*without* renormalising the k weights, unlike Mixtral.
"""

from __future__ import annotations

import math
from typing import Any

from archlab.config import ModelConfig
from archlab.convert.families.base import (
    _GATED,
    _UNGATED,
    ExpertRule,
    Family,
    Rule,
    _cat,
    _first_id,
    _hf_act,
    _lin,
)
from archlab.convert.families.ssm import _expand, _mixer_rules, _rank, _ssm_problems
from archlab.errors import ArchlabError


def _period(mixers: list[str], kind: str = "attention") -> tuple[int, int] | None:
    """(period, offset) with layer i of ``kind`` iff i % period == offset (Jamba's
    attn_layer_period / attn_layer_offset, and expert_layer_* with kind "moe")."""
    n = len(mixers)
    for period in range(1, n + 1):
        for off in range(period):
            if all((m == kind) == (i % period == off) for i, m in enumerate(mixers)):
                return period, off
    return None


def _layer_period(hf: dict[str, Any], what: str, period: int, off: int) -> tuple[int, int]:
    p, o = hf.get(f"{what}_layer_period", period), hf.get(f"{what}_layer_offset", off)
    if not (isinstance(p, int) and isinstance(o, int) and p >= 1 and 0 <= o < p):
        raise ArchlabError(f"jamba: {what}_layer_period={p!r}, {what}_layer_offset={o!r}: need "
                           "period >= 1 and 0 <= offset < period")
    return p, o


class Jamba(Family):
    name = "jamba"
    model_type = "jamba"
    prefix = "model."
    architectures = ("JambaForCausalLM",)

    def model_config(self, hf, arch, ck):
        E, k = int(hf.get("num_experts", 16)), int(hf.get("num_experts_per_tok", 2))
        if E < 1:
            raise ArchlabError(f"jamba: num_experts={E} must be >= 1")
        act = _hf_act(hf.get("hidden_act", "silu"), "hidden_act", "jamba")
        if act not in _GATED:
            raise ArchlabError(f"jamba: hidden_act={hf.get('hidden_act')!r} has no gated form in archlab")
        if hf.get("mamba_proj_bias", False):
            raise ArchlabError("jamba: mamba_proj_bias=true is not supported")
        d, h = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        if d % h:
            raise ArchlabError(f"jamba: hidden_size={d} is not divisible by num_attention_heads={h}")
        n = hf.get("num_hidden_layers", 32)
        period, off = _layer_period(hf, "attn", 8, 4)
        layers = "".join("A" if i % period == off else "M" for i in range(n))
        # JambaConfig.layers_num_experts: layer i is sparse iff i % period == offset (and E > 1)
        eperiod, eoff = _layer_period(hf, "expert", 2, 1)
        ffn = "".join("E" if E > 1 and i % eperiod == eoff else "D" for i in range(n))
        # JambaTopKRouter: softmax, top-k, the k weights left as they are (norm_topk false)
        moe = None if "E" not in ffn else {
            "n_experts": E, "top_k": k, "router": "topk-softmax", "norm_topk": False,
            # transformers adds it to the loss only with output_router_logits=True (as Mixtral)
            "aux_loss_coef": float(hf.get("router_aux_loss_coef", 0.001))}
        tied = bool(hf.get("tie_word_embeddings", False))
        p = ck.prefix
        if not ck.has("lm_head.weight"):
            tied = True
        elif ck.differs("lm_head.weight", f"{p}embed_tokens.weight"):
            tied = False
        pad = _first_id(hf.get("pad_token_id"))
        return dict(
            arch="decoder", vocab_size=hf.get("vocab_size", 65536), d_model=d, n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads") or h, n_layers=n,
            d_ff=hf.get("intermediate_size", 14336), layers=layers, ffn=ffn, moe=moe,
            max_seq_len=hf.get("max_position_embeddings", 262144), position="none",
            attn_dropout=float(hf.get("attention_dropout", 0.0) or 0.0), norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6), norm_position="pre", final_norm=True,
            activation=_GATED[act], bias=False, tie_embeddings=tied,
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad if pad is not None else 0,
            bos_token_id=_first_id(hf.get("bos_token_id", 1)) or 0,
            eos_token_id=_first_id(hf.get("eos_token_id", 2)) or 0,
            ssm=dict(d_state=hf.get("mamba_d_state", 16), d_conv=hf.get("mamba_d_conv", 4),
                     expand=1, d_inner=int(hf.get("mamba_expand", 2) * d),
                     dt_rank=_rank(hf.get("mamba_dt_rank", "auto"), d),
                     conv_bias=bool(hf.get("mamba_conv_bias", True)), proj_bias=False, dtbc_norm=True),
        )

    def rules(self, cfg, prefix):
        p = prefix
        q, kv = cfg.n_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head
        r = [Rule("embed_tokens.weight", (f"{p}embed_tokens.weight",))]
        for i, (m, f) in enumerate(cfg.layer_kinds("decoder")):
            L, A = f"{p}layers.{i}.", f"decoder.blocks.{i}."
            if m == "attention":
                r += _lin(A + "attn_norm", L + "input_layernorm", False)
                r += _cat(A + "attn.qkv", [L + "self_attn.q_proj", L + "self_attn.k_proj",
                                           L + "self_attn.v_proj"], [q, kv, kv], False)
                r += _lin(A + "attn.o", L + "self_attn.o_proj", False)
            else:
                r += _lin(A + "ssm_norm", L + "input_layernorm", False)
                r += _mixer_rules(A + "ssm", L + "mamba", "mamba", cfg)
            r += _lin(A + "mlp_norm", L + "pre_ff_layernorm", False)
            ff = L + "feed_forward."
            if f == "moe":
                # per-expert gate/up/down on disk; transformers 5 fuses them in memory into
                # experts.gate_up_proj (E, 2I, H) = [gate; up] and experts.down_proj (E, H, I),
                # archlab's w_in / w_out layout (see mixtral.py)
                E = cfg.moe_cfg.n_experts
                r.append(Rule(A + "mlp.router.weight", (ff + "router.weight",)))
                r.append(ExpertRule(A + "mlp.w_in", tuple(f"{ff}experts.{e}.{w}.weight" for e in range(E)
                                                          for w in ("gate_proj", "up_proj")),
                                    op="experts", alt=(ff + "experts.gate_up_proj",), per=2))
                r.append(ExpertRule(A + "mlp.w_out", tuple(f"{ff}experts.{e}.down_proj.weight"
                                                           for e in range(E)),
                                    op="experts", alt=(ff + "experts.down_proj",), per=1))
                continue
            r += _cat(A + "mlp.w_in", [ff + "gate_proj", ff + "up_proj"], [cfg.d_ff, cfg.d_ff], False)
            r += _lin(A + "mlp.w_out", ff + "down_proj", False)
        r += _lin("decoder.final_norm", f"{p}final_layernorm", False)
        if not cfg.tie_embeddings:
            r.append(Rule("lm_head.weight", ("lm_head.weight",)))
        return r

    def aliases(self, cfg, prefix):
        return {"lm_head.weight": f"{prefix}embed_tokens.weight"} if cfg.tie_embeddings else {}

    def problems(self, cfg):
        p = _ssm_problems(cfg, self.name, {"mamba", "attention"}, "dense", ("moe",))
        s = cfg.ssm_cfg
        if cfg.arch == "decoder" and _period([m for m, _ in cfg.layer_kinds("decoder")]) is None:
            p.append(f"layers is {cfg.layers!r} (jamba needs one attention layer every "
                     "attn_layer_period layers)")
        if cfg.arch == "decoder" and cfg.has_moe:
            p += self._moe_problems(cfg)
        if not cfg.gated or cfg.bias:
            p.append("the feed-forward is not a bias-free gated MLP (jamba's)")
        if cfg.position != "none":
            p.append(f"position is {cfg.position} (jamba's attention has no position encoding)")
        if cfg.head_dim is not None and cfg.head_dim * cfg.n_heads != cfg.d_model:
            p.append(f"head_dim is {cfg.head_dim} (jamba needs d_model / n_heads)")
        if cfg.attn_scale is not None and not math.isclose(cfg.attn_scale, cfg.dim_head ** -0.5):
            p.append(f"attn_scale is {cfg.attn_scale} (jamba scales by head_dim^-0.5)")
        if s.proj_bias:
            p.append("ssm.proj_bias is set (jamba's Mamba projections have no bias)")
        if s.dt_limit is not None:
            p.append("ssm.dt_limit is set (jamba has no dt limit)")
        return p

    def _moe_problems(self, cfg: ModelConfig) -> list[str]:
        p: list[str] = []
        m = cfg.moe_cfg
        if _period([f for _, f in cfg.layer_kinds("decoder")], "moe") is None:
            p.append(f"ffn is {cfg.ffn!r} (jamba needs one MoE layer every expert_layer_period "
                     "layers, dense ones between)")
        # Jamba gates by the top-k softmax probabilities: archlab's topk-softmax without
        # renormalisation, or switch (top-1 by its probability)
        if m.router == "sigmoid-bias" or (m.router == "topk-softmax" and m.norm_topk):
            what = "topk-softmax with norm_topk true" if m.router == "topk-softmax" else m.router
            p.append(f"moe.router is {what} (jamba gates by the top-k softmax probabilities, not "
                     "renormalised: topk-softmax with norm_topk false)")
        if m.capacity_factor is not None:
            p.append(f"moe.capacity_factor is {m.capacity_factor} (jamba is dropless)")
        if m.n_shared_experts:
            p.append(f"moe.n_shared_experts is {m.n_shared_experts} (jamba has none)")
        if m.d_expert(cfg.d_ff) != cfg.d_ff:
            p.append(f"moe.d_ff_expert is {m.d_ff_expert} (jamba's experts have width d_ff={cfg.d_ff})")
        return p

    def hf_config(self, cfg, arch):
        s = cfg.ssm_cfg
        period, off = _period([m for m, _ in cfg.layer_kinds("decoder")]) or (1, 0)
        act = _UNGATED[cfg.activation]
        m = cfg.moe_cfg
        if cfg.has_moe:
            experts = {"num_experts": m.n_experts, "num_experts_per_tok": m.top_k,
                       "router_aux_loss_coef": m.balance_coef, "output_router_logits": False}
            eperiod, eoff = _period([f for _, f in cfg.layer_kinds("decoder")], "moe") or (1, 0)
        else:
            experts = {"num_experts": 1, "num_experts_per_tok": 1}
            eperiod, eoff = 1, 0
        return {
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads, "hidden_act": act, "rms_norm_eps": cfg.norm_eps,
            "max_position_embeddings": cfg.max_seq_len, "attention_dropout": cfg.attn_dropout or 0.0,
            "initializer_range": cfg.init_std, **experts,
            "expert_layer_period": eperiod, "expert_layer_offset": eoff,
            "attn_layer_period": period, "attn_layer_offset": off,
            "mamba_d_state": s.d_state, "mamba_d_conv": s.d_conv, "mamba_expand": _expand(cfg),
            "mamba_dt_rank": s.rank(cfg.d_model), "mamba_conv_bias": s.conv_bias,
            "mamba_proj_bias": False, "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
        }
