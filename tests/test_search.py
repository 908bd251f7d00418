"""Search stages: exact retrieval above a threshold, GPU-style k limits, IVF with exact
re-ranking, frames -> segments."""

import faiss
import numpy as np
import pytest

from vidsearch.library import VideoRow, region_ids
from vidsearch.search import Hit, Segment, group_segments, retrieve

from .helpers import commit_random_video, commit_regions


def flat_index(vectors, video=1):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, region_ids(video, len(vectors)))
    return index


def ivf_index(vectors, video=1):
    inner = faiss.index_factory(vectors.shape[1], "IVF64,SQ8", faiss.METRIC_INNER_PRODUCT)
    inner.train(vectors)
    inner.nprobe = 64  # all lists: only the 8-bit codes differ from exact
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, region_ids(video, len(vectors)))
    return index


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20000, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = v[123] + 0.3 * rng.normal(size=32).astype(np.float32)
    return v, (q / np.linalg.norm(q)).astype(np.float32)


def test_retrieve_returns_exactly_the_regions_above_the_threshold(data):
    v, q = data
    index = flat_index(v)
    truth = np.sort((v @ q)[(v @ q) >= 0.25])[::-1]
    scores, ids = retrieve(index, q, 0.25)
    assert np.allclose(scores, truth, atol=1e-5) and len(ids) == len(truth) > 1024  # past the first k
    assert (ids >> 32 == 1).all() and ((ids & 0xFFFFFFFF) < len(v)).all()


def test_k_limit_falls_back_to_range_search(data):
    v, q = data
    index = flat_index(v)
    full, _ = retrieve(index, q, 0.3)
    limited, _ = retrieve(index, q, 0.3, max_k=256)  # as on a GPU index (k <= 2048)
    assert len(full) > 256 and np.allclose(np.sort(full), np.sort(limited), atol=1e-5)


def test_views_searched_together_find_what_each_view_finds_alone(data):
    v, q = data
    index = flat_index(v)
    views = np.stack([q, v[7], -q])  # past the first k; a few; none above the threshold
    for kw in ({}, {"max_k": 256}):
        scores, ids = retrieve(index, views, 0.25, **kw)
        best: dict[int, float] = {}
        for view in views:
            for s, i in zip(*retrieve(index, view, 0.25, **kw)):
                best[int(i)] = max(best.get(int(i), -1.0), float(s))
        assert len(ids) == len(best) > 1024 and list(scores) == sorted(scores, reverse=True)
        assert dict(zip(ids.tolist(), scores.tolist())) == pytest.approx(best)


def test_ivf_with_exact_rescoring_matches_flat(data):
    v, q = data
    index = ivf_index(v)

    def exact(ids, qq):
        return v[ids & 0xFFFFFFFF] @ qq

    s_exact, ids_exact = retrieve(flat_index(v), q, 0.4)
    s_ivf, ids_ivf = retrieve(index, q, 0.4, exact=exact)
    assert set(ids_ivf.tolist()) == set(ids_exact.tolist())
    assert np.allclose(s_ivf, s_exact, atol=1e-5)


def test_ivf_past_the_first_k_rescores_only_candidates_near_the_threshold(data):
    """Past the first k, the rest come from one range search down to the threshold less the
    margin: the same regions as exact search, and only those candidates read for re-scoring."""
    v, q = data
    index = ivf_index(v)
    read = []

    def exact(ids, qq):
        read.append(len(ids))
        return v[ids & 0xFFFFFFFF] @ qq

    s_exact, ids_exact = retrieve(flat_index(v), q, 0.25)
    s_ivf, ids_ivf = retrieve(index, q, 0.25, exact=exact)
    assert len(ids_exact) > 1024 and set(ids_ivf.tolist()) == set(ids_exact.tolist())
    assert np.allclose(s_ivf, s_exact, atol=1e-5)
    near = int(((v @ q) >= 0.25 - 0.02 - 0.01).sum())  # the margin, and the 8-bit codes' error
    assert len(read) == 1 and len(ids_exact) <= read[0] <= near  # one query, one read


def _video():
    return VideoRow(1, "/v.mp4", "k", 1, 0.0, 640, 360, "24", 20.0, 480, "h264", 0, True, None, 20, 0, "", "done", None)


