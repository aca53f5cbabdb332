"""Training cases (normalised image + per-class target) and the random patch sampler.

Every case goes through :func:`VesselSegLib.preprocessing.normalize_intensity` with its modality's preset,
the same normalisation inference applies, so the network sees the same intensity range in training and use.

Targets have one channel per model vessel class, in ``data.vessel_classes`` order: ``(C, Z, Y, X)`` uint8.
A source's labels map onto those channels (phantom ``class_remap``, file ``label_map`` / ``binary_class``);
channels a source says nothing about are 0, e.g. a two-photon stack labelled "vessel" fills only "micro".

Patch sampling follows TorchIO's split: :meth:`PatchSampler.draw` takes all random decisions from a NumPy
generator into a :class:`PatchSpec`; :meth:`PatchSampler.extract` applies one deterministically. The optional
domain randomisation (:mod:`trainer.randomisation`) follows the same split, inside the patch spec.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.config import DROP_CLASS, PHANTOM_LABELS, FileSource, PhantomSource, Source
from trainer.randomisation import DomainRandomisation, RandomisationSpec, apply_randomisation
from VesselSegLib.io import read_volume
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.preprocessing.resampling import plan_resampling, resample_to_spacing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingCase:
    """One normalised volume with its targets.

    Attributes
    ----------
    name : str
    image : ndarray of float32, shape (Z, Y, X)
        Normalised intensities (bright vessels, roughly [0, 1]).
    target : ndarray of uint8, shape (C, Z, Y, X)
        1 where a voxel belongs to the model's class ``c``.
    spacing_zyx : tuple of 3 float
        Voxel size in the modality's length unit (mm for MRA/SWI).
    modality : str
    box : tuple of 3 (start, stop)
        Region uniform patch centres are drawn from: brain mask and vessels' bounding box.
    vessel_voxels : ndarray of int64
        Flat indices of voxels that are vessel in any channel (centres of foreground patches).
    brain_mask : ndarray of bool, shape (Z, Y, X), or None
        The brain of a skull-stripped label-free case (the image is zero outside it); None otherwise. Label-free
        checks of a trained 3D-SLD model look inside it (``trainer.sld.label_free``).
    """

    name: str
    image: np.ndarray
    target: np.ndarray
    spacing_zyx: tuple[float, float, float]
    modality: str
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    vessel_voxels: np.ndarray
    brain_mask: np.ndarray | None = None


@dataclass(frozen=True)
class PatchSpec:
    """Every random choice behind one training patch (start may be negative: zero padding).

    ``randomisation`` holds the domain randomisation's choices (None: the sampler has none, or no augmentation).
    """

    case_index: int
    start_zyx: tuple[int, int, int]
    flip_y: bool = False
    flip_x: bool = False
    transpose_yx: bool = False
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    randomisation: RandomisationSpec | None = None


_CASE_CACHE: dict[tuple[str, tuple[str, ...]], list[TrainingCase]] = {}


def clear_case_cache() -> None:
    """Forget the cases kept in memory (phantoms are otherwise made once per process)."""
    _CASE_CACHE.clear()


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    if not mask.any():
        return tuple((0, n) for n in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _make_case(
    name: str,
    image: np.ndarray,
    target: np.ndarray,
    spacing_zyx: Sequence[float],
    modality: str,
    region: np.ndarray | None,
) -> TrainingCase:
    vessel = target.any(axis=0)
    region = vessel if region is None else (region | vessel)
    return TrainingCase(
        name=name,
        image=np.ascontiguousarray(image, dtype=np.float32),
        target=np.ascontiguousarray(target, dtype=np.uint8),
        spacing_zyx=tuple(float(s) for s in spacing_zyx),
        modality=modality,
        box=_bounding_box(region),
        vessel_voxels=np.flatnonzero(vessel),
    )


def _phantom_cases(
    source: PhantomSource, vessel_classes: tuple[str, ...], images_only: bool = False
) -> list[TrainingCase]:
    cases = []
    for offset in range(source.count):
        seed = source.seed + offset
        phantom = make_phantom_case(
            source.modality,
            source.shape_zyx,
            spacing_zyx=source.spacing_zyx,
            seed=seed,
            radius_model=source.radius_model,
        )
        name = f"phantom-{source.modality}-{seed}"
        # Normalise as inference does for a user who gives no mask: over the whole volume for bright-vessel
        # modalities (so the network learns to ignore bright scalp fat and the dark outside), inside the
        # brain for SWI, whose inversion needs a brain mask (see VesselSegLib.preprocessing.presets). A
        # skull-stripped source normalises inside the brain and zeroes the rest, whatever the modality.
        brain_only = source.skull_strip or not get_preset(source.modality).vessels_bright
        image = normalize_intensity(
            phantom.image, source.modality, phantom.brain_mask if brain_only else None
        )
        if images_only:
            mask = phantom.brain_mask if source.skull_strip else None
            cases.append(_label_free_case(name, image, phantom.spacing_zyx, source.modality, mask))
            continue
        target = np.zeros((len(vessel_classes), *phantom.class_map.shape), dtype=np.uint8)
        for phantom_name, label in PHANTOM_LABELS.items():
            model_name = source.class_remap.get(phantom_name, phantom_name)
            if model_name == DROP_CLASS:
                continue
            target[vessel_classes.index(model_name)] |= phantom.class_map == label
        cases.append(
            _make_case(name, image, target, phantom.spacing_zyx, source.modality, phantom.brain_mask)
        )
    return cases


def _label_free_case(
    name: str, image: np.ndarray, spacing_zyx, modality: str, brain_mask: np.ndarray | None
) -> TrainingCase:
    """A case with no label: zero target channels, no vessel voxels, and as the sampling box the whole
    volume, or for a skull-stripped image (``brain_mask`` given) the volume cut to the mask's bounding box."""
    if brain_mask is not None:
        box = tuple(slice(start, stop) for start, stop in _bounding_box(brain_mask))
        image, brain_mask = image[box], np.ascontiguousarray(brain_mask[box], dtype=bool)
    return TrainingCase(
        name=name,
        image=np.ascontiguousarray(image, dtype=np.float32),
        target=np.zeros((0, *image.shape), dtype=np.uint8),
        spacing_zyx=tuple(float(s) for s in spacing_zyx),
        modality=modality,
        box=tuple((0, n) for n in image.shape),
        vessel_voxels=np.zeros(0, dtype=np.int64),
        brain_mask=brain_mask,
    )


