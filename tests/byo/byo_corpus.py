"""The bring-your-own-scene corpus: the same real pixels written in the conventions users
bring, built at test time (nothing is committed).

Sources (real pixels only):

* ``samples/s2_l1c_berlin_20170216.tif`` -- Sentinel-2 L1C, bands B02, B03, B04, B08, B11,
  B12, uint16 DN (baseline before 04.00). Every Sentinel-2 convention below holds exactly
  these values (or DN + 1000 where the convention adds the 04.00 offset), so each must
  open to the same reflectance, and the NDWI mask must be identical across them.
* ``samples/landsat_gewata_crop.tif`` -- Landsat TM/ETM+ surface reflectance x 10000
  (int16). The Landsat conventions re-encode it: Collection 2 Level-2 ``SR_B*`` files
  (DN = (reflectance + 0.2) / 0.0000275, rounded: within half a step, 1.375e-5) and a
  Level-1 8-bit DN stack with an MTL file (DN = (reflectance * sin(sun elevation) - A) / M,
  rounded; within M / (2 sin(sun elevation)) where not saturated at 255). The MTL
  coefficients, sun elevation and product ids are illustrative values of the documented
  form, not a real acquisition's; the stack's thermal band 6 holds band 7's DN (the
  corpus has no thermal measurement; the opener drops thermal bands, so its values never
  reach a scene).
* ``../shared/data/naip-north-dakota/m_4709963_se_14_1_20200831.tif`` (real NAIP) when
  present; otherwise the Berlin B04, B03, B02, B08 stretched to 8 bit under a NAIP name.
  NAIP is uncalibrated: it is compared by its indices, which the declared fallback keeps.

``python tests/byo/byo_corpus.py OUT`` builds the corpus into OUT and prints the corpus
table (convention, detected sensor and encoding, flags needed, max reflectance difference).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[2]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
GEWATA = REPO / "samples" / "landsat_gewata_crop.tif"
NAIP_NAME = "m_4709963_se_14_1_20200831.tif"

S2_NATIVE = ["B02", "B03", "B04", "B08", "B11", "B12"]
S2_GEE = ["B2", "B3", "B4", "B8", "B11", "B12"]
S2_EARTH_SEARCH = ["blue", "green", "red", "nir", "swir16", "swir22"]
S2_COMMON = ["blue", "green", "red", "nir", "swir16", "swir22"]
S2_WAVELENGTH_UM = [0.4924, 0.5598, 0.6646, 0.8328, 1.6137, 2.2024]
LANDSAT_BANDS = [1, 2, 3, 4, 5, 7]

#: Level-1 calibration written into the corpus MTL (illustrative, of the USGS form).
MTL_MULT, MTL_ADD, SUN_ELEVATION = 2.5e-3, -0.005, 55.0
C2_SCALE, C2_OFFSET = 2.75e-5, -0.2

#: Tolerance (max |reflectance difference|) of each kind of convention, and why.
TOL_EXACT = 1e-6  # float32 rounding of the same DN
TOL_C2L2 = C2_SCALE / 2 + 1e-6  # half a Collection 2 Level-2 step
TOL_L1 = MTL_MULT / (2 * np.sin(np.radians(SUN_ELEVATION))) + 1e-6  # half an 8-bit step


@dataclass
class Case:
    """One convention: the path a user passes, the flags its error messages ask for, and
    what it must open as."""

    name: str
    path: Path
    flags: dict[str, Any]
    sensor: str
    encoding: str
    reference: str  # 'berlin', 'gewata' (reflectance) or 'index' (uncalibrated: indices)
    tolerance: float
    family: str  # 's2', 'landsat', 'naip'
    notes: str = ""
    compare: np.ndarray | None = field(default=None, repr=False)  # pixels to compare

    def cli_flags(self) -> list[str]:
        """The flags as `spex extract` takes them."""
        out: list[str] = []
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            out += [flag, ",".join(value) if isinstance(value, list) else str(value)]
        return out


def _profile(src_profile: dict[str, Any], **changes: Any) -> dict[str, Any]:
    profile = {k: v for k, v in src_profile.items() if k not in ("blockxsize", "blockysize")}
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
    profile.update(changes)
    return profile


def _write(
    path: Path,
    data: np.ndarray,
    profile: dict[str, Any],
    names: list[str] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", **_profile(profile, count=data.shape[0], dtype=data.dtype.name)
    ) as dst:
        dst.write(data)
        for i, name in enumerate(names or [], start=1):
            dst.set_band_description(i, name)
        if tags:
            dst.update_tags(**tags)
    return path


def _write_cog(path: Path, band: np.ndarray, profile: dict[str, Any], **changes: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    prof.update(driver="COG", count=1, dtype=band.dtype.name, blocksize=256, **changes)
    prof.pop("interleave", None)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(band[None])
    return path


def berlin() -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(BERLIN) as src:
        return src.read(), dict(src.profile)


def gewata() -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(GEWATA) as src:
        return src.read(), dict(src.profile)


def reference_reflectance(which: str) -> np.ndarray:
    """The original's reflectance (float64, NaN at nodata) a convention must reproduce."""
    data, profile = berlin() if which == "berlin" else gewata()
    refl = data.astype(np.float64) * 1e-4
    refl[data == profile["nodata"]] = np.nan
    return refl


