"""Mean, spread and a 95% interval for figures measured over several splits and training seeds.

Runs on the same split share its test images, so they are not independent draws: the interval is a
Student t interval over the per-split means (over the runs themselves when there is a single split).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float  # over every run
    low: float
    high: float
    runs: int
    units: int  # what the interval counts: splits, or runs on a single split

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def mean_interval(values: list[float], splits: list[int], confidence: float = 0.95) -> Interval:
    """`values[i]` was measured on split `splits[i]`; the interval is over the split means."""
    if not values or len(values) != len(splits):
        raise ValueError("one split per value, and at least one value")
    by_split: dict[int, list[float]] = defaultdict(list)
    for value, split in zip(values, splits, strict=True):
        by_split[split].append(value)
    units = [statistics.fmean(group) for group in by_split.values()] if len(by_split) > 1 else list(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if len(units) < 2:
        return Interval(mean, std, mean, mean, len(values), len(units))
    half = stats.t.ppf(0.5 + confidence / 2, len(units) - 1) * statistics.stdev(units) / math.sqrt(len(units))
    centre = statistics.fmean(units)
    return Interval(mean, std, centre - half, centre + half, len(values), len(units))


def paired_difference(
    values: list[float], baseline: list[float], splits: list[int], confidence: float = 0.95
) -> Interval:
    """The interval of `values - baseline`, run by run on the same split and seed: much narrower than
    two separate intervals, since both sides share each split's easy and hard test images."""
    return mean_interval([a - b for a, b in zip(values, baseline, strict=True)], splits, confidence)
