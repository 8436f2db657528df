"""compare.stats on synthetic data: the paired bootstrap equals sacrebleu's own (API and CLI,
same seed), the per-example bootstrap follows planted differences, the power-law fit
recovers known parameters, winners are called only when significant, crossings, spikes."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from archlab.compare import stats as S

WORDS = [a + b for a in "abcdefghij" for b in "klmnopqrst"]


def _refs(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(n)]


def _noisy(refs: list[str], p: float, seed: int) -> list[str]:
    """Each word replaced by a wrong one with probability p."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > p else rng.choice(WORDS) for w in r.split()) for r in refs]


# ---------------------------------------------------------------------------------------------
# paired bootstrap of BLEU / chrF
# ---------------------------------------------------------------------------------------------
def test_paired_bootstrap_equals_sacrebleu_paired_test(monkeypatch):
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    refs = _refs()
    systems = {"base": _noisy(refs, 0.2, 1), "worse": _noisy(refs, 0.45, 2), "close": _noisy(refs, 0.21, 3)}
    # the baseline need not come first in the mapping
    ours = S.paired_bootstrap_mt({"close": systems["close"], "worse": systems["worse"], "base": systems["base"]},
                                 refs, "base", n_samples=500, seed=777)
    monkeypatch.setenv("SACREBLEU_SEED", "777")
    _, theirs = PairedTest(list(systems.items()), {"bleu": BLEU(), "chrf": CHRF()}, [refs], test_type="bs",
                           n_samples=500)()
    for metric, col in (("bleu", "BLEU"), ("chrf", "chrF2")):
        for name, r in zip(theirs["System"], theirs[col]):
            o = ours[name][metric]
            assert o.score == pytest.approx(r.score, abs=1e-9)
            assert o.mean == pytest.approx(r.mean, abs=1e-6) and o.ci == pytest.approx(r.ci, abs=1e-6)
            assert o.p_value == (None if name == "base" else pytest.approx(r.p_value, abs=1e-12))
            assert o.delta == pytest.approx(r.score - theirs[col][0].score)
    # another seed gives other bootstrap numbers: the seed is passed through
    other = S.paired_bootstrap_mt(systems, refs, "base", n_samples=500, seed=778)
    assert other["close"]["bleu"].p_value != ours["close"]["bleu"].p_value


def test_paired_bootstrap_equals_the_sacrebleu_command_line(tmp_path):
    refs = _refs(40, seed=5)
    systems = {"base": _noisy(refs, 0.25, 1), "other": _noisy(refs, 0.3, 2)}
    paths = {}
    for name, lines in {"ref": refs, **systems}.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(paths["ref"]), "-i", str(paths["base"]),
                          str(paths["other"]), "--paired-bs", "--paired-bs-n", "300", "-m", "bleu", "chrf",
                          "-w", "4", "-f", "text"], capture_output=True, text=True,
                         env={"SACREBLEU_SEED": "4321", "PATH": "/usr/bin:/bin"}, check=True).stdout
    # a system's cell: "score (mean ± ci)", then the p-value on the next line
    cells = re.findall(r"(\d+\.\d{4}) \((\d+\.\d{4}) ± (\d+\.\d{4})\)", cli)
    pvals = [float(p) for p in re.findall(r"p = (\d\.\d{4})", cli)]
    ours = S.paired_bootstrap_mt(systems, refs, "base", n_samples=300, seed=4321)
    want = [ours["base"]["bleu"], ours["base"]["chrf"], ours["other"]["bleu"], ours["other"]["chrf"]]
    assert len(cells) == 4 and len(pvals) == 2, cli
    for (score, mean, ci), o in zip(cells, want):
        assert (float(score), float(mean), float(ci)) == pytest.approx((o.score, o.mean, o.ci), abs=6e-5)
    assert pvals == pytest.approx([ours["other"]["bleu"].p_value, ours["other"]["chrf"].p_value], abs=6e-5)


