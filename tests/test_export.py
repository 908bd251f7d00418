"""Exports: golden files, EDLs read back by pycmx and OpenTimelineIO, and an end-to-end check."""

import copy
import io
import json
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
import pycmx
import pytest
from hypothesis import given, settings, strategies as st

from vidsearch.errors import InputError
from vidsearch.export import FORMATS, export_result, load_result
from vidsearch.timecode import frames_to_tc, tc_to_frames

GOLDEN = Path(__file__).parent / "golden"
NTSC = Fraction(30000, 1001)


def result():
    return json.loads((GOLDEN / "input.json").read_text())


@pytest.mark.parametrize("fmt", FORMATS)
def test_golden_files(fmt, tmp_path):
    written = export_result(GOLDEN / "input.json", fmt, tmp_path / f"result.{fmt}")
    for path in written:
        assert path.read_text() == (GOLDEN / path.name).read_text(), path.name


def parse_edl(text):
    return pycmx.parse_cmx3600(io.StringIO(text))


def test_edl_read_back_by_pycmx_matches_the_json(tmp_path):
    data = result()
    (path,) = export_result(data, "edl", tmp_path / "a.edl")
    text = path.read_text()
    assert text.splitlines()[1] == "FCM: DROP FRAME"
    edl = parse_edl(text)
    events = list(edl.events)
    assert len(events) == len(data["segments"])
    record = tc_to_frames("01:00:00;00", NTSC)
    for ev, seg in zip(events, data["segments"]):
        (edit,) = ev.edits
        assert edit.clip_name == Path(seg["video"]).name
        assert len(edit.source) <= 8
        offset = tc_to_frames(seg["media_start_tc"], NTSC) if seg["media_start_tc"] else 0
        src_in = offset + round(seg["start"] * float(NTSC))
        src_out = offset + round(seg["end"] * float(NTSC))
        assert edit.source_in == frames_to_tc(src_in, NTSC, True)
        assert edit.source_out == frames_to_tc(src_out, NTSC, True)
        assert edit.record_in == frames_to_tc(record, NTSC, True)
        record += src_out - src_in
        assert edit.record_out == frames_to_tc(record, NTSC, True)
    assert events[0].edits[0].source != events[1].edits[0].source  # one reel per video


def test_edl_read_back_by_otio(tmp_path):
    (path,) = export_result(result(), "edl", tmp_path / "a.edl", drop_frame="no")
    timeline = otio.adapters.read_from_file(str(path), "cmx_3600", rate=30)
    clips = list(timeline.find_clips())
    assert [c.name for c in clips] == ["A001_C002.mov", "A001_C003.mov"]
    first = clips[0].source_range
    assert first.start_time.to_timecode(30, drop_frame=False) == frames_to_tc(107892 + 360, NTSC, False)
    assert first.duration.value == 209


def test_handles_widen_source_ranges_within_the_media(tmp_path):
    data = result()
    (path,) = export_result(data, "edl", tmp_path / "h.edl", handles=5.0)
    edits = [e.edits[0] for e in parse_edl(path.read_text()).events]
    assert edits[0].source_in == "01:00:07;00"  # 12 s - 5 s, after the 01:00:00;00 start
    assert edits[1].source_in == "00:00:00;00"  # 2.5 s - 5 s clips at the media's start


def test_more_than_999_events_are_split(tmp_path):
    data = result()
    seg = data["segments"][1]
    data["segments"] = [dict(seg, start=i * 5.0, end=i * 5.0 + 1, best=dict(seg["best"], time=i * 5.0))
                        for i in range(1200)]
    written = export_result(data, "edl", tmp_path / "many.edl")
    assert [p.name for p in written] == ["many.edl", "many_002.edl"]
    counts = [len(list(parse_edl(p.read_text()).events)) for p in written]
    assert counts == [999, 201]


def test_min_score_and_record_start(tmp_path):
    (path,) = export_result(result(), "edl", tmp_path / "m.edl", min_score=0.7, record_start="10:00:00:00")
    (edit,) = [e.edits[0] for e in parse_edl(path.read_text()).events]
    assert edit.record_in == "10:00:00;00"


def test_resolve_markers_one_file_per_video(tmp_path):
    written = export_result(result(), "resolve-markers", tmp_path / "m.edl")
    assert len(written) == 2
    text = written[0].read_text()
    assert "|C:ResolveColor" in text and "|M:vidsearch 1 score 0.830" in text and "|D:209" in text
    assert "01:00:12;00" in text  # record start + 12 s


def test_otio_and_fcpxml_carry_clips_and_markers(tmp_path):
    (o,) = export_result(result(), "otio", tmp_path / "a.otio")
    timeline = otio.adapters.read_from_file(str(o))
    clips = list(timeline.find_clips())
    assert len(clips) == 2 and list(clips[0].markers[0].metadata["vidsearch"]["box"]) == [100, 200, 300, 400]
    (x,) = export_result(result(), "fcpxml", tmp_path / "a.fcpxml")
    text = x.read_text()
    assert 'frameDuration="1001/30000s"' in text and text.count("<marker ") == 2


