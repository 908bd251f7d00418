"""Exports an editor can import: CMX 3600 EDL, Resolve marker EDL, OTIO, FCPXML, Premiere's
FCP7 XML, CSV, JSON, SRT.

One OpenTimelineIO timeline is the export model (a selects reel: one clip per segment, a marker
at its best frame). EDL, OTIO and FCPXML are written from it by OTIO's adapters; what the CMX
adapter lacks (FCM line, record start, score/box comments, splitting past 999 events) is added
here. Timecode arithmetic stays in timecode.py / OpenTimelineIO.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
from opentimelineio import opentime

from .errors import InputError
from .timecode import drop_frame_for, format_rate, frames_to_tc, nominal_rate, parse_rate, tc_to_frames

FORMATS = ("edl", "resolve-markers", "otio", "fcpxml", "premiere-xml", "csv", "json", "srt")
MAX_EVENTS = 999
RESOLVE_COLOURS = ("Blue", "Cyan", "Green", "Yellow", "Red", "Pink", "Purple", "Fuchsia", "Rose", "Lavender",
                   "Sky", "Mint", "Lemon", "Sand", "Cocoa", "Cream")


# ----------------------------------------------------------------------------- input


def load_result(source: str | Path | dict) -> dict:
    """A `find --json` result, checked for what the exports need."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such result file (make one with vidsearch find --json > hits.json)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not JSON ({exc}): make it with vidsearch find --json > hits.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise InputError("the result has no 'segments' list: use the output of vidsearch find --json")
    for i, s in enumerate(data["segments"]):
        missing = {"video", "start", "end", "fps", "score", "best"} - set(s if isinstance(s, dict) else {})
        if missing:
            raise InputError(f"segment {i + 1} lacks {', '.join(sorted(missing))}: use the output of vidsearch find --json")
        try:
            if not (float(s["end"]) >= float(s["start"]) >= 0):
                raise ValueError
            parse_rate(s["fps"])
        except (ValueError, TypeError, InputError):
            raise InputError(f"segment {i + 1} has bad times or fps ({s.get('start')}..{s.get('end')} at {s.get('fps')})") from None
    return data


@dataclass
class Options:
    handles: float = 0.0
    min_score: float | None = None
    record_start: str = "01:00:00:00"
    drop_frame: str = "auto"
    title: str = "vidsearch selects"


def selected(data: dict, opts: Options) -> list[dict]:
    segs = data["segments"]
    if opts.min_score is not None:
        segs = [s for s in segs if float(s["score"]) >= opts.min_score]
    return segs


# ----------------------------------------------------------------------------- timeline model


