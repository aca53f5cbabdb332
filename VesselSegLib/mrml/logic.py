"""VesselSeg's Slicer Logic: segment a volume node and put the result into the MRML scene.

No Qt and no ``slicer.app`` here: the class runs inside 3D Slicer (the module's ``VesselSegLogic`` derives
from it) and on a headless scene from ``VesselSegLib.mrml.scene.create_headless_scene``.

Every run is described by one :class:`VesselSegLib.request.SegmentationRequest` (the widget builds it from
the parameter node, the command line from its options) and goes through three steps, so that the module's
widget can run the slow one away from the GUI thread:

1. ``prepareInputs`` (main thread): checks the nodes and the request, copies the voxels and the geometry;
2. ``computeSegmentation`` (any thread or process): runs the library's driver
   (``VesselSegLib.inference.pipeline.run_segmentation``) on the copies; it touches no MRML object at all;
3. ``addResultsToScene`` (main thread): creates the segmentation, probability volumes, the method's
   auxiliary images (ROSE's super-resolved input), models, the vessel graph and the metrics table, all inside
   one :class:`~VesselSegLib.mrml.transaction.SceneTransaction`.

``process`` runs the three in a row for scripts, batch mode and tests. Input nodes are never modified; an
error, a cancel or a KeyboardInterrupt leaves the scene as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import slicer.util
import vtk

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.methods.base import refined_index_to_world
from VesselSegLib.mrml.scene import get_ijk_to_ras, set_ijk_to_ras, volume_from_node
from VesselSegLib.mrml.transaction import SceneTransaction
from VesselSegLib.preprocessing.presets import MODALITY_PRESETS, get_preset
from VesselSegLib.request import SegmentationPlan, SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

if TYPE_CHECKING:  # torch is imported only when a segmentation runs (see _registry)
    from VesselSegLib.inference.inputs import SegmentationInputs
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
#: The segmentation's labelmap-to-surface conversion (Slicer's conversion parameters): SurfaceNets ("Conversion
#: method" 1; 0 is flying edges), smoothed inside vtkSurfaceNets3D ("SurfaceNets smoothing" 1) rather than by
#: the windowed-sinc filter after it (benchmarks/benchmark_surfaces.py).
CLOSED_SURFACE_PARAMETERS = {"Conversion method": "1", "SurfaceNets smoothing": "1"}


@dataclass
class VesselSegInputs:
    """Copies of everything a segmentation needs, made on the main thread by ``prepareInputs``.

    Attributes
    ----------
    inputVolume : vtkMRMLScalarVolumeNode
        The node the voxels came from (used only for names and the parent transform afterwards).
    plan : SegmentationPlan
        The request, checked against the registry.
    volumes : SegmentationInputs
        Copies of the input, mask, companion and reference voxels with their grids.
    ijkToRAS : ndarray, shape (4, 4)
        The input's IJK-to-RAS matrix when the copy was made; outputs are placed on this grid (or a finer
        one covering the same box, for super-resolution methods).
    referenceName : str
        The reference node's name, for the metrics table.
    """

    inputVolume: Any
    plan: SegmentationPlan
    volumes: SegmentationInputs = field(repr=False)
    ijkToRAS: np.ndarray
    referenceName: str = ""

    @property
    def request(self) -> SegmentationRequest:
        return self.plan.request

    @property
    def image(self) -> np.ndarray:
        """The copied input voxels, shape (Z, Y, X)."""
        return self.volumes.image.array

    @property
    def reference(self) -> np.ndarray | None:
        return None if self.volumes.reference is None else self.volumes.reference.array


@dataclass
class VesselSegOutputs:
    """What ``process``/``addResultsToScene`` created.

    Attributes
    ----------
    segmentationNode : vtkMRMLSegmentationNode
        One segment per produced class; ids and names "Artery", "Vein", "Micro-vessel".
    probabilityVolumeNodes : dict class name -> vtkMRMLScalarVolumeNode
        Float probability (or vesselness) maps on the output grid; empty unless asked for.
    modelNodes : dict class name -> vtkMRMLModelNode
        Closed-surface models in the class colours; empty unless asked for (or a class is empty).
    folderItemId : int
        Subject-hierarchy folder holding the models (0 when no models were made).
    result : SegmentationResult
        The library's result (class map, probabilities, method, timings, resampling record).
    outputIJKToRAS : ndarray, shape (4, 4)
        Grid of the outputs: the input's, or a finer one for a super-resolution method.
    """

    segmentationNode: Any
    probabilityVolumeNodes: dict[str, Any]
    modelNodes: dict[str, Any]
    folderItemId: int
    result: SegmentationResult = field(repr=False)
    outputIJKToRAS: np.ndarray = field(default_factory=lambda: np.eye(4), repr=False)
    graph: Any = None
    """``VesselSegLib.graph.VesselGraph`` of the segmented vessels when asked for (``create_graph``)."""
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
    imageVolumeNodes: dict[str, Any] = field(default_factory=dict)
    """The method's auxiliary images (``SegmentationResult.images``) as float volumes on the output grid:
    ``"super_resolved"`` -> "<input> super-resolved" for ROSE; empty for most methods."""


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

        from VesselSegLib.request import SegmentationRequest
        logic = VesselSegLogic()
        outputs = logic.process(volumeNode, SegmentationRequest(modality="TOF-MRA"))
        outputs.segmentationNode  # segments "Artery", ...
    """

    #: Model registry to use; None: the shipped ``Resources/Models/models.json`` (read once, on first use).
    registry: ModelRegistry | None = None

    def __init__(self, *args, **kwargs) -> None:
        # Cooperative: inside Slicer the module's class derives from this one and ScriptedLoadableModuleLogic.
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ registry and dependencies

    @staticmethod
    def missingPackages() -> list[tuple[str, str]]:
        """The declared requirements that are not met, as (requirement, reason) for the install prompt."""
        from VesselSegLib.dependencies import missing_requirements

        inside = hasattr(slicer, "app")  # slicer-core has no application
        return [(unmet.requirement, unmet.reason) for unmet in missing_requirements(inside_slicer=inside)]

    @staticmethod
    def modalityNames() -> list[str]:
        """Modality preset names ("TOF-MRA", "SWI", "2PM")."""
        return list(MODALITY_PRESETS)

    def _registry(self) -> ModelRegistry:
        """The registry to use: ``self.registry``, else the shipped one, read once per Logic (the widget asks on
        every parameter change)."""
        # Imported here, not at module level: the Slicer module must load (and offer to install PyTorch) on a
        # Slicer without the library's dependencies.
        from VesselSegLib.models.registry import ModelRegistry

        if self.registry is not None:
            return self.registry
        if getattr(self, "_shippedRegistry", None) is None:
            self._shippedRegistry = ModelRegistry.default()
        return self._shippedRegistry

    def availableMethods(self, modality: str) -> list[ModelEntry]:
        """Registry entries that handle ``modality`` (ValueError for an unknown preset)."""
        return self._registry().entries(get_preset(modality).name)

    def methodCanAdapt(self, name: str) -> bool:
        """Whether method ``name`` can adapt to the stack before segmenting (UMIS's label-free test-time
        training; ``SegmentationRequest.adaptation_budget_s``); the panel enables its control only then."""
        from VesselSegLib.methods import method_class

        return hasattr(method_class(self._registry().get(name)), "adapt")

    def defaultMethod(self, modality: str) -> str:
        """Name of the registry's recommended method for ``modality``."""
        return self._registry().default_for(get_preset(modality).name).name

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
        request: SegmentationRequest | None = None,
        *,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        referenceVolume=None,
        outputSegmentation=None,
    ) -> SegmentationPlan:
        """Check the nodes and the request; return the plan. Raise ValueError with a message for the user.

        Reads the nodes only (no voxel copy); never changes them.
        """
        request = request or SegmentationRequest()
        self._checkScalarVolume(inputVolume, "input volume")
        companions = dict(companionVolumes or {})
        if companions and set(request.companion_modalities) != set(companions):
            request = request.replace(companion_modalities=tuple(companions))
        plan = request.resolve(self._registry())
        plan.check_brain_mask_given(maskVolume is not None)  # the panel disables Apply and says why
        if maskVolume is not None:
            self._checkScalarVolume(maskVolume, "brain mask")
            self._checkSameGrid(maskVolume, inputVolume, "brain mask")
        for modality, companionVolume in companions.items():
            self._checkScalarVolume(companionVolume, f"{modality} companion volume")
            self._checkSameGrid(companionVolume, inputVolume, f"{modality} companion volume")
        if referenceVolume is not None:
            self._checkScalarVolume(referenceVolume, "reference labels")
            self._checkSameGrid(referenceVolume, inputVolume, "reference labels")
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(
                f"The output {outputSegmentation.GetName()!r} is a {outputSegmentation.GetClassName()}; "
                "choose a segmentation node or create a new one."
            )
        return plan

    def isValidInputOutputData(self, inputVolume, request: SegmentationRequest | None = None, **nodes):
        """(ok, message) for the Apply button: message says what to fix, or what Apply will do."""
        try:
            self.checkInputs(inputVolume, request, **nodes)
        except (ValueError, FileNotFoundError) as error:
            return False, str(error)
        return True, f"Segment the vessels of {inputVolume.GetName()!r}."

    # ------------------------------------------------------------------ the three steps

    def prepareInputs(
        self,
        inputVolume,
        request: SegmentationRequest | None = None,
        *,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        referenceVolume=None,
        outputSegmentation=None,
        spacingGiven: bool = False,
    ) -> VesselSegInputs:
        """Check the inputs and copy the voxels (main thread). See ``process`` for the parameters."""
        from VesselSegLib.inference.inputs import SegmentationInputs

        plan = self.checkInputs(
            inputVolume,
            request,
            maskVolume=maskVolume,
            companionVolumes=companionVolumes,
            referenceVolume=referenceVolume,
            outputSegmentation=outputSegmentation,
        )
        names = {"image": f"input volume {inputVolume.GetName()!r}"}
        if maskVolume is not None:
            names["mask"] = f"brain mask {maskVolume.GetName()!r}"
        for modality, node in (companionVolumes or {}).items():
            names[f"{modality} companion"] = f"{modality} companion {node.GetName()!r}"
        if referenceVolume is not None:
            names["reference"] = f"reference labels {referenceVolume.GetName()!r}"
        volumes = SegmentationInputs(
            image=volume_from_node(inputVolume),
            mask=None if maskVolume is None else volume_from_node(maskVolume),
            companions={
                modality: volume_from_node(node) for modality, node in (companionVolumes or {}).items()
            },
            reference=None if referenceVolume is None else volume_from_node(referenceVolume),
            spacing_given=spacingGiven,
            names=names,
        )
        volumes.check(plan.request.companion_modalities)  # refuse bad voxels now, not after the run
        return VesselSegInputs(
            inputVolume=inputVolume,
            plan=plan,
            volumes=volumes,
            ijkToRAS=get_ijk_to_ras(inputVolume),
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
        from VesselSegLib.inference.pipeline import run_segmentation  # imports torch; see _registry

        return run_segmentation(inputs.volumes, inputs.plan, progress=progressCallback, cancel=cancelCheck)

    def addResultsToScene(
        self,
        inputs: VesselSegInputs,
        result: SegmentationResult,
        *,
        outputSegmentation=None,
        createProbabilityVolumes: bool | None = None,
        createImageVolumes: bool = True,
        progressCallback: ProgressCallback | None = None,
        cancelCheck: CancelCheck | None = None,
    ) -> VesselSegOutputs:
        """Create every output node from ``result`` (main thread) in one scene transaction.

        The segmentation, then (as the request asks) probability volumes, 3D models, the vessel graph and
        the metrics table against the reference. On any error, cancel or KeyboardInterrupt everything added
        is removed and an existing ``outputSegmentation`` gets its previous content back.

        Parameters
        ----------
        inputs : VesselSegInputs
            From ``prepareInputs``; gives the grid (IJKToRAS), the request and names.
        result : SegmentationResult
            From ``computeSegmentation``; its class map must have the input's shape (times the method's
            output scale).
        outputSegmentation : vtkMRMLSegmentationNode, optional
            Segments of the produced classes in it are replaced (others are kept); default: a new node.
        createProbabilityVolumes : bool, optional
            Add the probability maps as volumes; default: the request's ``keep_probabilities``.
        createImageVolumes : bool
            Add the method's auxiliary images (``result.images``, ROSE's super-resolved input) as volumes
            on the output grid (default True; there are none for most methods).
        progressCallback : callable(fraction, message), optional
        cancelCheck : callable() -> bool, optional
            Polled between steps; True undoes what was added and raises SegmentationCancelled.
        """
        expected = tuple(n * s for n, s in zip(inputs.image.shape, result.output_scale_zyx, strict=True))
        if np.asarray(result.class_map).shape != expected:
            raise ValueError(
                f"The result's class map has shape {np.asarray(result.class_map).shape} but the output grid of "
                f"the input volume has {expected}."
            )
        scene = inputs.inputVolume.GetScene()
        if scene is None:
            raise ValueError(f"The input volume {inputs.inputVolume.GetName()!r} is no longer in a scene.")
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(f"The output {outputSegmentation.GetName()!r} is not a segmentation node.")
        if createProbabilityVolumes is None:
            createProbabilityVolumes = inputs.request.keep_probabilities
        with SceneTransaction(scene, existing_segmentation=outputSegmentation) as transaction:
            outputs = self._addSegmentation(inputs, result, scene, outputSegmentation, progressCallback)
            _checkCancel(cancelCheck)
            if createProbabilityVolumes:
                _report(progressCallback, 0.2, "Creating probability volumes")
                outputs.probabilityVolumeNodes = self._addProbabilityVolumes(inputs, result, scene, outputs)
                _checkCancel(cancelCheck)
            if createImageVolumes and result.images:
                _report(progressCallback, 0.3, "Creating image volumes")
                outputs.imageVolumeNodes = self._addImageVolumes(inputs, result, scene, outputs)
                _checkCancel(cancelCheck)
            if inputs.request.create_models:
                _report(progressCallback, 0.4, "Creating 3D models")
                self._addModels(outputs, scene, transaction, cancelCheck)
                _checkCancel(cancelCheck)
            if inputs.request.create_graph:
                _report(progressCallback, 0.8, "Extracting the vessel graph")
                outputs.graph, outputs.graphModelNode, outputs.graphTableNode = self.createVesselGraph(
                    inputs, result
                )
                _checkCancel(cancelCheck)
            if inputs.reference is not None:
                _report(progressCallback, 0.95, "Scoring against the reference")
                outputs.metrics, outputs.referenceScoredAsBinary, outputs.metricsTableNode = (
                    self.evaluateAgainstReference(inputs, result)
                )
                _checkCancel(cancelCheck)
        _report(progressCallback, 1.0, "Done")
        logger.info(
            "VesselSeg (%s, %s) on %r in %.1f s: %s",
            result.method_display_name,
            result.device,
            inputs.inputVolume.GetName(),
            result.seconds,
            ", ".join(f"{name} {volume:.1f} mm3" for name, volume in result.volumes_mm3().items()),
        )
        return outputs

    @staticmethod
    def outputIJKToRAS(inputs: VesselSegInputs, result: SegmentationResult) -> np.ndarray:
        """The outputs' grid: the input's, or a finer one over the same box for super-resolution."""
        return refined_index_to_world(inputs.ijkToRAS, result.output_scale_zyx)

    def _addSegmentation(
        self, inputs, result, scene, outputSegmentation, progressCallback
    ) -> VesselSegOutputs:
        baseName = inputs.inputVolume.GetName()
        transformId = inputs.inputVolume.GetTransformNodeID()
        classes = [VESSEL_CLASS_BY_NAME[name] for name in result.vessel_classes]
        ijkToRAS = self.outputIJKToRAS(inputs, result)
        _report(progressCallback, 0.0, "Creating the segmentation")
        segmentationNode = outputSegmentation
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{baseName} vessels")
            segmentationNode.SetAndObserveTransformNodeID(transformId)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        for vesselClass in classes:
            segmentId = vesselClass.display_name
            if segmentation.GetSegment(segmentId) is not None:
                segmentation.RemoveSegment(segmentId)
            segmentation.AddEmptySegment(segmentId, vesselClass.display_name, list(vesselClass.color_rgb))
            segmentIds.InsertNextValue(segmentId)

        # The class map goes in through a labelmap node on the output grid, so the segments keep the input's
        # geometry exactly (direction, anisotropic spacing, parent transform). Label values are renumbered
        # 1..N in the order of segmentIds, which is how ImportLabelmapToSegmentationNode maps them.
        importMap = np.zeros(result.class_map.shape, dtype=np.uint8)
        for index, vesselClass in enumerate(classes, start=1):
            importMap[result.class_map == vesselClass.label_value] = index
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{baseName} VesselSeg labels")
        try:
            slicer.util.updateVolumeFromArray(labelmapNode, importMap)
            set_ijk_to_ras(labelmapNode, ijkToRAS)
            labelmapNode.SetAndObserveTransformNodeID(transformId)
            if result.output_scale_zyx == (1, 1, 1):
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputs.inputVolume)
            else:  # the finer grid is the segmentation's own geometry
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelmapNode)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmapNode, segmentationNode, segmentIds
            ):
                raise RuntimeError("Importing the class map into the segmentation failed (see the log).")
        finally:
            scene.RemoveNode(labelmapNode)
        return VesselSegOutputs(
            segmentationNode=segmentationNode,
            probabilityVolumeNodes={},
            modelNodes={},
            folderItemId=0,
            result=result,
            outputIJKToRAS=ijkToRAS,
        )

    @staticmethod
    def _addOutputVolume(inputs, scene, outputs, name: str, array) -> Any:
        """A float32 scalar volume ``name`` on the output grid, under the input's parent transform."""
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
        set_ijk_to_ras(node, outputs.outputIJKToRAS)
        node.SetAndObserveTransformNodeID(inputs.inputVolume.GetTransformNodeID())
        node.CreateDefaultDisplayNodes()
        return node

    def _addProbabilityVolumes(self, inputs, result, scene, outputs) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for name in result.vessel_classes:
            probability = result.probabilities.get(name)
            if probability is None:
                logger.warning("No probability map for %s; ask for keep_probabilities in the request.", name)
                continue
            nodes[name] = self._addOutputVolume(
                inputs,
                scene,
                outputs,
                f"{inputs.inputVolume.GetName()} {VESSEL_CLASS_BY_NAME[name].display_name} probability",
                probability,
            )
        return nodes

    def _addImageVolumes(self, inputs, result, scene, outputs) -> dict[str, Any]:
        """One volume per auxiliary image, "<input> <name>" with dashes for underscores ("super-resolved")."""
        expected = np.asarray(result.class_map).shape
        nodes: dict[str, Any] = {}
        for name, image in result.images.items():
            if np.shape(image) != expected:
                raise ValueError(
                    f"The result's {name} image has shape {np.shape(image)}, its class map {expected}."
                )
            label = name.replace("_", "-")
            nodes[name] = self._addOutputVolume(
                inputs, scene, outputs, f"{inputs.inputVolume.GetName()} {label}", image
            )
        return nodes

    def _addModels(
        self, outputs: VesselSegOutputs, scene, transaction: SceneTransaction, cancelCheck
    ) -> None:
        segmentationNode = outputs.segmentationNode
        # SurfaceNets (VTK's vtkSurfaceNets3D) with its own constrained smoothing instead of Slicer's default
        # flying edges + windowed-sinc smoothing: the same points, 3.2x (TOF-MRA phantom) to 5.5x (2PM
        # phantom) faster, enclosed volumes as near the voxels' (benchmarks/benchmark_surfaces.py). The
        # windowed-sinc filter was most of the time of SurfaceNets with Slicer's default smoothing.
        for name, value in CLOSED_SURFACE_PARAMETERS.items():
            segmentationNode.GetSegmentation().SetConversionParameter(name, value)
        segmentationNode.CreateClosedSurfaceRepresentation()
        _checkCancel(cancelCheck)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is None:
            raise RuntimeError("The scene has no subject hierarchy; cannot create the models folder.")
        folderItemId = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), MODELS_FOLDER_NAME)
        transaction.created_folder(folderItemId)
        outputs.folderItemId = folderItemId
        for name in outputs.result.vessel_classes:
            segmentId = VESSEL_CLASS_BY_NAME[name].display_name
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
            outputs.modelNodes[name] = self._childModelNamed(hierarchy, folderItemId, segmentId)

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
        request: SegmentationRequest | None = None,
        *,
        outputSegmentation=None,
        maskVolume=None,
        companionVolumes: Mapping[str, Any] | None = None,
        referenceVolume=None,
        createProbabilityVolumes: bool | None = None,
        createImageVolumes: bool = True,
        spacingGiven: bool = False,
        progressCallback: ProgressCallback | None = None,
        cancelCheck: CancelCheck | None = None,
    ) -> VesselSegOutputs:
        """Segment the vessels of ``inputVolume`` and add the results to its scene (blocking).

        Parameters
        ----------
        inputVolume : vtkMRMLScalarVolumeNode
            Image to segment; never modified.
        request : SegmentationRequest, optional
            Modality, method, classes, thresholds, window, device, 2PM preprocessing, resampling, and which
            outputs to make (probabilities, models, graph); default ``SegmentationRequest()`` (TOF-MRA).
        outputSegmentation : vtkMRMLSegmentationNode, optional
            Where the segments go (segments of the produced classes are replaced); default: a new node.
        maskVolume : vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode, optional
            Brain mask (non-zero = inside) on the input's grid.
        companionVolumes : mapping modality -> vtkMRMLScalarVolumeNode, optional
            Co-registered images of other contrasts on the input's grid, for methods that read several
            (VC-Net: artery from TOF-MRA, vein and micro from SWI). Never modified.
        referenceVolume : vtkMRMLScalarVolumeNode or vtkMRMLLabelMapVolumeNode, optional
            Reference labels on the input's grid: a class map (1 artery, 2 vein, 3 micro) or a binary vessel
            mask. The result is scored against it (``outputs.metrics``) and a table node added. Never modified.
        createProbabilityVolumes : bool, optional
            Default: the request's ``keep_probabilities``.
        createImageVolumes : bool
            Add the method's auxiliary images as volumes, e.g. "<input> super-resolved" for ROSE (default True).
        spacingGiven : bool
            True when the user set the voxel size on purpose: it is then never reinterpreted. Otherwise a
            size implausible for the modality (a 2PM voxel of 1 mm: micrometres stored as millimetres) is
            read in the plausible unit for measurements, with a warning (``check_spacing_units``).
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
            request,
            maskVolume=maskVolume,
            companionVolumes=companionVolumes,
            referenceVolume=referenceVolume,
            outputSegmentation=outputSegmentation,
            spacingGiven=spacingGiven,
        )
        result = self.computeSegmentation(
            inputs,
            progressCallback=_scaled(progressCallback, 0.0, COMPUTE_PROGRESS_FRACTION),
            cancelCheck=cancelCheck,
        )
        _checkCancel(cancelCheck)
        return self.addResultsToScene(
            inputs,
            result,
            outputSegmentation=outputSegmentation,
            createProbabilityVolumes=createProbabilityVolumes,
            createImageVolumes=createImageVolumes,
            progressCallback=_scaled(progressCallback, COMPUTE_PROGRESS_FRACTION, 1.0),
            cancelCheck=cancelCheck,
        )

    @staticmethod
    def evaluateAgainstReference(inputs: VesselSegInputs, result: SegmentationResult):
        """Score the result against the reference copied by ``prepareInputs`` and add a metrics table.

        A class-map reference is scored per class and for all vessels; a binary mask only for all vessels
        (``SegmentationResult.evaluate_against``). Call it inside ``addResultsToScene``'s transaction (it is,
        when a reference is given) or remove the table yourself.

        Returns
        -------
        (metrics dict, scored as binary: bool, vtkMRMLTableNode)
        """
        from VesselSegLib.mrml.metrics_nodes import add_metrics_table

        if inputs.reference is None:
            raise ValueError("No reference labels were given; choose a reference volume to compute metrics.")
        metrics, binary = result.evaluate_against(inputs.reference)
        table = add_metrics_table(
            inputs.inputVolume.GetScene(),
            metrics,
            f"{inputs.inputVolume.GetName()} vs {inputs.referenceName}",
        )
        return metrics, binary, table

    def createVesselGraph(self, inputs: VesselSegInputs, result: SegmentationResult, vesselClasses=None):
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
        graph = extract_vessel_graph(np.isin(result.class_map, labels), result.spacing_zyx)
        model, table = add_vessel_graph_to_scene(
            inputs.inputVolume.GetScene(),
            graph,
            self.outputIJKToRAS(inputs, result),
            f"{inputs.inputVolume.GetName()} vessel",
        )
        return graph, model, table

    # ------------------------------------------------------------------ slab MIP review

    def applySlabReview(
        self,
        inputVolume,
        segmentationNode,
        *,
        thicknessMm: float,
        projection: str,
        visibleClasses=("artery", "vein", "micro"),
        sliceNodeIds=None,
    ):
        """Thick-slab max/min/mean projection of ``inputVolume`` in the slice views with the segmentation's
        outlines on top; see ``VesselSegLib.mrml.review.apply_slab_review`` (returns its
        ``SlabReviewApplied``, ``ValueError`` for a bad setting). ``clearSlabReview`` undoes it."""
        from VesselSegLib.mrml.review import apply_slab_review

        return apply_slab_review(
            inputVolume.GetScene() if inputVolume is not None else None,
            inputVolume,
            segmentationNode,
            thickness_mm=thicknessMm,
            projection=projection,
            visible_classes=visibleClasses,
            slice_node_ids=sliceNodeIds,
        )

    @staticmethod
    def clearSlabReview(scene) -> list[str]:
        """Restore the slice views and segmentation display the slab review changed (IDs restored)."""
        from VesselSegLib.mrml.review import clear_slab_review

        return clear_slab_review(scene)
