"""The benchmark reports' percentile is the nearest rank (a p99 of 100 latencies is the 99th, not the
slowest one)."""
from bench.stats import pct


def test_the_percentile_is_the_nearest_rank():
    hundred = [float(i) for i in range(100, 0, -1)]  # unsorted on purpose
    assert pct(hundred, 99) == 99 and pct(hundred, 100) == 100 and pct(hundred, 50) == 50
    assert pct([float(i) for i in range(1, 501)], 99) == 495
    assert pct([float(i) for i in range(1, 51)], 50) == 25
    assert pct([7.0], 99) == 7.0


def test_no_values_give_no_percentile():
    assert pct([], 50) != pct([], 50)  # NaN
