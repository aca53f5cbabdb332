"""VesselSeg's one dependency list (VesselSegLib/requirements.txt): pyproject, the installed metadata and the
Slicer module's check all read it, and the check compares installed versions, not only presence."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from VesselSegLib import dependencies
from VesselSegLib.dependencies import (
    REQUIREMENTS_FILE,
    TAG_OUTSIDE_SLICER,
    TAG_PYTORCH_EXTENSION,
    missing_requirements,
    parse_requirements,
    pip_install_arguments,
    read_requirements,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_file_is_shipped_in_the_library_and_parses():
    assert REQUIREMENTS_FILE == REPO_ROOT / "VesselSegLib" / "requirements.txt"
    requirements = read_requirements()
    assert len(requirements) >= 15
    for item in requirements:
        parsed = Requirement(item.requirement)  # valid PEP 508
        assert parsed.name == item.name and str(parsed.specifier), f"{item.requirement}: no version floor"
    names = [item.name.lower() for item in requirements]
    assert len(names) == len(set(names)), "a requirement is listed twice"


def test_every_requirement_is_satisfied_in_this_environment():
    unmet = missing_requirements(inside_slicer=False)
    assert unmet == [], "; ".join(item.reason for item in unmet)


def test_skan_and_pynrrd_are_required():
    """The campaign defect: "Create vessel graph" needs skan, which the module's own list forgot."""
    by_name = {item.name.lower(): item for item in read_requirements()}
    assert by_name["skan"].specifier == ">=0.11"
    assert by_name["pynrrd"].specifier == ">=1.0"


def test_tags_slicer_core_and_torch():
    by_name = {item.name.lower(): item for item in read_requirements()}
    assert by_name["slicer-core"].tags == {TAG_OUTSIDE_SLICER}
    assert by_name["torch"].tags == {TAG_PYTORCH_EXTENSION}
    assert all(not item.tags for name, item in by_name.items() if name not in {"slicer-core", "torch"})


def test_missing_and_too_old_packages_are_reported_with_reasons():
    numpy_version = importlib.metadata.version("numpy")
    text = (
        "# a comment\n"
        "\n"
        "vesselseg-no-such-package-xyz>=1.0  # [pytorch-extension] trailing comment\n"
        "numpy>=999\n"
        "numpy>=1.0\n"
        "slicer-core>=999  # [outside-slicer]\n"
        'numpy>=999; python_version < "3"\n'  # for another Python: not checked
    )
    requirements = parse_requirements(text)
    unmet = missing_requirements(inside_slicer=True, requirements=requirements)
    assert [(item.requirement, item.installed_version, item.reason) for item in unmet] == [
        ("vesselseg-no-such-package-xyz>=1.0", None, "vesselseg-no-such-package-xyz is not installed"),
        ("numpy>=999", numpy_version, f"numpy {numpy_version} is installed but >=999 is required"),
    ]
    assert unmet[0].uses_pytorch_extension and not unmet[1].uses_pytorch_extension
    assert pip_install_arguments(unmet) == ["vesselseg-no-such-package-xyz>=1.0", "numpy>=999"]
    # outside Slicer the outside-slicer line is checked too
    outside = missing_requirements(inside_slicer=False, requirements=requirements)
    assert [item.name for item in outside][-1] == "slicer-core"


def test_pip_arguments_keep_the_specifiers_as_written():
    requirements = parse_requirements("monai>=1.4,<1.6\nscikit-image>=999\n")
    unmet = missing_requirements(inside_slicer=True, requirements=requirements)
    assert pip_install_arguments(unmet) == ["monai>=1.4,<1.6", "scikit-image>=999"]
    assert "is installed but >=1.4,<1.6 is required" in unmet[0].reason


def test_malformed_lines_are_rejected():
    with pytest.raises(ValueError, match="unknown tag"):
        parse_requirements("numpy>=1  # [inside-mars]\n")
    with pytest.raises(ValueError, match="pip options"):
        parse_requirements("-r other.txt\n")
    with pytest.raises(ValueError, match=":1:"):
        parse_requirements("numpy>>=1\n")


def test_a_module_without_metadata_counts_as_installed(monkeypatch):
    """Slicer bundles some packages without dist-info; never pip-install over the application's copy."""

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dependencies.importlib.metadata, "version", no_metadata)
    requirements = parse_requirements("numpy>=999\nscikit-image>=999\nvesselseg-no-such-package-xyz\n")
    unmet = missing_requirements(inside_slicer=True, requirements=requirements)
    assert [item.name for item in unmet] == ["vesselseg-no-such-package-xyz"]


def test_without_packaging_presence_is_still_checked(monkeypatch):
    monkeypatch.setattr(dependencies, "Requirement", None)
    requirements = parse_requirements("numpy>=999\nvesselseg-no-such-package-xyz>=1  # [pytorch-extension]\n")
    assert [(item.name, item.specifier) for item in requirements] == [
        ("numpy", ">=999"),
        ("vesselseg-no-such-package-xyz", ">=1"),
    ]
    unmet = missing_requirements(inside_slicer=True, requirements=requirements)
    assert [item.reason for item in unmet] == ["vesselseg-no-such-package-xyz is not installed"]


def test_pyproject_reads_its_dependencies_from_the_file():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert "dependencies" not in project, "list the dependencies in VesselSegLib/requirements.txt only"
    assert "dependencies" in project["dynamic"]
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["dynamic"]["dependencies"] == {"file": ["VesselSegLib/requirements.txt"]}
    assert "requirements.txt" in setuptools["package-data"]["VesselSegLib"]
    cmake = (REPO_ROOT / "VesselSeg" / "CMakeLists.txt").read_text()
    assert "${_vesselseg_root}/VesselSegLib/requirements.txt" in cmake, "the Slicer extension must ship it"


def test_installed_metadata_lists_the_same_requirements():
    """`pip install -e .` metadata (refresh it after editing the file: `pip install --no-deps -e .`)."""
    try:
        requires = importlib.metadata.requires("vesselseg")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vesselseg is not pip-installed in this environment")
    runtime = sorted(str(Requirement(line)) for line in requires or [] if "extra ==" not in line)
    expected = sorted(str(Requirement(item.requirement)) for item in read_requirements())
    assert runtime == expected, "stale metadata or a second list: run `pip install --no-deps -e .`"
