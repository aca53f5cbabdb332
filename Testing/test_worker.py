"""The background segmentation worker, with real processes: run, progress, cancel, errors, kills.

The Slicer module runs ``PythonSlicer -m VesselSegLib.cli.worker JOB`` through
:class:`~VesselSegLib.cli.background.BackgroundSegmentation`; here ``sys.executable`` plays PythonSlicer, and
for the process-tree checks a small launcher process sits between, as PythonSlicer's launcher does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from VesselSegLib.cli.background import LIBRARY_ROOT, BackgroundSegmentation, WorkerState, popen_launcher
from VesselSegLib.cli.job import (
    RESULT_FOLDER,
    parse_line,
    progress_line,
    read_job,
    read_result,
    write_job,
    write_result,
)
from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.inference.pipeline import run_segmentation
from VesselSegLib.io.volume import Volume
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and process trees")

#: An oblique, anisotropic grid (axes permuted and flipped), so that any geometry slip shows.
DIRECTION = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
FRANGI = SegmentationRequest(method="frangi", device="cpu", keep_probabilities=True)


def _volume(array, spacing_zyx) -> Volume:
    return Volume(array, tuple(reversed(spacing_zyx)), (12.5, -3.25, 40.0), DIRECTION.copy())


def _phantom_inputs(shape, *, companion=False) -> SegmentationInputs:
    case = make_phantom_case("TOF-MRA", shape, seed=0)
    companions = {}
    if companion:
        swi = make_phantom_case("SWI", shape, spacing_zyx=case.spacing_zyx, seed=0)
        companions["SWI"] = _volume(swi.image, case.spacing_zyx)
    return SegmentationInputs(
        image=_volume(case.image, case.spacing_zyx),
        mask=_volume(case.brain_mask, case.spacing_zyx),
        companions=companions,
        names={"image": "input volume 'Phantom'"},
    )


def _launcher_in_between(args, cwd, environment_updates):
    """Start the worker under an intermediate process, as PythonSlicer's launcher starts python-real."""
    wrapper = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    return popen_launcher([sys.executable, "-c", wrapper, *args], cwd, environment_updates)


