"""ROSE network (VesselSegLib.models.rose): 2x output shapes, compound-plane tiling, gradients, sizes, arguments."""

from __future__ import annotations

import json

import pytest
import torch

from VesselSegLib.models.networks import NETWORK_CLASSES, build_network
from VesselSegLib.models.rose import ROSENet, tile_slices, untile_slices

PAPER = {"levels": 4, "base_channels": 16, "sr_channels": 48}
#: A tiny network for shape tests: two SR residual blocks, 2 channels per level.
TINY = {"base_channels": 2, "sr_channels": 4, "residual_blocks": 2}
ABLATIONS = {
    "full": {},
    "without SR": {"sr_stream": False},
    "top fusion only": {"fuse_levels": [0]},
    "no encoder sharing": {"share_encoder": False},
    "fold layout": {"sr_layout": "fold"},
    "no fusion": {"fuse_levels": []},
    "two classes": {"out_channels": 2},
}


def _count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_both_heads_are_twice_the_input_size_for_every_ablation(ablation):
    torch.manual_seed(0)
    arguments = {**TINY, **ABLATIONS[ablation]}
    network = ROSENet(**arguments)
    image = torch.rand(2, 1, 4, 8, 12)  # non-cubic, multiples of 4 (levels=3)
    output = network.forward_all(image)
    channels = arguments.get("out_channels", 1)
    assert output.logits.shape == (2, channels, 8, 16, 24)
    if arguments.get("sr_stream", True):
        assert output.sr_image.shape == (2, 1, 8, 16, 24)
    else:
        assert output.sr_image is None
    assert network.output_scale_zyx == (2, 2, 2)
    json.dumps(arguments)  # checkpoints store the constructor arguments as JSON
    json.dumps(network.arguments)


def test_forward_returns_the_logits_and_their_sigmoid_is_a_probability():
    torch.manual_seed(1)
    network = ROSENet(**TINY, out_channels=2).eval()
    image = torch.rand(1, 1, 8, 4, 8)
    with torch.no_grad():
        logits = network(image)
        all_outputs = network.forward_all(image)
    torch.testing.assert_close(logits, all_outputs.logits)
    probability = torch.sigmoid(logits)
    assert probability.shape == (1, 2, 16, 8, 16)
    assert float(probability.min()) >= 0.0 and float(probability.max()) <= 1.0


def test_compound_plane_tiling_round_trips_and_places_slices_row_major():
    volume = torch.randn(2, 3, 6, 5, 7)
    plane = tile_slices(volume)
    assert plane.shape == (2, 3, 3 * 5, 2 * 7)  # (Z / 2) Y x 2 X, the paper's ms/2 x 2n
    torch.testing.assert_close(untile_slices(plane, 6), volume, rtol=0, atol=0)
    for k in range(6):  # slice k at tile row k // 2, column k % 2
        row, column = divmod(k, 2)
        torch.testing.assert_close(
            plane[:, :, row * 5 : (row + 1) * 5, column * 7 : (column + 1) * 7], volume[:, :, k]
        )
    with pytest.raises(ValueError, match="Z must be even"):
        tile_slices(torch.zeros(1, 1, 3, 4, 4))


def _first_conv_gradients(network: ROSENet, image: torch.Tensor, head: str) -> tuple[float, float]:
    """|gradient| sums of the segmentation encoder's and the SR stream's first 3D convolution for one head."""
    network.zero_grad()
    getattr(network.forward_all(image), head).square().mean().backward()
    segmentation = network.encoders[0][0].weight.grad
    sr = (network.encoders[0][0] if network.sr_encoder is None else network.sr_encoder[0]).weight.grad
    return tuple(0.0 if g is None else float(g.abs().sum()) for g in (segmentation, sr))


def test_gradients_reach_the_shared_encoder_from_both_heads():
    torch.manual_seed(2)
    network = ROSENet(**TINY)
    image = torch.rand(1, 1, 4, 8, 8)
    for head in ("logits", "sr_image"):
        assert _first_conv_gradients(network, image, head)[0] > 0, f"no gradient from {head}"
    # The segmentation loss also trains the SR stream through the fusion (the joint embedding of eq. 2).
    network.zero_grad()
    network.forward_all(image).logits.mean().backward()
    assert float(network.sr_stream.head[0].weight.grad.abs().sum()) > 0


