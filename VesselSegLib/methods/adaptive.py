"""Networks that can adapt to the user's stack before segmenting it (UMIS's test-time training).

A registry entry of kind ``"network"`` whose ``"implementation"`` is ``VesselSegLib.methods.adaptive:
AdaptiveNetwork`` runs like any network, but with a budget (the request's ``adaptation_budget_s``, the
entry's ``settings.default_adaptation_s`` otherwise, 0 = off) it first trains a copy of its weights on the
stack with the label-free UMIS loss (``VesselSegLib.unsupervised.adaptation``) and predicts with that copy.
The registry's weights never change; the copy is dropped after the run.

Entry ``settings`` (all optional): ``default_adaptation_s``, ``adaptation_learning_rate``,
``adaptation_patch_size_zyx``, ``adaptation_batch_size``, ``adaptation_loss_weights``.
"""

from __future__ import annotations

from VesselSegLib.methods.networks import NetworkEnsemble


class AdaptiveNetwork(NetworkEnsemble):
    """A single network with :meth:`adapt` (the :class:`~VesselSegLib.methods.base.AdaptiveMethod` protocol)."""

    supports_adaptation = True

    def __init__(self, entry, registry=None) -> None:
        super().__init__(entry, registry)
        if entry.kind != "network":
            raise ValueError(f'{entry.name!r}: only a single network (kind "network") can adapt to a stack.')
        # Adaptation reads the whole stack, so tile-by-tile streaming would adapt to each tile alone.
        self.supports_streaming = False
        self.default_adaptation_budget_s = float(entry.settings.get("default_adaptation_s", 0.0))
        self._adapted = None

    def adaptation_settings(self):
        """The entry's adaptation settings over :class:`AdaptationSettings`' defaults."""
        from VesselSegLib.unsupervised.adaptation import AdaptationSettings

        settings = self.entry.settings
        defaults = AdaptationSettings()
        return AdaptationSettings(
            patch_size_zyx=tuple(settings.get("adaptation_patch_size_zyx", defaults.patch_size_zyx)),
            batch_size=int(settings.get("adaptation_batch_size", defaults.batch_size)),
            learning_rate=float(settings.get("adaptation_learning_rate", defaults.learning_rate)),
            loss_weights=str(settings.get("adaptation_loss_weights", defaults.loss_weights)),
        )

    def adapt(self, images, plan, *, budget_s, device, progress=None, cancel=None) -> dict:
        """Train a copy of the weights on ``images.image`` for ``budget_s`` s; the record goes to summary.json."""
        from VesselSegLib.unsupervised.adaptation import adapt_network

        self._adapted = None
        if budget_s <= 0:
            return {}
        settings = self.adaptation_settings()
        network = self.entry.load_network()
        adapted, record = adapt_network(
            network,
            images.image,
            budget_s=budget_s,
            settings=settings,
            device=device,
            progress=progress,
            cancel=cancel,
        )
        if adapted is not network:
            self._adapted = adapted
        record["method"] = "umis-loss"
        return record

    def network_for(self, member):
        if self._adapted is not None and member.name == self.entry.name:
            return self._adapted
        return super().network_for(member)

    @property
    def model_sha256(self) -> str | None:
        # Adapted weights are not the registry's file: say so rather than name a checksum they do not have.
        return f"{self.entry.sha256}+adapted" if self._adapted is not None else self.entry.sha256


__all__ = ["AdaptiveNetwork"]
