"""GPU training and decoding speed: archlab vs Hugging Face transformers, same weights, one run.

Models (random init in transformers, converted to archlab with ``archlab.convert``, so both
libraries start from the same weights and compute the same function):
  decoder  GPT-2 small (124M): 12 layers, d_model 768, 12 heads, d_ff 3072, vocab 50304 (GPT-2's
           50257 padded to a multiple of 64, as nanoGPT does), learned positions, GELU (tanh),
           pre-LayerNorm, tied head; causal LM over 1024 tokens, batch 16
  t5       T5-base (223M): 12+12 layers, d_model 768, d_ff 3072 (ReLU), 12 heads, relative
           position bias, vocab 32128; seq2seq, source 512 / target 128, batch 16

Training: forward + backward + grad clipping (1.0) + fused AdamW step, bf16 autocast with fp32
master weights (archlab's ``train.precision: bf16``). archlab runs the path ``archlab train``
runs: the objective's ``loss(model, batch)`` (causal-lm, seq2seq) on a batch the objective
built, and ``archlab.train.trainer.make_optimizer``. transformers runs its idiomatic path: the
model's logits and a cross-entropy over them (``GPT2LMHeadModel``: the loss HF's
``ForCausalLMLoss`` computes, on the same next-token labels; ``T5ForConditionalGeneration``:
``labels=``), with ``torch.optim.AdamW(fused=True)`` (HF Trainer's default optimizer). Both see
the same batch. Steps alternate between the libraries one by one (drift hits both alike); each
step is timed with CUDA events on the GPU's stream and the median is reported. MFU = analytic
training FLOPs (``archlab.flops_per_example``: 3 x forward; causal attention counts only the
keys a query attends) / step time / the GPU's dense bf16 peak (table below, or
``--peak-tflops``). Peak memory is ``torch.cuda.max_memory_allocated`` during one step, less
what the other library holds at the time (its weights, gradients and optimizer state).

Decoding: greedy, batch 1 and batch 8, prompt (source) 128 tokens, 128 new tokens per
sequence (EOS disabled with ``min_new_tokens``), bf16 weights: ``archlab.generate`` against
transformers' ``generate(cache_implementation="static")`` (which, on CUDA, compiles the
decoding step with CUDA graphs by itself; ``--hf-decode-compile off`` turns that off).
Decoding runs before training, while both libraries still hold the same weights, so their
greedy tokens can be compared (printed as a check; bf16 rounding can make them part).
Each call is timed end to end (synchronised), warm-up calls first (their time, which includes
compilation, is printed), then rounds alternating between the libraries; medians.

Prints a table and one ``ratio NAME = X.XX`` line per comparison: archlab speed / HF speed
(higher is better); ``*-memory``: HF peak memory / archlab peak memory (higher: archlab uses
less).

    python bench/gpu.py [--only decoder,t5] [--parts train,decode] [--steps 20] [--warmup 3]
                        [--compile] [--peak-tflops N] [--device cuda] [--batch 16] [--rounds 3]
                        [--new 128] [--hf-decode-compile auto|off] [--time-limit 360]
    python bench/gpu.py --smoke --device cpu   # toy sizes, fp32 on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab import build_model, flops_per_example  # noqa: E402
from archlab.convert import hf_to_archlab  # noqa: E402
from archlab.generate import GenerationConfig, generate  # noqa: E402
from archlab.generate.config import BACKENDS  # noqa: E402
from archlab.objectives import Example, SpecialTokens, make_objective  # noqa: E402
from archlab.train.config import TrainConfig  # noqa: E402
from archlab.train.trainer import make_optimizer  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS from the vendors' data sheets, matched
# against torch.cuda.get_device_name() in order (first match wins).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"\bB200\b", 2250.0),
    (r"\bGH200\b", 989.0),
    (r"\bH200\b", 989.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM5 (reported as "H100 80GB HBM3")
    (r"\bH800\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (``torch.cuda.get_device_name``), or None."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


@dataclass
class Sizes:
    vocab: int
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    seq: int  # decoder: tokens per sequence
    src: int  # t5: source tokens
    tgt: int  # t5: target tokens
    batch: int
    prompt: int  # decoding: prompt (decoder) / source (t5) tokens
    t5_vocab: int


FULL = Sizes(vocab=50304, n_layers=12, d_model=768, n_heads=12, d_ff=3072, seq=1024, src=512, tgt=128,
             batch=16, prompt=128, t5_vocab=32128)
SMOKE = Sizes(vocab=512, n_layers=2, d_model=64, n_heads=4, d_ff=256, seq=64, src=64, tgt=32, batch=2,
              prompt=16, t5_vocab=512)
SPECIAL = SpecialTokens(pad=0, bos=1, eos=2, mask=3, sep=4, cls=5)
FIRST_ID = 6  # random token ids start after the special ids


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


class StepTimer:
    """Times a sequence of (start, stop) spans. On CUDA with events on the current stream: the
    host never waits between steps, and a span is the GPU time from reaching ``start`` to
    reaching ``stop`` (including any time the GPU idles waiting for the host inside the step).
    Read ``seconds()`` once at the end (it synchronises). Elsewhere: ``time.perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list[Any] = []
        self._t0: Any = None

    def start(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._t0 = ev
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.spans.append((self._t0, ev))
        else:
            self.spans.append(time.perf_counter() - self._t0)

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in self.spans]
        return list(self.spans)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """CUDA bytes a library holds between steps: weights, gradients, optimizer state."""
    tensors = list(model.parameters())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not t.is_cuda:
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def free_memory() -> None:
    # compiled graphs (HF's auto-compiled decoding step, --compile) and their CUDA-graph pools
    # hold memory and references to freed models: drop them between cases
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Cases: matched (HF, archlab) pairs, a batch and each library's loss
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    hf: torch.nn.Module
    al: torch.nn.Module
    objective: Any
    batch: dict[str, torch.Tensor]
    hf_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    tokens: int  # tokens per training step (source + target for t5)
    train_flops: int  # analytic training FLOPs per step
    describe: str
    pad: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def to_archlab(hf: torch.nn.Module) -> torch.nn.Module:
    cfg, state = hf_to_archlab(hf.config.to_dict(), hf.state_dict(), dropout=0.0)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"converted state has keys the archlab model lacks: {unexpected[:5]}")
    return model