# ------------------------------------------------------------------ Sentinel-2 conventions


def _stac_item(
    path: Path, assets: dict[str, dict[str, Any]], properties: dict[str, Any], bbox: list[float]
) -> Path:
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": path.stem,
        "geometry": None,
        "bbox": bbox,
        "properties": {"datetime": "2017-02-16T10:21:01Z", **properties},
        "links": [],
        "assets": assets,
    }
    path.write_text(json.dumps(item, indent=1))
    return path


def _band_asset(href: str, i: int, raster: dict[str, Any] | None) -> dict[str, Any]:
    asset: dict[str, Any] = {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data", "reflectance"],
        "eo:bands": [
            {
                "name": S2_NATIVE[i],
                "common_name": S2_COMMON[i],
                "center_wavelength": S2_WAVELENGTH_UM[i],
            }
        ],
    }
    if raster is not None:
        asset["raster:bands"] = [raster]
    return asset


def _s2_case(name: str, path: Path, flags: dict[str, Any], encoding: str, notes: str = "") -> Case:
    """A Sentinel-2 convention of the Berlin pixels: must match them to float rounding."""
    return Case(name, path, flags, "sentinel2-msi", encoding, "berlin", TOL_EXACT, "s2", notes)


def build_s2(root: Path) -> list[Case]:
    data, profile = berlin()
    bounds = list(
        rasterio.transform.array_bounds(data.shape[1], data.shape[2], profile["transform"])
    )
    bbox = [bounds[1], bounds[0], bounds[3], bounds[2]]  # not lon/lat: the reader ignores it
    plus_1000 = np.where(data > 0, data + 1000, 0).astype(np.uint16)
    cases = []

    # 1. Google Earth Engine export (HARMONIZED collection: offset already removed), int16
    path = _write(root / "gee" / "s2_gee_export.tif", data.astype(np.int16), profile, S2_GEE)
    cases.append(
        _s2_case(
            "S2 GEE export, B1..B12 names, int16 DN",
            path,
            {"encoding": "reflectance-x10000"},
            "reflectance-x10000",
            "no baseline metadata: the message offers --baseline or --encoding",
        )
    )

    # 2. per-band COGs + STAC item, Planetary-Computer-like keys, baseline as a property
    folder = root / "stac_pc"
    assets = {}
    for i, name in enumerate(S2_NATIVE):
        _write_cog(folder / f"{name}.tif", data[i], profile)
        assets[name] = _band_asset(f"{name}.tif", i, None)
    _write_cog(folder / "visual.tif", data[[2, 1, 0]].astype(np.uint16)[0], profile)
    assets["visual"] = {"href": "visual.tif", "type": "image/tiff", "roles": ["visual"]}
    assets["thumbnail"] = {"href": "https://example.invalid/t.png", "roles": ["thumbnail"]}
    path = _stac_item(
        folder / "S2A_MSIL1C_20170216T102101_R065_T33UUU.json",
        assets,
        {
            "platform": "sentinel-2a",
            "s2:processing_baseline": "02.04",
            "s2:product_type": "S2MSI1C",
        },
        bbox,
    )
    cases.append(
        _s2_case(
            "STAC item, per-band COGs, asset keys B02..B12",
            path,
            {},
            "sentinel2-dn",
        )
    )

    # 3. per-band COGs + STAC item, Earth-Search-like common-name keys, raster:bands
    #    scale/offset, baseline 04.00 (values carry the +1000 DN offset)
    folder = root / "stac_es"
    assets = {}
    for i, key in enumerate(S2_EARTH_SEARCH):
        _write_cog(folder / f"{S2_NATIVE[i]}.tif", plus_1000[i], profile, nodata=0)
        raster = {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}
        assets[key] = _band_asset(f"{S2_NATIVE[i]}.tif", i, raster)
    path = _stac_item(
        folder / "S2A_33UUU_20170216_0_L2A.json",
        assets,
        {
            "platform": "sentinel-2a",
            "s2:processing_baseline": "04.00",
            "s2:product_type": "S2MSI2A",
        },
        bbox,
    )
    cases.append(
        _s2_case(
            "STAC item, common-name keys, raster:bands scale/offset, 04.00",
            path,
            {},
            "sentinel2-dn",
        )
    )

    # 4. L2A baseline 04.00 GeoTIFF with metadata tags
    path = _write(
        root / "l2a_tags" / "s2_l2a_subset.tif",
        plus_1000,
        profile,
        S2_NATIVE,
        {"PRODUCT_TYPE": "S2MSI2A", "PROCESSING_BASELINE": "04.00"},
    )
    cases.append(
        _s2_case(
            "S2 L2A baseline 04.00, PRODUCT_TYPE/PROCESSING_BASELINE tags",
            path,
            {},
            "sentinel2-dn",
        )
    )

    # 5. the same values without any metadata
    path = _write(root / "l2a_bare" / "s2_subset.tif", plus_1000, profile, S2_NATIVE)
    cases.append(
        _s2_case(
            "S2 L2A baseline 04.00, no metadata",
            path,
            {"baseline": "04.00"},
            "sentinel2-dn",
        )
    )

    # 6. float reflectance 0..1 (Sentinel Hub, GEE divide(10000), R/Python exports)
    refl = np.where(data > 0, data / 10000.0, np.nan).astype(np.float32)
    path = _write(
        root / "float01" / "s2_reflectance.tif", refl, profile | {"nodata": None}, S2_NATIVE
    )
    cases.append(
        _s2_case(
            "S2 reflectance float32 0..1",
            path,
            {},
            "reflectance",
        )
    )

    # 7. reflectance x 10000 stored as float (the issue's R export)
    path = _write(
        root / "float10k" / "s2_reflectance_x10000.tif",
        data.astype(np.float32),
        profile | {"nodata": 0},
        S2_NATIVE,
    )
    cases.append(
        _s2_case(
            "S2 reflectance x10000 as float32",
            path,
            {"encoding": "reflectance-x10000"},
            "reflectance-x10000",
            "refused by the plausibility check with the scale that fits",
        )
    )

    # 8. GDAL VRT over per-band files, named like its SAFE product
    folder = root / "vrt"
    for i, name in enumerate(S2_NATIVE):
        _write_cog(folder / "bands" / f"{name}.tif", data[i], profile)
    path = folder / "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102101.vrt"
    path.write_text(_vrt_xml(data.shape, profile, [f"bands/{n}.tif" for n in S2_NATIVE]))
    cases.append(
        _s2_case(
            "GDAL VRT over per-band files (SAFE-style name)",
            path,
            {},
            "sentinel2-dn",
        )
    )

    # 9. L2A granule band files (JPEG 2000, lossless), R10m-style names
    folder = root / "jp2" / "R10m"
    for i, name in enumerate(S2_NATIVE):
        jp2 = folder / f"T33UUU_20170216T102101_{name}_10m.jp2"
        folder.mkdir(parents=True, exist_ok=True)
        prof = {
            k: v
            for k, v in profile.items()
            if k not in ("blockxsize", "blockysize", "tiled", "compress", "predictor", "interleave")
        }
        prof.update(
            driver="JP2OpenJPEG",
            count=1,
            dtype="uint16",
            nodata=None,
            REVERSIBLE="YES",
            QUALITY=100,
        )
        with rasterio.open(jp2, "w", **prof) as dst:
            dst.write(data[i][None])
    cases.append(
        _s2_case(
            "S2 granule band files (JPEG 2000, *_B02_10m.jp2)",
            folder,
            {},
            "sentinel2-dn",
        )
    )
    return cases


