"""Voxel size and geometry from file metadata, read in one place for the eager and the lazy readers.

TIFF stacks (microscopy) carry their voxel size in one of these, tried in this order:

1. OME-XML: a side-car file given by the caller, or embedded in the first page (PhysicalSizeX/Y/Z with
   their units, micrometres by default);
2. ImageJ's ImageDescription: ``spacing`` (Z step) and ``unit`` (possibly escaped, ``\\u00B5m``), the X
   and Y pixel size being the XResolution and YResolution tags in pixels per that unit;
3. the TIFF resolution tags alone, in pixels per centimetre or inch: they give X and Y but no Z step, so
   they never make a complete spacing on their own.

NRRD files may state ``space units``; ITK ignores them (a stack in micrometres would be read 1000 times too
large), so :func:`nrrd_unit_in_mm` applies them for both readers. Every length VesselSeg returns is in mm.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MICROMETRE_IN_MM = 1e-3
LENGTH_UNIT_IN_MM = {
    "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3,
    "micrometers": 1e-3, "micrometres": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "nanometre": 1e-6,
    "nanometers": 1e-6, "nanometres": 1e-6, "mm": 1.0, "millimeter": 1.0, "millimetre": 1.0,
    "millimeters": 1.0, "millimetres": 1.0, "cm": 10.0, "centimeter": 10.0, "centimetre": 10.0,
    "centimeters": 10.0, "centimetres": 10.0, "m": 1e3, "meter": 1e3, "metre": 1e3, "meters": 1e3,
    "metres": 1e3, "å": 1e-7, "angstrom": 1e-7, "pm": 1e-9, "in": 25.4, "inch": 25.4,
}  # fmt: skip
#: TIFF ResolutionUnit tag values that are lengths: 2 inch, 3 centimetre (1 means "no unit").
_RESOLUTION_UNIT_IN_MM = {2: 25.4, 3: 10.0}
#: Largest deviation of a direction matrix's normalised columns from orthonormal still taken as rounding.
ORTHOGONALITY_TOLERANCE = 1e-4


def length_unit_in_mm(unit: Any) -> float | None:
    """Millimetres per ``unit`` (``'µm'``, ``'\\u00B5m'``, ``'micron'``, ``'nm'``, ``'cm'``...), or None.

    None means the unit is missing or not a length (ImageJ's ``'pixel'``): the caller must not guess one.
    """
    if unit is None:
        return None
    text = str(unit).strip().strip('"').strip()
    # ImageJ escapes the micro sign in its description; Greek mu (U+03BC) is a common look-alike.
    text = re.sub(r"\\u00[bB]5", "µ", text).replace("\u03bc", "µ")
    return LENGTH_UNIT_IN_MM.get(text.lower())


# ------------------------------------------------------------------------------------------------ TIFF


def ome_spacing_xyz_mm(xml: str) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size in mm from OME-XML's PhysicalSizeX/Y/Z (units default to micrometres, as OME says).

    Returns
    -------
    spacing_xyz : 3 floats or None
        None when an axis is missing or in a unit that is not a length.
    problem : str
        Why it is None ("" otherwise), for the caller's message.
    """
    # The first image's <Pixels> element; side-car files that are not strict OME are searched whole.
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    text = pixels.group(0) if pixels else xml
    sizes = []
    for axis in "XYZ":
        match = re.search(rf"PhysicalSize{axis}\s*=\s*[\"']([^\"']+)[\"']", text)
        if match is None:
            return None, f"its OME-XML has no PhysicalSize{axis}"
        unit_match = re.search(rf"PhysicalSize{axis}Unit\s*=\s*[\"']([^\"']+)[\"']", text)
        unit = unit_match.group(1) if unit_match else "µm"
        to_mm = length_unit_in_mm(unit)
        try:
            size = float(match.group(1))
        except ValueError:
            return None, f"its OME-XML PhysicalSize{axis} {match.group(1)!r} is not a number"
        if to_mm is None:
            return None, f"its OME-XML gives PhysicalSize{axis} in unknown unit {unit!r}"
        sizes.append(size * to_mm)
    return _positive(sizes, "OME-XML")


def _positive(sizes: Sequence[float], source: str) -> tuple[tuple[float, float, float] | None, str]:
    if not all(np.isfinite(s) and s > 0 for s in sizes):
        return None, f"its {source} voxel size {tuple(sizes)} is not positive"
    return (float(sizes[0]), float(sizes[1]), float(sizes[2])), ""


def _pixel_size(page: Any, tag: str, to_mm: float) -> float | None:
    resolution = page.tags.get(tag)
    if resolution is None:
        return None
    numerator, denominator = resolution.value  # pixels per unit, as a fraction
    return denominator / numerator * to_mm if numerator and denominator else None


def _imagej_spacing_xyz_mm(tiff: Any, imagej: dict) -> tuple[tuple[float, float, float] | None, str]:
    page = tiff.pages[0]
    unit_tag = page.tags.get("ResolutionUnit")
    if "unit" in imagej:
        to_mm = length_unit_in_mm(imagej["unit"])
        if to_mm is None:
            return None, f"its ImageJ unit {imagej['unit']!r} is not a length"
    else:  # ImageJ writes ResolutionUnit 3 for "cm", 2 for "inch"
        to_mm = _RESOLUTION_UNIT_IN_MM.get(int(unit_tag.value) if unit_tag is not None else 1)
        if to_mm is None:
            return None, "its ImageJ metadata has no unit"
    x = _pixel_size(page, "XResolution", to_mm)
    y = _pixel_size(page, "YResolution", to_mm) or x
    if x is None or "spacing" not in imagej:
        return None, "its ImageJ metadata has no " + ("pixel size" if x is None else "Z spacing")
    try:
        z = float(imagej["spacing"]) * to_mm
    except (TypeError, ValueError):
        return None, f"its ImageJ spacing {imagej['spacing']!r} is not a number"
    return _positive((x, y, z), "ImageJ")


def tiff_spacing_xyz_mm(
    tiff: Any, metadata_path: str | os.PathLike | None = None
) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size in mm of an open ``tifffile.TiffFile`` stack, from its metadata.

    Parameters
    ----------
    tiff : tifffile.TiffFile
    metadata_path : path, optional
        A side-car OME-XML file; it takes precedence over the file's own metadata.

    Returns
    -------
    spacing_xyz : 3 floats or None
        (X, Y, Z) in mm; None when no source gives all three.
    problem : str
        Why it is None ("" otherwise), e.g. "its ImageJ unit 'pixel' is not a length".
    """
    if metadata_path is not None:
        try:
            raw = Path(metadata_path).read_bytes()
        except OSError as error:
            raise ValueError(f"Cannot read the metadata file {metadata_path}: {error}.") from None
        try:
            xml = raw.decode("utf-8")
        except UnicodeDecodeError:  # side-cars saved as Latin-1 (VesselNN's) write the micro sign as 0xB5
            xml = raw.decode("latin-1")
        return ome_spacing_xyz_mm(xml)
    if tiff.is_ome and tiff.ome_metadata:
        return ome_spacing_xyz_mm(tiff.ome_metadata)
    imagej = tiff.imagej_metadata if tiff.is_imagej else None
    if imagej:
        return _imagej_spacing_xyz_mm(tiff, imagej)
    unit_tag = tiff.pages[0].tags.get("ResolutionUnit")
    to_mm = _RESOLUTION_UNIT_IN_MM.get(int(unit_tag.value) if unit_tag is not None else 2)
    if to_mm is not None and _pixel_size(tiff.pages[0], "XResolution", to_mm) is not None:
        return None, "its resolution tags give the X/Y pixel size but no Z spacing"
    return None, "it has no OME-XML, ImageJ or resolution metadata"


# ------------------------------------------------------------------------------------------------ NRRD


def nrrd_unit_in_mm(header: dict, name: str) -> float:
    """Millimetres per world unit of a NRRD header (pynrrd's dict): 1 without ``space units``.

    Raises
    ------
    ValueError
        Units that are not lengths, or different units on different axes.
    """
    units = [str(u).strip() for u in header.get("space units", []) if str(u).strip()]
    if not units:
        return 1.0
    scales = {length_unit_in_mm(unit) for unit in units}
    if None in scales:
        raise ValueError(
            f"NRRD {name} gives 'space units' {units}, not lengths VesselSeg knows; write it with units "
            "in mm (or um, nm, cm, m)."
        )
    if len(scales) > 1:
        raise ValueError(
            f"NRRD {name} gives different 'space units' per axis {units}; write it with one unit (mm)."
        )
    return scales.pop()


# -------------------------------------------------------------------------------------------- geometry


def is_orthogonal(direction: np.ndarray) -> bool:
    """Whether the axes of a (3, 3) direction (or direction times spacing) matrix are perpendicular."""
    columns = np.asarray(direction, dtype=float).reshape(3, 3)
    norms = np.linalg.norm(columns, axis=0)
    if not np.all(norms > 0):
        return False
    unit = columns / norms
    return bool(np.abs(unit.T @ unit - np.eye(3)).max() <= ORTHOGONALITY_TOLERANCE)


def refuse_sheared(direction: np.ndarray, name: str) -> None:
    """Raise for a non-orthogonal voxel grid.

    Every length, area and volume VesselSeg computes (Frangi scales, distances, voxel volume as the
    product of the spacings) assumes perpendicular axes, and NIfTI output (labels.nii.gz) would have its
    axes made perpendicular by ITK without a word: so a sheared grid is refused at read time.
    """
    if not is_orthogonal(direction):
        raise ValueError(
            f"{name} has a sheared voxel grid (non-orthogonal axes), which VesselSeg cannot keep; resample "
            "it onto an orthogonal grid first (e.g. with 3D Slicer's Resample Scalar/Vector/DWI Volume)."
        )


def nifti_sform_is_sheared(header: Any) -> bool:
    """Whether a NIfTI header (nibabel) has a coded sform with non-perpendicular axes.

    ITK reads such a file through its qform (always orthogonal) without a warning, so the grid it
    returns is not the one the file's sform states; nibabel shows the sform as written.
    """
    sform, code = header.get_sform(coded=True)
    return bool(code) and sform is not None and not is_orthogonal(sform[:3, :3])


__all__ = [
    "LENGTH_UNIT_IN_MM",
    "MICROMETRE_IN_MM",
    "is_orthogonal",
    "length_unit_in_mm",
    "nifti_sform_is_sheared",
    "nrrd_unit_in_mm",
    "ome_spacing_xyz_mm",
    "refuse_sheared",
    "tiff_spacing_xyz_mm",
]
