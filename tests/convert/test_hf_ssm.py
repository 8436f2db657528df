"""Mamba, Mamba-2 and Jamba (dense and MoE) checkpoints made with transformers: imported archlab
models give HF's logits (right and left padding) and HF's greedy/beam ``generate`` tokens;
exported models load back with ``from_pretrained`` and the same logits; what archlab cannot
reproduce is refused with one line."""

from __future__ import annotations

import json

import pytest
import torch

from archlab.convert import from_hf, to_hf
from archlab.errors import ArchlabError

from .hf_models import V, batch, greedy, randomize

transformers = pytest.importorskip("transformers")

SPECS = {
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=6, conv_kernel=4, expand=2,
        time_step_rank=5, layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "mamba-untied-bias": ("MambaForCausalLM", "MambaConfig", dict(
        vocab_size=V, hidden_size=24, num_hidden_layers=3, state_size=4, conv_kernel=3, expand=2,
        use_bias=True, use_conv_bias=False, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2)),
    "mamba2": ("Mamba2ForCausalLM", "Mamba2Config", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=16,
        num_heads=4, n_groups=2, chunk_size=4, conv_kernel=4, layer_norm_epsilon=1e-5,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "jamba": ("JambaForCausalLM", "JambaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=40, num_experts=1, num_experts_per_tok=1,
        attn_layer_period=2, attn_layer_offset=1, mamba_d_state=6, mamba_dt_rank=4,
        mamba_expand=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # mixture of experts: 4 experts top-2 on layers 1 and 3 (expert_layer_period 2, offset 1,
    # the defaults), attention on layer 1 (period 3, offset 1): layers MAMM, ffn DEDE, so both
    # an attention and a Mamba layer have experts
    "jamba-moe": ("JambaForCausalLM", "JambaConfig", dict(
        vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=24, num_experts=4, num_experts_per_tok=2,
        attn_layer_period=3, attn_layer_offset=1, mamba_d_state=6, mamba_dt_rank=4,
        mamba_expand=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}
FAMILY = {"mamba": "mamba", "mamba-untied-bias": "mamba", "mamba2": "mamba2", "jamba": "jamba",
          "jamba-moe": "jamba"}


def make(name, path, **over):
    cls_name, cfg_name, kw = SPECS[name]
    cfg = getattr(transformers, cfg_name)(**{**kw, **over})
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg)
    randomize(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # decays and steps in their usual ranges, but random
        for n, p in model.named_parameters():
            if n.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 3 + 0.5))
            elif n.endswith(("dt_proj.bias", "dt_bias")):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 3)
            elif n.endswith(("layernorm.weight", "norm.weight", "norm_f.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_ssm")
    return {n: (root / n, make(n, root / n)) for n in SPECS}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_import_matches_hf_logits(ckpts, name, left):
    path, hf = ckpts[name]
    imp = from_hf(path)
    assert imp.family == FAMILY[name]
    ids, mask = batch(seed=1, T=11, left=left)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours = imp.model(ids, mask).logits
        # each row alone, unpadded: what padding must not change. (HF zeroes pad slots
        # before in_proj, so with use_bias=True its own left-padded rows differ from this;
        # archlab zeroes the conv and scan inputs and matches it)
        alone = [hf(input_ids=r[m.bool()][None]).logits[0] for r, m in zip(ids, mask)]
    assert ref.abs().max() > 0.1
    m = mask.bool()
    torch.testing.assert_close(ours[m], torch.cat(alone))
    if "bias" not in name or not left:
        torch.testing.assert_close(ours[m], ref[m])


@pytest.mark.parametrize("name", list(SPECS))
def test_greedy_and_beam_generate_match_hf(ckpts, name):
    path, hf = ckpts[name]
    model = from_hf(path).model
    ids, mask = batch(seed=4, T=7, left=True)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=8, min_new_tokens=0, pad_token_id=0)
    ours = greedy(model, ids, mask, 8)
    assert torch.equal(ours, ref), (ours, ref)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=3,
                          num_return_sequences=1, max_new_tokens=6, min_new_tokens=6,
                          early_stopping=True, length_penalty=1.0, pad_token_id=0)
    ours = greedy(model, ids, mask, 6, strategy="beam", num_beams=3, min_new_tokens=6,
                  early_stopping=True)
    assert torch.equal(ours, ref), (ours, ref)


@pytest.mark.parametrize("name", list(SPECS))
def test_export_round_trip(ckpts, tmp_path, name):
    path, hf = ckpts[name]
    imp = from_hf(path)
    out = to_hf(imp.model, tmp_path / "out")
    cls = getattr(transformers, SPECS[name][0])
    back = cls.from_pretrained(out).eval()
    ids, mask = batch(seed=5, T=9)
    with torch.no_grad():
        a, b = hf(input_ids=ids, attention_mask=mask).logits, back(input_ids=ids, attention_mask=mask).logits
    m = mask.bool()
    torch.testing.assert_close(b[m], a[m])
    assert json.loads((out / "config.json").read_text())["model_type"] == FAMILY[name].replace("-untied-bias", "")


