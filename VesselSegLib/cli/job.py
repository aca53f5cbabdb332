"""The job folder of a background segmentation: what the Slicer module and the worker process exchange.

The module writes a job (:func:`write_job`), starts ``python -m VesselSegLib.cli.worker JOB_FOLDER``
(:class:`VesselSegLib.cli.background.BackgroundSegmentation`), reads its progress lines from stdout and, once
it has ended with ``DONE``, loads the result (:func:`read_result`). Layout::

    JOB_FOLDER/
      job.json                    the request (SegmentationRequest.as_record), spacing_given, names, files
      input.nrrd                  the image to segment, with its grid (spacing, origin, direction)
      mask.nrrd                   brain mask, if any (uint8)
      companion_<MODALITY>.nrrd   co-registered images of other contrasts, if any
      result/                     written by the worker, whole or not at all (staged, then renamed):
        result.json               the SegmentationResult's fields other than the arrays
        class_map.npy             uint8 class map on the output grid
        probability_<class>.npy   float32 probability maps (when the request keeps them)

The reference labels stay in the module (scored there, against the result); the worker never sees them.

Protocol on the worker's stdout, one line each, flushed: ``PROGRESS <fraction> <message>`` (fraction in
[0, 1]), then exactly one of ``DONE``, ``ERROR <one line>`` or ``CANCELLED``. Other lines (warnings, a
traceback) are log text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.io.volume import Volume, read_volume
from VesselSegLib.request import SegmentationRequest

if TYPE_CHECKING:  # the pipeline is imported when a result is read (it pulls in the method registry)
    from VesselSegLib.inference.pipeline import SegmentationResult

JOB_FILE = "job.json"
RESULT_FOLDER = "result"
RESULT_FILE = "result.json"
CLASS_MAP_FILE = "class_map.npy"
JOB_FORMAT = "vesselseg-job"
JOB_VERSION = 1
_STAGING_PREFIX = ".result-partial-"
_ARRAY_FIELDS = ("class_map", "probabilities", "images")
_TUPLE_FIELDS = ("vessel_classes", "spacing_zyx", "output_scale_zyx")

PROGRESS, DONE, ERROR, CANCELLED = "PROGRESS", "DONE", "ERROR", "CANCELLED"


# ----------------------------------------------------------------------------------------- protocol


def one_line(text: object) -> str:
    """``text`` on one line (newlines and tabs become spaces), for a protocol line."""
    return " ".join(str(text).split())


def progress_line(fraction: float, message: str) -> str:
    return f"{PROGRESS} {min(max(float(fraction), 0.0), 1.0):.4f} {one_line(message)}".rstrip()


def parse_line(line: str) -> tuple[str, float | None, str] | None:
    """(kind, fraction, message) of a protocol line, or None for log text.

    ``PROGRESS 0.42 Predicting`` -> ("PROGRESS", 0.42, "Predicting"); ``ERROR bad`` -> ("ERROR", None, "bad");
    ``DONE`` -> ("DONE", None, "").
    """
    kind, _, rest = line.strip().partition(" ")
    if kind == PROGRESS:
        number, _, message = rest.partition(" ")
        try:
            fraction = float(number)
        except ValueError:
            return None
        if not 0.0 <= fraction <= 1.0:
            return None
        return PROGRESS, fraction, message
    if kind in (DONE, CANCELLED) and not rest:
        return kind, None, ""
    if kind == ERROR:
        return ERROR, None, rest or "the segmentation failed"
    return None


# ----------------------------------------------------------------------------------------- job


def _write_nrrd(volume: Volume, path: Path) -> str:
    import SimpleITK as sitk

    array = np.asarray(volume.array)
    if array.dtype == bool:  # SimpleITK has no boolean pixel type
        array = array.astype(np.uint8)
    # Uncompressed: the folder is temporary and read once, right away; gzip would only cost time.
    sitk.WriteImage(
        Volume(array, volume.spacing_xyz, volume.origin_xyz, volume.direction).to_sitk(), str(path)
    )
    return path.name


def write_job(folder: str | os.PathLike, inputs: SegmentationInputs, request: SegmentationRequest) -> Path:
    """Write ``inputs`` (input, mask, companions; not the reference) and ``request`` into ``folder``.

    ``folder`` must exist (a fresh temporary folder). Returns the path of ``job.json``, written last.
    """
    folder = Path(folder)
    images: dict[str, Any] = {"image": _write_nrrd(inputs.image, folder / "input.nrrd"), "mask": None}
    if inputs.mask is not None:
        images["mask"] = _write_nrrd(inputs.mask, folder / "mask.nrrd")
    images["companions"] = {
        modality: _write_nrrd(volume, folder / f"companion_{modality}.nrrd")
        for modality, volume in inputs.companions.items()
    }
    job = {
        "format": JOB_FORMAT,
        "version": JOB_VERSION,
        "request": request.as_record(),
        "spacing_given": bool(inputs.spacing_given),
        "names": {role: str(name) for role, name in inputs.names.items() if role != "reference"},
        "images": images,
    }
    path = folder / JOB_FILE
    path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    return path


def read_job(folder: str | os.PathLike) -> tuple[SegmentationInputs, SegmentationRequest]:
    """The inputs and request :func:`write_job` wrote (ValueError for a folder that holds no job)."""
    folder = Path(folder)
    try:
        job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{folder} holds no {JOB_FILE}; it is not a VesselSeg job folder.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / JOB_FILE} is not valid JSON ({error}).") from None
    if not isinstance(job, dict) or job.get("format") != JOB_FORMAT or job.get("version") != JOB_VERSION:
        raise ValueError(f"{folder / JOB_FILE} is not a version {JOB_VERSION} VesselSeg job.")
    images = job["images"]
    read = lambda name: read_volume(folder / name)  # noqa: E731
    inputs = SegmentationInputs(
        image=read(images["image"]),
        mask=None if images.get("mask") is None else read(images["mask"]),
        companions={modality: read(name) for modality, name in (images.get("companions") or {}).items()},
        spacing_given=bool(job.get("spacing_given", False)),
        names=dict(job.get("names") or {}),
    )
    return inputs, SegmentationRequest.from_record(job["request"])


# ----------------------------------------------------------------------------------------- result


def _json_ready(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_result(folder: str | os.PathLike, result: SegmentationResult) -> Path:
    """Write ``result`` into ``folder/result/``, whole or not at all.

    Everything goes into a hidden staging folder beside it, renamed to ``result`` at the end; an error or a
    signal on the way removes the staging folder, so ``result/`` never exists half written (a SIGKILL leaves
    the staging folder, which the job folder's owner removes with the rest).
    """
    folder = Path(folder)
    target = folder / RESULT_FOLDER
    if target.exists():
        raise ValueError(f"{target} exists already; a job folder is written once.")
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
    try:
        np.save(staging / CLASS_MAP_FILE, np.ascontiguousarray(result.class_map, dtype=np.uint8))
        probability_files = {}
        for name, probability in result.probabilities.items():
            probability_files[name] = f"probability_{name}.npy"
            np.save(staging / probability_files[name], np.asarray(probability, dtype=np.float32))
        image_files = {}  # auxiliary images (ROSE's super-resolved image), as arrays, not JSON lists
        for name, image in result.images.items():
            image_files[name] = f"image_{name}.npy"
            np.save(staging / image_files[name], np.asarray(image, dtype=np.float32))
        record = {
            item.name: getattr(result, item.name) for item in fields(result) if item.name not in _ARRAY_FIELDS
        }
        record["probability_files"] = probability_files
        record["image_files"] = image_files
        (staging / RESULT_FILE).write_text(
            json.dumps(record, indent=1, default=_json_ready), encoding="utf-8"
        )
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def has_result(folder: str | os.PathLike) -> bool:
    return (Path(folder) / RESULT_FOLDER / RESULT_FILE).is_file()


def read_result(folder: str | os.PathLike) -> SegmentationResult:
    """The :class:`~VesselSegLib.inference.pipeline.SegmentationResult` the worker wrote into ``folder``."""
    from VesselSegLib.inference.pipeline import SegmentationResult

    result_folder = Path(folder) / RESULT_FOLDER
    try:
        record = json.loads((result_folder / RESULT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{result_folder} holds no result; the segmentation did not finish.") from None
    probability_files = record.pop("probability_files", {})
    image_files = record.pop("image_files", {})
    for name in _TUPLE_FIELDS:
        record[name] = tuple(record[name])
    load = lambda name: np.load(result_folder / name, allow_pickle=False)  # noqa: E731
    return SegmentationResult(
        class_map=load(CLASS_MAP_FILE),
        probabilities={name: load(file) for name, file in probability_files.items()},
        images={name: load(file) for name, file in image_files.items()},
        **record,
    )


__all__ = [
    "CANCELLED",
    "DONE",
    "ERROR",
    "PROGRESS",
    "has_result",
    "one_line",
    "parse_line",
    "progress_line",
    "read_job",
    "read_result",
    "write_job",
    "write_result",
]
