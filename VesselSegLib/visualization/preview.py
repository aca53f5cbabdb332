"""The preview picture: an axial maximum-intensity projection with the vessel classes overlaid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from VesselSegLib.vessel_classes import VESSEL_CLASSES

OVERLAY_OPACITY = 0.6


def render_preview(
    image: np.ndarray, class_map: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """RGB picture of the axial MIP of ``image`` with each class's projection tinted in its colour.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Intensities, normalised to bright vessels (``normalize_intensity``) so the MIP shows them.
    class_map : ndarray of uint8, shape (Z, Y, X)
    spacing_zyx : 3 floats
        Only the in-plane aspect ratio (Y vs X spacing) is used, to stretch rows so the picture is not
        distorted.

    Returns
    -------
    ndarray of float32, shape (Y', X, 3) in [0, 1]
        Y' = Y scaled by spacing_y / spacing_x. Where classes overlap along a ray, the one drawn last wins
        (micro under vein under artery, so large vessels stay visible).
    """
    if image.shape != class_map.shape or image.ndim != 3:
        raise ValueError(f"Image {image.shape} and class map {class_map.shape} must be the same 3D shape.")
    mip = image.max(axis=0).astype(np.float32)
    low, high = np.percentile(mip, (1, 99.8))
    gray = np.clip((mip - low) / max(high - low, 1e-6), 0, 1)
    picture = np.repeat(gray[..., None], 3, axis=2)
    for vessel in sorted(VESSEL_CLASSES, key=lambda c: -c.label_value):  # micro first, artery last
        projection = (class_map == vessel.label_value).any(axis=0)
        color = np.asarray(vessel.color_rgb, dtype=np.float32)
        picture[projection] = (1 - OVERLAY_OPACITY) * picture[projection] + OVERLAY_OPACITY * color
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    if not 0.95 < aspect < 1.05:  # nearest-neighbour row stretch keeps labels crisp
        rows = np.clip(
            np.round(np.arange(int(round(picture.shape[0] * aspect))) / aspect), 0, picture.shape[0] - 1
        )
        picture = picture[rows.astype(int)]
    return np.clip(picture, 0.0, 1.0, out=picture)  # float32 blending can overshoot 1 by an ulp


def write_preview(
    path: str | os.PathLike,
    image: np.ndarray,
    class_map: np.ndarray,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    title: str | None = None,
) -> Path:
    """Save :func:`render_preview` as a PNG with a colour legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    picture = render_preview(image, class_map, spacing_zyx)
    height, width = picture.shape[:2]
    figure = plt.figure(figsize=(6, 6 * height / width + 0.6), dpi=100)
    axes = figure.add_axes((0, 0.08, 1, 0.84 if title else 0.92))
    axes.imshow(picture, interpolation="nearest")
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    present = [c for c in VESSEL_CLASSES if (class_map == c.label_value).any()]
    figure.legend(
        handles=[Patch(color=c.color_rgb, label=c.display_name) for c in present],
        loc="lower center",
        ncol=max(len(present), 1),
        frameon=False,
        fontsize=9,
    )
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