def random_ids(g: torch.Generator, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(FIRST_ID, vocab, shape, generator=g)


def gpt2_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    # what GPT2LMHeadModel(labels=...) computes (ForCausalLMLoss: fp32 logits, mean over labels
    # != -100), given labels already aligned with the outputs as archlab's objective builds them
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), ignore_index=-100)


def t5_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 decoder_input_ids=b["decoder_input_ids"],
                 decoder_attention_mask=b["decoder_attention_mask"], labels=b["labels"]).loss


def decoder_case(sz: Sizes, batch: int) -> Case:
    import transformers as tf

    torch.manual_seed(0)
    T = sz.seq
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=sz.vocab, n_positions=T, n_embd=sz.d_model, n_layer=sz.n_layers,
        n_head=sz.n_heads, n_inner=sz.d_ff, activation_function="gelu_new", resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=SPECIAL.bos, eos_token_id=SPECIAL.eos,
        pad_token_id=SPECIAL.pad))
    al = to_archlab(hf)
    obj = make_objective("causal-lm", SPECIAL, "decoder", max_len=T)
    g = torch.Generator().manual_seed(1)
    # texts of T - 1 tokens: <bos> text is exactly T inputs, text <eos> T labels (no padding)
    texts = random_ids(g, sz.vocab, batch, T - 1).tolist()
    b = obj.build([Example(ids=t) for t in texts], np.random.default_rng(0))
    assert b["input_ids"].shape == (batch, T), b["input_ids"].shape
    flops = batch * flops_per_example(al.cfg, tgt_len=T).train
    return Case("decoder", hf, al, obj, b, gpt2_loss, batch * T, flops,
                f"GPT-2-like decoder {sz.n_layers} layers d={sz.d_model} vocab {sz.vocab}, "
                f"causal LM, {batch} x {T} tokens", pad=SPECIAL.pad)


