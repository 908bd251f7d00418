"""Media time -> frame -> SMPTE timecode, in one place (OpenTimelineIO does the arithmetic).

Rates are exact fractions (24000/1001, never 23.976). 23.976 is never drop-frame; 29.97 and
59.94 are drop-frame by default ("auto"). A media's own start timecode is added when known.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from opentimelineio import opentime

from .errors import InputError

_DF_RATES = (Fraction(30000, 1001), Fraction(60000, 1001))
_STANDARD = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
             Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60), Fraction(120)]


def parse_rate(value: str | float | Fraction) -> Fraction:
    """'24000/1001', '23.976', 25 -> an exact Fraction (near-standard decimals snap to NTSC rates)."""
    if isinstance(value, Fraction):
        rate = value
    else:
        text = str(value).strip()
        try:
            rate = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise InputError(f"frame rate {value!r} is not a number or fraction like 24000/1001") from None
    if rate <= 0:
        raise InputError(f"frame rate must be positive, got {value!r}")
    for std in _STANDARD:
        if abs(float(rate) - float(std)) < 0.002:
            return std
    return rate


def format_rate(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}" if rate.denominator != 1 else str(rate.numerator)


def drop_frame_for(rate: Fraction, mode: str = "auto") -> bool:
    """auto: drop-frame for 29.97 and 59.94; yes/no force it (yes is refused where DF does not exist)."""
    if mode not in ("auto", "yes", "no"):
        raise InputError(f"--drop-frame must be auto, yes or no, got {mode!r}")
    if mode == "no":
        return False
    if rate in _DF_RATES:
        return True
    if mode == "yes":
        raise InputError(f"drop-frame timecode does not exist at {format_rate(rate)} fps: use --drop-frame no")
    return False


def nominal_rate(rate: Fraction) -> Fraction:
    """Variable or odd rates count timecode at the nearest standard rate's frames, of their own
    family: NTSC (x/1001) rates at an NTSC rate, the others at a whole one. A 10 fps camera then
    counts at 24, whose labels keep to real time (at 23.976 they fall 3.6 s behind an hour)."""
    if rate in _STANDARD:
        return rate
    scaled = float(rate) * 1.001  # a whole number for NTSC rates (15000/1001 -> 15)
    ntsc = rate.denominator != 1 and abs(scaled - round(scaled)) < 1e-3 * scaled
    family = [s for s in _STANDARD if (s.denominator == 1001) == ntsc]
    return min(family, key=lambda s: abs(float(s) - float(rate)))


def frames_to_tc(frame: int, rate: Fraction, drop: bool = False) -> str:
    if frame < 0:
        raise InputError(f"a timecode cannot be negative (frame {frame})")
    return opentime.to_timecode(opentime.RationalTime(frame, float(rate)), float(rate), drop)


def tc_to_frames(tc: str, rate: Fraction, drop: bool | None = None) -> int:
    """A timecode label -> frame count. drop=None reads the label's own convention (';' or '.'
    before the frames = drop-frame); True/False read it as DF/NDF whatever its separator."""
    text = tc.strip()
    if not re.fullmatch(r"\d{1,2}:\d{2}:\d{2}[:;.]\d{2,3}", text):
        raise InputError(f"{tc!r} is not a timecode like 01:00:00:00 (or 01:00:00;00 for drop-frame)")
    if drop is None:
        drop = text[-3] in ";." and rate in _DF_RATES
    if drop and rate not in _DF_RATES:
        raise InputError(f"drop-frame timecode {tc!r} does not exist at {format_rate(rate)} fps")
    h, m, s, f = (int(v) for v in re.split(r"[:;.]", text))
    if m > 59 or s > 59:
        raise InputError(f"{tc!r} is not a valid timecode (minutes and seconds run to 59)")
    if drop:
        label = f"{h:02d}:{m:02d}:{s:02d};{f:02d}"
        try:
            return int(round(opentime.from_timecode(label, float(rate)).value))
        except ValueError as exc:
            raise InputError(f"{tc!r} is not a valid drop-frame timecode ({exc})") from None
    per_second = round(rate)  # NDF labels count whole frames per second at the nominal rate
    if f >= per_second:
        raise InputError(f"{tc!r} has frame {f}, but {format_rate(rate)} fps counts 0-{per_second - 1}")
    return ((h * 60 + m) * 60 + s) * per_second + f


def seconds_to_frame(seconds: float, rate: Fraction) -> int:
    """The nearest frame of the rate (also for variable-rate media)."""
    return int(round(seconds * float(rate)))


def seconds_to_tc(seconds: float, rate: Fraction, drop: bool | None = None, start_tc: str | None = None) -> str:
    """Media seconds -> timecode, offset by the media's own start timecode."""
    rate = nominal_rate(rate)
    drop = drop_frame_for(rate) if drop is None else drop
    frame = seconds_to_frame(seconds, rate)
    if start_tc:
        frame += tc_to_frames(start_tc, rate)
    return frames_to_tc(frame, rate, drop)


def parse_time(text: str, rate: Fraction | None = None) -> float:
    """'12.5' (seconds), '1:02.5' (m:s), or 'HH:MM:SS:FF' (needs a rate) -> seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value) or value < 0:
            raise InputError(f"time {text!r} is not a number of seconds >= 0")
        return value
    if re.fullmatch(r"\d{1,2}:\d{2}:\d{2}[:;]\d{2}", text):
        if rate is None:
            raise InputError(f"timecode {text!r} needs the video's frame rate")
        return tc_to_frames(text, nominal_rate(rate)) / float(nominal_rate(rate))
    m = re.fullmatch(r"(?:(\d+):)?(\d{1,2}):(\d{2}(?:\.\d+)?)", text)
    if m:
        h, mnt, s = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        return h * 3600 + mnt * 60 + s
    raise InputError(f"time {text!r} is not seconds (12.5), MM:SS(.s) or a timecode HH:MM:SS:FF")
