"""The FLOPs budget matching charges equal the FLOPs the executed forward runs.

Reference: ``torch.utils.flop_counter.FlopCounterMode`` on the real forward of each objective
(``Objective.loss`` under ``no_grad``: the same batch layout, mask, pooling and head the
trainer runs). FlopCounterMode counts matrix products and convolutions only (mm, addmm, bmm,
einsum's bmm, conv1d, SDPA), so what is compared is ``FlopCount.matmul``: the analytic count
minus its one elementwise term (Mamba-1's selective scan, reported in ``FlopCount.elementwise``).
The rest of the elementwise work (norms, activations, softmax, rotary, decays) is left out of
both, as in Kaplan et al. 2020; :func:`test_elementwise_rest_is_small_at_compare_width`
bounds it.

SDPA: FlopCounterMode has no formula for the CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``) and counts it 0, and its GPU formulas are
mask-blind (Tq x Tk per call). The mapping below gives it the work the kernel does: every
(query, key) pair when a mask tensor is passed (masks only zero out scores, nothing is
skipped), the lower triangle Tq (Tq + 1) / 2 on the ``is_causal`` path (the kernel skips the
key blocks above the diagonal; measured 0.65x the unmasked time at T = 2048 on this CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archlab import build_model
from archlab.compare.sizing import Shape, example_flop_count
from archlab.config import ModelConfig, MoEConfig, SSMConfig
from archlab.model.flops import flops_per_example
from archlab.objectives import make_objective
from archlab.objectives.base import Example, SpecialTokens

V = 97
SP = SpecialTokens(sentinels=tuple(range(6, 30)), vocab_size=V, first_normal=30)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args,
                    out_shape=None, **kwargs) -> int:
    B, H, Tq, d = query_shape
    Tk, dv = key_shape[-2], value_shape[-1]
    pairs = Tq * (Tq + 1) // 2 if is_causal else Tq * Tk
    assert not is_causal or Tq == Tk  # the model only takes the causal path for square attention
    return 2 * B * H * pairs * (d + dv)


MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def counted(fn) -> int:
    """Matrix-product FLOPs of ``fn()`` (no autograd: the forward only)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=MAPPING) as fc:
        fn()
    return fc.get_total_flops()


def cfg_for(arch: str, **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=V, d_model=32, n_heads=4, n_layers=2, d_ff=48, max_seq_len=128,
                n_classes=3, n_tags=5, pad_token_id=SP.pad, bos_token_id=SP.bos, eos_token_id=SP.eos)
    base.update(kw)
    return ModelConfig(**base)


def text(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(SP.first_normal, V, n).tolist()


def loss_flops(cfg: ModelConfig, objective: str, examples: list[Example]) -> int:
    model = build_model(cfg).eval()
    obj = make_objective(objective, SP, cfg.arch, max_len=128)
    batch = obj.build(examples, np.random.default_rng(0))
    return counted(lambda: obj.loss(model, batch))


# (config overrides, id): every mixer, positions with and without a bias, GQA, windows on the
# banded and on the dense path, Mamba-2 with chunks shorter and longer than the sequence
VARIANTS = [
    ({}, "mha-rope"),
    ({"n_kv_heads": 2, "activation": "swiglu"}, "gqa"),
    ({"n_kv_heads": 1, "position": "learned", "bias": True, "norm": "layernorm"}, "mqa-learned-bias"),
    ({"position": "t5-relative"}, "t5-bias"),
    ({"position": "alibi"}, "alibi"),
    ({"attn_window": 4}, "window-banded"),
    ({"attn_window": 16}, "window-dense"),
    ({"attn_window": 4, "position": "alibi"}, "window-bias"),
    ({"layers": "MM", "ssm": SSMConfig(d_state=8)}, "mamba1"),
    ({"layers": "MM", "ssm": SSMConfig(d_state=4, dtbc_norm=True, proj_bias=True)}, "mamba1-dtbc"),
    ({"layers": "SS", "ssm": SSMConfig(d_state=8, head_dim=8, chunk_size=8)}, "mamba2-chunked"),
    ({"layers": "SS", "ssm": SSMConfig(d_state=8, head_dim=8, n_groups=2, chunk_size=256)}, "mamba2-groups"),
    ({"layers": "MSA", "n_layers": 3, "ffn": "DND", "ssm": SSMConfig(d_state=4, head_dim=8, chunk_size=16)},
     "hybrid"),
    ({"ffn": "DE", "moe": MoEConfig(n_experts=4, top_k=2, n_shared_experts=1)}, "moe"),
]
OBJECTIVES = {  # objective -> families it runs on
    "seq2seq": ("decoder", "prefix-lm", "encoder-decoder"),
    "span-corruption": ("decoder", "prefix-lm", "encoder-decoder"),
    "causal-lm": ("decoder", "prefix-lm", "encoder-decoder"),
    "masked-lm": ("encoder",),
    "classification": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),
    "token-classification": ("encoder", "decoder", "prefix-lm", "encoder-decoder"),
}
CASES = [(arch, obj) for obj, archs in OBJECTIVES.items() for arch in archs]


