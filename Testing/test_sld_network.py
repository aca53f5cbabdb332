"""3D-SLD's backbone: the orientation groups, the ori-CNN block and the U-Net with its two heads.

Everything runs for real on small tensors: group elements are checked by applying them, the block against
the convolution it wraps (seeded so the drawn element is known), the network's heads against their
definitions (unit l2 norm, l1 normalisation, sigmoid(forward) = the vessel channel).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from VesselSegLib.models.networks import build_network
from VesselSegLib.models.sld import (
    Orientation,
    OrientationInvariant,
    SLDNet,
    apply_orientation,
    elements_keeping_shape,
    invert_orientation,
    orientation_group,
)
from VesselSegLib.models.unet3d import count_parameters

TINY = {"widths": (4, 8, 16)}


def _distinct_results(x: torch.Tensor, transforms) -> set[tuple[tuple[int, ...], bytes]]:
    return {
        (tuple(y.shape), y.contiguous().numpy().tobytes())
        for y in (apply_orientation(x, g) for g in transforms)
    }


@pytest.mark.parametrize(
    ("name", "square", "shape_zyx", "size"),
    [
        ("none", True, (3, 4, 5), 1),
        ("in-plane", True, (3, 6, 6), 16),
        ("in-plane", False, (3, 6, 8), 8),
        ("octahedral", True, (5, 5, 5), 48),
    ],
)
def test_every_element_is_inverted_exactly_and_elements_are_distinct(name, square, shape_zyx, size):
    group = orientation_group(name, square=square)
    assert len(group) == size
    assert group[0] == Orientation()
    x = torch.randn(2, 3, *shape_zyx, generator=torch.Generator().manual_seed(0))
    for g in group:
        y = apply_orientation(x, g)
        assert tuple(y.shape[-3:]) == g.output_shape(shape_zyx) == shape_zyx
        assert torch.equal(invert_orientation(y, g), x), g
    # Distinct transforms give distinct images of a random tensor.
    assert len(_distinct_results(x, group)) == size


def test_in_plane_group_covers_all_32_flip_and_quarter_turn_pairs():
    # The notes' 32 pairs (8 flip subsets x 4 quarter turns) name each of the 16 transforms twice.
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    pairs = [Orientation(f, k) for f in itertools.product((False, True), repeat=3) for k in range(4)]
    for g in pairs:
        assert torch.equal(invert_orientation(apply_orientation(x, g), g), x)
    assert _distinct_results(x, pairs) == _distinct_results(x, orientation_group("in-plane"))
    even = [g for g in pairs if g.rot90 % 2 == 0]
    assert _distinct_results(x, even) == _distinct_results(x, orientation_group("in-plane", square=False))


def test_orientation_steps_match_torch_operations():
    x = torch.randn(2, 3, 4, 5)
    swap = Orientation((True, False, False), 0, (0, 2, 1))
    assert torch.equal(apply_orientation(x, swap), torch.flip(x.transpose(-1, -2), [-3]))
    turn = Orientation((False, False, True), 3)
    assert torch.equal(apply_orientation(x, turn), torch.rot90(torch.flip(x, [-1]), 3, dims=(-2, -1)))
    assert turn.output_shape((3, 4, 5)) == (3, 5, 4)


def test_elements_keeping_shape_filters_by_grid():
    octahedral = orientation_group("octahedral")
    kept = elements_keeping_shape(octahedral, (4, 6, 6))  # Z may not move: identity or the Y-X swap
    assert len(kept) == 16
    assert {g.transpose_zyx for g in kept} == {(0, 1, 2), (0, 2, 1)}
    assert elements_keeping_shape(orientation_group("in-plane"), (4, 6, 8)) == orientation_group(
        "in-plane", square=False
    )


def test_bad_orientations_raise():
    with pytest.raises(ValueError, match="known groups"):
        orientation_group("cube")
    with pytest.raises(ValueError, match="cubic"):
        orientation_group("octahedral", square=False)
    with pytest.raises(ValueError, match="quarter turns"):
        Orientation(rot90=4)
    with pytest.raises(ValueError, match="permutation"):
        Orientation(transpose_zyx=(0, 0, 1))


@pytest.mark.parametrize(
    ("group", "shape_zyx"), [("in-plane", (4, 6, 6)), ("in-plane", (4, 6, 8)), ("octahedral", (5, 5, 5))]
)
def test_identity_block_returns_its_input_in_training(group, shape_zyx):
    block = OrientationInvariant(nn.Identity(), group=group).train()
    x = torch.randn(6, 2, *shape_zyx)
    torch.manual_seed(3)
    assert torch.equal(block(x), x)


def _conv() -> nn.Conv3d:
    torch.manual_seed(0)  # random weights: no symmetry under any orientation
    return nn.Conv3d(2, 3, 3, padding=1)


def test_block_in_eval_mode_is_the_bare_convolution():
    conv = _conv()
    block = OrientationInvariant(conv).eval()
    x = torch.randn(3, 2, 4, 6, 6)
    assert torch.equal(block(x), conv(x))


def test_block_in_training_turns_by_the_seeded_element_and_back():
    conv = _conv()
    block = OrientationInvariant(conv).train()
    x = torch.randn(1, 2, 4, 6, 6)
    differs = False
    with torch.no_grad():
        for seed in range(8):
            torch.manual_seed(seed)
            y = block(x)
            torch.manual_seed(seed)
            g = block.group[int(torch.randint(len(block.group), (1,)))]
            torch.testing.assert_close(y, invert_orientation(conv(apply_orientation(x, g)), g))
            differs |= bool((y - conv(x)).abs().max() > 1e-3)
    assert differs


def test_block_draws_per_sample_and_keeps_batch_order():
    conv = _conv()
    block = OrientationInvariant(conv).train()
    x = torch.randn(6, 2, 4, 6, 6)
    with torch.no_grad():
        torch.manual_seed(5)
        y = block(x)
        torch.manual_seed(5)
        draws = torch.randint(len(block.group), (6,)).tolist()
        assert len(set(draws)) > 1  # the seed exercises the sub-batching
        for b, index in enumerate(draws):
            g = block.group[index]
            expected = invert_orientation(conv(apply_orientation(x[b : b + 1], g)), g)
            torch.testing.assert_close(y[b : b + 1], expected)


def test_network_outputs_satisfy_their_definitions():
    torch.manual_seed(0)
    net = SLDNet(**TINY, vessel_channel=3)
    x = torch.rand(2, 1, 16, 32, 32)
    out = net.train().forward_all(x)
    assert out.embedding.shape == (2, 16, 16, 32, 32)
    assert out.clusters.shape == (2, 8, 16, 32, 32)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2, 16, 32, 32))
    torch.testing.assert_close(out.clusters.sum(dim=1), torch.ones(2, 16, 32, 32))
    assert out.clusters.min() > 0 and out.clusters.max() < 1
    net.eval()
    with torch.no_grad():
        logits = net(x)
        probability = net.vessel_probability(x)
        clusters = net.forward_all(x).clusters
    assert logits.shape == probability.shape == (2, 1, 16, 32, 32)
    assert torch.equal(probability, clusters[:, 3:4])
    torch.testing.assert_close(torch.sigmoid(logits), probability, atol=1e-5, rtol=0)
    assert net.out_channels == 1 and net.size_divisor_zyx == (4, 4, 4)
    assert net.orientation_group == "in-plane"


def test_softmax_memberships_are_the_softmax_of_the_clustering_logits():
    torch.manual_seed(0)
    net = SLDNet(**TINY, membership="softmax").eval()
    x = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        features = net.features(x)
        clusters = net.forward_all(x).clusters
        logits = net.clustering_head(features)
    torch.testing.assert_close(clusters, torch.softmax(logits, dim=1))
    torch.testing.assert_close(clusters.sum(dim=1), torch.ones(1, 16, 32, 32))
    # The authors' sigmoid-l1 module gives other memberships from the same logits.
    sigmoid_l1 = torch.sigmoid(logits) / torch.sigmoid(logits).sum(dim=1, keepdim=True)
    assert not torch.allclose(clusters, sigmoid_l1, atol=1e-3)
    assert net.arguments["membership"] == "softmax"


def test_anisotropic_pooling_and_nearest_upsampling():
    net = SLDNet(widths=(4, 8, 8), pool_kernels=((1, 2, 2), (2, 2, 2)), upsample_mode="nearest")
    assert net.size_divisor_zyx == (2, 4, 4)
    out = net.train().forward_all(torch.rand(1, 1, 8, 32, 32))
    assert out.clusters.shape == (1, 8, 8, 32, 32)
    # A Y-X plane that is not square: the blocks draw only the flips.
    assert net(torch.rand(1, 1, 8, 32, 16)).shape == (1, 1, 8, 32, 16)
    with pytest.raises(ValueError, match=r"multiple of \(2, 4, 4\)"):
        net(torch.rand(1, 1, 8, 30, 32))


def test_octahedral_network_on_cubes():
    net = SLDNet(widths=(4, 8), orientation_group="octahedral").train()
    assert net(torch.rand(2, 1, 8, 8, 8)).shape == (2, 1, 8, 8, 8)


def test_eval_is_deterministic_and_training_depends_on_the_seed():
    torch.manual_seed(0)
    net = SLDNet(**TINY)
    x = torch.rand(2, 1, 8, 16, 16)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        runs = {}
        for seed in (0, 0, 1):
            torch.manual_seed(seed)
            runs.setdefault(seed, []).append(net(x))
    assert torch.equal(runs[0][0], runs[0][1])
    assert (runs[0][0] - runs[1][0]).abs().max() > 1e-4
    # Without orientations, training depends on no seed.
    torch.manual_seed(0)
    plain = SLDNet(**TINY, orientation_group="none").train()
    with torch.no_grad():
        torch.manual_seed(0)
        first = plain(x)
        torch.manual_seed(1)
        assert torch.equal(first, plain(x))


def test_gradients_are_finite():
    torch.manual_seed(0)
    net = SLDNet(**TINY).train()
    out = net.forward_all(torch.rand(2, 1, 8, 16, 16))
    (out.clusters[:, 0].mean() + out.embedding[:, 0].mean()).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert net.encoders[0].inner[0].weight.grad.abs().sum() > 0


def test_parameter_counts_match_the_module_docstring():
    assert count_parameters(SLDNet()) == 5_899_784
    assert count_parameters(SLDNet(widths=(8, 16, 32, 64, 64))) == 922_704


def test_build_network_from_config_arguments():
    arguments = {"widths": [4, 8, 16], "pool_kernels": [[1, 2, 2], [2, 2, 2]], "out_channels": 1}
    net = build_network("SLDNet", arguments)
    assert isinstance(net, SLDNet) and net.size_divisor_zyx == (2, 4, 4)
    rebuilt = build_network("SLDNet", json.loads(json.dumps(net.arguments)))
    rebuilt.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="do not fit"):
        build_network("SLDNet", {"depth": 3})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"vessel_channel": 8}, "vessel_channel"),
        ({"vessel_channel": -1}, "vessel_channel"),
        ({"clusters": 1}, "clusters"),
        ({"widths": ()}, "widths"),
        ({"widths": (4, 0)}, "widths"),
        ({"orientation_group": "cube"}, "known groups"),
        ({"pool_kernels": [[2, 2, 2]]}, "pool_kernels"),
        ({"upsample_mode": "bicubic"}, "upsample_mode"),
        ({"out_channels": 2}, "out_channels"),
        ({"membership": "sparsemax"}, "membership"),
    ],
)
def test_bad_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        SLDNet(**{"widths": (4, 8, 16), **arguments})


def test_the_largest_cluster_decision_cuts_where_the_vessel_channel_wins():
    from VesselSegLib.models.sld import decision_map

    torch.manual_seed(0)
    clusters = torch.softmax(3 * torch.randn(2, 4, 4, 8, 8), dim=1)
    for t in range(4):
        wins = clusters.argmax(dim=1, keepdim=True) == t
        assert wins.any() and (~wins).any()
        assert torch.equal(decision_map(clusters, t, "largest") > 0.5, wins)
        assert torch.equal(decision_map(clusters, t, "threshold"), clusters[:, t : t + 1])
    threshold = SLDNet(widths=(4, 8), embedding_channels=4, clusters=4).eval()
    largest = SLDNet(widths=(4, 8), embedding_channels=4, clusters=4, decision="largest").eval()
    largest.load_state_dict(threshold.state_dict())
    image = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        net_clusters = threshold.forward_all(image).clusters
        torch.testing.assert_close(torch.sigmoid(threshold(image)), net_clusters[:, :1], atol=1e-5, rtol=0)
        expected = decision_map(net_clusters, 0, "largest")
        torch.testing.assert_close(torch.sigmoid(largest(image)), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="decision must be one of"):
        SLDNet(decision="argmax")
