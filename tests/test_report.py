"""The results page: cards, pictures with boxes, the player's source and seeks."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidsearch.errors import InputError
from vidsearch.render import BOX_COLOUR
from vidsearch.report import pick_hits, write_report
from vidsearch.sample import make_sample

from .helpers import run


def test_pick_hits_spreads_and_keeps_the_best():
    hits = [{"score": 0.1 * (i == 7)} for i in range(20)]
    picked = pick_hits(hits, 5)
    assert len(picked) == 5 and 7 in picked and picked[0] == 0 and picked[-1] == 19
    assert pick_hits(hits[:3], 5) == [0, 1, 2]
    assert pick_hits(hits, 1) == [7]


class Cards(HTMLParser):
    """Cards, their pictures and clickable hits, as a browser would see the markup."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "card" in a.get("class", ""):
            self.cards.append({**a, "imgs": [], "hits": []})
        elif self.cards and tag == "img":
            self.cards[-1]["imgs"].append(a["src"])
        elif self.cards and tag == "figure":
            self.cards[-1]["hits"].append(a)


def on_box_edges(img: np.ndarray, box, scale: float) -> float:
    """The fraction of pixels along the box's top and bottom edges (at `scale`) that have the
    box colour (JPEG blurs thin lines' colour, hence the tolerance)."""
    x1, y1, x2, y2 = (round(v * scale) for v in box)
    edges = np.concatenate([img[y1, x1 + 3 : x2 - 3], img[min(y2, img.shape[0] - 1), x1 + 3 : x2 - 3]])
    return float((np.abs(edges.astype(int) - BOX_COLOUR).max(-1) < 60).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    video = root / "take #2 & <b>.mp4"  # characters HTML and URLs must escape
    truth = make_sample(video, seconds=4.0, appear=(1.0, 3.0), size=(320, 180))
    return root, video, truth


def result_for(video: Path, truth, fps: str = "24") -> dict:
    hits = []
    for t in (1.0, 1.5, 2.0, 2.5):
        frame = int(t * 24)
        hits.append({"time": t, "frame": frame, "box": list(truth.box_at(frame)), "score": 0.5 + t / 10,
                     "kind": "region", "refined": t == 2.5})
    seg = {"video": str(video), "start": 1.0, "end": 3.0, "start_tc": "00:00:01:00", "end_tc": "00:00:03:00",
           "fps": fps, "width": 320, "height": 180, "duration": 4.0, "media_start_tc": None,
           "score": hits[-1]["score"], "best": hits[-1], "hits": hits}
    return {"query": {"images": [], "threshold": 0.3, "regions_scored": 100}, "library": "lib", "preset": "default",
            "segments": [seg]}


def test_page_has_a_card_per_segment_with_boxes_drawn(clip, tmp_path):
    root, video, truth = clip
    data = result_for(video, truth)
    data["segments"].append({**data["segments"][0], "video": str(root / "gone.mkv"), "match": 0.731})  # missing, not playable; re-ranked
    page = write_report(data, tmp_path / "page", thumbs=3)
    text = page.read_text()
    parser = Cards()
    parser.feed(text)
    first, second = parser.cards
    # the video is referenced relative to the page, with # & < escaped for a URL
    assert first["data-video"].endswith("take%20%232%20%26%20%3Cb%3E.mp4") and first["data-playable"] == "1"
    assert (page.parent / Path(re.sub("%..", lambda m: chr(int(m.group()[1:], 16)), first["data-video"]))).resolve() \
        == video.resolve()
    assert "<b>" not in text.replace("<b>.mp4", "")  # the name is escaped in the markup
    assert len(first["hits"]) == 3 and float(first["data-best"]) == 2.5  # 3 thumbnails, the best among them
    assert "2.500" in [h["data-t"] for h in first["hits"]]
    best = np.asarray(Image.open(page.parent / first["imgs"][0]))
    assert best.shape[1] == 320  # never enlarged
    boxes = {h["data-t"]: [float(v) for v in h["data-box"].split(",")] for h in first["hits"]}
    assert on_box_edges(best, boxes["2.500"], 1.0) > 0.8  # the best hit's box is drawn where it is
    for src, t in zip(first["imgs"][1:], sorted(boxes)):
        thumb = np.asarray(Image.open(page.parent / src))
        assert thumb.shape[1] == 220 and on_box_edges(thumb, boxes[t], 220 / 320) > 0.8
    assert second["imgs"] == [] and second["data-playable"] == "0"
    assert "cannot be read any more" in text
    assert text.count("match 0.731") == 1 and text.count(" · match ") == 1  # only the re-ranked one says its match
    assert "dropped" not in text


def test_page_says_how_many_segments_verification_dropped(clip, tmp_path):
    root, video, truth = clip
    data = result_for(video, truth)
    data["query"]["verify"] = {"cut": 0.5512, "background": 0.41, "sigma": 0.03, "best": 0.7, "checked": 5, "dropped": 3}
    text = write_report(data, tmp_path / "page").read_text()
    assert "1 segment in 1 video · threshold 0.300 · 3 of 5 re-ranked segments dropped: their match with the query " \
           "was below 0.55" in text


def test_page_replaces_its_own_old_pictures_only(clip, tmp_path):
    root, video, truth = clip
    out = tmp_path / "page"
    (out / "img").mkdir(parents=True)
    (out / "img" / "seg-009-best.jpg").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    write_report(result_for(video, truth), out, thumbs=2)
    assert not (out / "img" / "seg-009-best.jpg").exists() and (out / "notes.txt").read_text() == "mine"


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    bad = tmp_path / "hits.json"
    bad.write_text(json.dumps({"no": "segments"}))
    with pytest.raises(InputError, match="segments"):
        write_report(bad, tmp_path / "page")
    assert not (tmp_path / "page").exists()
    result = run("report", bad, "-o", tmp_path / "page", ok=False)
    assert result.exit_code != 0 and "segments" in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"segments": []}))
    result = run("report", good, "-o", tmp_path / "file", ok=False)
    assert result.exit_code != 0 and "is a file" in result.output and (tmp_path / "file").read_text() == "x"


def test_empty_result_still_makes_a_page(tmp_path):
    page = write_report({"segments": []}, tmp_path / "page")
    assert "No segment matched" in page.read_text()


def test_a_followed_hit_says_how_it_was_found(clip, tmp_path):
    root, video, truth = clip
    data = result_for(video, truth)
    data["segments"][0]["hits"][1].update(kind="followed", refined=True)
    text = write_report(data, tmp_path / "page", thumbs=4).read_text()
    assert text.count("found by following the match") == 1 and text.count("box refined") == 1