def test_segments_bridge_one_missed_sample_and_end_at_the_next_sample():
    frames = np.arange(0, 480, 24)
    times = frames / 24.0
    hits = {f: Hit(f / 24, f, [0, 0, 1, 1], s) for f, s in [(48, 0.5), (72, 0.9), (120, 0.6), (240, 0.4)]}
    segs = group_segments(_video(), hits, frames, times, bridge=1)
    assert [(s.start, s.end) for s in segs] == [(2.0, 6.0), (10.0, 11.0)]
    assert segs[0].best.frame == 72 and segs[0].score == 0.9
    assert [(s.start, s.end) for s in group_segments(_video(), hits, frames, times, bridge=0)] == \
        [(2.0, 4.0), (5.0, 6.0), (10.0, 11.0)]
    last = group_segments(_video(), {456: Hit(19.0, 456, [0, 0, 1, 1], 0.5)}, frames, times)
    assert last[0].end == 20.0  # the last sample's segment runs to the end of the video


def test_library_switches_to_ivf_then_ivfpq_by_size_and_search_stays_exact(tmp_path):
    from vidsearch.config import Preset
    from vidsearch.library import Library
    from vidsearch.search import is_exact, search

    lib = Library.open(tmp_path / "lib", create=True)
    all_vecs = []
    with lib.writer():
        lib.adopt_preset(Preset(name="big", whiten=False, index_type="auto", ivf_min_regions=3000,
                                pq_min_regions=5000, pq_bytes=16))
        for v in range(3):
            all_vecs.append(commit_random_video(lib, f"key{v}", seed=v)[1])
            index, _ = lib.load_index(save=True)
            assert is_exact(index) == (v == 0)  # 2000 regions: flat; 4000 >= 3000: IVF-SQ8; 6000: IVF-PQ
            inner = faiss.downcast_index(index.index if is_exact(index) else index)
            assert type(inner).__name__ == ["IndexFlatIP", "IndexIVFScalarQuantizer", "IndexIVFPQ"][v]
    for vid, row in ((2, 77), (3, 1234)):  # PQ codes are coarse: the exact re-scoring finds it at 1.0
        q = all_vecs[vid - 1][row]
        for min_score in (0.5, None):  # None: the threshold from a sample of the library's regions
            result = search(lib, index, q, top=5, min_score=min_score)
            best = result.segments[0]
            assert best.video.id == vid and best.best.frame == (row // 20) * 24
            assert best.score == pytest.approx(1.0, abs=1e-3)


def test_rerank_orders_the_checked_segments_by_match_above_the_rest(monkeypatch):
    """The first `depth` segments are ordered by their match, the best of their first two hits'
    (by region score) matches, above the others; one whose video cannot be decoded stays after
    the matched ones, unmatched, and is named."""
    from vidsearch import rerank
    from vidsearch.refine import RERANK_LOOKS, Refined

    def video(i: int, path: str) -> VideoRow:
        return VideoRow(i, path, "k", 1, 0.0, 640, 360, "24", 20.0, 480, "h264", 0, True, None, 20, 0, "", "done", None)

    segs = [Segment(video(i, f"/v{i}.mp4"), i, i + 1, [Hit(float(i), 24 * i, [0, 0, 10, 10], score)])
            for i, score in enumerate((0.9, 0.8, 0.7, 0.6))]
    # /v1.mp4's best hit lies beside the object; its next hit (frame 30) finds it, its third is not looked at
    segs[1].hits += [Hit(1.5, 36, [0, 0, 10, 10], 0.7), Hit(1.25, 30, [0, 0, 10, 10], 0.75)]
    matches = {("/v0.mp4", 0): 0.2, ("/v1.mp4", 24): 0.3, ("/v1.mp4", 30): 0.7, ("/v1.mp4", 36): 0.95,
               ("/v3.mp4", 72): 0.99}  # /v2.mp4 cannot be decoded

    looked_for_boxes, looked_at = [], []

    class FakeMatcher:
        def __init__(self, engine, queries):
            self.failed = set()

        def match_all(self, pairs, tick=None, boxes=True):
            looked_for_boxes.append(boxes)
            out = []
            for seg, hit in pairs:
                looked_at.append((seg.video.path, hit.frame))
                if (seg.video.path, hit.frame) not in matches:
                    self.failed.add(seg.video.path)
                    out.append(None)
                else:
                    out.append(Refined((1.0, 2.0, 3.0, float(hit.frame)), matches[seg.video.path, hit.frame], 1.0))
            return out

        notes = rerank.Matcher.notes

    monkeypatch.setattr(rerank, "Matcher", FakeMatcher)
    calls = []
    ordered, notes = rerank.rerank_segments(None, [], segs, 3, refine=True,
                                            progress=lambda what, n: calls.append((what, n)) or (lambda k: None))
    assert RERANK_LOOKS == 2 and looked_at == [("/v0.mp4", 0), ("/v1.mp4", 24), ("/v1.mp4", 30), ("/v2.mp4", 48)]
    assert [s.video.path for s in ordered] == ["/v1.mp4", "/v0.mp4", "/v2.mp4", "/v3.mp4"]
    assert [s.match for s in ordered] == [0.7, 0.2, None, None]  # the 4th was not checked
    v1 = {h.frame: h for h in ordered[0].hits}
    assert v1[24].box == [1.0, 2.0, 3.0, 24.0] and v1[30].box == [1.0, 2.0, 3.0, 30.0]  # each its own match's box
    assert v1[24].refined and v1[30].refined and not v1[36].refined and v1[36].box == [0, 0, 10, 10]
    assert ordered[2].best.box == [0, 0, 10, 10] and not ordered[2].best.refined
    assert ordered[0].best.score == 0.8  # scores stay
    assert notes == ["not re-ranked in /v2.mp4: it cannot be decoded any more"] and calls == [("re-ranking", 4)]
    plain, _ = rerank.rerank_segments(None, [], [Segment(video(9, "/v0.mp4"), 0, 1, [Hit(0.0, 0, [0, 0, 5, 5], 0.5)])],
                                      3, refine=False)
    assert plain[0].match == 0.2 and plain[0].best.box == [0, 0, 5, 5]  # --no-refine: the match only
    assert looked_for_boxes == [True, False]  # the whole-frame pass only where boxes are shown


def test_rerank_defers_the_whole_frame_pass_to_the_segments_verification_keeps(monkeypatch):
    """find's re-ranking matches near each hit's region only and leaves the whole-frame pass
    (as costly) for after verification: only the kept segments' re-ranked hits get it, and a
    hit whose video cannot be decoded by then keeps its near box."""
    from vidsearch import rerank
    from vidsearch.refine import Refined

    def video(i: int, path: str) -> VideoRow:
        return VideoRow(i, path, "k", 1, 0.0, 640, 360, "24", 20.0, 480, "h264", 0, True, None, 20, 0, "", "done", None)

    segs = [Segment(video(i, f"/v{i}.mp4"), i, i + 1, [Hit(float(i), 24 * i, [0, 0, 10, 10], 0.9 - i / 10)])
            for i in range(3)]
    boxes_asked, moved = [], []

    class FakeMatcher:
        failed: set = set()

        def match_all(self, pairs, tick=None, boxes=True):
            boxes_asked.append(boxes)
            return [Refined((1.0, 1.0, 5.0, float(h.frame)), 0.5 + s.video.id / 10, 1.0, template=0) for s, h in pairs]

        def move_all(self, found, tick=None):
            moved.extend(s.video.path for s, _, _ in found)
            return [Refined((9.0, 9.0, 20.0, 20.0), n.score, n.zoom, moved=True) if s.video.path != "/v2.mp4" else n
                    for s, _, n in found]

        def notes(self, what, known=frozenset()):
            return []

    deferred: list = []
    ordered, _ = rerank.rerank_segments(None, [], segs, 3, refine=True, matcher=FakeMatcher(), deferred=deferred)
    assert boxes_asked == [False] and len(deferred) == 3
    assert [s.video.path for s in ordered] == ["/v2.mp4", "/v1.mp4", "/v0.mp4"]
    assert all(s.best.refined and s.best.box == [1.0, 1.0, 5.0, float(s.best.frame)] for s in ordered)
    kept = ordered[:2]  # verification dropped /v0.mp4
    rerank.place_deferred(FakeMatcher(), deferred, kept)
    assert sorted(moved) == ["/v1.mp4", "/v2.mp4"]
    assert kept[1].best.box == [9.0, 9.0, 20.0, 20.0]  # moved
    assert kept[0].best.box == [1.0, 1.0, 5.0, 48.0]  # its video failed: the near box stays
    assert ordered[2].best.box == [1.0, 1.0, 5.0, 0.0]  # dropped: never looked at again
    # segments merged since (snapped to one shot): a hit is placed where it lies now
    moved.clear()
    merged = Segment(kept[1].video, 0, 9, kept[1].hits + ordered[2].hits)
    rerank.place_deferred(FakeMatcher(), deferred, [merged])
    assert sorted(moved) == ["/v0.mp4", "/v1.mp4"]


def scored_regions(scores: dict[int, float], n_frames: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit region vectors (20 per sampled frame) that score uniformly within +-0.05 against the
    query e0, except one region of each sample in `scores`, which scores as given; and the query."""
    rng = np.random.default_rng(seed)
    dim, n = 64, 20 * n_frames
    cos = rng.uniform(-0.05, 0.05, n)
    for sample, c in scores.items():
        cos[20 * sample + 3] = c
    rest = rng.normal(size=(n, dim - 1))
    rest *= (np.sqrt(1 - cos**2) / np.linalg.norm(rest, axis=1))[:, None]
    q = np.zeros(dim, np.float32)
    q[0] = 1
    return np.concatenate([cos[:, None], rest], axis=1), q


def test_segments_whose_match_decides_are_taken_at_the_background_cut_the_rest_at_the_full_threshold(tmp_path):
    """Background regions score within +-0.05 (robust sigma about 0.037), so the background's
    cut is about 0.11 and the full threshold (6 sigmas always count) about 0.22. Hits at 0.16
    join the first `match_depth` segments only; past them, segments keep only the hits above the
    full threshold (regrouped), and one with none goes."""
    from vidsearch.config import Preset
    from vidsearch.library import Library
    from vidsearch.search import search

    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="flat", whiten=False))
        desc, q = scored_regions({10: 0.9, 11: 0.16, 12: 0.16, 50: 0.8, 51: 0.16, 80: 0.16, 81: 0.16,
                                  90: 0.7, 91: 0.16, 93: 0.6})
        commit_regions(lib, "scored", desc)
        index, _ = lib.load_index(save=True)

    def spans(result):
        return [[h.frame // 24 for h in sorted(s.hits, key=lambda h: h.frame)] for s in result.segments]

    plain = search(lib, index, q, top=10)
    assert spans(plain) == [[10], [50], [90], [93]] and plain.match_threshold is None
    assert 0.16 < plain.threshold < 0.6
    deep = search(lib, index, q, top=10, match_depth=2)
    assert spans(deep) == [[10, 11, 12], [50, 51], [90], [93]]  # 80-81 (only 0.16) goes; 90-93 regrouped
    assert 0.05 < deep.match_threshold < 0.16 and deep.threshold == pytest.approx(plain.threshold)
    assert deep.segments[1].end == 52.0  # the segment ends where the sample after its last hit begins
    # an explicit --min-score is one cut for all
    fixed = search(lib, index, q, top=10, min_score=0.1, match_depth=2)
    assert spans(fixed) == [[10, 11, 12], [50, 51], [90, 91, 93], [80, 81]] and fixed.match_threshold is None


def test_where_the_best_match_does_not_stand_out_the_note_names_the_score_to_try_and_its_frames(tmp_path):
    """One scene around the object: the regions score 0.3-0.6 against the query (median about
    0.45), the object's region 0.66 in frames 10-14, so median + 3 sigma lies above every match.
    The frames at the best alone are returned, and the note gives the --min-score that shows the frames
    whose best region scores at least 60 % of the best (0.39), with how many there are."""
    from vidsearch.config import Preset
    from vidsearch.library import Library
    from vidsearch.search import search

    rng = np.random.default_rng(4)
    dim, n = 64, 20 * 100
    cos = rng.uniform(0.3, 0.6, n)
    cos[20 * np.arange(50, 100)] = 0.2  # the second half of the video is another scene
    cos[20 * np.arange(50, 100)[:, None] + np.arange(1, 20)] = rng.uniform(0.0, 0.35, (50, 19))
    cos[20 * np.arange(10, 15) + 3] = 0.66
    rest = rng.normal(size=(n, dim - 1))
    rest *= (np.sqrt(1 - cos**2) / np.linalg.norm(rest, axis=1))[:, None]
    q = np.zeros(dim, np.float32)
    q[0] = 1
    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="flat", whiten=False))
        commit_regions(lib, "one-scene", np.concatenate([cos[:, None], rest], axis=1))
        index, _ = lib.load_index(save=True)
    result = search(lib, index, q, top=10)
    assert [[h.frame // 24 for h in s.hits] for s in result.segments] == [[10, 11, 12, 13, 14]]  # all at the best
    best_per_frame = cos.reshape(100, 20).max(1)
    frames = int((best_per_frame >= 0.39).sum())
    assert 50 <= frames < 100  # the first scene's frames, and those of the second that reach 0.39
    assert "--min-score 0.39 --no-verify shows the" in result.note
    assert f"the {frames} frame(s) whose best region scores at least 60% of the best" in result.note
    # what it suggests gives those frames
    shown = search(lib, index, q, top=100, min_score=0.39)
    assert sum(len(s.hits) for s in shown.segments) == frames


def test_refine_hits_places_re_ranked_hits_from_their_match_and_past_the_limit_alone(monkeypatch):
    """Re-ranked hits wait for their whole-frame pass (rerank_segments' deferred list): those
    refine_hits refines are matched beside their neighbours, starting from the match re-ranking
    found near their region; those past its limit get the whole-frame pass alone."""
    from vidsearch import rerank
    from vidsearch.refine import Refined

    def video(i: int) -> VideoRow:
        return VideoRow(i, f"/v{i}.mp4", "k", 1, 0.0, 640, 360, "24", 20.0, 480, "h264", 0, True, None, 20, 0, "",
                        "done", None)

    segs = [Segment(video(i), i, i + 1, [Hit(float(i), 24 * i, [1.0, 1.0, 5.0, 5.0], 0.9 - i / 10, refined=True)])
            for i in range(3)]
    deferred = [(s, s.best, Refined((1.0, 1.0, 5.0, 5.0), 0.7, 1.0, template=0)) for s in segs]
    seen = {}

    class FakeMatcher:
        failed: set = set()

        def match_beside(self, pairs, anchors, tick=None, near=None):
            seen["pairs"] = [s.video.path for s, _ in pairs]
            seen["near"] = sorted(n.score for n in (near or {}).values())
            seen["anchors"] = {k: v for k, v in anchors.items() if v}
            return [Refined((2.0, 2.0, 8.0, 8.0), 0.7, 1.0) for _ in pairs]

        def move_all(self, found, tick=None):
            seen["moved"] = [s.video.path for s, _, _ in found]
            return [Refined((9.0, 9.0, 20.0, 20.0), n.score, n.zoom, moved=True) for _, _, n in found]

        def notes(self, what, known=frozenset()):
            return []

    notes = rerank.refine_hits(None, [], segs, limit=1, matcher=FakeMatcher(), deferred=deferred)
    assert seen["pairs"] == ["/v0.mp4"] and seen["near"] == [0.7]
    assert seen["moved"] == ["/v1.mp4", "/v2.mp4"]
    # the placed hits are anchors for their segments' other hits (none here to refine)
    assert seen["anchors"] == {id(segs[1]): [(1.0, [9.0, 9.0, 20.0, 20.0])], id(segs[2]): [(2.0, [9.0, 9.0, 20.0, 20.0])]}
    assert [s.best.box for s in segs] == [[2.0, 2.0, 8.0, 8.0], [9.0, 9.0, 20.0, 20.0], [9.0, 9.0, 20.0, 20.0]]
    assert notes == ["boxes refined on the first 1 of 3 hit frames (each segment's best first); --refine-frames N for more"]


def test_beside_gives_the_nearest_items_before_and_after():
    from vidsearch.rerank import _beside

    items = [(0.0, "a"), (2.0, "b"), (5.0, "c")]
    assert _beside(items, 3.0) == ((2.0, "b"), (5.0, "c"))
    assert _beside(items, 2.0) == ((2.0, "b"), (5.0, "c"))  # at its time counts as before
    assert _beside(items, -1.0) == (None, (0.0, "a")) and _beside(items, 9.0) == ((5.0, "c"), None)
    assert _beside([], 1.0) == (None, None)
