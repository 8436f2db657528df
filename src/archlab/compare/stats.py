"""Statistics for ``archlab compare``: paired significance tests, scaling-curve fits, winners
per budget and where they change, and loss-spike detection. Pure functions, no I/O.

- Paired bootstrap resampling (Koehn 2004, "Statistical significance tests for machine
  translation evaluation") of corpus BLEU / chrF is sacrebleu's own implementation
  (``sacrebleu.significance.PairedTest``, Post 2018), so its numbers equal
  ``sacrebleu REF -i BASE SYS --paired-bs`` with the same seed.
- Per-example scores (accuracy's 0/1, per-example losses) get the same paired bootstrap of
  the mean difference in numpy (Efron & Tibshirani 1993, ch. 16: the p-value of the shifted
  bootstrap distribution, two-sided).
- Scaling curves are the saturating power law of Kaplan et al. 2020 / Hoffmann et al. 2022:
  ``y = E + A * x**-alpha`` (a loss falling with compute towards an irreducible ``E``), or
  ``y = E - A * x**-alpha`` for a quality metric that rises.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA = 0.05  # significance level of every "significant" in the report
SACREBLEU_DEFAULT_SEED = 12345  # sacrebleu's own default (SACREBLEU_SEED), so CLI runs agree


# ---------------------------------------------------------------------------------------------
# paired tests
# ---------------------------------------------------------------------------------------------
@dataclass
class PairedResult:
    """One system against the baseline on one metric.

    ``score``: the system's corpus score; ``delta``: score - baseline score; ``mean`` and
    ``ci``: the bootstrap estimate of the true score and the half-width of its 95 %
    interval (sacrebleu's ``μ ± 95% CI``; for per-example scores the interval of ``delta``
    is ``ci_low``..``ci_high``); ``p_value``: probability of a difference at least this large
    under the null hypothesis that both come from the same process (None for the baseline)."""

    score: float
    delta: float
    mean: float | None
    ci: float | None
    p_value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value is not None and self.p_value < alpha


@contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    # PairedTest reads its seed from the environment (as the CLI does); set it for this call only
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap_mt(systems: Mapping[str, Sequence[str]], references: Sequence[str], baseline: str, *,
                        metrics: Sequence[str] = ("bleu", "chrf"), n_samples: int = 1000,
                        seed: int = SACREBLEU_DEFAULT_SEED) -> dict[str, dict[str, PairedResult]]:
    """Paired bootstrap resampling of corpus BLEU / chrF of every system against ``baseline``
    on the same test sentences, with sacrebleu's ``PairedTest`` (the metrics configured as in
    :func:`archlab.evaluate.metrics.translation_metrics`, sacrebleu's defaults).

    Returns ``{system: {metric: PairedResult}}``, the baseline included (p-value None, delta 0).
    A system whose outputs equal the baseline's gets p = 1 (sacrebleu reports 1/(n+1) there).
    ``seed`` must be non-zero: sacrebleu treats 0 as "unseeded"."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    if baseline not in systems:
        raise ValueError(f"baseline {baseline!r} is not one of the systems: {', '.join(systems)}")
    if seed == 0:
        raise ValueError("seed 0 means unseeded to sacrebleu; use another seed")
    n = len(references)
    for name, hyps in systems.items():
        if len(hyps) != n:
            raise ValueError(f"system {name!r}: {len(hyps)} hypotheses for {n} references")
    if n < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 test sentences, got {n}")
    makers = {"bleu": BLEU, "chrf": CHRF}
    unknown = [m for m in metrics if m not in makers]
    if unknown:
        raise ValueError(f"metrics {unknown}: choose from {', '.join(makers)}")
    order = [baseline, *[s for s in systems if s != baseline]]
    named = [(s, list(systems[s])) for s in order]
    objs = {m: makers[m]() for m in metrics}
    with _sacrebleu_seed(seed):
        test = PairedTest(named, {m: o for m, o in objs.items()}, [list(references)], test_type="bs",
                          n_samples=n_samples)
        _, scores = test()
    # PairedTest keys its columns by the score's name (BLEU, chrF2) in the order given
    cols = [k for k in scores if k != "System"]
    out: dict[str, dict[str, PairedResult]] = {s: {} for s in order}
    for m, col in zip(metrics, cols):
        res = scores[col]
        base = float(res[0].score)
        for s, r in zip(order, res):
            p = None if s == baseline else float(r.p_value)
            if p is not None and (list(systems[s]) == list(systems[baseline]) or float(r.score) == base):
                # identical outputs, or the same corpus score (e.g. two systems that both score
                # 0): sacrebleu's statistic (centred |delta| strictly above the observed one)
                # is then never exceeded, so it reports its smallest p, 1/(n+1), for a
                # difference of exactly zero; no difference is established
                p = 1.0
            out[s][m] = PairedResult(
                score=float(r.score), delta=float(r.score) - base,
                mean=None if r.mean is None else float(r.mean), ci=None if r.ci is None else float(r.ci),
                p_value=p)
    return out