def reel_names(videos: list[str]) -> dict[str, str]:
    """Up to 8 characters, A-Z 0-9 _, unique: what every NLE's EDL reader accepts."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for v in videos:
        if v in names:
            continue
        stem = re.sub(r"[^A-Z0-9]", "", Path(v).stem.upper()) or "REEL"
        # Camera names differ at the end (A001C002, A001C003): keep the head and the tail.
        base = stem if len(stem) <= 8 else stem[:4] + stem[-4:]
        name, n = base, 1
        while name in used:
            n += 1
            suffix = str(n)
            name = base[: 8 - len(suffix)] + suffix
        used.add(name)
        names[v] = name
    return names


def _rates(segs: list[dict], drop_mode: str) -> tuple[Fraction, bool]:
    """One timeline rate (the first segment's; others are converted by time) and DF or not."""
    rate = nominal_rate(parse_rate(segs[0]["fps"])) if segs else Fraction(24)
    return rate, drop_frame_for(rate, drop_mode)


def _frames(seconds: float, rate: Fraction) -> int:
    return int(round(seconds * float(rate)))


def _fcp_rate(rate: Fraction) -> dict:
    return {"timebase": str(round(rate)), "ntsc": "TRUE" if rate.denominator == 1001 else "FALSE"}


def build_timeline(data: dict, opts: Options, premiere: bool = False) -> otio.schema.Timeline:
    """The selects reel. With `premiere`, as FCP7 XML needs it for Premiere: the true NTSC rate
    (the XML says <ntsc>TRUE</ntsc> and DF or NDF separately), the media's timecode and reel on
    each file, and clip markers counted from the media's first frame, as Premiere reads them."""
    segs = selected(data, opts)
    rate, drop = _rates(segs, opts.drop_frame)
    # Non-drop timecode at 29.97 counts frames exactly as 30 fps labels do: build the timeline at
    # the integer rate then, so every writer prints NDF labels; DF keeps the true NTSC rate.
    tl_rate = float(rate) if drop or premiere else float(round(rate))
    reels = reel_names([s["video"] for s in segs])
    timeline = otio.schema.Timeline(name=opts.title)
    timeline.global_start_time = opentime.RationalTime(tc_to_frames(opts.record_start, rate, drop), tl_rate)
    if premiere:  # the sequence's own timecode, DF or not as the record timecode
        timeline.metadata["fcp_xml"] = {"timecode": {"rate": _fcp_rate(rate), "displayformat": "DF" if drop else "NDF"}}
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for i, s in enumerate(segs, 1):
        seg_rate = nominal_rate(parse_rate(s["fps"]))
        start_tc = s.get("media_start_tc")
        offset = tc_to_frames(start_tc, seg_rate) if start_tc else 0
        duration = float(s.get("duration") or s["end"])
        start = max(0.0, float(s["start"]) - opts.handles)
        end = min(max(duration, float(s["end"])), float(s["end"]) + opts.handles)
        first = offset + _frames(start, rate)
        length = max(1, _frames(end, rate) - _frames(start, rate))
        name = Path(s["video"]).name
        ref = otio.schema.ExternalReference(
            target_url=Path(s["video"]).as_uri() if Path(s["video"]).is_absolute() else s["video"],
            available_range=opentime.TimeRange(opentime.RationalTime(offset, tl_rate),
                                               opentime.RationalTime(max(length, _frames(duration, rate)), tl_rate)))
        clip = otio.schema.Clip(name=name, media_reference=ref, source_range=opentime.TimeRange(
            opentime.RationalTime(first, tl_rate), opentime.RationalTime(length, tl_rate)))
        best = s["best"]
        box = ",".join(f"{v:.0f}" for v in best["box"])
        clip.metadata["cmx_3600"] = {"reel": reels[s["video"]]}
        clip.metadata["vidsearch"] = {"rank": i, "score": s["score"], "best": best, "video": s["video"]}
        best_frame = offset + _frames(float(best["time"]), rate)
        best_frame = min(max(best_frame, first), first + length - 1)
        marker_meta = {"vidsearch": {"score": best["score"], "box": best["box"]}}
        if premiere:
            best_frame -= offset
            marker_meta["fcp_xml"] = {"comment": f"vidsearch rank {i}, score {float(best['score']):.3f}, best frame "
                                                 f"{best.get('frame', '')}, box {box} (x1,y1,x2,y2 px)"}
            ref.metadata["fcp_xml"] = {"timecode": {
                "rate": _fcp_rate(seg_rate),
                "displayformat": "DF" if drop_frame_for(seg_rate, opts.drop_frame) else "NDF",
                "reel": {"name": reels[s["video"]]}}}
        clip.markers.append(otio.schema.Marker(
            name=f"vidsearch {i} score {float(best['score']):.3f} box {box}",
            marked_range=opentime.TimeRange(opentime.RationalTime(best_frame, tl_rate), opentime.RationalTime(1, tl_rate)),
            color=otio.schema.MarkerColor.RED, metadata=marker_meta))
        track.append(clip)
    return timeline


# ----------------------------------------------------------------------------- EDL

_EVENT = re.compile(r"^(\d{3,6})(\s+\S+\s+\S+\s+\S+\s+)(\S+) (\S+) (\S+) (\S+)\s*$")


def edl_texts(data: dict, opts: Options) -> list[str]:
    """CMX 3600 text, one string per file of at most 999 events."""
    segs = selected(data, opts)
    rate, drop = _rates(segs, opts.drop_frame)
    record0 = tc_to_frames(opts.record_start, rate, drop)
    chunks = [segs[i : i + MAX_EVENTS] for i in range(0, len(segs), MAX_EVENTS)] or [[]]
    texts = []
    for part, chunk in enumerate(chunks, 1):
        title = opts.title + (f" part {part}" if len(chunks) > 1 else "")
        if not chunk:  # nothing matched: a valid EDL with no events
            texts.append(f"TITLE: {title}\nFCM: {'DROP FRAME' if drop else 'NON-DROP FRAME'}\n")
            continue
        sub = {**data, "segments": chunk}
        timeline = build_timeline(sub, Options(opts.handles, None, opts.record_start, opts.drop_frame, title))
        raw = otio.adapters.write_to_string(timeline, "cmx_3600", style="avid")
        clips = list(timeline.tracks[0])
        lines, event = [], 0
        record = record0
        for line in raw.splitlines():
            m = _EVENT.match(line)
            if line.startswith("TITLE:"):
                lines += [f"TITLE: {title}", f"FCM: {'DROP FRAME' if drop else 'NON-DROP FRAME'}"]
                continue
            if m:
                clip = clips[event]
                n = clip.source_range.duration.to_frames()
                rec_in, rec_out = frames_to_tc(record, rate, drop), frames_to_tc(record + n, rate, drop)
                record += n
                lines.append(f"{int(m.group(1)):03d}{m.group(2)}{m.group(3)} {m.group(4)} {rec_in} {rec_out}")
                meta = clip.metadata["vidsearch"]
                box = ",".join(f"{v:.0f}" for v in meta["best"]["box"])
                lines.append(f"* VIDSEARCH RANK {meta['rank']} SCORE {float(meta['score']):.3f} "
                             f"BEST {float(meta['best']['time']):.3f}S BOX {box}")
                event += 1
                continue
            lines.append(line)
        texts.append("\n".join(lines).rstrip() + "\n")
    return texts


def resolve_marker_texts(data: dict, opts: Options) -> dict[str, str]:
    """Resolve's 'Timeline Markers from EDL': one marker per segment at record start + media
    time, so it lands right on a timeline that holds the clip from its start. One file per video."""
    segs = selected(data, opts)
    by_video: dict[str, list[dict]] = {}
    for s in segs:
        by_video.setdefault(s["video"], []).append(s)
    out = {}
    for video, group in by_video.items():
        rate, drop = _rates(group, opts.drop_frame)
        record0 = tc_to_frames(opts.record_start, rate, drop)
        lines = [f"TITLE: vidsearch markers {Path(video).name}", f"FCM: {'DROP FRAME' if drop else 'NON-DROP FRAME'}", ""]
        for i, s in enumerate(sorted(group, key=lambda s: float(s["start"])), 1):
            first = record0 + _frames(float(s["start"]), rate)
            length = max(1, _frames(float(s["end"]), rate) - _frames(float(s["start"]), rate))
            tc_in, tc_out = frames_to_tc(first, rate, drop), frames_to_tc(first + 1, rate, drop)
            colour = RESOLVE_COLOURS[min(len(RESOLVE_COLOURS) - 1, int((1 - float(s["score"])) * 5))]
            box = ",".join(f"{v:.0f}" for v in s["best"]["box"])
            lines.append(f"{i:03d}  001      V     C        {tc_in} {tc_out} {tc_in} {tc_out}  ")
            lines.append(f" |C:ResolveColor{colour} |M:vidsearch {i} score {float(s['score']):.3f} box {box} |D:{length}")
            lines.append("")
        out[video] = "\n".join(lines)
    return out


def _edit_xml(text: str, root_tag: str, edit) -> str:
    """An adapter's XML with `edit(root)` applied to its root element; the prolog and DOCTYPE
    before the root are kept as written."""
    import xml.etree.ElementTree as ET

    head, _, body = text.partition(f"<{root_tag}")
    root = ET.fromstring(f"<{root_tag}" + body)
    edit(root)
    ET.indent(root, space="    ")
    return head + ET.tostring(root, encoding="unicode") + "\n"


def _complete_fcpxml(text: str, data: dict, opts: Options) -> str:
    """The FCPXML adapter leaves frameDuration empty for NTSC rates it cannot look up
    (int(29.97...) is 29): fill in the exact frame duration and the frame size."""
    segs = selected(data, opts)
    if not segs:
        return text
    rate, drop = _rates(segs, opts.drop_frame)

    def edit(root) -> None:
        for fmt in root.iter("format"):
            if not fmt.get("frameDuration"):
                d = 1 / rate
                fmt.set("frameDuration", f"{d.numerator}/{d.denominator}s")
            if segs[0].get("width") and segs[0].get("height"):
                fmt.set("width", str(segs[0]["width"]))
                fmt.set("height", str(segs[0]["height"]))
    return _edit_xml(text, "fcpxml", edit)


def premiere_xml_text(data: dict, opts: Options) -> str:
    """FCP7 XML (xmeml 4) through OTIO's fcp_xml adapter, the route by which Premiere imports
    clip markers; the sequence's empty <format> gets the frame size and rate."""
    import xml.etree.ElementTree as ET

    timeline = build_timeline(data, opts, premiere=True)
    text = otio.adapters.write_to_string(timeline, "fcp_xml")
    segs = selected(data, opts)
    if not segs or not (segs[0].get("width") and segs[0].get("height")):
        return text

    def edit(root) -> None:
        rate_e = root.find(".//sequence/rate")
        for fmt in root.iter("format"):
            if len(fmt):
                continue
            sample = ET.SubElement(fmt, "samplecharacteristics")
            if rate_e is not None:
                sample.append(ET.fromstring(ET.tostring(rate_e)))
            ET.SubElement(sample, "width").text = str(segs[0]["width"])
            ET.SubElement(sample, "height").text = str(segs[0]["height"])
    return _edit_xml(text, "xmeml", edit)


# ----------------------------------------------------------------------------- tables


def csv_text(data: dict, opts: Options) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "video", "start_tc", "end_tc", "start_s", "end_s", "best_s", "best_frame", "score",
                "x1", "y1", "x2", "y2", "nx1", "ny1", "nx2", "ny2", "fps"])
    for i, s in enumerate(selected(data, opts), 1):
        rate = nominal_rate(parse_rate(s["fps"]))
        drop = drop_frame_for(rate, opts.drop_frame)
        offset = tc_to_frames(s["media_start_tc"], rate) if s.get("media_start_tc") else 0
        box = [float(v) for v in s["best"]["box"]]
        width, height = float(s.get("width") or 0), float(s.get("height") or 0)
        norm = [box[0] / width, box[1] / height, box[2] / width, box[3] / height] if width and height else [""] * 4
        w.writerow([i, s["video"], frames_to_tc(offset + _frames(float(s["start"]), rate), rate, drop),
                    frames_to_tc(offset + _frames(float(s["end"]), rate), rate, drop),
                    f"{float(s['start']):.3f}", f"{float(s['end']):.3f}", f"{float(s['best']['time']):.3f}",
                    s["best"].get("frame", ""), f"{float(s['score']):.4f}", *[f"{v:.1f}" for v in box],
                    *[f"{v:.4f}" if v != "" else "" for v in norm], format_rate(parse_rate(s["fps"]))])
    return buf.getvalue()


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_text(data: dict, opts: Options) -> str:
    cues = []
    for i, s in enumerate(sorted(selected(data, opts), key=lambda s: (s["video"], float(s["start"]))), 1):
        cues.append(f"{i}\n{_srt_time(float(s['start']))} --> {_srt_time(float(s['end']))}\n"
                    f"{Path(s['video']).name}: match {float(s['score']):.2f}\n")
    return "\n".join(cues)


