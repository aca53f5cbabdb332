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


#: Category (section title) of VesselSeg's sample in Slicer's Sample Data module.
SAMPLE_DATA_CATEGORY = "VesselSeg"
#: The bundled sample registered with the Sample Data module: (file in SampleData/, node name). A synthetic
#: TOF-MRA phantom, its SWI twin on the same grid (VC-Net reads veins and micro-vessels from it) and the
#: brain mask (scripts/make_sample_data.py writes all of them).
SAMPLE_DATA_FILES = (
    ("sample_tof_mra.nrrd", "VesselSeg sample TOF-MRA"),
    ("sample_swi.nrrd", "VesselSeg sample SWI"),
    ("sample_brain_mask.nrrd", "VesselSeg sample brain mask"),
)
#: Reference labels of the sample (class map 1 artery, 2 vein, 3 micro), for scoring; not in the Sample Data
#: entry (the module loads it as a label map where needed).
SAMPLE_LABELS_FILE = "sample_tof_mra_labels.nrrd"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA256 of a file's bytes (as Slicer's ``slicer.util.computeChecksum("SHA256", path)``)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_data_sources() -> list[dict]:
    """The keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``, one dict per
    sample: plain data, so that it is testable without Slicer.

    The files are the ones shipped in ``Resources/SampleData`` (in the source tree and in the installed
    extension), given as ``file://`` URIs: the Sample Data module copies them into Slicer's cache with
    ``urllib``, as it downloads remote ones, and checks each against its SHA256 (``"SHA256:<hex>"``),
    computed here from the files themselves. Raises FileNotFoundError if the resources are missing.
    """
    folder = sample_data_dir()
    paths = [folder / file_name for file_name, _ in SAMPLE_DATA_FILES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"VesselSeg sample data missing: {', '.join(missing)}")
    thumbnail = resources_dir() / "Icons" / "VesselSeg.png"
    return [
        {
            "category": SAMPLE_DATA_CATEGORY,
            "sampleName": "VesselSegTOFMRA",
            "uris": [path.resolve().as_uri() for path in paths],
            # The name in Slicer's cache: prefixed, so that another extension's "sample_swi.nrrd" never collides.
            "fileNames": [f"VesselSeg-{file_name}" for file_name, _ in SAMPLE_DATA_FILES],
            "nodeNames": [node_name for _, node_name in SAMPLE_DATA_FILES],
            "checksums": [f"SHA256:{sha256_of(path)}" for path in paths],
            # "loadFileType" (one type for all files): accepted by every Slicer 5 SampleData (newer ones
            # also take "loadFileTypes").
            "loadFileType": "VolumeFile",
            "thumbnailFileName": str(thumbnail) if thumbnail.is_file() else None,
        }
    ]
