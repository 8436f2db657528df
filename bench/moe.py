"""Mixture-of-experts speed: archlab vs transformers' Mixtral, same weights, one process.

Model: Mixtral-like decoder, 4 layers, d=256, 4 heads (2 KV heads), 8 experts top-2 of width
512, vocab 8192 (random init in transformers, converted with archlab.convert, so both compute
the same function; the decoded tokens are compared as a check). fp32, 2 threads by default.

Cases
  train   forward + backward + fused AdamW step, batch 4 x 256 tokens, causal LM loss plus the
          load-balancing loss (HF: output_router_logits=True, router_aux_loss_coef; archlab:
          the objective path, aux_loss_coef the same)
  decode  batch-1 greedy decoding, prompt 32, 128 new tokens (EOS disabled)
and the same two for an archlab *dense* decoder with the same active FLOPs per token
(d_ff = top_k x expert width, no router): the cost of routing.

Timings alternate between the libraries step by step (run by run for decoding); medians.
Prints tokens/s and ``ratio NAME = X.XX`` (archlab speed / HF speed; for ``moe-vs-dense-*``
archlab MoE speed / archlab dense speed).

    python bench/moe.py [--steps 4] [--rounds 3] [--threads 2] [--new 128] [--only train,decode]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab import build_model, flops_per_example  # noqa: E402
from archlab.convert import hf_to_archlab  # noqa: E402
from archlab.generate import GenerationConfig, generate  # noqa: E402
from archlab.objectives import token_loss  # noqa: E402

V, D, H, KV, L, E, K, FE = 8192, 256, 4, 2, 4, 8, 2, 512
B, T = 4, 256
if "--tiny" in sys.argv:  # a quick check that the script runs; its numbers mean nothing
    V, D, L, FE, B, T = 256, 32, 2, 16, 2, 16
AUX = 0.01


def models():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MixtralConfig(vocab_size=V, hidden_size=D, intermediate_size=FE, num_hidden_layers=L,
                           num_attention_heads=H, num_key_value_heads=KV, num_local_experts=E,
                           num_experts_per_tok=K, max_position_embeddings=1024, router_aux_loss_coef=AUX,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    hf = tf.MixtralForCausalLM(cfg)
    acfg, state = hf_to_archlab(hf.config.to_dict(), hf.state_dict(), dropout=0.0)
    moe = build_model(acfg)
    moe.load_state_dict(state, strict=False)
    dense = build_model(acfg.replace(ffn=None, moe=None, d_ff=K * FE))
    return hf, moe, dense


def al_loss_fn(model, x, y):
    def f():
        out = model(x, return_logits=False)
        loss = token_loss(model, out.hidden, y).loss
        if out.aux_losses:
            loss = loss + AUX * out.aux_losses["balance"]
        return loss
    return f


def hf_loss_fn(model, x, y):
    def f():
        # the same T predictions as archlab; HF's aux_loss: load_balancing_loss_func over the
        # layers' router logits (what MixtralForCausalLM adds to its loss with labels)
        out = model(input_ids=x, output_router_logits=True)
        loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
        return loss + AUX * out.aux_loss
    return f


def step(model, loss_fn, opt) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss_fn().backward()
    opt.step()
    return time.perf_counter() - t


def bench_train(hf, moe, dense, args) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (B, T + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    fns = {"hf": (hf, hf_loss_fn(hf, x, y)),
           "archlab": (moe, al_loss_fn(moe, x, y)), "dense": (dense, al_loss_fn(dense, x, y))}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, (m, _) in fns.items()}
    for k, (m, f) in fns.items():
        m.train()
        step(m, f, opts[k])
        step(m, f, opts[k])
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds * args.steps):
        for k, (m, f) in fns.items():
            times[k].append(step(m, f, opts[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    tok = B * T
    fl = {k: B * flops_per_example(m.cfg, tgt_len=T).train for k, m in (("archlab", moe), ("dense", dense))}
    print(f"[train] {tok} tokens/step; active training FLOPs/step: MoE {fl['archlab'] / 1e9:.2f} G, "
          f"dense {fl['dense'] / 1e9:.2f} G")
    for k in ("hf", "archlab", "dense"):
        name = {"hf": "HF Mixtral", "archlab": "archlab MoE", "dense": "archlab dense"}[k]
        print(f"  {name:14s} {tok / med[k]:9.0f} tokens/s  {med[k] * 1e3:7.1f} ms/step")
    return {"train": med["hf"] / med["archlab"], "moe-vs-dense-train": med["dense"] / med["archlab"]}


def bench_decode(hf, moe, dense, args) -> dict[str, float]:
    n = args.new
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (1, 32), generator=g)
    for m in (hf, moe, dense):
        m.eval()
    gcfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, prompt_layout="raw")

    def run_hf():
        with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               num_beams=1, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)

    runs = {"hf": run_hf, "archlab": lambda: generate(moe, ids.tolist(), gcfg),
            "dense": lambda: generate(dense, ids.tolist(), gcfg)}
    outs = {k: f() for k, f in runs.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            outs[k] = f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = outs["archlab"].sequences[0] == outs["hf"][0, -n:].tolist()
    print(f"[decode] batch 1, prompt 32, {n} new tokens (same tokens as HF: {same})")
    for k in ("hf", "archlab", "dense"):
        name = {"hf": "HF Mixtral", "archlab": "archlab MoE", "dense": "archlab dense"}[k]
        print(f"  {name:14s} {n / med[k]:9.1f} tokens/s")
    return {"decode-b1": med["hf"] / med["archlab"], "moe-vs-dense-decode": med["dense"] / med["archlab"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--only", default="train,decode")
    ap.add_argument("--tiny", action="store_true", help="tiny model: checks the script runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"fp32; Mixtral-like {L} layers d={D}, {E} experts top-{K} of width {FE}, vocab {V}")
    hf, moe, dense = models()
    n_total = sum(p.numel() for p in moe.parameters())
    print(f"params: MoE total {n_total / 1e6:.2f}M (HF {sum(p.numel() for p in hf.parameters()) / 1e6:.2f}M), "
          f"dense {sum(p.numel() for p in dense.parameters()) / 1e6:.2f}M")
    ratios: dict[str, float] = {}
    wanted = set(args.only.split(","))
    # decoding first: the training steps update each library's copy of the weights on its own,
    # after which greedy tokens of the two need not agree any more
    if "decode" in wanted:
        ratios.update(bench_decode(hf, moe, dense, args))
    if "train" in wanted:
        ratios.update(bench_train(hf, moe, dense, args))
    print()
    for k, r in ratios.items():
        print(f"ratio {k} = {r:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
