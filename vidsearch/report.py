"""The results page: one self-contained, offline HTML file with images beside it.

One card per segment: the best frame with its box, a strip of hit thumbnails with their boxes,
timecodes and scores. One HTML5 <video> plays the source and seeks to a hit when its card or
thumbnail is clicked (for the formats a browser plays; for others the card says how to play it
with `vidsearch play`). Nothing is fetched from the network: the CSS and script are inline, and
the video is referenced by its path relative to the page, so the page keeps working when the
footage and the page move together.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from .errors import InputError, VidsearchError
from .render import BOX_COLOUR, draw_thumbnail
from .video import FrameGrabber

# Containers a browser's <video> generally plays (codec permitting; the page checks at run time).
PLAYABLE = {".mp4", ".m4v", ".mov", ".webm", ".ogv", ".ogg"}
BEST_WIDTH = 960
THUMB_WIDTH = 220


def pick_hits(hits: list[dict], limit: int) -> list[int]:
    """Indices of at most `limit` hits spread evenly over the segment, always with the best."""
    if len(hits) <= limit:
        return list(range(len(hits)))
    best = max(range(len(hits)), key=lambda i: float(hits[i]["score"]))
    # `limit` distinct evenly spread indices (there are more hits than that); the one nearest
    # the best hit gives way to it
    spread = sorted({int(round(v)) for v in np.linspace(0, len(hits) - 1, limit)})
    if best not in spread:
        spread[min(range(len(spread)), key=lambda k: abs(spread[k] - best))] = best
    return sorted(spread)


def video_url(video: str, page_dir: Path) -> str:
    """The video as a URL relative to the page (a file: URI where no relative path exists)."""
    path = Path(video).resolve()
    try:
        rel = os.path.relpath(path, page_dir.resolve())
    except ValueError:  # another drive (Windows)
        return path.as_uri()
    return quote(Path(rel).as_posix())


def _save_jpeg(img: Image.Image, path: Path) -> str:
    img.convert("RGB").save(path, format="JPEG", quality=88)
    return f"img/{path.name}"


def _query_images(data: dict, img_dir: Path) -> list[tuple[str, str]]:
    """The query crops as small pictures (image queries, and frames of query videos)."""
    from .queries import load_image
    from .video import read_frame_at

    out = []
    for i, q in enumerate(data.get("query", {}).get("images", []), 1):
        source = str(q.get("source", ""))
        try:
            if "@" in source and source.endswith("s") and not Path(source).exists():
                path, _, at = source.rpartition("@")
                image = read_frame_at(path, float(at[:-1])).image
            else:
                image = load_image(source)
        except (VidsearchError, ValueError):
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in q.get("box", [0, 0, image.shape[1], image.shape[0]]))
        crop = Image.fromarray(image[max(0, y1):y2, max(0, x1):x2])
        crop.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
        out.append((_save_jpeg(crop, img_dir / f"query-{i}.jpg"), Path(source).name))
    return out


def write_report(source: str | Path | dict, out_dir: str | Path, thumbs: int = 8, progress=None) -> Path:
    """Write `out_dir`/index.html (and `out_dir`/img/) for a find result; returns the page.
    `progress(total)` returns a callback taking a number of segments done."""
    from .export import load_result
    from .library import atomic_path

    data = load_result(source)
    if thumbs < 1:
        raise InputError(f"--thumbs must be at least 1, got {thumbs}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file: give a directory for the results page")
    img_dir = out_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("seg-*.jpg"):  # pictures of an earlier page in the same place
        old.unlink()
    frames = FrameGrabber()
    tick = progress(len(data["segments"])) if progress else None
    cards = []
    for n, seg in enumerate(data["segments"], 1):
        cards.append(_card(n, seg, frames, img_dir, out_dir, thumbs))
        if tick:
            tick(1)
    page = _page(data, cards, _query_images(data, img_dir), sorted(frames.missing))
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _pictures_from(seg: dict) -> tuple[str, object]:
    """The file to take pictures and play from, and a function turning a hit into the same hit
    in that file's frames: the proxy where the result names its original (lighter, plays in a
    browser), else the video itself."""
    proxy = seg.get("proxy")
    if not proxy or not Path(proxy["path"]).is_file() or not seg.get("width") or not seg.get("height"):
        return seg["video"], lambda h: h
    from .proxies import rescale_hit
    from .timecode import parse_rate

    sx, sy = proxy["width"] / float(seg["width"]), proxy["height"] / float(seg["height"])
    rate = float(parse_rate(proxy["fps"]))
    return proxy["path"], lambda h: rescale_hit(h, sx, sy, rate)


def _card(n: int, seg: dict, frames: FrameGrabber, img_dir: Path, out_dir: Path, thumbs: int) -> str:
    source, local = _pictures_from(seg)
    hits = sorted((local(h) for h in seg.get("hits") or [seg["best"]]), key=lambda h: float(h["time"]))
    best = local(seg["best"])
    video = seg["video"]  # what the card names: the original where there is one
    e = html.escape
    picture = ""
    picks = pick_hits(hits, thumbs)
    # the best frame and the strip's, in one pass over the video (None where it cannot be read)
    images: list[np.ndarray | None] = [None] * (1 + len(picks))
    for k, image in frames.grab([(source, float(h["time"]), int(h.get("frame", 0))) for h in [best] + [hits[k] for k in picks]]):
        images[k] = image
    image = images[0]
    if image is not None:
        img = draw_thumbnail(image, best["box"], BEST_WIDTH)
        picture = (f'<img class="best" src="{_save_jpeg(img, img_dir / f"seg-{n:03d}-best.jpg")}" '
                   f'alt="segment {n}, best frame" data-t="{float(best["time"]):.3f}" data-box="{_box_attr(best)}">')
    strip = []
    for k, image in zip(picks, images[1:]):
        h = hits[k]
        if image is None:
            continue
        src = _save_jpeg(draw_thumbnail(image, h["box"], THUMB_WIDTH), img_dir / f"seg-{n:03d}-hit-{k + 1:03d}.jpg")
        tc = _hit_tc(seg, float(h["time"]))
        strip.append(f'<figure class="hit" data-t="{float(h["time"]):.3f}" data-box="{_box_attr(h)}" title="{e(tc)} · score {float(h["score"]):.3f}'
                     f'{" · found by following the match" if h.get("kind") == "followed" else " · box refined" if h.get("refined") else ""}"><img src="{src}" alt="hit at {e(tc)}">'
                     f'<figcaption>{e(tc)} · {float(h["score"]):.2f}</figcaption></figure>')
    playable = Path(source).suffix.lower() in PLAYABLE
    box = ", ".join(f"{float(v):.0f}" for v in seg["best"]["box"])  # in the named video's pixels
    missing = "" if picture else '<p class="missing">the video cannot be read any more: no pictures</p>'
    score_text, score_title = f'{float(seg["score"]):.3f}', "region score"
    if seg.get("match") is not None:  # re-ranked by the query-guided match (find --rerank)
        score_text += f' · match {float(seg["match"]):.3f}'
        score_title += "; match with the query, which ranks it"
    return (f'<section class="card" id="seg-{n}" data-n="{n}" data-video="{e(video_url(source, out_dir))}" '
            f'data-playable="{int(playable)}" data-start="{float(seg["start"]):.3f}" data-best="{float(best["time"]):.3f}" '
            f'data-box="{_box_attr(best)}">'
            f'<header><span class="rank">#{n}</span> <span class="name" title="{e(video)}">{e(Path(video).name)}</span>'
            f'<span class="score" title="{score_title}">{score_text}</span></header>'
            f'{picture}{missing}'
            f'<p class="meta"><span class="tc">{e(seg.get("start_tc", ""))} – {e(seg.get("end_tc", ""))}</span> · '
            f'{len(hits)} hit frame{"s" if len(hits) != 1 else ""} · best at {e(_hit_tc(seg, float(best["time"])))} · '
            f'box {box}{" (refined)" if best.get("refined") else ""}</p>'
            f'<div class="strip">{"".join(strip)}</div></section>')


def _box_attr(hit: dict) -> str:
    return ",".join(f"{float(v):.1f}" for v in hit["box"])


def _hit_tc(seg: dict, seconds: float) -> str:
    from .timecode import parse_rate, seconds_to_tc

    try:
        return seconds_to_tc(seconds, parse_rate(seg["fps"]), start_tc=seg.get("media_start_tc"))
    except (VidsearchError, ValueError, TypeError):
        return f"{seconds:.2f}s"


_CSS = """
:root { color-scheme: dark; --accent: rgb%s; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #161616; color: #e8e8e8; }
header.top { padding: 12px 20px; background: #222; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
header.top h1 { font-size: 18px; margin: 0 12px 0 0; }
header.top .query img { height: 64px; border: 2px solid var(--accent); vertical-align: middle; }
main { display: grid; grid-template-columns: minmax(0, 1fr) minmax(320px, 40%%); gap: 16px; padding: 16px 20px; }
#cards { display: flex; flex-direction: column; gap: 16px; }
.card { background: #222; border: 2px solid #333; border-radius: 6px; padding: 10px; cursor: pointer; }
.card.active { border-color: var(--accent); }
.card header { display: flex; gap: 8px; align-items: baseline; }
.card .rank { font-weight: 700; }
.card .name { flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .score { font-variant-numeric: tabular-nums; color: var(--accent); }
.card img.best { width: 100%%; height: auto; display: block; margin: 8px 0; }
.card .meta { margin: 4px 0 8px; color: #bbb; font-variant-numeric: tabular-nums; }
.strip { display: flex; gap: 6px; overflow-x: auto; }
.hit { margin: 0; flex: 0 0 auto; width: 160px; }
.hit img { width: 160px; height: auto; display: block; border: 2px solid transparent; }
.hit:hover img { border-color: var(--accent); }
.hit figcaption { font-size: 12px; color: #aaa; font-variant-numeric: tabular-nums; }
.missing { color: #f0a040; }
.player { position: relative; }
#hitbox { position: absolute; border: 3px solid var(--accent); pointer-events: none; display: none; }
aside { position: sticky; top: 16px; align-self: start; }
aside video { width: 100%%; background: #000; }
aside p { color: #bbb; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } aside { position: static; } }
""" % (BOX_COLOUR,)

# Clicking a card plays its video from the best hit; clicking a thumbnail from that hit.
# `#check=N` in the address clicks card N once the page has loaded and records what the player
# did in <body data-check>, so a headless browser can verify the seek without a person.
_JS = """
const player = document.getElementById('player');
const note = document.getElementById('note');
const hitbox = document.getElementById('hitbox');
let shown = null;  // the hit whose box is drawn over the player: [time, x1, y1, x2, y2]
function drawBox() {
  const vw = player.videoWidth, vh = player.videoHeight;
  if (!shown || !vw || Math.abs(player.currentTime - shown[0]) > 0.05) { hitbox.style.display = 'none'; return; }
  // the picture is letterboxed inside the element (object-fit: contain)
  const s = Math.min(player.clientWidth / vw, player.clientHeight / vh);
  const ox = (player.clientWidth - vw * s) / 2, oy = (player.clientHeight - vh * s) / 2;
  Object.assign(hitbox.style, {display: 'block', left: (ox + shown[1] * s) + 'px', top: (oy + shown[2] * s) + 'px',
    width: ((shown[3] - shown[1]) * s) + 'px', height: ((shown[4] - shown[2]) * s) + 'px'});
}
['seeked', 'timeupdate', 'play', 'loadedmetadata'].forEach(e => player.addEventListener(e, drawBox));
window.addEventListener('resize', drawBox);
function show(card, t, box) {
  shown = [t].concat(box.split(',').map(parseFloat));
  document.querySelectorAll('.card.active').forEach(c => c.classList.remove('active'));
  card.classList.add('active');
  if (card.dataset.playable !== '1') {
    player.removeAttribute('src');
    note.textContent = 'The browser cannot play this format: vidsearch play RESULT.json ' + card.dataset.n;
    return;
  }
  note.textContent = '#' + card.dataset.n + ' · ' + card.querySelector('.name').textContent + ' at ' + t.toFixed(2) + ' s';
  const seek = () => { player.currentTime = t; };
  if (player.dataset.src !== card.dataset.video) {
    player.dataset.src = card.dataset.video;
    player.src = card.dataset.video;
    player.addEventListener('loadedmetadata', seek, {once: true});
  } else { seek(); }
}
player.addEventListener('error', () => {
  note.textContent = 'This video does not play here (codec or path): use vidsearch play RESULT.json N';
});
document.querySelectorAll('.card').forEach(card => {
  card.addEventListener('click', ev => {
    const hit = ev.target.closest('[data-t]');
    const from = hit && hit !== card ? hit : card;
    show(card, parseFloat(from.dataset.t || from.dataset.best), from.dataset.box);
  });
});
const check = /#check=(\\d+)/.exec(location.hash);
if (check) {
  const card = document.getElementById('seg-' + check[1]);
  const done = (what) => { document.body.dataset.check = JSON.stringify(Object.assign(
      {card: check[1], src: player.currentSrc, time: player.currentTime, box: hitbox.style.display}, what)); };
  player.addEventListener('seeked', () => done({event: 'seeked'}), {once: true});
  player.addEventListener('error', () => done({event: 'error'}), {once: true});
  if (card) { card.click(); } else { done({event: 'no such card'}); }
}
"""


def _page(data: dict, cards: list[str], queries: list[tuple[str, str]], missing: list[str]) -> str:
    e = html.escape
    segs = data["segments"]
    q = data.get("query", {})
    query_html = "".join(f'<span class="query"><img src="{src}" alt="query {e(name)}" title="{e(name)}"></span>'
                         for src, name in queries)
    summary = (f"{len(segs)} segment{'s' if len(segs) != 1 else ''} in {len({s['video'] for s in segs})} "
               f"video{'s' if len({s['video'] for s in segs}) != 1 else ''}")
    if "threshold" in q:
        summary += f" · threshold {float(q['threshold']):.3f}"
    verify = q.get("verify") or {}
    if verify.get("dropped"):  # the editor should know segments were left out, and why
        summary += (f" · {verify['dropped']} of {verify['checked']} re-ranked segments dropped: "
                    f"their match with the query was below {float(verify['cut']):.2f}")
    body = "".join(cards) or "<p>No segment matched: try find --min-score lower, or another crop.</p>"
    warn = "".join(f"<p class=\"missing\">{e(m)} cannot be read any more</p>" for m in missing)
    meta = json.dumps({"library": data.get("library"), "preset": data.get("preset")})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vidsearch results</title>
<style>{_CSS}</style></head>
<body>
<header class="top"><h1>vidsearch results</h1>{query_html}<span>{e(summary)}</span></header>
<main><div id="cards">{warn}{body}</div>
<aside><div class="player"><video id="player" controls preload="metadata"></video><div id="hitbox"></div></div>
<p id="note">Click a card to play its video from the best hit, or a thumbnail to play from that hit.</p></aside></main>
<script type="application/json" id="vidsearch-meta">{e(meta)}</script>
<script>{_JS}</script>
</body></html>
"""
