"""Decoding speed: archlab.generate vs ``transformers`` ``generate``, same weights, one process.

Models (random init in HF, converted to archlab with archlab.convert, so both decode the same
function and their outputs are compared as a check):
  gpt2  GPT-2-like decoder: 6 layers, d=384, 6 heads, vocab 8192; prompt 32, 128 new tokens
  t5    T5-like 3+3 encoder-decoder, d=384, vocab 8192; source 64, 128 new tokens

Cases: greedy at batch 1 and batch 8, beam search (4 beams) at batch 1. EOS is disabled
(min_new_tokens = max_new_tokens) so both produce exactly 128 tokens per sequence. Timings
alternate between the libraries run by run; the median is reported.

Prints new tokens/s for each library and ``ratio NAME = X.XX`` (archlab speed / HF speed).
After gpt2's batch-1 case it also prints the speed of a bare-tensor decoding step of the same
model (no modules, no generation loop, no prompt; ``bench/gemv.py``): an upper bound on what
any eager implementation reaches on this machine, and its ratio to HF in the same run.

``--backend`` picks archlab's decoding backend (``archlab.generate.backends``; default auto,
which is cpu-blocked here).

    python bench/generate.py [--rounds 3] [--threads 2] [--only gpt2,t5] [--new 128] [--backend auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab.convert import hf_to_archlab  # noqa: E402
from archlab.generate import GenerationConfig, generate  # noqa: E402
from archlab.generate.config import BACKENDS  # noqa: E402
from archlab.model import build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv import bare_step_ms  # noqa: E402

V, D, H, FF = 8192, 384, 6, 1536


def hf_models(which: list[str]):
    import transformers as tf

    torch.manual_seed(0)
    if "gpt2" in which:
        cfg = tf.GPT2Config(vocab_size=V, n_embd=D, n_layer=6, n_head=H, n_positions=512, bos_token_id=1,
                            eos_token_id=2, pad_token_id=0)
        yield "gpt2", tf.GPT2LMHeadModel(cfg).eval(), 32
    if "t5" in which:
        cfg = tf.T5Config(vocab_size=V, d_model=D, d_kv=D // H, d_ff=FF, num_layers=3, num_decoder_layers=3,
                          num_heads=H, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0,
                          eos_token_id=1)
        yield "t5", tf.T5ForConditionalGeneration(cfg).eval(), 64


def to_archlab(hf) -> torch.nn.Module:
    cfg, state = hf_to_archlab(hf.config.to_dict(), hf.state_dict(), dropout=0.0)
    model = build_model(cfg)
    model.load_state_dict(state, strict=False)
    return model.eval()


@torch.inference_mode()
def hf_generate(hf, ids: torch.Tensor, mask: torch.Tensor, beams: int, n_new: int) -> torch.Tensor:
    return hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=beams,
                       max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)


def timed(fn, rounds: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="gpt2,t5")
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--backend", default="auto", choices=BACKENDS, help="archlab decoding backend")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_new = args.new
    print(f"torch {torch.__version__}, {args.threads} threads, {n_new} new tokens, fp32, "
          f"archlab backend {args.backend}")
    cases = [("greedy-b1", 1, 1), ("greedy-b8", 8, 1), ("beam4-b1", 1, 4)]
    for name, hf, src_len in hf_models(args.only.split(",")):
        ours = to_archlab(hf)
        g = torch.Generator().manual_seed(1)
        for case, batch, beams in cases:
            ids = torch.randint(3, V, (batch, src_len), generator=g)
            mask = torch.ones_like(ids)
            prompts = ids.tolist()

            gcfg = GenerationConfig(strategy="beam" if beams > 1 else "greedy", num_beams=beams,
                                    max_new_tokens=n_new, min_new_tokens=n_new, prompt_layout="raw",
                                    backend=args.backend)
            run_hf = partial(hf_generate, hf, ids, mask, beams, n_new)
            run_ours = partial(generate, ours, prompts, gcfg)
            t_hf, ref = timed(run_hf, args.rounds)
            t_ours, out = timed(run_ours, args.rounds)
            new_hf = ref[:, -n_new:].tolist()
            same = sum(a == b for a, b in zip(out.sequences, new_hf))
            tok = batch * n_new
            r = t_hf / t_ours
            print(f"{name:5s} {case:10s} archlab {tok / t_ours:8.0f} tok/s   HF {tok / t_hf:8.0f} tok/s   "
                  f"(same tokens as HF: {same}/{batch})")
            print(f"ratio {name}-{case} = {r:.2f}")
            if name == "gpt2" and case == "greedy-b1":
                ms = statistics.median(bare_step_ms(args.threads) for _ in range(args.rounds))
                print(f"gpt2  bare-tensor step (upper bound, no prompt or loop) {1e3 / ms:8.0f} tok/s "
                      f"= {(1e3 / ms) / (tok / t_hf):.2f}x HF")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
