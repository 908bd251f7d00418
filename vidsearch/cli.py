"""The vidsearch command line: thin wiring over vidsearch.api."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import api
from .errors import VidsearchError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Find one specific object in hours of video (DASR* regions + FAISS).")
out = Console()
err = Console(stderr=True)

LIBRARY = typer.Option(None, "--library", "-l", help="Library directory (default: $VIDSEARCH_LIBRARY or the per-user data dir).")
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda")
WEIGHTS = typer.Option(None, "--weights", help="Backbone weights file (.pth); default: the preset's own.")


def friendly(fn):
    """User errors become one line and a non-zero exit; Ctrl-C keeps what was committed."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VidsearchError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted: videos already committed are kept; run the same command again to resume")
            raise typer.Exit(130)

    return wrapper


def _fps_progress(console: Console):
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=console, transient=False)
    return progress


@app.command()
@friendly
def index(
    videos: List[Path] = typer.Argument(..., help="Video files to add."),
    library: Optional[Path] = LIBRARY,
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name or .toml (default: the library's, else 'default')."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frames sampled per second of video (default 1)."),
    every_n: Optional[int] = typer.Option(None, "--every-n", help="Sample every n-th frame instead."),
    device: str = DEVICE,
    batch: int = typer.Option(8, "--batch", min=1, help="Frames per forward pass."),
    decoder: str = typer.Option("decord", "--decoder", help="decord | pyav"),
    weights: Optional[str] = WEIGHTS,
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for another writer."),
    decode_workers: Optional[int] = typer.Option(None, "--decode-workers", help="Decoding threads (default: 1 on small machines, up to 8)."),
    proxy_of: List[Path] = typer.Option([], "--proxy-of", help="The videos are proxies: their camera originals are in this folder (found by name, e.g. clip.mov for clip_proxy.mp4); results point at the originals."),
    ray: bool = typer.Option(False, "--ray", help="Extract on Ray Data (pip install 'vidsearch[ray]'), on a Ray started on this machine unless --ray-address says which cluster."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Implies --ray: 'auto' (the cluster this machine is in) or a cluster address; the library must be on storage every node sees."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="With --ray: extract actors (default: one per GPU, else one)."),
    chunk_frames: Optional[int] = typer.Option(None, "--chunk-frames", help="With --ray: sampled frames per task for long videos (default: up to 256, by frame size)."),
) -> None:
    """Sample frames, extract DASR* regions, add them to the library (idempotent, resumable)."""
    reports = _index_with_progress([str(v) for v in videos], str(library) if library else None, preset, fps, every_n,
                                   device, batch, decoder, weights, wait, decode_workers, [str(d) for d in proxy_of],
                                   ray=ray_address or ("local" if ray else None), ray_workers=ray_workers,
                                   chunk_frames=chunk_frames)
    if any(r.status == "failed" for r in reports):
        raise typer.Exit(1)


def _index_with_progress(videos: list[str], library, preset, fps, every_n, device, batch, decoder, weights, wait,
                         decode_workers, proxy_of, **ray) -> list:
    """api.index_videos with a progress bar per video, then the table of what happened."""
    import time

    with _fps_progress(err) as progress:
        def start(path: Path, total: int):
            task = progress.add_task(path.name[:40], total=max(1, total), rate="")
            t0 = time.perf_counter()

            def tick(n: int) -> None:
                progress.advance(task, n)
                done = progress.tasks[task].completed
                progress.update(task, rate=f"{done / max(1e-6, time.perf_counter() - t0):.2f} frames/s")
            return tick

        reports = api.index_videos(videos, library, preset, fps, every_n, device, batch, decoder, weights, wait,
                                   progress=start, decode_workers=decode_workers, proxy_of=proxy_of, **ray)
    table = Table(title="index", show_lines=False)
    for col in ("video", "status", "frames", "regions", "seconds", "note"):
        table.add_column(col)
    for r in reports:
        colour = {"failed": "red", "unchanged": "dim", "duplicate": "dim"}.get(r.status, "green")
        table.add_row(Path(r.path).name, f"[{colour}]{r.status}[/]", str(r.frames), str(r.regions),
                      f"{r.seconds:.1f}" if r.seconds else "", r.note)
    err.print(table)
    for r in reports:
        if r.status == "failed":
            err.print(f"[bold red]error:[/] {escape(r.note)}", highlight=False, soft_wrap=True)
    return reports


@app.command()
@friendly
def watch(
    folders: List[Path] = typer.Argument(..., help="Folders to watch (and their subfolders)."),
    library: Optional[Path] = LIBRARY,
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset for a new library (default: 'default')."),
    settle: float = typer.Option(5.0, "--settle", help="Seconds a file must stay the same size before it is indexed."),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between looks at the folders."),
    remove_deleted: bool = typer.Option(False, "--remove-deleted", help="Also drop library videos under the folders that were deleted."),
    once: bool = typer.Option(False, "--once", help="Look once (two looks --settle apart), index what is ready, and stop."),
    device: str = DEVICE,
    batch: int = typer.Option(8, "--batch", min=1, help="Frames per forward pass."),
    proxy_of: List[Path] = typer.Option([], "--proxy-of", help="The watched videos are proxies of the originals in this folder."),
) -> None:
    """Index videos as they appear or change in folders, once they have stopped growing; Ctrl-C stops."""
    from .watch import watch as run_watch

    lib = str(library) if library else None
    run_watch([str(f) for f in folders],
              lambda paths: _index_with_progress(paths, lib, preset, None, None, device, batch, "decord", None, 60.0,
                                                 None, [str(d) for d in proxy_of]),
              lambda paths: [out.print(f"removed {p}") for p in api.remove(paths, lib, 60.0)],
              lambda: api.indexed_paths(lib),
              settle, interval, remove_deleted, once, log=lambda m: err.print(m, highlight=False))


@app.command()
@friendly
def find(
    query: List[Path] = typer.Option([], "--query", "-q", help="Query image: a crop, or a frame with --box."),
    box: List[str] = typer.Option([], "--box", help="X,Y,W,H in pixels of the query image (one per --query, or one for all)."),
    query_video: Optional[Path] = typer.Option(None, "--query-video", help="Take the query from a frame of this video."),
    at: Optional[str] = typer.Option(None, "--at", help="Time of that frame: seconds or HH:MM:SS:FF."),
    library: Optional[Path] = LIBRARY,
    top: int = typer.Option(20, "--top", "-n", help="Segments to return."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Cosine score a frame needs (default: automatic)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON and nothing else."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write overlay PNGs and a contact sheet here."),
    html_dir: Optional[Path] = typer.Option(None, "--html", help="Write a results page (index.html + img/) here."),
    export_format: Optional[str] = typer.Option(None, "--export", help="Also export: edl|resolve-markers|otio|fcpxml|premiere-xml|csv|json|srt"),
    export_out: Optional[Path] = typer.Option(None, "-o", "--output", help="File for --export."),
    previews: bool = typer.Option(True, "--previews/--no-previews", help="Terminal thumbnails of the best frames."),
    device: str = DEVICE,
    weights: Optional[str] = WEIGHTS,
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Look for each shown hit's box again with the query."),
    snap: str = typer.Option("shots", "--snap", help="shots: each segment is the whole shot(s) its hits lie in (where the video was indexed with shot detection); samples: from the first hit to the sample after the last."),
    refine_frames: Optional[int] = typer.Option(None, "--refine-frames", min=1, help="At most this many hit frames refined, best hits first (default: 200 on a GPU, 10 on the CPU, a few seconds each there)."),
    rerank: Optional[int] = typer.Option(None, "--rerank", min=0, help="Re-rank the first N segments by how well the query matches their two best hits, a finer check than the region score (default: 20; about half a second a hit on the CPU; 0: off)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Drop re-ranked segments whose match with the query lies nearer the library's background (the query matched at a few random places) than the best match."),
    follow: Optional[int] = typer.Option(None, "--follow", min=0, help="Follow each verified segment to the sampled frames beside it, adding those where the query matches as well as verification needs, at most N frames matched (default: 200 on a GPU, 40 on the CPU; 0: off)."),
) -> None:
    """Find where the query object appears: segments with timecodes, boxes and previews."""
    if export_format and not export_out:
        raise VidsearchError("--export needs -o FILE")
    with _fps_progress(err) as progress:
        def start(what: str, total: int):
            task = progress.add_task(what, total=total, rate="")
            return lambda n: progress.advance(task, n)

        result = api.find([str(q) for q in query], box, str(library) if library else None, top, min_score,
                          str(query_video) if query_video else None, at, device, weights, refine=refine,
                          refine_frames=refine_frames, progress=start, snap=snap, rerank=rerank,
                          verify=verify, follow=follow)
    data = result.to_dict()
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)  # [shots] is not markup
    frames = {}
    if out_dir or (previews and not as_json and out.is_terminal) or (previews and not as_json and out.color_system):
        frames = api.best_frames(result.result.segments)
    if out_dir:
        written = api.write_overlays(result.result.segments, frames, out_dir)
        err.print(f"wrote {len(written)} PNGs to {out_dir}")
    if html_dir:
        page = _write_report(data, html_dir)
        err.print(f"wrote the results page {page}")
    if export_format:
        from .export import export_result

        export_result(data, export_format, export_out)  # defaults: no handles, record start 01:00:00:00
        err.print(f"exported {len(data['segments'])} segments as {export_format} to {export_out}")
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    # previews crop the decoded frames, which are the indexed file's (a proxy's, not its original's)
    _print_segments(data, frames, previews, [seg.best.box for seg in result.result.segments])


def _print_segments(data: dict, frames: dict, previews: bool, frame_boxes: list) -> None:
    from .preview import half_blocks
    from .render import crop_box

    segs = data["segments"]
    if not segs:
        out.print(f"no match above score {data['query']['threshold']:.3f} in {data['query']['regions_scored']} regions; "
                  "try --min-score lower, another crop, or several --query views")
        return
    rows = []
    for s in segs:
        match = s.get("match")
        rows.append([str(len(rows) + 1), Path(s["video"]).name, f"{s['start_tc']}\n{s['end_tc']}",
                     f"{s['score']:.3f}\n" + ("-" if match is None else f"{match:.3f}"),
                     f"{s['best']['tc']}\n" + ",".join(f"{v:.0f}" for v in s["best"]["box"]), str(len(s["hits"]))])
    table = _segments_table(data, rows)
    if previews and frames:
        # as wide as the terminal leaves (at most 20 cells, the picture's 40 pixels), never under 8
        width = min(20, max(8, out.width - out.measure(table).maximum - 3))
        table = _segments_table(data, [row + [half_blocks(crop_box(frames[i], frame_boxes[i]), width) if i in frames else ""]
                                       for i, row in enumerate(rows)], preview=True)
    out.print(table)


def _segments_table(data: dict, rows: list, preview: bool = False) -> Table:
    table = Table(title=f"{len(rows)} segments · threshold {data['query']['threshold']:.3f}")
    # two lines per cell where it saves width: an 80-column terminal then keeps the preview
    for col in ("#", "video", "start\nend", "score\nmatch", "best hit\nx1,y1,x2,y2", "frames") + (("best frame",) if preview else ()):
        table.add_column(col, no_wrap=col != "video", min_width=10 if col == "video" else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
@friendly
def export(
    result: Path = typer.Argument(..., help="A result from vidsearch find --json."),
    fmt: str = typer.Option(..., "--format", "-f", help="edl | resolve-markers | otio | fcpxml | premiere-xml | csv | json | srt"),
    output: Path = typer.Option(..., "-o", "--output", help="File to write."),
    handles: float = typer.Option(0.0, "--handles", help="Seconds added before and after each segment (EDL/OTIO/FCPXML)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Leave out segments scoring less."),
    record_start: str = typer.Option("01:00:00:00", "--record-start", help="Record timecode of the first event."),
    drop_frame: str = typer.Option("auto", "--drop-frame", help="auto (DF at 29.97/59.94) | yes | no"),
) -> None:
    """Turn a find result into files Premiere, Resolve, Avid and Final Cut import (premiere-xml: FCP7 XML with a
    clip marker per segment, File > Import in Premiere)."""
    from .export import export_result

    for path in export_result(result, fmt, output, handles, min_score, record_start, drop_frame):
        out.print(f"wrote {path}")


def _write_report(data, out_dir: Path, thumbs: int = 8) -> Path:
    from .report import write_report

    with _fps_progress(err) as progress:
        def start(total: int):
            task = progress.add_task("results page", total=total, rate="")
            return lambda n: progress.advance(task, n)

        return write_report(data, out_dir, thumbs, progress=start)


@app.command()
@friendly
def report(
    result: Path = typer.Argument(..., help="A result from vidsearch find --json."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for index.html and its images."),
    thumbs: int = typer.Option(8, "--thumbs", min=1, help="Hit thumbnails per segment (spread over it, best included)."),
) -> None:
    """A results page: one card per segment (best frame and hits with their boxes) and a player
    that seeks to the hit you click. Offline; open index.html in a browser."""
    page = _write_report(result, output, thumbs)
    out.print(f"wrote {page}")


@app.command()
@friendly
def play(
    result: Path = typer.Argument(..., help="A result from vidsearch find --json."),
    n: int = typer.Argument(1, help="Segment number (1 = the best)."),
    start: str = typer.Option("start", "--from", help="start (of the segment) | best (its best hit)."),
    player: Optional[str] = typer.Option(None, "--player", help="mpv | ffplay (default: the first installed)."),
) -> None:
    """Play segment N of a result in mpv or ffplay, from its start."""
    from .play import play as run_player

    raise typer.Exit(run_player(result, n, start, player))


@app.command(name="eval")
@friendly
def eval_(
    data: Path = typer.Argument(..., help="Directory of sequences: <name>/img/*.jpg + <name>/groundtruth.txt."),
    method: List[str] = typer.Option([], "--method", "-m", help="dasr, dasr*, dasr-m, dasr-m*, mac, spoc, rmac, crow; suffixes :official :whiten :nowhiten :feat=LAYER :peak=LAYER"),
    preset: str = typer.Option("default", "--preset", "-p"),
    device: str = DEVICE,
    stride: int = typer.Option(4, "--stride", help="Reference frame step (5, 9, 13, ... for 4)."),
    queries: str = typer.Option("first", "--queries", help="first | first+middle"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="At most this many references per sequence (quick runs)."),
    batch: int = typer.Option(4, "--batch", min=1),
    protocol: str = typer.Option("tracking", "--protocol", help="tracking | cross-scene (the same object in other sequences)"),
    query_mode: str = typer.Option("frame", "--query-mode", help="frame (frame + box) | crop (the box cut out alone)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Keep reference regions here between runs (compare protocols without re-extracting)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON and nothing else."),
) -> None:
    """The Instance-160 protocol on tracking sequences: mAP and localisation per method,
    overall and per object-size bucket."""
    from .evaluate import evaluate

    with _fps_progress(err) as progress:
        def start(name: str, total: int):
            task = progress.add_task(name, total=total, rate="")
            return lambda n: progress.advance(task, n)

        result = evaluate(data, method or None, preset, device, stride, queries, max_frames, batch, progress=start,
                          protocol=protocol, query_mode=query_mode, cache_dir=cache)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    p = result["protocol"]
    table = Table(title=f"{result['data']} · {p['kind']} · {p['query_mode']} queries · {p['queries']} queries · "
                        f"{p['references']} references · {result['device']}")
    cols = ("map@50", "map@100", "map@all", "loc_recall@0.5", "miou", "regions_per_frame", "frames_per_s")
    table.add_column("method")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in result["methods"].items():
        table.add_row(name, *["-" if m[c] is None else f"{m[c]:.3f}" for c in cols])
    out.print(table)
    buckets = Table(title="per object size (target area / frame area)")
    bcols = ("map@50", "map@all", "loc_recall@0.5", "miou", "queries", "references")
    for c in ("method", "size") + bcols:
        buckets.add_column(c, justify="left" if c in ("method", "size") else "right")
    for name, m in result["methods"].items():
        for b, v in m["buckets"].items():
            buckets.add_row(name, b, *["-" if v[c] is None else (str(v[c]) if isinstance(v[c], int) else f"{v[c]:.3f}")
                                       for c in bcols])
    out.print(buckets)


@app.command()
@friendly
def status(library: Optional[Path] = LIBRARY, as_json: bool = typer.Option(False, "--json")) -> None:
    """Videos, frames, regions, preset, whitening and index state of a library."""
    s = api.status(str(library) if library else None)
    if as_json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        return
    out.print(f"library  {s['library']}")
    out.print(f"preset   {s['preset']} ({s['backbone']}, fingerprint {s['fingerprint']})")
    w = s["whitening"]
    out.print("whitening " + (f"v{w['version']}, learned on {w['fitted_on']} regions, {w['dims']} dims" if w
                              else "not learned yet (needs more regions; vectors are L2-normalised only)"))
    out.print(f"index    {'current' if s['index']['current'] else 'stale (brought up to date from the shards on next use)'}, "
              f"{s['index']['bytes'] / 1e6:.1f} MB")
    table = Table()
    for col in ("id", "video", "fps", "duration", "frames", "regions", "time", "note"):
        table.add_column(col)
    for v in s["videos"]:
        note = "; ".join(n for n in (v["note"], f"proxy of {v['original']}" if v["original"] else "") if n)
        table.add_row(str(v["id"]), v["path"], v["fps"], f"{v['duration']:.1f}s", str(v["frames"]), str(v["regions"]),
                      v["timestamps"], note)
    out.print(table)
    out.print(f"{len(s['videos'])} videos · {s['frames']} frames · {s['regions']} regions")
    for u in s["unreadable"]:
        err.print(f"[yellow]warning:[/] {u['path']}: shard unreadable ({u['why']}); it is skipped — re-index it", soft_wrap=True)


@app.command()
@friendly
def remove(videos: List[Path] = typer.Argument(...), library: Optional[Path] = LIBRARY,
           wait: float = typer.Option(0.0, "--wait", min=0)) -> None:
    """Drop videos' regions from the library."""
    for path in api.remove([str(v) for v in videos], str(library) if library else None, wait):
        out.print(f"removed {path}")


@app.command()
@friendly
def doctor() -> None:
    """Versions, device, decoders and weights; exits non-zero if the default preset cannot run."""
    rows, ok = api.doctor()
    table = Table(title="vidsearch doctor")
    for col in ("check", "detail", "ok"):
        table.add_column(col)
    for name, detail, good in rows:
        table.add_row(name, detail, "[green]yes[/]" if good else "[red]no[/]")
    out.print(table)
    if not ok:
        raise typer.Exit(1)


@app.command()
@friendly
def demo(
    workdir: Path = typer.Option(Path("demo-out"), "--dir", help="Where the sample video, library and overlays go."),
    preset: str = typer.Option("default", "--preset", "-p"),
    device: str = DEVICE,
) -> None:
    """Make a sample video from real photos, index it, and find the coffee cup in it."""
    from PIL import Image

    from .sample import make_sample, object_crop

    workdir.mkdir(parents=True, exist_ok=True)
    video = workdir / "sample.mp4"
    crop = workdir / "cup.png"
    err.print(f"1/3 writing {video}: 10 s of real photos, the coffee cup from 3.0 s to 7.0 s")
    make_sample(video, seconds=10.0, appear=(3.0, 7.0))
    Image.fromarray(object_crop("coffee")).save(crop)
    err.print(f"2/3 vidsearch index {video} --library {workdir / 'library'}")
    note = api.demo_library(workdir / "library", preset)
    if note:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    reports = _index_with_progress([str(video)], str(workdir / "library"), preset, None, None, device, 4, "decord", None,
                                   0.0, None, [])
    if any(r.status == "failed" for r in reports):
        raise typer.Exit(1)
    err.print(f"3/3 vidsearch find --query {crop} --library {workdir / 'library'} --out {workdir / 'hits'} "
              f"--html {workdir / 'page'}")
    find([crop], [], None, None, workdir / "library", 5, None, False, workdir / "hits", workdir / "page", None, None, True,
         device, None, refine=True, snap="shots", refine_frames=100, rerank=None, verify=True, follow=None)


def main() -> None:  # pragma: no cover
    app()
