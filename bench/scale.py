"""Issue 18's benchmarks: sbx against the hand-built Squid sandbox, and cost as pipelines grow.

- The no-op step through `sbx run` against the Squid sandbox (bench/squid.py), alternated
  in the same run.
- 1, 8, 16 and 24 independent no-op steps (each figure against one step), and a 64-step
  pipeline that must complete.
"""

from __future__ import annotations

import time

from bench import squid
from bench.measure import Bench, Result, median


def squid_overhead(bench: Bench) -> list[Result]:
    """`sbx run` of a no-op step against the hand-built Squid sandbox running `true`."""
    squid.ensure_image(bench.client, bench.log)
    boxed: list[float] = []
    hand: list[float] = []
    scripted: list[float] = []
    for rep in range(bench.sizes.reps):
        bench.log(f"against Squid {rep + 1}/{bench.sizes.reps}")
        hand.append(squid.squid_noop(bench.client, "sbx-step:bookworm"))
        scripted.append(squid.squid_script(bench.client, "sbx-step:bookworm", bench.work))
        began, ended, _, _ = bench.sbx_run(bench.noop("noop"), "noop-squid")
        boxed.append(ended - began)
    return [Result("1b. no-op step vs the hand-built Squid sandbox", "s", median(boxed),
                   median(hand), "ratio", target=1.2,
                   details={"samples": boxed, "baseline_samples": hand,
                            "note": "the baseline runs inside the bench process: no "
                                    "program start, against `sbx run`'s whole process"}),
            Result("1c. no-op step vs the same Squid sandbox as a docker CLI script", "s",
                   median(boxed), median(scripted), "ratio", target=1.2,
                   details={"samples": boxed, "baseline_samples": scripted})]


def scale(bench: Bench) -> list[Result]:
    """N independent no-op steps against one, for each N; then the big pipeline once."""
    counts = bench.sizes.scale
    timed: dict[int, list[float]] = {n: [] for n in (1, *counts)}
    for rep in range(bench.sizes.pipeline_reps):
        for n in timed:
            bench.log(f"scale {rep + 1}/{bench.sizes.pipeline_reps}: {n} independent steps")
            began, ended, _, _ = bench.sbx_run(bench.pipeline(f"scale{n}", n, False),
                                               f"scale{n}", timeout=1800)
            timed[n].append(ended - began)
    one = median(timed[1])
    results = [Result(f"2c. {n} independent steps vs 1", "s", median(timed[n]), one, "ratio",
                      target=3.0, details={"samples": timed[n], "baseline_samples": timed[1]})
               for n in counts if n > 1]
    big = bench.sizes.big
    bench.log(f"a pipeline of {big} independent steps")
    t0 = time.perf_counter()
    _, _, record, _ = bench.sbx_run(bench.pipeline(f"big{big}", big, False), f"big{big}",
                                    timeout=3600)
    took = time.perf_counter() - t0
    done = sum(st["status"] == "succeeded" for st in record["steps"].values())
    results.append(Result(f"2d. a {big}-step pipeline completes ({done} succeeded)", "s",
                          took, None, "absolute", target=big * 5.0,
                          details={"succeeded": done}))
    return results