def _vrt_xml(shape: tuple[int, ...], profile: dict[str, Any], files: list[str]) -> str:
    _, h, w = shape
    t = profile["transform"]
    bands = []
    for i, (name, f) in enumerate(zip(S2_NATIVE, files, strict=True), start=1):
        bands.append(
            f'  <VRTRasterBand dataType="UInt16" band="{i}">\n'
            f"    <Description>{name}</Description>\n"
            "    <NoDataValue>0</NoDataValue>\n"
            "    <SimpleSource>\n"
            f'      <SourceFilename relativeToVRT="1">{f}</SourceFilename>\n'
            "      <SourceBand>1</SourceBand>\n"
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
            f'      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
            "    </SimpleSource>\n"
            "  </VRTRasterBand>\n"
        )
    return (
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">\n'
        f"  <SRS>{profile['crs'].to_wkt()}</SRS>\n"
        f"  <GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>\n"
        + "".join(bands)
        + "</VRTDataset>\n"
    )


# ------------------------------------------------------------------ Landsat conventions


def _mtl_text(product: str, level: str, bands: list[int]) -> str:
    lines = [
        "GROUP = LANDSAT_METADATA_FILE",
        "  GROUP = PRODUCT_CONTENTS",
        f'    LANDSAT_PRODUCT_ID = "{product}"',
        f'    PROCESSING_LEVEL = "{level}"',
        "  END_GROUP = PRODUCT_CONTENTS",
        "  GROUP = IMAGE_ATTRIBUTES",
        '    SPACECRAFT_ID = "LANDSAT_5"',
        '    SENSOR_ID = "TM"',
        "    DATE_ACQUIRED = 2011-01-23",
        f"    SUN_ELEVATION = {SUN_ELEVATION:.8f}",
        "  END_GROUP = IMAGE_ATTRIBUTES",
        "  GROUP = LEVEL1_RADIOMETRIC_RESCALING",
    ]
    for b in bands:
        lines += [
            f"    REFLECTANCE_MULT_BAND_{b} = {MTL_MULT:.4E}",
            f"    REFLECTANCE_ADD_BAND_{b} = {MTL_ADD:.6f}",
        ]
    lines += [
        "  END_GROUP = LEVEL1_RADIOMETRIC_RESCALING",
        "END_GROUP = LANDSAT_METADATA_FILE",
        "END",
    ]
    return "\n".join(lines) + "\n"