def test_archlab_built_hybrid_exports_as_jamba(tmp_path):
    from archlab import build_model
    from archlab.config import ModelConfig, SSMConfig

    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_kv_heads=2, n_layers=6, d_ff=48,
                      layers="MMAMMA", ffn="DDDDDD", position="none",
                      ssm=SSMConfig(d_state=4, dtbc_norm=True))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = to_hf(model, tmp_path / "j")
    hf = transformers.JambaForCausalLM.from_pretrained(out).eval()
    assert hf.config.attn_layer_period == 3 and hf.config.attn_layer_offset == 2
    ids, mask = batch(seed=6, T=8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).logits[mask.bool()],
                                   hf(input_ids=ids, attention_mask=mask).logits[mask.bool()])


@pytest.mark.parametrize("layers,ssm,msg", [
    ("MMMM", {}, "no Hugging Face family represents this model exactly"),
    ("MAAM", {"dtbc_norm": True}, "jamba needs one attention layer every attn_layer_period"),
])
def test_export_refuses_what_hf_cannot_hold(tmp_path, layers, ssm, msg):
    from archlab import build_model
    from archlab.config import ModelConfig, SSMConfig

    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=4, d_ff=48, layers=layers,
                      ffn="DDDD", position="none", ssm=SSMConfig(d_state=4, **ssm))
    with pytest.raises(ArchlabError) as e:
        to_hf(build_model(cfg), tmp_path / "x", family="jamba" if "jamba" in msg else None)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_llama_refuses_a_mamba_pattern(tmp_path):
    from archlab import build_model
    from archlab.config import ModelConfig

    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=48, layers="MA")
    with pytest.raises(ArchlabError, match="llama layers are attention"):
        to_hf(build_model(cfg), tmp_path / "x", family="llama")


def test_import_refuses_bad_jamba_experts(tmp_path):
    make("jamba", tmp_path / "moe", num_experts=2, num_experts_per_tok=3)
    with pytest.raises(ArchlabError, match="model.moe.top_k") as e:
        from_hf(tmp_path / "moe")
    assert "\n" not in str(e.value)


# ---- Jamba with mixture-of-experts feed-forwards ---------------------------------------------


def test_jamba_moe_imports_layers_experts_and_router(ckpts):
    cfg = from_hf(ckpts["jamba-moe"][0]).cfg
    assert (cfg.layers, cfg.ffn) == ("MAMM", "DEDE")
    m = cfg.moe
    assert (m.n_experts, m.top_k, m.router, m.norm_topk) == (4, 2, "topk-softmax", False)
    assert m.capacity_factor is None and m.n_shared_experts == 0 and m.balance_coef == 0.001


def test_jamba_router_choices_equal_transformers(ckpts):
    """At equal logits the chosen experts agree: per MoE layer, HF's router logits (real
    tokens) equal archlab's, its top-2 experts are archlab's, and archlab's gates are HF's
    top-2 softmax probabilities, not renormalised (they sum to < 1)."""
    from archlab.model.moe import MoE

    path, hf = ckpts["jamba-moe"]
    model = from_hf(path).model
    ids, mask = batch(seed=7, T=11)
    seen = []

    def hook(mod, args, out):
        x, valid = args[0], args[1]
        seen.append(mod.route(x[valid] if valid is not None else x.reshape(-1, x.shape[-1])))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MoE)]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_router_logits=True)
        ours = model(ids, mask).logits
    for h in hooks:
        h.remove()
    m = mask.bool()
    torch.testing.assert_close(ours[m], ref.logits[m])
    assert len(seen) == len(ref.router_logits) == 2
    for (logits, _, gates, idx), hl in zip(seen, ref.router_logits):
        hl = hl.reshape(-1, hl.shape[-1])[m.reshape(-1)]
        torch.testing.assert_close(logits, hl)
        hv, hi = torch.topk(torch.softmax(hl.float(), -1), 2, -1)
        assert torch.equal(idx, hi)
        torch.testing.assert_close(gates, hv)
        assert (gates.sum(-1) < 0.99).all()  # a renormalising router would give 1
        assert len(set(idx.flatten().tolist())) == 4  # every expert used: routing is exercised


