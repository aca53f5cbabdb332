"""Thick-slab MIP review of a vessel segmentation in Slicer's slice views (no Qt).

VC-Net builds on sliding maximum intensity projections (MIPs of slabs a few slices thick, taken every few
slices), the way angiograms are read: a projected slab shows vessels as connected tubes instead of
scattered dots. Slicer makes such slabs in its
slice views through the slice node's slab reconstruction (``vtkMRMLSliceNode``: enabled, thickness in mm,
type max/min/mean, oversampling factor), which ``vtkMRMLSliceLogic`` applies to the layers' reslicing, the
background volume included. ``apply_slab_review`` therefore

- enables slab reconstruction on each reviewed slice node with the thickness and projection asked for
  (``min`` for SWI, whose veins are dark; ``max`` for the bright-vessel modalities, see
  ``default_projection``);
- makes the input the background volume of each view's ``vtkMRMLSliceCompositeNode`` (matched by layout
  name, as ``vtkMRMLSliceLogic.GetSliceCompositeNode`` does);
- shows the segmentation as outlines only, one visibility toggle per vessel class (segments "Artery",
  "Vein", "Micro-vessel" of ``VesselSegLib.vessel_classes``); other segments are left as they are.

Every value it changes is first saved as JSON in an attribute of the changed node
(``SAVED_STATE_ATTRIBUTE``), so ``clear_slab_review`` puts back exactly what was there; the saved values
live in the scene, not in a widget or Logic object. Applying again (a new thickness, another segmentation)
keeps the first saved values. The segmentation outlines are those of the slab's central plane
(Slicer cuts segmentations with the slice plane; it does not project them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import vtk

from VesselSegLib.preprocessing.presets import get_preset
from VesselSegLib.vessel_classes import VESSEL_CLASSES, vessel_class

#: Projection name -> ``vtkImageReslice`` slab mode (the values ``vtkMRMLSliceNode`` stores).
SLAB_PROJECTIONS: dict[str, int] = {
    "max": vtk.VTK_IMAGE_SLAB_MAX,
    "min": vtk.VTK_IMAGE_SLAB_MIN,
    "mean": vtk.VTK_IMAGE_SLAB_MEAN,
}
DEFAULT_THICKNESS_MM = 10.0
#: Samples per slice spacing across the slab. Slicer's own default is 2; 1 keeps the slab closest to the
#: thickness asked for (Slicer divides the sample step by this factor without adding samples, see the
#: Slicer issue "Incorrect slab thickness in Thick Slab Reconstruction", #9402).
DEFAULT_OVERSAMPLING = 1.0
#: The slice views reviewed by default when the scene has them (Slicer's standard layouts).
MAIN_SLICE_VIEWS = ("Red", "Yellow", "Green")
#: Node attribute holding the values the review changed (JSON), removed again by ``clear_slab_review``.
SAVED_STATE_ATTRIBUTE = "VesselSeg.SlabReview.Saved"

_ALL_CLASSES = tuple(c.name for c in VESSEL_CLASSES)


def default_projection(modality: str) -> str:
    """``"min"`` where vessels are darker than tissue (SWI), ``"max"`` otherwise (TOF-MRA, 2PM)."""
    return "max" if get_preset(modality).vessels_bright else "min"


@dataclass(frozen=True)
class SlabReview:
    """Settings of a slab review, checked on creation (``ValueError`` with the rule that was broken).

    thickness_mm : slab thickness along the slice normal, in mm (> 0).
    projection : ``"max"``, ``"min"`` or ``"mean"`` (see ``default_projection``).
    visible_classes : vessel class names ("artery", "vein", "micro") whose outlines are shown; the other
        vessel classes are hidden. Kept in the order of ``VESSEL_CLASSES``.
    oversampling : slab samples per slice spacing (> 0).
    """

    thickness_mm: float = DEFAULT_THICKNESS_MM
    projection: str = "max"
    visible_classes: tuple[str, ...] = _ALL_CLASSES
    oversampling: float = DEFAULT_OVERSAMPLING

    def __post_init__(self) -> None:
        object.__setattr__(self, "thickness_mm", _positive_mm(self.thickness_mm, "Slab thickness"))
        object.__setattr__(self, "oversampling", _positive(self.oversampling, "Slab oversampling factor"))
        if self.projection not in SLAB_PROJECTIONS:
            raise ValueError(
                f"Unknown slab projection {self.projection!r}; choose one of: {', '.join(SLAB_PROJECTIONS)}."
            )
        if isinstance(self.visible_classes, str):
            raise ValueError(
                f"visible_classes must be a list of vessel class names, not the string {self.visible_classes!r}."
            )
        names = {vessel_class(name).name for name in self.visible_classes}  # ValueError for unknown names
        object.__setattr__(self, "visible_classes", tuple(n for n in _ALL_CLASSES if n in names))

    @classmethod
    def for_modality(cls, modality: str, **settings) -> SlabReview:
        """Settings with the modality's default projection unless ``projection`` is given."""
        settings.setdefault("projection", default_projection(modality))
        return cls(**settings)

    @property
    def slab_type(self) -> int:
        """The ``vtkMRMLSliceNode.SetSlabReconstructionType`` value (``VTK_IMAGE_SLAB_MAX``, ...)."""
        return SLAB_PROJECTIONS[self.projection]


