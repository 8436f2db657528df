"""Mixtral (Jiang et al. 2024; transformers ``models/mixtral``).

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

from archlab.convert.families.base import ExpertRule, Rule
from archlab.convert.families.llama import Llama
from archlab.errors import ArchlabError


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
