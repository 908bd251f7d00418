"""The shipped presets: each loads, each makes its own libraries, and those described as the
default plus one thing differ from it in that thing only (so a change to the default's
extraction, like issue 12's speed-ups, cannot silently leave them behind)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vidsearch.config import available_presets, load_preset
from vidsearch.errors import InputError

# what each preset says it changes against the default (README's preset table)
AS_DEFAULT_BUT = {
    "small": {"tiles"},  # + 5x5 tiles
    "dasr": {"peaks", "nms_iou", "cover"},  # DASR peaks, no NMS (so nothing to predict)
    "lite2": {"backbone", "cover"},  # Lite2; cover 0.4 kept its boxes within the IoU 0.9
}
NOT_REGIONS = {"name", "description"}
# A library records its preset's fingerprint and refuses another, so a shipped preset whose
# fingerprint moves strands every library made with it: change one here only on purpose, and say
# so in README (those libraries then need `--preset` or a rebuild).
FINGERPRINTS = {
    "dasr": "642e3e53eddb7f52",
    "default": "e89af7496a76cf68",
    "fast": "7e7adb4072cab4c3",
    "lite2": "63ac77983ef003e4",
    "official-code": "20d0deaed9f589ed",
    "paper": "08dd4b76844de55a",
    "small": "84d9f69eafa34c42",
}


def differing(a, b) -> set[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k for k in da if da[k] != db[k]} - NOT_REGIONS


@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_loads(name):
    preset = load_preset(name)
    assert preset.name == name and preset.description


def test_shipped_presets_have_distinct_fingerprints():
    prints = {load_preset(n).fingerprint(): n for n in available_presets()}
    assert len(prints) == len(available_presets())


@pytest.mark.parametrize("name", sorted(AS_DEFAULT_BUT))
def test_presets_built_on_the_default_differ_from_it_only_where_they_say(name):
    assert differing(load_preset(name), load_preset("default")) == AS_DEFAULT_BUT[name]


def test_shipped_presets_keep_their_fingerprints():
    assert {n: load_preset(n).fingerprint() for n in available_presets()} == FINGERPRINTS


def test_a_preset_on_a_base_takes_its_keys_and_overrides_some(tmp_path):
    (tmp_path / "mine.toml").write_text('base = "small"\nlong_side = 640\n')
    mine = load_preset(str(tmp_path / "mine.toml"))
    assert mine.name == "mine"
    assert differing(mine, load_preset("small")) == {"long_side"} and mine.long_side == 640
    assert mine.description == "small with long_side = 640"  # says what it is, not what small is
    # a base given as a path is found beside the file, and bases chain
    (tmp_path / "theirs.toml").write_text('base = "mine.toml"\ndescription = "ours"\ntau = 0.2\n')
    theirs = load_preset(str(tmp_path / "theirs.toml"))
    assert differing(theirs, load_preset("small")) == {"long_side", "tau"}
    assert theirs.description == "ours"


@pytest.mark.parametrize("text, message", [
    ('base = "nonesuch"\n', "unknown preset 'nonesuch'"),
    ("base = 3\n", "base must be a preset name"),
    ('base = "loop.toml"\n', "form a loop"),
    ('base = "default"\nwindows = 2\n', "unknown key(s) windows"),
])
def test_a_bad_base_is_a_one_line_error(tmp_path, text, message):
    (tmp_path / "loop.toml").write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_preset(str(tmp_path / "loop.toml"))
    assert "\n" not in str(info.value)
