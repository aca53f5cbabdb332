"""A ``vtkMRMLScene`` that behaves like Slicer's for VesselSeg, without the Slicer application.

Inside 3D Slicer the application registers the segmentation converters, the default colour tables and
adds every new node to the subject hierarchy. A scene made from the PyPI package ``slicer-core`` does none
of that; ``prepare_headless_scene`` does the three things VesselSeg relies on (see
docs/HEADLESS_SLICER.md for the error each one avoids). ``load_volume_node`` builds a volume node from
a file read by ``VesselSegLib.io.read_volume`` with its exact geometry, since ``slicer.util.loadVolume``
needs the application.

Coordinate conventions: ITK/SimpleITK (and therefore ``Volume``) use LPS world coordinates, Slicer uses
RAS. The two differ by negating the first two world axes, so ``IJKToRAS = diag(-1, -1, 1, 1) @ IJKToLPS``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import slicer
import slicer.util
import vtk

from VesselSegLib.io.volume import Volume, read_volume

logger = logging.getLogger(__name__)

#: Multiplying LPS world coordinates by this gives RAS (and back): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# Objects that must live as long as their scene (the segmentations logic owns the converter registration
# and the observer callbacks must not be garbage collected), keyed by the scene's address. They hold the
# scene, so a prepared scene lives until release_headless_scene; the weak reference guards against a
# new scene reusing a released one's address.
_SCENE_HELPERS: dict[str, tuple] = {}


def ijk_to_ras_from_volume(volume: Volume) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of ``volume`` (ITK LPS origin/direction converted to RAS).

    Column ``c`` of the 3x3 part is ``LPS_TO_RAS @ direction[:, c] * spacing_xyz[c]``; the translation is
    ``LPS_TO_RAS @ origin_xyz``.
    """
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(volume.spacing_xyz, dtype=float))
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(volume.origin_xyz, dtype=float)
    return matrix


def volume_from_node(volume_node) -> Volume:
    """A copy of a volume node's voxels with its grid as a ``Volume`` (RAS converted to ITK's LPS).

    The inverse of ``ijk_to_ras_from_volume``; the node is not changed. Its parent transform is not applied
    (outputs are put under the same transform).
    """
    matrix = get_ijk_to_ras(volume_node)
    lps = LPS_TO_RAS @ matrix[:3, :3]  # LPS_TO_RAS is its own inverse
    spacing = np.linalg.norm(lps, axis=0)
    return Volume(
        array=np.array(slicer.util.arrayFromVolume(volume_node), copy=True),
        spacing_xyz=tuple(float(s) for s in spacing),
        origin_xyz=tuple(float(o) for o in LPS_TO_RAS @ matrix[:3, 3]),
        direction=lps / spacing,
    )


def get_ijk_to_ras(volume_node) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node as a numpy array."""
    vtk_matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(vtk_matrix)
    return slicer.util.arrayFromVTKMatrix(vtk_matrix).copy()


def set_ijk_to_ras(volume_node, matrix: np.ndarray) -> None:
    """Set a volume node's spacing, origin and directions from a 4x4 IJK-to-RAS matrix."""
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(matrix, dtype=float)))


def _hierarchy_callbacks(scene):
    """Scene-event callbacks keeping displayable nodes in the subject hierarchy, as Slicer's plugins do.

    Added nodes get an item under the scene; a removed node's item is removed with it (the subject-hierarchy
    node alone keeps a dangling item otherwise).
    """

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_added(caller, event, node):
        if node is None or not node.IsA("vtkMRMLDisplayableNode"):
            return
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is not None and not hierarchy.GetItemByDataNode(node):
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_about_to_be_removed(caller, event, node):
        if node is None or not node.IsA("vtkMRMLDisplayableNode"):
            return
        hierarchy = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
        item = hierarchy.GetItemByDataNode(node) if hierarchy is not None else 0
        if item:
            hierarchy.RemoveItem(item, False, False)  # keep the node (being removed anyway) and children

    return on_node_added, on_node_about_to_be_removed


