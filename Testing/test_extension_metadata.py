"""What the Slicer Extensions Index and a user's Slicer check before any code runs, checked without Slicer.

- The top-level CMakeLists.txt: screenshots and icon that exist in the repository, contributors as
  "Name (Organization)", the PyTorch extension as a dependency, a documentation link, Slicer 5.10 as the
  minimum version; LICENSE (Apache-2.0).
- Python 3.12 (Slicer 5.10+): every file the module imports parses with its grammar.
- The module loads and lists its methods before the optional packages are installed: VesselSeg.py imports
  only the standard library, Slicer and VesselSegLib at module level, and those VesselSegLib modules (and
  the method registry) import with torch, MONAI, SciPy, scikit-image and the other packages blocked.
- The bundled sample registered with the Sample Data module: files, file:// URIs, SHA256 checksums.
- torch and MONAI versions that fit each other.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
import subprocess
import sys
import textwrap
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from VesselSegLib.dependencies import IMPORT_NAMES, installed_pin, read_requirements
from VesselSegLib.resources import (
    SAMPLE_DATA_CATEGORY,
    SAMPLE_DATA_FILES,
    SAMPLE_LABELS_FILE,
    sample_data_dir,
    sample_data_sources,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CMAKE_FILE = REPO_ROOT / "CMakeLists.txt"
MODULE_FILE = REPO_ROOT / "VesselSeg" / "VesselSeg.py"
MINIMUM_SLICER_VERSION = "5.10"
SLICER_PYTHON = (3, 12)  # the Python of Slicer 5.10 and later (Slicer 5.8 has 3.9)

# Top-level modules a Slicer 5.10 application provides to a scripted module (besides the standard library).
SLICER_PROVIDED = {"slicer", "vtk", "qt", "ctk", "numpy", "SimpleITK", "sitkUtils"}
# Requirements of VesselSegLib/requirements.txt that Slicer itself ships: not blocked below.
SLICER_SHIPPED_REQUIREMENTS = {"numpy", "simpleitk", "slicer-core"}


def _cmake() -> str:
    """The top-level CMakeLists.txt without its comment lines."""
    lines = CMAKE_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _cmake_set(name: str) -> str:
    """The quoted value of ``set(NAME "value")`` (the form the Extensions Index's checker reads)."""
    matches = re.findall(rf'set\s*\(\s*{name}\s+"([^"]*)"\s*\)', _cmake(), re.IGNORECASE)
    assert len(matches) == 1, f'expected one set({name} "...") in CMakeLists.txt, found {len(matches)}'
    return matches[0].strip()


def _repository_path(url: str) -> Path:
    """The file of this repository a raw.githubusercontent.com URL names (owner/repo/branch/path)."""
    parsed = urllib.parse.urlparse(url)
    assert parsed.scheme == "https" and parsed.netloc == "raw.githubusercontent.com", url
    parts = parsed.path.strip("/").split("/")
    assert len(parts) > 3, f"not owner/repository/branch/path: {url}"
    return REPO_ROOT.joinpath(*parts[3:])


# ----------------------------------------------------------------------------- CMake metadata


def test_screenshot_and_icon_urls_name_files_that_exist_in_the_repository():
    screenshots = _cmake_set("EXTENSION_SCREENSHOTURLS").split()
    assert screenshots, "EXTENSION_SCREENSHOTURLS is empty"
    for url in [*screenshots, _cmake_set("EXTENSION_ICONURL")]:
        path = _repository_path(url)
        assert path.is_file(), f"{url} names {path.relative_to(REPO_ROOT)}, which is not in the repository"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def test_the_extensions_index_checker_reads_literal_urls():
    """ExtensionsIndex/scripts/check_description_files.py's own patterns, on the raw file (comments included):
    it takes the first match, which must be an http(s) URL."""
    raw = CMAKE_FILE.read_text(encoding="utf-8")
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', raw, re.IGNORECASE | re.MULTILINE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', raw, re.IGNORECASE | re.MULTILINE)
    assert icons and icons[0].startswith("http"), icons
    assert shots and all(url.startswith("http") for url in shots[0].split()), shots
    projects = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", raw, re.IGNORECASE | re.MULTILINE)
    assert projects[0] == "VesselSeg"  # must match the extension description file's name


