"""The 2D mask discriminator ``d`` of 3D-SLD (Chen et al. [1]_, Sec. III-C and IV-B; notes 2.6).

``d`` tells the reference masks ``R'`` (Crop-and-Overlap of 2D vessel masks, "real") from the MIPs ``S`` of
the predicted 3D vessel channel ("fake"); the segmenter learns to fool it (eq. 8-9). The paper gives the
layers and widths: four 2D 3x3 convolutions (16, 32, 32, 32 channels), a 2x2 max-pool after the first two,
global average pooling after the fourth, then two fully connected layers (32, 1) and a sigmoid.

The activation is not stated [C]: LeakyReLU with slope 0.2. The authors' 2D code writes
``nn.LeakyReLU(True)``, which sets the *slope* to 1 (an identity, so the whole network would be linear up
to the max-pools): almost certainly meant as ``inplace=True``.

References
----------
.. [1] Chen H, Wang X, Wang L. 3D Vessel Segmentation with Limited Guidance of 2D Structure-agnostic
       Vessel Annotations. arXiv 2302.03299, 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Convolution widths and hidden FC width of the paper (Sec. IV-B: "16, 32, 32, 32, 32, 1").
PAPER_WIDTHS = (16, 32, 32, 32)
PAPER_HIDDEN = 32
#: Our choice of LeakyReLU slope [C] (module docstring).
NEGATIVE_SLOPE = 0.2
#: Two 2x2 max-pools: inputs must have at least 4 x 4 pixels.
MINIMUM_SIZE = 4


class MaskDiscriminator(nn.Module):
    """Classifier of single-channel 2D masks: reference mask (1) or MIP of a prediction (0).

    Parameters
    ----------
    in_channels : int
        Channels of the input masks; 1.
    widths : sequence of 4 ints
        Output channels of the four 3x3 convolutions (padding 1); (16, 32, 32, 32).
    hidden : int
        Width of the first fully connected layer; 32.
    negative_slope : float, >= 0
        Slope of every LeakyReLU; 0.2 [C].

    Examples
    --------
    >>> d = MaskDiscriminator()
    >>> d(torch.rand(6, 1, 96, 96)).shape
    torch.Size([6, 1])
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = PAPER_WIDTHS,
        hidden: int = PAPER_HIDDEN,
        negative_slope: float = NEGATIVE_SLOPE,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive ints (one per conv layer); got {widths!r}.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int; got {in_channels!r}.")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int; got {hidden!r}.")
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0; got {negative_slope!r}.")
        self.in_channels = in_channels
        self.widths = widths
        self.hidden = hidden
        self.negative_slope = float(negative_slope)

        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.LeakyReLU(negative_slope)]
            if index < 2:  # "The first two CNN layers are followed by a 2x2 max-pooling layer."
                layers.append(nn.MaxPool2d(2))
            previous = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(previous, hidden), nn.LeakyReLU(negative_slope), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of "is a reference mask".

        Parameters
        ----------
        x : tensor, shape (B, in_channels, H, W)
            Masks in [0, 1], H and W >= 4 (any size: global average pooling).

        Returns
        -------
        tensor, shape (B, 1)
            Logits, not probabilities: the losses use BCE-with-logits, which stays finite where
            ``log(sigmoid)`` underflows (:func:`trainer.sld.losses.discriminator_loss`).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Input must have shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}.")
        if min(x.shape[2:]) < MINIMUM_SIZE:
            raise ValueError(
                f"Input must be at least {MINIMUM_SIZE} x {MINIMUM_SIZE} pixels (two 2x2 max-pools); "
                f"got {tuple(x.shape[2:])}."
            )
        return self.head(self.features(x))

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(forward(x))``, shape (B, 1): the paper's output, for logging the discriminator's accuracy."""
        return torch.sigmoid(self.forward(x))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, widths={self.widths}, hidden={self.hidden}, "
            f"negative_slope={self.negative_slope}"
        )