def _wait_for(job: BackgroundSegmentation, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is WorkerState.RUNNING, (job.state, job.error, list(job.log_tail))
        assert time.monotonic() < deadline, f"timed out; last progress {job.progress}"
        time.sleep(0.02)


def _tree(job: BackgroundSegmentation) -> list[psutil.Process]:
    parent = psutil.Process(job.pid)
    return [parent, *parent.children(recursive=True)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_gone(processes) -> None:
    alive = [p for p in processes if _running(p)]
    assert alive == [], f"processes left running: {alive}"


# ------------------------------------------------------------------------------------------- job folder


def test_job_folder_round_trip_keeps_voxels_grids_names_and_request(tmp_path):
    inputs = _phantom_inputs((16, 32, 32), companion=True)
    inputs.spacing_given = True
    request = FRANGI.replace(companion_modalities=("SWI",), thresholds={"artery": 0.3})
    write_job(tmp_path, inputs, request)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "companion_SWI.nrrd",
        "input.nrrd",
        "job.json",
        "mask.nrrd",
    ]
    again, request_again = read_job(tmp_path)
    assert request_again == request
    assert again.spacing_given is True and again.names == inputs.names
    for original, copy in ((inputs.image, again.image), (inputs.companions["SWI"], again.companions["SWI"])):
        np.testing.assert_array_equal(copy.array, original.array)
        assert copy.array.dtype == original.array.dtype
        assert copy.grid.same_as(original.grid, 1e-9)
    np.testing.assert_array_equal(again.mask.array.astype(bool), inputs.mask.array)
    again.check(request_again.companion_modalities)  # the mask and companion lie on the input's grid


def test_a_result_is_written_whole_or_not_at_all(tmp_path):
    inputs = _phantom_inputs((16, 32, 32))
    result = run_segmentation(inputs, FRANGI)
    write_result(tmp_path, result)
    again = read_result(tmp_path)
    np.testing.assert_array_equal(again.class_map, result.class_map)
    np.testing.assert_array_equal(again.probabilities["artery"], result.probabilities["artery"])
    for name in ("vessel_classes", "spacing_zyx", "output_scale_zyx", "method", "modality", "thresholds"):
        assert getattr(again, name) == getattr(result, name), name
    with pytest.raises(ValueError, match="exists already"):
        write_result(tmp_path, result)

    broken = tmp_path / "broken"
    broken.mkdir()
    result.adaptation = {"not JSON": object()}  # fails after the arrays are written
    with pytest.raises(TypeError):
        write_result(broken, result)
    assert list(broken.iterdir()) == []  # neither result/ nor its staging folder


def test_protocol_lines():
    assert parse_line(progress_line(0.42, "Predicting\nwindow 3")) == (
        "PROGRESS",
        0.42,
        "Predicting window 3",
    )
    assert parse_line(progress_line(7, "x"))[1] == 1.0
    assert parse_line("DONE") == ("DONE", None, "")
    assert parse_line("ERROR The input volume is constant.") == (
        "ERROR",
        None,
        "The input volume is constant.",
    )
    for text in ("PROGRESS x y", "PROGRESS 1.5 y", "DONE twice", "done", "vesselseg worker: WARNING: x"):
        assert parse_line(text) is None


# ------------------------------------------------------------------------------------------- processes


def test_the_worker_segments_in_the_background_as_in_process(tmp_path):
    inputs = _phantom_inputs((16, 32, 32))
    fractions = []
    job = BackgroundSegmentation(
        inputs, FRANGI, temporary_root=tmp_path, progress_callback=lambda f, m: fractions.append((f, m))
    )
    with job.start():
        assert job.job_folder.parent == tmp_path and (job.job_folder / "job.json").is_file()
        assert job.wait(timeout=120) is WorkerState.DONE, (job.error, list(job.log_tail))
        assert job.returncode == 0 and job.error is None
        result = job.result()
        folder = job.job_folder
    assert not folder.exists()  # cleanup removed the job folder, result included

    values = [f for f, _ in fractions]
    assert len(values) >= 5 and values == sorted(values) and values[-1] == 1.0 and job.progress[0] == 1.0
    assert any("Vesselness" in message for _, message in fractions)
    expected = run_segmentation(inputs, FRANGI)
    np.testing.assert_array_equal(result.class_map, expected.class_map)
    assert result.class_map.dtype == np.uint8 and result.class_map.shape == inputs.image.array.shape
    np.testing.assert_allclose(result.probabilities["artery"], expected.probabilities["artery"], atol=1e-6)
    assert result.vessel_classes == expected.vessel_classes == ("artery",)
    assert result.spacing_zyx == pytest.approx(expected.spacing_zyx, abs=1e-12)
    assert result.output_scale_zyx == (1, 1, 1) and result.modality == "TOF-MRA"
    assert (result.method, result.device, result.thresholds) == ("frangi", "cpu", expected.thresholds)
    assert result.resampling == json.loads(json.dumps(expected.resampling))


@posix_only
def test_cancel_kills_the_whole_process_tree_and_leaves_nothing(tmp_path):
    inputs = _phantom_inputs((96, 160, 160))  # a few seconds of Frangi filtering
    job = BackgroundSegmentation(inputs, FRANGI, temporary_root=tmp_path, launcher=_launcher_in_between)
    job.start()
    try:
        _wait_for(job, lambda: job.progress[0] >= 0.05)  # in the filter, past the imports
        tree = _tree(job)
        assert len(tree) == 2  # the launcher and the worker
        tick = time.monotonic()
        job.cancel()
        assert time.monotonic() - tick < 3.0
        assert job.poll() is WorkerState.CANCELLED and job.error is None
        _assert_gone(tree)
        assert not (job.job_folder / RESULT_FOLDER).exists()
        with pytest.raises(RuntimeError, match="cancelled"):
            job.result()
    finally:
        job.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_a_bad_input_ends_with_one_error_line(tmp_path):
    inputs = SegmentationInputs(image=_volume(np.full((16, 32, 32), 7.0, np.float32), (0.8, 0.5, 0.5)))
    with BackgroundSegmentation(inputs, FRANGI, temporary_root=tmp_path).start() as job:
        assert job.wait(timeout=60) is WorkerState.FAILED
        assert job.returncode == 1
        assert "constant" in job.error and "\n" not in job.error
        assert not (job.job_folder / RESULT_FOLDER).exists()
    assert list(tmp_path.iterdir()) == []


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_killed_from_outside_leaves_no_result(tmp_path, signum):
    # Large enough that the run is still going when the signal lands, even on a loaded machine: with a
    # 16x32x32 phantom the worker sometimes finished first under the full suite.
    inputs = _phantom_inputs((96, 160, 160))
    with BackgroundSegmentation(inputs, FRANGI, temporary_root=tmp_path).start() as job:
        _wait_for(job, lambda: job.progress[1] == "Reading the input")
        os.kill(job.pid, signum)
        state = job.wait(timeout=60)
        if signum == signal.SIGKILL:
            assert state is WorkerState.FAILED and "SIGKILL" in job.error
        else:  # handled: a clean exit, no staging folder either
            assert state is WorkerState.CANCELLED and job.returncode == 128 + signal.SIGTERM
            assert "SIGTERM" in job.error
            assert sorted(p.name for p in job.job_folder.iterdir() if not p.name.endswith(".nrrd")) == [
                "job.json"
            ]
        assert not (job.job_folder / RESULT_FOLDER).exists()
        with pytest.raises(RuntimeError):
            job.result()
    assert list(tmp_path.iterdir()) == []


@posix_only
def test_the_worker_stops_without_a_result_when_its_parent_is_gone(tmp_path):
    """Slicer closed or crashed mid-run: the worker notices within a second and exits as on SIGTERM."""
    write_job(tmp_path, _phantom_inputs((96, 160, 160)), FRANGI)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    worker = subprocess.Popen(
        [sys.executable, "-m", "VesselSegLib.cli.worker", str(tmp_path), "--parent-pid", str(parent.pid)],
        cwd=LIBRARY_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    parent.wait()  # reaped: its PID no longer answers
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM, output
    assert output.splitlines()[-1] == "CANCELLED"
    assert not (tmp_path / RESULT_FOLDER).exists()