def test_the_screenshot_is_a_real_picture_of_modest_size():
    (url,) = _cmake_set("EXTENSION_SCREENSHOTURLS").split()
    data = _repository_path(url).read_bytes()
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 640 and height >= 400, (width, height)
    assert len(data) < 300 * 1024, f"{len(data) // 1024} KB: keep the screenshot under 300 KB"
    assert (REPO_ROOT / "scripts" / "render_screenshot.py").is_file(), "the script that renders it"


def test_contributors_are_name_and_organization():
    contributors = _cmake_set("EXTENSION_CONTRIBUTORS")
    # Comma-separated, but an organization may contain commas: "Jane Doe (Lab, University)".
    people = [p.strip() for p in re.split(r",(?![^()]*\))", contributors) if p.strip()]
    assert people, "no contributors"
    for person in people:
        assert re.fullmatch(r"[^(),]+ \([^()]+\)", person), f"not 'Name (Organization)': {person!r}"
    # The module's own metadata says the same.
    assert f'self.parent.contributors = ["{contributors}"]' in MODULE_FILE.read_text(encoding="utf-8")


def test_the_pytorch_extension_is_a_dependency():
    assert "PyTorch" in _cmake_set("EXTENSION_DEPENDS").split()


def test_a_documentation_homepage_is_set():
    homepage = _cmake_set("EXTENSION_HOMEPAGE")
    assert urllib.parse.urlparse(homepage).scheme == "https", homepage
    assert (REPO_ROOT / "README.md").is_file()
    # The module's help links the same page.
    assert f'DOCUMENTATION_URL = "{homepage}"' in MODULE_FILE.read_text(encoding="utf-8")


def test_the_minimum_slicer_version_is_5_10():
    text = _cmake()
    assert _cmake_set("VesselSeg_MINIMUM_SLICER_VERSION") == MINIMUM_SLICER_VERSION
    guard = re.search(
        r"if\s*\(\s*\"\$\{Slicer_VERSION_MAJOR\}\.\$\{Slicer_VERSION_MINOR\}\"\s+VERSION_LESS\s+"
        r"\"\$\{VesselSeg_MINIMUM_SLICER_VERSION\}\"\s*\)\s*message\s*\(\s*FATAL_ERROR",
        text,
    )
    assert guard, "no `if(<Slicer version> VERSION_LESS <minimum>) message(FATAL_ERROR ...)` guard"
    assert text.index("find_package(Slicer REQUIRED)") < guard.start(), "the guard must follow find_package"
    # The same statement for users: the module's help text and the README's first Slicer paragraph.
    module = MODULE_FILE.read_text(encoding="utf-8")
    assert f'MINIMUM_SLICER_VERSION = "{MINIMUM_SLICER_VERSION}"' in module
    assert "Requires 3D Slicer {version} or newer" in module
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## In 3D Slicer\n", 1)[1]
    first_paragraph = section.strip().split("\n\n", 1)[0]
    assert f"Slicer {MINIMUM_SLICER_VERSION}" in first_paragraph, first_paragraph
    assert "Slicer 5.8+ ships Python 3.12" not in (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_license_is_the_apache_2_0_text():
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    for phrase in (
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "END OF TERMS AND CONDITIONS",
    ):
        assert phrase in text, f"LICENSE lacks {phrase!r}: not the full Apache-2.0 text"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "Apache-2.0"}


