"""Named model presets, spelled ``FAMILY-SIZE`` (``decoder-tiny``, ``encoder-decoder-small``).

Every family of one size uses the same block (pre-norm RMSNorm, SwiGLU, RoPE, no biases, tied
embeddings: the Llama/T5.1.1-style block), so that comparing presets compares only the
architecture. Encoder-decoder presets have ``L + L`` layers for an ``L``-layer decoder-only
preset: about twice the parameters at about the same FLOPs per example, the T5 paper's
baseline pairing (Raffel et al. 2020, Table 2); ``archlab compare`` does the budget matching.
"""

from __future__ import annotations

from typing import Any

from archlab.config import ARCHS, ModelConfig, from_dict
from archlab.errors import ConfigError

# d_model, n_heads, n_layers, d_ff (SwiGLU d_ff ~ 8/3 d_model, Shazeer 2020), max_seq_len
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 4, 2, 384, 256),
    "small": (512, 8, 6, 1408, 512),
    "base": (768, 12, 12, 2048, 1024),
    "large": (1024, 16, 24, 2816, 1024),
}


def preset_dict(name: str) -> dict[str, Any]:
    """The ModelConfig fields of preset ``name`` as a dict (to merge with overrides)."""
    for size, (d, h, n, ff, msl) in SIZES.items():
        if name.endswith("-" + size):
            arch = name[: -len(size) - 1]
            if arch in ARCHS:
                return {"arch": arch, "d_model": d, "n_heads": h, "n_layers": n, "d_ff": ff,
                        "max_seq_len": msl, "vocab_size": 8192}
    raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")


def preset_names() -> list[str]:
    return [f"{arch}-{size}" for arch in ARCHS for size in SIZES]


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    d = preset_dict(name)
    d.update(overrides)
    return from_dict(ModelConfig, d, prefix="model")


def resolve_model_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """A preset name or a YAML file (a bare model mapping, or a run config with a ``model:``
    section), plus ``key=value`` overrides (``d_model=256`` or ``model.d_model=256``).

    Inside a YAML model mapping, ``preset: decoder-small`` starts from that preset.
    """
    from pathlib import Path

    from archlab.config import apply_overrides, load_yaml

    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        data = load_yaml(spec)
        if "model" in data:
            data = data["model"]
            if not isinstance(data, dict):
                raise ConfigError(f"{spec}: 'model' must be a mapping")
        where = spec
    else:
        data = {"preset": spec}
        where = spec
    data = dict(data)
    if "preset" in data:
        base = preset_dict(str(data.pop("preset")))
        base.update(data)
        data = base
    fixed = [o[len("model."):] if o.startswith("model.") else o for o in overrides]
    data = apply_overrides(data, fixed)
    try:
        return from_dict(ModelConfig, data, prefix="model")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
