"""Loading safetensors weights into a module, strictly: the one loader shared by model
directories (archlab.run) and training checkpoints (archlab.train.checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archlab.errors import ArchlabError


def load_weights(model: Any, path: str | Path, *, allow_missing: tuple[str, ...] = ()) -> None:
    """Load safetensors weights into ``model``; any missing/unexpected key is an error, except
    missing keys starting with one of ``allow_missing`` (a new head being fine-tuned)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    p = Path(path)
    if not p.exists():
        raise ArchlabError(f"{p}: weights file missing")
    try:
        missing, unexpected = load_model(model, str(p), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArchlabError(f"{p}: cannot load weights ({msg[:200]})") from None
    missing = [k for k in missing if not k.startswith(allow_missing)] if allow_missing else missing
    if missing or unexpected:
        what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise ArchlabError(f"{p}: weights do not match the model config ({what})")
