"""The CTL crop rules on hand-made boxes; every expected pixel box is computed in the comments."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.crop import (
    CropResult,
    CropStats,
    box_in_crop,
    crop_box,
    drop_reason_for_category,
    validate_bbox,
)
from training.stl import BBox


def test_grows_by_five_percent_of_the_image_height_and_keeps_above() -> None:
    # 100x200, box rows 100..180; grown: top 0.45*200 = 90, bottom 0.95*200 = 190.
    # above (0,0,100,90) = 9000 px, below (0,190,100,200) = 1000 px -> above.
    assert crop_box((0.3, 0.5, 0.7, 0.9), 100, 200) == CropResult((0, 0, 100, 90), "ok")


def test_keeps_below_when_it_is_larger() -> None:
    # 100x100, grown top 5, bottom 35: above 500 px, below (0,35,100,100) 6500 px.
    assert crop_box((0.2, 0.1, 0.8, 0.3), 100, 100).box == (0, 35, 100, 100)


def test_growth_uses_the_width_for_left_and_right() -> None:
    # 200x100 home, box cols 120..180: grown left 0.55*200 = 110, right 0.95*200 = 190.
    # above/below: top 0.05*100 = 5, bottom 0.95*100 = 95 -> 1000 px each;
    # left (0,0,110,100) = 11000 px, right (190,0,200,100) = 1000 px -> left.
    assert crop_box((0.6, 0.1, 0.9, 0.9), 200, 100, "home").box == (0, 0, 110, 100)


def test_fashion_never_crops_left_or_right() -> None:
    # The home example above in fashion: above/below are 1000 px < 1/5 of 20000 -> dropped.
    assert crop_box((0.6, 0.1, 0.9, 0.9), 200, 100, "fashion") == CropResult(None, "crop_too_small")


def test_home_keeps_the_right_side() -> None:
    # 100x100, box cols 10..30: grown right 35 -> right (35,0,100,100) = 6500 px.
    assert crop_box((0.1, 0.1, 0.3, 0.9), 100, 100, "home").box == (35, 0, 100, 100)


def test_ties_go_to_the_first_candidate() -> None:
    # 200x100, box rows 40..60: grown 35..65, above (0,0,200,35) and below (0,65,200,100)
    # are both 7000 px -> above.
    assert crop_box((0.25, 0.4, 0.75, 0.6), 200, 100).box == (0, 0, 200, 35)


def test_area_threshold_is_one_fifth_of_the_image() -> None:
    # 100x100: grown top 20 -> above 2000 px = exactly 1/5 -> kept.
    assert crop_box((0.0, 0.25, 1.0, 1.0), 100, 100).box == (0, 0, 100, 20)
    # grown top 19 -> 1900 px < 2000 -> dropped.
    assert crop_box((0.0, 0.24, 1.0, 1.0), 100, 100) == CropResult(None, "crop_too_small")
    # A lower threshold keeps it.
    assert crop_box((0.0, 0.24, 1.0, 1.0), 100, 100, min_area_fraction=0.1).box is not None


def test_box_touching_the_top_border() -> None:
    # Grown top clips to 0, so above is empty; grown bottom 55 -> below (0,55,100,100).
    assert crop_box((0.2, 0.0, 0.8, 0.5), 100, 100).box == (0, 55, 100, 100)


def test_box_touching_the_bottom_border() -> None:
    # Grown bottom clips to 100, so below is empty; grown top 45 -> above (0,0,100,45).
    assert crop_box((0.2, 0.5, 0.8, 1.0), 100, 100).box == (0, 0, 100, 45)


def test_full_height_box() -> None:
    # Fashion: nothing above or below -> dropped.
    assert crop_box((0.4, 0.0, 0.6, 1.0), 100, 100) == CropResult(None, "crop_too_small")
    # Home: grown cols 35..65, left (0,0,35,100) and right (65,0,100,100) tie -> left.
    assert crop_box((0.4, 0.0, 0.6, 1.0), 100, 100, "home").box == (0, 0, 35, 100)


def test_whole_image_box_is_dropped_in_both_domains() -> None:
    for domain in ("fashion", "home"):
        assert crop_box((0.0, 0.0, 1.0, 1.0), 50, 80, domain).reason == "crop_too_small"


def test_tiny_image() -> None:
    # 8x8, box rows 4..8: grown top round(0.45*8) = round(3.6) = 4 -> above (0,0,8,4) = 32 px,
    # at least 1/5 of 64 px.
    assert crop_box((0.25, 0.5, 0.75, 1.0), 8, 8) == CropResult((0, 0, 8, 4), "ok")


def test_empty_image() -> None:
    assert crop_box((0.1, 0.1, 0.5, 0.5), 0, 10) == CropResult(None, "empty_image")


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ((0.8, 0.1, 0.2, 0.5), "bbox_inverted"),
        ((0.1, 0.5, 0.5, 0.2), "bbox_inverted"),
        ((-0.1, 0.1, 0.5, 0.5), "bbox_out_of_bounds"),
        ((0.1, 0.1, 1.2, 0.5), "bbox_out_of_bounds"),
        ((0.1, 0.1, 0.5, math.inf), "bbox_out_of_bounds"),
        ((0.3, 0.3, 0.3, 0.6), "bbox_zero_area"),
        ((0.1, 0.4, 0.6, 0.4), "bbox_zero_area"),
        ((math.nan, 0.1, 0.5, 0.5), "malformed_bbox"),
    ],
)
def test_invalid_boxes_are_skipped_with_their_reason(bbox: BBox, reason: str) -> None:
    assert validate_bbox(bbox) == reason
    assert crop_box(bbox, 100, 100, "home") == CropResult(None, reason)


def test_valid_box_has_no_reason() -> None:
    assert validate_bbox((0.0, 0.0, 1.0, 1.0)) is None


def test_unknown_domain_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown domain 'kitchen'"):
        crop_box((0.8, 0.1, 0.2, 0.5), 100, 100, "kitchen")


def test_crop_stats_count_kept_and_reasons() -> None:
    stats = CropStats()
    boxes: list[BBox] = [
        (0.3, 0.5, 0.7, 0.9),  # ok
        (0.4, 0.0, 0.6, 1.0),  # crop_too_small
        (0.8, 0.1, 0.2, 0.5),  # bbox_inverted
        (0.3, 0.3, 0.3, 0.6),  # bbox_zero_area
        (0.2, 0.1, 0.8, 0.3),  # ok
    ]
    for bbox in boxes:
        stats.add(crop_box(bbox, 100, 200).reason)
    stats.add(drop_reason_for_category("Dresses") or "ok")
    assert stats.as_dict() == {
        "kept": 2,
        "dropped": {"bbox_inverted": 1, "bbox_zero_area": 1, "crop_too_small": 1, "dress": 1},
    }


def test_dresses_and_uncategorized_products_are_dropped() -> None:
    assert drop_reason_for_category("Dresses") == "dress"
    assert drop_reason_for_category(None) == "no_category"
    assert drop_reason_for_category("Shoes") is None


def test_box_in_crop_maps_and_clips() -> None:
    crop = (0, 0, 100, 90)  # of a 100x200 scene
    # rows 20..60 of the scene -> 20/90..60/90 of the crop.
    assert box_in_crop((0.1, 0.1, 0.5, 0.3), crop, 100, 200) == pytest.approx(
        (0.1, 20 / 90, 0.5, 60 / 90)
    )
    # rows 80..120: clipped at the crop's bottom.
    assert box_in_crop((0.1, 0.4, 0.5, 0.6), crop, 100, 200) == pytest.approx(
        (0.1, 80 / 90, 0.5, 1.0)
    )
    # rows 100..180: entirely below the crop.
    assert box_in_crop((0.1, 0.5, 0.5, 0.9), crop, 100, 200) is None


def test_box_in_crop_with_an_offset_crop() -> None:
    # crop (30,110,100,200) of 100x200; scene box cols 40..80, rows 120..160.
    assert box_in_crop((0.4, 0.6, 0.8, 0.8), (30, 110, 100, 200), 100, 200) == pytest.approx(
        (10 / 70, 10 / 90, 50 / 70, 50 / 90)
    )


def test_box_in_empty_crop_is_none() -> None:
    assert box_in_crop((0.1, 0.1, 0.5, 0.5), (10, 10, 10, 50), 100, 100) is None


_coord = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    a=_coord,
    b=_coord,
    c=_coord,
    d=_coord,
    w=st.integers(1, 600),
    h=st.integers(1, 600),
    domain=st.sampled_from(["fashion", "home"]),
)
def test_kept_crops_are_inside_big_enough_and_clear_of_the_product(
    a: float, b: float, c: float, d: float, w: int, h: int, domain: str
) -> None:
    left, right, top, bottom = min(a, c), max(a, c), min(b, d), max(b, d)
    result = crop_box((left, top, right, bottom), w, h, domain)
    if result.box is None:
        assert result.reason in ("crop_too_small", "bbox_zero_area")
        return
    cl, ct, cr, cb = result.box
    assert 0 <= cl < cr <= w and 0 <= ct < cb <= h
    assert (cr - cl) * (cb - ct) >= 0.2 * w * h
    if domain == "fashion":
        assert (cl, cr) == (0, w)
    # The crop shares no pixel row/column band with the product box (within rounding).
    px_box = (left * w, top * h, right * w, bottom * h)
    overlap_w = min(cr, px_box[2]) - max(cl, px_box[0])
    overlap_h = min(cb, px_box[3]) - max(ct, px_box[1])
    assert overlap_w <= 0.5 or overlap_h <= 0.5