# ----------------------------------------------------------------------------- writing


def export_result(source: str | Path | dict, fmt: str, output: str | Path, handles: float = 0.0,
                  min_score: float | None = None, record_start: str = "01:00:00:00",
                  drop_frame: str = "auto") -> list[Path]:
    """Write `fmt` to `output` (several files for EDLs past 999 events or markers of several
    videos); returns the paths written."""
    from .library import atomic_path

    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if handles < 0:
        raise InputError(f"--handles must be >= 0 seconds, got {handles}")
    data = load_result(source)
    opts = Options(handles, min_score, record_start, drop_frame)
    if data["segments"]:  # validate early, before anything is written
        rate = nominal_rate(parse_rate(data["segments"][0]["fps"]))
        tc_to_frames(record_start, rate, drop_frame_for(rate, drop_frame))
    output = Path(output)
    if output.is_dir():
        raise InputError(f"-o {output} is a directory: give a file name")
    files: dict[Path, str | bytes] = {}
    if fmt == "edl":
        texts = edl_texts(data, opts)
        for i, t in enumerate(texts, 1):
            files[output if i == 1 else output.with_name(f"{output.stem}_{i:03d}{output.suffix}")] = t
    elif fmt == "resolve-markers":
        texts = resolve_marker_texts(data, opts)
        for i, (video, t) in enumerate(texts.items(), 1):
            files[output if i == 1 else output.with_name(f"{output.stem}_{Path(video).stem}{output.suffix}")] = t
        if not texts:
            files[output] = "TITLE: vidsearch markers\nFCM: NON-DROP FRAME\n"
    elif fmt in ("otio", "fcpxml"):
        timeline = build_timeline(data, opts)
        text = otio.adapters.write_to_string(timeline, "otio_json" if fmt == "otio" else "fcpx_xml")
        files[output] = text if fmt == "otio" else _complete_fcpxml(text, data, opts)
    elif fmt == "premiere-xml":
        files[output] = premiere_xml_text(data, opts)
    elif fmt == "csv":
        files[output] = csv_text(data, opts)
    elif fmt == "srt":
        files[output] = srt_text(data, opts)
    else:
        files[output] = json.dumps({**data, "segments": selected(data, opts)}, indent=2) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        with atomic_path(path) as tmp:
            tmp.write_text(content) if isinstance(content, str) else tmp.write_bytes(content)
    return list(files)