def _read_on_image_grid(path, what: str, image_path, volume, metadata) -> np.ndarray:
    """The array of a label or mask file that belongs to ``volume`` (read from ``image_path``), refused
    unless it has the image's shape. The file is read with the image's geometry, which also keeps TIFF files
    without metadata quiet."""
    array = np.asarray(read_volume(path, spacing_xyz=volume.spacing_xyz, metadata_path=metadata).array)
    if array.shape != volume.array.shape:
        raise ValueError(
            f"{what} {path} has shape {array.shape} but image {image_path} has {volume.array.shape}; they must "
            "match voxel for voxel."
        )
    return array


def _read_brain_mask(source: FileSource, index: int, volume, metadata) -> np.ndarray | None:
    """The brain mask of image ``index`` of a skull-stripped file source (None when it is not), on its grid."""
    if not source.skull_strip:
        return None
    path = source.brain_masks[index]
    mask = _read_on_image_grid(path, "Brain mask", source.images[index], volume, metadata) > 0
    if not mask.any():
        raise ValueError(f"Brain mask {path} is empty; give a mask that covers the brain.")
    return mask


def _file_image_cases(source: FileSource) -> list[TrainingCase]:
    """The images of a file source, normalised, without reading any label (label-free training)."""
    cases = []
    for index, (image_path, metadata) in enumerate(
        zip(source.images, source.metadata or (None,) * source.count, strict=True)
    ):
        volume = read_volume(image_path, spacing_xyz=source.spacing_for(index), metadata_path=metadata)
        mask = _read_brain_mask(source, index, volume, metadata)
        image = normalize_intensity(volume.array, source.modality, mask)
        cases.append(_label_free_case(image_path.name, image, volume.spacing_zyx, source.modality, mask))
    return cases