def prepare_headless_scene(scene) -> None:
    """Give a bare ``vtkMRMLScene`` what the Slicer application would have set up; idempotent.

    - segmentation converters (``vtkSlicerSegmentationsModuleLogic.SetMRMLScene``), else
      ``AddEmptySegment`` fails with "Unable to construct empty representation";
    - default colour tables, else labelmaps report "vtkMRMLColorTableNodeLabels can't be found";
    - a subject-hierarchy node and scene observers creating an item for each displayable node added (and
      removing it with the node), else exported models cannot be put in a folder ("SetItemParent: Invalid
      item ID given").
    """
    key = scene.GetAddressAsString("vtkMRMLScene")
    if key in _SCENE_HELPERS and _SCENE_HELPERS[key][0].Get() is scene:
        return
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = application_logic.GetColorLogic()
    if color_logic is not None:
        color_logic.SetMRMLScene(scene)
        color_logic.AddDefaultColorNodes()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # creates it when missing
    on_added, on_removed = _hierarchy_callbacks(scene)
    tags = (
        scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, on_added),
        scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, on_removed),
    )
    reference = vtk.vtkWeakReference()
    reference.Set(scene)
    _SCENE_HELPERS[key] = (reference, segmentations_logic, application_logic, tags)


def release_headless_scene(scene) -> None:
    """Undo ``prepare_headless_scene``'s observers and logics so that the scene can be freed."""
    helpers = _SCENE_HELPERS.pop(scene.GetAddressAsString("vtkMRMLScene"), None)
    if helpers is None or helpers[0].Get() is not scene:
        return
    _reference, segmentations_logic, application_logic, tags = helpers
    for tag in tags:
        scene.RemoveObserver(tag)
    segmentations_logic.SetMRMLScene(None)
    if application_logic.GetColorLogic() is not None:
        application_logic.GetColorLogic().SetMRMLScene(None)
    application_logic.SetMRMLScene(None)
    if getattr(slicer, "mrmlScene", None) is scene and not hasattr(slicer, "app"):
        slicer.mrmlScene = None


def create_headless_scene():
    """A new ``vtkMRMLScene`` prepared by ``prepare_headless_scene``.

    Without the Slicer application (``slicer-core``), it also becomes ``slicer.mrmlScene`` so that
    ``slicer.util`` helpers that look nodes up there (``getNode``, ``addVolumeFromArray``) use it.
    """
    scene = slicer.vtkMRMLScene()
    prepare_headless_scene(scene)
    if not hasattr(slicer, "app"):
        slicer.mrmlScene = scene
    return scene


def load_volume_node(
    scene,
    path: str | os.PathLike,
    *,
    spacing_xyz: tuple[float, float, float] | None = None,
    name: str | None = None,
):
    """Read a volume file into a new ``vtkMRMLScalarVolumeNode`` of ``scene`` with its exact geometry.

    Parameters
    ----------
    scene : vtkMRMLScene
    path : path
        NIfTI, NRRD, MHA or TIFF stack (anything ``VesselSegLib.io.read_volume`` reads). Not modified.
    spacing_xyz : 3 floats, optional
        Voxel size in mm overriding the file's (TIFF stacks without metadata).
    name : str, optional
        Node name; defaults to the file name without its extension(s).

    Returns
    -------
    vtkMRMLScalarVolumeNode
        Voxels as in the file (dtype kept), IJKToRAS from the file's LPS origin, direction and spacing.
    """
    volume = read_volume(path, spacing_xyz=spacing_xyz)
    if name is None:
        name = Path(path).name
        for suffix in (".nii.gz", ".ome.tiff", ".ome.tif", ".seg.nrrd"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        else:
            name = Path(name).stem
    node = volume_node_from_volume(scene, volume, name)
    logger.info("Loaded %s as %r, shape (Z, Y, X) %s", path, name, volume.array.shape)
    return node


def volume_node_from_volume(scene, volume: Volume, name: str):
    """A new ``vtkMRMLScalarVolumeNode`` of ``scene`` holding a copy of ``volume`` on its exact grid."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    set_ijk_to_ras(node, ijk_to_ras_from_volume(volume))
    node.CreateDefaultDisplayNodes()
    return node
