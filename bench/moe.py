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

  experts the routed experts' products alone (forward + backward of one layer's experts at
          the train case's shape: B x T x top-k rows over 8 experts) as the per-expert loop,
          one grouped matmul (torch.nn.functional.grouped_mm) and one padded batched matmul
          over experts (capacity = the largest expert's rows), then the whole archlab MoE
          training step with the loop and with grouped_mm (archlab's CPU training default)

Timings alternate between the libraries step by step (run by run for decoding); medians.
Prints tokens/s and ``ratio NAME = X.XX`` (archlab speed / HF speed; for ``moe-vs-dense-*``
archlab MoE speed / archlab dense speed; ``grouped-vs-loop-*``: grouped_mm speed / loop speed),
and beside the training ratios ``mfu NAME = 0.xx (of measured GEMM X GFLOP/s)``: archlab's
active training FLOPs per step (``flops_per_example(cfg, tgt_len=T).train``: 3 x forward, k of
E experts) / step time (AdamW step included), as a fraction of the fp32 GEMM rate measured on
the model's largest products with the same threads (bench/_gemm.py); ``mfu train_hf`` for
HF's step on the same FLOPs.

    python bench/moe.py [--steps 4] [--rounds 3] [--threads 2] [--new 128] [--only train,decode,experts]
                        [--profile]
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
from archlab.model.moe import cpu_train_experts, moe_layers  # noqa: E402
from archlab.objectives import token_loss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gemm import gemm_shapes, measure_gemm, mfu_line, profile_step  # noqa: E402

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
    shapes = gemm_shapes(moe.cfg, B * T) + gemm_shapes(dense.cfg, B * T, top=2)
    gemm = measure_gemm(shapes)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds * args.steps):
        for k, (m, f) in fns.items():
            times[k].append(step(m, f, opts[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    tok = B * T
    fl = {k: B * flops_per_example(m.cfg, tgt_len=T).train for k, m in (("archlab", moe), ("dense", dense))}
    fl["hf"] = fl["archlab"]
    gemm = gemm + measure_gemm(shapes)  # before and after the steps
    print(f"[train] {tok} tokens/step; active training FLOPs/step: MoE {fl['archlab'] / 1e9:.2f} G, "
          f"dense {fl['dense'] / 1e9:.2f} G (archlab's count, 3 x forward)")
    print(f"  {gemm.describe()}")
    for k in ("hf", "archlab", "dense"):
        name = {"hf": "HF Mixtral", "archlab": "archlab MoE", "dense": "archlab dense"}[k]
        print(f"  {name:14s} {tok / med[k]:9.0f} tokens/s  {med[k] * 1e3:7.1f} ms/step  "
              f"MFU {fl[k] / med[k] / gemm.peak:.1%} of measured GEMM")
    args.mfu_lines["train"] = [mfu_line("train", fl["archlab"], med["archlab"], gemm),
                               mfu_line("train_hf", fl["hf"], med["hf"], gemm)]
    args.mfu_lines["moe-vs-dense-train"] = [mfu_line("dense-train", fl["dense"], med["dense"], gemm)]
    if args.profile:
        profile_step(lambda: step(moe, fns["archlab"][1], opts["archlab"]), "archlab MoE train")
    return {"train": med["hf"] / med["archlab"], "moe-vs-dense-train": med["dense"] / med["archlab"]}


def _expert_kernels(layer, counts: list[int]):
    """The routed experts' products (gated activation, no bias: this bench's Mixtral) of
    rows grouped by expert, three ways: {name: f(xs) -> (M, C)}."""
    w_in, w_out = layer.w_in, layer.w_out  # (E, 2F, C), (E, C, F)
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    cap = max(counts)
    pos = torch.cat([torch.arange(c) + e * cap for e, c in enumerate(counts)])  # row -> padded slot

    def loop(xs):
        outs, start = [], 0
        for e, c in enumerate(counts):
            if c:
                outs.append(F.linear(layer._act(F.linear(xs[start:start + c], w_in[e])), w_out[e]))
                start += c
        return torch.cat(outs)

    def grouped(xs):
        h = layer._act(F.grouped_mm(xs, w_in.transpose(-2, -1), offs=offs))
        return F.grouped_mm(h, w_out.transpose(-2, -1), offs=offs)

    def padded(xs):  # one bmm over experts, each padded to the largest expert's rows
        xp = xs.new_zeros(len(counts) * cap, xs.shape[1]).index_copy(0, pos, xs).view(len(counts), cap, -1)
        h = layer._act(torch.bmm(xp, w_in.transpose(1, 2)))
        return torch.bmm(h, w_out.transpose(1, 2)).reshape(-1, xs.shape[1]).index_select(0, pos)

    return {"loop": loop, "grouped_mm": grouped, "padded-bmm": padded}


def bench_experts(moe, args) -> dict[str, float]:
    """The expert products alone (one layer, the train case's routing), then whole steps."""
    layer = next(m for _, m in moe_layers(moe))
    g = torch.Generator().manual_seed(3)
    M = B * T * layer.top_k
    counts = torch.bincount(torch.randint(0, layer.n_experts, (M,), generator=g), minlength=layer.n_experts).tolist()
    xs = torch.randn(M, layer.w_in.shape[-1], generator=g, requires_grad=True)
    dy = torch.randn(M, layer.w_in.shape[-1], generator=g)
    kernels = _expert_kernels(layer, counts)
    ref = None
    for name, f in kernels.items():  # same outputs and gradients (and a warm-up)
        layer.zero_grad(set_to_none=True)
        xs.grad = None
        y = f(xs)
        y.backward(dy)
        got = (y.detach(), xs.grad.clone(), layer.w_in.grad.clone(), layer.w_out.grad.clone())
        if ref is None:
            ref = got
        diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
        print(f"  [experts] {name:11s} max |difference| to the loop (output, grads): {diff:.1e}")
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for _ in range(args.rounds * args.steps):
        for name, f in kernels.items():
            layer.zero_grad(set_to_none=True)
            t = time.perf_counter()
            f(xs).backward(dy)
            times[name].append(time.perf_counter() - t)
    flops = 3 * 2 * M * layer.w_in.shape[-1] * 3 * layer.d_ff  # w_in (2F) + w_out (F), x 3
    print(f"[experts] one layer's experts, forward + backward: {M} rows over {layer.n_experts} experts "
          f"(counts {counts}), {flops / 1e9:.2f} GFLOP")
    for name, v in times.items():
        print(f"  {name:11s} median {statistics.median(v) * 1e3:7.1f} ms  best {min(v) * 1e3:7.1f} ms  "
              f"{flops / min(v) / 1e9:6.1f} GFLOP/s (best)")
    # the whole archlab training step with the loop and with grouped_mm, interleaved
    ids = torch.randint(3, V, (B, T + 1), generator=torch.Generator().manual_seed(1))
    f = al_loss_fn(moe, ids[:, :-1], ids[:, 1:])
    opt = torch.optim.AdamW(moe.parameters(), lr=1e-4, fused=True)
    moe.train()
    steps: dict[str, list[float]] = {"loop": [], "grouped_mm": []}
    for kind in steps:
        with cpu_train_experts(kind):
            step(moe, f, opt)
    for _ in range(args.rounds * args.steps):
        for kind in steps:
            with cpu_train_experts(kind):
                steps[kind].append(step(moe, f, opt))
    med = {k: statistics.median(v) for k, v in steps.items()}
    print("[experts] whole archlab MoE training step: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))
    return {"grouped-vs-loop-experts": statistics.median(times["loop"]) / statistics.median(times["grouped_mm"]),
            "padded-bmm-vs-loop-experts": statistics.median(times["loop"]) / statistics.median(times["padded-bmm"]),
            "grouped-vs-loop-train": med["loop"] / med["grouped_mm"]}


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
    ap.add_argument("--only", default="train,decode,experts")
    ap.add_argument("--profile", action="store_true",
                    help="profile one archlab MoE training step (torch.profiler, top operators)")
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
    args.mfu_lines = {}  # ratio name -> the mfu lines printed beside it
    if "train" in wanted:
        ratios.update(bench_train(hf, moe, dense, args))
    if "experts" in wanted:
        ratios.update(bench_experts(moe, args))
    print()
    for k, r in ratios.items():
        print(f"ratio {k} = {r:.2f}")
        for line in args.mfu_lines.get(k, ()):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
