"""Where VesselSeg's resources (model registry, weights, sample data) live.

The same ``Resources/`` folder must be found from four layouts:

1. a source checkout or ``pip install -e .``: ``<repo>/VesselSegLib/../Resources``;
2. an installed Slicer extension: CMake puts ``VesselSegLib/`` and ``Resources/`` side by side in
   ``qt-scripted-modules/``, so the same relative path works;
3. a wheel (``pip install .``): the folder is packaged as ``VesselSegLib/_resources``;
4. anything else: the environment variable ``VESSELSEG_RESOURCES`` names it.
"""

from __future__ import annotations

import os
from pathlib import Path

RESOURCES_ENVIRONMENT_VARIABLE = "VESSELSEG_RESOURCES"
_PACKAGE_DIR = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The folder holding ``Models/models.json``; raise FileNotFoundError saying where it looked."""
    candidates: list[Path] = []
    if os.environ.get(RESOURCES_ENVIRONMENT_VARIABLE):
        candidates.append(Path(os.environ[RESOURCES_ENVIRONMENT_VARIABLE]))
    candidates += [_PACKAGE_DIR / "_resources", _PACKAGE_DIR.parent / "Resources"]
    for candidate in candidates:
        if (candidate / "Models" / "models.json").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"VesselSeg resources (Models/models.json) not found; looked in: {looked}. "
        f"Set {RESOURCES_ENVIRONMENT_VARIABLE} to the extension's Resources folder."
    )


def models_dir() -> Path:
    return resources_dir() / "Models"


def sample_data_dir() -> Path:
    return resources_dir() / "SampleData"


VESSELNN_ENVIRONMENT_VARIABLE = "VESSELSEG_VESSELNN"


def vesselnn_dir() -> Path:
    """The VesselNN two-photon data set (read in place, never copied): ``$VESSELSEG_VESSELNN``, else
    ``shared/data/vesselnn`` beside the repository checkout. It may not exist; callers check."""
    if os.environ.get(VESSELNN_ENVIRONMENT_VARIABLE):
        return Path(os.environ[VESSELNN_ENVIRONMENT_VARIABLE])
    return _PACKAGE_DIR.parent.parent / "shared" / "data" / "vesselnn"
