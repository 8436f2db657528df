"""Where a batch-1 decoding step's time goes on CPU: weight products and per-op overhead.

1. The 25 weight matrices of the GPT-2-like bench model (6 layers, d=384, d_ff=1536, vocab
   8192; 55 MB fp32) multiplied by M rows: ``F.linear`` against archlab's row-blocked
   product (``archlab.generate.backends.blocked_linear``, the ``cpu-blocked`` decoding
   backend), and a plain read (``sum``) of the same
   bytes as the bandwidth reference.
2. A bare-tensor decoding step of the same model (no modules, blocked products, static KV
   cache): what eager PyTorch costs per token with almost no framework code around the ops,
   the floor that archlab's step (``bench/generate.py``) can be compared with.

    python bench/gemv.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab.generate.backends import blocked_linear  # noqa: E402

D, FF, V, L, H = 384, 1536, 8192, 6, 6


def timed(fn, n: int) -> float:
    fn()
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def weights() -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    g = torch.Generator().manual_seed(0)
    ws = []
    for _ in range(L):
        for n_out, n_in in ((3 * D, D), (D, D), (FF, D), (D, FF)):
            ws.append((torch.randn(n_out, n_in, generator=g) * 0.02, torch.zeros(n_out)))
    ws.append((torch.randn(V, D, generator=g) * 0.02, None))  # tied LM head
    return ws


def bare_step_ms(blocks: int) -> float:
    """One decoding step of the GPT-2-like model written with bare tensors."""
    g = torch.Generator().manual_seed(1)

    def blk(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(n_out, n_in, generator=g) * 0.02
        return w.view(blocks, n_out // blocks, n_in), torch.zeros(blocks, n_out // blocks, 1)

    layers = [dict(qkv=blk(3 * D, D), o=blk(D, D), w1=blk(FF, D), w2=blk(D, FF)) for _ in range(L)]
    emb = torch.randn(V, D, generator=g) * 0.02
    pos = torch.randn(512, D, generator=g) * 0.02
    head = emb.view(blocks, V // blocks, D)
    ones, zeros = torch.ones(D), torch.zeros(D)
    k_cache = torch.zeros(L, 1, H, 256, D // H)
    v_cache = torch.zeros(L, 1, H, 256, D // H)

    def lin(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # x (1, K) -> (1, N); x.t() keeps the row stride BLAS wants
        return torch.baddbmm(wb[1], wb[0], x.t().expand(blocks, -1, 1)).view(1, -1)

    def step(tok: torch.Tensor, t: int) -> torch.Tensor:
        x = emb[tok] + pos[t]  # (1, D)
        for i, p in enumerate(layers):
            q, k, v = lin(F.layer_norm(x, (D,), ones, zeros), p["qkv"]).view(1, 3, H, 1, D // H).unbind(1)
            k_cache[i, :, :, t : t + 1] = k
            v_cache[i, :, :, t : t + 1] = v
            y = F.scaled_dot_product_attention(q, k_cache[i, :, :, : t + 1], v_cache[i, :, :, : t + 1])
            x = x + lin(y.view(1, D), p["o"])
            x = x + lin(F.gelu(lin(F.layer_norm(x, (D,), ones, zeros), p["w1"])), p["w2"])
        x = F.layer_norm(x, (D,), ones, zeros)
        return torch.bmm(head, x.t().expand(blocks, D, 1)).view(1, V).argmax(-1)

    with torch.inference_mode():
        tok = torch.tensor([5])
        for t in range(32):
            tok = step(tok, t)
        start = time.perf_counter()
        for t in range(32, 160):
            tok = step(tok, t)
        return (time.perf_counter() - start) / 128 * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = weights()
    nbytes = sum(w.numel() * w.element_size() for w, _ in ws)
    print(f"torch {torch.__version__}, {args.threads} threads; {len(ws)} matrices, {nbytes / 1e6:.1f} MB fp32")
    read = timed(lambda: [w.sum() for w, _ in ws], 30)
    print(f"plain read (sum)          {read * 1e3:6.3f} ms  {nbytes / read / 1e9:5.1f} GB/s")
    with torch.inference_mode():
        for m in (1, 4, 8):
            xs = {n: torch.randn(m, n) for n in (D, FF)}
            ref = timed(lambda xs=xs: [F.linear(xs[w.shape[1]], w, b) for w, b in ws], 30)
            ours = timed(lambda xs=xs: [blocked_linear(xs[w.shape[1]], w, b) for w, b in ws], 30)
            print(f"M={m}  F.linear {ref * 1e3:6.3f} ms ({nbytes / ref / 1e9:5.1f} GB/s)   "
                  f"blocked {ours * 1e3:6.3f} ms ({nbytes / ours / 1e9:5.1f} GB/s)")
            print(f"ratio blocked-vs-F.linear-M{m} = {ref / ours:.2f}")
    ms = bare_step_ms(max(args.threads, 1))
    print(f"bare-tensor decoding step: {ms:.3f} ms ({1e3 / ms:.0f} tokens/s at batch 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
