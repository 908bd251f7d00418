"""What the whole-frame pass of refinement (refine.py, ANYWHERE_PIXELS) costs `find`: the same
queries searched with it off and on, alternately, in one run (find's defaults for the device).

    python bench/refine_cost.py /tmp/find_small/lib-default /tmp/find_small/cup_64px_s1-query.png ... --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidsearch import api, refine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("queries", nargs="+", help="query images (crops)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    def run() -> float:
        start = time.perf_counter()
        for q in args.queries:
            api.find([q], [], args.library, device=args.device)
        return time.perf_counter() - start

    cap = refine.ANYWHERE_PIXELS
    run()  # warm: weights, index, decoders
    for _ in range(args.repeats):
        refine.ANYWHERE_PIXELS = 0
        near = run()
        refine.ANYWHERE_PIXELS = cap
        anywhere = run()
        print(f"{len(args.queries)} finds: near the region only {near:.1f} s, with the whole-frame pass "
              f"{anywhere:.1f} s ({anywhere / near:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
