"""VesselSeg's runtime dependencies: read from the one list, ``VesselSegLib/requirements.txt``, and checked.

``pyproject.toml`` takes its ``dependencies`` from that file, the wheel and the Slicer extension ship it
beside this module, and the Slicer module asks :func:`missing_requirements` what to offer to install
(:func:`pip_install_arguments` gives the specifiers, exactly as written in the file).

A requirement is checked against the *installed distribution*'s version (``importlib.metadata``), nothing
is imported. Versions are compared with ``packaging`` (present in every pip environment and in Slicer);
without it only presence is checked. Two tags, written at the start of a requirement's trailing comment
(``torch>=2.4.1  # [pytorch-extension]``), change how a requirement is handled inside 3D Slicer:

- ``outside-slicer``: not checked inside Slicer (the application provides it: ``slicer-core``);
- ``pytorch-extension``: inside Slicer, installed through the PyTorch extension (``torch``).

Slicer 5.11 has ``slicer.pydeps.pip_check`` for the same check; this module works in every Slicer version
and outside Slicer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - packaging is in every pip environment and in Slicer
    Requirement = None

REQUIREMENTS_FILE = Path(__file__).resolve().with_name("requirements.txt")

#: Tag: the requirement is needed only outside 3D Slicer, whose application provides it.
TAG_OUTSIDE_SLICER = "outside-slicer"
#: Tag: inside 3D Slicer the requirement is installed through the PyTorch extension.
TAG_PYTORCH_EXTENSION = "pytorch-extension"
KNOWN_TAGS = frozenset({TAG_OUTSIDE_SLICER, TAG_PYTORCH_EXTENSION})

#: Import names of distributions whose import name is not the distribution name (with "-" -> "_"). Used only
#: when a distribution has no metadata (a package bundled by Slicer's build, say): then an importable module
#: counts as installed, version unknown, rather than pip-installing over the application's own copy.
IMPORT_NAMES = {
    "scikit-image": "skimage",
    "connected-components-3d": "cc3d",
    "pynrrd": "nrrd",
    "slicer-core": "slicer",
}

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*")
_TAGS = re.compile(r"\s*\[([^\]]*)\]")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequirementLine:
    """One requirement of the file.

    Attributes
    ----------
    requirement : str
        As written in the file, without the comment (``"monai>=1.5.1,<1.7"``): what pip is given.
    name : str
        Distribution name (``"scikit-image"``).
    specifier : str
        The version part as written (``">=1.5.1,<1.7"``; ``""`` when any version will do).
    tags : frozenset of str
        :data:`TAG_OUTSIDE_SLICER`, :data:`TAG_PYTORCH_EXTENSION`.
    line_number : int
        1-based line in the file (0 for requirements not read from a file).
    """

    requirement: str
    name: str
    specifier: str
    tags: frozenset[str] = frozenset()
    line_number: int = 0


@dataclass(frozen=True)
class UnmetRequirement:
    """A requirement that the running Python does not satisfy.

    Attributes
    ----------
    requirement : str
        As written in the file (``"monai>=1.5.1,<1.7"``).
    name, specifier : str
        Distribution name and version part, as in :class:`RequirementLine`.
    installed_version : str or None
        The installed version; None when the distribution is not installed.
    reason : str
        One line for the user: ``"skan is not installed"``,
        ``"monai 1.4.0 is installed but >=1.5.1,<1.7 is required"``.
    tags : frozenset of str
        The requirement's tags.
    """

    requirement: str
    name: str
    specifier: str
    installed_version: str | None
    reason: str
    tags: frozenset[str] = frozenset()

    @property
    def uses_pytorch_extension(self) -> bool:
        """Inside Slicer, install this one through the PyTorch extension, not plain pip."""
        return TAG_PYTORCH_EXTENSION in self.tags


def parse_requirements(text: str, *, source: str = "requirements") -> list[RequirementLine]:
    """The requirements of a requirements-file text; ValueError naming the line for a malformed one."""
    requirements = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        code, _, comment = raw.partition(" #")  # as pip and setuptools: a comment follows whitespace
        code = code.strip()
        if code.startswith("-"):
            raise ValueError(f"{source}:{number}: pip options are not supported here: {code!r}")
        tags: frozenset[str] = frozenset()
        match = _TAGS.match(comment)
        if match:
            tags = frozenset(tag.strip() for tag in match.group(1).split(",") if tag.strip())
            unknown = tags - KNOWN_TAGS
            if unknown:
                raise ValueError(f"{source}:{number}: unknown tag(s) {sorted(unknown)} in {raw.strip()!r}")
        name_match = _NAME.match(code)
        if name_match is None:
            raise ValueError(f"{source}:{number}: not a requirement: {code!r}")
        if Requirement is not None:
            try:
                parsed = Requirement(code)
            except InvalidRequirement as error:
                raise ValueError(f"{source}:{number}: {error}") from None
            name = parsed.name
        else:
            name = name_match.group(1)
        specifier = code[name_match.end() :].partition(";")[0].strip()
        requirements.append(RequirementLine(code, name, specifier, tags, number))
    return requirements


def read_requirements(path: str | Path | None = None) -> list[RequirementLine]:
    """The requirements of ``path`` (default :data:`REQUIREMENTS_FILE`, VesselSeg's runtime dependencies)."""
    path = Path(path) if path is not None else REQUIREMENTS_FILE
    return parse_requirements(path.read_text(encoding="utf-8"), source=str(path))


def _installed_version(name: str) -> str | None:
    """Version of the installed distribution ``name``; "" when only an importable module (no metadata)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = IMPORT_NAMES.get(name.lower(), name.replace("-", "_").replace(".", "_"))
    try:
        if importlib.util.find_spec(module) is not None:
            return ""
    except (ImportError, ValueError):
        pass
    return None


def _check(requirement: RequirementLine) -> UnmetRequirement | None:
    """None if the running Python satisfies ``requirement``, else why not."""
    if Requirement is not None:
        parsed = Requirement(requirement.requirement)
        if parsed.marker is not None and not parsed.marker.evaluate():
            return None  # for another platform or Python version
    installed = _installed_version(requirement.name)

    def unmet(reason: str) -> UnmetRequirement:
        return UnmetRequirement(
            requirement.requirement,
            requirement.name,
            requirement.specifier,
            installed or None,
            reason,
            requirement.tags,
        )

    if installed is None:
        return unmet(f"{requirement.name} is not installed")
    if not installed:
        logger.debug("%s is importable but has no metadata; its version is not checked", requirement.name)
        return None
    if Requirement is None or not parsed.specifier:
        return None
    try:
        version = Version(installed)
    except InvalidVersion:
        logger.warning(
            "%s: installed version %r cannot be compared; not checked", requirement.name, installed
        )
        return None
    if parsed.specifier.contains(version, prereleases=True):
        return None
    return unmet(f"{requirement.name} {installed} is installed but {requirement.specifier} is required")


def missing_requirements(
    *, inside_slicer: bool, requirements: Iterable[RequirementLine] | None = None
) -> list[UnmetRequirement]:
    """The requirements that are not installed, or installed in a version that does not satisfy them.

    Parameters
    ----------
    inside_slicer : bool
        True in 3D Slicer: requirements tagged ``outside-slicer`` are skipped.
    requirements : iterable of RequirementLine, optional
        Default: :func:`read_requirements` (VesselSeg's runtime dependencies).

    Returns
    -------
    list of UnmetRequirement
        In the file's order; empty when everything is satisfied.
    """
    if requirements is None:
        requirements = read_requirements()
    unmet = []
    for requirement in requirements:
        if inside_slicer and TAG_OUTSIDE_SLICER in requirement.tags:
            continue
        problem = _check(requirement)
        if problem is not None:
            unmet.append(problem)
    return unmet


def pip_install_arguments(unmet: Sequence[UnmetRequirement | RequirementLine]) -> list[str]:
    """The requirement specifiers to give pip, one argument each, exactly as in the file (``"monai>=1.5.1,<1.7"``)."""
    return [item.requirement for item in unmet]


def installed_pin(name: str) -> str | None:
    """``"torch==2.5.1+cu121"``: the installed distribution ``name`` pinned to its exact version, or None.

    Given to pip beside the packages being installed so that pip keeps that distribution: inside 3D Slicer,
    torch comes from the PyTorch extension (the build for the GPU/CUDA driver), and without the pin pip
    would replace a torch < 2.8 to satisfy monai 1.6; with it pip picks monai 1.5.x. None when ``name`` is
    not installed or has no version metadata (nothing to keep).
    """
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return f"{name}=={version}" if version else None