def test_the_extension_installs_the_sample_data_and_icons():
    """Registering the sample needs the files in the installed extension, beside VesselSegLib."""
    module_cmake = (REPO_ROOT / "VesselSeg" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "${_vesselseg_root}/Resources/SampleData/*" in module_cmake
    assert "${_vesselseg_root}/Resources/Icons/*" in module_cmake


# ----------------------------------------------------------------------------- Python 3.12


def _module_files() -> list[Path]:
    return [MODULE_FILE, *sorted((REPO_ROOT / "VesselSegLib").rglob("*.py"))]


@pytest.mark.parametrize("path", _module_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_module_file_parses_with_python_3_12_grammar(path):
    """Slicer 5.10 has Python 3.12. ``feature_version`` rejects syntax newer than 3.12 on a newer Python;
    on an older one (this venv: 3.11) the file must parse with that older grammar, which 3.12 accepts."""
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=SLICER_PYTHON)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {ast.unparse(t).rsplit(".", 1)[-1] for t in types}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _module_level_imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of the imports run when ``path`` is imported: module body, including its
    top-level if/try blocks, but not functions or classes (those run later, after installation), nor
    imports guarded by ``except ImportError``."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    found.append((node.module, node.lineno))
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                if not any(_catches_import_error(handler) for handler in node.handlers):
                    visit(node.body)  # a guarded import (try/except ImportError) cannot fail the load
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_the_module_imports_only_stdlib_slicer_and_vesselseglib_at_module_level():
    allowed = set(sys.stdlib_module_names) | SLICER_PROVIDED | {"VesselSegLib", "__future__"}
    outside = [
        f"line {line}: import {name}"
        for name, line in _module_level_imports(MODULE_FILE)
        if name.split(".")[0] not in allowed
    ]
    assert outside == [], (
        "VesselSeg.py imports packages at module level that are installed only later (import them inside "
        "the function that needs them): " + ", ".join(outside)
    )


def _blocked_import_names() -> list[str]:
    """Import names of every requirement Slicer does not ship (torch, monai, scipy, skimage, ...)."""
    names = []
    for item in read_requirements():
        if item.name.lower() in SLICER_SHIPPED_REQUIREMENTS:
            continue
        names.append(IMPORT_NAMES.get(item.name.lower(), item.name.replace("-", "_")))
    return sorted(set(names))


def test_the_module_loads_and_lists_methods_without_the_optional_packages():
    """Run in a fresh Python with the packages blocked (``sys.modules[name] = None`` makes any import of
    them fail), as in a Slicer where they are not installed yet."""
    blocked = _blocked_import_names()
    for name in ("torch", "monai", "scipy", "skimage"):
        assert name in blocked
    library_imports = sorted(
        {name for name, _ in _module_level_imports(MODULE_FILE) if name.split(".")[0] == "VesselSegLib"}
    )
    assert "VesselSegLib.mrml.logic" in library_imports
    script = textwrap.dedent(
        f"""
        import importlib, json, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        for name in {blocked!r}:
            sys.modules[name] = None
        from VesselSegLib.models.registry import ModelRegistry
        entries = ModelRegistry.default().entries("TOF-MRA")
        for module in {library_imports!r} + ["VesselSegLib.request", "VesselSegLib.mrml.logic"]:
            importlib.import_module(module)
        from VesselSegLib.mrml.logic import VesselSegLogic
        from VesselSegLib.preprocessing.presets import MODALITY_PRESETS
        logic = VesselSegLogic()
        listed = {{m: [e.name for e in logic.availableMethods(m)] for m in MODALITY_PRESETS}}
        defaults = {{m: logic.defaultMethod(m) for m in MODALITY_PRESETS}}
        print(json.dumps({{"registry": [e.name for e in entries], "listed": listed, "defaults": defaults}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["registry"], "no TOF-MRA methods listed"
    assert result["listed"]["TOF-MRA"] == result["registry"]
    for modality, names in result["listed"].items():
        assert names and result["defaults"][modality] in names, modality


# ----------------------------------------------------------------------------- sample data


def test_sample_data_sources_name_the_bundled_files_with_their_checksums():
    (source,) = sample_data_sources()
    assert source["category"] == SAMPLE_DATA_CATEGORY
    assert source["sampleName"] == "VesselSegTOFMRA"
    files = [file_name for file_name, _ in SAMPLE_DATA_FILES]
    assert files == ["sample_tof_mra.nrrd", "sample_swi.nrrd", "sample_brain_mask.nrrd"]
    count = len(files)
    for key in ("uris", "fileNames", "nodeNames", "checksums"):
        assert len(source[key]) == count, key
    assert len(set(source["nodeNames"])) == count and len(set(source["fileNames"])) == count
    for uri, file_name, checksum in zip(source["uris"], files, source["checksums"], strict=True):
        parsed = urllib.parse.urlparse(uri)
        assert parsed.scheme == "file", uri
        path = Path(urllib.request.url2pathname(parsed.path))
        assert path == sample_data_dir().resolve() / file_name and path.is_file(), uri
        with urllib.request.urlopen(uri) as stream:  # what the Sample Data module's urlretrieve reads
            content = stream.read()
        algorithm, _, digest = checksum.partition(":")
        assert algorithm == "SHA256" and digest == hashlib.sha256(content).hexdigest(), file_name
    assert source["loadFileType"] == "VolumeFile"
    assert Path(source["thumbnailFileName"]).is_file()
    assert (sample_data_dir() / SAMPLE_LABELS_FILE).is_file()  # scored against in the self-test


def test_sample_data_sources_use_only_arguments_of_register_custom_sample_data_source():
    # SampleData.SampleDataLogic.registerCustomSampleDataSource's keyword arguments (Slicer 5.x).
    known = {
        "category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
        "thumbnailFileName", "loadFileType", "loadFileTypes", "loadFiles", "loadFileProperties",
        "checksums",
    }  # fmt: skip
    for source in sample_data_sources():
        assert set(source) <= known, set(source) - known
        json.dumps(source)  # plain data


def test_the_module_registers_the_sample_at_startup():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VesselSeg")
    source = ast.unparse(module_class)
    assert "slicer.app.connect('startupCompleted()', registerSampleData)" in source
    register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    body = ast.unparse(register)
    assert "registerCustomSampleDataSource(**source)" in body and "sample_data_sources()" in body


# ----------------------------------------------------------------------------- torch and MONAI


def test_torch_and_monai_requirements_fit_each_other():
    """monai's own Requires-Dist (read from the 1.4.0-1.6.1 wheels): 1.4.0 numpy<2; 1.5.0 torch>=2.4.1,<2.7;
    1.5.1 and 1.5.2 torch>=2.4.1; 1.6.x torch>=2.8. The range must exclude 1.4 and 1.5.0 and stop below the
    untested 1.7, and torch's floor must be what monai 1.5.1 needs."""
    by_name = {item.name.lower(): item for item in read_requirements()}
    monai = Requirement(by_name["monai"].requirement).specifier
    torch = Requirement(by_name["torch"].requirement).specifier
    for version, allowed in (("1.4.0", False), ("1.5.0", False), ("1.5.1", True), ("1.5.2", True),
                             ("1.6.1", True), ("1.7.0", False)):  # fmt: skip
        assert monai.contains(version) is allowed, version
    floors = [Version(spec.version) for spec in torch if spec.operator == ">="]
    assert floors == [Version("2.4.1")], str(torch)
    assert not torch.contains("2.4.0") and torch.contains("2.4.1") and torch.contains("2.13.0")
    assert by_name["torch"].tags == {"pytorch-extension"}


def test_installed_pin_keeps_the_exact_installed_version():
    import numpy

    assert installed_pin("numpy") == f"numpy=={numpy.__version__}"
    assert installed_pin("vesselseg-no-such-package-xyz") is None


def test_the_registered_samples_load_into_a_real_scene_on_one_grid_ready_for_vcnet():
    """What the Sample Data module will load, loaded into a slicer-core scene: three volumes on one grid that
    the Logic accepts as VC-Net's input, SWI companion and brain mask."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from VesselSegLib.mrml.logic import VesselSegLogic
    from VesselSegLib.mrml.scene import (
        create_headless_scene,
        get_ijk_to_ras,
        load_volume_node,
        release_headless_scene,
    )
    from VesselSegLib.request import SegmentationRequest
    from VesselSegLib.resources import sample_data_sources

    (source,) = sample_data_sources()
    scene = create_headless_scene()
    try:
        nodes = {
            name: load_volume_node(scene, url2pathname(urlparse(uri).path), name=name)
            for uri, name in zip(source["uris"], source["nodeNames"], strict=True)
        }
        matrices = [get_ijk_to_ras(node) for node in nodes.values()]
        for matrix in matrices[1:]:
            np.testing.assert_allclose(matrix, matrices[0], atol=1e-6)
        by_role = {name.lower(): node for name, node in nodes.items()}
        tof = next(node for name, node in by_role.items() if "tof" in name or "mra" in name)
        swi = next(node for name, node in by_role.items() if "swi" in name)
        mask = next(node for name, node in by_role.items() if "mask" in name)
        ok, message = VesselSegLogic().isValidInputOutputData(
            tof,
            SegmentationRequest(method="vcnet", companion_modalities=("SWI",)),
            maskVolume=mask,
            companionVolumes={"SWI": swi},
        )
        assert ok, message
    finally:
        release_headless_scene(scene)
