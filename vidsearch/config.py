"""Presets: every choice that fixes what a region vector means, as one frozen dataclass."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"

CHOICES = {
    "backbone": ("efficientnet_lite0", "efficientnet_lite2", "resnet50", "vgg16"),
    "peaks": ("local_max", "local_max_official", "above_mean"),
    "residual": ("merged", "split", "copy"),
    "maxpool": ("sum", "argmax"),
    "seed": ("activations", "uniform"),
    "threshold": ("tau", "percentile"),
    "stop": ("input", "stride4", "stride8", "stride16"),
    "prefilter": ("none", "stride8", "stride16"),
    "dtype": ("fp32", "bf16", "fp16"),
    "pooling": ("avg", "max"),
    "index_type": ("auto", "flat", "ivf", "ivfpq"),
    "tile_peaks": ("all", "core"),
}

# Fields that only choose the FAISS index a library builds: they change no region.
INDEX_FIELDS = {"index_type", "ivf_min_regions", "pq_min_regions", "pq_bytes", "nprobe"}
# Fields that change neither a region nor its vector, only how fast they are made.
SPEED_FIELDS = {"peak_chunk"}
# Fields that do not change what a stored vector means (speed knobs, sampling, the index).
_NOT_FINGERPRINTED = {"name", "sample_fps", "dtype", "prefilter", "description"} | INDEX_FIELDS | SPEED_FIELDS


@dataclass(frozen=True)
class Preset:
    name: str = "default"
    description: str = ""
    backbone: str = "efficientnet_lite0"
    peak_layer: str = ""  # module prefix; "" = the backbone's default
    feature_layer: str = ""  # module prefix; "" = the backbone's default
    long_side: int = 512
    peaks: str = "above_mean"  # DASR*: every position above mean(X̄)
    nms_iou: float | None = 0.3  # β; None = no NMS (plain DASR)
    max_peaks: int = 0  # 0 = no cap; else keep the highest-scoring seeds
    residual: str = "merged"
    maxpool: str = "sum"
    seed: str = "activations"
    threshold: str = "tau"
    tau: float = 0.1
    percentile: float = 95.0
    stop: str = "input"
    # Coarse-to-fine DASR*: every seed back-propagated only to this stride first, NMS on those
    # coarse boxes, then the full pass for the survivors alone ("none": every seed goes all the way).
    prefilter: str = "none"
    # Spatial windows: each peak back-propagated only within (2·window + 1)² peak-layer cells
    # around it (what would leave the window is dropped); 0 = the whole frame (exact).
    window: int = 0
    # Predicted suppression (DASR* with NMS): a peak is not back-propagated where the map of a
    # better peak already kept, at the peak's cell, is at least this fraction of that map's
    # largest cell (it lies on an object already found; NMS would almost always remove its box).
    # 0 = every peak goes through (exact).
    cover: float = 0.0
    # Peaks per frame per round of predicted suppression; 0 = the engine's (8). Smaller rounds skip
    # more peaks (a round's peaks cannot skip one another); larger ones wait on the device less
    # often (a host sync per round) and fill its batches better.
    cover_round: int = 0
    dtype: str = "fp32"
    pooling: str = "avg"
    whiten: bool = False  # measured on instance-dev: learned whitening hurt (bench/RESULTS.md)
    whiten_dims: int = 0  # 0 = keep all dimensions
    whiten_min_regions: int = 2000  # learn whitening once the library has this many
    # Views per frame (vidsearch/dasr/views.py). The defaults here are what libraries made
    # before views existed mean (one whole-frame view, no whole-frame region); presets/ set more.
    tiles: tuple[int, ...] = (1,)  # grid levels: 1 = the whole frame, n = n×n overlapping tiles
    tile_overlap: float = 0.25  # neighbouring tiles share this fraction of a tile
    max_upscale: float = 1.0  # a level is used only where its tiles need no more enlargement
    # Peaks of a tile: "all" of them, or only those in its core, the part of the tile nearer its
    # own centre than a neighbour's (up to the middle of each shared strip): a peak in a shared
    # strip is then back-propagated once, by the tile it sits deeper in, not twice. Measured
    # (bench/RESULTS.md): "core" 1.22x faster per 1080p frame, but small objects lose the second
    # look a neighbouring tile gives them (find's recall on generated props 0.815 -> 0.737).
    tile_peaks: str = "all"
    view_nms_iou: float | None = 0.5  # NMS across the views of a frame (None: keep all)
    whole_frame: bool = False  # one extra region per frame: the whole frame, pooled
    sample_fps: float = 1.0
    # peaks back-propagated together; 0 = by device (16 on a CPU, where larger batches only
    # add memory traffic, measured; 64 on a GPU)
    peak_chunk: int = 0
    # flat | ivf (IVF, 8-bit scalar codes) | ivfpq (IVF, product-quantised codes) | auto: flat, then
    # IVF-SQ8 from ivf_min_regions, IVF-PQ from pq_min_regions (archive size: ~pq_bytes per region)
    index_type: str = "auto"
    ivf_min_regions: int = 2_000_000
    pq_min_regions: int = 50_000_000
    pq_bytes: int = 64
    nprobe: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiles", tuple(sorted({int(n) for n in self.tiles})))
        if not self.tiles or self.tiles[0] != 1:
            raise InputError(f"preset {self.name!r}: tiles must include 1 (the whole frame), got {list(self.tiles)}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise InputError(f"preset {self.name!r}: tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.max_upscale <= 0:
            raise InputError(f"preset {self.name!r}: max_upscale must be positive, got {self.max_upscale}")
        for field, allowed in CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise InputError(
                    f"preset {self.name!r}: {field} = {value!r} is not one of {', '.join(allowed)}"
                )
        if not 0.0 <= self.tau < 1.0:
            raise InputError(f"preset {self.name!r}: tau must be in [0, 1), got {self.tau}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise InputError(f"preset {self.name!r}: nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.peak_chunk < 0:
            raise InputError(f"preset {self.name!r}: peak_chunk must be 0 (by device) or a number of peaks, got {self.peak_chunk}")
        if self.window < 0:
            raise InputError(f"preset {self.name!r}: window must be 0 (off) or a number of cells, got {self.window}")
        if not 0.0 <= self.cover <= 1.0:
            raise InputError(f"preset {self.name!r}: cover must be in [0, 1] (0 = off), got {self.cover}")
        if self.cover_round < 0:
            raise InputError(f"preset {self.name!r}: cover_round must be 0 (the engine's) or a number of peaks, got {self.cover_round}")
        if self.long_side < 64:
            raise InputError(f"preset {self.name!r}: long_side must be at least 64")
        if self.sample_fps <= 0:
            raise InputError(f"preset {self.name!r}: sample_fps must be positive")

    def replace(self, **changes: object) -> "Preset":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """A short hash of everything that decides what a region vector means."""
        fields = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_FINGERPRINTED
        }
        if not self.cover:  # added later: presets without it keep the fingerprint they had
            del fields["cover"]
        if not self.cover_round:  # added later, likewise
            del fields["cover_round"]
        if self.tile_peaks == "all":  # added later, likewise
            del fields["tile_peaks"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str = "default") -> Preset:
    """Load `presets/NAME.toml` or a .toml file path; unknown keys are an error.

    `base = "NAME"` (or a .toml path, relative to the file) in a preset takes every key of that
    preset and then the file's own, so a preset states only what it changes."""
    path = _preset_path(name_or_path)
    return preset_from_dict(_preset_data(path, ()), default_name=path.stem)