def t5_case(sz: Sizes, batch: int) -> Case:
    import transformers as tf

    torch.manual_seed(0)
    S, T = sz.src, sz.tgt
    hf = tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=sz.t5_vocab, d_model=sz.d_model, d_kv=sz.d_model // sz.n_heads, d_ff=sz.d_ff,
        num_layers=sz.n_layers, num_decoder_layers=sz.n_layers, num_heads=sz.n_heads,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
        decoder_start_token_id=SPECIAL.pad, pad_token_id=SPECIAL.pad, eos_token_id=SPECIAL.eos))
    al = to_archlab(hf)
    obj = make_objective("seq2seq", SPECIAL, "encoder-decoder", max_len=S,
                         decoder_start=SPECIAL.pad, max_source_len=S - 1, max_target_len=T - 1)
    g = torch.Generator().manual_seed(1)
    srcs = random_ids(g, sz.t5_vocab, batch, S - 1).tolist()
    tgts = random_ids(g, sz.t5_vocab, batch, T - 1).tolist()
    b = obj.build([Example(src=s, tgt=t) for s, t in zip(srcs, tgts)], np.random.default_rng(0))
    assert b["input_ids"].shape == (batch, S) and b["decoder_input_ids"].shape == (batch, T)
    flops = batch * flops_per_example(al.cfg, src_len=S, tgt_len=T).train
    return Case("t5", hf, al, obj, b, t5_loss, batch * (S + T), flops,
                f"T5-like {sz.n_layers}+{sz.n_layers} layers d={sz.d_model} vocab {sz.t5_vocab}, "
                f"seq2seq, {batch} x ({S} source + {T} target) tokens", pad=SPECIAL.pad)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def bench_decode(case: Case, sz: Sizes, args: argparse.Namespace, device: torch.device,
                 dtype: torch.dtype, rows: list[Row], ratios: dict[str, float]) -> None:
    n = args.new
    hf = copy.deepcopy(case.hf).to(device=device, dtype=dtype).eval()
    al = copy.deepcopy(case.al).to(device=device, dtype=dtype).eval()
    vocab = sz.vocab if case.name == "decoder" else sz.t5_vocab
    hf_kw: dict[str, Any] = {"cache_implementation": "static"}
    if args.hf_decode_compile == "off":
        hf_kw["disable_compile"] = True
    g = torch.Generator().manual_seed(2)
    for batch in (1, 8):
        name = f"{case.name}-decode-b{batch}"
        ids = random_ids(g, vocab, batch, sz.prompt)
        ids_dev = ids.to(device)
        mask = torch.ones_like(ids_dev)
        prompts = ids.tolist()
        gcfg = GenerationConfig(strategy="greedy", max_new_tokens=n, min_new_tokens=n,
                                prompt_layout="raw", backend=args.backend)

        def run_hf(hf=hf, ids_dev=ids_dev, mask=mask) -> torch.Tensor:
            # generate runs under torch.no_grad itself (no inference_mode around it: tensors
            # made in inference mode and HF's compiled, CUDA-graphed step do not mix well)
            return hf.generate(input_ids=ids_dev, attention_mask=mask, do_sample=False,
                               num_beams=1, max_new_tokens=n, min_new_tokens=n,
                               pad_token_id=case.pad, **hf_kw)

        def run_al(al=al, prompts=prompts, gcfg=gcfg) -> Any:
            return generate(al, prompts, gcfg)

        def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
            sync(device)
            t = time.perf_counter()
            out = fn()
            sync(device)
            return time.perf_counter() - t, out

        first = {}
        for lib, fn in (("hf", run_hf), ("archlab", run_al)):  # warm-up (HF compiles here)
            first[lib] = timed(fn)[0]
            for _ in range(args.decode_warmup - 1):
                timed(fn)
        t_hf, t_al = [], []
        out_hf = out_al = None
        for _ in range(args.rounds):  # alternate run by run
            dt, out_hf = timed(run_hf)
            t_hf.append(dt)
            dt, out_al = timed(run_al)
            t_al.append(dt)
        s_hf, s_al = statistics.median(t_hf), statistics.median(t_al)
        new_hf = out_hf[:, -n:].tolist()
        same = sum(a == b for a, b in zip(out_al.sequences, new_hf))
        agree = statistics.mean(_prefix_agreement(a, b) for a, b in zip(out_al.sequences, new_hf))
        tok = batch * n
        print(f"  [{name}] archlab {tok / s_al:9.0f} tok/s   HF {tok / s_hf:9.0f} tok/s   "
              f"ratio {s_hf / s_al:.2f}   (first call: archlab {first['archlab']:.1f} s, "
              f"HF {first['hf']:.1f} s; same tokens as HF: {same}/{batch} rows, "
              f"{agree:.0%} of each row's tokens before they part)", flush=True)
        rows.append(Row(name, "tokens/s", tok / s_al, tok / s_hf))
        ratios[name] = s_hf / s_al
    del hf, al
    free_memory()