def build_landsat(root: Path) -> list[Case]:
    data, profile = gewata()
    refl = data.astype(np.float64) * 1e-4
    cases = []

    # 10. the original: Collection-1 style SR x 10000 int16, bands described 1..7
    cases.append(
        Case(
            "Landsat SR x10000 int16, bands named 1..7 (the original)",
            GEWATA,
            {"sensor": "landsat-tm"},
            "landsat-tm",
            "reflectance-x10000",
            "gewata",
            TOL_EXACT,
            "landsat",
            "band numbers fit TM, ETM+ and OLI alike",
        )
    )

    # 11. Collection 2 Level-2 SR_B* files, product-id names
    product = "LT05_L2SP_170054_20110123_20200823_02_T1"
    folder = root / "c2l2" / product
    c2 = np.clip(np.round((refl + 0.2) / C2_SCALE), 1, 65535).astype(np.uint16)
    for i, b in enumerate(LANDSAT_BANDS):
        _write_cog(folder / f"{product}_SR_B{b}.TIF", c2[i], profile, nodata=0)
    cases.append(
        Case(
            "Landsat C2 L2 SR_B*.TIF files (product id names)",
            folder,
            {},
            "landsat-tm",
            "landsat-c2-l2",
            "gewata",
            TOL_C2L2,
            "landsat",
        )
    )

    # 12. Level-1 8-bit DN stack with the thermal band, MTL beside it
    product = "LT05_L1TP_170054_20110123_20200823_02_T1"
    sin = np.sin(np.radians(SUN_ELEVATION))
    dn = np.clip(np.round((refl * sin - MTL_ADD) / MTL_MULT), 1, 255).astype(np.uint8)
    stack = np.concatenate([dn[:5], dn[5:6], dn[5:6]])  # B1..B5, B6 (thermal), B7
    folder = root / "l1_mtl"
    path = _write(folder / f"{product}_stack.tif", stack, profile | {"nodata": 0})
    (folder / f"{product}_MTL.txt").write_text(_mtl_text(product, "L1TP", [1, 2, 3, 4, 5, 7]))
    unsaturated = (dn < 255).all(axis=0)
    cases.append(
        Case(
            "Landsat C2 L1 DN stack, 7 bands with thermal, MTL",
            path,
            {},
            "landsat-tm",
            "landsat-l1-dn",
            "gewata",
            TOL_L1,
            "landsat",
            f"{int((~unsaturated).sum())} saturated (DN 255) pixels not compared",
            compare=unsaturated,
        )
    )

    # 13. the same stack without its MTL: the declared per-scene fallback
    folder = root / "l1_bare"
    path = _write(folder / f"{product}_stack.tif", stack, profile | {"nodata": 0})
    cases.append(
        Case(
            "Landsat C2 L1 DN stack, no MTL (declared fallback)",
            path,
            {},
            "landsat-tm",
            "landsat-l1-dn",
            "index",
            1e-5,
            "landsat",
            "uncalibrated: compared by NDVI/NDWI, which the fallback keeps",
        )
    )
    return cases


