"""Typed configuration: nested dataclasses, one YAML format, dotted CLI overrides.

Every config object in archlab is a dataclass. :func:`from_dict` turns a plain mapping (from
YAML or from code) into one, checking every key and value against the field's type: unknown
keys, wrong types and values outside a field's choices raise :class:`ConfigError` naming the
dotted key and what is valid. :func:`apply_overrides` applies ``a.b.c=value`` strings from the
command line to such a mapping before it is checked, so overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from archlab.errors import ConfigError

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, Sequence):
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and return it (converted if lossless)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            valid = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of: {valid}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, Sequence, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{key}: expected a number, got NaN")
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}." if prefix else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys here: {valid}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}:{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE (for example model.d_model=256)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested dict (a copy is returned).

    Keys are checked later, when the dict is turned into a dataclass with :func:`from_dict`.
    """
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins; nested mappings are merged, not replaced."""
    out = _deep_copy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = _deep_copy(v)
    return out


# --------------------------------------------------------------------------------------------
# Model configuration
# --------------------------------------------------------------------------------------------

Arch = Literal["encoder", "decoder", "prefix-lm", "encoder-decoder"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
# gelu = exact erf GELU (BERT, BART); gelu_tanh = tanh approximation (GPT-2's "gelu_new");
# the gated variants follow Shazeer 2020, "GLU Variants Improve Transformer".
Activation = Literal[
    "gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"
]
Position = Literal["learned", "sinusoidal", "rope", "alibi", "t5-relative", "none"]
Pooling = Literal["auto", "first", "last", "mean", "decoder"]
SinusoidalLayout = Literal["interleaved", "halves"]
ClsActivation = Literal["tanh", "relu"]

ARCHS: tuple[str, ...] = get_args(Arch)
GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh", "reglu")

# Layer patterns (model.layers / model.ffn): one letter per layer.
MIXERS = {"A": "attention", "M": "mamba", "S": "mamba2"}  # S: Mamba-2's SSD (Dao & Gu 2024)
FFNS = {"D": "dense", "N": "none", "E": "moe"}  # E: mixture of experts (model.moe)
Router = Literal["topk-softmax", "switch", "sigmoid-bias"]


def _parse_pattern(text: str, n: int, key: str, letters: dict[str, str]) -> list[str]:
    """``"MMMA"`` -> ["M", "M", "M", "A"] for ``n`` layers. Whitespace is ignored; a trailing
    ``*`` repeats the pattern cyclically to ``n`` layers (``"MMMA*"``, as Jamba's period)."""
    body = "".join(text.split())
    cyclic = body.endswith("*")
    if cyclic:
        body = body[:-1]
    valid = ", ".join(f"{k}={v}" for k, v in letters.items())
    if not body:
        raise ConfigError(f"{key}: empty pattern; one letter per layer ({valid})")
    for ch in body:
        if ch not in letters:
            raise ConfigError(f"{key}: unknown layer letter {ch!r} in {text!r}; valid: {valid}")
    if cyclic:
        return [body[i % len(body)] for i in range(n)]
    if len(body) != n:
        raise ConfigError(f"{key}: pattern {text!r} has {len(body)} layers but the stack has {n} "
                          f"(set the layer count to {len(body)}, or end the pattern with * to "
                          "repeat it)")
    return list(body)


@dataclass
class SSMConfig:
    """Options of the state-space mixers (Mamba-1: Gu & Dao 2023; Mamba-2: Dao & Gu 2024).

    Defaults follow ``mamba_ssm`` / Hugging Face ``MambaConfig`` (Mamba-2: ``Mamba2Config``,
    except ``d_state`` and ``chunk_size``, which are kept small for CPU-sized models).
    """

    d_state: int = 16  # N: state size per channel (Mamba-1) or per head (Mamba-2)
    d_conv: int = 4  # kernel of the short causal depthwise convolution
    expand: int = 2  # d_inner = expand * d_model
    d_inner: int | None = None  # explicit inner width (budget matching tunes it); None: expand * d_model
    dt_rank: int | None = None  # Mamba-1 rank of the dt projection; None: ceil(d_model / 16)
    head_dim: int = 64  # Mamba-2 P: channels per head (n_heads = d_inner / head_dim)
    n_groups: int = 1  # Mamba-2 groups of B/C shared by heads (as GQA's key/value groups)
    chunk_size: int = 64  # chunk length of the chunked training scan
    conv_bias: bool = True
    proj_bias: bool = False  # bias of in_proj / out_proj
    dt_min: float = 0.001  # dt initialisation range (log-uniform) and floor
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: list[float] | None = None  # Mamba-2: clamp dt to [lo, hi] (HF time_step_limit)
    dtbc_norm: bool = False  # RMSNorm on dt, B and C (Jamba's Mamba layers; Mamba-1 only)
    norm_eps: float | None = None  # eps of the Mamba-2 gated norm and dt/B/C norms; None: model.norm_eps

    def inner(self, d_model: int) -> int:
        """d_inner: the mixer's expanded width."""
        return self.d_inner if self.d_inner is not None else self.expand * d_model

    def rank(self, d_model: int) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(d_model / 16)

    def heads(self, d_model: int) -> int:
        return self.inner(d_model) // self.head_dim

    def validate(self, d_model: int) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"model.ssm.{key}: {msg}")

        for key in ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.d_inner is not None and self.d_inner < 1:
            raise bad("d_inner", f"must be >= 1 or null, got {self.d_inner}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise bad("dt_rank", f"must be >= 1 or null, got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise bad("dt_min", f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.dt_limit is not None and (len(self.dt_limit) != 2
                                          or not 0 <= self.dt_limit[0] < self.dt_limit[1]):
            raise bad("dt_limit", f"expected [lo, hi] with 0 <= lo < hi, got {self.dt_limit}")
        if self.norm_eps is not None and self.norm_eps <= 0:
            raise bad("norm_eps", f"must be > 0, got {self.norm_eps}")


@dataclass
class MoEConfig:
    """Options of the mixture-of-experts feed-forward (ffn letter E in ``model.ffn``).

    Routers: ``topk-softmax``: softmax over the experts, top-k, weights renormalised over the
    chosen k (Mixtral; Jiang et al. 2024), or with ``norm_topk: false`` the k probabilities as
    they are (Jamba, Lieber et al. 2024; transformers' ``norm_topk_prob=False``);
    ``switch``: softmax top-1 weighted by its probability (Fedus et al. 2022); ``sigmoid-bias``: sigmoid scores, top-k chosen on
    score + a per-expert bias that moves toward equal load after each optimizer step and never
    enters the gate values (DeepSeek-V3's auxiliary-loss-free balancing; Wang et al. 2024).
    """

    n_experts: int = 8  # E routed experts
    top_k: int = 2  # experts per token (switch: 1)
    router: Router = "topk-softmax"
    norm_topk: bool = True  # topk-softmax: renormalise the chosen k gates to sum 1 (Mixtral);
    # false: gate by the softmax probabilities themselves (Jamba)
    capacity_factor: float | None = None  # None: dropless; else in training each expert takes
    # at most ceil(capacity_factor * T * top_k / E) assignments per sequence of T real tokens,
    # the rest are dropped; evaluation is dropless (model/moe.py)
    n_shared_experts: int = 0  # always-on experts of width d_ff_expert each (DeepSeek-MoE)
    d_ff_expert: int | None = None  # hidden width of one expert; None: model.d_ff
    aux_loss_coef: float | None = None  # Switch load balancing E*sum f_i P_i; None: 0.01
    # (0 for sigmoid-bias, which balances through its bias)
    z_loss_coef: float = 0.0  # router z-loss mean(logsumexp^2) (ST-MoE, Zoph et al. 2022: 1e-3)
    router_jitter: float = 0.0  # training: router input times U(1 - j, 1 + j) (Switch)
    bias_update_rate: float = 1e-3  # sigmoid-bias: step of the balancing bias (DeepSeek-V3 gamma)

    def d_expert(self, d_ff: int) -> int:
        return self.d_ff_expert if self.d_ff_expert is not None else d_ff

    @property
    def balance_coef(self) -> float:
        if self.aux_loss_coef is not None:
            return self.aux_loss_coef
        return 0.0 if self.router == "sigmoid-bias" else 0.01

    def validate(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"model.moe.{key}: {msg}")

        _coerce(self.router, Router, "model.moe.router")
        if self.n_experts < 1:
            raise bad("n_experts", f"must be >= 1, got {self.n_experts}")
        if not 1 <= self.top_k <= self.n_experts:
            raise bad("top_k", f"must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if self.router == "switch" and self.top_k != 1:
            raise bad("top_k", f"the switch router is top-1, got top_k={self.top_k} (use "
                               "router topk-softmax for k > 1)")
        if not self.norm_topk and self.router != "topk-softmax":
            why = "gates by its top-1 probability" if self.router == "switch" else "always renormalises"
            raise bad("norm_topk", f"only the topk-softmax router has unnormalised gates; "
                                   f"{self.router} {why} (leave norm_topk true)")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise bad("capacity_factor", f"must be > 0 (or null for dropless), got "
                                         f"{self.capacity_factor}")
        if self.n_shared_experts < 0:
            raise bad("n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
        if self.d_ff_expert is not None and self.d_ff_expert < 1:
            raise bad("d_ff_expert", f"must be >= 1 or null, got {self.d_ff_expert}")
        for key in ("aux_loss_coef", "z_loss_coef", "router_jitter", "bias_update_rate"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise bad(key, f"must be >= 0, got {v}")
        if self.router_jitter >= 1:
            raise bad("router_jitter", f"must be in [0, 1), got {self.router_jitter}")


@dataclass
class ModelConfig:
    """Everything that defines a network. Architecture family and block style are independent.

    ``n_layers`` is the depth of an encoder-only or decoder-only model, and the default depth of
    each side of an encoder-decoder model (``n_encoder_layers`` / ``n_decoder_layers`` override
    it, unbalanced depths allowed).
    """

    arch: Arch = "decoder"
    vocab_size: int = 8192
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; else GQA (Ainslie et al. 2023)
    head_dim: int | None = None  # None: d_model // n_heads (T5 decouples them: d_kv)
    n_layers: int = 4
    n_encoder_layers: int | None = None
    n_decoder_layers: int | None = None
    d_ff: int = 1024
    max_seq_len: int = 512
    dropout: float = 0.0
    attn_dropout: float | None = None  # None: same as dropout
    norm: Norm = "rmsnorm"
    norm_eps: float = 1e-6
    norm_position: NormPosition = "pre"
    final_norm: bool | None = None  # None: True for pre-norm stacks, False for post-norm
    embedding_norm: bool = False  # LayerNorm after the embeddings (BERT, BART)
    activation: Activation = "swiglu"
    position: Position = "rope"
    rope_theta: float = 10000.0
    rel_buckets: int = 32  # T5 relative position buckets
    rel_max_distance: int = 128
    position_offset: int = 0  # learned positions start at this row (BART: 2)
    # positions count the non-pad tokens so far (RoBERTa / fairseq make_positions: real token k
    # gets row position_offset + k, a pad token row position_offset - 1 = padding_idx); encoders
    pad_aware_positions: bool = False
    # sinusoidal table: sin/cos interleaved (Vaswani et al. 2017, tensor2tensor's even/odd) or
    # all sines then all cosines (Marian / fairseq's layout)
    sinusoidal_layout: SinusoidalLayout = "interleaved"
    bias: bool = False
    tie_embeddings: bool = True
    share_encoder_decoder: bool = False  # T5 paper Sec. 3.2.2 "shared" variant
    type_vocab_size: int = 0  # BERT segment embeddings; 0 = none
    attn_scale: float | None = None  # None: 1/sqrt(head_dim); T5 uses 1.0
    # sliding-window self-attention: a query sees keys fewer than attn_window slots away
    # (causal: itself and the attn_window - 1 before it, Mistral's sliding_window); None: all
    attn_window: int | None = None
    embed_scale: float = 1.0  # multiply token embeddings (BART scale_embedding: sqrt(d_model))
    lm_head_scale: float = 1.0  # multiply hidden states before the LM head (tied T5: d^-0.5)
    lm_head_bias: bool = False  # output bias (BERT MLM decoder bias, BART final_logits_bias)
    mlm_transform: bool = True  # encoder MLM head: dense + activation + norm before output
    n_classes: int = 0  # > 0 adds a sequence-classification head
    # > 0 adds a token-classification head (one tag per token: NER's BIO tags), a linear map of
    # every final hidden state (BERT's BertForTokenClassification, Devlin et al. 2019 Sec. 4.3)
    n_tags: int = 0
    pooling: Pooling = "auto"  # classification pooling; auto picks per family
    cls_activation: ClsActivation = "tanh"  # classifier's hidden activation (DistilBERT: relu)
    init_std: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int | None = None  # None: bos_token_id
    # Per-layer design: a layer is (sequence mixer, feed-forward). ``layers`` has one letter
    # per layer: A attention, M Mamba-1, S Mamba-2 (None: all attention, today's models); an
    # encoder-decoder takes "ENCODER/DECODER" (one pattern without "/" serves both sides).
    # ``ffn``: D dense, N none, E mixture of experts (model.moe), same layout; None: dense
    # after attention, none after Mamba (the Mamba block replaces both attention and MLP;
    # Gu & Dao 2023 Sec. 3.4). Every k-th layer MoE: a cyclic pattern, e.g. "DE*" (Jamba's
    # expert_layer_period 2, offset 1).
    layers: str | None = None
    ffn: str | None = None
    ssm: SSMConfig | None = None  # mixer options; only for patterns with M or S layers
    moe: MoEConfig | None = None  # expert options; only for ffn patterns with E layers

    def __post_init__(self) -> None:
        if isinstance(self.ssm, Mapping):  # ModelConfig(ssm={...}) from code
            self.ssm = from_dict(SSMConfig, self.ssm, prefix="model.ssm")
        if isinstance(self.moe, Mapping):
            self.moe = from_dict(MoEConfig, self.moe, prefix="model.moe")
        self.validate()

    # ---- derived -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def encoder_layers(self) -> int:
        if self.arch == "encoder":
            return self.n_layers
        if self.arch == "encoder-decoder":
            return self.n_encoder_layers if self.n_encoder_layers is not None else self.n_layers
        return 0

    @property
    def decoder_layers(self) -> int:
        if self.arch in ("decoder", "prefix-lm"):
            return self.n_layers
        if self.arch == "encoder-decoder":
            return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers
        return 0

    @property
    def use_final_norm(self) -> bool:
        return self.final_norm if self.final_norm is not None else self.norm_position == "pre"

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    @property
    def start_token_id(self) -> int:
        s = self.decoder_start_token_id
        return s if s is not None else self.bos_token_id

    @property
    def pooling_mode(self) -> str:
        if self.pooling != "auto":
            return self.pooling
        return {"encoder": "first", "decoder": "last", "prefix-lm": "mean",
                "encoder-decoder": "decoder"}[self.arch]

    @property
    def ssm_cfg(self) -> SSMConfig:
        return self.ssm if self.ssm is not None else SSMConfig()

    def _side(self, text: str | None, side: str, key: str) -> str | None:
        if text is None or "/" not in text:
            return text
        if self.arch != "encoder-decoder":
            raise ConfigError(f"model.{key}: 'ENCODER/DECODER' patterns need arch encoder-decoder "
                              f"(arch is {self.arch}); write one pattern")
        parts = text.split("/")
        if len(parts) != 2:
            raise ConfigError(f"model.{key}: expected one '/' (ENCODER/DECODER), got {text!r}")
        return parts[0] if side == "encoder" else parts[1]

    def layer_kinds(self, side: str) -> list[tuple[str, str]]:
        """[(mixer, ffn)] of each layer of the ``encoder`` or ``decoder`` stack, e.g.
        [("mamba", "none"), ("attention", "dense")]."""
        n = self.encoder_layers if side == "encoder" else self.decoder_layers
        mix = self._side(self.layers, side, "layers")
        mixers = ["A"] * n if mix is None else _parse_pattern(mix, n, "model.layers", MIXERS)
        ff = self._side(self.ffn, side, "ffn")
        if ff is None:
            ffns = ["D" if m == "A" else "N" for m in mixers]
        else:
            ffns = _parse_pattern(ff, n, "model.ffn", FFNS)
        return [(MIXERS[m], FFNS[f]) for m, f in zip(mixers, ffns)]

    def all_layer_kinds(self) -> list[tuple[str, str]]:
        out = []
        for side in ("encoder", "decoder"):
            n = self.encoder_layers if side == "encoder" else self.decoder_layers
            if n:
                out += self.layer_kinds(side)
        return out

    @property
    def has_ssm(self) -> bool:
        return any(m != "attention" for m, _ in self.all_layer_kinds())

    @property
    def moe_cfg(self) -> MoEConfig:
        return self.moe if self.moe is not None else MoEConfig()

    @property
    def has_moe(self) -> bool:
        return self.ffn is not None and any(f == "moe" for _, f in self.all_layer_kinds())

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"model.{key}: {msg}")

        for key, tp in typing.get_type_hints(ModelConfig).items():
            if get_origin(tp) is Literal:
                _coerce(getattr(self, key), tp, f"model.{key}")
        for key in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("n_kv_heads", "head_dim"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise bad(key, f"must be >= 1 or null, got {v}")
        for key in ("n_encoder_layers", "n_decoder_layers"):
            v = getattr(self, key)
            if v is not None:
                if self.arch != "encoder-decoder":
                    raise bad(key, f"only applies to arch encoder-decoder (arch is {self.arch}); "
                                   "use n_layers")
                if v < 1:
                    raise bad(key, f"must be >= 1, got {v}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise bad("n_heads", f"d_model={self.d_model} is not divisible by n_heads="
                                 f"{self.n_heads}; change one or set head_dim")
        if self.n_heads % self.kv_heads:
            raise bad("n_kv_heads", f"n_heads={self.n_heads} must be a multiple of n_kv_heads="
                                    f"{self.kv_heads}")
        if self.position == "rope" and self.dim_head % 2:
            raise bad("position", f"rope needs an even head dimension, got {self.dim_head}")
        if self.pad_aware_positions and (self.position != "learned" or self.arch != "encoder"
                                         or self.position_offset < 1):
            raise bad("pad_aware_positions", "needs arch encoder, position learned and "
                      f"position_offset >= 1 (got {self.arch}, {self.position}, {self.position_offset})")
        if self.attn_window is not None and self.attn_window < 1:
            raise bad("attn_window", f"must be >= 1 or null (no window), got {self.attn_window}")
        for key in ("dropout", "attn_dropout"):
            v = getattr(self, key)
            if v is not None and not 0.0 <= v < 1.0:
                raise bad(key, f"must be in [0, 1), got {v}")
        if self.share_encoder_decoder:
            if self.arch != "encoder-decoder":
                raise bad("share_encoder_decoder", f"only applies to arch encoder-decoder "
                                                   f"(arch is {self.arch})")
            if self.encoder_layers != self.decoder_layers:
                raise bad("share_encoder_decoder", "needs equal encoder and decoder depths, got "
                          f"{self.encoder_layers}+{self.decoder_layers}")
        if self.n_classes < 0:
            raise bad("n_classes", f"must be >= 0, got {self.n_classes}")
        if self.n_tags < 0:
            raise bad("n_tags", f"must be >= 0, got {self.n_tags}")
        if self.pooling == "decoder" and self.arch != "encoder-decoder":
            raise bad("pooling", f"'decoder' pooling needs arch encoder-decoder (arch is "
                                 f"{self.arch}); choose auto, first, last or mean")
        if self.norm_eps <= 0:
            raise bad("norm_eps", f"must be > 0, got {self.norm_eps}")
        if self.rel_buckets < 2 or self.rel_max_distance < 2:
            raise bad("rel_buckets", "rel_buckets and rel_max_distance must be >= 2")
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            v = getattr(self, key)
            if v is not None and not 0 <= v < self.vocab_size:
                raise bad(key, f"{v} is outside the vocabulary [0, {self.vocab_size})")
        self._validate_layers()

    def _validate_layers(self) -> None:
        if self.layers is None and self.ffn is None and self.ssm is None and self.moe is None:
            return  # all-attention, nothing to check (today's models)
        kinds = self.all_layer_kinds()  # parses the patterns: unknown letters, lengths
        has_moe = any(f == "moe" for _, f in kinds)
        if self.moe is not None and not has_moe:
            raise ConfigError("model.moe: MoE options on a model without MoE layers; "
                              "model.ffn has no E (mixture of experts) layer, e.g. ffn: E*")
        if has_moe:
            self.moe_cfg.validate()
            if self.share_encoder_decoder:
                raise ConfigError("model.share_encoder_decoder: not supported with MoE layers "
                                  "(model.ffn)")
        if self.ssm is not None:
            if not any(m != "attention" for m, _ in kinds):
                raise ConfigError("model.ssm: SSM options on an attention-only model; "
                                  "model.layers has no M (Mamba) or S (Mamba-2) layer")
        s = self.ssm_cfg
        if any(m != "attention" for m, _ in kinds):
            s.validate(self.d_model)
            if self.share_encoder_decoder:
                raise ConfigError("model.share_encoder_decoder: not supported with Mamba layers "
                                  "(model.layers)")
        if any(m == "mamba2" for m, _ in kinds):
            d_inner = s.inner(self.d_model)
            if d_inner % s.head_dim:
                raise ConfigError(f"model.ssm.head_dim: d_inner = {d_inner} (expand * d_model or "
                                  f"ssm.d_inner) is not divisible by head_dim={s.head_dim}")
            if s.heads(self.d_model) % s.n_groups or d_inner % s.n_groups:
                raise ConfigError(f"model.ssm.n_groups: {s.heads(self.d_model)} Mamba-2 heads are "
                                  f"not divisible by n_groups={s.n_groups}")
        if s.dtbc_norm and any(m == "mamba2" for m, _ in kinds):
            raise ConfigError("model.ssm.dtbc_norm: applies to Mamba-1 (M) layers only "
                              "(Jamba); Mamba-2 layers normalise their gated output")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def model_config_from_dict(data: Mapping[str, Any], prefix: str = "model") -> ModelConfig:
    return from_dict(ModelConfig, data, prefix=prefix)


__all__ = [
    "ARCHS",
    "MoEConfig",
    "ModelConfig",
    "SSMConfig",
    "apply_overrides",
    "field",
    "from_dict",
    "load_yaml",
    "merge",
    "model_config_from_dict",
    "parse_override",
    "save_yaml",
    "to_dict",
]