def _prefix_agreement(a: list[int], b: list[int]) -> float:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k / max(len(b), 1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def bench_train(case: Case, args: argparse.Namespace, device: torch.device, bf16: bool,
                peak: float | None, rows: list[Row], ratios: dict[str, float]) -> None:
    hf = case.hf.to(device).train()
    al = case.al.to(device).train()
    batch = {k: v.to(device) for k, v in case.batch.items()}
    tcfg = TrainConfig(lr=3e-4, precision="bf16" if bf16 else "fp32", device=str(device))
    opts = {
        "archlab": make_optimizer(al, tcfg, device),  # what archlab train uses (fused AdamW)
        # HF Trainer's default optimizer: torch AdamW, fused (torch >= 2.8)
        "hf": torch.optim.AdamW(hf.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                                eps=tcfg.eps, weight_decay=tcfg.weight_decay, fused=True),
    }
    models = {"archlab": al, "hf": hf}
    run = {"archlab": torch.compile(al) if args.compile else al,
           "hf": torch.compile(hf) if args.compile else hf}
    losses: dict[str, Callable[[], torch.Tensor]] = {
        "archlab": lambda: case.objective.loss(run["archlab"], batch).loss,
        "hf": lambda: case.hf_loss(run["hf"], batch),
    }

    def step(lib: str) -> torch.Tensor:
        opt = opts[lib]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = losses[lib]()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[lib].parameters(), tcfg.grad_clip)
        opt.step()
        return loss.detach()

    # warm-up (compilation with --compile, allocator, cuDNN/cuBLAS heuristics); the first step
    # of each library runs on the same weights: its loss is the equivalence check
    first_loss, first_s = {}, {}
    for lib in ("hf", "archlab"):
        sync(device)
        t = time.perf_counter()
        first_loss[lib] = float(step(lib))
        sync(device)
        first_s[lib] = time.perf_counter() - t
    for _ in range(max(args.warmup - 1, 0)):
        for lib in ("hf", "archlab"):
            step(lib)
    # peak memory of one step of each library, less what the other one holds meanwhile
    mem: dict[str, float] = {}
    if device.type == "cuda":
        for lib in ("hf", "archlab"):
            other = "archlab" if lib == "hf" else "hf"
            sync(device)
            held_by_other = resident_bytes(models[other], opts[other])
            torch.cuda.reset_peak_memory_stats(device)
            step(lib)
            sync(device)
            mem[lib] = torch.cuda.max_memory_allocated(device) - held_by_other
    timers = {lib: StepTimer(device) for lib in ("hf", "archlab")}
    for _ in range(args.steps):  # alternate step by step
        for lib in ("hf", "archlab"):
            timers[lib].start()
            step(lib)
            timers[lib].stop()
    med = {lib: statistics.median(timers[lib].seconds()) for lib in timers}
    n_al = sum(p.numel() for p in al.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    print(f"  params: archlab {n_al / 1e6:.1f}M, HF {n_hf / 1e6:.1f}M; {case.tokens} tokens/step; "
          f"{case.train_flops / 1e12:.2f} TFLOP/step (analytic); HF attention: "
          f"{getattr(hf.config, '_attn_implementation', '?')}")
    print(f"  first-step loss (same weights, same batch): archlab {first_loss['archlab']:.4f}, "
          f"HF {first_loss['hf']:.4f}; first step incl. compile/warm-up: archlab "
          f"{first_s['archlab']:.1f} s, HF {first_s['hf']:.1f} s")
    name = f"{case.name}-train"
    for lib in ("archlab", "hf"):
        s = med[lib]
        mfu = f"{case.train_flops / s / (peak * 1e12):.1%}" if peak else "unknown"
        m = f"{mem[lib] / 2**30:.2f} GiB" if lib in mem else "n/a (not CUDA)"
        print(f"  [{name}] {lib:8s} {case.tokens / s:10.0f} tokens/s  {s * 1e3:8.1f} ms/step  "
              f"MFU {mfu}  peak memory {m}", flush=True)
    rows.append(Row(name, "tokens/s", case.tokens / med["archlab"], case.tokens / med["hf"]))
    if peak:
        rows.append(Row(name, "MFU %", 100 * case.train_flops / med["archlab"] / (peak * 1e12),
                        100 * case.train_flops / med["hf"] / (peak * 1e12)))
    else:
        rows.append(Row(name, "MFU %", None, None))
    ratios[name] = med["hf"] / med["archlab"]
    if mem:
        rows.append(Row(name, "peak GiB", mem["archlab"] / 2**30, mem["hf"] / 2**30))
        ratios[f"{name}-memory"] = mem["hf"] / mem["archlab"]
    case.hf = case.al = None  # type: ignore[assignment]  # the caller frees the models


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    metric: str
    archlab: float | None
    hf: float | None


def print_table(rows: list[Row], title: str) -> None:
    print(f"\n{title}")
    head = f"{'case':20s} {'metric':10s} {'archlab':>12s} {'HF':>12s} {'archlab/HF':>11s}"
    print(head)
    print("-" * len(head))

    def fmt(x: float | None) -> str:
        if x is None:
            return "unknown"
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}"

    for r in rows:
        rel = f"{r.archlab / r.hf:.2f}" if r.archlab is not None and r.hf else ""
        print(f"{r.case:20s} {r.metric:10s} {fmt(r.archlab):>12s} {fmt(r.hf):>12s} {rel:>11s}")


