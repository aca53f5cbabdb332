"""VesselSeg's Slicer Logic: segment a volume node and put the result into the MRML scene.

No Qt and no ``slicer.app`` here: the class runs inside 3D Slicer (the module's ``VesselSegLogic`` derives
from it) and on a headless scene from ``VesselSegLib.mrml.scene.create_headless_scene``.

The work is split in three steps so that the module's widget can run the slow one in a worker thread:

1. ``prepareInputs`` (main thread): checks the nodes and parameters, copies the voxels and the geometry;
2. ``computeSegmentation`` (any thread): runs ``VesselSegLib.inference.pipeline.segment_image`` on the
   copies; it touches no MRML object at all;
3. ``addResultsToScene`` (main thread): creates the segmentation, probability volumes and models.

``process`` runs the three in a row for scripts and tests. Input nodes are never modified; a cancel or an
error leaves the scene as it was (new nodes removed, an existing output segmentation restored).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import slicer.util
import vtk

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.mrml.scene import get_ijk_to_ras, set_ijk_to_ras
from VesselSegLib.preprocessing.presets import MODALITY_PRESETS, get_preset
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME, vessel_class

if TYPE_CHECKING:  # torch is imported only when a segmentation runs (see _registry)
    from VesselSegLib.inference.pipeline import SegmentationResult
    from VesselSegLib.models.registry import ModelEntry, ModelRegistry

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]

#: Largest difference between two IJKToRAS matrix elements for grids to count as the same.
GEOMETRY_TOLERANCE = 1e-4
#: Share of the progress bar given to ``computeSegmentation``; the rest is scene building.
COMPUTE_PROGRESS_FRACTION = 0.9
MODELS_FOLDER_NAME = "VesselSeg models"

#: Python packages the library imports, as (import name, pip name); the module offers to install missing ones.
REQUIRED_PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("monai", "monai"),
    ("scipy", "scipy"),
    ("skimage", "scikit-image"),
    ("SimpleITK", "SimpleITK"),
    ("cc3d", "connected-components-3d"),
    ("safetensors", "safetensors"),
    ("tifffile", "tifffile"),
)


@dataclass
class VesselSegInputs:
    """Copies of everything a segmentation needs, made on the main thread by ``prepareInputs``.

    Attributes
    ----------
    inputVolume : vtkMRMLScalarVolumeNode
        The node the voxels came from (used only for names and the parent transform afterwards).
    image : ndarray, shape (Z, Y, X)
        A copy of the input voxels.
    spacingZYX : tuple of 3 float
        Voxel size, mm.
    ijkToRAS : ndarray, shape (4, 4)
        The input's IJK-to-RAS matrix when the copy was made; outputs are placed on this grid.
    mask : ndarray of bool, shape (Z, Y, X), or None
    segmentArguments : dict
        Keyword arguments for ``segment_image`` (modality, method, classes, device, patch, thresholds, ...).
    reference : ndarray, shape (Z, Y, X), or None
        A copy of the reference labels (class map or binary mask) to score the result against.
    referenceName : str
        The reference node's name, for the metrics table.
    """

    inputVolume: Any
    image: np.ndarray = field(repr=False)
    spacingZYX: tuple[float, float, float]
    ijkToRAS: np.ndarray
    mask: np.ndarray | None = field(repr=False)
    segmentArguments: dict[str, Any] = field(default_factory=dict)
    reference: np.ndarray | None = field(default=None, repr=False)
    referenceName: str = ""


@dataclass
class VesselSegOutputs:
    """What ``process``/``addResultsToScene`` created.

    Attributes
    ----------
    segmentationNode : vtkMRMLSegmentationNode
        One segment per produced class; ids and names "Artery", "Vein", "Micro-vessel".
    probabilityVolumeNodes : dict class name -> vtkMRMLScalarVolumeNode
        Float probability (or vesselness) maps on the input grid; empty unless asked for.
    modelNodes : dict class name -> vtkMRMLModelNode
        Closed-surface models in the class colours; empty unless asked for (or a class is empty).
    folderItemId : int
        Subject-hierarchy folder holding the models (0 when no models were made).
    result : SegmentationResult
        The library's result (class map, probabilities, method, timings).
    """

    segmentationNode: Any
    probabilityVolumeNodes: dict[str, Any]
    modelNodes: dict[str, Any]
    folderItemId: int
    result: SegmentationResult = field(repr=False)
    graph: Any = None
    """``VesselSegLib.graph.VesselGraph`` of the segmented vessels when asked for (``createGraph``)."""
    graphModelNode: Any = None
    """Centrelines as a model coloured by radius (mm)."""
    graphTableNode: Any = None
    """One row per vessel segment: kind, length, mean radius, tortuosity."""
    metrics: dict | None = None
    """Scores against the reference labels (``VesselSegLib.metrics.evaluate_against_reference``), if given."""
    referenceScoredAsBinary: bool = False
    """True when the reference was a plain vessel mask, scored as all vessels against all vessels."""
    metricsTableNode: Any = None
    """The metrics as a table: one row per scored class."""


def _report(callback: ProgressCallback | None, fraction: float, message: str) -> None:
    if callback is not None:
        callback(float(min(max(fraction, 0.0), 1.0)), message)


def _checkCancel(cancelCheck: CancelCheck | None) -> None:
    if cancelCheck is not None and cancelCheck():
        raise SegmentationCancelled("Segmentation cancelled by the user.")


def _scaled(callback: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A progress callback mapping [0, 1] onto [start, stop] of ``callback``."""
    if callback is None:
        return None
    return lambda fraction, message: callback(start + (stop - start) * fraction, message)