def test_csv_and_srt(tmp_path):
    (c,) = export_result(result(), "csv", tmp_path / "a.csv")
    rows = c.read_text().splitlines()
    assert rows[1].startswith("1,/media/Day 1/A001_C002.mov,01:00:12;00,01:00:18;29,12.000,19.000")
    (s,) = export_result(result(), "srt", tmp_path / "a.srt")
    assert "00:00:12,000 --> 00:00:19,000" in s.read_text()


def test_bad_inputs(tmp_path):
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(InputError, match="not JSON"):
        export_result(tmp_path / "x.json", "edl", tmp_path / "o.edl")
    with pytest.raises(InputError, match="unknown format"):
        export_result(GOLDEN / "input.json", "avid", tmp_path / "o.edl")
    with pytest.raises(InputError, match="not a timecode"):
        export_result(GOLDEN / "input.json", "edl", tmp_path / "o.edl", record_start="1h")
    with pytest.raises(InputError, match="segments"):
        load_result({"hits": []})
    assert not (tmp_path / "o.edl").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 7000), st.floats(0, 60), st.floats(-1, 1),
                          st.sampled_from(["24", "25", "24000/1001", "30000/1001", "60000/1001", "50"])),
                min_size=0, max_size=12),
       st.floats(0, 10), st.sampled_from(["auto", "no"]))
def test_fuzzed_results_export_and_read_back(segments, handles, drop):
    data = {"segments": [{"video": f"/v/clip{i % 3}.mp4", "start": s, "end": s + d, "fps": fps, "score": sc,
                          "duration": 7100.0, "width": 1920, "height": 1080, "media_start_tc": None,
                          "best": {"time": s, "frame": 0, "box": [1, 2, 3, 4], "score": sc}}
                         for i, (s, d, sc, fps) in enumerate(segments)]}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("edl", "csv", "srt", "resolve-markers"):
            for p in export_result(copy.deepcopy(data), fmt, Path(tmp) / f"x.{fmt}", handles=handles, drop_frame=drop):
                assert p.is_file() and (p.read_text() or fmt == "srt")
        edl = parse_edl((Path(tmp) / "x.edl").read_text())
        assert len([e for e in edl.events if e.edits]) == len(segments)


@pytest.mark.parametrize("fps,start_tc,drop", [("24000/1001", "10:00:00:00", False), ("30000/1001", "01:00:00;00", True),
                                               ("25", None, False)])
def test_premiere_xml_read_back_by_otio_has_a_marker_per_segment(fps, start_tc, drop, tmp_path):
    import xml.etree.ElementTree as ET

    from vidsearch.timecode import parse_rate, seconds_to_tc

    rate = parse_rate(fps)
    segs = []
    for k, (start, end, best) in enumerate([(12.0, 19.0, 15.5), (100.0, 101.0, 100.5), (3.0, 9.0, 8.25)]):
        segs.append({"video": f"/media/cam/A00{k}_C001.mov", "start": start, "end": end, "fps": fps, "width": 1920,
                     "height": 1080, "duration": 200.0, "media_start_tc": start_tc, "score": 0.9 - k / 10,
                     "best": {"time": best, "frame": round(best * float(rate)), "box": [10, 20, 30, 40],
                              "score": 0.9 - k / 10}, "hits": []})
    (path,) = export_result({"segments": segs}, "premiere-xml", tmp_path / "selects.xml")
    text = path.read_text()
    root = ET.fromstring(text[text.index("<xmeml"):])
    ntsc = "TRUE" if rate.denominator == 1001 else "FALSE"
    assert {r.findtext("ntsc") for r in root.iter("rate")} == {ntsc}  # Premiere needs <ntsc> on every rate
    assert {r.findtext("timebase") for r in root.iter("rate")} == {str(round(rate))}
    tcs = root.findall(".//file/timecode")
    assert len(tcs) == 3 and {t.findtext("displayformat") for t in tcs} == {"DF" if drop else "NDF"}
    timeline = otio.adapters.read_from_string(text, "fcp_xml")
    clips = list(timeline.find_clips())
    assert len(clips) == 3
    for clip, seg in zip(clips, segs):
        (marker,) = clip.markers
        assert marker.marked_range.duration.value == 1 and f"score {seg['score']:.3f}" in marker.name
        assert "box 10,20,30,40" in marker.metadata["fcp_xml"]["comment"]
        media_start = clip.media_reference.available_range.start_time
        at = otio.opentime.RationalTime(media_start.value + marker.marked_range.start_time.value, media_start.rate)
        # counted from the media's first frame, the marker lands on the best frame's source timecode
        assert otio.opentime.to_timecode(at, media_start.rate, drop) == \
            seconds_to_tc(seg["best"]["time"], rate, start_tc=start_tc)
        src_in = clip.source_range.start_time
        assert otio.opentime.to_timecode(src_in, src_in.rate, drop) == seconds_to_tc(seg["start"], rate, start_tc=start_tc)


def test_messages_with_brackets_are_printed_as_they_are(tmp_path):
    """Rich would take "[shots]" or "[b]" in a message for markup and drop it."""
    from .helpers import run

    hits = tmp_path / "hits.json"
    hits.write_text(json.dumps({"segments": []}))
    result = run("export", hits, "--format", "edl[b]", "-o", tmp_path / "x.edl", ok=False)
    assert result.exit_code != 0 and "'edl[b]'" in result.output
