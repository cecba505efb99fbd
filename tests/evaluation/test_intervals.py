"""Intervals over resampled splits: the split, not the run, is the unit."""

from __future__ import annotations

import pytest

from hf_cnn_ft.evaluation.intervals import mean_interval, paired_difference


def test_the_interval_is_a_t_interval_over_the_split_means():
    one_seed = mean_interval([0.8, 0.9, 0.7], [0, 1, 2])
    assert one_seed.mean == pytest.approx(0.8) and one_seed.std == pytest.approx(0.1)
    assert one_seed.high - one_seed.mean == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)  # t(0.975, 2 df)
    # Two seeds per split: the seeds are averaged first, so the interval does not narrow as if there were 6 draws.
    two_seeds = mean_interval([0.79, 0.81, 0.89, 0.91, 0.69, 0.71], [0, 0, 1, 1, 2, 2])
    assert (two_seeds.low, two_seeds.high) == pytest.approx((one_seed.low, one_seed.high))
    assert two_seeds.units == 3 and two_seeds.runs == 6
    # A single split: the runs (training seeds) are the units.
    assert mean_interval([0.7, 0.8], [0, 0]).units == 2


def test_a_paired_difference_is_narrower_than_either_side():
    splits = [0, 1, 2, 3, 4]
    recipe = [0.70, 0.85, 0.78, 0.92, 0.74]  # splits differ a lot in difficulty...
    probe = [0.68, 0.84, 0.75, 0.90, 0.73]  # ...and the probe follows them, a little lower
    difference = paired_difference(recipe, probe, splits)
    assert difference.mean == pytest.approx(0.018)
    assert 0 < difference.low < difference.high < 0.04
    assert mean_interval(recipe, splits).low < mean_interval(probe, splits).high  # unpaired: they overlap
