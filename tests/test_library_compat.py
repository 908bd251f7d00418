"""Libraries made before views existed (no tile levels, no whole-frame region, shards without
level/kind) keep working as they are; asking for today's preset on one is refused clearly."""

import json
import sqlite3

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vidsearch.cli import app
from vidsearch.library import Library
from vidsearch.sample import make_sample, object_crop

runner = CliRunner()
NEW_KEYS = ("tiles", "tile_overlap", "max_upscale", "view_nms_iou", "whole_frame", "prefilter")


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def old_library(tmp_path_factory):
    """A library as the first release wrote it: made with today's code, then its stored preset
    stripped of the keys views added and its shards of the fields they added."""
    root = tmp_path_factory.mktemp("compat")
    preset = root / "mine.toml"
    preset.write_text('backbone = "efficientnet_lite0"\npeaks = "local_max"\nnms_iou = "none"\nlong_side = 160\n'
                      'tiles = [1, 2]\nmax_upscale = 4.0\nwhole_frame = true\n')
    videos = []
    for i, appear in enumerate([(0.0, 2.0), (9.0, 9.0)]):
        videos.append(root / f"v{i}.mp4")
        make_sample(videos[-1], seconds=2.0, appear=appear, size=(320, 180))
    lib = root / "lib"
    assert cli("index", videos[0], "-l", lib, "-p", preset, "--device", "cpu").exit_code == 0
    db = sqlite3.connect(lib / "catalog.sqlite")
    stored = json.loads(db.execute("SELECT value FROM meta WHERE key='preset'").fetchone()[0])
    for k in NEW_KEYS:
        stored.pop(k, None)
    db.execute("UPDATE meta SET value=? WHERE key='preset'", (json.dumps(stored),))
    db.commit()
    db.close()
    for shard in (lib / "shards").glob("*.npz"):
        with np.load(shard) as z:
            arrays = {k: z[k] for k in z.files if k not in ("level", "kind")}
            keep = z["kind"] == 0  # the old code had no whole-frame regions
        arrays = {k: (v[keep] if len(v) == len(keep) and k not in ("sample_frame", "sample_time") else v)
                  for k, v in arrays.items()}
        np.savez(shard, **arrays)
        db = sqlite3.connect(lib / "catalog.sqlite")
        db.execute("UPDATE videos SET regions=?", (int(keep.sum()),))
        db.commit()
        db.close()
    crop = root / "cup.png"
    Image.fromarray(object_crop("coffee")).save(crop)
    return {"lib": lib, "videos": videos, "preset": preset, "crop": crop}


def test_old_library_reads_as_one_view_without_whole_frames(old_library):
    lib = Library.open(old_library["lib"])
    try:
        p = lib.preset()
        assert p.tiles == (1,) and not p.whole_frame  # what the old files mean
        shard = lib.load_shard(lib.videos()[0].id)
        assert (shard["level"] == 1).all() and (shard["kind"] == 0).all()
        assert lib.verify() == []
    finally:
        lib.close()


def test_old_library_keeps_searching_and_indexing(old_library):
    found = cli("find", "--query", old_library["crop"], "-l", old_library["lib"], "--json", "--device", "cpu",
                "--min-score", "0")
    assert found.exit_code == 0, found.output
    segments = json.loads(found.stdout)["segments"]
    assert segments and all(h["kind"] == "region" for s in segments for h in s["hits"])
    added = cli("index", old_library["videos"][1], "-l", old_library["lib"], "--device", "cpu")
    assert added.exit_code == 0 and "indexed" in added.output
    lib = Library.open(old_library["lib"])
    try:
        new = lib.load_shard(lib.videos()[-1].id)
        assert (new["level"] == 1).all() and (new["kind"] == 0).all()  # indexed the old way, consistently
    finally:
        lib.close()


def test_todays_preset_on_an_old_library_says_what_to_do(old_library):
    r = cli("index", old_library["videos"][1], "-l", old_library["lib"], "-p", old_library["preset"], "--device", "cpu")
    assert r.exit_code != 0
    assert "earlier version of preset 'mine'" in r.output and "new --library" in r.output
    assert len(r.output.strip().splitlines()) == 1