def _preset_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PRESET_DIR / f"{name_or_path}.toml"
    elif relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.is_file():
        raise InputError(
            f"unknown preset {name_or_path!r}: choose one of {', '.join(available_presets())} "
            "or give a .toml file"
        )
    return path


def _preset_data(path: Path, chain: tuple[Path, ...]) -> dict:
    """The file's keys over those of its base presets, all the way down."""
    if path.resolve() in chain:
        loop = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise InputError(f"preset {path}: its base presets form a loop ({loop}); remove one `base`")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"preset file {path} is not valid TOML: {exc}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise InputError(f"preset file {path}: base must be a preset name or a .toml path, got {base!r}")
    inherited = _preset_data(_preset_path(base, path.parent), (*chain, path.resolve()))
    inherited.pop("name", None)
    description = inherited.pop("description", "")
    if "description" not in data:  # say what it is, not what its base was
        own = ", ".join(f"{k} = {v}" for k, v in data.items() if k != "name")
        data["description"] = f"{base} with {own}" if own else description
    return inherited | data


def preset_from_dict(data: dict, default_name: str = "custom") -> Preset:
    data = dict(data)
    data.setdefault("name", default_name)
    for key in ("nms_iou", "view_nms_iou"):
        if data.get(key) in (0, "none", False):
            data[key] = None
    known = {f.name for f in dataclasses.fields(Preset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(
            f"preset {data['name']!r}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return Preset(**data)


def with_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """`KEY=VALUE` strings (eval method suffixes, bench variants) applied to a preset, each value
    read as the field's type: numbers, true/false, none, comma lists for tiles."""
    data = preset.to_dict()
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or key not in fields:
            raise InputError(f"{text!r} is not KEY=VALUE with a preset key: known keys: {', '.join(sorted(fields))}")
        current = data[key]
        try:
            if value.lower() == "none":
                data[key] = None
            elif isinstance(current, bool):
                data[key] = {"true": True, "false": False}[value.lower()]
            elif isinstance(current, (tuple, list)):
                data[key] = [int(v) for v in value.split(",") if v]
            elif isinstance(current, int):
                data[key] = int(value)
            elif isinstance(current, float) or (current is None and key.endswith("iou")):
                data[key] = float(value)
            else:
                data[key] = value
        except (ValueError, KeyError):
            raise InputError(f"{text!r}: {value!r} is not a valid value for {key}") from None
    return preset_from_dict(data)
