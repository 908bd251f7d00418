"""The FAISS cache follows the catalog in place (library/faiss_index.py): new videos' regions are
added and removed ones taken out without retraining, until the IVF has grown past what it was
trained for; the result answers as a fresh build does."""

import json

import faiss
import numpy as np
import pytest

from vidsearch.config import Preset
from vidsearch.library import Library
from vidsearch.library.faiss_index import RETRAIN_GROWTH, sample_region_ids
from vidsearch.search import search

from .helpers import commit_random_video


def manifest(lib: Library) -> dict:
    return json.loads((lib.index_dir / "manifest.json").read_text())


def centroids(index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def all_ids(index) -> np.ndarray:
    """Every region id the index holds."""
    if faiss.try_extract_index_ivf(index) is None:
        return np.sort(faiss.vector_to_array(index.id_map))
    invlists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]
    return np.sort(np.concatenate(parts))


def expected_ids(lib: Library) -> np.ndarray:
    return np.sort(np.concatenate([(np.int64(v.id) << 32) | np.arange(v.regions) for v in lib.videos()]))


def hits(lib: Library, index, q: np.ndarray) -> list[tuple[int, int, float]]:
    result = search(lib, index, q, top=0, min_score=0.45)  # random regions score below 0.45
    return [(s.video.id, h.frame, round(h.score, 4)) for s in result.segments for h in s.hits]


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "flat"])
def test_the_cache_follows_the_catalog_in_place_and_answers_as_a_fresh_build(tmp_path, kind):
    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False, index_type=kind, pq_bytes=16, nprobe=1024))  # every list
        a, va = commit_random_video(lib, "a", n=3000, seed=1)
        b, vb = commit_random_video(lib, "b", n=2000, seed=2)
        index, _ = lib.load_index(save=True)
        first = manifest(lib)
        assert first["kind"] == kind and first["trained_on"] == (0 if kind == "flat" else 5000)
        before = centroids(index) if kind != "flat" else None

        c, vc = commit_random_video(lib, "c", n=1500, seed=3)
        lib.remove_video(a)
        index, _ = lib.load_index(save=True)
        state = manifest(lib)
        assert state["videos"] == {str(b): 2000, str(c): 1500} and state["added_since"] == 1500
        assert state["file"] != first["file"] and len(list(lib.index_dir.glob("*.faiss"))) == 1
        if kind != "flat":
            np.testing.assert_array_equal(centroids(index), before)  # updated, not retrained
        np.testing.assert_array_equal(all_ids(index), expected_ids(lib))
        assert index.ntotal == 3500

        reread, _ = lib.load_index()  # what a reader loads: the saved update
        np.testing.assert_array_equal(all_ids(reread), expected_ids(lib))
        queries = [vb[17], vc[1234], va[5]]  # in b, in c, in the removed a
        updated = [hits(lib, index, q) for q in queries]
        assert updated[0][0][:2] == (b, (17 // 20) * 24) and updated[0][0][2] == pytest.approx(1.0, abs=1e-3)
        assert updated[1][0][:2] == (c, (1234 // 20) * 24)
        assert all(vid != a for h in updated for vid, _, _ in h)
        if kind != "flat":  # a reader maps the lists from the file instead of loading them, same answers
            lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(reread).invlists)
            assert isinstance(lists, faiss.OnDiskInvertedLists)
            assert [hits(lib, reread, q) for q in queries] == updated

    for f in lib.index_dir.iterdir():  # a fresh build of the same videos answers the same
        f.unlink()
    fresh, _ = lib.load_index()
    assert [hits(lib, fresh, q) for q in queries] == updated


def test_an_ivf_is_retrained_once_it_has_grown_past_what_it_was_trained_for(tmp_path):
    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False, index_type="ivf"))
        commit_random_video(lib, "a", n=1000, seed=1)
        lib.load_index(save=True)
        added = 0
        for i in range(RETRAIN_GROWTH):
            commit_random_video(lib, f"more{i}", n=1000, seed=10 + i)
            lib.load_index(save=True)
            added += 1000
            assert (manifest(lib)["trained_on"], manifest(lib)["added_since"]) == (1000, added)
        commit_random_video(lib, "last", n=10, seed=99)  # past RETRAIN_GROWTH x 1000 added
        index, _ = lib.load_index(save=True)
    assert (manifest(lib)["trained_on"], manifest(lib)["added_since"]) == (4010, 0)
    assert faiss.extract_index_ivf(index).nlist == int(4 * np.sqrt(4010))  # lists sized for the library now


def test_a_cache_of_the_earlier_layout_is_searched_then_rebuilt_by_the_next_writer(tmp_path):
    """Caches written before this layout wrap IVF in IndexIDMap2 (whose remove_ids breaks IVF):
    still used as they are while current, rebuilt rather than updated in place."""
    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False, index_type="ivf"))
        _, va = commit_random_video(lib, "a", n=2000, seed=1)
        b, _ = commit_random_video(lib, "b", n=2000, seed=2)
        index, _ = lib.load_index(save=True)
    m = manifest(lib)
    inner = faiss.clone_index(faiss.extract_index_ivf(index))
    inner.reset()  # trained, empty
    old = faiss.IndexIDMap2(inner)
    for v in lib.videos():
        vec = lib.load_shard(v.id, ("desc",))["desc"].astype(np.float32)
        old.add_with_ids(vec, (np.int64(v.id) << 32) | np.arange(len(vec)))
    faiss.write_index(old, str(lib.index_dir / m["file"]))
    (lib.index_dir / "manifest.json").write_text(json.dumps({"whitening": 0, "videos": m["videos"], "file": m["file"]}))

    index, _ = lib.load_index()
    assert isinstance(index, faiss.IndexIDMap2)  # current: searched as it is
    assert hits(lib, index, va[3])[0][:2] == (1, 0)
    with lib.writer():
        lib.remove_video(b)
        index, _ = lib.load_index(save=True)
    assert not isinstance(index, faiss.IndexIDMap2) and manifest(lib)["layout"] == 2
    np.testing.assert_array_equal(all_ids(index), expected_ids(lib))


