"""Wall time of scoring HumanEval's 164 canonical solutions in the sandbox (one launch per problem).

    python launch/bench_codeeval.py                 # 164 problems, 2 workers
    python launch/bench_codeeval.py --workers 8 --repeats 3

Prints one JSON line: the wall time of ``harness.score`` (best of ``--repeats``), launches per second,
the CPU seconds (user + system) the sandboxed processes used in that repeat (steadier than wall time
on a busy machine), pass@1 (must be 1.0) and the isolation the sandbox could use on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from proxy_jax.codeeval import harness, problems, sandbox

    he = problems.load_humaneval()
    sandbox.isolation()  # probed once, outside the timing
    times, cpus, result = [], [], None
    for _ in range(args.repeats):
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        result = harness.score(he, harness.canonical_completions(he), k=(1,), workers=args.workers)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    best = min(times)
    print(json.dumps({"problems": len(he), "workers": args.workers, "wall_s": round(best, 2),
                      "launches_per_s": round(len(he) / best, 2),
                      "children_cpu_s": round(cpus[times.index(best)], 2), "pass@1": result["pass@k"]["pass@1"],
                      "cpus": os.cpu_count(), "isolation": {k: v for k, v in sandbox.isolation().items() if k != "prefix"}}))


if __name__ == "__main__":
    main()