def test_jamba_moe_batch1_greedy_equals_transformers(ckpts):
    """Batch 1: each decoding step routes one token (archlab's single-token expert path)."""
    path, hf = ckpts["jamba-moe"]
    model = from_hf(path).model
    ids, mask = batch(seed=8, B=1, T=5)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    ours = greedy(model, ids, mask, 10, min_new_tokens=10)
    assert torch.equal(ours, ref), (ours, ref)
    assert len(set(ours[0, 5:].tolist())) > 2


def test_jamba_fused_expert_layout_imports(ckpts):
    """transformers 5 holds the experts fused in memory (experts.gate_up_proj / down_proj);
    its state dict imports to the same tensors as the per-expert checkpoint on disk."""
    from archlab.convert import hf_to_archlab

    path, hf = ckpts["jamba-moe"]
    tensors = dict(hf.state_dict())
    assert "model.layers.1.feed_forward.experts.gate_up_proj" in tensors
    disk = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"] if (
        path / "model.safetensors.index.json").exists() else None
    if disk is None:
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as f:
            disk = list(f.keys())
    assert "model.layers.1.feed_forward.experts.3.up_proj.weight" in disk
    _, state = hf_to_archlab(hf.config.to_dict(), tensors)
    ref = from_hf(path).model.state_dict()
    for k, v in state.items():
        assert torch.equal(v, ref[k]), k


def _native_moe_hybrid(ffn="EDEDED", **moe):
    from archlab import build_model
    from archlab.config import ModelConfig, MoEConfig, SSMConfig

    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_kv_heads=2, n_layers=6, d_ff=24,
                      layers="MMAMMA", ffn=ffn, position="none",
                      ssm=SSMConfig(d_state=4, dtbc_norm=True),
                      moe=MoEConfig(**{"n_experts": 4, "top_k": 2, "norm_topk": False, **moe}))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_archlab_moe_hybrid_exports_as_jamba(tmp_path):
    model = _native_moe_hybrid()
    out = to_hf(model, tmp_path / "j")
    hf = transformers.JambaForCausalLM.from_pretrained(out).eval()
    c = hf.config
    assert (c.attn_layer_period, c.attn_layer_offset, c.expert_layer_period, c.expert_layer_offset) \
        == (3, 2, 2, 0)
    assert (c.num_experts, c.num_experts_per_tok) == (4, 2)
    ids, mask = batch(seed=6, T=8)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).logits[mask.bool()],
                                   hf(input_ids=ids, attention_mask=mask).logits[mask.bool()])
    assert from_hf(out).cfg.ffn == "EDEDED"


@pytest.mark.parametrize("ffn,moe,msg", [
    ("EDEDED", {"norm_topk": True}, "moe.router is topk-softmax with norm_topk true"),
    ("EDEDED", {"capacity_factor": 1.0}, "moe.capacity_factor"),
    ("EDEDED", {"n_shared_experts": 1}, "moe.n_shared_experts"),
    ("EDEDED", {"d_ff_expert": 16}, "moe.d_ff_expert"),
    ("EEDEDD", {}, "one MoE layer every expert_layer_period"),
])
def test_jamba_export_refuses_moe_it_cannot_hold(tmp_path, ffn, moe, msg):
    model = _native_moe_hybrid(ffn, **moe)
    with pytest.raises(ArchlabError) as e:
        to_hf(model, tmp_path / "x", family="jamba")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_mixtral_refuses_unnormalised_gates():
    from archlab.config import ModelConfig, MoEConfig
    from archlab.convert.core import hf_family_for

    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=24, ffn="E*",
                      moe=MoEConfig(n_experts=4, top_k=2, norm_topk=False))
    with pytest.raises(ArchlabError, match="norm_topk is false"):
        hf_family_for(cfg, "mixtral")


def test_norm_topk_is_only_a_topk_softmax_option():
    from archlab.config import ModelConfig, MoEConfig
    from archlab.errors import ConfigError

    with pytest.raises(ConfigError, match="model.moe.norm_topk"):
        ModelConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=24, ffn="E*",
                    moe=MoEConfig(n_experts=4, top_k=1, router="switch", norm_topk=False))


def test_info_counts_total_and_active_of_imported_jamba_moe(ckpts):
    """archlab info on an imported MoE Jamba: total = the model's parameters, active = total
    less the (E - k) unchosen experts of each MoE layer."""
    from archlab.info import describe

    model = from_hf(ckpts["jamba-moe"][0]).model
    cfg = model.cfg
    p = describe(cfg, 16)["params"]
    assert p["total"] == sum(t.numel() for t in model.parameters())
    expert = sum(t[0].numel() for n, t in model.named_parameters() if n.endswith(("mlp.w_in", "mlp.w_out")))
    assert expert == 2 * 3 * 32 * 24  # one expert's w_in (48x32) and w_out (32x24), 2 layers
    assert p["active"] == p["total"] - (4 - 2) * expert
