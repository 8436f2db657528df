"""count_params (model/flops.py, written from the config alone) against the numel() of the
built modules, for every preset and every layer option, built on the meta device (no memory,
no initialisation cost). The options are read from ModelConfig itself: each Literal choice,
each flag flipped, and a value for every structural number; a ModelConfig field that is
in none of these lists fails the test, so a new layer option cannot go unchecked."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
import torch

from archlab import build_model, count_params
from archlab.config import ModelConfig, MoEConfig, SSMConfig
from archlab.errors import ConfigError
from archlab.model.presets import get_preset, preset_names

# set by the presets themselves (they differ from preset to preset)
SET_BY_PRESET = {"arch", "vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"}
# no parameter depends on these
NOT_STRUCTURAL = {"dropout", "attn_dropout", "norm_eps", "rope_theta", "rel_max_distance", "attn_scale",
                  "embed_scale", "lm_head_scale", "init_std", "pad_token_id", "bos_token_id",
                  "eos_token_id", "decoder_start_token_id", "attn_window", "pad_aware_positions"}
# numbers that shape parameters: the variants tried (with what they need to matter)
NUMBERS: dict[str, list[dict[str, Any]]] = {
    "n_kv_heads": [{"n_kv_heads": 1}, {"n_kv_heads": "half"}],
    "head_dim": [{"head_dim": 16}],
    "n_encoder_layers": [{"n_encoder_layers": 1}],
    "n_decoder_layers": [{"n_decoder_layers": 1}],
    "rel_buckets": [{"position": "t5-relative", "rel_buckets": 8}],
    "position_offset": [{"position": "learned", "position_offset": 2}],
    "type_vocab_size": [{"type_vocab_size": 2}],
    "n_classes": [{"n_classes": 3}, {"n_classes": 3, "bias": True, "pooling": "mean"}],
    "n_tags": [{"n_tags": 5}],  # token-classification head (d_model x n_tags + bias)
    # per-layer patterns (config.MIXERS / config.FFNS letters), repeated to the depth
    "layers": [{"layers": "M*"}, {"layers": "S*", "ssm": SSMConfig(head_dim=16)}, {"layers": "MA*"}],
    "ffn": [{"ffn": "N*"}, {"ffn": "DN*"}, {"ffn": "E*"}],
    "ssm": [{"layers": "M*", "ssm": SSMConfig(d_state=8, dt_rank=5, d_conv=3)},
            {"layers": "S*", "ssm": SSMConfig(head_dim=16, n_groups=2, d_inner=128)}],
    "moe": [{"ffn": "E*", "moe": MoEConfig(n_experts=3, top_k=1)},
            {"ffn": "DE*", "moe": MoEConfig(n_experts=4, n_shared_experts=1, d_ff_expert=48)}],
}
# options whose parameters depend on another option (layernorm's bias follows `bias`)
COMBINED = [{"norm": "layernorm", "bias": True}, {"norm": "layernorm", "bias": False},
            {"embedding_norm": True, "norm": "layernorm", "bias": True},
            {"share_encoder_decoder": True, "n_classes": 3}]


def variants() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        tp = hints[f.name]
        if f.name in SET_BY_PRESET | NOT_STRUCTURAL:
            continue
        if typing.get_origin(tp) is typing.Literal:
            out += [{f.name: c} for c in typing.get_args(tp)]
        elif tp is bool:
            out.append({f.name: not f.default})
        elif set(typing.get_args(tp)) == {bool, type(None)}:
            out += [{f.name: True}, {f.name: False}]
        elif f.name in NUMBERS:
            out += NUMBERS[f.name]
        else:
            raise AssertionError(f"ModelConfig.{f.name} is new: say in this test which values change "
                                 "the parameters (NUMBERS) or that none do (NOT_STRUCTURAL)")
    return out + COMBINED


def numel(params) -> int:
    return sum(p.numel() for p in params)


def check(cfg: ModelConfig) -> None:
    with torch.device("meta"):
        model = build_model(cfg)
    want = count_params(cfg)
    assert want.total == numel(model.parameters())  # shared tensors counted once
    enc = {id(p) for p in model.encoder.parameters()} if model.encoder is not None else set()
    assert want.encoder == numel(model.encoder.parameters() if model.encoder is not None else [])
    assert want.decoder == numel(p for p in (model.decoder.parameters() if model.decoder is not None else [])
                                 if id(p) not in enc)
    emb = [model.embed_tokens, model.encoder_embed, model.decoder_embed]
    assert want.embedding == numel(p for m in emb if m is not None for p in m.parameters())


PRESETS = preset_names()


@pytest.mark.parametrize("preset", PRESETS)
def test_count_params_equals_numel_at_preset_depth(preset):
    check(get_preset(preset))


@pytest.mark.parametrize("preset", PRESETS)
def test_count_params_equals_numel_for_every_option(preset):
    """Every option on the preset's widths; two layers per stack (depth only multiplies the
    block count, checked at the presets' own depths above and by unbalanced depths here)."""
    base = get_preset(preset, n_layers=min(get_preset(preset).n_layers, 2))
    tried = 0
    for v in variants():
        v = {k: (base.n_heads // 2 if x == "half" else x) for k, x in v.items()}
        try:
            cfg = dataclasses.replace(base, **v)
        except ConfigError:  # an option of another family (e.g. n_encoder_layers on a decoder)
            continue
        tried += 1
        try:
            check(cfg)
        except AssertionError as e:
            raise AssertionError(f"{preset} with {v}: {e}") from None
    assert tried > 30


def test_every_option_applies_to_some_preset():
    """No variant above is rejected by every family (it would then check nothing)."""
    for v in variants():
        ok = []
        for preset in ("encoder-tiny", "decoder-tiny", "encoder-decoder-tiny"):
            base = get_preset(preset)
            v2 = {k: (base.n_heads // 2 if x == "half" else x) for k, x in v.items()}
            try:
                dataclasses.replace(base, **v2)
                ok.append(preset)
            except ConfigError:
                pass
        assert ok, v
