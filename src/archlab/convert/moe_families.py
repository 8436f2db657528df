"""Hugging Face mixture-of-experts families: Mixtral (Jiang et al. 2024) and Switch
Transformers (Fedus et al. 2022; see :class:`SwitchTransformers`).

``MixtralForCausalLM`` is a Llama block whose MLP is a top-k softmax MoE (renormalised gates,
no shared experts, no capacity): archlab's ``ffn: E*`` with ``moe.router: topk-softmax``.

Expert weights come in two layouts. On disk (what ``save_pretrained`` writes, also in
transformers 5, which converts on load) each expert is separate:
``block_sparse_moe.experts.{e}.w1`` (gate), ``w3`` (up), ``w2`` (down), and the router is
``block_sparse_moe.gate``. In memory, transformers 5 fuses them: ``mlp.experts.gate_up_proj``
(E, 2I, H) as [gate; up], ``mlp.experts.down_proj`` (E, H, I), router ``mlp.gate``. archlab's
``mlp.w_in`` (E, 2F, C) is [gate; up] per expert and ``mlp.w_out`` (E, C, F), so the fused
tensors copy as they are; the per-expert ones are concatenated and stacked. Import reads
either; export writes the on-disk layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from archlab.convert.families import T5, Family, Llama, Rule, _lin
from archlab.errors import ArchlabError


@dataclass(frozen=True)
class ExpertRule(Rule):
    """archlab's stacked (E, out, in) expert tensor <-> E per-expert HF tensors (``per`` of
    them per expert, concatenated along dim 0: [w1; w3] for w_in), or one fused 3-D tensor
    (an ``alt`` name)."""

    per: int = 1

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if len(tensors) == 1 and tensors[0].dim() == 3:  # fused (transformers 5 in memory)
            return tensors[0]
        groups = [tensors[i:i + self.per] for i in range(0, len(tensors), self.per)]
        return torch.stack([torch.cat(g, 0) for g in groups])

    def to_theirs(self, t: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for e in range(t.shape[0]):
            out += list(t[e].chunk(self.per, 0)) if self.per > 1 else [t[e]]
        return [x.contiguous() for x in out]


class Mixtral(Llama):
    name = "mixtral"
    model_type = "mixtral"
    prefix = "model."
    architectures = ("MixtralForCausalLM",)

    def model_config(self, hf, arch, ck):
        sw = hf.get("sliding_window")
        max_len = hf.get("max_position_embeddings", 4096 * 32)
        if sw is not None and sw < max_len:
            raise ArchlabError(f"mixtral: sliding_window={sw} is not supported (archlab attends the "
                               f"whole context); set it to null or >= max_position_embeddings={max_len}")
        if hf.get("mlp_bias") or hf.get("attention_bias"):
            raise ArchlabError("mixtral: biases are not part of Mixtral")
        kw = super().model_config(hf, arch, ck)
        E = int(hf.get("num_local_experts", 8))
        k = int(hf.get("num_experts_per_tok", 2))
        kw.update(
            ffn="E*",
            moe={"n_experts": E, "top_k": k, "router": "topk-softmax",
                 "aux_loss_coef": float(hf.get("router_aux_loss_coef", 0.001)),
                 # HF scales the hidden states seen by router and experts; archlab the router
                 # input only (Switch's definition); both only in training
                 "router_jitter": float(hf.get("router_jitter_noise", 0.0) or 0.0)},
        )
        return kw

    def rules(self, cfg, prefix):
        p = prefix
        # the Llama rules give attention, norms and embeddings; the MoE rules replace the MLP
        dense = [r for r in super().rules(cfg.replace(ffn=None, moe=None), prefix)
                 if ".mlp.w_" not in r.ours]
        E, F = cfg.moe_cfg.n_experts, cfg.moe_cfg.d_expert(cfg.d_ff)
        r: list[Rule] = []
        for i in range(cfg.n_layers):
            L, A = f"{p}layers.{i}.", f"decoder.blocks.{i}.mlp."
            moe = L + "block_sparse_moe."
            r.append(Rule(A + "router.weight", (moe + "gate.weight",), alt=(L + "mlp.gate.weight",)))
            r.append(ExpertRule(A + "w_in", tuple(f"{moe}experts.{e}.{w}.weight" for e in range(E)
                                                  for w in ("w1", "w3")),
                                op="experts", sizes=(F, F), alt=(L + "mlp.experts.gate_up_proj",), per=2))
            r.append(ExpertRule(A + "w_out", tuple(f"{moe}experts.{e}.w2.weight" for e in range(E)),
                                op="experts", alt=(L + "mlp.experts.down_proj",), per=1))
        return dense + r

    def problems(self, cfg):
        # the Llama block's problems plus the MoE ones (a dense model stays closer to llama)
        p = [x.replace("llama", "mixtral") for x in super().problems(cfg.replace(ffn=None, moe=None))]
        if cfg.layers is not None and any(m != "attention" for m, _ in cfg.all_layer_kinds()):
            p.append(f"layers pattern is {cfg.layers!r} (mixtral layers are attention)")
        if not cfg.has_moe or any(f != "moe" for _, f in cfg.all_layer_kinds()):
            p.append(f"ffn pattern is {cfg.ffn!r} (mixtral has an MoE feed-forward in every layer: E*)")
            return p
        m = cfg.moe_cfg
        if m.router != "topk-softmax":
            p.append(f"moe.router is {m.router} (mixtral routes by top-k softmax)")
        elif not m.norm_topk:
            p.append("moe.norm_topk is false (mixtral renormalises the top-k gates)")
        if m.capacity_factor is not None:
            p.append(f"moe.capacity_factor is {m.capacity_factor} (mixtral is dropless)")
        if m.n_shared_experts:
            p.append(f"moe.n_shared_experts is {m.n_shared_experts} (mixtral has none)")
        if cfg.bias:
            p.append("bias is True (mixtral has no biases)")
        return p

    def hf_config(self, cfg, arch):
        out = super().hf_config(cfg.replace(ffn=None, moe=None), arch)
        for k in ("attention_bias", "mlp_bias"):
            out.pop(k, None)
        m = cfg.moe_cfg
        out.update({
            "intermediate_size": m.d_expert(cfg.d_ff),
            "num_local_experts": m.n_experts,
            "num_experts_per_tok": m.top_k,
            "router_aux_loss_coef": m.balance_coef,
            "router_jitter_noise": m.router_jitter,
            "output_router_logits": False,
            "sliding_window": None,
        })
        return out


MOE_FAMILIES: tuple[Family, ...] = (Mixtral(),)
MOE_DEFAULT_ARCHITECTURE: dict[str, str] = {"mixtral": "MixtralForCausalLM"}



# ---------------------------------------------------------------------------------------------
# Switch Transformers (Fedus et al. 2022)
# ---------------------------------------------------------------------------------------------


def _switch_pattern(n: int, step: int) -> str:
    """transformers' SwitchTransformersStack: layer i of n is sparse iff ``i % step == 1 or
    step == 1``, none for step <= 0."""
    return "".join("E" if step > 0 and (i % step == 1 or step == 1) else "D" for i in range(n))


def _switch_step(hf: dict[str, Any], side: str, n: int) -> int:
    """The ``{side}_sparse_step`` transformers builds the ``side`` stack (n layers) from.

    SwitchTransformersConfig derives it from ``num_sparse_{side}_layers`` (n // num, or n for
    num 0: its "no sparse layers" hack, which still makes layer 1 sparse when n > 1), then
    sets the extra keys of config.json as attributes, so a saved ``{side}_sparse_step`` (every
    ``save_pretrained`` writes it) overrides the derived one."""
    key = f"{side}_sparse_step"
    if key in hf:
        step = hf[key]
        if not isinstance(step, int) or isinstance(step, bool):
            raise ArchlabError(f"switch_transformers: {key}={step!r} is not an integer")
        return step
    nkey = f"num_sparse_{side}_layers"
    num = hf.get(nkey, 3)
    if not isinstance(num, int) or isinstance(num, bool):
        raise ArchlabError(f"switch_transformers: {nkey}={num!r} is not an integer")
    return n // num if num > 0 else n


def _switch_export(kinds: list[str]) -> tuple[int, int] | None:
    """(sparse step, num_sparse_*_layers) that make transformers build the layer pattern
    ``kinds`` (ffn kinds of one stack), None if no step does. Where a num_sparse gives the step
    (n // num) both agree, so a reader that derives the step from num_sparse builds the same
    layers; otherwise num_sparse is the count of sparse layers and the step decides."""
    n = len(kinds)
    pattern = "".join("E" if f == "moe" else "D" for f in kinds)
    for num in range(1, n + 1):
        if _switch_pattern(n, n // num) == pattern:
            return n // num, num
    for step in range(n + 1):  # a step > n gives step n's pattern
        if _switch_pattern(n, step) == pattern:
            return step, pattern.count("E")
    return None


class SwitchTransformers(T5):
    """``SwitchTransformersForConditionalGeneration``: T5 v1.0 blocks (ReLU, relative buckets,
    tied head scaled by d^-0.5) whose feed-forward is a top-1 switch MoE in the layers
    ``{encoder,decoder}_sparse_step`` selects (see :func:`_switch_step`). HF caps each expert at ``expert_capacity`` tokens *per sequence* (drops the rest);
    archlab imports the router dropless, which equals HF while no sequence sends more than
    ``expert_capacity`` tokens to one expert (the tests check such inputs), and exports with
    ``expert_capacity`` = max_seq_len, where nothing drops."""

    name = "switch_transformers"
    model_type = "switch_transformers"
    prefix = ""
    architectures = ("SwitchTransformersForConditionalGeneration",)

    def model_config(self, hf, arch, ck):
        if hf.get("router_bias"):
            raise ArchlabError("switch_transformers: router_bias=true is not supported (archlab's "
                               "router has no bias)")
        if str(hf.get("feed_forward_proj", "relu")).startswith("gated"):
            raise ArchlabError("switch_transformers: gated feed_forward_proj is not supported")
        # SwitchTransformersForConditionalGeneration scales the head by d_model^-0.5 iff
        # tie_word_embeddings (it has no scale_decoder_outputs, which T5 reads first)
        kw = super().model_config({k: v for k, v in hf.items() if k != "scale_decoder_outputs"}, arch, ck)
        n_enc = hf.get("num_layers", 12)
        n_dec = hf.get("num_decoder_layers") or n_enc
        enc = _switch_pattern(n_enc, _switch_step(hf, "encoder", n_enc))
        dec = _switch_pattern(n_dec, _switch_step(hf, "decoder", n_dec))
        if "E" in enc + dec:
            kw["ffn"] = f"{enc}/{dec}"
            kw["moe"] = {"n_experts": int(hf.get("num_experts", 8)), "top_k": 1, "router": "switch",
                         "aux_loss_coef": float(hf.get("router_aux_loss_coef", 0.001)),
                         "z_loss_coef": float(hf.get("router_z_loss_coef", 0.001)),
                         "router_jitter": float(hf.get("router_jitter_noise", 0.01) or 0.0)}
        return kw

    def _mlp(self, cfg, ours, theirs):  # dense layers: layer.N.mlp.wi / wo
        return _lin(ours + "mlp.w_in", theirs + "mlp.wi", False) + _lin(ours + "mlp.w_out", theirs + "mlp.wo", False)

    def rules(self, cfg, prefix):
        out = []
        moe_layers = set()
        for side in ("encoder", "decoder"):
            for i, (_, f) in enumerate(cfg.layer_kinds(side)):
                if f == "moe":
                    moe_layers.add(f"{side}.blocks.{i}.mlp.")
        for r in super().rules(cfg, prefix):
            if any(r.ours.startswith(m) for m in moe_layers):
                continue
            out.append(r)
        E = cfg.moe_cfg.n_experts
        for m in sorted(moe_layers):
            side, _, i = m.split(".")[:3]
            ff = f"{side}.block.{i}.layer.{2 if side == 'decoder' else 1}.mlp."
            out.append(Rule(m + "router.weight", (ff + "router.classifier.weight",)))
            out.append(ExpertRule(m + "w_in", tuple(f"{ff}experts.expert_{e}.wi.weight" for e in range(E)),
                                  op="experts"))
            out.append(ExpertRule(m + "w_out", tuple(f"{ff}experts.expert_{e}.wo.weight" for e in range(E)),
                                  op="experts"))
        return out

    def problems(self, cfg):
        p = [x.replace("t5", "switch_transformers")
             for x in super().problems(cfg.replace(ffn=None, moe=None))]
        if cfg.layers is not None and any(m != "attention" for m, _ in cfg.all_layer_kinds()):
            p.append(f"layers pattern is {cfg.layers!r} (switch_transformers layers are attention)")
        if not cfg.has_moe:
            p.append("no MoE layers (a dense model is a t5)")
            return p
        for side in ("encoder", "decoder"):
            if not (cfg.encoder_layers if side == "encoder" else cfg.decoder_layers):
                continue  # a decoder-only model (its arch is already a problem)
            kinds = [f for _, f in cfg.layer_kinds(side)]
            if _switch_export(kinds) is None:
                p.append(f"{side} ffn pattern {''.join('E' if f == 'moe' else 'D' for f in kinds)} is not "
                         "one transformers builds (layer i sparse iff i % step == 1, all for step 1, "
                         "none for step 0)")
        m = cfg.moe_cfg
        if m.router != "switch":
            p.append(f"moe.router is {m.router} (switch_transformers routes top-1 by softmax: switch)")
        if m.capacity_factor is not None:
            p.append(f"moe.capacity_factor is {m.capacity_factor} (exported dropless: expert_capacity "
                     "= max_seq_len; set it to null)")
        if m.n_shared_experts or m.d_expert(cfg.d_ff) != cfg.d_ff:
            p.append("moe.n_shared_experts / d_ff_expert are set (switch experts have width d_ff)")
        if cfg.gated:
            p.append(f"activation is {cfg.activation} (switch experts are not gated)")
        return p

    def extra_tensors(self, cfg, arch, state):
        out = super().extra_tensors(cfg, arch, state)
        if cfg.lm_head_scale == 1.0:
            # tie_word_embeddings=false (the only way to an unscaled head here): transformers
            # then ties neither stack's embed_tokens to shared.weight, so both are written
            for side in ("encoder", "decoder"):
                out[f"{side}.embed_tokens.weight"] = state["embed_tokens.weight"]
        return out

    def hf_config(self, cfg, arch):
        out = super().hf_config(cfg.replace(ffn=None, moe=None), arch)
        out.pop("scale_decoder_outputs", None)  # Switch scales the head iff tie_word_embeddings
        m = cfg.moe_cfg
        enc_step, enc_num = _switch_export([f for _, f in cfg.layer_kinds("encoder")]) or (0, 0)
        dec_step, dec_num = _switch_export([f for _, f in cfg.layer_kinds("decoder")]) or (0, 0)
        out.update({
            "num_experts": m.n_experts,
            "expert_capacity": cfg.max_seq_len,
            # the steps are what transformers builds the stacks from (they override num_sparse)
            "num_sparse_encoder_layers": enc_num,
            "num_sparse_decoder_layers": dec_num,
            "encoder_sparse_step": enc_step,
            "decoder_sparse_step": dec_step,
            "router_bias": False,
            "router_jitter_noise": m.router_jitter,
            "router_dtype": "float32",
            "router_ignore_padding_tokens": False,
            "router_z_loss_coef": m.z_loss_coef,
            "router_aux_loss_coef": m.balance_coef,
        })
        return out


MOE_FAMILIES = (Mixtral(), SwitchTransformers())
MOE_DEFAULT_ARCHITECTURE["switch_transformers"] = "SwitchTransformersForConditionalGeneration"

__all__ = ["MOE_DEFAULT_ARCHITECTURE", "MOE_FAMILIES", "ExpertRule", "Mixtral", "SwitchTransformers"]