def _file_cases(source: FileSource, vessel_classes: tuple[str, ...]) -> list[TrainingCase]:
    if not source.labels:
        raise ValueError(
            f"The {source.modality} files from {source.root} have no labels; supervised training needs "
            'labels = "FOLDER" in the source, or train without labels (training.loss = "umis").'
        )
    cases = []
    for index, (image_path, label_path, metadata) in enumerate(
        zip(source.images, source.labels, source.metadata or (None,) * source.count, strict=True)
    ):
        volume = read_volume(image_path, spacing_xyz=source.spacing_for(index), metadata_path=metadata)
        labels = _read_on_image_grid(label_path, "Label", image_path, volume, metadata)
        target = np.zeros((len(vessel_classes), *labels.shape), dtype=np.uint8)
        if source.binary_class is not None:
            target[vessel_classes.index(source.binary_class)] = labels > 0
        else:
            unknown = sorted(set(np.unique(labels).tolist()) - set(source.label_map) - {0})
            if unknown:
                logger.warning(
                    "%s has label values %s that label_map does not name; they count as background.",
                    label_path.name,
                    unknown[:10],
                )
            for value, name in source.label_map.items():
                target[vessel_classes.index(name)] |= labels == value
        mask = _read_brain_mask(source, index, volume, metadata)
        image = normalize_intensity(volume.array, source.modality, mask)
        region = np.ones(labels.shape, dtype=bool) if mask is None else mask
        cases.append(_make_case(image_path.name, image, target, volume.spacing_zyx, source.modality, region))
    return cases


def case_at_spacing(case: TrainingCase, spacing_zyx: Sequence[float]) -> TrainingCase:
    """``case`` brought to the voxel size ``spacing_zyx`` (mm) as inference brings an input to a model's.

    Axes within the inference tolerance of ``spacing_zyx`` keep their voxel size, the others are resampled
    (:func:`~VesselSegLib.preprocessing.resampling.plan_resampling` decides, with its default policy): the
    normalised image linearly, each target channel by nearest neighbour (labels are only copied, never
    invented). The sampling box is scaled with the grid.

    Returns
    -------
    TrainingCase
        ``case`` itself when no axis is off by more than the tolerance.
    """
    plan = plan_resampling(case.spacing_zyx, spacing_zyx)
    if not plan.resample:
        return case
    target_spacing = plan.target_spacing_zyx
    image = resample_to_spacing(case.image, case.spacing_zyx, target_spacing)
    target = (
        np.stack(
            [
                resample_to_spacing(channel, case.spacing_zyx, target_spacing, interpolation="nearest")
                for channel in case.target
            ]
        )
        if len(case.target)
        else np.zeros((0, *image.shape), dtype=np.uint8)
    )
    scale = [new / old for new, old in zip(image.shape, case.image.shape, strict=True)]
    box = tuple(
        (int(np.floor(start * f)), min(n, int(np.ceil(stop * f))))
        for (start, stop), f, n in zip(case.box, scale, image.shape, strict=True)
    )
    vessel = target.any(axis=0) if len(target) else np.zeros(image.shape, dtype=bool)
    return dataclasses.replace(
        case,
        image=np.ascontiguousarray(image, dtype=np.float32),
        target=np.ascontiguousarray(target, dtype=np.uint8),
        spacing_zyx=tuple(float(v) for v in target_spacing),
        box=box,  # type: ignore[arg-type]
        vessel_voxels=np.flatnonzero(vessel),
        brain_mask=None
        if case.brain_mask is None
        else resample_to_spacing(
            case.brain_mask.astype(np.uint8), case.spacing_zyx, target_spacing, interpolation="nearest"
        ).astype(bool),
    )


def load_cases(
    source: Source,
    vessel_classes: Sequence[str],
    *,
    images_only: bool = False,
    spacing_zyx: Sequence[float] | None = None,
) -> list[TrainingCase]:
    """The cases of one data source, made or read once per process and then kept in memory.

    Parameters
    ----------
    source : PhantomSource or FileSource
    vessel_classes : sequence of str
        The model's classes, in output-channel order.
    images_only : bool
        Label-free training (UMIS): no label file is read, each case's ``target`` has 0 channels and
        ``vessel_voxels`` is empty, so nothing downstream can see a label.
    spacing_zyx : 3 floats, optional
        The model's training voxel size (mm): each case is brought to it by :func:`case_at_spacing`.

    Returns
    -------
    list of TrainingCase
        Do not modify the arrays: they are shared between callers.
    """
    classes = () if images_only else tuple(vessel_classes)
    if spacing_zyx is not None:
        key = (repr(source), classes, images_only, tuple(float(v) for v in spacing_zyx))
        if key not in _CASE_CACHE:
            native = load_cases(source, vessel_classes, images_only=images_only)
            _CASE_CACHE[key] = [case_at_spacing(case, spacing_zyx) for case in native]
            changed = [c.name for c, n in zip(_CASE_CACHE[key], native, strict=True) if c is not n]
            if changed:
                logger.info(
                    "Resampled to the training spacing %s mm: %s", list(spacing_zyx), ", ".join(changed)
                )
        return _CASE_CACHE[key]
    key = (repr(source), classes, images_only)
    if key not in _CASE_CACHE:
        if isinstance(source, PhantomSource):
            _CASE_CACHE[key] = _phantom_cases(source, classes, images_only)
        elif images_only:
            _CASE_CACHE[key] = _file_image_cases(source)
        else:
            _CASE_CACHE[key] = _file_cases(source, classes)
        logger.info("Loaded %s%s", source.describe(), " (images only)" if images_only else "")
    return _CASE_CACHE[key]