def test_sampled_region_ids_are_distinct_and_spread_over_the_videos():
    counts = {3: 10, 7: 1000, 9: 90}
    ids = sample_region_ids(counts, 500, seed=0)
    assert len(ids) == len(set(ids.tolist())) == 500
    vids, rows = ids >> 32, ids & 0xFFFFFFFF
    assert set(vids.tolist()) <= set(counts) and all(rows[vids == v].max() < n for v, n in counts.items() if (vids == v).any())
    assert 400 < (vids == 7).sum() < 500  # about 1000 / 1100 of them
    everything = sample_region_ids(counts, 5000)  # more than there are: all of them, once
    assert len(everything) == 1100 and len(set(everything.tolist())) == 1100


def test_exact_rescoring_reads_the_rows_it_needs_from_the_shards(tmp_path, monkeypatch):
    from vidsearch.library.shards import Shards

    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False))
        vid, vec = commit_random_video(lib, "a", n=500, dim=48, seed=4)
    rows = np.array([499, 3, 3, 250, 0])
    full = lib.load_shard(vid, ("desc",))["desc"]
    monkeypatch.setattr(Shards, "load", lambda *a, **k: pytest.fail("read the whole shard"))
    got = lib.shards.desc_rows(vid, rows)
    assert got.dtype == np.float16 and np.array_equal(got, full[rows])
    monkeypatch.undo()

    arrays = dict(np.load(lib.shards.path(vid)))  # a shard written compressed (not by vidsearch): read whole
    with open(lib.shards.path(vid), "wb") as f:
        np.savez_compressed(f, **arrays)
    assert np.array_equal(lib.shards.desc_rows(vid, rows), full[rows])
    lib.load_index()
    q = vec[250]
    np.testing.assert_allclose(lib.exact_scores((np.int64(vid) << 32) | rows, q), full[rows].astype(np.float32) @ q, rtol=1e-6)


def test_an_ivf_keeps_its_background_sample_beside_it_and_a_reader_reads_it_from_there(tmp_path, monkeypatch):
    """find's automatic threshold scores each query against a fixed uniform sample of regions; for
    an IVF their exact vectors are drawn from the shards once, when the index is saved, and stored
    beside it (random reads of 20,000 shard rows per query otherwise)."""
    from vidsearch.library import faiss_index
    from vidsearch.search import background_stats

    def backgrounds(lib: Library) -> list[str]:
        return sorted(p.name for p in lib.index_dir.glob("*.background.npy"))

    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False, index_type="ivf"))
        a, va = commit_random_video(lib, "a", n=14000, seed=1)
        b, vb = commit_random_video(lib, "b", n=9000, seed=2)
        lib.load_index(save=True)
    name = manifest(lib)["file"].removesuffix(".faiss") + ".background.npy"
    assert backgrounds(lib) == [name]

    # what the threshold scored before: the sampled regions' exact vectors, read from the shards
    ids = sample_region_ids({a: 14000, b: 9000}, 20000, seed=0)
    want = np.concatenate([va, vb])[np.where(ids >> 32 == a, ids & 0xFFFFFFFF, 14000 + (ids & 0xFFFFFFFF))]
    q = vb[77]
    s = want @ q
    med = float(np.median(s))

    reader = Library.open(tmp_path / "lib")
    monkeypatch.setattr(faiss_index, "draw_background", lambda *a: pytest.fail("drawn from the shards"))
    index, _ = reader.load_index()
    np.testing.assert_array_equal(reader.background(), want)
    got = background_stats(index, q, reader.background())
    assert got == pytest.approx((med, float(np.median(np.abs(s - med))) * 1.4826), rel=1e-5)
    assert search(reader, index, q).segments[0].best.score == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="background"):  # an IVF's codes are not its background
        background_stats(index, q)
    monkeypatch.undo()

    (lib.index_dir / name).write_bytes(b"not an array")  # a damaged one: drawn again, the same
    reader = Library.open(tmp_path / "lib")
    reader.load_index()
    np.testing.assert_array_equal(reader.background(), want)
    (lib.index_dir / name).unlink()  # a cache saved before backgrounds were: the next writer stores one
    with lib.writer():
        lib.load_index(save=True)
    np.testing.assert_array_equal(np.load(lib.index_dir / name), want)

    with lib.writer():  # the library changes: a new draw over today's videos, the old file goes
        c, vc = commit_random_video(lib, "c", n=3000, seed=3)
        lib.remove_video(a)
        lib.load_index(save=True)
    assert backgrounds(lib) == [manifest(lib)["file"].removesuffix(".faiss") + ".background.npy"] != [name]
    ids = sample_region_ids({b: 9000, c: 3000}, 20000, seed=0)
    assert len(ids) == 12000  # fewer regions than the sample: every one
    reader = Library.open(tmp_path / "lib")
    reader.load_index()
    np.testing.assert_array_equal(reader.background(), np.concatenate([vb, vc]))


def test_a_flat_index_is_its_own_background(tmp_path):
    lib = Library.open(tmp_path / "lib", create=True)
    with lib.writer():
        lib.adopt_preset(Preset(name="t", whiten=False, index_type="flat"))
        commit_random_video(lib, "a", n=500, seed=1)
        lib.load_index(save=True)
    assert lib.background() is None and not list(lib.index_dir.glob("*.background.npy"))
