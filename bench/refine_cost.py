"""What refinement costs `find`, two ways of it side by side, alternately, in one run (find's
defaults for the device):

- `--compare anywhere`: the whole-frame pass (refine.py, ANYWHERE_PIXELS) off and on;
- `--compare output`: feature maps by the full forward pass, which keeps every op's output
  (Graph.forward), against Graph.output, which lets each go once used;
- `--compare looks`: re-ranking with one look per segment (its best hit) and with RERANK_LOOKS;
- `--compare deferred`: the re-ranked hits' whole-frame pass run at re-ranking, on every
  re-ranked segment, against deferred to the segments verification keeps (the same results:
  the run says whether they were);
- `--compare colour`: boxes placed by the backbone's cells alone (refine.COLOUR = 0) and with
  their chroma (results differ: only boxes should);
- `--compare follow`: verified segments not followed (follow.py off) and followed with the
  device's default budget (results differ: more hits; the run counts them);
- `--compare beside`: boxes as their own region gives them, and a box whose size jumps from
  both its neighbours' matched again near theirs (rerank.Matcher.match_beside; only boxes
  differ).

    python bench/refine_cost.py /tmp/find_small/lib-default /tmp/find_small/cup_64px_s1-query.png ... --device cpu

A query is a crop, or a frame and its box as IMAGE@X,Y,W,H.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidsearch import api, follow, refine  # noqa: E402
from vidsearch.dasr.graph import Graph  # noqa: E402


def _full_forward(self: Graph, x, layer: int):
    return self.forward(x, upto=layer)[layer]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("queries", nargs="+", help="query images (crops)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare", choices=("anywhere", "output", "looks", "deferred", "colour", "follow", "beside"), default="anywhere")
    args = ap.parse_args()

    def run() -> tuple[float, list]:
        start, shown = time.perf_counter(), []
        for q in args.queries:
            image, _, box = q.partition("@")
            found = api.find([image], [box] if box else [], args.library, device=args.device)
            shown.append([(s.video.path, s.start, s.match, [(h.frame, [round(v, 2) for v in h.box]) for h in s.hits])
                          for s in found.result.segments])
        return time.perf_counter() - start, shown

    cap, output, looks, rerank = refine.ANYWHERE_PIXELS, Graph.output, refine.RERANK_LOOKS, api.rerank_segments
    colour = refine.COLOUR

    def at_once(*args, deferred=None, **kwargs):  # find as before: every re-ranked hit's whole-frame pass at once
        return rerank(*args, **kwargs)

    if args.compare == "deferred":
        names = ("whole-frame pass at re-ranking", "deferred to the kept segments")
        settings = (lambda: setattr(api, "rerank_segments", at_once), lambda: setattr(api, "rerank_segments", rerank))
    elif args.compare == "looks":
        names = ("one look a segment", f"{looks} looks")
        settings = (lambda: setattr(refine, "RERANK_LOOKS", 1), lambda: setattr(refine, "RERANK_LOOKS", looks))
    elif args.compare == "follow":
        budgets = dict(follow.FOLLOW_FRAMES)  # api reads this dict at each find
        names = ("not followed", f"followed ({budgets})")
        settings = (lambda: follow.FOLLOW_FRAMES.update({k: 0 for k in budgets}),
                    lambda: follow.FOLLOW_FRAMES.update(budgets))
    elif args.compare == "beside":
        same_size = refine.same_size
        names = ("each box from its own region", "sizes checked beside")
        settings = (lambda: setattr(refine, "same_size", lambda side, box: True),
                    lambda: setattr(refine, "same_size", same_size))
    elif args.compare == "colour":
        names = ("cells alone", f"with chroma (COLOUR {colour})")
        settings = (lambda: setattr(refine, "COLOUR", 0.0), lambda: setattr(refine, "COLOUR", colour))
    elif args.compare == "anywhere":
        names = ("near the region only", "with the whole-frame pass")
        settings = (lambda: setattr(refine, "ANYWHERE_PIXELS", 0), lambda: setattr(refine, "ANYWHERE_PIXELS", cap))
    else:
        names = ("every op's output kept", "each output let go once used")
        settings = (lambda: setattr(Graph, "output", _full_forward), lambda: setattr(Graph, "output", output))
    run()  # warm: weights, index, decoders
    for _ in range(args.repeats):
        times, shown = [], []
        for setting in settings:
            setting()
            t, out = run()
            times.append(t)
            shown.append(out)
        same = "the same segments, hits and boxes" if shown[0] == shown[1] else (
            "the same segments and hits, other boxes" if _unboxed(shown[0]) == _unboxed(shown[1]) else "results differ")
        hits = [sum(len(s[3]) for q in out for s in q) for out in shown]
        print(f"{len(args.queries)} finds: {names[0]} {times[0]:.1f} s, {names[1]} {times[1]:.1f} s "
              f"({times[1] / times[0]:.2f}x); {same}; {hits[0]} and {hits[1]} hits", flush=True)


def _unboxed(shown: list) -> list:
    return [[(path, start, match, [frame for frame, _ in hits]) for path, start, match, hits in q] for q in shown]


if __name__ == "__main__":
    main()
