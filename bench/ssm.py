"""State-space layers: archlab's pure-PyTorch Mamba-1 / Mamba-2 vs transformers' own PyTorch
paths (``MambaForCausalLM``, ``Mamba2ForCausalLM``), same weights (converted with
``archlab.convert``), CPU fp32, 2 threads by default.

1. Training step (forward + backward of the causal-LM loss, batch 1) at sequence lengths
   256, 1024 and 4096: median time of interleaved rounds, and the peak memory of one step
   (each measured in a fresh subprocess: peak RSS during the step, VmHWM after a reset,
   minus the RSS before it; Linux only).
2. Batch-1 greedy decoding tokens/s (prompt 16, 128 new tokens; both libraries' caches).
3. Attention decoder vs Mamba decoder of matched parameters (archlab both): training-step
   time and peak memory per token vs length (linear vs quadratic growth), and decoding
   state bytes after T tokens.

Prints ``ratio NAME = X`` (archlab speed / transformers speed: higher is better; for memory,
transformers bytes / archlab bytes: higher is better), and beside each training-step ratio
``mfu NAME = 0.xx (of measured GEMM X GFLOP/s)``: archlab's training FLOPs of the step
(``flops_per_example(cfg, tgt_len=T).train``: 3 x forward; Mamba-2's chunked SSD products
counted, Mamba-1's elementwise scan counted too though no GEMM can run it) / step time, as a
fraction of the fp32 GEMM rate measured on the model's largest products at that length with
the same threads (bench/_gemm.py); ``mfu NAME_hf`` for transformers' step. The steps here
are forward + backward without an optimizer.

    python bench/ssm.py [--threads 2] [--lengths 256,1024,4096] [--rounds 3] [--quick] [--profile]
                        [--kinds mamba,mamba2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archlab import build_model, count_params, flops_per_example  # noqa: E402
from archlab.config import ModelConfig, SSMConfig  # noqa: E402
from archlab.model.flops import decode_memory  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _gemm import gemm_shapes, measure_gemm, mfu_line, profile_step  # noqa: E402

V, D, LAYERS = 1024, 256, 4


def hf_model(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "mamba":
        cfg = tf.MambaConfig(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, state_size=16,
                             expand=2, conv_kernel=4, use_mambapy=False)
        return tf.MambaForCausalLM(cfg)
    cfg = tf.Mamba2Config(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, state_size=64,
                          expand=2, head_dim=64, num_heads=2 * D // 64, n_groups=1, chunk_size=64,
                          conv_kernel=4)
    return tf.Mamba2ForCausalLM(cfg)


def pair(kind: str):
    """(HF model, archlab model) with the same weights (archlab imported from HF's)."""
    from archlab.convert import from_hf

    hf = hf_model(kind)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        al = from_hf(d).model
    return hf, al


def step_fn(lib: str, model, ids: torch.Tensor):
    x, y = ids[:, :-1], ids[:, 1:]

    def run():
        if lib == "hf":
            logits = model(input_ids=x).logits
        else:
            logits = model(x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
    return run


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    """Peak RSS (VmHWM) since the last reset, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One training step in a fresh process: prints {"peak": bytes above the RSS before it}."""
    torch.set_num_threads(args.threads)
    lib, kind, T = args.child.split(":")
    T = int(T)
    if kind == "attention" or kind == "ssm-archlab":
        model = matched_models()[0 if kind == "attention" else 1]
    else:
        hf, al = pair(kind)
        model = hf if lib == "hf" else al
        del hf, al
    ids = torch.randint(0, V, (1, T + 1), generator=torch.Generator().manual_seed(0))
    run = step_fn(lib, model, ids)
    base = _rss()
    # reset the peak-RSS counter (Linux: "5" > clear_refs resets VmHWM), so the peak read
    # after the step is the step's own, not that of the imports or the model conversion
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run()
    print(json.dumps({"peak": _hwm() - base}))


def peak_memory(lib: str, kind: str, T: int, threads: int) -> int:
    r = subprocess.run([sys.executable, __file__, "--child", f"{lib}:{kind}:{T}", "--threads", str(threads)],
                       capture_output=True, text=True, check=True)
    return int(json.loads(r.stdout.strip().splitlines()[-1])["peak"])


def time_steps(runs: dict[str, callable], rounds: int) -> dict[str, float]:
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():  # interleaved: drift of a shared machine hits both
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def decode_tok_s(hf, al, new: int, rounds: int) -> tuple[float, float]:
    from archlab.generate import generate

    prompt = torch.randint(3, V, (1, 16), generator=torch.Generator().manual_seed(1))
    hf.eval()
    al.eval()

    def run_hf():
        with torch.no_grad():
            out = hf.generate(input_ids=prompt, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, use_cache=True, pad_token_id=0)
        return out.shape[1] - prompt.shape[1]

    def run_al():
        out = generate(al, [prompt[0].tolist()], prompt_layout="raw", max_new_tokens=new,
                       min_new_tokens=new)
        return out.n_new_tokens

    run_hf(), run_al()
    th, ta = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        n = run_hf()
        th.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = run_al()
        ta.append(n / (time.perf_counter() - t))
    return statistics.median(th), statistics.median(ta)


def matched_models():
    """An attention decoder and a Mamba decoder of (about) the same parameters."""
    att = ModelConfig(arch="decoder", vocab_size=V, d_model=D, n_heads=4, n_layers=LAYERS,
                      d_ff=4 * D, max_seq_len=8192, position="rope")
    n = count_params(att).non_embedding
    best = None
    for layers in range(1, 4 * LAYERS):
        c = ModelConfig(arch="decoder", vocab_size=V, d_model=D, n_layers=layers, layers="M*",
                        ssm=SSMConfig(d_state=16))
        err = abs(count_params(c).non_embedding / n - 1)
        if best is None or err < best[0]:
            best = (err, c)
    torch.manual_seed(0)
    return build_model(att), build_model(best[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--hf-mamba1-max", type=int, default=1024,
                    help="longest length at which transformers' Mamba-1 path is timed: without "
                         "mamba_ssm its scan is a Python loop over time steps (112 s a step at 1024 "
                         "here), so longer lengths time archlab alone")
    ap.add_argument("--kinds", default="mamba,mamba2", help="which Mamba versions to compare with transformers")
    ap.add_argument("--profile", action="store_true",
                    help="profile one archlab training step per kind and length (torch.profiler, top operators)")
    ap.add_argument("--quick", action="store_true", help="tiny lengths, one round (a smoke run)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.quick:
        lengths, args.rounds, args.new_tokens = [64], 1, 16
    print(f"torch {torch.__version__}, {args.threads} threads; models: d_model {D}, {LAYERS} layers, "
          f"vocab {V}, batch 1, fp32")
    for kind in args.kinds.split(","):
        hf, al = pair(kind)
        print(f"\n== {kind}: {count_params(al.cfg).total / 1e6:.2f}M params ==")
        print(f"{'seq':>6} {'hf step s':>10} {'archlab s':>10} {'speed-up':>9} "
              f"{'hf peak MB':>11} {'archlab MB':>11}")
        for T in lengths:
            ids = torch.randint(0, V, (1, T + 1), generator=torch.Generator().manual_seed(0))
            name = f"{kind}_train_step_T{T}"
            flops = flops_per_example(al.cfg, tgt_len=T).train  # batch 1
            shapes = gemm_shapes(al.cfg, T)
            gemm = measure_gemm(shapes)  # the ceiling at this length (and again after the steps)
            if kind == "mamba" and T > args.hf_mamba1_max:
                t = time_steps({"al": step_fn("al", al, ids)}, args.rounds)
                gemm = gemm + measure_gemm(shapes)
                ma = peak_memory("al", kind, T, args.threads)
                print(f"{T:>6} {'-':>10} {t['al']:>10.3f} {'-':>9} {'-':>11} {ma / 2**20:>11.1f}"
                      f"   (hf not timed: --hf-mamba1-max {args.hf_mamba1_max})")
                print(f"  {gemm.describe()}")
                print(mfu_line(name, flops, t["al"], gemm))
                continue
            t = time_steps({"hf": step_fn("hf", hf, ids), "al": step_fn("al", al, ids)}, args.rounds)
            gemm = gemm + measure_gemm(shapes)
            mh = peak_memory("hf", kind, T, args.threads)
            ma = peak_memory("al", kind, T, args.threads)
            print(f"{T:>6} {t['hf']:>10.3f} {t['al']:>10.3f} {t['hf'] / t['al']:>8.2f}x "
                  f"{mh / 2**20:>11.1f} {ma / 2**20:>11.1f}")
            print(f"  {gemm.describe()}; {flops / 1e9:.2f} GFLOP/step (archlab's count, 3 x forward)")
            print(f"ratio {name} = {t['hf'] / t['al']:.2f}")
            print(mfu_line(name, flops, t["al"], gemm))
            print(mfu_line(f"{name}_hf", flops, t["hf"], gemm))
            print(f"ratio {kind}_train_peak_memory_T{T} = {mh / max(ma, 1):.2f}")
            if args.profile:
                profile_step(step_fn("al", al, ids), name)
        th, ta = decode_tok_s(hf, al, args.new_tokens, args.rounds)
        print(f"batch-1 greedy decoding: hf {th:.1f} tok/s, archlab {ta:.1f} tok/s")
        print(f"ratio {kind}_decode_tok_s = {ta / th:.2f}")
        del hf, al

    att, ssm = matched_models()
    print(f"\n== attention decoder ({count_params(att.cfg).non_embedding / 1e6:.2f}M non-emb, "
          f"{att.cfg.n_layers} layers) vs Mamba decoder ({count_params(ssm.cfg).non_embedding / 1e6:.2f}M, "
          f"{ssm.cfg.n_layers} layers), archlab both ==")
    print(f"{'seq':>6} {'attn us/tok':>12} {'mamba us/tok':>13} {'attn MB':>9} {'mamba MB':>9} "
          f"{'attn KV B':>10} {'mamba state B':>14}")
    for T in lengths:
        ids = torch.randint(0, V, (1, T + 1), generator=torch.Generator().manual_seed(0))
        t = time_steps({"a": step_fn("al", att, ids), "m": step_fn("al", ssm, ids)}, args.rounds)
        ma = peak_memory("al", "attention", T, args.threads)
        mm = peak_memory("al", "ssm-archlab", T, args.threads)
        da, dm = decode_memory(att.cfg, T), decode_memory(ssm.cfg, T)
        print(f"{T:>6} {t['a'] / T * 1e6:>12.1f} {t['m'] / T * 1e6:>13.1f} {ma / 2**20:>9.1f} "
              f"{mm / 2**20:>9.1f} {da.total:>10} {dm.total:>14}")


if __name__ == "__main__":
    main()