def _examples(objective: str, s: int, t: int, B: int) -> tuple[list[Example], Shape]:
    """B examples of exactly the lengths of ``Shape(s, t)`` (text tasks: a text of s tokens)."""
    if objective == "seq2seq":
        return [Example(src=text(s, i), tgt=text(t, 100 + i)) for i in range(B)], Shape(s, t)
    if objective == "classification":
        return [Example(ids=text(s, i), label=i % 3) for i in range(B)], Shape(s, 0)
    if objective == "token-classification":  # words of one or two pieces
        wids = [k // 2 for k in range(s)]
        return [Example(ids=text(s, i), word_ids=wids, tags=[(w + i) % 5 for w in range(wids[-1] + 1)])
                for i in range(B)], Shape(s, 0)
    return [Example(ids=text(s, i)) for i in range(B)], Shape(s, 0)


@pytest.mark.parametrize("variant", [v for v, _ in VARIANTS], ids=[i for _, i in VARIANTS])
@pytest.mark.parametrize("arch,objective", CASES, ids=[f"{a}-{o}" for a, o in CASES])
def test_objective_flops_equal_flop_counter(arch, objective, variant):
    """example_flop_count (what compare sizes with) == FlopCounterMode on that objective's
    forward, for two examples of the typical shape (every matrix product, exactly)."""
    cfg = cfg_for(arch, **variant)
    if objective == "classification" and arch == "encoder-decoder":
        cfg = cfg.replace(pooling="decoder")
    exs, shape = _examples(objective, 21, 14, B=2)
    want = 2 * example_flop_count(cfg, shape, objective).matmul
    got = loss_flops(cfg, objective, exs)
    assert got == pytest.approx(want, rel=0.02), (got, want)
    # exact, but where a Mamba stack reads one token (an encoder-decoder's lone <eos> source
    # or its one pooling step): there torch does the conv taps and the size-1 SSD contractions
    # as elementwise products, the same arithmetic, which FlopCounterMode does not see
    one_token_ssm = cfg.has_ssm and arch == "encoder-decoder" and objective in ("causal-lm", "classification")
    if not one_token_ssm:
        assert got == want


@pytest.mark.parametrize("variant", [v for v, _ in VARIANTS], ids=[i for _, i in VARIANTS])
@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_contrastive_flops_equal_flop_counter(arch, variant):
    """A bi-encoder's example is two towers' forwards, query and positive, each through the
    family's embedding path (an encoder-decoder's encoder alone, a prefix-LM's whole text as
    prefix); no head. The batch's B x B similarity matrix (2 B^2 d_model) is the only other
    product, and is not in the per-example count. Queries and positives of one length: the
    stacked 2B rows have no padding, so the count is exact."""
    cfg = cfg_for(arch, **variant)
    B, n = 2, 19
    exs = [Example(src=text(n, i), tgt=text(n, 100 + i)) for i in range(B)]
    f = example_flop_count(cfg, Shape(n, n), "contrastive")
    assert f.head == 0 and (f.decoder == 0) == (arch in ("encoder", "encoder-decoder"))
    assert loss_flops(cfg, "contrastive", exs) == B * f.matmul + 2 * B * B * cfg.d_model


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_contrastive_count_is_the_sum_of_the_two_towers(arch):
    """Query and positive of different lengths: the count is query tower + positive tower at
    their own lengths (what compare sizes with, real tokens as for every objective); the
    executed forward pads the shorter side to the longer (2B rows of max(s, t) + 2 slots)."""
    cfg = cfg_for(arch)
    s, t, B = 21, 14, 2
    tower = (lambda n: flops_per_example(cfg, src_len=n, head="none")) if arch in ("encoder", "encoder-decoder") \
        else (lambda n: flops_per_example(cfg, tgt_len=n, prefix_len=n if arch == "prefix-lm" else 0, head="none"))
    f = example_flop_count(cfg, Shape(s, t), "contrastive")
    assert f.forward == tower(s + 2).forward + tower(t + 2).forward
    assert f.forward != 2 * tower(s + 2).forward
    exs = [Example(src=text(s, i), tgt=text(t, 100 + i)) for i in range(B)]
    assert loss_flops(cfg, "contrastive", exs) == 2 * B * tower(s + 2).matmul + 2 * B * B * cfg.d_model


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_token_classification_of_probe_answers(arch):
    """mqar by token classification: the row <cls> source <sep> target through the family's
    tagging path and the LM head at the answer slots only (``Shape.predicted`` of them)."""
    cfg = cfg_for(arch, n_tags=0)
    s, t, B = 12, 16, 2
    given = [j for j in range(t) if j % 4 != 1]  # 4 answer slots of 16
    exs = [Example(src=text(s, i), tgt=text(t, 50 + i), tgt_given=given) for i in range(B)]
    f = example_flop_count(cfg, Shape(s, t, predicted=4), "token-classification")
    d = cfg.d_model
    assert f.head == 4 * (2 * d * V + (2 * d * d if arch == "encoder" else 0))  # (+ the encoder's MLM transform)
    assert loss_flops(cfg, "token-classification", exs) == B * f.matmul
    assert example_flop_count(cfg, Shape(s, t), "token-classification").head > f.head  # default: every slot


@pytest.mark.parametrize("pooling", ["mean", "first", "decoder"])
def test_encoder_decoder_classification_runs_the_decoder_only_to_pool_from_it(pooling):
    """An encoder-decoder classifier pooling from the encoder never runs its decoder; pooling
    from the decoder runs one decoder step over the encoded input: both counted as they run."""
    cfg = cfg_for("encoder-decoder", pooling=pooling)
    exs, shape = _examples("classification", 21, 0, B=2)
    f = example_flop_count(cfg, shape, "classification")
    assert (f.decoder > 0) == (pooling == "decoder")
    assert loss_flops(cfg, "classification", exs) == 2 * f.matmul


PADDED = [({}, "mha"), ({"n_kv_heads": 2, "position": "t5-relative"}, "gqa-t5"), ({"attn_window": 4}, "window"),
          ({"layers": "MS", "ssm": SSMConfig(d_state=4, head_dim=8, chunk_size=8)}, "mamba"),
          ({"layers": "SA", "ssm": SSMConfig(d_state=4, head_dim=8)}, "hybrid")]


@pytest.mark.parametrize("variant", [v for v, _ in PADDED], ids=[i for _, i in PADDED])
@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix-lm", "encoder-decoder"])
def test_padded_batch_runs_what_the_count_says(arch, variant):
    """A right-padded training batch of T slots costs B x the count of a T-token example: the
    causal self-attention keeps the triangular fast path (a mask tensor would make SDPA compute
    all T^2 pairs), a window the banded kernel, and a prefix-LM's backward Mamba scan runs over
    the longest prefix of the batch (2 x the count with that prefix)."""
    cfg = cfg_for(arch, **variant)
    model = build_model(cfg).eval()
    B, T = 3, 24
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(SP.first_normal, V, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor([T, 17, 9])[:, None]  # right padding
    prefix = torch.tensor([7, 11, 5])
    if arch == "encoder":
        got = counted(lambda: model.encode(ids, mask))
    elif arch == "encoder-decoder":
        got = counted(lambda: model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask,
                                    return_logits=False))
    else:
        got = counted(lambda: model.decode(ids, mask, prefix_lengths=prefix if arch == "prefix-lm" else None))
    want = B * flops_per_example(cfg, src_len=T, tgt_len=T, prefix_len=int(prefix.max()), head="none").matmul
    assert got == want


def test_elementwise_rest_is_small_at_compare_width():
    """What neither side counts (norms, activations, residuals, Mamba-2's decays and masks,
    softmax inside the fused kernel) is small next to the matrix products at the compare
    presets' width; Mamba-1's scan, the one elementwise term counted, agrees with the
    elementwise work its forward dispatches. Elementwise work is measured as one FLOP per
    output element of every pointwise op and per input element of every reduction."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    reductions = (aten.sum, aten.mean, aten.amax, aten.cumsum, aten._softmax, aten.logsumexp)

    class Elementwise(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in reductions:
                self.n += args[0].numel()
            elif torch.Tag.pointwise in func.tags:
                self.n += sum(o.numel() for o in (out if isinstance(out, (tuple, list)) else (out,))
                              if isinstance(o, torch.Tensor))
            return out

    T = 128
    for layers in (None, "MMMM", "SSSS", "SSSA"):
        ssm = {"layers": layers, "ffn": None if layers and "A" not in layers else "D*", "ssm": SSMConfig()} if layers else {}
        cfg = ModelConfig(arch="decoder", vocab_size=1000, d_model=256, n_heads=4, n_layers=4, d_ff=1024,
                          activation="swiglu", **ssm)
        model = build_model(cfg).eval()
        with torch.no_grad(), Elementwise() as e:
            model.decode(torch.randint(10, 1000, (1, T)))
        f = flops_per_example(cfg, tgt_len=T, head="none")
        n_attn = (layers or "AAAA").count("A")
        softmax = n_attn * 5 * cfg.n_heads * T * (T + 1) // 2  # inside the kernel: ~5 per score
        rest = e.n + softmax - f.elementwise
        assert abs(rest) < 0.03 * f.matmul, (layers, rest / f.matmul)
        if layers == "MMMM":
            assert f.elementwise == pytest.approx(e.n, rel=0.1)  # 9 d_inner N per token and layer
