"""Sensor catalogs: every file loads, the facts that bite are right, bad files are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import CatalogError
from pipeline.sensors import (
    CANONICAL_BANDS,
    Sensor,
    all_sensors,
    list_sensors,
    load_sensor,
    load_sensor_file,
)

EXPECTED = {
    "sentinel2-l1c",
    "sentinel2-l2a",
    "sentinel2-l1c-reflectance",
    "sentinel2-xrspatial",
    "landsat45-tm-c2l2",
    "landsat7-etm-c2l2",
    "landsat89-oli-c2l2",
    "landsat7-etm-dn",
    "landsat-sr-x10000",
    "landsat-timeseries-uint8",
    "gaofen2-pms",
    "naip",
    "rgbn-uint8",
}

VALID = """\
name: {name}
title: Test sensor
calibrated: true
resolution_m: 10
scale: 0.0001
nodata: 0
bands:
  - {{code: G, native: b3, wavelength_nm: 560}}
  - {{code: N, native: b8, wavelength_nm: 842}}
"""


def test_every_catalog_loads_with_canonical_codes() -> None:
    assert set(list_sensors()) >= EXPECTED
    for sensor in all_sensors():
        assert isinstance(sensor, Sensor)
        assert sensor.bands, sensor.name
        assert sensor.description == sensor.title and sensor.notes
        assert all(b.code in CANONICAL_BANDS for b in sensor.bands)
        assert all(300 < b.wavelength_nm < 2500 for b in sensor.bands)
        if sensor.calibrated:
            assert all(b.scale and b.scale > 0 for b in sensor.bands)
        else:
            assert sensor.fallback_method == "percentile"
            assert sensor.fallback_percentile == 99.5


def test_sentinel2_facts() -> None:
    l1c, l2a = load_sensor("sentinel2-l1c"), load_sensor("sentinel2-l2a")
    assert len(l1c.bands) == 13 and "C" in l1c.codes
    assert "C" not in l2a.codes and len(l2a.bands) == 12
    for s in (l1c, l2a):
        assert s.band("N").native == "B08" and s.band("N2").native == "B8A"
        assert s.band("S1").native == "B11" and s.band("B02").resolution_m == 10
        assert s.band("B8A").resolution_m == 20 and s.band("B01").resolution_m == 60
        assert s.band("B04").scale == pytest.approx(1e-4) and s.band("B04").nodata == 0
        assert s.baseline_offset is not None
        assert s.baseline_offset.from_baseline == "04.00"
        assert s.baseline_offset.dn_offset == -1000


def test_landsat_facts() -> None:
    for name in ("landsat45-tm-c2l2", "landsat7-etm-c2l2"):
        s = load_sensor(name)
        assert s.band("N").native == "SR_B4"
        assert (s.band("N").scale, s.band("N").offset) == (pytest.approx(2.75e-5), -0.2)
    oli = load_sensor("landsat89-oli-c2l2")
    assert oli.band("N").native == "SR_B5" and oli.band("R").native == "SR_B4"
    assert oli.band("N").scale == pytest.approx(2.75e-5) and oli.band("N").offset == -0.2
    dn = load_sensor("landsat7-etm-dn")
    assert not dn.calibrated and dn.band("N").native == "B4" and dn.band("S2").native == "B7"
    ts = load_sensor("landsat-timeseries-uint8")
    assert ts.codes == ("S1", "N", "R", "G")


def test_no_swir_sensors_say_so() -> None:
    for name in ("gaofen2-pms", "naip", "rgbn-uint8"):
        s = load_sensor(name)
        assert not s.calibrated
        assert set(s.codes) == {"B", "G", "R", "N"}
        assert not s.has_band("S1")
    assert load_sensor("naip").codes == ("R", "G", "B", "N")
    assert load_sensor("gaofen2-pms").codes == ("B", "G", "R", "N")


def test_unknown_sensor_lists_known_names() -> None:
    with pytest.raises(CatalogError, match="unknown sensor 'sentinel-3'") as err:
        load_sensor("sentinel-3")
    assert "sentinel2-l1c" in str(err.value) and "naip" in str(err.value)


def test_unknown_band_of_sensor() -> None:
    with pytest.raises(CatalogError, match="has no band 'S1'"):
        load_sensor("naip").band("S1")


def test_new_sensor_is_just_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my-sensor.yaml"
    path.write_text(VALID.format(name="my-sensor"))
    sensor = load_sensor_file(path)
    assert sensor.codes == ("G", "N") and sensor.band("b8").scale == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID.format(name="bad").replace("title: Test sensor\n", ""),
            "missing required key 'title'",
        ),
        (VALID.format(name="bad").replace("native: b8, ", ""), "missing required key 'native'"),
        (VALID.format(name="bad").replace("scale: 0.0001\n", ""), "missing required key 'scale'"),
        (VALID.format(name="other"), "must equal the file name"),
        (VALID.format(name="bad").replace("code: N,", "code: NIR,"), "not a canonical code"),
        (VALID.format(name="bad").replace("code: G,", "code: N,"), "duplicate band code"),
        (
            VALID.format(name="bad").replace("calibrated: true", "calibrated: false"),
            "missing required key 'fallback'",
        ),
        ("name: [unclosed", "not valid YAML"),
        (VALID.format(name="bad") + "file_layouts:\n  - [b3, b99]\n", "unknown band"),
    ],
)
def test_malformed_catalog_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message) as err:
        load_sensor_file(path)
    assert str(path) in str(err.value)


def test_declared_file_layout_maps_a_shorter_stack() -> None:
    """Landsat 7 stacks of bands 1-5 (no band 7) are declared, not guessed."""
    sensor = load_sensor("landsat7-etm-dn")
    assert [b.code for b in sensor.layout_for(5)] == ["B", "G", "R", "N", "S1"]
    assert sensor.layout_for(4) is None
