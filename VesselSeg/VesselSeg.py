"""VesselSeg: deep-learning segmentation of blood vessels (artery, vein, micro-vessel) in 3D Slicer.

Four classes as in Slicer's scripted-module template: ``VesselSeg`` (metadata), ``VesselSegWidget`` (Qt
only), ``VesselSegLogic`` (no Qt; the processing lives in ``VesselSegLib.mrml.logic``) and ``VesselSegTest``.
"""

import logging
import os
import sys
import threading
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def _addLibraryToPath():
    """Make ``import VesselSegLib`` work in both layouts.

    Installed extension: ``VesselSegLib/`` is installed beside this file (in qt-scripted-modules, already on
    sys.path). Source tree added to the additional module paths: it is in the repository root, the parent
    of ``VesselSeg/``, which Slicer does not put on sys.path.
    """
    for candidate in (_MODULE_DIR, os.path.dirname(_MODULE_DIR)):
        if os.path.isfile(os.path.join(candidate, "VesselSegLib", "__init__.py")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return


_addLibraryToPath()

from VesselSegLib.dependencies import missing_requirements, pip_install_arguments  # noqa: E402
from VesselSegLib.errors import SegmentationCancelled  # noqa: E402
from VesselSegLib.mrml.logic import COMPUTE_PROGRESS_FRACTION  # noqa: E402
from VesselSegLib.mrml.logic import VesselSegLogic as VesselSegLibraryLogic  # noqa: E402
from VesselSegLib.preprocessing.presets import MODALITY_PRESETS  # noqa: E402
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME  # noqa: E402

DEVICES = ["auto", "cpu", "cuda", "mps"]
POLL_INTERVAL_MS = 100


def _iconPath():
    """Module icon: ``Resources/Icons`` beside the module (installed), ``../Resources/Icons`` (source)."""
    for candidate in (
        os.path.join(_MODULE_DIR, "Resources", "Icons", "VesselSeg.png"),
        os.path.join(os.path.dirname(_MODULE_DIR), "Resources", "Icons", "VesselSeg.png"),
    ):
        if os.path.isfile(candidate):
            return candidate
    return None


#
# VesselSeg
#


class VesselSeg(ScriptedLoadableModule):
    """Module metadata (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VesselSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VesselSeg developers"]
        self.parent.helpText = _(
            "Segments blood vessels in 3D images into artery (red), vein (blue) and micro-vessel (pink) "
            "segments with a deep-learning model, or a Hessian vesselness baseline.\n\n"
            "Choose the input volume and its modality preset (TOF-MRA, SWI or two-photon microscopy), "
            "optionally a brain mask on the same grid, then Apply. The segmentation keeps the input's "
            "geometry exactly; 3D models and probability volumes can be created too. The same Logic runs "
            "from the Python console (slicer.modules.vesselseg.widgetRepresentation().self().logic) and the "
            "'vesselseg' command line."
        )
        self.parent.acknowledgementText = _(
            "VesselSeg is built on 3D Slicer, PyTorch and MONAI. Its networks follow published "
            "cerebrovascular segmentation work (see each model card in Resources/Models); its baseline is "
            "the Frangi vesselness filter."
        )
        iconPath = _iconPath()
        if iconPath:
            import qt

            self.parent.icon = qt.QIcon(iconPath)


#
# VesselSegParameterNode
#


@parameterNodeWrapper
class VesselSegParameterNode:
    """The module's settings, saved with the scene.

    Patch sizes and thresholds of 0 and a minimum component size of -1 mean "the method's/preset's default".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    maskVolume: vtkMRMLScalarVolumeNode | None
    companionVolume: vtkMRMLScalarVolumeNode | None
    companionModality: Annotated[str, Choice(list(MODALITY_PRESETS))] = "SWI"
    modality: Annotated[str, Choice(list(MODALITY_PRESETS))] = "TOF-MRA"
    method: str = ""
    segmentArtery: bool = True
    segmentVein: bool = True
    segmentMicro: bool = True
    device: Annotated[str, Choice(DEVICES)] = "auto"
    patchSizeZVoxels: Annotated[int, WithinRange(0, 1024)] = 0
    patchSizeYVoxels: Annotated[int, WithinRange(0, 1024)] = 0
    patchSizeXVoxels: Annotated[int, WithinRange(0, 1024)] = 0
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.25
    arteryThreshold: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    veinThreshold: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    microThreshold: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    minimumComponentMm3: Annotated[float, WithinRange(-1.0, 1.0e6)] = -1.0
    subtractSliceMedian: bool = False
    medianFilter: bool = False
    intensityScale: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    outputSegmentation: vtkMRMLSegmentationNode | None
    createModels: bool = True
    createProbabilityVolumes: bool = False
    createGraph: bool = False
    referenceVolume: vtkMRMLScalarVolumeNode | None


#
# VesselSegWidget
#


class VesselSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's GUI. Qt only: every computation is done by ``VesselSegLogic``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._populatedModality = None
        # A running segmentation: worker thread, its cancel flag, latest progress and outcome.
        self._thread = None
        self._cancelEvent = None
        self._runState = None
        self._pollTimer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VesselSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VesselSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodSelected)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.hide()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._pollRunningSegmentation)

        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._requestCancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self._requestCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        self._populatedModality = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.modality != self._populatedModality:
            self.populateMethods()
        self._updateApplyButton()

    def _classSelection(self):
        parameters = self._parameterNode
        selected = {
            "artery": parameters.segmentArtery,
            "vein": parameters.segmentVein,
            "micro": parameters.segmentMicro,
        }
        return tuple(name for name, on in selected.items() if on)

    def _request(self):
        """The parameter node's settings as the one ``SegmentationRequest`` (ValueError if one is bad)."""
        from VesselSegLib.request import MicroscopyOptions, SegmentationRequest

        parameters = self._parameterNode
        patch = (parameters.patchSizeZVoxels, parameters.patchSizeYVoxels, parameters.patchSizeXVoxels)
        thresholds = {
            name: value
            for name, value in (
                ("artery", parameters.arteryThreshold),
                ("vein", parameters.veinThreshold),
                ("micro", parameters.microThreshold),
            )
            if value > 0  # 0: the method's own threshold
        }
        companion = parameters.companionVolume
        return SegmentationRequest(
            modality=parameters.modality,
            method=parameters.method or None,
            vessel_classes=self._classSelection(),
            device=parameters.device,
            patch_size_zyx=patch if all(patch) else None,
            overlap=parameters.overlap,
            thresholds=thresholds,
            min_component_mm3=None if parameters.minimumComponentMm3 < 0 else parameters.minimumComponentMm3,
            microscopy=MicroscopyOptions(
                subtract_slice_median=parameters.subtractSliceMedian,
                median_size=3 if parameters.medianFilter else None,
                intensity_scale=parameters.intensityScale or None,
            ),
            companion_modalities=(parameters.companionModality,) if companion else (),
            keep_probabilities=parameters.createProbabilityVolumes,
            create_models=parameters.createModels,
            create_graph=parameters.createGraph,
        )

    def _nodes(self):
        """The parameter node's input and output nodes as keyword arguments of the Logic's steps."""
        parameters = self._parameterNode
        companion = parameters.companionVolume
        return {
            "maskVolume": parameters.maskVolume,
            "companionVolumes": {parameters.companionModality: companion} if companion else None,
            "referenceVolume": parameters.referenceVolume,
            "outputSegmentation": parameters.outputSegmentation,
        }

    def _updateApplyButton(self) -> None:
        if self._thread is not None:
            return  # the button is "Cancel" while running
        if not self._parameterNode:
            self.ui.applyButton.enabled = False
            return
        if missing_requirements(inside_slicer=True):
            ok, message = False, _("Install the missing Python packages first.")
        else:
            try:
                ok, message = self.logic.isValidInputOutputData(
                    self._parameterNode.inputVolume, self._request(), **self._nodes()
                )
            except ValueError as error:  # a setting the request refuses
                ok, message = False, str(error)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = message

    # ------------------------------------------------------------------ methods of the registry

    def populateMethods(self) -> None:
        """Fill the Method list with the registry's methods for the current modality; select the default."""
        combo = self.ui.methodComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            modality = self._parameterNode.modality if self._parameterNode else "TOF-MRA"
            self._populatedModality = modality
            try:
                entries = self.logic.availableMethods(modality)
                default = self.logic.defaultMethod(modality)
            except (ImportError, ValueError, FileNotFoundError) as error:
                self.ui.methodDescriptionLabel.text = _("Methods are unavailable: {error}").format(
                    error=error
                )
                return
            for entry in entries:
                combo.addItem(entry.display_name, entry.name)
            current = self._parameterNode.method if self._parameterNode else ""
            names = [entry.name for entry in entries]
            index = (
                names.index(current) if current in names else names.index(default) if default in names else 0
            )
            combo.setCurrentIndex(index)
        finally:
            combo.blockSignals(wasBlocked)
        self.onMethodSelected(combo.currentIndex)

    def onMethodSelected(self, index) -> None:
        if not self._parameterNode or index < 0:
            return
        name = self.ui.methodComboBox.itemData(index)
        try:
            entry = next(
                e for e in self.logic.availableMethods(self._parameterNode.modality) if e.name == name
            )
        except (StopIteration, ImportError, ValueError, FileNotFoundError):
            return
        classes = ", ".join(VESSEL_CLASS_BY_NAME[c].display_name for c in entry.vessel_classes)
        kind = {
            "network": _("network"),
            "ensemble": _("one network per class; vein and micro read an SWI companion volume"),
        }.get(entry.kind, _("filter, one class per modality"))
        self.ui.methodDescriptionLabel.text = f"{entry.display_name} ({kind}): {classes}"
        if self._parameterNode.method != entry.name:
            wasModifying = self._parameterNode.StartModify()
            self._parameterNode.method = entry.name
            self._parameterNode.overlap = entry.overlap  # the method's own default; the user may change it
            self._parameterNode.EndModify(wasModifying)

    # ------------------------------------------------------------------ dependencies

    def updateDependencyStatus(self) -> None:
        # VesselSegLib/requirements.txt, versions included (slicer-core is skipped: Slicer provides it).
        unmet = missing_requirements(inside_slicer=True)
        self.ui.dependencyLabel.text = _(
            "VesselSeg needs Python packages that are missing or too old: {packages}."
        ).format(packages="; ".join(item.reason for item in unmet))
        self.ui.dependencyLabel.setVisible(bool(unmet))
        self.ui.installDependenciesButton.setVisible(bool(unmet))

    def onInstallDependencies(self) -> None:
        unmet = missing_requirements(inside_slicer=True)
        if not unmet:
            self.updateDependencyStatus()
            return
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "VesselSeg will install these Python packages: {packages}. This downloads several hundred MB "
                "(PyTorch) and can take several minutes. Continue?"
            ).format(packages=", ".join(pip_install_arguments(unmet)))
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            # torch first: other packages (MONAI) would otherwise pull a default torch build
            for item in unmet:
                if item.uses_pytorch_extension:
                    self._installPyTorch(item)
            others = pip_install_arguments([item for item in unmet if not item.uses_pytorch_extension])
            if others:
                slicer.util.pip_install(others)  # one argument per specifier, exactly as in the file
        self.updateDependencyStatus()
        self.populateMethods()
        self._updateApplyButton()

    @staticmethod
    def _installPyTorch(requirement) -> None:
        """PyTorch through the PyTorch extension (which picks the build for the GPU/CUDA), else pip.

        ``requirement`` is the unmet torch requirement (``UnmetRequirement``: torch missing or too old);
        its version specifier (">=2.3") is passed on.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            logging.info("PyTorch extension not installed; installing torch with pip.")
            slicer.util.pip_install(pip_install_arguments([requirement]))
            return
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        versionRequirement = requirement.specifier or None  # PyTorchUtils installs "torch" + this
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=versionRequirement) is None:
            raise ValueError(
                _("PyTorch was not installed; install it from the PyTorch module and try again.")
            )

    # ------------------------------------------------------------------ running

    def onApplyButton(self) -> None:
        if self._thread is not None:
            self._requestCancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if missing_requirements(inside_slicer=True):
            self.onInstallDependencies()
            if missing_requirements(inside_slicer=True):
                return
        with slicer.util.tryWithErrorDisplay(_("Cannot start the segmentation."), waitCursor=True):
            nodes = self._nodes()
            inputs = self.logic.prepareInputs(self._parameterNode.inputVolume, self._request(), **nodes)
            self._startWorker(inputs, nodes["outputSegmentation"])

    def _startWorker(self, inputs, outputSegmentation) -> None:
        """Run ``computeSegmentation`` in a thread; the timer polls it and builds the scene when it ends."""
        self._cancelEvent = threading.Event()
        state = {
            "progress": (0.0, _("Starting")),
            "result": None,
            "error": None,
            "inputs": inputs,
            "outputSegmentation": outputSegmentation,
        }
        self._runState = state

        def onProgress(fraction, message):
            state["progress"] = (fraction * COMPUTE_PROGRESS_FRACTION, message)

        def work():
            try:
                state["result"] = self.logic.computeSegmentation(
                    inputs, progressCallback=onProgress, cancelCheck=self._cancelEvent.is_set
                )
            except BaseException as error:  # reported on the main thread
                state["error"] = error

        self._thread = threading.Thread(target=work, name="VesselSeg", daemon=True)
        self._setRunning(True)
        self._thread.start()
        self._pollTimer.start()

    def _requestCancel(self) -> None:
        if self._cancelEvent is not None:
            self._cancelEvent.set()

    def _setRunning(self, running) -> None:
        for panel in (
            self.ui.inputsCollapsibleButton,
            self.ui.methodCollapsibleButton,
            self.ui.classesCollapsibleButton,
            self.ui.advancedCollapsibleButton,
            self.ui.outputsCollapsibleButton,
        ):
            panel.enabled = not running
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.value = 0
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation; nothing is added to the scene.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")

    def _pollRunningSegmentation(self) -> None:
        state = self._runState
        if state is None:
            self._pollTimer.stop()
            return
        fraction, message = state["progress"]
        self.ui.progressBar.value = int(1000 * fraction)
        self.ui.statusLabel.text = message
        if self._thread.is_alive():
            return
        self._pollTimer.stop()
        cancelled = self._cancelEvent.is_set()
        self._thread = None
        self._runState = None
        try:
            error = state["error"]
            if isinstance(error, SegmentationCancelled) or (cancelled and error is None):
                self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
                return
            with slicer.util.tryWithErrorDisplay(_("Vessel segmentation failed."), waitCursor=True):
                if error is not None:
                    raise error
                self.ui.progressBar.value = int(1000 * COMPUTE_PROGRESS_FRACTION)
                # Segmentation, models, graph and metrics in one scene transaction: all or nothing.
                outputs = self.logic.addResultsToScene(
                    state["inputs"], state["result"], outputSegmentation=state["outputSegmentation"]
                )
                self._parameterNode.outputSegmentation = outputs.segmentationNode
                result = outputs.result
                summary = ", ".join(
                    f"{VESSEL_CLASS_BY_NAME[name].display_name} {volume:.1f} mm³"
                    for name, volume in result.volumes_mm3().items()
                )
                if outputs.metricsTableNode is not None:
                    selection = slicer.app.applicationLogic().GetSelectionNode()
                    selection.SetActiveTableID(outputs.metricsTableNode.GetID())
                    slicer.app.applicationLogic().PropagateTableSelection()
                    summary += "; " + _("vessel Dice {dice:.3f}, clDice {cldice:.3f}").format(
                        dice=outputs.metrics["vessel"]["dice"], cldice=outputs.metrics["vessel"]["cldice"]
                    )
                self.ui.statusLabel.text = _("{method} on {device} in {seconds:.1f} s: {summary}").format(
                    method=result.method_display_name,
                    device=result.device,
                    seconds=result.seconds,
                    summary=summary,
                )
        finally:
            self._cancelEvent = None
            self._setRunning(False)
            self._updateApplyButton()


#
# VesselSegLogic
#


class VesselSegLogic(VesselSegLibraryLogic, ScriptedLoadableModuleLogic):
    """The module's Logic: ``VesselSegLib.mrml.logic.VesselSegLogic`` plus Slicer's parameter node.

    No Qt here; use it from the Python console or scripts::

        logic = slicer.util.getModuleLogic("VesselSeg")
        outputs = logic.process(getNode("MRA"), modality="TOF-MRA")
    """

    def __init__(self) -> None:
        super().__init__()  # VesselSegLibraryLogic, then ScriptedLoadableModuleLogic

    def getParameterNode(self):
        return VesselSegParameterNode(super().getParameterNode())


#
# VesselSegTest
#


class VesselSegTest(ScriptedLoadableModuleTest):
    """Runs the Logic on a synthetic TOF-MRA phantom inside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_VesselSeg_phantom()

    def test_VesselSeg_phantom(self):
        import numpy as np

        from VesselSegLib.phantoms import make_phantom_case

        self.delayDisplay("Segmenting a 32 x 64 x 64 TOF-MRA phantom")
        case = make_phantom_case("TOF-MRA", (32, 64, 64), seed=0)
        ijkToRAS = np.array(
            [[-0.5, 0.0, 0.0, 10.0], [0.0, 0.0, 0.8, -5.0], [0.0, -0.5, 0.0, 20.0], [0.0, 0.0, 0.0, 1.0]]
        )  # anisotropic spacing (0.5, 0.5, 0.8 mm) with axes permuted and flipped
        inputVolume = slicer.util.addVolumeFromArray(case.image, ijkToRAS=ijkToRAS, name="VesselSegPhantom")
        referenceVolume = slicer.util.addVolumeFromArray(
            case.class_map.astype(np.uint8),
            ijkToRAS=ijkToRAS,
            name="VesselSegPhantomLabels",
            nodeClassName="vtkMRMLLabelMapVolumeNode",
        )
        voxelsBefore = slicer.util.arrayFromVolume(inputVolume).copy()

        logic = VesselSegLogic()
        fractions = []
        from VesselSegLib.request import SegmentationRequest

        outputs = logic.process(
            inputVolume,
            SegmentationRequest(modality="TOF-MRA", device="cpu", create_models=True),
            referenceVolume=referenceVolume,
            progressCallback=lambda fraction, message: fractions.append(fraction),
        )

        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), voxelsBefore)
        # Scored against the phantom's truth: the shipped default measured 0.78 vessel Dice on this phantom.
        self.assertGreater(outputs.metrics["vessel"]["dice"], 0.6)
        self.assertEqual(outputs.metricsTableNode.GetTable().GetNumberOfRows(), len(outputs.metrics))
        self.assertGreater(len(fractions), 1)
        self.assertAlmostEqual(fractions[-1], 1.0)
        segmentation = outputs.segmentationNode.GetSegmentation()
        produced = outputs.result.vessel_classes
        entry = next(e for e in logic.availableMethods("TOF-MRA") if e.name == outputs.result.method)
        if entry.kind == "network":  # an ensemble may skip classes whose companion image is missing
            self.assertEqual(set(produced), set(entry.vessel_classes))
        self.assertEqual(segmentation.GetNumberOfSegments(), len(produced))
        for name in produced:
            vesselClass = VESSEL_CLASS_BY_NAME[name]
            segment = segmentation.GetSegment(vesselClass.display_name)
            self.assertIsNotNone(segment, vesselClass.display_name)
            np.testing.assert_allclose(segment.GetColor(), vesselClass.color_rgb, atol=1e-6)
            labels = slicer.util.arrayFromSegmentBinaryLabelmap(
                outputs.segmentationNode, vesselClass.display_name, inputVolume
            )
            self.assertEqual(labels.shape, case.image.shape)
            self.assertGreater(int(labels.sum()), 0, f"segment {vesselClass.display_name} is empty")
        # Geometry: the segmentation's labelmap lies on the input's grid.
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
            outputs.segmentationNode, labelmapNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        inputMatrix, labelMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(inputMatrix)
        labelmapNode.GetIJKToRASMatrix(labelMatrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(labelMatrix),
            slicer.util.arrayFromVTKMatrix(inputMatrix),
            atol=1e-6,
        )
        self.assertEqual(
            labelmapNode.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions()
        )
        self.delayDisplay("Test passed")
