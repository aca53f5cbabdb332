"""The Slicer module's metadata, sample-data registration, dependency installer and self-test skip, run
without the Slicer application.

VesselSeg.py is imported with stand-ins for the parts only the application provides (``slicer.app``,
``slicer.i18n``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``qt``, the PyTorch
extension's ``PyTorchUtils``, ``SampleData``); ``slicer.util``, MRML and VesselSegLib are the real ones.
What is checked is the module's own decisions: torch only through the PyTorch extension with the version
requirement of VesselSegLib/requirements.txt, nothing installed without that extension, the other packages
in one pip run with the installed torch pinned, a progress dialog, and a skip (not a failure) of the
self-test when packages are missing.
"""

# ruff: noqa: N802, N803 (the stand-ins mirror Slicer's camelCase API)

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest
import slicer
import slicer.util

from VesselSegLib.dependencies import UnmetRequirement, read_requirements
from VesselSegLib.resources import sample_data_sources

MODULE_FILE = Path(__file__).resolve().parents[1] / "VesselSeg" / "VesselSeg.py"


class _Recorder:
    def __init__(self):
        self.calls = []

    def record(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))

    def named(self, name):
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


class _FakeApp:
    def __init__(self, recorder):
        self._recorder = recorder

    def connect(self, signal, slot):
        self._recorder.record("connect", signal, slot)

    def processEvents(self, *args):
        pass

    def testingEnabled(self):
        return True


class _FakeProgress:
    def __init__(self, recorder, **kwargs):
        self._recorder = recorder
        self.labelText = kwargs.get("labelText", "")
        self.value = kwargs.get("value", 0)
        self.maximum = kwargs.get("maximum", 100)
        self.wasCanceled = False
        recorder.record("progress", **kwargs)

    def close(self):
        self._recorder.record("progressClosed", self.value)


@pytest.fixture
def env(monkeypatch):
    """VesselSeg.py imported with the application's parts stubbed; returns (module, recorder)."""
    recorder = _Recorder()

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = lambda *args, **kwargs: None
    wrapper.WithinRange = lambda *args, **kwargs: None
    wrapper.parameterNodeWrapper = lambda cls: cls
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        pass

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            recorder.record("delayDisplay", message)

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    qt = types.ModuleType("qt")
    qt.QIcon = lambda path: ("icon", path)

    for name, stub in (
        ("slicer.i18n", i18n),
        ("slicer.parameterNodeWrapper", wrapper),
        ("slicer.ScriptedLoadableModule", scripted),
        ("qt", qt),
    ):
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "app", _FakeApp(recorder), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        yield  # let errors through: the test sees them

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)
    monkeypatch.setattr(
        slicer.util, "confirmOkCancelDisplay", lambda text, **kw: recorder.record("confirm", text) or True
    )
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: recorder.record("error", text))
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda text, **kw: recorder.record("info", text))
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: recorder.record("pip_install", list(args)))
    monkeypatch.setattr(
        slicer.util, "createProgressDialog", lambda **kwargs: _FakeProgress(recorder, **kwargs)
    )

    spec = importlib.util.spec_from_file_location("VesselSegModuleUnderTest", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, recorder


def _unmet(*names):
    """UnmetRequirement (not installed) for the named lines of VesselSegLib/requirements.txt."""
    by_name = {item.name: item for item in read_requirements()}
    return [
        UnmetRequirement(
            by_name[name].requirement,
            name,
            by_name[name].specifier,
            None,
            f"{name} is not installed",
            by_name[name].tags,
        )
        for name in names
    ]


def _widget(module):
    widget = object.__new__(module.VesselSegWidget)
    widget.ui = types.SimpleNamespace(
        dependencyLabel=types.SimpleNamespace(text="", setVisible=lambda on: None),
        installDependenciesButton=types.SimpleNamespace(setVisible=lambda on: None),
    )
    widget.populateMethods = lambda: None
    widget._updateApplyButton = lambda: None
    return widget


def test_module_metadata_states_slicer_5_10_links_the_documentation_and_registers_the_sample(env):
    module, recorder = env
    parent = types.SimpleNamespace()
    module.VesselSeg(parent)
    assert "Requires 3D Slicer 5.10 or newer (Python 3.12) and the PyTorch extension" in parent.helpText
    assert f'<a href="{module.DOCUMENTATION_URL}">' in parent.helpText
    assert parent.contributors == ["VesselSeg developers (VesselSeg project)"]
    assert recorder.named("connect") == [(("startupCompleted()", module.registerSampleData), {})]


def test_register_sample_data_passes_the_library_sources_to_sample_data(env, monkeypatch):
    module, recorder = env

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            recorder.record("register", **kwargs)

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    module.registerSampleData()
    assert [kwargs for _, kwargs in recorder.named("register")] == sample_data_sources()


def test_without_the_pytorch_extension_nothing_is_installed(env, monkeypatch):
    module, recorder = env
    monkeypatch.setattr(module, "missing_requirements", lambda inside_slicer: _unmet("torch", "monai"))
    _widget(module).onInstallDependencies()
    assert recorder.named("pip_install") == [] and recorder.named("confirm") == []
    ((args, _),) = recorder.named("error")
    assert "Extensions Manager" in args[0] and "torch>=" in args[0]


def test_torch_through_pytorch_utils_then_the_rest_with_torch_pinned(env, monkeypatch):
    module, recorder = env
    unmet = _unmet("torch", "monai", "skan")
    monkeypatch.setattr(module, "missing_requirements", lambda inside_slicer: unmet)
    monkeypatch.setattr(module, "installed_pin", lambda name: "torch==2.5.1+cu121")
    slicer.modules.pytorchutils = object()

    class PyTorchUtilsLogic:
        def installTorch(
            self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None
        ):
            recorder.record(
                "installTorch", askConfirmation=askConfirmation, requirement=torchVersionRequirement
            )
            return object()  # the torch module

    monkeypatch.setitem(
        sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic)
    )
    _widget(module).onInstallDependencies()

    names = [name for name, _, _ in recorder.calls if name in ("installTorch", "pip_install")]
    assert names == ["installTorch", "pip_install"], "torch first, then one pip run"
    ((_, torch_call),) = recorder.named("installTorch")
    torch_line = next(item for item in read_requirements() if item.name == "torch")
    assert torch_call == {"askConfirmation": True, "requirement": torch_line.specifier}
    ((pip_args, _),) = recorder.named("pip_install")
    monai_line = next(item.requirement for item in read_requirements() if item.name == "monai")
    skan_line = next(item.requirement for item in read_requirements() if item.name == "skan")
    assert pip_args == ([monai_line, skan_line, "torch==2.5.1+cu121"],)
    ((_, progress),) = recorder.named("progress")
    assert progress["maximum"] == 2  # torch, then the pip run
    assert recorder.named("progressClosed") == [((2,), {})]


def test_the_self_test_is_skipped_with_a_message_when_packages_are_missing(env, monkeypatch):
    module, recorder = env
    monkeypatch.setattr(module, "missing_requirements", lambda inside_slicer: _unmet("torch", "monai"))
    test = module.VesselSegTest()
    test.runTest()  # as "Reload and Test" calls it: says why, does not fail
    ((args, _),) = recorder.named("delayDisplay")
    assert "skipped" in args[0] and "torch is not installed" in args[0]
    for name in ("test_VesselSeg_sampleData", "test_VesselSeg_phantom"):
        with pytest.raises(unittest.SkipTest, match="monai is not installed"):
            getattr(test, name)()