class VesselSegLogic:
    """Segment blood vessels of a scalar volume node into artery, vein and micro-vessel segments.

    Usable from the Python console, a script or a test::

        logic = VesselSegLogic()
        outputs = logic.process(volumeNode, modality="TOF-MRA")
        outputs.segmentationNode  # segments "Artery", ...

    Parameters mirror ``VesselSegLib.inference.pipeline.segment_image`` in Slicer's camelCase.
    """

    #: Model registry to use; None: the shipped ``Resources/Models/models.json`` (read on each use).
    registry: ModelRegistry | None = None

    def __init__(self, *args, **kwargs) -> None:
        # Cooperative: inside Slicer the module's class derives from this one and ScriptedLoadableModuleLogic.
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ registry and dependencies

    @staticmethod
    def missingPackages() -> list[tuple[str, str]]:
        """The required Python packages that are not installed, as (import name, pip name)."""
        return [
            (module, pip) for module, pip in REQUIRED_PACKAGES if importlib.util.find_spec(module) is None
        ]

    @staticmethod
    def modalityNames() -> list[str]:
        """Modality preset names ("TOF-MRA", "SWI", "2PM")."""
        return list(MODALITY_PRESETS)

    def _registry(self) -> ModelRegistry:
        # Imported here, not at module level: the registry imports torch, and the Slicer module must load
        # (and offer to install PyTorch) on a Slicer without it.
        from VesselSegLib.models.registry import ModelRegistry

        return self.registry if self.registry is not None else ModelRegistry.default()

    def availableMethods(self, modality: str) -> list[ModelEntry]:
        """Registry entries that handle ``modality`` (ValueError for an unknown preset)."""
        get_preset(modality)
        return self._registry().entries(modality)

    def defaultMethod(self, modality: str) -> str:
        """Name of the registry's recommended method for ``modality``."""
        get_preset(modality)
        return self._registry().default_for(modality).name

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _checkScalarVolume(node, role: str) -> None:
        if node is None:
            raise ValueError(f"No {role} selected; choose a volume.")
        if (
            not node.IsA("vtkMRMLScalarVolumeNode")
            or node.IsA("vtkMRMLVectorVolumeNode")
            or node.IsA("vtkMRMLDiffusionWeightedVolumeNode")
        ):
            raise ValueError(
                f"The {role} {node.GetName()!r} is a {node.GetClassName()}, not a scalar volume; choose a 3D "
                "scalar volume (extract a single component or frame of vector/4D images first)."
            )
        image = node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise ValueError(f"The {role} {node.GetName()!r} has no voxels; load image data into it first.")
        if image.GetNumberOfScalarComponents() != 1:
            raise ValueError(
                f"The {role} {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per "
                "voxel; choose a scalar volume."
            )

    @staticmethod
    def _checkSameGrid(node, inputVolume, role: str) -> None:
        inputDimensions = inputVolume.GetImageData().GetDimensions()
        dimensions = node.GetImageData().GetDimensions()
        difference = np.abs(get_ijk_to_ras(node) - get_ijk_to_ras(inputVolume)).max()
        if dimensions != inputDimensions or difference > GEOMETRY_TOLERANCE:
            raise ValueError(
                f"The {role} {node.GetName()!r} is not on the input volume's grid (dimensions "
                f"{dimensions} vs {inputDimensions}, largest IJKToRAS difference {difference:.3g}); "
                f"resample the {role} onto the input volume first (e.g. with the 'Resample Image (BRAINS)' "
                "module or Segmentations > Export to labelmap with the input as reference)."
            )

    def checkInputs(
        self,
        inputVolume,
        *,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        outputSegmentation=None,
        modality: str = "TOF-MRA",
        method: str | None = None,
        vesselClasses: Sequence[str] = ("artery", "vein", "micro"),
        referenceVolume=None,
    ) -> None:
        """Raise ValueError, with a message for the user, when the nodes or parameters cannot be used.

        Reads the nodes only; never changes them.
        """
        self._checkScalarVolume(inputVolume, "input volume")
        preset = get_preset(modality)
        if method is not None:
            entry = self._registry().get(method)
            if modality not in entry.modalities:
                raise ValueError(
                    f"Method {entry.display_name!r} is not made for {modality} images (it handles "
                    f"{', '.join(entry.modalities)}); pick another method or modality preset."
                )
        else:
            entry = self._registry().default_for(modality)
        classes = tuple(vesselClasses or ())
        if not classes:
            raise ValueError("No vessel class selected; tick at least one of Artery, Vein, Micro-vessel.")
        for name in classes:
            vessel_class(name)
        produced = entry.produced_classes or (preset.primary_vessel_class,)
        if not set(produced) & set(classes):
            names = ", ".join(VESSEL_CLASS_BY_NAME[c].display_name for c in produced)
            raise ValueError(
                f"{entry.display_name} segments only {names} on {modality} images; tick that class or choose "
                "another method."
            )
        if maskVolume is not None:
            self._checkScalarVolume(maskVolume, "brain mask")
            self._checkSameGrid(maskVolume, inputVolume, "brain mask")
        for companionModality, companionVolume in (companionVolumes or {}).items():
            get_preset(companionModality)  # raises on an unknown modality, listing the presets
            self._checkScalarVolume(companionVolume, f"{companionModality} companion volume")
            self._checkSameGrid(companionVolume, inputVolume, f"{companionModality} companion volume")
        if referenceVolume is not None:
            self._checkScalarVolume(referenceVolume, "reference labels")
            self._checkSameGrid(referenceVolume, inputVolume, "reference labels")
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(
                f"The output {outputSegmentation.GetName()!r} is a {outputSegmentation.GetClassName()}; "
                "choose a segmentation node or create a new one."
            )

    def isValidInputOutputData(self, inputVolume, maskVolume=None, outputSegmentation=None, **parameters):
        """(ok, message) for the Apply button: message says what to fix, or what Apply will do."""
        try:
            self.checkInputs(
                inputVolume, maskVolume=maskVolume, outputSegmentation=outputSegmentation, **parameters
            )
        except (ValueError, FileNotFoundError) as error:
            return False, str(error)
        return True, f"Segment the vessels of {inputVolume.GetName()!r}."

    # ------------------------------------------------------------------ the three steps

    def prepareInputs(
        self,
        inputVolume,
        *,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        outputSegmentation=None,
        modality: str = "TOF-MRA",
        method: str | None = None,
        vesselClasses: Sequence[str] = ("artery", "vein", "micro"),
        device: str = "auto",
        patchSizeZYX: Sequence[int] | None = None,
        overlap: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        minimumComponentMm3: float | None = None,
        keepProbabilities: bool = False,
        microscopyPreprocessing: Mapping[str, Any] | None = None,
        referenceVolume=None,
    ) -> VesselSegInputs:
        """Check the inputs and copy the voxels (main thread). See ``process`` for the parameters."""
        self.checkInputs(
            inputVolume,
            maskVolume=maskVolume,
            companionVolumes=companionVolumes,
            outputSegmentation=outputSegmentation,
            modality=modality,
            method=method,
            vesselClasses=vesselClasses,
            referenceVolume=referenceVolume,
        )
        image = np.array(slicer.util.arrayFromVolume(inputVolume), copy=True)  # (Z, Y, X)
        spacingZYX = tuple(float(s) for s in reversed(inputVolume.GetSpacing()))
        mask = None
        if maskVolume is not None:
            mask = np.array(slicer.util.arrayFromVolume(maskVolume)) > 0
            if not mask.any():
                raise ValueError(
                    f"The brain mask {maskVolume.GetName()!r} is empty; give a mask that covers the brain, "
                    "or none."
                )
        arguments: dict[str, Any] = {
            "modality": modality,
            "method": method,
            "vessel_classes": tuple(vesselClasses),
            "device": device,
            "patch_size_zyx": None if patchSizeZYX is None else tuple(int(p) for p in patchSizeZYX),
            "overlap": overlap,
            "thresholds": None if thresholds is None else dict(thresholds),
            "min_component_mm3": minimumComponentMm3,
            "keep_probabilities": keepProbabilities,
            "microscopy_preprocessing": dict(microscopyPreprocessing) if microscopyPreprocessing else None,
        }
        if companionVolumes:
            arguments["companion_images"] = {
                modality: np.array(slicer.util.arrayFromVolume(node), copy=True)
                for modality, node in companionVolumes.items()
            }
        if self.registry is not None:
            arguments["registry"] = self.registry
        return VesselSegInputs(
            inputVolume=inputVolume,
            image=image,
            spacingZYX=spacingZYX,
            ijkToRAS=get_ijk_to_ras(inputVolume),
            mask=mask,
            segmentArguments=arguments,
            reference=None
            if referenceVolume is None
            else np.array(slicer.util.arrayFromVolume(referenceVolume), copy=True),
            referenceName="" if referenceVolume is None else referenceVolume.GetName(),
        )

    @staticmethod
    def computeSegmentation(
        inputs: VesselSegInputs,
        *,
        progressCallback: ProgressCallback | None = None,
        cancelCheck: CancelCheck | None = None,
    ) -> SegmentationResult:
        """Run the segmentation on the copied arrays; safe in a worker thread (no MRML access).

        Raises
        ------
        VesselSegLib.errors.SegmentationCancelled
            ``cancelCheck()`` returned True.
        ValueError
            The library rejected the image or a parameter.
        """
        from VesselSegLib.inference.pipeline import segment_image  # imports torch; see _registry

        return segment_image(
            inputs.image,
            inputs.spacingZYX,
            brain_mask=inputs.mask,
            progress=progressCallback,
            cancel=cancelCheck,
            **inputs.segmentArguments,
        )

    def addResultsToScene(
        self,
        inputs: VesselSegInputs,
        result: SegmentationResult,
        *,
        outputSegmentation=None,
        createProbabilityVolumes: bool = False,
        createModels: bool = True,
        progressCallback: ProgressCallback | None = None,
        cancelCheck: CancelCheck | None = None,
    ) -> VesselSegOutputs:
        """Create the output nodes from ``result`` (main thread); on any error the scene is left as it was.

        Parameters
        ----------
        inputs : VesselSegInputs
            From ``prepareInputs``; gives the grid (IJKToRAS) and names.
        result : SegmentationResult
            From ``computeSegmentation``; its class map must have the input's shape.
        outputSegmentation : vtkMRMLSegmentationNode, optional
            Segments of the produced classes in it are replaced (others are kept); default: a new node.
        createProbabilityVolumes, createModels : bool
        progressCallback : callable(fraction, message), optional
        cancelCheck : callable() -> bool, optional
            Polled between steps; True undoes what was added and raises SegmentationCancelled.
        """
        classMap = np.asarray(result.class_map)
        if classMap.shape != inputs.image.shape:
            raise ValueError(
                f"The result's class map has shape {classMap.shape} but the input volume has "
                f"{inputs.image.shape}."
            )
        inputVolume = inputs.inputVolume
        scene = inputVolume.GetScene()
        if scene is None:
            raise ValueError(f"The input volume {inputVolume.GetName()!r} is no longer in a scene.")
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(f"The output {outputSegmentation.GetName()!r} is not a segmentation node.")

        nodeIdsBefore = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        restoreOutput = (
            self._snapshotSegmentation(outputSegmentation) if outputSegmentation is not None else None
        )
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        created = {"folder": 0}
        try:
            return self._addResults(
                inputs,
                result,
                scene,
                hierarchy,
                outputSegmentation,
                createProbabilityVolumes,
                createModels,
                progressCallback,
                cancelCheck,
                created,
            )
        except BaseException:
            # Undo: the new folder, the new nodes (newest first), then the existing output's content.
            if created["folder"] and hierarchy is not None:
                hierarchy.RemoveItem(created["folder"], False, True)
            newIds = [
                scene.GetNthNode(i).GetID()
                for i in range(scene.GetNumberOfNodes())
                if scene.GetNthNode(i).GetID() not in nodeIdsBefore
            ]
            for nodeId in reversed(newIds):
                node = scene.GetNodeByID(nodeId)
                if node is not None:
                    scene.RemoveNode(node)
            if restoreOutput is not None:
                restoreOutput()
            raise

    @staticmethod
    def _snapshotSegmentation(segmentationNode) -> Callable[[], None]:
        """A function putting back the segments, reference geometry and transform the node has now."""
        saved = slicer.vtkSegmentation()
        saved.DeepCopy(segmentationNode.GetSegmentation())
        role = segmentationNode.GetReferenceImageGeometryReferenceRole()
        referenceId = segmentationNode.GetNodeReferenceID(role)
        transformId = segmentationNode.GetTransformNodeID()

        def restore() -> None:
            segmentationNode.GetSegmentation().DeepCopy(saved)
            segmentationNode.SetNodeReferenceID(role, referenceId)
            segmentationNode.SetAndObserveTransformNodeID(transformId)
            segmentationNode.Modified()

        return restore

    def _addResults(
        self,
        inputs,
        result,
        scene,
        hierarchy,
        outputSegmentation,
        createProbabilityVolumes,
        createModels,
        progressCallback,
        cancelCheck,
        created,
    ) -> VesselSegOutputs:
        inputVolume = inputs.inputVolume
        baseName = inputVolume.GetName()
        transformId = inputVolume.GetTransformNodeID()
        classes = [VESSEL_CLASS_BY_NAME[name] for name in result.vessel_classes]

        _report(progressCallback, 0.0, "Creating the segmentation")
        segmentationNode = outputSegmentation
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{baseName} vessels")
            segmentationNode.SetAndObserveTransformNodeID(transformId)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        for vesselClass in classes:
            segmentId = vesselClass.display_name
            if segmentation.GetSegment(segmentId) is not None:
                segmentation.RemoveSegment(segmentId)
            segmentation.AddEmptySegment(segmentId, vesselClass.display_name, list(vesselClass.color_rgb))
            segmentIds.InsertNextValue(segmentId)

        # The class map goes in through a labelmap node on the input's grid, so the segments keep the input's
        # geometry exactly (direction, anisotropic spacing, parent transform). Label values are renumbered
        # 1..N in the order of segmentIds, which is how ImportLabelmapToSegmentationNode maps them.
        importMap = np.zeros(inputs.image.shape, dtype=np.uint8)
        for index, vesselClass in enumerate(classes, start=1):
            importMap[result.class_map == vesselClass.label_value] = index
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{baseName} VesselSeg labels")
        try:
            slicer.util.updateVolumeFromArray(labelmapNode, importMap)
            set_ijk_to_ras(labelmapNode, inputs.ijkToRAS)
            labelmapNode.SetAndObserveTransformNodeID(transformId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmapNode, segmentationNode, segmentIds
            ):
                raise RuntimeError("Importing the class map into the segmentation failed (see the log).")
        finally:
            scene.RemoveNode(labelmapNode)
        _checkCancel(cancelCheck)

        probabilityNodes: dict[str, Any] = {}
        if createProbabilityVolumes:
            _report(progressCallback, 0.2, "Creating probability volumes")
            for vesselClass in classes:
                probability = result.probabilities.get(vesselClass.name)
                if probability is None:
                    logger.warning(
                        "No probability map for %s; run with keep_probabilities.", vesselClass.name
                    )
                    continue
                node = scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", f"{baseName} {vesselClass.display_name} probability"
                )
                slicer.util.updateVolumeFromArray(node, np.asarray(probability, dtype=np.float32))
                set_ijk_to_ras(node, inputs.ijkToRAS)
                node.SetAndObserveTransformNodeID(transformId)
                node.CreateDefaultDisplayNodes()
                probabilityNodes[vesselClass.name] = node
            _checkCancel(cancelCheck)

        modelNodes: dict[str, Any] = {}
        if createModels:
            _report(progressCallback, 0.4, "Creating 3D models")
            segmentationNode.CreateClosedSurfaceRepresentation()
            _checkCancel(cancelCheck)
            if hierarchy is None:
                raise RuntimeError("The scene has no subject hierarchy; cannot create the models folder.")
            folderItemId = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), MODELS_FOLDER_NAME)
            created["folder"] = folderItemId
            for vesselClass in classes:
                segmentId = vesselClass.display_name
                surface = vtk.vtkPolyData()
                segmentationNode.GetClosedSurfaceRepresentation(segmentId, surface)
                if surface.GetNumberOfPoints() == 0:
                    logger.info("Segment %s is empty; no model made for it.", segmentId)
                    continue
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(segmentId)
                if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToModels(
                    segmentationNode, ids, folderItemId
                ):
                    raise RuntimeError(f"Exporting segment {segmentId} to a model failed (see the log).")
                modelNodes[vesselClass.name] = self._childModelNamed(hierarchy, folderItemId, segmentId)
            _report(progressCallback, 0.9, "Models created")
            _checkCancel(cancelCheck)
        else:
            folderItemId = 0

        _report(progressCallback, 1.0, "Done")
        volumes = result.volumes_mm3(inputs.spacingZYX)
        logger.info(
            "VesselSeg (%s, %s) on %r in %.1f s: %s",
            result.method_display_name,
            result.device,
            baseName,
            result.seconds,
            ", ".join(f"{name} {volume:.1f} mm3" for name, volume in volumes.items()),
        )
        return VesselSegOutputs(
            segmentationNode=segmentationNode,
            probabilityVolumeNodes=probabilityNodes,
            modelNodes=modelNodes,
            folderItemId=folderItemId,
            result=result,
        )

    @staticmethod
    def _childModelNamed(hierarchy, folderItemId: int, name: str):
        children = vtk.vtkIdList()
        hierarchy.GetItemChildren(folderItemId, children)
        for index in range(children.GetNumberOfIds()):
            node = hierarchy.GetItemDataNode(children.GetId(index))
            if node is not None and node.IsA("vtkMRMLModelNode") and node.GetName() == name:
                return node
        raise RuntimeError(f"The model of segment {name} was not found in the {MODELS_FOLDER_NAME!r} folder.")

    # ------------------------------------------------------------------ all in one

    def process(
        self,
        inputVolume,
        *,
        outputSegmentation=None,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        modality: str = "TOF-MRA",
        method: str | None = None,
        vesselClasses: Sequence[str] = ("artery", "vein", "micro"),
        device: str = "auto",
        patchSizeZYX: Sequence[int] | None = None,
        overlap: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        minimumComponentMm3: float | None = None,
        createProbabilityVolumes: bool = False,
        createModels: bool = True,
        createGraph: bool = False,
        keepProbabilities: bool | None = None,
        microscopyPreprocessing: Mapping[str, Any] | None = None,
        referenceVolume=None,
        progressCallback: ProgressCallback | None = None,
        cancelCheck: CancelCheck | None = None,
    ) -> VesselSegOutputs:
        """Segment the vessels of ``inputVolume`` and add the results to its scene (blocking).

        Parameters
        ----------
        inputVolume : vtkMRMLScalarVolumeNode
            Image to segment; never modified.
        outputSegmentation : vtkMRMLSegmentationNode, optional
            Where the segments go (segments of the produced classes are replaced); default: a new node.
        maskVolume : vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode, optional
            Brain mask (non-zero = inside) on the input's grid.
        companionVolumes : mapping modality -> vtkMRMLScalarVolumeNode, optional
            Co-registered images of other contrasts on the input's grid, for methods that read several
            (VC-Net: artery from TOF-MRA, vein and micro from SWI). Never modified.
        modality : {"TOF-MRA", "SWI", "2PM"}
        method : str, optional
            Registry name (``availableMethods``); default: the modality's default method.
        vesselClasses : sequence of {"artery", "vein", "micro"}
            Classes to keep among those the method produces.
        device : {"auto", "cpu", "cuda", "mps"}
        patchSizeZYX : 3 ints, optional
            Sliding-window patch (voxels); default: the method's.
        overlap : float, optional
            Sliding-window overlap in [0, 1); default: the method's.
        thresholds : mapping class name -> float, optional
            Probability thresholds; default: the method's, else 0.5.
        minimumComponentMm3 : float, optional
            Connected components smaller than this (mm^3) are removed; default: the preset's.
        createProbabilityVolumes, createModels : bool
        createGraph : bool
            Also extract the vessel graph (centrelines, lengths, radii, tortuosity) and add it as a model
            coloured by radius and a table node (``createVesselGraph``).
        microscopyPreprocessing : mapping, optional
            2PM stacks from another microscope: ``{"intensity_scale": None | factor, "subtract_slice_median":
            bool, "median_size": 3}`` (see ``segment_image``).
        keepProbabilities : bool, optional
            Keep the probability maps in ``outputs.result.probabilities`` (e.g. to write them to files);
            default: ``createProbabilityVolumes``.
        referenceVolume : vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode, optional
            Reference labels on the input's grid: a class map (1 artery, 2 vein, 3 micro) or a binary vessel
            mask. The result is scored against it (``outputs.metrics``) and a table node added
            (``evaluateAgainstReference``). Never modified.
        progressCallback : callable(fraction in [0, 1], message), optional
        cancelCheck : callable() -> bool, optional
            True cancels: SegmentationCancelled is raised and the scene is left unchanged.

        Returns
        -------
        VesselSegOutputs

        Raises
        ------
        ValueError
            Invalid input (no/not-scalar volume, mask on another grid, unknown method or modality, no class).
        VesselSegLib.errors.SegmentationCancelled
        """
        inputs = self.prepareInputs(
            inputVolume,
            maskVolume=maskVolume,
            companionVolumes=companionVolumes,
            outputSegmentation=outputSegmentation,
            modality=modality,
            method=method,
            vesselClasses=vesselClasses,
            device=device,
            patchSizeZYX=patchSizeZYX,
            overlap=overlap,
            thresholds=thresholds,
            minimumComponentMm3=minimumComponentMm3,
            keepProbabilities=createProbabilityVolumes if keepProbabilities is None else keepProbabilities,
            microscopyPreprocessing=microscopyPreprocessing,
            referenceVolume=referenceVolume,
        )
        result = self.computeSegmentation(
            inputs,
            progressCallback=_scaled(progressCallback, 0.0, COMPUTE_PROGRESS_FRACTION),
            cancelCheck=cancelCheck,
        )
        _checkCancel(cancelCheck)
        outputs = self.addResultsToScene(
            inputs,
            result,
            outputSegmentation=outputSegmentation,
            createProbabilityVolumes=createProbabilityVolumes,
            createModels=createModels,
            progressCallback=_scaled(progressCallback, COMPUTE_PROGRESS_FRACTION, 1.0),
            cancelCheck=cancelCheck,
        )
        if createGraph:
            outputs.graph, outputs.graphModelNode, outputs.graphTableNode = self.createVesselGraph(
                inputs, result
            )
        if inputs.reference is not None:
            outputs.metrics, outputs.referenceScoredAsBinary, outputs.metricsTableNode = (
                self.evaluateAgainstReference(inputs, result)
            )
        return outputs

    @staticmethod
    def evaluateAgainstReference(inputs: VesselSegInputs, result: SegmentationResult):
        """Score the result against the reference copied by ``prepareInputs`` and add a metrics table.

        A class-map reference is scored per class and for all vessels; a binary mask only for all vessels
        (``VesselSegLib.metrics.evaluate_against_reference``).

        Returns
        -------
        (metrics dict, scored as binary: bool, vtkMRMLTableNode)
        """
        from VesselSegLib.metrics import evaluate_against_reference
        from VesselSegLib.mrml.metrics_nodes import add_metrics_table

        if inputs.reference is None:
            raise ValueError("No reference labels were given; choose a reference volume to compute metrics.")
        metrics, binary = evaluate_against_reference(
            result.class_map, inputs.reference, inputs.spacingZYX, class_names=result.vessel_classes
        )
        table = add_metrics_table(
            inputs.inputVolume.GetScene(),
            metrics,
            f"{inputs.inputVolume.GetName()} vs {inputs.referenceName}",
        )
        return metrics, binary, table

    @staticmethod
    def createVesselGraph(inputs: VesselSegInputs, result: SegmentationResult, vesselClasses=None):
        """Centreline graph of the segmented vessels (all produced classes, or ``vesselClasses``), added to
        the input's scene as a model coloured by radius and a table of segments.

        Returns
        -------
        (VesselGraph, vtkMRMLModelNode, vtkMRMLTableNode)
        """
        from VesselSegLib.graph import extract_vessel_graph
        from VesselSegLib.mrml.graph_nodes import add_vessel_graph_to_scene

        classes = tuple(vesselClasses or result.vessel_classes)
        labels = [VESSEL_CLASS_BY_NAME[name].label_value for name in classes]
        graph = extract_vessel_graph(np.isin(result.class_map, labels), inputs.spacingZYX)
        model, table = add_vessel_graph_to_scene(
            inputs.inputVolume.GetScene(), graph, inputs.ijkToRAS, f"{inputs.inputVolume.GetName()} vessel"
        )
        return graph, model, table
