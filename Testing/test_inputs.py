"""SegmentationInputs.check: the same refusals as the float32 validation, without copying the voxels, once."""

from __future__ import annotations

import numpy as np
import pytest

import VesselSegLib.inference.inputs as inputs_module
from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.io import Volume
from VesselSegLib.preprocessing.validation import check_image, validate_image


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((4, 5, 6), 3.0), "is constant"),
        (np.where(np.arange(120).reshape(4, 5, 6) == 7, np.nan, 1.0), "has 1 NaN or infinite voxels"),
        (
            np.where(np.arange(120).reshape(4, 5, 6) == 7, 1e300, 1.0),
            "has 1 NaN or infinite voxels",
        ),  # inf in float32
        (np.zeros((5, 6)), "must be a 3D scalar volume"),
        (np.zeros((4, 5, 6), dtype=complex), "data type"),
    ],
)
def test_check_image_refuses_what_validate_image_refuses(array, message):
    for check in (check_image, validate_image):
        with pytest.raises(ValueError, match=message):
            check(array)


def test_check_image_scans_slab_by_slab_to_the_same_verdict(monkeypatch):
    import VesselSegLib.preprocessing.validation as validation

    monkeypatch.setattr(validation, "_CHECK_SLAB_VOXELS", 30)  # one slice of 5 x 6 per slab
    array = np.ones((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match="is constant"):
        check_image(array)
    array[3, 4, 5] = 2.0  # the only different voxel is in the last slab
    check_image(array)
    array[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="has 1 NaN"):
        check_image(array)


def test_check_scans_the_voxels_once(monkeypatch):
    calls = []
    monkeypatch.setattr(inputs_module, "check_image", lambda array, name: calls.append(name))
    image = Volume(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    inputs = SegmentationInputs(image=image, companions={"SWI": image.with_array(image.array + 1)})
    for _ in range(3):
        inputs.check(("SWI",))
    assert len(calls) == 2  # the input and its companion, once each
    with pytest.raises(ValueError, match="were not given"):
        inputs.check(("SWI", "2PM"))
