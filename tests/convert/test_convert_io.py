"""Checkpoint layouts, key-map coverage, fine-tuning starts, and one-line errors for everything
archlab cannot reproduce."""

from __future__ import annotations

import json

import pytest
import torch

from archlab import build_model
from archlab.config import ModelConfig
from archlab.convert import (
    FAMILIES,
    from_hf,
    hf_family_for,
    hf_model_config,
    load_hf_weights,
    to_hf,
)
from archlab.errors import ArchlabError

from .hf_models import SPECS, batch, make

pytest.importorskip("transformers")


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, mask).logits


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None and k.startswith("-"):
            cfg.pop(k[1:], None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("gpt2") / "ckpt"
    make("gpt2", p)
    return p


# ---- layouts ----------------------------------------------------------------------------------


def test_sharded_safetensors(tmp_path, gpt2_dir):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    ids, mask = batch()
    torch.testing.assert_close(_logits(from_hf(tmp_path / "sharded").model, ids, mask),
                               _logits(from_hf(gpt2_dir).model, ids, mask), rtol=0, atol=0)


def test_pytorch_model_bin_and_legacy_key_names(tmp_path, gpt2_dir):
    """Old GPT-2 checkpoints: pytorch_model.bin, no "transformer." prefix, attn.bias buffers."""
    from safetensors.torch import load_file

    sd = load_file(gpt2_dir / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in sd.items()}
    legacy["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 48, 48))
    (tmp_path / "bin").mkdir()
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((gpt2_dir / "config.json").read_text())
    ids, mask = batch()
    torch.testing.assert_close(_logits(from_hf(tmp_path / "bin").model, ids, mask),
                               _logits(from_hf(gpt2_dir).model, ids, mask), rtol=0, atol=0)


def test_sharded_bin_and_shard_outside_the_directory(tmp_path, gpt2_dir):
    from safetensors.torch import load_file

    sd = load_file(gpt2_dir / "model.safetensors")
    d = tmp_path / "binshards"
    d.mkdir()
    (d / "config.json").write_text((gpt2_dir / "config.json").read_text())
    keys = sorted(sd)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for fname, ks in halves.items():
        torch.save({k: sd[k] for k in ks}, d / fname)
    index = {"weight_map": {k: f for f, ks in halves.items() for k in ks}}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    ids, mask = batch()
    torch.testing.assert_close(_logits(from_hf(d).model, ids, mask), _logits(from_hf(gpt2_dir).model, ids, mask),
                               rtol=0, atol=0)
    index["weight_map"][keys[0]] = "../elsewhere.bin"
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ArchlabError, match="outside the checkpoint directory"):
        from_hf(d)


def test_bin_refuses_pickled_objects(tmp_path, gpt2_dir):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "config.json").write_text((gpt2_dir / "config.json").read_text())
    torch.save({"x": object()}, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(ArchlabError, match="weights_only=True"):
        from_hf(tmp_path / "evil")


# ---- key maps cover every parameter -------------------------------------------------------------


@pytest.mark.parametrize("family,cfg", [
    ("bert", dict(arch="encoder", norm="layernorm", norm_position="post", embedding_norm=True,
                  position="learned", bias=True, activation="gelu", type_vocab_size=2, n_classes=2,
                  lm_head_bias=True, tie_embeddings=False)),
    ("gpt2", dict(arch="decoder", norm="layernorm", position="learned", bias=True, activation="gelu_tanh",
                  tie_embeddings=False)),
    ("llama", dict(arch="decoder", n_kv_heads=2, head_dim=6, bias=True)),
    ("t5", dict(arch="encoder-decoder", position="t5-relative", attn_scale=1.0, activation="relu",
                n_decoder_layers=3, tie_embeddings=False)),
    ("bart", dict(arch="encoder-decoder", norm="layernorm", norm_eps=1e-5, norm_position="post",
                  embedding_norm=True, position="learned", position_offset=2, bias=True, activation="gelu",
                  lm_head_bias=True)),
])
def test_rules_cover_every_parameter_once(family, cfg):
    cfg = ModelConfig(vocab_size=50, d_model=24, n_heads=4, d_ff=40, n_layers=2, max_seq_len=32, **cfg)
    fam = FAMILIES[family]
    assert fam.problems(cfg) == []
    rules = fam.rules(cfg, fam.prefix)
    ours = [r.ours for r in rules]
    assert len(ours) == len(set(ours))
    assert set(ours) == set(build_model(cfg).state_dict())
    theirs = [t for r in rules for t in r.theirs]
    assert len(theirs) == len(set(theirs))


# ---- fine-tuning starts -------------------------------------------------------------------------


def test_bertmodel_for_classification_keeps_pooler_and_adds_fresh_classifier(tmp_path):
    hf = make("bert-model", tmp_path / "bert")
    cfg = hf_model_config(tmp_path / "bert", n_classes=2)
    assert cfg.arch == "encoder" and cfg.n_classes == 2 and not cfg.mlm_transform
    model = build_model(cfg).eval()
    imp = load_hf_weights(model, tmp_path / "bert")
    assert sorted(imp.fresh) == ["cls_head.out.bias", "cls_head.out.weight"]
    torch.testing.assert_close(model.cls_head.dense.weight, hf.pooler.dense.weight)
    # from_hf with the same override does the same in one call
    model2 = from_hf(tmp_path / "bert", n_classes=2).model
    torch.testing.assert_close(model2.cls_head.dense.bias, hf.pooler.dense.bias)
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(ids, mask), hf(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_bertmodel_import_drops_pooler_without_classifier(tmp_path):
    make("bert-model", tmp_path / "bert")
    imp = from_hf(tmp_path / "bert")
    assert imp.dropped == ["pooler.dense.bias", "pooler.dense.weight"]
    assert imp.model.cls_head is None


def test_bertmodel_pooler_survives_export(tmp_path, capsys):
    """archlab has no pooler without a classifier; export restores the imported one (in memory,
    or from the source directory of an archlab model dir), and writes zeros with a warning when
    neither exists."""
    import shutil

    from transformers import BertModel

    hf = make("bert-model", tmp_path / "bert")
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).pooler_output
    to_hf(from_hf(tmp_path / "bert"), tmp_path / "a")
    from archlab.cli import main

    assert main(["convert", "from-hf", str(tmp_path / "bert"), str(tmp_path / "m")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "m"), str(tmp_path / "b")]) == 0
    for d in ("a", "b"):
        with torch.no_grad():
            out = BertModel.from_pretrained(tmp_path / d).eval()(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(out.pooler_output, ref)
    shutil.rmtree(tmp_path / "bert")
    with pytest.warns(UserWarning, match="pooler.dense.weight, pooler.dense.bias written as zeros"):
        assert main(["convert", "to-hf", str(tmp_path / "m"), str(tmp_path / "c")]) == 0


def test_load_hf_weights_rejects_structural_mismatch(tmp_path, gpt2_dir):
    model = build_model(hf_model_config(gpt2_dir, d_ff=64))
    with pytest.raises(ArchlabError, match=r"mlp.c_fc.weight gives shape .* expects"):
        load_hf_weights(model, gpt2_dir)


# ---- errors: one line, naming what is unsupported ----------------------------------------------


@pytest.mark.parametrize("name,changes,match", [
    ("gpt2", {"model_type": "gpt_neox"}, "model_type 'gpt_neox' is not supported"),
    ("bert-mlm", {"architectures": ["BertForPreTraining"]}, "architecture BertForPreTraining is not supported"),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling type 'llama3'"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rope_parameters type 'linear'"),
    ("llama", {"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ("llama", {"hidden_act": "tanh"}, "hidden_act='tanh' is not supported"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function='quick_gelu'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("bert-mlm", {"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ("bart", {"encoder_ffn_dim": 64}, "encoder_ffn_dim=64 differs from decoder_ffn_dim=37"),
    ("bart", {"add_final_layer_norm": True}, "add_final_layer_norm"),
    ("t5", {"feed_forward_proj": "gated-gelu-x"}, "feed_forward_proj='gated-gelu-x' is not valid"),
])
def test_unsupported_options_are_one_line_errors(tmp_path, name, changes, match):
    make(name, tmp_path / "m")
    _edit_config(tmp_path / "m", **changes)
    with pytest.raises(ArchlabError, match=match) as e:
        from_hf(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_unexpected_tensor_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    make("llama", tmp_path / "m")
    sd = load_file(tmp_path / "m" / "model.safetensors")
    sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)  # a Qwen3-style extra
    save_file(sd, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArchlabError, match="q_norm.weight has no place"):
        from_hf(tmp_path / "m")


def test_missing_tensor_and_missing_files(tmp_path, gpt2_dir):
    from safetensors.torch import load_file, save_file

    with pytest.raises(ArchlabError, match="no such Hugging Face checkpoint directory"):
        from_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchlabError, match="config.json"):
        from_hf(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((gpt2_dir / "config.json").read_text())
    with pytest.raises(ArchlabError, match="no weights found"):
        from_hf(tmp_path / "noweights")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text((gpt2_dir / "config.json").read_text())
    sd = load_file(gpt2_dir / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.weight"]
    save_file(sd, tmp_path / "partial" / "model.safetensors")
    with pytest.raises(ArchlabError, match=r"h.1.mlp.c_fc.weight missing"):
        from_hf(tmp_path / "partial")


@pytest.mark.parametrize("changes,match", [
    (dict(arch="prefix-lm"), "prefix-lm has no Hugging Face equivalent"),
    (dict(arch="decoder", position="alibi"), "closest is llama, but position is alibi"),
    (dict(arch="decoder", norm_position="post"), "norm_position is post"),
])
def test_unrepresentable_configs_are_refused(tmp_path, changes, match):
    model = build_model(ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=1, d_ff=48, **changes))
    with pytest.raises(ArchlabError, match=match):
        to_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_forced_family_must_fit():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=1, d_ff=48)  # a Llama-style preset
    assert hf_family_for(cfg).name == "llama"
    with pytest.raises(ArchlabError, match="cannot be exported as gpt2: .*norm is rmsnorm"):
        hf_family_for(cfg, "gpt2")
    with pytest.raises(ArchlabError, match="family 'opt'"):
        hf_family_for(cfg, "opt")


def test_archlab_presets_export(tmp_path):
    """An archlab preset model with a family layout exports and runs in HF (Llama-style
    decoder preset; T5-style encoder-decoder with relative positions)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from archlab import get_preset

    dec = build_model(get_preset("decoder-tiny", vocab_size=SPECS["gpt2"][2]["vocab_size"])).eval()
    to_hf(dec, tmp_path / "dec")
    ids, mask = batch()
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tmp_path / "dec").eval()(input_ids=ids, attention_mask=mask).logits
    m = mask.bool()
    torch.testing.assert_close(_logits(dec, ids, mask)[m], ref[m])

    cfg = get_preset("encoder-decoder-tiny", vocab_size=101, position="t5-relative", attn_scale=1.0)
    ed = build_model(cfg).eval()
    to_hf(ed, tmp_path / "ed")
    dec_ids = batch(seed=7, T=4)[0]
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ed").eval()
    with torch.no_grad():
        torch.testing.assert_close(ed(ids, mask, decoder_input_ids=dec_ids).logits,
                                   hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits)


@pytest.mark.parametrize("layout,act", [
    *[("t5", a) for a in ("relu", "gelu", "gelu_tanh", "silu", "reglu", "geglu", "geglu_tanh", "swiglu")],
    *[("llama", a) for a in ("swiglu", "geglu", "geglu_tanh", "reglu")],
])
def test_activation_variants_export_exactly(tmp_path, layout, act):
    """Every activation a family's HF config can name round-trips: archlab -> HF logits equal,
    and importing the export gives an equivalent config."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from archlab import get_preset

    ids, mask = batch()
    if layout == "t5":
        cfg = get_preset("encoder-decoder-tiny", vocab_size=101, position="t5-relative", attn_scale=1.0,
                         activation=act, d_model=32, n_heads=4, d_ff=40)
    else:
        cfg = get_preset("decoder-tiny", vocab_size=101, activation=act, d_model=32, n_heads=4, d_ff=40)
    model = build_model(cfg).eval()
    to_hf(model, tmp_path / "hf")
    auto = AutoModelForSeq2SeqLM if layout == "t5" else AutoModelForCausalLM
    hf = auto.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        if layout == "t5":
            dec = batch(seed=3, T=5)[0]
            torch.testing.assert_close(model(ids, mask, decoder_input_ids=dec).logits,
                                       hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits)
        else:
            m = mask.bool()
            torch.testing.assert_close(model(ids, mask).logits[m], hf(input_ids=ids, attention_mask=mask).logits[m])
    back = from_hf(tmp_path / "hf").cfg
    assert back.activation == act and back.use_final_norm and back.start_token_id == cfg.start_token_id
