"""``archlab info`` (parameters and FLOPs per family) and ``archlab sanity`` (a few optimizer
steps of each family on one fixed batch: the quickest check that a config trains)."""

from __future__ import annotations

import argparse
import json
import time

from archlab.config import ModelConfig, to_dict
from archlab.errors import ConfigError
from archlab.model import count_params, flops_per_token
from archlab.model.flops import (
    decode_memory,
    flops_by_layer_type,
    moe_params,
    params_by_layer_type,
)
from archlab.model.presets import resolve_model_config


def _split_specs(items: list[str]) -> tuple[list[str], list[str]]:
    specs = [s for s in items if "=" not in s]
    overrides = [s for s in items if "=" in s]
    if not specs:
        raise ConfigError("give at least one preset or config file (e.g. decoder-tiny); "
                          "'archlab info --list' shows the presets")
    return specs, overrides


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _pattern(cfg: ModelConfig) -> str:
    letters = {"attention": "A", "mamba": "M", "mamba2": "S"}
    sides = [s for s in ("encoder", "decoder")
             if (cfg.encoder_layers if s == "encoder" else cfg.decoder_layers)]
    return "/".join("".join(letters[m] for m, _ in cfg.layer_kinds(s)) for s in sides)


def layer_accounting(cfg: ModelConfig, seq_len: int) -> dict:
    """Params and forward FLOPs per token by layer type, and per-example decoding memory
    (fp32) after ``seq_len`` decoder tokens: KV bytes grow with length, SSM state bytes do not."""
    by = flops_by_layer_type(cfg, seq_len if cfg.encoder_layers else 0,
                             seq_len if cfg.decoder_layers else 0)
    flops: dict[str, float] = {}
    for d in by.values():
        for k, v in d.items():
            flops[k] = flops.get(k, 0) + v / seq_len
    out = {"pattern": _pattern(cfg), "params": params_by_layer_type(cfg),
           "forward_flops_per_token": flops}
    if cfg.decoder_layers:
        m = decode_memory(cfg, seq_len, src_len=seq_len if cfg.arch == "encoder-decoder" else 0)
        out["decode_bytes"] = {"length": seq_len, "kv": m.kv, "cross_kv": m.cross_kv,
                               "ssm_state": m.ssm_state}
    return out


def describe(cfg: ModelConfig, seq_len: int) -> dict:
    p = count_params(cfg)
    f = flops_per_token(cfg, seq_len)
    return {
        "by_layer_type": layer_accounting(cfg, seq_len),
        "arch": cfg.arch,
        "layers": (f"{cfg.encoder_layers}+{cfg.decoder_layers}" if cfg.arch == "encoder-decoder"
                   else str(cfg.n_layers)),
        "d_model": cfg.d_model,
        "params": {"total": p.total, "active": p.active, "embedding": p.embedding,
                   "encoder": p.encoder, "decoder": p.decoder, "head": p.head,
                   "non_embedding": p.non_embedding},
        "flops_per_token": {"seq_len": seq_len, **f},
        **({"moe": _moe_info(cfg, seq_len)} if cfg.has_moe else {}),
    }


def _moe_info(cfg: ModelConfig, seq_len: int) -> dict:
    m = cfg.moe_cfg
    by = flops_by_layer_type(cfg, seq_len if cfg.encoder_layers else 0,
                             seq_len if cfg.decoder_layers else 0)
    moe_flops = sum(d.get("moe", 0) for d in by.values())
    n_tok = seq_len * (2 if cfg.arch == "encoder-decoder" else 1)
    return {"n_experts": m.n_experts, "top_k": m.top_k, "router": m.router, "norm_topk": m.norm_topk,
            "n_shared_experts": m.n_shared_experts, "capacity_factor": m.capacity_factor,
            **moe_params(cfg), "forward_flops_per_token": moe_flops / n_tok}


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="*", metavar="PRESET_OR_CONFIG | KEY=VALUE",
                   help="presets (decoder-small, ...) or YAML files; KEY=VALUE overrides apply to all")
    p.add_argument("--seq-len", type=int, default=None,
                   help="context length for FLOPs per token (default: model.max_seq_len)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--config", action="store_true", help="also print the resolved model config")


