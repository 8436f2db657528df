"""Weight decay by parameter role: every matrix (ndim >= 2) decays whatever module holds it,
stacked expert weights included; biases, norm gains and lookup tables do not."""

from __future__ import annotations

import torch
from torch import nn

from archlab import build_model
from archlab.train.config import TrainConfig
from archlab.train.trainer import make_optimizer, weight_decay_split
from tests.helpers import tiny


class Experts(nn.Module):
    """What a mixture-of-experts layer keeps as bare parameters (no nn.Linear): stacked expert
    matrices (E, out, in), a router matrix, a gain, and a table it declares a lookup table."""

    def __init__(self, d: int = 32, d_ff: int = 48, n: int = 4) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(n, d_ff, d))
        self.w_out = nn.Parameter(torch.randn(n, d, d_ff))
        self.router = nn.Parameter(torch.randn(n, d))
        self.gain = nn.Parameter(torch.ones(d))
        self.table = nn.Parameter(torch.randn(16, d))

    def no_weight_decay(self) -> set[str]:
        return {"table"}


def test_decayed_parameters_are_exactly_the_matrices():
    model = build_model(tiny("encoder-decoder", n_layers=1, position="t5-relative", bias=True,
                             tie_embeddings=False, lm_head_bias=True, n_classes=3))
    model.decoder.blocks[0].moe = Experts()
    decay, no_decay = weight_decay_split(model)
    enc, dec = "encoder.blocks.0", "decoder.blocks.0"
    assert sorted(decay) == sorted([
        f"{enc}.attn.qkv.weight", f"{enc}.attn.o.weight", f"{enc}.mlp.w_in.weight", f"{enc}.mlp.w_out.weight",
        f"{dec}.attn.qkv.weight", f"{dec}.attn.o.weight", f"{dec}.mlp.w_in.weight", f"{dec}.mlp.w_out.weight",
        f"{dec}.cross_attn.q.weight", f"{dec}.cross_attn.kv.weight", f"{dec}.cross_attn.o.weight",
        f"{dec}.moe.w_in", f"{dec}.moe.w_out", f"{dec}.moe.router",
        "lm_head.weight", "cls_head.dense.weight", "cls_head.out.weight",
    ])
    # everything else: embeddings and position tables, norms, biases, the declared table
    assert "embed_tokens.weight" in no_decay
    assert "encoder.rel_bias.embedding.weight" in no_decay
    assert f"{dec}.moe.table" in no_decay and f"{dec}.moe.gain" in no_decay
    assert all(n.endswith("bias") or "norm" in n or n in ("embed_tokens.weight", "lm_bias")
               or "rel_bias" in n or n.startswith(f"{dec}.moe.") for n in no_decay)
    assert sorted(decay + no_decay) == sorted(n for n, _ in model.named_parameters())

    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    params = dict(model.named_parameters())
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(params[n]) for n in decay}
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(params[n]) for n in no_decay}


def test_tied_and_shared_parameters_are_listed_once_and_the_tied_head_does_not_decay():
    model = build_model(tiny("encoder-decoder", n_layers=1, tie_embeddings=True,
                             share_encoder_decoder=True, position="learned"))
    decay, no_decay = weight_decay_split(model)
    assert "lm_head.weight" not in decay + no_decay  # tied: the token embedding is the head
    assert "embed_tokens.weight" in no_decay
    assert "encoder_embed.pos.weight" in no_decay and "decoder_embed.pos.weight" in no_decay
    shared = [n for n in decay if n.endswith("attn.qkv.weight")]
    assert shared == ["encoder.blocks.0.attn.qkv.weight"]  # one name for the shared matrix
