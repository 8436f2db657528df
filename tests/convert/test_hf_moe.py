"""Mixtral interop beyond the shared checks of test_hf_equivalence (import, left padding,
greedy generate, export, round trip run there for the "mixtral" spec): at equal logits the
chosen experts agree layer by layer; a native archlab MoE decoder exports to a Mixtral that
transformers loads with the same logits; the fused (transformers 5 in-memory) expert layout
imports too; families refuse what they cannot represent."""

from __future__ import annotations

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig, MoEConfig
from archlab.convert import from_hf, hf_to_archlab, to_hf
from archlab.convert.core import hf_family_for
from archlab.errors import ArchlabError
from archlab.model.moe import MoE

from .hf_models import batch, greedy, make

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "mixtral"
    return path, make("mixtral", path)


def test_router_choices_equal_transformers(mixtral):
    path, hf = mixtral
    model = from_hf(path).model
    ids, mask = batch(seed=7)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(mod, args, out):
        x, valid = args[0], args[1]
        seen.append(mod.route(x[valid] if valid is not None else x.reshape(-1, x.shape[-1])))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MoE)]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_router_logits=True)
        model(ids, mask)
    for h in hooks:
        h.remove()
    m = mask.bool().reshape(-1)
    assert len(seen) == len(ref.router_logits) == 2
    for (logits, _, gates, idx), hf_logits in zip(seen, ref.router_logits):
        hl = hf_logits.reshape(-1, hf_logits.shape[-1])[m]
        torch.testing.assert_close(logits, hl)
        hp = torch.softmax(hl.float(), -1)
        hv, hi = torch.topk(hp, 2, -1)
        assert torch.equal(idx, hi)
        torch.testing.assert_close(gates, hv / hv.sum(-1, keepdim=True))
        assert len(set(idx.flatten().tolist())) == 4  # every expert used: routing is exercised


@pytest.mark.slow
def test_greedy_and_beam_generate_equal_transformers(mixtral):
    path, hf = mixtral
    model = from_hf(path).model
    ids, mask = batch(seed=4, T=7, left=True)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=10, min_new_tokens=0)
    ours = greedy(model, ids, mask, 10)
    assert torch.equal(ours, ref), (ours, ref)
    assert len(set(map(tuple, ours[:, 7:].tolist()))) > 1
    opts = dict(num_beams=3, num_return_sequences=2)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6,
                          min_new_tokens=6, pad_token_id=0, **opts)
    ours = greedy(model, ids, mask, 6, strategy="beam", min_new_tokens=6, **opts)
    assert torch.equal(ours, ref), (ours, ref)


@pytest.mark.slow
def test_switch_transformers_greedy_generate_equals_transformers(tmp_path):
    hf = make("switch", tmp_path / "switch")
    imp = from_hf(tmp_path / "switch")
    assert imp.cfg.ffn == "DEDE/DE" and imp.cfg.moe.router == "switch" and imp.cfg.moe.top_k == 1
    ids, mask = batch(seed=4, T=7)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                          max_new_tokens=8, min_new_tokens=8)
    ours = greedy(imp.model, ids, mask, 8, min_new_tokens=8)
    assert torch.equal(ours, ref), (ours, ref)
    assert len(set(map(tuple, ours.tolist()))) > 1


def _hf_sparse(hf) -> str:
    """The layer pattern transformers built: E where a block's feed-forward is sparse."""
    return "/".join("".join("E" if b.is_sparse else "D" for b in stack.block)
                    for stack in (hf.encoder, hf.decoder))


