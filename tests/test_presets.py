"""The shipped presets: each loads, each makes its own libraries, and those described as the
default plus one thing differ from it in that thing only (so a change to the default's
extraction, like issue 12's speed-ups, cannot silently leave them behind)."""

from __future__ import annotations

import dataclasses

import pytest

from vidsearch.config import available_presets, load_preset

# what each preset says it changes against the default (README's preset table)
AS_DEFAULT_BUT = {
    "small": {"tiles"},  # + 5x5 tiles
    "dasr": {"peaks", "nms_iou", "cover"},  # DASR peaks, no NMS (so nothing to predict)
    "lite2": {"backbone", "cover"},  # Lite2; cover 0.4 kept its boxes within the IoU 0.9
}
NOT_REGIONS = {"name", "description"}


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
