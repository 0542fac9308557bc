"""Targets and the Attribute Prompt Generator on real Landsat-7 tiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

from pipeline.apg import (
    INSTRUCTION_TEMPLATE,
    RegionAttributes,
    build_instruction,
    extract_regions,
    format_spectral_prompt,
    location_name,
    otsu_threshold,
    parse_spectral_prompt,
    run_apg,
    size_class,
)
from pipeline.errors import CatalogError, MissingBandError, SpexInputError
from pipeline.indices import index_from_stack
from pipeline.mask_codes import MASK_NODATA
from pipeline.targets import Target, index_for, load_target, target_names

BANDS = ["B", "G", "R", "N", "S1"]


@pytest.fixture(scope="module")
def raleigh(raleigh_pixels: np.ndarray) -> np.ndarray:
    return raleigh_pixels


@pytest.fixture(scope="module")
def tile(raleigh: np.ndarray) -> np.ndarray:
    """A 256 x 256 tile that includes the scene's nodata border."""
    out = raleigh[:, :256, :256]
    assert np.isnan(out).any() and np.isfinite(out).any()
    return out


# --- targets -------------------------------------------------------------------------


def test_targets_catalog() -> None:
    assert set(target_names()) == {"water", "vegetation", "building"}
    assert load_target("Water") == Target("water", "NDWI", "above", "water", 2, (30, 144, 255))
    assert load_target("vegetation").index == "NDVI"
    with pytest.raises(CatalogError, match="water, vegetation, building"):
        load_target("cloud")


def test_index_for_refuses_buildings_without_swir() -> None:
    assert index_for("building", BANDS) == "NDBI"
    assert index_for("water", ["R", "G", "B", "N"]) == "NDWI"
    with pytest.raises(MissingBandError) as err:
        index_for("building", ["B", "G", "R", "N"], sensor="gaofen2-pms")
    message = str(err.value)
    assert "NDBI needs S1 (SWIR" in message and "gaofen2-pms does not have" in message


def test_run_apg_refuses_instead_of_substituting(tile: np.ndarray) -> None:
    with pytest.raises(MissingBandError, match="NDBI needs S1"):
        run_apg(tile[:4], BANDS[:4], "building", sensor="naip")


# --- attribute classifiers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (1e-6, "very tiny"),
        (0.0305, "very tiny"),
        (0.0306, "small"),
        (0.0610, "small"),
        (0.0611, "somewhat large"),
        (0.1221, "somewhat large"),
        (0.1222, "medium"),
        (0.2441, "medium"),
        (0.2442, "large"),
        (0.3662, "large"),
        (0.3663, "very large"),
        (0.6104, "very large"),
        (0.6105, "huge"),
        (1.0, "huge"),
    ],
)
def test_size_class_bins(ratio: float, expected: str) -> None:
    assert size_class(ratio) == expected


def test_size_class_rejects_empty_region() -> None:
    with pytest.raises(ValueError):
        size_class(0.0)


@pytest.mark.parametrize(
    ("cx", "cy", "expected"),
    [
        (0.1, 0.1, "top-left"),
        (0.5, 0.1, "top-center"),
        (0.9, 0.1, "top-right"),
        (0.1, 0.5, "middle-left"),
        (0.5, 0.5, "center"),
        (0.9, 0.5, "middle-right"),
        (0.1, 0.9, "bottom-left"),
        (0.5, 0.9, "bottom-center"),
        (0.9, 0.9, "bottom-right"),
        (1 / 3, 2 / 3, "bottom-center"),  # thirds are half-open: [1/3, 2/3) is the middle
        (0.0, 1.0, "bottom-left"),
    ],
)
def test_location_grid(cx: float, cy: float, expected: str) -> None:
    assert location_name(cx, cy) == expected


def test_extract_regions_ties_and_geometry() -> None:
    mask = np.zeros((6, 9), dtype=np.uint8)
    mask[4:6, 0:2] = 1  # 4 px, first pixel later in scan order
    mask[0:2, 7:9] = 1  # 4 px, first pixel earlier in scan order
    mask[0, 0] = 1  # 1 px
    mask[2, 3] = mask[3, 4] = 1  # 2 px joined diagonally (8-connectivity)
    regions, n = extract_regions(mask)
    assert n == 4
    assert [r.area_px for r in regions] == [4, 4, 2, 1]
    assert regions[0].bbox == ((7 / 9, 0.0), (1.0, 0.0), (1.0, 2 / 6), (7 / 9, 2 / 6))
    assert regions[0].centroid == pytest.approx((8 / 9, 1 / 6))
    assert regions[0].location == "top-right" and regions[1].location == "bottom-left"
    assert regions[2].centroid == pytest.approx((4.0 / 9, 3.0 / 6))


# --- APG on real tiles ---------------------------------------------------------------


