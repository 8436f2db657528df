"""Sliding-window attention: the banded kernel vs SDPA with the window as a mask tensor.

One self-attention of B x H heads (hd 64, 2 KV heads: GQA) over T tokens under a window w,
causal and bidirectional, computed two ways by archlab's attention module:

  sdpa_mask  ``F.scaled_dot_product_attention`` with the (1, 1, T, T) band mask (what ran
             before: the CPU flash kernel computes all T^2 pairs, the mask only zeroes scores)
  banded     ``attention.banded_attention``: blocks of w queries x the 2w (causal) or 3w keys
             their band can reach (what ``build_mask(..., banded=True)`` picks when it computes
             at most half the pairs; ``masks.band_blocks``)

and, with ``--flex``, ``torch.nn.attention.flex_attention`` compiled with a block mask (first
call compiles: its time is printed separately; not used by archlab, see the README).
Forward, and forward + backward (``--backward``), alternating the two per round; minimum
over rounds. Also prints the (query, key) pairs each computes (``model.flops.attention_pairs``
for the banded one) and the FLOPs FlopCounterMode sees, and checks banded == sdpa_mask.

    python bench/attention_window.py [--threads 2] [--rounds 5] [--batch 2] [--backward] [--flex]

Prints ``ratio window_banded_vs_sdpa_mask[CASE] = X`` (banded time / sdpa_mask time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab.config import ModelConfig  # noqa: E402
from archlab.model.attention import banded_attention  # noqa: E402
from archlab.model.flops import attention_pairs  # noqa: E402
from archlab.model.masks import build_mask  # noqa: E402

H, KV, HD = 4, 2, 64
CASES = [(kind, T, w) for kind in ("causal", "bidirectional") for T in (1024, 2048) for w in (128, 256)]
if "--tiny" in sys.argv:  # a quick check that the script runs; its numbers mean nothing
    CASES = [("causal", 64, 8), ("bidirectional", 96, 8)]


def _sdpa_flops(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *a, out_shape=None, **k):
    B, h, Tq, d = query_shape
    return 2 * B * h * (Tq * (Tq + 1) // 2 if is_causal else Tq * key_shape[-2]) * (d + value_shape[-1])


def counted_flops(fn) -> int:
    m = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=m) as fc:
        fn()
    return fc.get_total_flops()


def timed(fn, backward: bool, inputs: list[torch.Tensor]) -> float:
    t = time.perf_counter()
    if backward:
        fn().sum().backward()
        for x in inputs:
            x.grad = None
    else:
        with torch.no_grad():
            fn()
    return time.perf_counter() - t


def run_case(kind: str, T: int, w: int, args: argparse.Namespace) -> None:
    B = args.batch
    q = torch.randn(B, H, T, HD, requires_grad=args.backward)
    k = torch.randn(B, KV, T, HD, requires_grad=args.backward)
    v = torch.randn(B, KV, T, HD, requires_grad=args.backward)
    dense = build_mask(kind, T, T, window=w)  # (1, 1, T, T) bool
    band = build_mask(kind, T, T, window=w, banded=True).band
    if band is None:
        print(f"{kind},T={T},w={w}: the banded kernel is not chosen here (it would compute more than "
              "half the pairs)")
        return

    def sdpa_mask() -> torch.Tensor:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=dense.mask, enable_gqa=True)
        return y.transpose(1, 2).reshape(B, T, H * HD)

    def banded() -> torch.Tensor:
        return banded_attention(q, k, v, band)

    with torch.no_grad():
        err = (sdpa_mask() - banded()).abs().max().item()
    cfg = ModelConfig(arch="decoder" if kind == "causal" else "encoder", d_model=H * HD, n_heads=H,
                      n_kv_heads=KV, attn_window=w, position="rope")
    pairs = {"sdpa_mask": T * T, "banded": attention_pairs(cfg, T, kind)}
    flops = {"sdpa_mask": counted_flops(sdpa_mask), "banded": counted_flops(banded)}
    assert flops["banded"] == B * H * 4 * HD * pairs["banded"]  # the formula is what runs
    fns = {"sdpa_mask": sdpa_mask, "banded": banded}
    ts: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        timed(fn, args.backward, [q, k, v])
    for _ in range(args.rounds):  # alternating, so both see the same load
        for name, fn in fns.items():
            ts[name].append(timed(fn, args.backward, [q, k, v]))
    best = {n: min(t) for n, t in ts.items()}
    case = f"{kind},T={T},w={w}"
    print(f"{case}: sdpa_mask {best['sdpa_mask'] * 1e3:.1f} ms ({pairs['sdpa_mask']} pairs, "
          f"{flops['sdpa_mask'] / 1e6:.0f} MFLOP), banded {best['banded'] * 1e3:.1f} ms "
          f"({pairs['banded']} pairs, {flops['banded'] / 1e6:.0f} MFLOP), max |diff| {err:.1e}")
    if args.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def allowed(b, h, qi, ki):  # noqa: ANN001, ANN202
            near = (qi - ki).abs() < w
            return near & (ki <= qi) if kind == "causal" else near

        bm = create_block_mask(allowed, None, None, T, T, device="cpu")
        flex = torch.compile(flex_attention)
        t0 = time.perf_counter()
        with torch.no_grad():
            yf = flex(q, k, v, block_mask=bm, enable_gqa=True)
        first = time.perf_counter() - t0
        ref = sdpa_mask().detach().view(B, T, H, HD).transpose(1, 2)
        tf = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with torch.no_grad():
                flex(q, k, v, block_mask=bm, enable_gqa=True)
            tf.append(time.perf_counter() - t0)
        print(f"  flex_attention (compiled, forward): {min(tf) * 1e3:.1f} ms, first call {first:.1f} s, "
              f"max |diff| {(yf - ref).abs().max().item():.1e}")
        print(f"ratio window_flex_vs_sdpa_mask[{case}] = {min(tf) / best['sdpa_mask']:.2f}")
    print(f"ratio window_banded_vs_sdpa_mask[{case}] = {best['banded'] / best['sdpa_mask']:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--flex", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--cases", default=None, help="kind:T:w,... (default: T 1024/2048 x w 128/256, both kinds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = CASES if args.cases is None else [
        (c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.cases.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, B={args.batch}, H={H} (KV {KV}), hd={HD}, "
          f"{'forward + backward' if args.backward else 'forward'}, min of {args.rounds} rounds")
    for kind, T, w in cases:
        run_case(kind, T, w, args)


if __name__ == "__main__":
    main()
