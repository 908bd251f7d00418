"""Search at archive size, through a real library on disk: index size (in memory as on disk) and load time, the
latency of `find`'s search (automatic threshold from a sample of the library's regions, exact
re-scoring from the shards), and what one more video costs (in place vs a full rebuild).

    python bench/archive.py --sizes 1e6 3e6 --index ivfpq --compare-layout --compare-whole-shards
    python bench/archive.py --sizes 5e7 --layout-only --dir /var/tmp

Each library holds synthetic regions (random unit 320-d descriptors, as Lite0's) in videos of
216,000 regions (an hour at 1 frame/s, 60 regions per 1080p frame with the default views).
Queries are stored regions with noise, so each has true matches.

--layout-only builds no real index: it gives the library's own layout for that size (lists,
code size, ids; faiss_index.ivf_nlist) random centroids and fills the lists evenly with random
codes, which costs minutes where a real build of 50M regions costs hours on a small CPU. A
search scans the same number of codes of the same size whatever their values, and the index
has the same size, so memory and latency are those of a real index of evenly filled lists
(real footage fills them unevenly). --compare-layout measures both at one size side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vidsearch.config import INDEX_FIELDS, Preset
from vidsearch.library import Library, region_ids
from vidsearch.library import faiss_index as fi
from vidsearch.library.shards import Shards
from vidsearch.search import search

DIM = 320
PER_VIDEO = 216_000
INFO = SimpleNamespace(width=1920, height=1080, fps=Fraction(24), duration=3600.0, frame_count=86400, codec="h264",
                       rotation=0, has_pts=True, start_tc=None)


def add_video(lib: Library, key: str, n: int, rng: np.random.Generator) -> int:
    desc = rng.standard_normal((n, DIM), dtype=np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    frames = (np.arange(n) // 60) * 24
    samples = np.unique(frames)
    path = lib.root.parent / f"{key}.mp4"
    path.touch()
    vid = lib.begin_video(path, key, INFO)
    lib.commit_video(vid, {"frame": frames, "time": frames / 24.0, "box": np.zeros((n, 4), np.float32),
                           "score": np.ones(n, np.float32), "desc": desc.astype(np.float16),
                           "sample_frame": samples, "sample_time": samples / 24.0}, True)
    return vid


def make_library(root: Path, n: int, preset: Preset, seed: int = 0) -> Library:
    lib = Library.open(root, create=True)
    rng = np.random.default_rng(seed)
    with lib.writer():
        lib.adopt_preset(preset)
        for i, start in enumerate(range(0, n, PER_VIDEO)):
            add_video(lib, f"v{i}", min(PER_VIDEO, n - start), rng)
            print(f"\r  shards {min(n, start + PER_VIDEO):,}/{n:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return lib


def layout_index(lib: Library, preset: Preset, seed: int = 1):
    """The library's layout for its size with random centroids and codes, saved as its cache."""
    import faiss

    videos = lib.videos()
    total = sum(v.regions for v in videos)
    kind = fi.index_kind(total, preset)
    assert kind in ("ivf", "ivfpq"), f"--layout-only is for IVF sizes, not {kind}"
    rng = np.random.default_rng(seed)
    index = faiss.index_factory(DIM, fi.ivf_factory(kind, DIM, total, preset), faiss.METRIC_INNER_PRODUCT)
    nlist = index.nlist
    cent = rng.standard_normal((nlist, DIM), dtype=np.float32)
    index.quantizer.add(cent / np.linalg.norm(cent, axis=1, keepdims=True))  # no k-means: it has its lists
    sample = rng.standard_normal((65536, DIM), dtype=np.float32)
    index.train(sample / np.linalg.norm(sample, axis=1, keepdims=True))  # the codes' encoder only
    ids = np.concatenate([region_ids(v.id, v.regions) for v in videos])
    lists = rng.integers(nlist, size=len(ids))
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(nlist + 1))
    invlists = index.invlists
    for li in range(nlist):
        part = ids[order[bounds[li]:bounds[li + 1]]]
        codes = rng.integers(0, 256, size=(len(part), invlists.code_size), dtype=np.uint8)
        invlists.add_entries(li, len(part), faiss.swig_ptr(part), faiss.swig_ptr(codes))
    index.ntotal = len(ids)
    wanted = fi.manifest_wanted(videos, None)
    counts = {v.id: v.regions for v in videos}
    fi.save_index(lib.index_dir, index, fi.IndexState(0, wanted["videos"], kind, trained_on=total),
                  fi.draw_background(lib.shards, None, counts))