def test_paired_bootstrap_follows_planted_differences():
    refs = _refs(80)
    base = _noisy(refs, 0.2, 1)
    other = _noisy(refs, 0.2, 9)
    close = [o if i % 10 == 0 else b for i, (b, o) in enumerate(zip(base, other))]  # 8 of 80 redone
    systems = {"base": base, "worse": _noisy(refs, 0.5, 2), "twin": list(base), "close": close}
    res = S.paired_bootstrap_mt(systems, refs, "base", n_samples=300)
    assert res["worse"]["bleu"].significant() and res["worse"]["bleu"].delta < -20
    assert res["close"]["bleu"].p_value > 0.05 and not res["close"]["chrf"].significant()
    # identical outputs: no difference at all (sacrebleu's own statistic would say p = 1/301)
    assert res["twin"]["bleu"].p_value == 1.0 and res["twin"]["bleu"].delta == 0.0


def test_paired_bootstrap_rejects_mismatched_inputs():
    refs = _refs(10)
    with pytest.raises(ValueError, match="9 hypotheses for 10"):
        S.paired_bootstrap_mt({"a": refs, "b": refs[:9]}, refs, "a")
    with pytest.raises(ValueError, match="baseline 'c'"):
        S.paired_bootstrap_mt({"a": refs, "b": refs}, refs, "c")
    with pytest.raises(ValueError, match="seed 0"):
        S.paired_bootstrap_mt({"a": refs, "b": refs}, refs, "a", seed=0)


# ---------------------------------------------------------------------------------------------
# per-example paired bootstrap
# ---------------------------------------------------------------------------------------------
def test_per_example_bootstrap_detects_a_planted_difference_and_its_interval():
    rng = np.random.default_rng(0)
    n = 400
    base = (rng.random(n) < 0.55).astype(float)
    better = np.where(rng.random(n) < 0.25, 1.0, base)  # about +11 points, paired
    r = S.paired_bootstrap_mean(better, base, n_samples=2000, seed=1)
    d = better - base
    assert r.delta == pytest.approx(d.mean()) and r.score == pytest.approx(better.mean())
    assert r.p_value < 0.001 and r.ci_low > 0
    # the bootstrap interval is close to the normal approximation of the paired mean
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half, rel=0.12)
    assert r.ci_low < d.mean() < r.ci_high


def test_per_example_bootstrap_calls_no_difference_on_a_planted_tie():
    rng = np.random.default_rng(3)
    n = 300
    a = (rng.random(n) < 0.6).astype(float)
    b = a.copy()
    flip = rng.choice(n, size=20, replace=False)  # 10 gained, 10 lost: same mean
    b[flip[:10]] = 1 - b[flip[:10]]
    a2 = a.copy()
    a2[flip[10:]] = 1 - a2[flip[10:]]
    r = S.paired_bootstrap_mean(b, a2, seed=0)
    assert abs(r.delta) < 0.05 and r.p_value > 0.3 and r.ci_low < 0 < r.ci_high
    same = S.paired_bootstrap_mean(a, a, seed=0)
    assert same.delta == 0.0 and same.p_value == 1.0


def test_seed_pairings_combine_to_the_largest_p():
    rs = [S.PairedResult(1, 1, None, None, p) for p in (0.01, 0.2, 0.03)]
    assert S.combine_seed_pairings(rs) == 0.2
    assert S.combine_seed_pairings([None]) is None


# ---------------------------------------------------------------------------------------------
# power-law fit
# ---------------------------------------------------------------------------------------------
def test_power_law_recovers_known_parameters_of_a_falling_loss():
    x = np.geomspace(1e12, 3e14, 6)
    y = 1.7 + 900.0 * x ** -0.27
    f = S.fit_power_law(x, y)
    assert f is not None
    assert (f.E, f.A, f.alpha) == pytest.approx((1.7, 900.0, 0.27), rel=1e-4)
    assert f.r2 == pytest.approx(1.0, abs=1e-9) and f.sign == 1 and f.n_budgets == 6
    assert f(x) == pytest.approx(y, rel=1e-6)