def load_source_list(
    sources: Sequence[Source],
    vessel_classes: Sequence[str],
    *,
    images_only: bool = False,
    spacing_zyx: Sequence[float] | None = None,
) -> tuple[list[TrainingCase], np.ndarray]:
    """All cases of ``sources`` and each case's sampling probability.

    A source's ``weight`` is its share of the patches (split evenly over its cases); without weights every
    case is equally likely. ``images_only`` and ``spacing_zyx``: see :func:`load_cases`.
    """
    cases: list[TrainingCase] = []
    weights: list[float] = []
    for source in sources:
        source_cases = load_cases(source, vessel_classes, images_only=images_only, spacing_zyx=spacing_zyx)
        share = source.weight if source.weight is not None else float(len(source_cases))
        cases += source_cases
        weights += [share / len(source_cases)] * len(source_cases)
    probabilities = np.asarray(weights, dtype=np.float64)
    return cases, probabilities / probabilities.sum()


def _window_slices(
    start_zyx: Sequence[int], size_zyx: Sequence[int], shape_zyx: Sequence[int]
) -> tuple[list[slice], list[slice]]:
    """Slices of the part of the window inside the volume: in volume coordinates, and in the window's."""
    source_slices, target_slices = [], []
    for start, size, length in zip(start_zyx, size_zyx, shape_zyx, strict=True):
        low, high = max(start, 0), min(start + size, length)
        source_slices.append(slice(low, high))
        target_slices.append(slice(low - start, high - start))
    return source_slices, target_slices


def _crop_padded(array: np.ndarray, start_zyx: Sequence[int], size_zyx: Sequence[int]) -> np.ndarray:
    """``array[..., z0:z0+sz, y0:y0+sy, x0:x0+sx]`` with zeros where the window leaves the volume."""
    out = np.zeros((*array.shape[:-3], *size_zyx), dtype=array.dtype)
    source_slices, target_slices = _window_slices(start_zyx, size_zyx, array.shape[-3:])
    out[(..., *target_slices)] = array[(..., *source_slices)]
    return out


