"""Writing VesselSeg's MRML outputs to files with Slicer's own storage nodes (no Slicer application needed).

``slicer.util.saveNode`` needs the application; the storage nodes it uses work on their own. Files are
written under a temporary name in the target folder and renamed into place, so an interrupted write never
leaves a half-written file with the final name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from VesselSegLib.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

MODEL_FILE_FORMATS = ("vtk", "ply")


def _write_with_storage_node(node, path: Path, suffix: str) -> Path:
    """Write ``node`` to ``path`` through a storage node of its default kind; the scene is not changed."""
    if not path.parent.is_dir():
        raise ValueError(f"Output folder {path.parent} does not exist; create it or choose another path.")
    storage_node = node.CreateDefaultStorageNode()
    if storage_node is None:
        raise ValueError(f"{node.GetClassName()} {node.GetName()!r} cannot be written to a file.")
    # The storage node picks the format from the file name, so the temporary file keeps the real suffix.
    with atomic_write_path(path, suffix=suffix) as temporary:
        storage_node.SetFileName(str(temporary))
        if not storage_node.WriteData(node):
            raise OSError(
                f"Writing {node.GetName()!r} to {path} failed; see the log for the storage node's error."
            )
    return path


def write_segmentation(segmentationNode, path: str | os.PathLike) -> Path:
    """Write a segmentation node to a ``.seg.nrrd`` file (binary labelmap, segment names and colours).

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
    path : path
        Must end with ``.seg.nrrd``; its folder must exist.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise ValueError(f"Segmentation file name must end with .seg.nrrd, got {path.name!r}.")
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise ValueError("write_segmentation needs a vtkMRMLSegmentationNode.")
    _write_with_storage_node(segmentationNode, path, ".seg.nrrd")
    logger.info("Wrote segmentation %r to %s", segmentationNode.GetName(), path)
    return path


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "model"


def write_model_files(
    modelNodes: Mapping[str, object],
    directory: str | os.PathLike,
    *,
    file_format: str = "vtk",
) -> dict[str, Path]:
    """Write model nodes as surface files, one per node, named after the node (e.g. ``Artery.vtk``).

    Points are written in the LPS coordinate system, as Slicer's model storage node does by default (the
    ``.vtk`` header records it, and Slicer converts back to RAS when it reads the file).

    Parameters
    ----------
    modelNodes : mapping key -> vtkMRMLModelNode
        E.g. ``VesselSegOutputs.modelNodes`` (class name -> node).
    directory : path
        Created when missing.
    file_format : {"vtk", "ply"}

    Returns
    -------
    dict key -> Path
        The file written for each node.
    """
    if file_format not in MODEL_FILE_FORMATS:
        raise ValueError(
            f"Unknown model file format {file_format!r}; use one of {', '.join(MODEL_FILE_FORMATS)}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for key, node in modelNodes.items():
        if node is None or not node.IsA("vtkMRMLModelNode"):
            raise ValueError(
                f"Entry {key!r} is not a model node; write_model_files writes vtkMRMLModelNode only."
            )
        path = directory / f"{_file_stem(node.GetName())}.{file_format}"
        if path in written.values():
            path = directory / f"{_file_stem(node.GetName())}_{_file_stem(str(key))}.{file_format}"
        written[key] = _write_with_storage_node(node, path, f".{file_format}")
    logger.info("Wrote %d model file(s) to %s", len(written), directory)
    return written