def test_power_law_recovers_a_rising_metric_from_noisy_seeds():
    rng = np.random.default_rng(0)
    budgets = np.geomspace(1e13, 1e16, 5)
    x = np.repeat(budgets, 3)  # three seeds per budget
    true = 35.0 - 4e5 * x ** -0.35  # BLEU 23.7 -> 34.0
    y = true + rng.normal(0, 0.2, len(x))
    f = S.fit_power_law(x, y, higher_is_better=True)
    assert f is not None and f.sign == -1 and f.n_points == 15 and f.n_budgets == 5
    assert f.E == pytest.approx(35.0, abs=1.0) and f.alpha == pytest.approx(0.35, abs=0.05)
    # R^2 as defined: 1 - SSE / SST on the points
    pred = f(x)
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert f.r2 == pytest.approx(r2, abs=1e-9) and f.r2 > 0.98


def test_power_law_needs_four_budgets_and_an_improving_curve():
    x = [1e12, 2e12, 4e12]
    assert S.fit_power_law(x * 3, [3.0, 2.5, 2.2] * 3) is None  # 3 distinct budgets, 9 points
    rising_loss = [2.0, 2.2, 2.5, 2.9]
    assert S.fit_power_law([1e12, 2e12, 4e12, 8e12], rising_loss) is None  # gets worse: no A > 0
    assert S.fit_power_law([1e12, 2e12, 4e12, 8e12], rising_loss, higher_is_better=True) is not None


def test_power_law_flags_a_shape_it_cannot_pin_down():
    x = [1e12, 2e12, 4e12, 8e12, 16e12]
    good = S.fit_power_law(x, [2.0 + 50 * v ** -0.1 for v in x])
    assert good is not None and not good.at_bound
    step = S.fit_power_law(x, [2.5, 2.1, 2.2, 2.3, 2.4])  # one drop, then worse: alpha runs to its bound
    assert step is not None and step.at_bound and step.r2 < 0.5