def test_without_sharing_the_sr_loss_stays_in_the_sr_encoder():
    torch.manual_seed(2)
    network = ROSENet(**TINY, share_encoder=False)
    image = torch.rand(1, 1, 4, 8, 8)
    segmentation, sr = _first_conv_gradients(network, image, "sr_image")
    assert segmentation == 0 and sr > 0
    segmentation, sr = _first_conv_gradients(network, image, "logits")  # fusion reaches the SR encoder
    assert segmentation > 0 and sr > 0


def test_paper_and_slim_configurations_have_the_documented_sizes():
    paper = ROSENet(**PAPER)
    assert _count(paper) == 5_393_122
    assert _count(paper) == pytest.approx(5.34e6, rel=0.03)  # Table 3
    assert paper.size_divisor_zyx == (8, 8, 8)
    assert _count(ROSENet(**PAPER, sr_stream=False)) == pytest.approx(4.86e6, rel=0.01)
    slim = ROSENet()
    assert _count(slim) == 132_714 < 500_000
    assert slim.size_divisor_zyx == (4, 4, 4)


def test_paper_configuration_runs_on_a_small_patch():
    torch.manual_seed(3)
    network = ROSENet(**PAPER, residual_blocks=6).eval()
    with torch.no_grad():
        output = network.forward_all(torch.rand(1, 1, 8, 8, 16))
    assert output.logits.shape == (1, 1, 16, 16, 32)
    assert output.sr_image.shape == (1, 1, 16, 16, 32)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fuse_levels": [3]}, "fuse_levels must list distinct levels"),
        ({"fuse_levels": [0, 0]}, "fuse_levels must list distinct levels"),
        ({"sr_stream": False, "fuse_levels": [0]}, "need the SR stream"),
        ({"sr_stream": False, "share_encoder": False}, "needs sr_stream=True"),
        ({"levels": 2}, "levels must be an integer >= 3"),
        ({"levels": 1, "fuse_levels": [0, 1]}, "levels must be an integer >= 2"),
        ({"base_channels": 0}, "base_channels must be an integer >= 1"),
        ({"sr_channels": 2.5}, "sr_channels must be an integer >= 1"),
        ({"residual_blocks": -1}, "residual_blocks must be an integer >= 0"),
        ({"sr_layout": "mosaic"}, "sr_layout must be one of"),
        ({"sr_stream": "yes"}, "sr_stream must be true or false"),
        ({"fuse_levels": 0}, "fuse_levels must be a list"),
    ],
)
def test_bad_arguments_are_refused_with_the_rule(arguments, message):
    with pytest.raises(ValueError, match=message):
        ROSENet(**arguments)


def test_channels_last_3d_layout_gives_the_same_outputs():
    """The trainer and the sliding window put 3D layers in channels-last 3D on the CPU."""
    from VesselSegLib.models.memory_format import set_3d_memory_format

    torch.manual_seed(4)
    network = ROSENet(**TINY).eval()
    image = torch.rand(2, 1, 4, 8, 8)
    with torch.no_grad():
        reference = network.forward_all(image)
        set_3d_memory_format(network, torch.channels_last_3d)
        converted = network.forward_all(image.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(converted.logits, reference.logits)
    torch.testing.assert_close(converted.sr_image, reference.sr_image)


def test_inputs_that_do_not_pass_the_poolings_are_refused():
    network = ROSENet(**TINY)
    with pytest.raises(ValueError, match=r"multiple of \(4, 4, 4\)"):
        network(torch.rand(1, 1, 6, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, Z, Y, X\)"):
        network(torch.rand(1, 8, 8, 8))


def test_registered_and_built_from_json_arguments():
    assert NETWORK_CLASSES["ROSENet"] is ROSENet
    arguments = json.loads(json.dumps({**TINY, "fuse_levels": [0, 1], "sr_layout": "fold"}))
    network = build_network("ROSENet", arguments)
    assert isinstance(network, ROSENet)
    assert network.fuse_levels == (0, 1)
    assert network.forward_all(torch.rand(1, 1, 4, 4, 4)).logits.shape == (1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="do not fit architecture 'ROSENet'"):
        build_network("ROSENet", {"unknown_argument": 1})