def test_apg_on_a_real_tile(tile: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_apg(tile, BANDS, "water")
    ndwi = index_from_stack("NDWI", tile, BANDS)
    valid = np.isfinite(ndwi)
    assert result.index == "NDWI"
    assert result.threshold == pytest.approx(threshold_otsu(ndwi[valid].astype(np.float64)))
    assert result.mask.dtype == np.uint8
    np.testing.assert_array_equal(result.mask == MASK_NODATA, ~valid)
    np.testing.assert_array_equal(result.mask == 1, valid & (ndwi > result.threshold))

    # independent check of the kept regions against skimage's regionprops
    props = regionprops(label(result.mask == 1, connectivity=2))
    assert result.n_regions_total == len(props) > 10
    assert len(result.regions) == 10
    largest = sorted((p.area for p in props), reverse=True)[:10]
    assert [r.area_px for r in result.regions] == largest
    h, w = result.mask.shape
    by_label = {p.label: p for p in props}
    for region in result.regions:
        p = by_label[region.label]
        r0, c0, r1, c1 = p.bbox
        assert region.bbox == (
            (c0 / w, r0 / h),
            (c1 / w, r0 / h),
            (c1 / w, r1 / h),
            (c0 / w, r1 / h),
        )
        cy, cx = p.centroid
        assert region.centroid == pytest.approx(((cx + 0.5) / w, (cy + 0.5) / h))
        assert region.area_ratio == p.area / (h * w)
        assert region.size == size_class(region.area_ratio)
        assert region.location == location_name(*region.centroid)

    assert result.instruction == build_instruction("water", result.regions)
    assert result.instruction.startswith(
        "Based on the provided image and the attributes of the water regions, please provide "
        "a detailed description of them: [{'Size of area': "
    )
    assert result.instruction.endswith(result.spectral_prompt)


def test_prompt_round_trip_and_determinism(tile: np.ndarray) -> None:
    first = run_apg(tile, BANDS, "vegetation")
    second = run_apg(tile.copy(), BANDS, "vegetation")
    assert first.spectral_prompt == second.spectral_prompt
    assert first.instruction == second.instruction
    np.testing.assert_array_equal(first.mask, second.mask)

    parsed = parse_spectral_prompt(first.spectral_prompt)
    assert parsed == [r.rounded() for r in first.regions]
    assert format_spectral_prompt(parsed) == first.spectral_prompt
    assert all(p.area_px is None for p in parsed)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "{'Size of area': 'small'}",
        "[{'Size of area': 'small', 'Centroid': (0.1, 0.2), 'Location': 'center'}]",
        "[{'Size of area': 'enormous', 'Centroid': (0.1, 0.2), 'Location': 'center', "
        "'Bounding box': [(0, 0), (1, 0), (1, 1), (0, 1)]}]",
        "[{'Size of area': 'small', 'Centroid': (0.1,), 'Location': 'center', "
        "'Bounding box': [(0, 0), (1, 0), (1, 1), (0, 1)]}]",
    ],
)
def test_parse_rejects_what_it_did_not_print(text: str) -> None:
    with pytest.raises(SpexInputError):
        parse_spectral_prompt(text)


def test_all_nodata_tile_gives_no_regions(tile: np.ndarray) -> None:
    empty = np.full_like(tile, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_apg(empty, BANDS, "vegetation")
    assert result.threshold is None and result.regions == []
    assert (result.mask == MASK_NODATA).all()
    assert result.spectral_prompt == "[]"
    assert result.instruction == INSTRUCTION_TEMPLATE.replace("[category]", "vegetation").replace(
        "[spectral prompt]", "[]"
    )
    assert otsu_threshold(empty) is None


def test_constant_tile_gives_no_regions(tile: np.ndarray) -> None:
    pixel = tile[:, 128, 128]
    assert np.isfinite(pixel).all()
    constant = np.broadcast_to(pixel[:, None, None], tile.shape).copy()
    result = run_apg(constant, BANDS, "vegetation")
    assert result.regions == [] and (result.mask == 0).all()
    assert result.threshold == pytest.approx((pixel[3] - pixel[2]) / (pixel[3] + pixel[2]))


def test_external_threshold_and_valid_mask_are_respected(tile: np.ndarray) -> None:
    ndvi = index_from_stack("NDVI", tile, BANDS)
    valid = np.ones(ndvi.shape, dtype=bool)
    valid[:, :64] = False
    result = run_apg(tile, BANDS, "vegetation", threshold=0.05, valid=valid)
    assert result.threshold == 0.05
    ok = np.isfinite(ndvi) & valid
    np.testing.assert_array_equal(result.mask == MASK_NODATA, ~ok)
    np.testing.assert_array_equal(result.mask == 1, ok & (ndvi > 0.05))


def test_otsu_on_a_decimated_sample(raleigh: np.ndarray) -> None:
    ndvi = index_from_stack("NDVI", raleigh, BANDS)
    full = otsu_threshold(ndvi)
    sample = otsu_threshold(ndvi[::4, ::4].ravel())
    assert full == pytest.approx(threshold_otsu(ndvi[np.isfinite(ndvi)].astype(np.float64)))
    assert sample == pytest.approx(full, abs=0.02)
    # same pixels, other storage dtype: same threshold
    assert otsu_threshold(ndvi.astype(np.float64)) == full


def test_region_attributes_prompt_dict() -> None:
    region = RegionAttributes(
        "small", (0.25, 0.75), "bottom-left", ((0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0))
    )
    assert format_spectral_prompt([region]) == (
        "[{'Size of area': 'small', 'Centroid': (0.250, 0.750), 'Location': 'bottom-left', "
        "'Bounding box': [(0.000, 0.500), (0.500, 0.500), (0.500, 1.000), (0.000, 1.000)]}]"
    )
    assert list(region.as_prompt_dict()) == [
        "Size of area",
        "Centroid",
        "Location",
        "Bounding box",
    ]


def test_region_labels_follow_raster_order_of_first_pixels() -> None:
    """extract_regions breaks area ties by the label, which stands for the scan position
    of the region's first pixel only because labels are numbered in raster order."""
    from pipeline.apg import label_regions

    rng = np.random.default_rng(7)
    for mask in (rng.random((300, 400)) > 0.55, rng.random((97, 61)) > 0.6):
        labels, n = label_regions(mask)
        flat = labels.ravel()
        firsts = [int(np.flatnonzero(flat == k)[0]) for k in range(1, n + 1)]
        assert n > 10 and firsts == sorted(firsts)
