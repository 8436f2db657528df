"""MoE auxiliary losses reach the optimizer through the objectives; the trainer logs them,
updates the sigmoid-bias router after each optimizer step, and writes expert health per
evaluation into metrics.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from archlab import build_model
from archlab.config import MoEConfig
from archlab.objectives import Example, SpecialTokens, make_objective, token_loss
from archlab.train.config import EvalConfig, TrainConfig
from archlab.train.trainer import Trainer
from tests.helpers import tiny

SP = SpecialTokens(vocab_size=61, first_normal=8)


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Example(ids=rng.integers(8, 61, size=int(rng.integers(5, 20))).tolist()) for _ in range(n)]


def _model(arch="decoder", **moe):
    torch.manual_seed(0)
    return build_model(tiny(arch, ffn="DE", moe=MoEConfig(n_experts=4, top_k=2, **moe)))


@pytest.mark.parametrize("arch,objective", [("decoder", "causal-lm"), ("encoder-decoder", "denoising"),
                                            ("encoder", "masked-lm")])
def test_objective_adds_weighted_aux_losses_in_training_only(arch, objective):
    model = _model(arch, aux_loss_coef=0.1, z_loss_coef=0.01)
    obj = make_objective(objective, SP, arch, 64)
    batch = obj.build(_examples(4), np.random.default_rng(0))
    model.train()
    out = obj.loss(model, batch)
    aux = model.aux_losses()
    assert set(out.aux) == {"balance", "z"}
    torch.testing.assert_close(out.aux_loss, 0.1 * aux["balance"] + 0.01 * aux["z"])
    # the same forward without the aux terms: the task loss alone (no dropout: deterministic)
    ce = token_loss(model, obj.forward(model, batch).hidden, batch["labels"]).loss
    torch.testing.assert_close(out.loss, ce + 0.1 * aux["balance"] + 0.01 * aux["z"])
    torch.testing.assert_close(out.task_loss, ce)
    out.loss.backward()  # the router learns from the balancing loss
    router = next(p for n, p in model.named_parameters() if n.endswith("mlp.router.weight"))
    assert router.grad is not None and float(router.grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        ev = obj.loss(model, batch)
    assert ev.aux_loss is None and set(ev.aux) == {"balance", "z"}  # eval: plain task loss


def test_trainer_logs_aux_health_and_updates_bias(tmp_path):
    model = _model(router="sigmoid-bias", aux_loss_coef=0.01, bias_update_rate=0.01)
    obj = make_objective("causal-lm", SP, "decoder", 64)
    ex = _examples(24)

    def batches(epoch):
        return [ex[i:i + 4] for i in range(0, len(ex), 4)]

    cfg = TrainConfig(steps=4, lr=1e-3, warmup_steps=0, log_every=1, save_every=0,
                      tokens_per_batch=256, max_len=32, seed=1)  # 8 per eval batch: padded
    tr = Trainer(model=model, objective=obj, batches_for_epoch=batches, valid_examples=_examples(6, 1),
                 train_cfg=cfg, eval_cfg=EvalConfig(every=2), run_dir=tmp_path, progress=False,
                 log=lambda m: None)
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "eval" not in r]
    assert len(train) == 4 and all("moe_balance_loss" in r and "moe_z_loss" in r for r in train)
    evals = [r for r in rows if "eval" in r]
    assert len(evals) == 2 and all("moe" in r for r in evals)
    h = evals[-1]["moe"]
    layer = h["layers"]["decoder.blocks.1.mlp"]
    # every validation token (real tokens of the 6 examples, <bos> + ids) routed to 2 experts
    n_tok = sum(len(e.ids) + 1 for e in _examples(6, 1))
    assert sum(layer["tokens_per_expert"]) == 2 * n_tok
    assert set(layer) >= {"max_violation", "dead_experts", "router_entropy", "dropped_fraction"}
    b = model.decoder.blocks[1].mlp.expert_bias
    assert float(b.abs().sum()) > 0  # moved by the post-step hook