def queries(lib: Library, count: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    videos = lib.videos()
    out = []
    for _ in range(count):
        v = videos[rng.integers(len(videos))]
        row = lib.shards.desc_rows(v.id, np.array([rng.integers(v.regions)]))[0].astype(np.float32)
        q = row + 0.04 * rng.standard_normal(DIM).astype(np.float32)  # cosine about 0.6 with its row
        out.append(q / np.linalg.norm(q))
    return out


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (needs root), so the next read comes from the disk."""
    import os

    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
        return True
    except OSError:
        return False


def time_search(lib: Library, index, qs: list[np.ndarray], scan_only: bool = False, cold: bool = False) -> dict:
    """find's search per query (or with scan_only FAISS's first scan alone, k = 1024), and how many
    candidates exact re-scoring read from the shards. cold: the page cache emptied before each
    query, as where the shards and index are larger than memory."""
    lat, hits, rescored = [], [], []
    exact = lib.exact_scores

    def counted(ids, q):
        rescored[-1] += len(ids)
        return exact(ids, q)

    lib.exact_scores = counted
    try:
        for q in qs:
            rescored.append(0)
            if cold and not drop_page_cache():
                raise SystemExit("--cold needs root (it writes /proc/sys/vm/drop_caches)")
            t0 = time.perf_counter()
            if scan_only:
                index.search(q[None], 1024)
            else:
                hits.append(search(lib, index, q, top=20).region_hits)
            lat.append(time.perf_counter() - t0)
    finally:
        del lib.exact_scores
    return {"median_ms": 1000 * float(np.median(lat)), "p90_ms": 1000 * float(np.percentile(lat, 90)),
            "region_hits": float(np.median(hits)) if hits else None, "rescored": float(np.median(rescored)),
            "scan_only": scan_only, "cold": cold}


def time_search_before(lib: Library, index, qs: list[np.ndarray], cold: bool, drawn: bool, read_around: bool) -> dict:
    """find's search as before either change: drawn, the background drawn from the shards for
    each query, as before it was stored beside the index (20,000 rows read per query);
    read_around: shard rows read with the kernel's read-around, as before desc_rows asked for
    random access."""
    from vidsearch.library import shards

    if drawn:
        lib.background = lambda: fi.draw_background(lib.shards, lib.index_whitening, lib.index_regions)
    real = shards.mmap
    if read_around:
        shards.mmap = SimpleNamespace()  # no MADV_RANDOM
    try:
        return time_search(lib, index, qs, cold=cold)
    finally:
        if drawn:
            del lib.background
        shards.mmap = real


def whole_shard_reads(self: Shards, video_id: int, rows: np.ndarray) -> np.ndarray:
    return self.load(video_id, ("desc",))["desc"][rows]  # what exact re-scoring did before desc_rows


def bench_size(root: Path, n: int, preset: Preset, layout: bool, compare_layout: bool, whole: bool,
               nq: int, scan_only: bool = False, before: bool = False, cold: bool = False) -> dict:
    import faiss

    t0 = time.perf_counter()
    lib = make_library(root, n, preset)
    row: dict = {"regions": n, "videos": len(lib.videos()), "shards_s": time.perf_counter() - t0,
                 "shards_gb": sum(p.stat().st_size for p in lib.shards.dir.glob("*.npz")) / 1e9}
    builds = {}
    if not layout:
        t0 = time.perf_counter()
        with lib.writer():
            lib.load_index(save=True)
        builds["real"] = time.perf_counter() - t0
    if layout or compare_layout:
        t0 = time.perf_counter()
        (root / "real-index").mkdir(exist_ok=True)
        if not layout:  # keep the real index aside, measure the layout one, then put it back
            for f in lib.index_dir.iterdir():
                f.rename(root / "real-index" / f.name)
        layout_index(lib, preset)
        builds["layout"] = time.perf_counter() - t0
    qs = queries(lib, nq)
    for name in sorted(builds):  # the layout index first: it is the one in place when both were built
        if name == "real" and "layout" in builds:
            shutil.rmtree(lib.index_dir)
            (root / "real-index").rename(lib.index_dir)
        manifest = fi.read_manifest(lib.index_dir)
        t0 = time.perf_counter()
        faiss.read_index(str(lib.index_dir / manifest["file"]))  # the whole index into memory
        load_full_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index, _ = lib.load_index()  # what find does: an IVF's lists mapped, not loaded
        load_s = time.perf_counter() - t0
        assert fi.read_manifest(lib.index_dir) == manifest, "the cache was not current"
        entry = {"build_s": builds[name], "index": f"{manifest['kind']} nlist {fi.ivf_nlist(n)}"
                 if manifest["kind"] != "flat" else "flat",
                 "index_mb": (lib.index_dir / manifest["file"]).stat().st_size / 1e6,
                 "load_full_s": load_full_s, "load_s": load_s,
                 **time_search(lib, index, qs, scan_only and name == "layout", cold and not scan_only)}
        if before and not scan_only:
            # the four ways in turn, twice, the second round reported: the first way is not the
            # only one to meet pages no search has read yet
            for _ in range(2):
                entry.update(time_search(lib, index, qs, cold=cold))
                for key, drawn, around in (("read_around", False, True), ("drawn", True, False), ("before", True, True)):
                    entry[key] = time_search_before(lib, index, qs, cold, drawn, around)
        if whole:
            real = Shards.desc_rows
            Shards.desc_rows = whole_shard_reads
            try:
                entry["whole_shards"] = time_search(lib, index, qs[: max(2, nq // 4)])
            finally:
                Shards.desc_rows = real
        row[name] = entry
        print(json.dumps({"regions": n, name: entry}), file=sys.stderr)
        del index
    if not layout:  # one more hour of footage: in place vs a full rebuild, each read and saved
        with lib.writer():
            vid = add_video(lib, "one-more", PER_VIDEO, np.random.default_rng(9))
            t0 = time.perf_counter()
            lib.load_index(save=True)
            row["add_in_place_s"] = time.perf_counter() - t0
            assert fi.read_manifest(lib.index_dir)["added_since"] == PER_VIDEO
            t0 = time.perf_counter()
            lib.remove_video(vid)
            lib.load_index(save=True)
            row["remove_in_place_s"] = time.perf_counter() - t0
            shutil.rmtree(lib.index_dir)  # the same addition with no cache: what every change cost before
            vid = add_video(lib, "one-more-again", PER_VIDEO, np.random.default_rng(9))
            t0 = time.perf_counter()
            lib.load_index(save=True)
            row["add_full_rebuild_s"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 3e6])
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "ivfpq"])
    ap.add_argument("--layout-only", action="store_true", help="no real index (see above)")
    ap.add_argument("--compare-layout", action="store_true", help="also the layout-only index, same library")
    ap.add_argument("--compare-whole-shards", action="store_true",
                    help="also re-score by reading whole shards, as before desc_rows")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--scan-only", action="store_true",
                    help="layout rows: time FAISS's scan alone (random codes make the candidates for re-scoring meaningless)")
    ap.add_argument("--compare-before", action="store_true",
                    help="also search with the shards' rows read with the kernel's read-around, with the background "
                         "sample drawn from the shards per query, and both (as before)")
    ap.add_argument("--cold", action="store_true", help="empty the page cache before each query (needs root)")
    ap.add_argument("--dir", help="where the libraries go (50M regions need about 35 GB)")
    ap.add_argument("--json")
    args = ap.parse_args()
    preset = Preset(name="archive", whiten=False, index_type=args.index)
    report = {"preset": {k: getattr(preset, k) for k in INDEX_FIELDS}, "per_video": PER_VIDEO, "sizes": []}
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="vidsearch-archive-", dir=args.dir))
        try:
            report["sizes"].append(bench_size(root / "lib", int(n), preset, args.layout_only, args.compare_layout,
                                              args.compare_whole_shards, args.queries, args.scan_only,
                                              args.compare_before, args.cold))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    lines = ["| regions | index | built as | build s | index MB | load s, whole / find's | search median ms | p90 ms | "
             "re-scored | median ms, whole-shard reads | median ms, with read-around / background drawn per query / both (before) | add 1 h in place s | full rebuild s | remove in place s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["sizes"]:
        for name in ("real", "layout"):
            if name in r:
                e = r[name]
                whole = f"{e['whole_shards']['median_ms']:.0f}" if "whole_shards" in e else "-"
                drawn = " / ".join(f"{e[k]['median_ms']:.0f}" for k in ("read_around", "drawn", "before")) \
                    if "before" in e else "-"
                extra = [f"{r[k]:.1f}" if k in r and name == "real" else "-"
                         for k in ("add_in_place_s", "add_full_rebuild_s", "remove_in_place_s")]
                lines.append(f"| {r['regions']:,} | {e['index']} | {name} | {e['build_s']:.0f} | {e['index_mb']:.0f} | "
                             f"{e.get('load_full_s', float('nan')):.2f} / {e['load_s']:.2f} | {e['median_ms']:.0f}"
                             f"{' (scan only)' if e.get('scan_only') else ''}{' (cold)' if e.get('cold') else ''} | {e['p90_ms']:.0f} | {e.get('rescored', '-')} | {whole} | {drawn} | "
                             + " | ".join(extra) + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
