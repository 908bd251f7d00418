"""Timecode tables against known values."""

from fractions import Fraction

import pytest

from vidsearch.errors import InputError
from vidsearch.timecode import (drop_frame_for, format_rate, frames_to_tc, nominal_rate, parse_rate, parse_time, seconds_to_tc,
                                tc_to_frames)

NTSC30, NTSC24, NTSC60 = Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60000, 1001)


@pytest.mark.parametrize("rate,drop,frames,tc", [
    (NTSC30, True, 107892, "01:00:00;00"),   # one hour of real time at 29.97 DF
    (NTSC30, False, 107892, "00:59:56:12"),  # the same frames, non-drop
    (NTSC24, False, 86314, "00:59:56:10"),   # 23.976 is never drop-frame
    (NTSC30, True, 1800, "00:01:00;02"),     # DF skips ;00 and ;01 at each minute but every 10th
    (NTSC30, True, 17982, "00:10:00;00"),
    (NTSC60, True, 215784, "01:00:00;00"),
    (Fraction(25), False, 90000, "01:00:00:00"),
    (Fraction(24), False, 86400 + 23, "01:00:00:23"),
    (Fraction(50), False, 50, "00:00:01:00"),
    (Fraction(60), False, 61, "00:00:01:01"),
    (Fraction(30), False, 30 * 3600, "01:00:00:00"),
])
def test_frames_to_timecode_and_back(rate, drop, frames, tc):
    assert frames_to_tc(frames, rate, drop) == tc
    assert tc_to_frames(tc, rate, drop) == frames


def test_drop_frame_rules():
    assert drop_frame_for(NTSC30) and drop_frame_for(NTSC60)
    assert not drop_frame_for(NTSC24) and not drop_frame_for(Fraction(25))
    assert not drop_frame_for(NTSC30, "no")
    with pytest.raises(InputError, match="does not exist"):
        drop_frame_for(NTSC24, "yes")
    with pytest.raises(InputError):
        drop_frame_for(NTSC30, "maybe")


def test_label_separator_decides_when_not_told():
    assert tc_to_frames("01:00:00;00", NTSC30) == 107892
    assert tc_to_frames("01:00:00:00", NTSC30) == 108000
    with pytest.raises(InputError, match="frame 30"):
        tc_to_frames("00:00:00:30", NTSC30)
    with pytest.raises(InputError, match="not a timecode"):
        tc_to_frames("1:2:3", NTSC30)


def test_rates_are_exact_fractions():
    assert parse_rate("23.976") == NTSC24 and parse_rate("29.97") == NTSC30 and parse_rate("24000/1001") == NTSC24
    assert format_rate(NTSC24) == "24000/1001" and format_rate(Fraction(25)) == "25"
    with pytest.raises(InputError):
        parse_rate("fast")


def test_media_seconds_to_timecode_with_start_timecode_and_vfr():
    assert seconds_to_tc(12.0, Fraction(24)) == "00:00:12:00"
    assert seconds_to_tc(60.0, NTSC30) == "00:00:59;28"  # DF catches up with real time every 10 min
    assert seconds_to_tc(600.0, NTSC30) == "00:10:00;00"
    assert seconds_to_tc(1.0, NTSC30, start_tc="01:00:00;00") == "01:00:01;00"
    assert seconds_to_tc(1.0, Fraction(2997, 100)) == "00:00:01;00"  # odd rate -> nearest standard
    assert seconds_to_tc(1.0, Fraction(23)) == "00:00:01:00"  # VFR average 23 -> counted at 24
    # odd rates count at a standard rate of their family, so labels keep to real time
    assert seconds_to_tc(3600.0, Fraction(23)) == "01:00:00:00"
    assert seconds_to_tc(21.0, Fraction(10)) == "00:00:21:00"  # a 10 fps camera: at 24, not 23.976
    assert seconds_to_tc(3600.0, Fraction(25, 2)) == "01:00:00:00"
    assert nominal_rate(Fraction(15000, 1001)) == Fraction(24000, 1001)  # NTSC 15 -> NTSC 23.976
    assert nominal_rate(Fraction(29, 1)) == Fraction(30) and nominal_rate(Fraction(59, 1)) == Fraction(60)


def test_parse_time():
    assert parse_time("12.5") == 12.5
    assert parse_time("1:02.5") == 62.5
    assert parse_time("00:00:05:12", Fraction(24)) == pytest.approx(5.5)
    for bad in ("-3", "soon", "00:61:00:00", "inf", "nan", "1e999"):
        with pytest.raises(InputError):
            parse_time(bad, Fraction(24))
