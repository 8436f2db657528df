"""Training-step throughput: archlab vs Hugging Face transformers, same configs, one process.

forward + backward + AdamW step (fused AdamW for both: HF Trainer's default with torch >= 2.8),
fp32, 2 threads by default. Three configurations:
  gpt2  GPT-2-like decoder: 6 layers, d=384, 6 heads, vocab 8192, seq 256, batch 8 (causal LM)
  bert  BERT-like encoder of the same size (masked LM, 15 % of tokens)
  t5    T5-like 3+3 encoder-decoder, src 128 / tgt 128, batch 8 (seq2seq)

Both libraries see the same batch. Each library uses its own idiomatic loss path: HF's
``*ForMaskedLM`` computes vocabulary logits at every position; archlab's objectives project
only the labelled positions. Timings alternate between the two libraries step by step, so slow drift
of the machine affects both alike; the median step time is reported.

Prints tokens/s for each, ``ratio NAME = X.XX`` (archlab speed / HF speed, higher is better),
and beside it ``mfu NAME = 0.xx (of measured GEMM X GFLOP/s)``: archlab's training FLOPs per
step (``flops_per_example(...).train``, 3 x forward) / step time, as a fraction of this
machine's fp32 GEMM rate measured just before the case on the model's largest products with
the same threads (bench/_gemm.py); ``mfu NAME_hf`` the same for transformers' step.

    python bench/train_step.py [--steps 6] [--rounds 3] [--threads 2] [--only gpt2,bert,t5] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab import build_model, flops_per_example  # noqa: E402
from archlab.config import ModelConfig  # noqa: E402
from archlab.objectives import IGNORE, token_loss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gemm import gemm_shapes, measure_gemm, mfu, mfu_line, profile_step  # noqa: E402

V, D, H, FF, B = 8192, 384, 6, 1536, 8


def make_cases(seed: int = 0):
    """Yield one case at a time, so only one pair of models is in memory while it is timed."""
    import transformers as tf

    g = torch.Generator().manual_seed(seed)

    # --- GPT-2-like decoder, causal LM over 256 tokens
    T = 256
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=6, n_head=H,
                                          n_inner=FF, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0))
    al = build_model(ModelConfig(arch="decoder", vocab_size=V, d_model=D, n_heads=H, n_layers=6,
                                 d_ff=FF, max_seq_len=T, norm="layernorm", norm_eps=1e-5,
                                 position="learned", activation="gelu_tanh", bias=True))
    ids = torch.randint(0, V, (B, T + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]

    def hf_loss(m=hf, x=x, y=y):
        logits = m(input_ids=x).logits
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def al_loss(m=al, x=x, y=y):
        return token_loss(m, m(x, return_logits=False).hidden, y).loss

    yield ("gpt2", hf, hf_loss, al, al_loss, B * T, B * flops_per_example(al.cfg, tgt_len=T).train, B * T)

    # --- BERT-like encoder, masked LM with 15 % of positions predicted
    hf = tf.BertForMaskedLM(tf.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=6,
                                          num_attention_heads=H, intermediate_size=FF,
                                          max_position_embeddings=T, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0))
    al = build_model(ModelConfig(arch="encoder", vocab_size=V, d_model=D, n_heads=H, n_layers=6,
                                 d_ff=FF, max_seq_len=T, norm="layernorm", norm_eps=1e-12,
                                 norm_position="post", embedding_norm=True, type_vocab_size=2,
                                 position="learned", activation="gelu", bias=True,
                                 lm_head_bias=True))
    x = torch.randint(5, V, (B, T), generator=g)
    rng = np.random.default_rng(seed)
    y = torch.full((B, T), IGNORE)
    for i in range(B):
        pos = torch.as_tensor(rng.choice(T, size=int(0.15 * T), replace=False))
        y[i, pos] = x[i, pos]
        x[i, pos] = 3

    def hf_mlm(m=hf, x=x, y=y):
        return m(input_ids=x, labels=y).loss

    def al_mlm(m=al, x=x, y=y):
        return token_loss(m, m(x, return_logits=False).hidden, y).loss

    n_pred = int((y != IGNORE).sum()) // B
    yield ("bert", hf, hf_mlm, al, al_mlm, B * T,
           B * flops_per_example(al.cfg, src_len=T, predicted=n_pred).train, B * T)

    # --- T5-like 3+3 encoder-decoder, src 128 / tgt 128
    S = T2 = 128
    hf = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=V, d_model=D, d_kv=D // H, d_ff=FF,
                                                   num_layers=3, num_decoder_layers=3, num_heads=H,
                                                   dropout_rate=0.0, feed_forward_proj="relu",
                                                   decoder_start_token_id=0))
    al = build_model(ModelConfig(arch="encoder-decoder", vocab_size=V, d_model=D, n_heads=H,
                                 n_layers=3, d_ff=FF, norm="rmsnorm", position="t5-relative",
                                 activation="relu", bias=False, attn_scale=1.0,
                                 lm_head_scale=D**-0.5, decoder_start_token_id=0))
    src = torch.randint(0, V, (B, S), generator=g)
    tgt = torch.randint(0, V, (B, T2 + 1), generator=g)
    dec_in, y = tgt[:, :-1], tgt[:, 1:]

    def hf_s2s(m=hf, s=src, d=dec_in, y=y):
        logits = m(input_ids=s, decoder_input_ids=d).logits
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def al_s2s(m=al, s=src, d=dec_in, y=y):
        return token_loss(m, m(s, decoder_input_ids=d, return_logits=False).hidden, y).loss

    yield ("t5", hf, hf_s2s, al, al_s2s, B * (S + T2),
           B * flops_per_example(al.cfg, src_len=S, tgt_len=T2).train, B * S)


def timed_steps(model, loss_fn, opt, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="rounds x steps timed steps per library")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="gpt2,bert,t5")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, profile one archlab step per case (torch.profiler, top operators)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="keep freed memory in glibc's heap (as archlab train does) for both libraries")
    args = ap.parse_args()
    if args.tune_malloc:
        from archlab.runtime import tune_malloc

        print(f"glibc malloc tuned: {tune_malloc()}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} threads, fp32")
    wanted = set(args.only.split(","))
    ratios, mfus = {}, {}
    for name, hf, hf_loss, al, al_loss, tokens, train_flops, stack_tokens in make_cases():
        if name not in wanted:
            continue
        # the ceiling: this machine's GEMM on the model's own largest products, same threads
        shapes = gemm_shapes(al.cfg, stack_tokens)
        gemm = measure_gemm(shapes)
        n_hf = sum(p.numel() for p in hf.parameters())
        n_al = sum(p.numel() for p in al.parameters())
        hf.train()
        al.train()
        # fused AdamW for both: HF Trainer's default with torch >= 2.8, and archlab's
        opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)
        opt_al = torch.optim.AdamW(al.parameters(), lr=1e-4, fused=True)
        timed_steps(hf, hf_loss, opt_hf, 2)  # warm-up
        timed_steps(al, al_loss, opt_al, 2)
        t_hf, t_al = [], []
        for _ in range(args.rounds * args.steps):  # alternate step by step: drift hits both alike
            t_hf += timed_steps(hf, hf_loss, opt_hf, 1)
            t_al += timed_steps(al, al_loss, opt_al, 1)
        s_hf, s_al = statistics.median(t_hf), statistics.median(t_al)
        gemm = gemm + measure_gemm(shapes)  # before and after the steps
        print(f"\n[{name}] params: archlab {n_al / 1e6:.2f}M, HF {n_hf / 1e6:.2f}M; "
              f"{tokens} tokens/step; {train_flops / 1e9:.1f} GFLOP/step (archlab's count, 3 x forward)")
        print(f"  {gemm.describe()}")
        print(f"  HF       {tokens / s_hf:9.0f} tokens/s  {s_hf * 1e3:7.1f} ms/step  "
              f"MFU {mfu(train_flops, s_hf, gemm):.1%} of measured GEMM")
        print(f"  archlab  {tokens / s_al:9.0f} tokens/s  {s_al * 1e3:7.1f} ms/step  "
              f"MFU {mfu(train_flops, s_al, gemm):.1%} of measured GEMM")
        ratios[name] = s_hf / s_al
        if args.profile:
            profile_step(lambda al=al, al_loss=al_loss, opt_al=opt_al: timed_steps(al, al_loss, opt_al, 1), name)
        mfus[name] = mfu_line(name, train_flops, s_al, gemm)
        mfus[f"{name}_hf"] = mfu_line(f"{name}_hf", train_flops, s_hf, gemm)
    print()
    for name, r in ratios.items():
        print(f"ratio {name} = {r:.2f}")
        print(mfus[name])
        print(mfus[f"{name}_hf"])


if __name__ == "__main__":
    main()
