"""Mistral, RoBERTa, DistilBERT and Marian: what the shared parity tests in
test_hf_equivalence.py do not cover (left padding through RoBERTa's positions, exports of
native archlab configs, refusals, the CLI and init_from entry points)."""

from __future__ import annotations

import json

import pytest
import torch

from archlab import build_model
from archlab.cli import main
from archlab.config import ModelConfig
from archlab.convert import from_hf, hf_model_config, load_hf_weights, to_hf
from archlab.convert.core import hf_family_for
from archlab.errors import ArchlabError
from archlab.run import load_run

from .hf_models import SEQ2SEQ, SPECS, V, batch, load_hf, make, randomize

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["roberta-mlm", "roberta-model", "roberta-cls"])
def test_roberta_left_padding_counts_positions_from_real_tokens(tmp_path, name):
    """Left padding with padding_idx 1: HF numbers real tokens from row 2 whatever the pad
    count, and gives pad tokens row 1. Every output row is compared, pads included."""
    hf = make(name, tmp_path / name)
    model = from_hf(tmp_path / name).model
    ids, mask = batch(seed=3, left=True, pad=1)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        ref = out.last_hidden_state if name.endswith("-model") else out.logits
        ours = model.classify(ids, mask) if name.endswith("-cls") else (
            model(ids, mask).hidden if name.endswith("-model") else model(ids, mask).logits)
        torch.testing.assert_close(ours, ref)
        # the same model with plain 0..T-1 positions (BERT's) disagrees: the check has teeth
        if not name.endswith("-cls"):
            plain = model.cfg.replace(pad_aware_positions=False)
            m2 = build_model(plain).eval()
            m2.load_state_dict(model.state_dict())
            other = m2(ids, mask)
            other = other.hidden if name.endswith("-model") else other.logits
            assert (other - ref)[mask.bool()].abs().max() > 1e-3


def _native(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=40,
                       max_seq_len=40, **kw)


NATIVE = {
    # a Llama block with a window is Mistral; without one, still Llama
    "mistral": (_native("decoder", n_kv_heads=2, attn_window=3), "MistralForCausalLM"),
    "distilbert": (_native("encoder", norm="layernorm", norm_position="post", embedding_norm=True,
                           activation="gelu", position="sinusoidal", bias=True, norm_eps=1e-12),
                   "DistilBertForMaskedLM"),
    "distilbert-cls": (_native("encoder", norm="layernorm", norm_position="post", embedding_norm=True,
                               activation="relu", position="learned", bias=True, norm_eps=1e-12,
                               n_classes=2, cls_activation="relu", mlm_transform=False),
                       "DistilBertForSequenceClassification"),
    "roberta": (_native("encoder", norm="layernorm", norm_position="post", embedding_norm=True,
                        activation="gelu", position="learned", bias=True, pad_aware_positions=True,
                        position_offset=1, type_vocab_size=1, lm_head_bias=True), "RobertaForMaskedLM"),
    "marian": (_native("encoder-decoder", norm="layernorm", norm_position="post", activation="silu",
                       position="sinusoidal", sinusoidal_layout="halves", bias=True, norm_eps=1e-5,
                       embed_scale=32 ** 0.5), "MarianMTModel"),
}


@pytest.mark.parametrize("key", list(NATIVE))
def test_native_archlab_config_exports_to_the_family(tmp_path, key):
    import transformers

    cfg, arch = NATIVE[key]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize(model, std=0.2)
    fam = key.split("-")[0]
    assert hf_family_for(cfg).name == fam
    out = to_hf(model, tmp_path / "hf")
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["architectures"] == [arch]
    hf = getattr(transformers, arch).from_pretrained(out).eval()
    pad = cfg.pad_token_id
    ids, mask = batch(seed=7, pad=pad)
    with torch.no_grad():
        if cfg.arch == "encoder-decoder":
            dec = batch(seed=8, T=6)[0]
            torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
                                       model(ids, mask, decoder_input_ids=dec).logits)
        elif cfg.n_classes:
            torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, model.classify(ids, mask))
        else:
            m = mask.bool()
            torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits[m],
                                       model(ids, mask).logits[m])


def test_llama_without_window_stays_llama_and_refuses_a_window():
    assert hf_family_for(_native("decoder", n_kv_heads=2)).name == "llama"
    with pytest.raises(ArchlabError, match="attn_window is 3 \\(llama has no sliding-window attention\\)"):
        hf_family_for(_native("decoder", attn_window=3), "llama")
    with pytest.raises(ArchlabError, match="bias is True \\(mistral has no biases\\)"):
        hf_family_for(_native("decoder", attn_window=3, bias=True), "mistral")


@pytest.mark.parametrize("name,over,msg", [
    ("mistral", dict(layer_types=["sliding_attention", "full_attention"]), "mistral: layer_types="),
    ("roberta-mlm", dict(hidden_act="relu"), "RobertaLMHead applies the erf gelu"),
    ("marian", dict(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings=false"),
    ("marian", dict(decoder_vocab_size=50), "decoder_vocab_size=50 differs"),
])
def test_unreproducible_options_are_refused_in_one_line(tmp_path, name, over, msg):
    path = tmp_path / name
    make(name, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(over)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchlabError, match=msg) as e:
        from_hf(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["mistral", "roberta-cls", "distilbert-mlm", "marian"])
def test_cli_round_trip_and_init_from_entry_points(tmp_path, capsys, name):
    hf = make(name, tmp_path / "hf")
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == SPECS[name][0]
    assert main(["convert", "to-hf", str(tmp_path / "model"), str(tmp_path / "back")]) == 0
    capsys.readouterr()
    back = load_hf(tmp_path / "back", name)
    # what train.init_from does with an HF directory: config, build, load the weights
    model = build_model(hf_model_config(tmp_path / "hf")).eval()
    load_hf_weights(model, tmp_path / "hf", strict=True)
    ids, mask = batch(seed=11)
    kw = dict(decoder_input_ids=batch(seed=12, T=5)[0]) if name in SEQ2SEQ else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **kw).logits
        for other in (back(input_ids=ids, attention_mask=mask, **kw).logits,
                      model.classify(ids, mask) if name.endswith("-cls") else model(ids, mask, **kw).logits,
                      load_run(tmp_path / "model").model.classify(ids, mask) if name.endswith("-cls")
                      else load_run(tmp_path / "model").model(ids, mask, **kw).logits):
            if ref.dim() == 3 and name not in SEQ2SEQ:
                torch.testing.assert_close(other[mask.bool()], ref[mask.bool()], atol=2e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(other, ref, atol=2e-4, rtol=1e-4)