def paired_bootstrap_mean(system: Sequence[float], baseline: Sequence[float], *, n_samples: int = 1000,
                          seed: int = 0) -> PairedResult:
    """Paired bootstrap of the difference in mean of per-example scores (e.g. accuracy's 0/1)
    between ``system`` and ``baseline`` on the same examples.

    Resamples examples with replacement (the same indices for both); the 95 % interval of the
    difference is the 2.5-97.5 percentile of the resampled differences; the two-sided
    p-value is the share of resampled differences, shifted to mean zero (the null), at least
    as far from zero as the observed one, with the +1 correction of sacrebleu and Davison &
    Hinkley 1997 (so never 0)."""
    a = np.asarray(system, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-D shapes, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 examples, got {len(a)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_samples, len(a)))  # (S, N)
    d = a - b  # (N,)
    obs = float(d.mean())
    boot = d[idx].mean(axis=1)  # (S,)
    centred = boot - boot.mean()
    p = (int(np.sum(np.abs(centred) >= abs(obs) - 1e-12)) + 1) / (n_samples + 1)
    sys_boot = a[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    s_lo, s_hi = np.percentile(sys_boot, [2.5, 97.5])
    return PairedResult(score=float(a.mean()), delta=obs, mean=float(sys_boot.mean()),
                        ci=float((s_hi - s_lo) / 2), p_value=min(p, 1.0), ci_low=float(lo), ci_high=float(hi))


def _f1(counts: np.ndarray) -> np.ndarray:
    """Entity F1 2 C / (P + G) from summed (..., 3) counts [correct, predicted, gold] (0 where
    nothing was predicted or to find)."""
    c, p, g = counts[..., 0], counts[..., 1], counts[..., 2]
    den = p + g
    return np.where(den > 0, 2.0 * c / np.maximum(den, 1), 0.0)


def paired_bootstrap_f1(system: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]], *,
                        n_samples: int = 1000, seed: int = 0) -> PairedResult:
    """Paired bootstrap of the difference in corpus entity F1 (NER): per sentence the
    [correct, predicted, gold] entity counts of ``system`` and ``baseline`` on the same
    sentences. F1 is not a mean of per-sentence scores, so each resample of sentences (the same
    indices for both) sums the counts and recomputes F1 from them, as sacrebleu does for BLEU
    (Koehn 2004); p-value and intervals as :func:`paired_bootstrap_mean`."""
    a = np.asarray(system, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"entity counts need equal (N, 3) shapes, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 examples, got {len(a)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_samples, len(a)))  # (S, N)
    fa, fb = _f1(a[idx].sum(axis=1)), _f1(b[idx].sum(axis=1))  # (S,) each
    score = float(_f1(a.sum(axis=0)))
    obs = score - float(_f1(b.sum(axis=0)))
    boot = fa - fb
    centred = boot - boot.mean()
    p = (int(np.sum(np.abs(centred) >= abs(obs) - 1e-12)) + 1) / (n_samples + 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    s_lo, s_hi = np.percentile(fa, [2.5, 97.5])
    return PairedResult(score=score, delta=obs, mean=float(fa.mean()), ci=float((s_hi - s_lo) / 2),
                        p_value=min(p, 1.0), ci_low=float(lo), ci_high=float(hi))


def combine_seed_pairings(results: Sequence[PairedResult | None]) -> float | None:
    """One p-value for a comparison repeated once per seed (entry A seed s against entry B
    seed s): the largest, i.e. the difference must be significant in every pairing (the
    intersection-union test, valid without assuming the seeds independent; Berger 1982)."""
    ps = [r.p_value for r in results if r is not None and r.p_value is not None]
    return max(ps) if ps else None


# ---------------------------------------------------------------------------------------------
# scaling-curve fit
# ---------------------------------------------------------------------------------------------
@dataclass
class PowerLawFit:
    """``y = E + sign * A * x**-alpha`` with sign +1 (falling, a loss) or -1 (rising, a quality
    metric); A > 0, alpha > 0. ``r2``: coefficient of determination on the fitted points."""

    E: float
    A: float
    alpha: float
    sign: int
    r2: float
    n_points: int
    n_budgets: int
    at_bound: bool = False  # alpha ended at the edge of its search range: the shape is not pinned down

    def __call__(self, x: Any) -> Any:
        return self.E + self.sign * self.A * np.power(np.asarray(x, dtype=np.float64), -self.alpha)

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "sign": self.sign, "r2": self.r2,
                "n_points": self.n_points, "n_budgets": self.n_budgets, "at_bound": self.at_bound}


def _lsq_at(alpha: float, u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (E, A', SSE) of y = E + A' u^-alpha at fixed alpha."""
    z = np.power(u, -alpha)
    X = np.stack([np.ones_like(z), z], axis=1)  # (N, 2)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    return float(coef[0]), float(coef[1]), float(r @ r)


def fit_power_law(x: Sequence[float], y: Sequence[float], *, higher_is_better: bool = False,
                  min_budgets: int = 4, alpha_range: tuple[float, float] = (1e-3, 3.0)) -> PowerLawFit | None:
    """Fit ``y = E + A x^-alpha`` (``higher_is_better``: ``y = E - A x^-alpha``) with A > 0 and
    alpha in ``alpha_range``, by least squares: for a fixed alpha the model is linear in (E, A),
    so alpha is searched (a log-spaced grid, then golden-section refinement around the best
    grid point) and (E, A) solved exactly. Repeated x (several seeds per budget) are fitted
    as separate points. None with fewer than ``min_budgets`` distinct x (three parameters
    need at least one spare), or when no A > 0 fits (y does not improve with x)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
    xs, ys = xs[ok], ys[ok]
    n_budgets = len(np.unique(xs))
    if n_budgets < min_budgets:
        return None
    sign = -1 if higher_is_better else 1
    t = sign * ys  # fit t = E' + A' u^-alpha with A' > 0
    x0 = float(np.exp(np.mean(np.log(xs))))  # scale x to ~1 so u^-alpha stays well conditioned
    u = xs / x0

    def sse(alpha: float) -> float:
        _, a, s = _lsq_at(alpha, u, t)
        return s if a > 0 else math.inf

    lo, hi = alpha_range
    grid = np.geomspace(lo, hi, 200)
    vals = np.array([sse(a) for a in grid])
    if not np.isfinite(vals).any():
        return None
    i = int(np.argmin(vals))
    a_lo, a_hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2  # golden-section search on [a_lo, a_hi]
    c, d = a_hi - g * (a_hi - a_lo), a_lo + g * (a_hi - a_lo)
    fc, fd = sse(c), sse(d)
    for _ in range(60):
        if fc < fd:
            a_hi, d, fd = d, c, fc
            c = a_hi - g * (a_hi - a_lo)
            fc = sse(c)
        else:
            a_lo, c, fc = c, d, fd
            d = a_lo + g * (a_hi - a_lo)
            fd = sse(d)
    best = min([(float(vals[i]), float(grid[i])), (fc, float(c)), (fd, float(d))])
    alpha = best[1]
    e, a, s = _lsq_at(alpha, u, t)
    if not a > 0:
        return None
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - s / ss_tot if ss_tot > 0 else 1.0
    # back to the caller's x: A' u^-alpha = A' x0^alpha x^-alpha
    at_bound = alpha < lo * 1.05 or alpha > hi / 1.05
    return PowerLawFit(E=sign * e, A=float(a * x0**alpha), alpha=alpha, sign=sign, r2=float(r2),
                       n_points=len(xs), n_budgets=n_budgets, at_bound=at_bound)


# ---------------------------------------------------------------------------------------------
# winners per budget and crossings
# ---------------------------------------------------------------------------------------------
@dataclass
class Winner:
    """The outcome at one budget. ``entry`` is the winner, or None for a tie; ``leader`` is
    the best mean whether or not it is significant; ``runner_up`` the next best mean;
    ``p_value`` the leader vs runner-up (the largest over seed pairings, None when no paired
    test was possible); ``reason`` a short phrase for the verdict."""

    budget: float
    entry: str | None
    leader: str
    runner_up: str | None
    gap: float
    p_value: float | None
    reason: str


def pick_winner(budget: float, scores: Mapping[str, Mapping[Any, float]], *, higher_is_better: bool,
                p_values: Mapping[str, float | None] | None = None, alpha: float = ALPHA) -> Winner:
    """Winner among entries at one budget, given each entry's score per seed id
    (``scores[entry][seed]``) and the paired p-value of each entry against the best
    (``p_values[entry]``).

    The best mean wins only when its difference from the runner-up is significant in the
    paired test (p < alpha) and, with two or more seeds that both entries ran, the gap is
    larger than either entry's seed-to-seed standard deviation and has the same sign in every
    one of those common seeds: seed ``s`` of one entry is paired with seed ``s`` of the other
    (same initialisation and data order), never by position, so a seed missing from one entry
    drops that seed from the pairing instead of shifting the others. Otherwise the budget is a
    tie. Without a paired test (no per-example outputs) the seed criterion alone decides, and
    fewer than two common seeds is always a tie."""
    for e, v in scores.items():
        if not isinstance(v, Mapping):
            raise TypeError(f"scores[{e!r}] must map seed id -> score (seeds are paired by id), "
                            f"got {type(v).__name__}")
    means = {e: float(np.mean(list(v.values()))) for e, v in scores.items() if len(v)}
    if not means:
        raise ValueError("no scores")
    ranked = sorted(means, key=lambda e: means[e], reverse=higher_is_better)
    leader = ranked[0]
    if len(ranked) == 1:
        return Winner(budget, leader, leader, None, math.nan, None, "the only entry")
    second = ranked[1]
    gap = abs(means[leader] - means[second])
    p = (p_values or {}).get(second)
    lead_s, second_s = scores[leader], scores[second]
    a, b = np.asarray(list(lead_s.values()), float), np.asarray(list(second_s.values()), float)
    common = [s for s in lead_s if s in second_s]  # the seeds both entries ran, paired by id
    sd = max(float(np.std(a, ddof=1)) if len(a) > 1 else 0.0, float(np.std(b, ddof=1)) if len(b) > 1 else 0.0)
    if len(common) >= 2:
        diffs = np.array([lead_s[s] - second_s[s] for s in common], float) * (1 if higher_is_better else -1)
        seeds_ok = gap > sd and bool(np.all(diffs > 0))
    else:
        seeds_ok = None
    if p is not None and p >= alpha:
        return Winner(budget, None, leader, second, gap, p, f"not significant (p = {p:.3f})")
    if seeds_ok is False:
        why = "within the seed-to-seed spread" if gap <= sd else "the order changes between seeds"
        return Winner(budget, None, leader, second, gap, p, why)
    if p is None and seeds_ok is None:
        why = ("one seed" if min(len(a), len(b)) < 2 else "fewer than two seeds in common") + " and no paired test"
        return Winner(budget, None, leader, second, gap, p, why)
    if p is None:
        return Winner(budget, leader, leader, second, gap, p, f"ahead in every seed, gap above the seed spread ({sd:.3g})")
    return Winner(budget, leader, leader, second, gap, p, f"p = {p:.3f}")


@dataclass
class Crossing:
    """The winner changes from ``before`` (at budget ``lo``) to ``after`` (at ``hi``)."""

    lo: float
    hi: float
    before: str
    after: str


def crossings(winners: Sequence[Winner], *, significant_only: bool = True) -> list[Crossing]:
    """Where the ordering crosses as the budget grows: consecutive budgets (ties skipped when
    ``significant_only``, so A, tie, B is one crossing between A's and B's budgets) whose
    winner differs. With ``significant_only=False`` the best means (leaders) are compared."""
    seq = sorted(winners, key=lambda w: w.budget)
    pts = [(w.budget, w.entry if significant_only else w.leader) for w in seq]
    pts = [(b, e) for b, e in pts if e is not None]
    return [Crossing(b0, b1, e0, e1) for (b0, e0), (b1, e1) in zip(pts, pts[1:]) if e0 != e1]


# ---------------------------------------------------------------------------------------------
# training-curve diagnostics
# ---------------------------------------------------------------------------------------------
def loss_spikes(steps: Sequence[float], losses: Sequence[float], *, factor: float = 1.5, window: int = 20,
                min_history: int = 5) -> list[dict[str, float]]:
    """Points of a training-loss curve above ``factor`` x the median of the previous
    ``window`` points (the median ignores earlier spikes, so one spike does not hide the next;
    the first ``min_history`` points, still falling steeply, are not judged). Consecutive
    flagged points are one spike, reported at its peak: ``{step, loss, median, ratio}``.
    Non-finite losses (a NaN divergence) are always flagged."""
    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps for {len(losses)} losses")
    ys = [float(v) for v in losses]
    out: list[dict[str, float]] = []
    prev_flagged = False
    for i, y in enumerate(ys):
        hist = [v for v in ys[max(0, i - window) : i] if math.isfinite(v)]
        if i < min_history or not hist:
            prev_flagged = False
            continue
        med = float(np.median(hist))
        bad = not math.isfinite(y) or (med > 0 and y > factor * med)
        if bad:
            rec = {"step": float(steps[i]), "loss": y, "median": med,
                   "ratio": y / med if math.isfinite(y) and med > 0 else math.inf}
            if prev_flagged and out and (not math.isfinite(y) or y > out[-1]["loss"]):
                out[-1] = rec
            elif not prev_flagged:
                out.append(rec)
        prev_flagged = bad
    return out
