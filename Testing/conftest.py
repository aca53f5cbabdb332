"""Shared fixtures. Tests run on the CPU with two threads, like the CI machine."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)

# A test run started in the background by a shell (`pytest &`, nohup) inherits SIGINT (and SIGHUP) ignored,
# and so would every `vesselseg` it starts: the Ctrl-C and hang-up tests would then see no signal at all.
# Give this process (and through it, its children) the handlers of a run started from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory):
    """The runtime probe's and backends' cache in a folder of this test session, never the user's ~/.cache;
    exported backends off (subprocesses inherit both through the environment)."""
    folder = tmp_path_factory.mktemp("vesselseg-cache")
    # PyTorch runs every network unless a test asks for an exported backend (Testing/test_onnx_backend.py):
    # "auto" would otherwise measure each test's model and window, and outputs would depend on timings.
    settings = {"VESSELSEG_CACHE_DIR": str(folder), "VESSELSEG_EXPORTED_BACKENDS": ""}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield folder
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture()
def scene():
    """A fresh headless MRML scene (slicer-core), prepared as the Slicer application would, then released."""
    from VesselSegLib.mrml.scene import create_headless_scene, release_headless_scene

    scene = create_headless_scene()
    yield scene
    release_headless_scene(scene)
