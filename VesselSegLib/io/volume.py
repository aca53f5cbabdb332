"""Reading and writing volumes with their geometry (spacing, origin, direction) kept end to end.

NIfTI, NRRD and MHA go through SimpleITK, which converts every format to ITK's LPS world convention, so a
volume read and written back keeps its exact grid. Multi-page TIFF stacks (microscopy) go through tifffile
(+ imagecodecs for LZW/zlib); their voxel size comes from OME-XML (embedded or a side-car file), ImageJ
metadata, or the caller, and micrometres are converted to millimetres so every length in VesselSeg is in mm.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VesselSegLib.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

SIMPLEITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
SUPPORTED_SUFFIXES = SIMPLEITK_SUFFIXES + TIFF_SUFFIXES
MICROMETRE_IN_MM = 1e-3
_LENGTH_UNIT_IN_MM = {"µm": 1e-3, "um": 1e-3, "micron": 1e-3, "nm": 1e-6, "mm": 1.0, "cm": 10.0, "m": 1e3}


@dataclass
class Volume:
    """A 3D scalar volume and its physical grid.

    Attributes
    ----------
    array : ndarray, shape (Z, Y, X)
        Voxel values, index order (slice, row, column).
    spacing_xyz : tuple of 3 float
        Voxel size in mm along the image's I, J, K axes (ITK order).
    origin_xyz : tuple of 3 float
        World position (mm, LPS) of the centre of voxel (0, 0, 0).
    direction : ndarray, shape (3, 3)
        Columns are the I, J, K axis directions in LPS world coordinates (ITK convention).
    """

    array: np.ndarray
    spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array-axis order."""
        return tuple(float(s) for s in reversed(self.spacing_xyz))

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume with another array (e.g. a label map) on this exact grid."""
        if array.shape != self.array.shape:
            raise ValueError(f"Array shape {array.shape} differs from the volume's grid {self.array.shape}.")
        return Volume(array, self.spacing_xyz, self.origin_xyz, self.direction.copy())

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(tuple(float(s) for s in self.spacing_xyz))
        image.SetOrigin(tuple(float(o) for o in self.origin_xyz))
        image.SetDirection(tuple(float(d) for d in np.asarray(self.direction).ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"Expected a 3D scalar image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} components per voxel; extract one 3D scalar volume first."
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_xyz=tuple(image.GetSpacing()),
            origin_xyz=tuple(image.GetOrigin()),
            direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_volume(
    path: str | os.PathLike,
    *,
    spacing_xyz: tuple[float, float, float] | None = None,
    metadata_path: str | os.PathLike | None = None,
) -> Volume:
    """Read a 3D volume from NIfTI, NRRD, MHA or a multi-page TIFF stack.

    Parameters
    ----------
    path : path
    spacing_xyz : 3 floats, optional
        Voxel size in mm; overrides what the file says (required for TIFF stacks without metadata).
    metadata_path : path, optional
        A side-car OME-XML file giving a TIFF stack's PhysicalSizeX/Y/Z.

    Raises
    ------
    ValueError
        Missing file, unsupported format, unreadable content, or a stack that is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Input file {path} does not exist; check the path.")
    suffix = _suffix(path)
    if suffix in TIFF_SUFFIXES:
        volume = _read_tiff(path, metadata_path, spacing_given=spacing_xyz is not None)
    elif suffix in SIMPLEITK_SUFFIXES:
        try:
            volume = Volume.from_sitk(sitk.ReadImage(str(path)))
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
            raise ValueError(
                f"Cannot read {path}: {first_line}. Is the file complete and in a supported format?"
            ) from None
    else:
        raise ValueError(
            f"Unsupported file type {suffix!r} for {path.name}; use one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    if spacing_xyz is not None:
        if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
            raise ValueError(f"Spacing must be 3 positive numbers (x, y, z) in mm, got {spacing_xyz}.")
        volume.spacing_xyz = tuple(float(s) for s in spacing_xyz)
    return volume


def _ome_physical_sizes_mm(xml: str) -> dict[str, float]:
    sizes: dict[str, float] = {}
    for axis in "XYZ":
        match = re.search(rf'PhysicalSize{axis}\s*=\s*"([0-9.eE+-]+)"', xml)
        if match:
            unit_match = re.search(rf'PhysicalSize{axis}Unit\s*=\s*"([^"]+)"', xml)
            unit = unit_match.group(1) if unit_match else "µm"  # OME's default unit
            sizes[axis] = float(match.group(1)) * _LENGTH_UNIT_IN_MM.get(unit, MICROMETRE_IN_MM)
    return sizes


def _read_tiff(path: Path, metadata_path: str | os.PathLike | None, *, spacing_given: bool = False) -> Volume:
    import tifffile  # imported here: only microscopy users need it

    try:
        with tifffile.TiffFile(str(path)) as tiff:
            array = tiff.series[0].asarray()
            ome_xml = tiff.ome_metadata if tiff.is_ome else None
            imagej = tiff.imagej_metadata if tiff.is_imagej else None
            x_resolution = tiff.pages[0].tags.get("XResolution")
            unit_tag = tiff.pages[0].tags.get("ResolutionUnit")
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as error:
        raise ValueError(
            f"Cannot read TIFF {path}: {error}. The file is damaged or not a TIFF; LZW-compressed stacks also "
            "need the 'imagecodecs' package (pip install imagecodecs)."
        ) from None
    array = np.squeeze(array)
    if array.ndim != 3:
        raise ValueError(
            f"TIFF {path.name} holds an array of shape {array.shape}; VesselSeg needs a 3D (Z, Y, X) stack with "
            "one channel. Split channels or time points first (e.g. in Fiji)."
        )
    sizes: dict[str, float] = {}
    if metadata_path is not None:
        sizes = _ome_physical_sizes_mm(Path(metadata_path).read_text(errors="replace"))
    elif ome_xml:
        sizes = _ome_physical_sizes_mm(ome_xml)
    elif imagej and "spacing" in imagej and x_resolution is not None:
        numerator, denominator = x_resolution.value
        unit = str(imagej.get("unit", "micron")).replace("\\u00B5", "µ")
        to_mm = _LENGTH_UNIT_IN_MM.get(unit, MICROMETRE_IN_MM)
        pixel = denominator / numerator * to_mm if numerator else None
        if pixel and unit_tag is not None and int(unit_tag.value) == 1:
            sizes = {"X": pixel, "Y": pixel, "Z": float(imagej["spacing"]) * to_mm}
    if len(sizes) == 3:
        spacing = (sizes["X"], sizes["Y"], sizes["Z"])
    else:
        spacing = (MICROMETRE_IN_MM,) * 3
        if not spacing_given:  # the caller's spacing replaces it: nothing to warn about
            logger.warning(
                "TIFF %s has no voxel size in its metadata; assuming 1 um isotropic. Pass the real spacing "
                "in mm (e.g. --spacing 0.000994 0.000994 0.005 on the command line).",
                path.name,
            )
    return Volume(array=array, spacing_xyz=spacing)


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path`` atomically (a temporary file renamed into place), keeping its geometry.

    The format follows the suffix: .nii(.gz), .nrrd, .mha through SimpleITK, .tif/.tiff through tifffile
    (with OME PhysicalSize metadata in um).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"Output folder {path.parent} does not exist; create it or choose another path.")
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES or suffix in (".nhdr", ".mhd"):
        raise ValueError(f"Cannot write {path.name}: use .nii.gz, .nii, .nrrd, .mha or .tif.")
    with atomic_write_path(path, suffix=suffix) as temporary:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            spacing_um = [s / MICROMETRE_IN_MM for s in volume.spacing_xyz]
            tifffile.imwrite(
                temporary,
                np.ascontiguousarray(volume.array),
                ome=True,
                compression="zlib",
                metadata={
                    "axes": "ZYX",
                    "PhysicalSizeX": spacing_um[0],
                    "PhysicalSizeY": spacing_um[1],
                    "PhysicalSizeZ": spacing_um[2],
                },
            )
        else:
            sitk.WriteImage(volume.to_sitk(), str(temporary), useCompression=True)
    return path