class PatchSampler:
    """Random training patches from a list of cases.

    Parameters
    ----------
    cases : list of TrainingCase
    patch_size_zyx : 3 int
        Patch shape. Volumes thinner than the patch (VesselNN stacks have 10-26 slices) are zero-padded,
        the volume lying at a random offset inside the patch.
    case_probabilities : ndarray, optional
        Probability of drawing each case (default: uniform).
    foreground_fraction : float
        Share of patches centred on a vessel voxel; the others are centred uniformly inside the case's box
        (brain mask and vessels), which teaches the background.
    augment : bool
        Random in-plane flips (and a Y/X transpose for square patches) and intensity scale (x0.9-1.1) and
        shift (+-0.1). No flip along Z: slab thickness and slice profile are not symmetric in MRA.
    randomisation : DomainRandomisation, optional
        Domain randomisation of the image (another microscope's tone curve, depth attenuation, PSF,
        background, noise, resolution, slice jumps), drawn into each patch's spec when ``augment`` is on.
        It changes only the image part inside the volume: zero padding stays 0 (as inference pads with
        zeros) and the target is never touched (every transform keeps the voxel grid). None (default)
        gives the sampler's patches bit for bit as without it.
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        patch_size_zyx: Sequence[int],
        *,
        case_probabilities: np.ndarray | None = None,
        foreground_fraction: float = 0.5,
        augment: bool = True,
        randomisation: DomainRandomisation | None = None,
    ) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one training case.")
        self.cases = list(cases)
        self.patch_size_zyx = tuple(int(s) for s in patch_size_zyx)
        if case_probabilities is None:
            case_probabilities = np.full(len(self.cases), 1.0 / len(self.cases))
        self.case_probabilities = np.asarray(case_probabilities, dtype=np.float64)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        self.randomisation = randomisation

    def draw(self, rng: np.random.Generator) -> PatchSpec:
        """Take every random decision for one patch."""
        case_index = int(rng.choice(len(self.cases), p=self.case_probabilities))
        case = self.cases[case_index]
        shape = case.image.shape
        if case.vessel_voxels.size and rng.random() < self.foreground_fraction:
            centre = np.unravel_index(int(case.vessel_voxels[rng.integers(case.vessel_voxels.size)]), shape)
        else:
            centre = tuple(int(rng.integers(low, high)) for low, high in case.box)
        start = []
        for c, size, length in zip(centre, self.patch_size_zyx, shape, strict=True):
            if length >= size:
                start.append(int(np.clip(int(c) - size // 2, 0, length - size)))
            else:  # thinner than the patch: place the whole volume at a random offset, pad the rest
                start.append(int(rng.integers(length - size, 1)))
        if not self.augment:
            return PatchSpec(case_index, tuple(start))
        flip_y = bool(rng.random() < 0.5)
        flip_x = bool(rng.random() < 0.5)
        transpose_yx = bool(self.patch_size_zyx[1] == self.patch_size_zyx[2] and rng.random() < 0.5)
        intensity_scale = float(rng.uniform(0.9, 1.1))
        intensity_shift = float(rng.uniform(-0.1, 0.1))
        # Drawn last, so that a seed gives the same location, flips and scale with or without it.
        randomisation = None
        if self.randomisation is not None:
            randomisation = self.randomisation.draw(rng, self.patch_size_zyx)
        return PatchSpec(
            case_index,
            tuple(start),
            flip_y=flip_y,
            flip_x=flip_x,
            transpose_yx=transpose_yx,
            intensity_scale=intensity_scale,
            intensity_shift=intensity_shift,
            randomisation=randomisation,
        )

    def extract(self, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``spec``: image ``(1, Z, Y, X)`` float32 and target ``(C, Z, Y, X)`` float32."""
        case = self.cases[spec.case_index]
        image = _crop_padded(case.image, spec.start_zyx, self.patch_size_zyx)[None]
        target = _crop_padded(case.target, spec.start_zyx, self.patch_size_zyx)
        if spec.flip_y:
            image, target = image[:, :, ::-1], target[:, :, ::-1]
        if spec.flip_x:
            image, target = image[..., ::-1], target[..., ::-1]
        if spec.transpose_yx:
            image, target = image.swapaxes(-1, -2), target.swapaxes(-1, -2)
        if spec.randomisation is not None and not spec.randomisation.is_identity:
            image = self._randomise(image, target, spec)
        # The scale and shift come after the randomisation: they stand for the normalisation's own spread
        # and shift the padding too, as before, while the randomisation models the acquisition and expects
        # the normalised range (gamma keeps 0 fixed, the clip range is about [0, 1] data).
        image = image * np.float32(spec.intensity_scale) + np.float32(spec.intensity_shift)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target, dtype=np.float32)

    def _randomise(self, image: np.ndarray, target: np.ndarray, spec: PatchSpec) -> np.ndarray:
        """``spec.randomisation`` applied to the in-volume box of the (flipped) ``(1, Z, Y, X)`` patch.

        Only the box is randomised so that the padding stays 0 and the blur, background and noise do not
        smear across the volume's edge; the spec's choices are relative to the box (slice positions) or in
        voxels, so they fit a box thinner than the patch.
        """
        shape = self.cases[spec.case_index].image.shape
        _, box = _window_slices(spec.start_zyx, self.patch_size_zyx, shape)
        size_y, size_x = self.patch_size_zyx[1:]
        if spec.flip_y:
            box[1] = slice(size_y - box[1].stop, size_y - box[1].start)
        if spec.flip_x:
            box[2] = slice(size_x - box[2].stop, size_x - box[2].start)
        if spec.transpose_yx:
            box[1], box[2] = box[2], box[1]
        out = np.array(image, dtype=np.float32)  # a copy: the crop may be a flipped view
        vessels = np.asarray(target[(slice(None), *box)]).any(axis=0)  # where dye leakage spreads from
        out[(0, *box)] = apply_randomisation(out[(0, *box)], spec.randomisation, vessels)
        return out

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` patches stacked: images ``(B, 1, Z, Y, X)``, targets ``(B, C, Z, Y, X)``."""
        pairs = [self.extract(self.draw(rng)) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


__all__ = [
    "PatchSampler",
    "PatchSpec",
    "TrainingCase",
    "clear_case_cache",
    "case_at_spacing",
    "load_cases",
    "load_source_list",
]
