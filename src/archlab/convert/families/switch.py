"""Switch Transformers (Fedus et al. 2022; transformers ``models/switch_transformers``):
``SwitchTransformersForConditionalGeneration`` (see :class:`SwitchTransformers`).
"""

from __future__ import annotations

from typing import Any

from archlab.convert.families.base import ExpertRule, Rule, _lin
from archlab.convert.families.t5 import T5
from archlab.errors import ArchlabError


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
