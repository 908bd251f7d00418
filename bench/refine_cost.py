"""What refinement costs `find`, two ways of it side by side, alternately, in one run (find's
defaults for the device):

- `--compare anywhere`: the whole-frame pass (refine.py, ANYWHERE_PIXELS) off and on;
- `--compare output`: feature maps by the full forward pass, which keeps every op's output
  (Graph.forward), against Graph.output, which lets each go once used;
- `--compare looks`: re-ranking with one look per segment (its best hit) and with RERANK_LOOKS.

    python bench/refine_cost.py /tmp/find_small/lib-default /tmp/find_small/cup_64px_s1-query.png ... --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidsearch import api, refine  # noqa: E402
from vidsearch.dasr.graph import Graph  # noqa: E402


def _full_forward(self: Graph, x, layer: int):
    return self.forward(x, upto=layer)[layer]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("queries", nargs="+", help="query images (crops)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare", choices=("anywhere", "output", "looks"), default="anywhere")
    args = ap.parse_args()

    def run() -> float:
        start = time.perf_counter()
        for q in args.queries:
            api.find([q], [], args.library, device=args.device)
        return time.perf_counter() - start

    cap, output, looks = refine.ANYWHERE_PIXELS, Graph.output, refine.RERANK_LOOKS
    if args.compare == "looks":
        names = ("one look a segment", f"{looks} looks")
        settings = (lambda: setattr(refine, "RERANK_LOOKS", 1), lambda: setattr(refine, "RERANK_LOOKS", looks))
    elif args.compare == "anywhere":
        names = ("near the region only", "with the whole-frame pass")
        settings = (lambda: setattr(refine, "ANYWHERE_PIXELS", 0), lambda: setattr(refine, "ANYWHERE_PIXELS", cap))
    else:
        names = ("every op's output kept", "each output let go once used")
        settings = (lambda: setattr(Graph, "output", _full_forward), lambda: setattr(Graph, "output", output))
    run()  # warm: weights, index, decoders
    for _ in range(args.repeats):
        times = []
        for setting in settings:
            setting()
            times.append(run())
        print(f"{len(args.queries)} finds: {names[0]} {times[0]:.1f} s, {names[1]} {times[1]:.1f} s "
              f"({times[1] / times[0]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