@dataclass(frozen=True)
class SlabReviewApplied:
    """What ``apply_slab_review`` set up."""

    review: SlabReview
    slice_node_ids: tuple[str, ...]
    layout_names: tuple[str, ...]
    input_volume_id: str
    segmentation_node_id: str | None
    shown_segment_ids: tuple[str, ...] = ()
    hidden_segment_ids: tuple[str, ...] = ()
    #: Vessel classes asked to be shown that the segmentation has no segment for.
    missing_classes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        """One line for a status label."""
        names = zip(self.layout_names, self.slice_node_ids, strict=True)
        views = ", ".join(name or node_id for name, node_id in names)
        text = f"{self.review.projection.upper()} slab of {self.review.thickness_mm:g} mm in {views}"
        if self.segmentation_node_id is not None:
            shown = ", ".join(self.shown_segment_ids) or "none"
            text += f"; outlines: {shown}"
        if self.missing_classes:
            text += f"; no segment for: {', '.join(self.missing_classes)}"
        return text + "."


def _positive(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a positive number (got {value!r}).")
    return number


def _positive_mm(value, what: str) -> float:
    try:
        return _positive(value, what)
    except ValueError:
        raise ValueError(f"{what} must be a positive number of millimetres (got {value!r}).") from None


# --------------------------------------------------------------------------------------------- nodes


def _nodes_of_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def review_slice_nodes(scene, slice_node_ids: Iterable[str] | None = None) -> list:
    """The slice nodes a review changes: those named, else Red/Yellow/Green if present, else all.

    ``ValueError`` for an unknown ID, a node that is not a slice node, or a scene without slice nodes.
    """
    if slice_node_ids is not None:
        if isinstance(slice_node_ids, str):
            slice_node_ids = [slice_node_ids]
        nodes = []
        for node_id in slice_node_ids:
            node = scene.GetNodeByID(node_id)
            if node is None or not node.IsA("vtkMRMLSliceNode"):
                raise ValueError(f"{node_id!r} is not a slice node of this scene.")
            if node not in nodes:
                nodes.append(node)
        if not nodes:
            raise ValueError("No slice node was given to review in.")
        return nodes
    nodes = _nodes_of_class(scene, "vtkMRMLSliceNode")
    main = [n for name in MAIN_SLICE_VIEWS for n in nodes if n.GetLayoutName() == name]
    if main:
        return main
    if not nodes:
        raise ValueError("The scene has no slice views (vtkMRMLSliceNode) to show the slab review in.")
    return nodes


def slice_composite_node(scene, slice_node):
    """The ``vtkMRMLSliceCompositeNode`` of a slice view: the one with the slice node's layout name."""
    layout_name = slice_node.GetLayoutName()
    if layout_name:
        for node in _nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
            if node.GetLayoutName() == layout_name:
                return node
    return None


def _saved(node) -> dict | None:
    text = node.GetAttribute(SAVED_STATE_ATTRIBUTE)
    return json.loads(text) if text else None


def _save(node, state: dict) -> None:
    node.SetAttribute(SAVED_STATE_ATTRIBUTE, json.dumps(state, sort_keys=True))


def _reviewed_nodes(scene) -> list:
    """Nodes that carry saved review state (slice, composite and segmentation display nodes)."""
    return [
        node
        for class_name in ("vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode", "vtkMRMLSegmentationDisplayNode")
        for node in _nodes_of_class(scene, class_name)
        if node.GetAttribute(SAVED_STATE_ATTRIBUTE)
    ]


def is_slab_review_active(scene) -> bool:
    """Whether some node of ``scene`` still has values saved by ``apply_slab_review``."""
    return bool(_reviewed_nodes(scene))


# --------------------------------------------------------------------------------------------- state


def _slice_state(slice_node) -> dict:
    return {
        "enabled": bool(slice_node.GetSlabReconstructionEnabled()),
        "thickness": slice_node.GetSlabReconstructionThickness(),
        "type": int(slice_node.GetSlabReconstructionType()),
        "oversampling": slice_node.GetSlabReconstructionOversamplingFactor(),
    }


def _restore_slice(slice_node, state: dict) -> None:
    was_modifying = slice_node.StartModify()
    slice_node.SetSlabReconstructionEnabled(state["enabled"])
    slice_node.SetSlabReconstructionThickness(state["thickness"])
    slice_node.SetSlabReconstructionType(state["type"])
    slice_node.SetSlabReconstructionOversamplingFactor(state["oversampling"])
    slice_node.RemoveAttribute(SAVED_STATE_ATTRIBUTE)
    slice_node.EndModify(was_modifying)


def _restore_composite(composite_node, state: dict) -> None:
    scene = composite_node.GetScene()
    background = state["background"]
    if background and (scene is None or scene.GetNodeByID(background) is None):
        background = None  # removed since: do not leave a dangling reference
    was_modifying = composite_node.StartModify()
    composite_node.SetBackgroundVolumeID(background)
    composite_node.RemoveAttribute(SAVED_STATE_ATTRIBUTE)
    composite_node.EndModify(was_modifying)


def _segment_state(display_node, segment_id: str) -> dict:
    return {
        "visibility": bool(display_node.GetSegmentVisibility(segment_id)),
        "outline": bool(display_node.GetSegmentVisibility2DOutline(segment_id)),
    }


def _display_state(display_node) -> dict:
    return {
        "visibility": int(display_node.GetVisibility()),
        "visibility2D": int(display_node.GetVisibility2D()),
        "fill": int(display_node.GetVisibility2DFill()),
        "outline": int(display_node.GetVisibility2DOutline()),
        "segments": {},
    }


def _restore_display(display_node, state: dict) -> None:
    segmentation_node = display_node.GetDisplayableNode()
    segmentation = segmentation_node.GetSegmentation() if segmentation_node is not None else None
    was_modifying = display_node.StartModify()
    display_node.SetVisibility(state["visibility"])
    display_node.SetVisibility2D(state["visibility2D"])
    display_node.SetVisibility2DFill(state["fill"])
    display_node.SetVisibility2DOutline(state["outline"])
    for segment_id, segment in state["segments"].items():
        if segmentation is not None and segmentation.GetSegment(segment_id) is not None:
            display_node.SetSegmentVisibility(segment_id, segment["visibility"])
            display_node.SetSegmentVisibility2DOutline(segment_id, segment["outline"])
    display_node.RemoveAttribute(SAVED_STATE_ATTRIBUTE)
    display_node.EndModify(was_modifying)


def _restore(node) -> None:
    state = _saved(node)
    if state is None:
        return
    if node.IsA("vtkMRMLSliceNode"):
        _restore_slice(node, state)
    elif node.IsA("vtkMRMLSliceCompositeNode"):
        _restore_composite(node, state)
    elif node.IsA("vtkMRMLSegmentationDisplayNode"):
        _restore_display(node, state)


# --------------------------------------------------------------------------------------------- review


def _check_node(scene, node, class_name: str, role: str) -> None:
    if node is None:
        raise ValueError(f"Choose the {role} first.")
    if not node.IsA(class_name):
        raise ValueError(f"The {role} {node.GetName()!r} is a {node.GetClassName()}, not a {class_name}.")
    if node.GetScene() is not scene:
        raise ValueError(f"The {role} {node.GetName()!r} is not in this scene.")


def apply_slab_review(
    scene,
    input_volume,
    segmentation_node,
    *,
    thickness_mm: float = DEFAULT_THICKNESS_MM,
    projection: str = "max",
    visible_classes: Sequence[str] = _ALL_CLASSES,
    slice_node_ids: Iterable[str] | None = None,
    oversampling: float = DEFAULT_OVERSAMPLING,
) -> SlabReviewApplied:
    """Show ``input_volume`` as a thick-slab projection with the segmentation's outlines on top.

    Parameters
    ----------
    scene : vtkMRMLScene
    input_volume : vtkMRMLScalarVolumeNode
        Becomes the background volume of every reviewed view. Not modified.
    segmentation_node : vtkMRMLSegmentationNode or None
        Shown as outlines only (fill off); the vessel class segments are shown or hidden as
        ``visible_classes`` says, other segments are left alone. None: slab only.
    thickness_mm, projection, visible_classes, oversampling
        See ``SlabReview``; ``default_projection(modality)`` gives the modality's projection.
    slice_node_ids : IDs of slice nodes, optional
        Default: Red, Yellow and Green when the scene has them, else every slice node.

    Everything is checked before anything changes (``ValueError`` naming the problem). Nodes reviewed
    before but not by this call (another segmentation, a slice view no longer asked for) get their saved
    values back, so the scene shows exactly this review.
    """
    review = SlabReview(
        thickness_mm=thickness_mm,
        projection=projection,
        visible_classes=tuple(visible_classes),
        oversampling=oversampling,
    )
    if input_volume is not None and scene is None:
        raise ValueError("No MRML scene was given.")
    _check_node(scene, input_volume, "vtkMRMLScalarVolumeNode", "input volume")
    if input_volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"The input volume {input_volume.GetName()!r} is a labelmap, not an image.")
    if segmentation_node is not None:
        _check_node(scene, segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    slice_nodes = review_slice_nodes(scene, slice_node_ids)
    composites = []
    for slice_node in slice_nodes:
        composite = slice_composite_node(scene, slice_node)
        if composite is None:
            raise ValueError(
                f"The slice view {slice_node.GetLayoutName() or slice_node.GetID()!r} has no "
                "vtkMRMLSliceCompositeNode with its layout name; its background cannot be set."
            )
        composites.append(composite)

    display_node = None
    if segmentation_node is not None:
        display_node = segmentation_node.GetDisplayNode()
        if display_node is None:
            segmentation_node.CreateDefaultDisplayNodes()
            display_node = segmentation_node.GetDisplayNode()
    keep = {node.GetID() for node in (*slice_nodes, *composites, display_node) if node is not None}
    for node in _reviewed_nodes(scene):
        if node.GetID() not in keep:
            _restore(node)

    for slice_node in slice_nodes:
        if _saved(slice_node) is None:
            _save(slice_node, _slice_state(slice_node))
        was_modifying = slice_node.StartModify()
        slice_node.SetSlabReconstructionThickness(review.thickness_mm)
        slice_node.SetSlabReconstructionType(review.slab_type)
        slice_node.SetSlabReconstructionOversamplingFactor(review.oversampling)
        slice_node.SetSlabReconstructionEnabled(True)
        slice_node.EndModify(was_modifying)
    for composite in composites:
        if _saved(composite) is None:
            _save(composite, {"background": composite.GetBackgroundVolumeID()})
        composite.SetBackgroundVolumeID(input_volume.GetID())

    shown: list[str] = []
    hidden: list[str] = []
    missing: list[str] = []
    if display_node is not None:
        segmentation = segmentation_node.GetSegmentation()
        state = _saved(display_node) or _display_state(display_node)
        present = []
        for vessel in VESSEL_CLASSES:
            segment_id = vessel.display_name
            if segmentation.GetSegment(segment_id) is None:
                if vessel.name in review.visible_classes:
                    missing.append(vessel.name)
                continue
            present.append((vessel, segment_id))
            state["segments"].setdefault(segment_id, _segment_state(display_node, segment_id))
        _save(display_node, state)
        was_modifying = display_node.StartModify()
        display_node.SetVisibility(True)
        display_node.SetVisibility2D(True)
        display_node.SetVisibility2DFill(False)
        display_node.SetVisibility2DOutline(True)
        for vessel, segment_id in present:
            visible = vessel.name in review.visible_classes
            display_node.SetSegmentVisibility(segment_id, visible)
            if visible:
                display_node.SetSegmentVisibility2DOutline(segment_id, True)
            (shown if visible else hidden).append(segment_id)
        display_node.EndModify(was_modifying)

    return SlabReviewApplied(
        review=review,
        slice_node_ids=tuple(node.GetID() for node in slice_nodes),
        layout_names=tuple(node.GetLayoutName() or "" for node in slice_nodes),
        input_volume_id=input_volume.GetID(),
        segmentation_node_id=segmentation_node.GetID() if segmentation_node is not None else None,
        shown_segment_ids=tuple(shown),
        hidden_segment_ids=tuple(hidden),
        missing_classes=tuple(missing),
    )


def clear_slab_review(scene) -> list[str]:
    """Put back every value ``apply_slab_review`` changed in ``scene``; the IDs of the restored nodes.

    Idempotent (nothing saved: nothing done). A background volume removed since is not restored (the view
    is left empty), nor are segments removed since.
    """
    if scene is None:
        return []
    restored = []
    for node in _reviewed_nodes(scene):
        _restore(node)
        restored.append(node.GetID())
    return restored


__all__ = [
    "DEFAULT_OVERSAMPLING",
    "DEFAULT_THICKNESS_MM",
    "MAIN_SLICE_VIEWS",
    "SAVED_STATE_ATTRIBUTE",
    "SLAB_PROJECTIONS",
    "SlabReview",
    "SlabReviewApplied",
    "apply_slab_review",
    "clear_slab_review",
    "default_projection",
    "is_slab_review_active",
    "review_slice_nodes",
    "slice_composite_node",
]
