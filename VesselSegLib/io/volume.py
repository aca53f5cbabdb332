"""Reading and writing volumes with their geometry (spacing, origin, direction) kept end to end.

NIfTI, NRRD and MHA go through SimpleITK, which converts every format to ITK's LPS world convention, so a
volume read and written back keeps its exact grid. Multi-page TIFF stacks (microscopy) go through tifffile
(+ imagecodecs for LZW/zlib); their voxel size comes from OME-XML (embedded or a side-car file), ImageJ
metadata, or the caller (:mod:`VesselSegLib.io.metadata`, shared with the lazy readers of
:mod:`VesselSegLib.io.lazy`), converted to millimetres so every length in VesselSeg is in mm.

Damaged data is refused rather than read as zeros: before SimpleITK reads a file, its voxel stream is read
to the end (:mod:`VesselSegLib.io.layout`: gzip CRC and length, the byte count the header promises), and
NaN/Inf voxels, a sheared (non-orthogonal) grid and NRRD ``space units`` other than mm are dealt with
explicitly, since SimpleITK zeroes the first in NIfTI, straightens the second in NIfTI and ignores the third.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VesselSegLib.io.atomic import atomic_write_path
from VesselSegLib.io.grid import Grid
from VesselSegLib.io.layout import (
    check_voxel_data,
    damaged,
    mha_voxel_data,
    nifti_voxel_data,
    read_nrrd_layout,
    refuse_non_finite,
)
from VesselSegLib.io.metadata import (
    MICROMETRE_IN_MM,
    is_orthogonal,
    nifti_sform_is_sheared,
    nrrd_unit_in_mm,
    refuse_sheared,
    tiff_spacing_xyz_mm,
)

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
SIMPLEITK_SUFFIXES = (*NIFTI_SUFFIXES, *NRRD_SUFFIXES, ".mha", ".mhd")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
SUPPORTED_SUFFIXES = SIMPLEITK_SUFFIXES + TIFF_SUFFIXES


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

    @property
    def grid(self) -> Grid:
        """The volume's physical grid (shape, spacing, origin, direction), to compare with another's."""
        return Grid(self.array.shape, self.spacing_xyz, self.origin_xyz, np.asarray(self.direction).ravel())

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


def _looks_like_dicom(folder: Path) -> bool:
    # A few files suffice: DICOM series are folders (and subfolders) of many small files.
    for item in itertools.islice((p for p in folder.rglob("*") if p.is_file()), 20):
        if item.suffix.lower() == ".dcm" or item.name.upper() == "DICOMDIR":
            return True
        try:
            with open(item, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":  # the DICOM Part 10 preamble
                    return True
        except OSError:
            continue
    return False


def require_volume_file(path: Path) -> None:
    """Raise a one-line ValueError unless ``path`` is an existing file (a folder gets its own message)."""
    if path.is_dir():
        hint = (
            "; for a DICOM series, convert it to NIfTI or NRRD first (e.g. with dcm2niix, or load it in "
            "3D Slicer's DICOM module and save it as .nrrd)"
            if _looks_like_dicom(path)
            else ""
        )
        raise ValueError(
            f"{path} is a folder, not a volume file; give a .nii.gz, .nrrd, .mha or .tif file{hint}."
        )
    if not path.is_file():
        raise ValueError(f"Input file {path} does not exist; check the path.")


def read_volume(
    path: str | os.PathLike,
    *,
    spacing_xyz: tuple[float, float, float] | None = None,
    metadata_path: str | os.PathLike | None = None,
) -> Volume:
    """Read a 3D volume from NIfTI, NRRD, MHA or a multi-page TIFF stack, refusing damaged data.

    Parameters
    ----------
    path : path
    spacing_xyz : 3 floats, optional
        Voxel size in mm (X, Y, Z); overrides what the file says (required for TIFF stacks without
        metadata).
    metadata_path : path, optional
        A side-car OME-XML file giving a TIFF stack's PhysicalSizeX/Y/Z.

    Returns
    -------
    Volume
        ``array`` of shape (Z, Y, X) with the file's data type; spacing in mm, origin and direction in LPS.
        ``volume.grid`` gives the :class:`~VesselSegLib.io.grid.Grid` to compare with another volume's.

    Raises
    ------
    ValueError
        One line naming the problem and the fix: a missing file or a folder, an unsupported format,
        unreadable content, data cut short or with a bad checksum ("... is truncated or damaged"), NaN or
        Inf voxels, a sheared (non-orthogonal) voxel grid, NRRD space units that are not lengths, or a
        stack that is not 3D.
    """
    path = Path(path)
    require_volume_file(path)
    suffix = _suffix(path)
    if suffix in TIFF_SUFFIXES:
        volume = _read_tiff(path, metadata_path, spacing_given=spacing_xyz is not None)
    elif suffix in SIMPLEITK_SUFFIXES:
        volume = _read_with_sitk(path, suffix)
    else:
        raise ValueError(
            f"Unsupported file type {suffix!r} for {path.name}; use one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    if spacing_xyz is not None:
        if len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
            raise ValueError(f"Spacing must be 3 positive numbers (x, y, z) in mm, got {spacing_xyz}.")
        volume.spacing_xyz = tuple(float(s) for s in spacing_xyz)
    return volume


def _sitk_read(path: Path) -> Volume:
    try:
        return Volume.from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ValueError(
            f"Cannot read {path}: {first_line}. Is the file complete and in a supported format?"
        ) from None


def _nifti_image(path: Path):
    import nibabel

    try:
        return nibabel.load(str(path))  # the header only: voxels are read on demand
    except Exception as error:  # nibabel raises many types for a cut or garbled header
        raise damaged(path.name, f"its NIfTI header cannot be read: {error}") from None


def _read_with_sitk(path: Path, suffix: str) -> Volume:
    """NIfTI, NRRD or MetaImage: the voxel stream is checked first, then SimpleITK reads the file."""
    hidden_non_finite = None  # SimpleITK's NIfTI reader turns NaN/Inf into 0: count them in the file
    unit_in_mm = 1.0
    if suffix in NIFTI_SUFFIXES:
        image = _nifti_image(path)
        if nifti_sform_is_sheared(image.header):  # ITK would silently read the orthogonal qform instead
            refuse_sheared(image.header.get_sform()[:3, :3], path.name)
        hidden_non_finite = check_voxel_data(nifti_voxel_data(path, image), path.name)
    elif suffix in NRRD_SUFFIXES:
        layout = read_nrrd_layout(path)
        unit_in_mm = nrrd_unit_in_mm(layout.header, path.name)
        if (data := layout.voxel_data()) is not None:
            check_voxel_data(data, path.name)
    elif (data := mha_voxel_data(path)) is not None:
        check_voxel_data(data, path.name)
    volume = _sitk_read(path)
    if unit_in_mm != 1.0:  # ITK ignores NRRD space units: lengths in um would be taken for mm
        volume.spacing_xyz = tuple(float(s) * unit_in_mm for s in volume.spacing_xyz)
        volume.origin_xyz = tuple(float(o) * unit_in_mm for o in volume.origin_xyz)
    refuse_sheared(volume.direction, path.name)
    refuse_non_finite(path.name, volume.array, count=hidden_non_finite)
    return volume


def _read_tiff(path: Path, metadata_path: str | os.PathLike | None, *, spacing_given: bool = False) -> Volume:
    import tifffile  # imported here: only microscopy users need it

    try:
        with tifffile.TiffFile(str(path)) as tiff:
            array = tiff.series[0].asarray()
            spacing, problem = tiff_spacing_xyz_mm(tiff, metadata_path)
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
    refuse_non_finite(path.name, array)
    if spacing is None:
        spacing = (MICROMETRE_IN_MM,) * 3
        if not spacing_given:  # the caller's spacing replaces it: nothing to warn about
            logger.warning(
                "TIFF %s has no voxel size in its metadata (%s); assuming 1 um isotropic. Pass the real "
                "spacing in mm (e.g. --spacing 0.000994 0.000994 0.005 on the command line).",
                path.name,
                problem,
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
    if suffix in NIFTI_SUFFIXES and not is_orthogonal(volume.direction):
        # ITK would write the nearest orthogonal axes, with a console warning only.
        raise ValueError(
            f"Cannot write {path.name}: the voxel grid is sheared (non-orthogonal axes), which NIfTI output "
            "would straighten; write .nrrd or .mha, which keep it."
        )
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
            try:
                sitk.WriteImage(volume.to_sitk(), str(temporary), useCompression=True)
            except RuntimeError as error:  # ITK reports a full disk or a permission error as a RuntimeError
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
                raise OSError(f"cannot write {path}: {reason}; free space or choose another folder") from None
    return path
