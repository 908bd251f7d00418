"""Views of one query searched in one batch (search.retrieve) against one by one, side by side.

    python bench/multiview_search.py --regions 2000000 --views 10

A random flat index of unit vectors (Lite0's 320 dimensions) and views near some of them; the
threshold keeps a few thousand to tens of thousands of regions, as `find`'s loose cut does."""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from vidsearch.search import retrieve


def one_by_one(index, q: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
    best: dict[int, float] = {}
    for v in q:
        for s, i in zip(*retrieve(index, v, cut)):
            best[int(i)] = max(best.get(int(i), -1.0), float(s))
    ids = np.array(sorted(best, key=lambda i: -best[i]), dtype=np.int64)
    return np.array([best[i] for i in ids.tolist()], np.float32), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=2_000_000)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--cuts", type=float, nargs="+", default=[0.3, 0.15])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.regions, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    q = x[rng.choice(len(x), args.views)] + 0.5 * rng.normal(size=(args.views, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print("| regions | views | cut | regions kept (batch / one by one) | batch ms | one by one ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for cut in args.cuts:
        t = time.perf_counter()
        s1, _ = one_by_one(index, q, cut)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        s0, _ = retrieve(index, q, cut)
        t0 = time.perf_counter() - t
        print(f"| {args.regions} | {args.views} | {cut} | {len(s0)} / {len(s1)} | {t0 * 1e3:.0f} | {t1 * 1e3:.0f} | {t1 / t0:.2f}x |")


if __name__ == "__main__":
    main()
