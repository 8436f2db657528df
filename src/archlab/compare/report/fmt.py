"""Text forms of the report's numbers (shared by the verdict and the tables)."""

from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _human(n: float | None, unit: str = "") -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for suffix, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _pm(row: dict[str, Any], key: str, digits: int = 2) -> str:
    if row.get(key) is None or (isinstance(row.get(key), float) and math.isnan(row[key])):
        return "-"
    s = row.get(key + "_std", 0.0)
    if len(row["seeds"]) > 1:
        return f"{row[key]:.{digits}f} ± {s:.{digits}f}"
    return f"{row[key]:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _scale(s: float) -> str:
    return f"×{s:g}"


def _tuned(d: Any) -> str:
    if isinstance(d, list):
        return " / ".join(_tuned(x) for x in d) + " (differs by seed)"
    if not isinstance(d, dict) or not d:
        return "-"
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())