# ---------------------------------------------------------------------------------------------
# winners and crossings
# ---------------------------------------------------------------------------------------------
def _seeds(scores: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    """Scores per entry as lists of seeds 0, 1, ... -> {seed id: score}."""
    return {e: dict(enumerate(v)) for e, v in scores.items()}


def test_winner_needs_significance():
    scores = _seeds({"enc-dec": [12.0, 12.4, 12.2], "decoder": [10.0, 10.3, 10.1]})
    w = S.pick_winner(1.0, scores, higher_is_better=True, p_values={"decoder": 0.004})
    assert w.entry == "enc-dec" and w.runner_up == "decoder" and w.gap == pytest.approx(2.0667, abs=1e-3)
    assert "p = 0.004" in w.reason
    tie = S.pick_winner(1.0, scores, higher_is_better=True, p_values={"decoder": 0.21})
    assert tie.entry is None and tie.leader == "enc-dec" and "not significant (p = 0.210)" in tie.reason


def test_winner_needs_the_gap_beyond_the_seed_spread():
    spread = _seeds({"a": [10.0, 14.0, 12.0], "b": [11.0, 12.5, 11.0]})  # a's mean ahead; sd of a = 2
    w = S.pick_winner(1.0, spread, higher_is_better=True, p_values={"b": 0.001})
    assert w.entry is None and "seed-to-seed spread" in w.reason
    flips = _seeds({"a": [10.0, 10.9, 11.0], "b": [10.5, 10.0, 10.1]})  # a ahead on average, not in seed 0
    w = S.pick_winner(1.0, flips, higher_is_better=True, p_values={"b": 0.001})
    assert w.entry is None


def test_winner_for_a_loss_is_the_lowest_and_one_seed_without_a_test_is_a_tie():
    scores = _seeds({"a": [3.1, 3.12], "b": [2.5, 2.52]})
    w = S.pick_winner(2.0, scores, higher_is_better=False)
    assert w.entry == "b" and "every seed" in w.reason
    one = S.pick_winner(2.0, _seeds({"a": [3.1], "b": [2.5]}), higher_is_better=False)
    assert one.entry is None and one.leader == "b"


def test_seeds_are_paired_by_id_when_one_entry_misses_a_seed():
    """b lacks seed 0. By seed id (1 with 1, 2 with 2) a is behind in seed 1: the order changes,
    a tie. Paired by position (a's seeds 0, 1 against b's 1, 2) a would look ahead in both and
    win; the gap (1.07) is above both seed spreads (0.58, 0.85) so only the pairing decides."""
    scores = {"a": {0: 12.0, 1: 11.0, 2: 12.0}, "b": {1: 11.2, 2: 10.0}}
    w = S.pick_winner(1.0, scores, higher_is_better=True, p_values={"b": 0.001})
    assert w.leader == "a" and w.runner_up == "b" and w.gap == pytest.approx(11.6667 - 10.6, abs=1e-3)
    assert w.entry is None and w.reason == "the order changes between seeds"
    # the same scores ahead in both common seeds: a wins (the pairing, not the missing seed, decided)
    ahead = {"a": {0: 12.0, 1: 11.0, 2: 12.0}, "b": {1: 10.8, 2: 10.0}}
    assert S.pick_winner(1.0, ahead, higher_is_better=True, p_values={"b": 0.001}).entry == "a"
    # one seed in common and no paired test: no seed criterion, a tie that says why
    few = S.pick_winner(1.0, {"a": {0: 12.0, 1: 12.1}, "b": {1: 10.0, 2: 10.1}}, higher_is_better=True)
    assert few.entry is None and few.reason == "fewer than two seeds in common and no paired test"
    with pytest.raises(TypeError, match="seed id"):
        S.pick_winner(1.0, {"a": [1.0, 2.0]}, higher_is_better=True)


def test_crossings_skip_ties_and_report_where_the_winner_changes():
    def w(b, e, lead=None):
        return S.Winner(b, e, lead or e or "x", None, 0.0, None, "")
    ws = [w(4.0, "enc-dec"), w(1.0, "decoder"), w(2.0, None, "decoder"), w(8.0, "enc-dec")]
    cs = S.crossings(ws)
    assert [(c.lo, c.hi, c.before, c.after) for c in cs] == [(1.0, 4.0, "decoder", "enc-dec")]
    leaders = [w(1.0, "decoder"), w(2.0, None, "enc-dec"), w(4.0, "enc-dec")]
    assert [(c.lo, c.hi) for c in S.crossings(leaders, significant_only=False)] == [(1.0, 2.0)]
    assert S.crossings([w(1.0, "a"), w(2.0, "a")]) == []


# ---------------------------------------------------------------------------------------------
# loss spikes
# ---------------------------------------------------------------------------------------------
def _curve(n: int = 200, seed: int = 0) -> tuple[list[int], list[float]]:
    rng = np.random.default_rng(seed)
    steps = list(range(0, 10 * n, 10))
    loss = [2.0 + 6.0 * math.exp(-i / 15) + rng.normal(0, 0.05) for i in range(n)]
    return steps, loss


def test_clean_curve_has_no_spikes():
    steps, loss = _curve()
    assert S.loss_spikes(steps, loss) == []


def test_planted_spike_is_found_at_its_step():
    steps, loss = _curve()
    loss[120] *= 2.5
    loss[150] = loss[151] = loss[152] = 4.0  # a three-point spike is one spike, at its peak
    loss[151] = 5.0
    got = S.loss_spikes(steps, loss)
    assert [g["step"] for g in got] == [1200.0, 1510.0]
    assert got[0]["ratio"] == pytest.approx(2.5, rel=0.05)


def test_diverged_loss_is_flagged():
    steps, loss = _curve(50)
    loss[40] = float("nan")
    assert [g["step"] for g in S.loss_spikes(steps, loss)] == [400.0]


def test_paired_bootstrap_calls_no_difference_between_different_outputs_of_equal_score():
    """Two systems whose outputs differ but score the same (both 0 BLEU: no n-gram matches):
    every resampled difference is 0, and sacrebleu's strict statistic then reports its smallest
    p; seen in a smoke compare, where 0.31 vs 0.31 BLEU was called significant."""
    refs = ["the cat sat on the mat", "a dog ran in the park", "birds fly high"] * 4
    systems = {"a": ["xx yy zz"] * 12, "b": ["qq ww ee"] * 12}
    res = S.paired_bootstrap_mt(systems, refs, "a", metrics=("bleu",), n_samples=200)
    assert res["b"]["bleu"].delta == 0.0
    assert res["b"]["bleu"].p_value == 1.0 and not res["b"]["bleu"].significant()
