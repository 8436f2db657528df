"""Typed configs: unknown keys, wrong types, bad choices and inconsistencies name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from archlab.config import ModelConfig, apply_overrides, from_dict, load_yaml
from archlab.errors import ConfigError
from archlab.model.presets import get_preset, preset_names, resolve_model_config


def test_unknown_key_names_it_and_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key model\.d_modle; valid keys here: .*d_model"):
        from_dict(ModelConfig, {"d_modle": 3}, prefix="model")


@pytest.mark.parametrize("key,value,msg", [
    ("d_model", "big", r"model\.d_model: expected an integer"),
    ("dropout", "x", r"model\.dropout: expected a number"),
    ("bias", "yes", r"model\.bias: expected true or false"),
    ("norm", "batchnorm", r"model\.norm: 'batchnorm' is not valid; choose one of: layernorm, rmsnorm"),
    ("arch", "rnn", r"model\.arch: 'rnn' is not valid; choose one of: encoder, decoder, prefix-lm, encoder-decoder"),
    ("position", "xpos", r"model\.position: .*learned, sinusoidal, rope, alibi, t5-relative"),
    ("activation", "tanh", r"model\.activation: .*swiglu"),
])
def test_bad_values(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(ModelConfig, {key: value}, prefix="model")


@pytest.mark.parametrize("kw,msg", [
    (dict(d_model=30, n_heads=4), r"model\.n_heads: d_model=30 is not divisible"),
    (dict(n_heads=4, n_kv_heads=3), r"model\.n_kv_heads"),
    (dict(arch="decoder", n_encoder_layers=2), r"model\.n_encoder_layers: only applies to arch encoder-decoder"),
    (dict(arch="decoder", share_encoder_decoder=True), r"model\.share_encoder_decoder"),
    (dict(arch="encoder-decoder", share_encoder_decoder=True, n_encoder_layers=2, n_decoder_layers=3),
     r"equal encoder and decoder depths"),
    (dict(dropout=1.5), r"model\.dropout: must be in \[0, 1\)"),
    (dict(vocab_size=10, eos_token_id=12), r"model\.eos_token_id: 12 is outside"),
    (dict(arch="decoder", pooling="decoder"), r"model\.pooling"),
])
def test_inconsistent(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        ModelConfig(**kw)


def test_float_from_yaml_string_and_int():
    cfg = from_dict(ModelConfig, {"rope_theta": "1e4", "dropout": 0})
    assert cfg.rope_theta == 1e4 and cfg.dropout == 0.0


@dataclass
class Inner:
    lr: float = 1e-3
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10


def test_nested_and_overrides():
    d = apply_overrides({"inner": {"lr": 0.1}}, ["inner.lr=3e-4", "steps=5", "inner.names=[a, b]"])
    cfg = from_dict(Outer, d)
    assert cfg.inner.lr == 3e-4 and cfg.steps == 5 and cfg.inner.names == ["a", "b"]
    with pytest.raises(ConfigError, match=r"unknown key inner\.lrr"):
        from_dict(Outer, apply_overrides({}, ["inner.lrr=1"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["steps"])


def test_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_yaml(p)
    p.write_bytes(b"model:\n  d_model: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte offset 18\)"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_presets_and_resolution(tmp_path):
    assert "encoder-decoder-small" in preset_names() and "prefix-lm-base" in preset_names()
    for name in preset_names():
        cfg = get_preset(name)
        assert name.startswith(cfg.arch)
    p = tmp_path / "m.yaml"
    p.write_text("model:\n  preset: decoder-small\n  n_layers: 3\n")
    cfg = resolve_model_config(str(p), ["model.d_model=256", "n_heads=4"])
    assert (cfg.arch, cfg.n_layers, cfg.d_model, cfg.n_heads) == ("decoder", 3, 256, 4)
    with pytest.raises(ConfigError, match="unknown preset 'decoder-huge'"):
        resolve_model_config("decoder-huge")


@pytest.mark.parametrize("kw,msg", [
    (dict(attn_window=0), "model.attn_window: must be >= 1 or null"),
    (dict(arch="decoder", position="learned", position_offset=2, pad_aware_positions=True),
     "model.pad_aware_positions: needs arch encoder"),
    (dict(arch="encoder", position="learned", pad_aware_positions=True), "position_offset >= 1"),
    (dict(sinusoidal_layout="odd"), "model.sinusoidal_layout: 'odd' is not valid"),
    (dict(cls_activation="gelu"), "model.cls_activation: 'gelu' is not valid"),
])
def test_new_model_options_are_checked(kw, msg):
    from archlab.config import ModelConfig

    with pytest.raises(ConfigError, match=msg):
        ModelConfig(**kw)
