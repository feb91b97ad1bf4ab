"""Figure composition without pyplot: colour maps, nearest upscaling, grids, colour bars, overlays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from auditor.drawing import (
    colorbar,
    colorize,
    overlay,
    stack,
    tile_grid,
    titled,
    to_png,
    upscale,
)


def test_colorize_maps_the_ends_and_clips_outside() -> None:
    values = np.array([[-1.0, 0.0, 1.0, 5.0]])
    rgb = colorize(values, "RdBu_r", -1.0, 1.0)
    expected_low = (np.array(colormaps["RdBu_r"](0.0)[:3]) * 255).round()
    expected_high = (np.array(colormaps["RdBu_r"](1.0)[:3]) * 255).round()
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0, 0], expected_low)
    assert np.array_equal(rgb[0, 2], expected_high) and np.array_equal(rgb[0, 3], expected_high)  # clipped
    middle = (np.array(colormaps["RdBu_r"](128 / 255)[:3]) * 255).round()
    assert np.array_equal(rgb[0, 1], middle)  # zero sits in the middle of a symmetric range


def test_upscale_is_nearest_neighbour_by_default() -> None:
    image = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # 1 x 2
    big = upscale(image, 8)
    assert big.shape == (4, 8, 3)
    assert set(np.unique(big)) == {0, 255}  # no blended grey: pixels stay visible
    assert (big[:, :4] == 0).all() and (big[:, 4:] == 255).all()


def test_tile_grid_places_tiles_row_by_row_with_padding() -> None:
    tiles = [np.full((4, 5, 3), value, np.uint8) for value in (10, 20, 30)]
    grid = np.asarray(tile_grid(tiles, columns=2, pad=1))
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[1:5, 1:6] == 10).all() and (grid[1:5, 7:12] == 20).all() and (grid[6:10, 1:6] == 30).all()
    assert (grid[6:10, 7:12] == 255).all()  # the empty cell stays background
    assert (grid[0] == 255).all()


def test_tile_labels_are_drawn_in_the_corner() -> None:
    tiles = [np.zeros((40, 40, 3), np.uint8)] * 2
    plain = np.asarray(tile_grid(tiles, 2, pad=0))
    labelled = np.asarray(tile_grid(tiles, 2, ["7", "12"], pad=0))
    changed = np.argwhere((plain != labelled).any(axis=2))
    assert len(changed) > 0 and changed[:, 0].max() < 20  # only the top-left label boxes differ


def test_overlay_blends_the_jet_map_over_the_photo() -> None:
    photo = np.full((2, 2, 3), 100, np.uint8)
    heat = np.array([[0.0, 1.0], [0.0, 1.0]])
    mixed = overlay(photo, heat, alpha=0.5)
    blue = (np.array(colormaps["jet"](0.0)[:3]) * 255).round()
    red = (np.array(colormaps["jet"](1.0)[:3]) * 255).round()
    assert np.allclose(mixed[0, 0], 0.5 * 100 + 0.5 * blue, atol=1)
    assert np.allclose(mixed[0, 1], 0.5 * 100 + 0.5 * red, atol=1)


def test_overlay_resizes_a_small_map_to_the_photo() -> None:
    assert overlay(np.zeros((32, 48, 3), np.uint8), np.random.default_rng(0).random((4, 6))).shape == (32, 48, 3)


def test_colorbar_stack_titled_and_png_round_trip() -> None:
    bar = colorbar("RdBu_r", -2.0, 2.0, 200, "weight")
    assert bar.width == 240
    sheet = stack([titled(np.zeros((50, 100, 3), np.uint8), "a title"), bar])
    assert sheet.width == 240 and sheet.height == 50 + 13 + 8 + bar.height + 6
    decoded = Image.open(io.BytesIO(to_png(sheet)))
    assert decoded.size == sheet.size and np.array_equal(np.asarray(decoded), np.asarray(sheet))


@pytest.mark.parametrize("title", ["short", "a title far too long to fit above a narrow picture of 60 px"])
def test_titled_keeps_the_image_width(title: str) -> None:
    assert titled(np.zeros((10, 60, 3), np.uint8), title).width == 60