def out_of_time(name: str, part: str, t_start: float, limit: float, failed: list[str]) -> bool:
    """Whether ``--time-limit`` is spent; a skipped part is reported (and counts as failed)."""
    spent = time.perf_counter() - t_start
    if limit and spent > limit:
        failed.append(f"{name} {part}: skipped, {spent:.0f} s spent > --time-limit {limit:g}")
        print(f"  [{name}-{part}] skipped: --time-limit", flush=True)
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="decoder,t5", help="comma-separated cases: decoder, t5")
    ap.add_argument("--parts", default="train,decode", help="comma-separated: train, decode")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per library (20)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up training steps per library (3)")
    ap.add_argument("--rounds", type=int, default=None, help="timed decoding calls per library (3)")
    ap.add_argument("--decode-warmup", type=int, default=2,
                    help="warm-up decoding calls per library (HF's compiled step records CUDA graphs "
                         "over the first calls)")
    ap.add_argument("--new", type=int, default=None, help="new tokens per sequence (128)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (sequences; 16)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile both libraries' models for training")
    ap.add_argument("--hf-decode-compile", choices=("auto", "off"), default="auto",
                    help="auto: transformers' own choice (compiles the static-cache step on CUDA)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS, help="archlab decoding backend")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of the device for MFU (default: from the device name)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="auto: bf16 on CUDA, fp32 elsewhere")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 on CPU, torch's default with CUDA)")
    ap.add_argument("--time-limit", type=float, default=360.0,
                    help="seconds after which the parts not yet started are skipped (0: no limit), "
                         "so an unattended run ends in time and still prints its table")
    ap.add_argument("--smoke", action="store_true",
                    help="toy sizes (2 layers, d_model 64, seq 64), few steps: checks the script runs; "
                         "falls back to CPU without CUDA")
    args = ap.parse_args()
    t_start = time.perf_counter()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        if not args.smoke:
            print("bench/gpu.py: --device cuda but CUDA is not available on this machine "
                  "(use --smoke --device cpu to check the script)", file=sys.stderr)
            return 2
        args.device = "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"bench/gpu.py: --device {args.device!r}: choose cuda, cuda:N or cpu", file=sys.stderr)
        return 2
    wanted = [c for c in args.only.split(",") if c]
    parts = {p for p in args.parts.split(",") if p}
    for bad, valid, what in ((set(wanted) - {"decoder", "t5"}, "decoder, t5", "--only"),
                             (parts - {"train", "decode"}, "train, decode", "--parts")):
        if bad:
            print(f"bench/gpu.py: {what} {','.join(sorted(bad))}: choose from {valid}", file=sys.stderr)
            return 2
    sz = SMOKE if args.smoke else FULL
    args.steps = args.steps or (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.decode_warmup = 1 if args.smoke else max(args.decode_warmup, 1)
    args.new = args.new or (8 if args.smoke else 128)
    batch = args.batch or sz.batch
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32

    if args.threads is None and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul, both libraries
    import transformers

    transformers.logging.set_verbosity_error()
    if device.type == "cuda":
        if device.index is None:  # torch.cuda.set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({args.threads} threads)"
    peak = args.peak_tflops or (peak_tflops(dev_name) if device.type == "cuda" else None)
    label = "SMOKE RUN: toy sizes, not a measurement" if args.smoke else "measurement"
    print(f"bench/gpu.py ({label})")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev_name}, "
          f"{'bf16 autocast (fp32 master weights), bf16 decoding' if bf16 else 'fp32'}, "
          f"compile {'on' if args.compile else 'off'}, archlab decoding backend {args.backend}, "
          f"HF decoding compile {args.hf_decode_compile}")
    print(f"dense bf16 peak for MFU: {f'{peak:g} TFLOPS' if peak else 'unknown'}"
          f"{' (--peak-tflops)' if args.peak_tflops else ''}; {args.steps} timed training steps "
          f"after {args.warmup} warm-up; decoding {args.new} new tokens, {args.rounds} timed rounds")

    rows: list[Row] = []
    ratios: dict[str, float] = {}
    failed: list[str] = []
    builders = {"decoder": decoder_case, "t5": t5_case}
    for name in wanted:
        t0 = time.perf_counter()
        try:
            case = builders[name](sz, batch)
        except Exception as e:  # noqa: BLE001 - an unattended run reports and goes on
            failed.append(f"{name}: building the models failed: {type(e).__name__}: {e}")
            print(f"\n[{name}] FAILED to build: {type(e).__name__}: {e}", flush=True)
            continue
        print(f"\n[{name}] {case.describe}", flush=True)
        if "decode" in parts and not out_of_time(name, "decode", t_start, args.time_limit, failed):
            # before training: both libraries still hold the same weights
            try:
                bench_decode(case, sz, args, device, dtype, rows, ratios)
            except Exception as e:  # noqa: BLE001
                failed.append(f"{name} decoding: {type(e).__name__}: {e}")
                print(f"  [{name}-decode] FAILED: {type(e).__name__}: {e}", flush=True)
                free_memory()
        if "train" in parts and not out_of_time(name, "train", t_start, args.time_limit, failed):
            try:
                bench_train(case, args, device, bf16, peak, rows, ratios)
            except Exception as e:  # noqa: BLE001
                failed.append(f"{name} training: {type(e).__name__}: {e}")
                print(f"  [{name}-train] FAILED: {type(e).__name__}: {e}", flush=True)
        del case
        free_memory()
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)

    print_table(rows, f"bench/gpu.py on {dev_name} ({label}); higher is better except peak GiB")
    print()
    for k, r in ratios.items():
        print(f"ratio {k} = {r:.2f}")
    for f in failed:
        print(f"FAILED {f}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