def run_info(args: argparse.Namespace) -> int:
    """Print parameter counts and FLOPs per token for presets or config files.

    Encoder-decoder models show encoder FLOPs per source token and decoder FLOPs per target
    token separately (cross-attention counted in the decoder)."""
    from archlab.model.presets import preset_names

    if args.list:
        print("\n".join(preset_names()))
        return 0
    specs, overrides = _split_specs(args.specs)
    rows = []
    for spec in specs:
        cfg = resolve_model_config(spec, overrides)
        seq = args.seq_len or cfg.max_seq_len
        if seq < 1:
            raise ConfigError(f"--seq-len must be >= 1, got {seq}")
        d = describe(cfg, seq)
        d["name"] = spec
        if args.config:
            d["config"] = to_dict(cfg)
        rows.append(d)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'model':<28} {'arch':<16} {'layers':>6} {'d':>5} {'params':>9} {'non-emb':>9} " \
           f"{'enc':>9} {'dec':>9} {'fwd/tok':>9} {'train/tok':>9}  at T"
    print(head)
    print("-" * len(head))
    for r in rows:
        p, f = r["params"], r["flops_per_token"]
        print(f"{r['name']:<28} {r['arch']:<16} {r['layers']:>6} {r['d_model']:>5} "
              f"{_human(p['total']):>9} {_human(p['non_embedding']):>9} {_human(p['encoder']):>9} "
              f"{_human(p['decoder']):>9} {_human(f['forward']):>9} {_human(f['train']):>9}  {f['seq_len']}")
        if "encoder_forward_per_src_token" in f:
            print(f"{'':<28} encoder {_human(f['encoder_forward_per_src_token'])} FLOPs/src token, "
                  f"decoder {_human(f['decoder_forward_per_tgt_token'])} FLOPs/tgt token (forward)")
        if "moe" in r:  # total vs active: what an MoE changes
            mo = r["moe"]
            print(f"{'':<28} MoE {mo['layers']} layers x {mo['n_experts']} experts top-{mo['top_k']} "
                  f"({mo['router']}{'' if mo['norm_topk'] else ' unnormalised'}"
                  f"{', ' + str(mo['n_shared_experts']) + ' shared' if mo['n_shared_experts'] else ''}): "
                  f"params total {_human(p['total'])}, active {_human(p['active'])}/token; "
                  f"experts {_human(mo['total'])} total, {_human(mo['active'])} active; "
                  f"MoE FLOPs {_human(mo['forward_flops_per_token'])}/tok (forward, active)")
        lt = r["by_layer_type"]
        if set(lt["params"]) - {"attention", "cross-attention"}:  # Mamba / hybrid stacks
            parts = ", ".join(f"{k} {_human(v)} params {_human(lt['forward_flops_per_token'][k])} "
                              f"FLOPs/tok" for k, v in lt["params"].items())
            print(f"{'':<28} layers {lt['pattern']}: {parts}"
                  + (f", ffn {_human(lt['forward_flops_per_token']['ffn'])} FLOPs/tok"
                     if "ffn" in lt["forward_flops_per_token"] else ""))
            if "decode_bytes" in lt:
                db = lt["decode_bytes"]
                print(f"{'':<28} decoding state per example at T={db['length']} (fp32): KV "
                      f"{_human(db['kv'])}B (grows with T), SSM {_human(db['ssm_state'])}B (constant)"
                      + (f", cross KV {_human(db['cross_kv'])}B" if db["cross_kv"] else ""))
        if args.config:
            print(json.dumps(r["config"]))
    return 0


def _add_sanity(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="*", metavar="PRESET_OR_CONFIG | KEY=VALUE")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def sanity_losses(cfg: ModelConfig, *, steps: int = 20, lr: float = 3e-3, batch: int = 8,
                  seq_len: int = 32, seed: int = 0) -> list[float]:
    """Train ``cfg`` for ``steps`` AdamW steps on one fixed synthetic batch with the family's
    natural objective (masked-LM, causal LM, prefix-LM, seq2seq reversal); returns losses."""
    import numpy as np
    import torch

    from archlab.model import build_model
    from archlab.objectives import Example, SpecialTokens, make_objective

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    special = SpecialTokens(vocab_size=cfg.vocab_size, first_normal=8)
    natural = {"encoder": "masked-lm", "decoder": "causal-lm", "prefix-lm": "prefix-lm",
               "encoder-decoder": "seq2seq"}[cfg.arch]
    obj = make_objective(natural, special, cfg.arch, max_len=min(cfg.max_seq_len, 2 * seq_len + 4))
    toks = rng.integers(8, cfg.vocab_size, size=(batch, seq_len)).tolist()
    examples = [Example(ids=t, src=t, tgt=t[::-1]) for t in toks]
    data = obj.build(examples, rng)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        out = obj.loss(model, data)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
    return losses


def run_sanity(args: argparse.Namespace) -> int:
    """Run a few optimizer steps of each model on one fixed batch and show the loss falling.

    Each family trains with its natural objective (encoder: masked-LM, decoder: causal LM,
    prefix-LM: prefix-LM, encoder-decoder: seq2seq) on a synthetic batch it can memorise."""
    specs, overrides = _split_specs(args.specs)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    failed = 0
    for spec in specs:
        cfg = resolve_model_config(spec, overrides)
        t0 = time.perf_counter()
        losses = sanity_losses(cfg, steps=args.steps, lr=args.lr, batch=args.batch,
                               seq_len=args.seq_len, seed=args.seed)
        dt = time.perf_counter() - t0
        ok = losses[-1] < losses[0]
        failed += not ok
        trail = " ".join(f"{x:.2f}" for x in losses[:: max(1, len(losses) // 6)])
        print(f"{spec:<24} {cfg.arch:<16} loss {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"({'falls' if ok else 'DOES NOT FALL'}) in {args.steps} steps, {dt:.1f}s  [{trail}]")
    return 1 if failed else 0


COMMANDS = [("info", _add_info, run_info), ("sanity", _add_sanity, run_sanity)]
