"""Learned networks: one network, or an ensemble of networks that each give some of the classes.

A plain ``"network"`` entry is an ensemble of one: the network reads the input and gives all its classes in
one pass. An ``"ensemble"`` entry (VC-Net) names a member network per class; each member reads the image of
its own modality, the input itself or a co-registered companion, and members are run once each even when
they give several classes.
"""

from __future__ import annotations

import logging

from VesselSegLib.methods.base import MethodBase, MethodImages, MethodPrediction

logger = logging.getLogger(__name__)


def check_patch_fits(patch_zyx, network, name: str) -> None:
    """Refuse a window that the network's pooling cannot halve evenly (the rule in the message)."""
    divisor = tuple(getattr(network, "size_divisor_zyx", (1, 1, 1)))
    if any(p % d for p, d in zip(patch_zyx, divisor, strict=True)):
        example = tuple(max(d, p - p % d) for p, d in zip(patch_zyx, divisor, strict=True))
        raise ValueError(
            f"Patch size {tuple(patch_zyx)} (Z, Y, X) must be a multiple of {divisor} along each axis for "
            f"{name}; choose e.g. {example}."
        )


class NetworkEnsemble(MethodBase):
    """Registry kinds ``"network"`` and ``"ensemble"``, run window by window (MONAI sliding window).

    With the request's ``test_time_augmentation`` every window's probabilities are averaged over its in-plane
    flips inside the sliding window (``inference/sliding_window.py`` says why there). Each member's
    ``forward(image)`` maps a window to logits of its own shape, VC-Net's too (its MIPs run along Z, which is
    never flipped), so every member takes part.
    """

    supports_test_time_augmentation = True

    def __init__(self, entry, registry=None) -> None:
        super().__init__(entry, registry)
        if entry.kind == "ensemble":
            if registry is None:
                raise ValueError(f"Ensemble {entry.name!r} needs its registry to find its member networks.")
            by_class = registry.members(entry)
        else:
            by_class = dict.fromkeys(entry.vessel_classes, entry)
        #: member entry -> the classes it gives, in the ensemble's class order (each member runs once).
        self.members: dict[str, tuple] = {}
        for class_name, member in by_class.items():
            member_entry, classes = self.members.get(member.name, (member, ()))
            self.members[member.name] = (member_entry, (*classes, class_name))
        self.supports_streaming = entry.kind == "network"

    def training_spacing_zyx(self, modality: str):
        spacings = {member.training_spacing_for(modality) for member, _ in self.members.values()}
        return spacings.pop() if len(spacings) == 1 else None

    @property
    def model_sha256(self) -> str | None:
        if self.entry.kind == "network":
            return self.entry.sha256
        return ";".join(f"{member.name}={member.sha256}" for member, _ in self.members.values())

    def network_for(self, member):
        """The network that predicts ``member``'s classes: its registry weights (adaptive kinds override)."""
        return member.load_network()

    def predict_member(self, network, image, **options):
        """(probabilities ``(C, ...)``, auxiliary images by name) of one member over ``image``;
        ``options`` are ``predict_probabilities``' keywords. Kinds with more outputs override it
        (``methods/super_resolution.py``)."""
        from VesselSegLib.inference.sliding_window import predict_probabilities

        return predict_probabilities(network, image, **options), {}

    def _backend_for(self, network, patch, plan, device, precision):
        """``(network to run, BackendChoice)``: an exported backend where ``onnx_backend.choose_backend`` finds
        it faster at equal output; PyTorch for GPUs, adapted weights and kinds that need more than the logits."""
        from VesselSegLib.inference.onnx_backend import choose_backend

        reason = None
        if type(self).predict_member is not NetworkEnsemble.predict_member:
            reason = "this method needs more outputs than the logits"
        elif plan.request.adaptation_budget_s:
            reason = "weights adapted in this run: measuring them would cost more than it saves"
        return choose_backend(
            network, patch, plan.request.backend, precision=precision, device=device, unavailable=reason
        )

    def _image_for(self, member, images: MethodImages):
        """The image a member reads: the input for a plain network, else that of the member's modality."""
        if self.entry.kind == "network" or member.input_modality == images.preset.name:
            return images.image
        return images.companions.get(member.input_modality)

    def predict(self, images, plan, *, device, progress=None, cancel=None) -> MethodPrediction:
        wanted = plan.vessel_classes
        groups = [
            (member, tuple(c for c in classes if c in wanted))
            for member, classes in self.members.values()
            if any(c in wanted for c in classes)
        ]
        runnable = [(m, c) for m, c in groups if self._image_for(m, images) is not None]
        skipped = [c for m, classes in groups if (m, classes) not in runnable for c in classes]
        if not runnable:
            needed = sorted({m.input_modality for m, _ in groups})
            raise ValueError(
                f"{self.entry.display_name} reads {' and '.join(needed)} images for the classes asked for "
                f"({', '.join(wanted)}); give the input as {needed[0]}, or add a co-registered companion "
                f"image of that modality (--companion {needed[0]}=PATH on the command line)."
            )
        if skipped:
            logger.warning(
                "%s: no %s image, so %s is not segmented; add a co-registered companion image to get it.",
                self.entry.display_name,
                " / ".join(sorted({m.input_modality for m, c in groups if (m, c) not in runnable})),
                ", ".join(skipped),
            )
        from VesselSegLib.inference.runtime import choose_runtime

        runtime = choose_runtime(device, plan.request.precision)
        probabilities, thresholds, auxiliary, precisions, backends = {}, {}, {}, {}, {}
        for index, (member, classes) in enumerate(runnable):
            network = self.network_for(member)
            precisions[member.name] = runtime.for_model(member.reduced_precision).precision
            member_image = self._image_for(member, images)
            window = tuple(
                min(p, s) for p, s in zip(plan.patch_size_for(member), member_image.shape, strict=True)
            )
            network, backends[member.name] = self._backend_for(
                network, window, plan, device, precisions[member.name]
            )
            patch = plan.patch_size_for(member)
            divisor = getattr(network, "size_divisor_zyx", (1, 1, 1))
            if any(p % d for p, d in zip(patch, divisor, strict=True)):
                raise ValueError(
                    f"Patch size {patch} (Z, Y, X) must be a multiple of {tuple(divisor)} along each axis for "
                    f"{member.name}; choose e.g. {tuple(max(d, p - p % d) for p, d in zip(patch, divisor, strict=False))}."
                )
            start, stop = index / len(runnable), (index + 1) / len(runnable)
            label = f"{member.display_name}: " if len(runnable) > 1 else ""
            output, member_images = self.predict_member(
                network,
                self._image_for(member, images),
                patch_size_zyx=patch,
                overlap=plan.overlap_for(member),
                batch_size=plan.request.batch_size,
                device=device,
                precision=precisions[member.name],
                test_time_augmentation=plan.request.test_time_augmentation,
                progress=None
                if progress is None
                else lambda f, m, a=start, b=stop, n=label: progress(a + (b - a) * f, n + m),
                cancel=cancel,
            )
            auxiliary.update(member_images)
            member_thresholds = plan.thresholds_for(member)
            for class_name in classes:
                probabilities[class_name] = output[member.vessel_classes.index(class_name)]
                thresholds[class_name] = member_thresholds.get(class_name, 0.5)
        produced = tuple(c for c in wanted if c in probabilities)
        return MethodPrediction(
            probabilities={c: probabilities[c] for c in produced},
            vessel_classes=produced,
            thresholds=thresholds,
            device=str(device),
            model_sha256=self.model_sha256,
            images=auxiliary,
            runtime={
                **runtime.as_record(),
                "precision_by_model": precisions,
                "backend_by_model": {name: choice.as_record() for name, choice in backends.items()},
            },
        )


__all__ = ["NetworkEnsemble", "check_patch_fits"]