# (encoder_sparse_step, decoder_sparse_step) as a saved config carries them (the attributes
# SwitchTransformersStack builds from; they override num_sparse_*_layers, which the spec sets
# to 2 / 1, i.e. steps 2 / 2): 4 encoder and 2 decoder layers; layer i is sparse iff
# i % step == 1 or step == 1, none for step 0
@pytest.mark.parametrize("steps, pattern", [
    ((2, 1), "DEDE/EE"),  # the checkpoint: decoder all sparse, not DE
    ((3, 0), "DEDD/DD"),  # a step no num_sparse gives (4 // k), and a dense decoder
    ((1, 2), "EEEE/DE"),
    ((0, 1), "DDDD/EE"),  # a dense encoder
])
def test_switch_transformers_explicit_sparse_steps(tmp_path, steps, pattern):
    import transformers

    enc, dec = steps
    hf = make("switch", tmp_path / "switch", encoder_sparse_step=enc, decoder_sparse_step=dec)
    assert _hf_sparse(hf) == pattern  # the combination is what transformers builds
    imp = from_hf(tmp_path / "switch")
    assert imp.cfg.ffn == pattern
    ids, mask = batch(seed=3)
    dec_ids = batch(seed=2, T=6)[0]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits
        ours = imp.model(ids, mask, decoder_input_ids=dec_ids).logits
    torch.testing.assert_close(ours, ref)
    # export (from the import and from the bare model, which has no HF config to start from):
    # transformers rebuilds the same layers and logits, and the round trip is the identity
    for src, out in ((imp, tmp_path / "a"), (imp.model, tmp_path / "b")):
        to_hf(src, out)
        hf2 = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(out).eval()
        assert _hf_sparse(hf2) == pattern, out
        with torch.no_grad():
            torch.testing.assert_close(hf2(input_ids=ids, attention_mask=mask,
                                           decoder_input_ids=dec_ids).logits, ref)
        back = from_hf(out)
        assert back.cfg == imp.cfg
        sd1, sd2 = imp.model.state_dict(), back.model.state_dict()
        assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_switch_transformers_exports_every_step_pattern(tmp_path):
    """A native model with a pattern only an explicit step gives (6 layers, step 4: layers 1
    and 5) exports to a config transformers builds the same layers and logits from (its head is
    unscaled, so tie_word_embeddings is false and transformers ties neither embed_tokens to
    shared: both must be written); a pattern no step gives is refused with the rule."""
    import transformers

    cfg = ModelConfig(arch="encoder-decoder", vocab_size=61, d_model=16, n_heads=2, n_layers=6,
                      n_decoder_layers=1, d_ff=24, norm="rmsnorm", position="t5-relative", bias=False,
                      activation="relu", attn_scale=1.0, rel_buckets=8, rel_max_distance=20,
                      ffn="DEDDDE/E", moe=MoEConfig(n_experts=2, top_k=1, router="switch"),
                      max_seq_len=32)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = to_hf(model, tmp_path / "x", family="switch_transformers")
    hf = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(out).eval()
    assert _hf_sparse(hf) == "DEDDDE/E"
    ids = torch.randint(3, 61, (2, 7))
    dec = torch.randint(3, 61, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, decoder_input_ids=dec).logits,
                                   model(ids, decoder_input_ids=dec).logits)
    with pytest.raises(ArchlabError, match="encoder ffn pattern DEEDDD"):
        hf_family_for(cfg.replace(ffn="DEEDDD/E"), "switch_transformers")


def test_native_moe_decoder_exports_to_mixtral(tmp_path):
    cfg = ModelConfig(arch="decoder", vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2,
                      d_ff=24, tie_embeddings=False, ffn="E*", moe=MoEConfig(n_experts=4, top_k=2),
                      max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = to_hf(model, tmp_path / "x")
    import transformers

    hf = transformers.MixtralForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 61, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits)
    back = from_hf(out)
    assert back.family == "mixtral" and back.cfg.moe.n_experts == 4 and back.cfg.ffn == "E*"


def test_fused_expert_layout_imports(mixtral):
    path, hf = mixtral
    tensors = dict(hf.state_dict())  # transformers 5 in memory: fused gate_up_proj / down_proj
    assert "model.layers.0.mlp.experts.gate_up_proj" in tensors
    cfg, state = hf_to_archlab(hf.config.to_dict(), tensors)
    ref = from_hf(path).model.state_dict()
    assert state.keys() <= ref.keys()
    for k, v in state.items():
        assert torch.equal(v, ref[k]), k


def test_families_refuse_what_they_cannot_represent():
    moe = ModelConfig(arch="decoder", vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_ff=24,
                      ffn="E*", moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=1.0))
    with pytest.raises(ArchlabError, match="capacity_factor"):
        hf_family_for(moe, "mixtral")
    with pytest.raises(ArchlabError, match="MoE layers"):
        hf_family_for(moe.replace(moe=MoEConfig(n_experts=4, top_k=2)), "llama")
    with pytest.raises(ArchlabError, match="every layer"):
        hf_family_for(moe.replace(ffn="DE", moe=MoEConfig(n_experts=4, top_k=2)), "mixtral")
    assert hf_family_for(moe.replace(moe=MoEConfig(n_experts=4, top_k=2))).name == "mixtral"
