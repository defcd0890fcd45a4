"""Plugins for the benchmarks: work that releases the GIL, as real plugins do.

``benchwork.ufuncs`` runs ``rounds`` rounds of numpy ufuncs (``sin``, ``multiply``,
``add``) over an array of ``size`` float64 values; numpy releases the GIL inside each
ufunc call, so jobs run in parallel threads scale with the cores.  The output holds a
checksum, the same for the same input.  :func:`calibrate` finds the rounds that take a
given time on this machine (``bench/reprocess.py`` asks for about 5 ms per job).
"""

import time

import numpy

from dahu.plugin import plugin_from_function

SIZE = 1 << 16  # 512 kB per array: the work stays in the cache, not memory-bound


def _work(size, rounds):
    values = numpy.linspace(0.0, 1.0, size)
    scratch = numpy.empty_like(values)
    total = numpy.zeros_like(values)
    for step in range(rounds):
        numpy.sin(values, out=scratch)
        numpy.multiply(scratch, step + 1.0, out=scratch)
        numpy.add(total, scratch, out=total)
    return float(total.sum())


def ufuncs(size=SIZE, rounds=10, x=None):
    """Run ``rounds`` rounds of numpy ufuncs over ``size`` values; their checksum
    (``x``, the job's number in the benchmark's inputs, is ignored)."""
    return {"checksum": _work(int(size), int(rounds)), "size": int(size), "rounds": int(rounds)}


plugin_from_function(ufuncs)


def calibrate(seconds, size=SIZE):
    """The rounds of :func:`ufuncs` that take about ``seconds`` here (best of 5)."""
    best = float("inf")
    probe = 20
    for _ in range(5):
        start = time.perf_counter()
        _work(size, probe)
        best = min(best, time.perf_counter() - start)
    return max(1, round(seconds * probe / best))