# ------------------------------------------------------------------ NAIP


def build_naip(root: Path, shared: Path | None) -> list[Case]:
    target = root / "naip" / NAIP_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    real = shared / "naip-north-dakota" / NAIP_NAME if shared else None
    if real is not None and real.is_file():
        shutil.copy(real, target)
        note = "real NAIP from ../shared/data"
    else:
        data, profile = berlin()
        rgbn = np.clip(data[[2, 1, 0, 3]] / 3000.0 * 255, 0, 255).astype(np.uint8)
        _write(target, rgbn, profile | {"nodata": None})
        note = "Berlin B04,B03,B02,B08 stretched to 8 bit (shared data absent)"
    return [
        Case(
            "NAIP 4-band uint8 (quarter-quad name)",
            target,
            {},
            "naip",
            "uncalibrated-dn",
            "index",
            1e-5,
            "naip",
            note,
        )
    ]


def build_corpus(root: Path, shared: Path | None = None) -> list[Case]:
    """Every convention, written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return build_s2(root) + build_landsat(root) + build_naip(root, shared)


def dn_of(case: Case) -> np.ndarray:
    """The stored values of an uncalibrated case, (band, y, x) float64 in file order."""
    with rasterio.open(case.path) as src:
        return src.read().astype(np.float64)


def opened_difference(case: Case, scene: Any) -> float:
    """Max |reflectance - original| over the compared pixels (indices for 'index' cases)."""
    if case.reference == "index":
        dn = dn_of(case)
        prov = json.loads(scene.attrs["provenance"])
        pos = {
            b["code"]: int("".join(c for c in b["native"] if c.isdigit())) - 1
            for b in prov["bands"]
        }
        got, want = [], []
        for a, b in (("G", "N"), ("N", "R")):
            x, y = scene.sel(band=a).values.astype(np.float64), scene.sel(band=b).values
            got.append((x - y) / (x + y))
            dx, dy = dn[pos[a]], dn[pos[b]]
            with np.errstate(invalid="ignore", divide="ignore"):
                want.append((dx - dy) / (dx + dy))
        diff = np.abs(np.stack(got) - np.stack(want))
        return float(np.nanmax(diff))
    want = reference_reflectance(case.reference)
    got = scene.values.astype(np.float64)
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    diff = np.abs(got - want)
    if case.compare is not None:
        diff = diff[:, case.compare]
    return float(np.nanmax(diff))


def corpus_table(cases: list[Case]) -> str:
    """Markdown: convention, detected sensor and encoding, flags needed, max difference."""
    from pipeline.scene import open_scene

    rows = [
        "| convention | sensor | encoding | radiometry | flags needed "
        "| max reflectance difference | tolerance |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        scene = open_scene(case.path, **case.flags)
        diff = opened_difference(case, scene)
        what = "max index difference" if case.reference == "index" else ""
        flags = " ".join(case.cli_flags()) or "none"
        method = json.loads(scene.attrs["provenance"])["radiometry"]["method"]
        rows.append(
            f"| {case.name} | {scene.attrs['sensor']} | {scene.attrs['encoding']} | {method} "
            f"| {flags} "
            f"| {diff:.3g}{' (' + what + ')' if what else ''} | {case.tolerance:.3g} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the corpus table for the report
    sys.path.insert(0, str(REPO))
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/byo-corpus")
    shared_dir = REPO.parent / "shared" / "data"
    print(corpus_table(build_corpus(out, shared_dir if shared_dir.is_dir() else None)))
