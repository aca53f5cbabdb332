"""VC-Net (Wang et al.): the dual-stream network, the loss of eq. (3)-(4), the trainer run, the per-class
ensemble with a companion contrast, and the shipped models through the Slicer Logic on a real MRML scene.

The projection/unprojection bookkeeping itself is tested in ``test_vcnet_projection.py``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from trainer.losses import DiceLoss, MIPAuxiliaryLoss, soft_dice_loss
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.models.checkpoint import save_checkpoint
from VesselSegLib.models.mip import composite_tiles, gather_at_indices
from VesselSegLib.models.networks import NETWORK_CLASSES, build_network
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.vcnet import VCNet, VCNetOutput
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import normalize_intensity
from VesselSegLib.request import SegmentationRequest

# --------------------------------------------------------------------------------------------- network


def test_vcnet_shapes_and_mip_output():
    torch.manual_seed(0)
    network = VCNet(base_channels=4, out_channels=2)
    image = torch.rand(2, 1, 16, 32, 32)
    logits = network(image)
    assert logits.shape == (2, 2, 16, 32, 32)
    output = network(image, return_mip=True)
    assert isinstance(output, VCNetOutput)
    torch.testing.assert_close(output.logits, logits)
    # m = 6 MIPs of 32 x 32 tiled 3 x 2 (eq. 1 and section 3.1.1).
    assert output.mip_logits.shape == (2, 2, 3 * 32, 2 * 32)
    assert output.mip_indices.shape == (2, 1, 6, 32, 32)
    assert network.size_divisor_zyx == (8, 4, 4)
    assert network.mip_stream.feature_channels == 2  # half the 3D stream's width


def test_gradients_of_the_3d_output_reach_the_2d_stream():
    """The unprojection is differentiable: a loss on the 3D output alone trains every 2D-stream layer but
    the MIP head, which only the auxiliary loss (eq. 3) reaches."""
    torch.manual_seed(0)
    network = VCNet(base_channels=8)
    network(torch.rand(1, 1, 16, 16, 16)).sum().backward()
    for name, parameter in network.mip_stream.named_parameters():
        if name.startswith("head"):
            assert parameter.grad is None
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    network.zero_grad()
    network(torch.rand(1, 1, 16, 16, 16), return_mip=True).mip_logits.sum().backward()
    assert network.mip_stream.head.weight.grad.abs().sum() > 0


def test_network_is_rebuilt_from_registry_data():
    network = build_network("VCNet", {"base_channels": 4, "mip_mode": "min"})
    assert isinstance(network, VCNet) and network.mip_mode == "min"
    with pytest.raises(ValueError, match="mip_mode"):
        VCNet(mip_mode="mean")


def test_patch_depth_the_mips_do_not_tile_is_refused():
    network = VCNet(base_channels=2)
    with pytest.raises(ValueError, match="Valid choices"):
        network(torch.rand(1, 1, 4, 16, 16))  # 4 slices < 5-slice MIPs


# ------------------------------------------------------------------------------------------------ loss


def test_loss_is_volume_dice_plus_lambda_mip_dice():
    torch.manual_seed(1)
    network = VCNet(base_channels=2)
    image = torch.rand(2, 1, 16, 16, 16)
    targets = (torch.rand(2, 1, 16, 16, 16) > 0.8).float()
    output = network(image, return_mip=True)
    loss = MIPAuxiliaryLoss(DiceLoss(), mip_weight=0.2)(output, targets)
    # By hand: labels projected with the image MIP's indices, tiled like the MIPs (eq. 3).
    mip_targets = composite_tiles(gather_at_indices(targets, output.mip_indices))
    expected = soft_dice_loss(torch.sigmoid(output.logits), targets) + 0.2 * soft_dice_loss(
        torch.sigmoid(output.mip_logits), mip_targets
    )
    torch.testing.assert_close(loss, expected)
    # Plain logits (validation) get the volume term only.
    torch.testing.assert_close(
        MIPAuxiliaryLoss(DiceLoss())(output.logits, targets), DiceLoss()(output.logits, targets)
    )


def test_mip_term_vanishes_for_a_perfect_mip_prediction():
    targets = torch.zeros(1, 1, 16, 8, 8)
    targets[0, 0, 3:9, 2:5, 2:5] = 1
    indices = torch.randint(0, 16, (1, 1, 6, 8, 8))
    mip_targets = composite_tiles(gather_at_indices(targets, indices))
    perfect = VCNetOutput(
        logits=(targets * 2 - 1) * 50, mip_logits=(mip_targets * 2 - 1) * 50, mip_indices=indices
    )
    assert float(MIPAuxiliaryLoss(DiceLoss(smooth=1e-6))(perfect, targets)) < 1e-4


# --------------------------------------------------------------------------------------------- trainer


def test_a_short_vcnet_training_run_lowers_the_loss(tmp_path):
    from trainer.config import load_config
    from trainer.loop import Trainer

    config_path = tmp_path / "vcnet_tiny.toml"
    config_path.write_text(
        """
[model]
architecture = "VCNet"
arguments = { base_channels = 4, levels = 2, pool_z = true }
[data]
vessel_classes = ["artery"]
training = [{ kind = "phantom", modality = "TOF-MRA", count = 2, shape_zyx = [32, 48, 48], seed = 100, class_remap = { vein = "none", micro = "none" } }]
validation = [{ kind = "phantom", modality = "TOF-MRA", count = 1, shape_zyx = [32, 48, 48], seed = 900, class_remap = { vein = "none", micro = "none" } }]
[training]
epochs = 3
patches_per_epoch = 48
batch_size = 4
patch_size_zyx = [16, 32, 32]
learning_rate = 3e-3
loss = "dice"
mip_loss_weight = 0.2
num_threads = 1
device = "cpu"
foreground_fraction = 0.8
cldice_every = 100
[output]
run_dir = "run"
"""
    )
    config = load_config(config_path).with_overrides(run_dir=tmp_path / "run")
    trainer = Trainer(config)
    summary = trainer.fit()
    assert isinstance(trainer.loss_function, MIPAuxiliaryLoss)
    log = (tmp_path / "run" / "training_log.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in log]
    assert losses[-1] < losses[0]
    assert summary.epochs_completed == 3


# ------------------------------------------------------------------------------------ ensemble mechanics


class ScaledInput(torch.nn.Module):
    """Logits = gain x (image - 0.5): its probabilities show exactly which image a member read."""

    def __init__(self, *, gain: float = 8.0) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))

    def forward(self, image):
        return self.gain * (image - 0.5)


def _member(models, monkeypatch, name, class_name, modality):
    monkeypatch.setitem(NETWORK_CLASSES, "ScaledInput", ScaledInput)
    sha = save_checkpoint(
        ScaledInput(), models / f"{name}.safetensors", architecture="ScaledInput", arguments={}
    )
    return {
        "name": name,
        "kind": "network",
        "architecture": "ScaledInput",
        "arguments": {},
        "weights": f"{name}.safetensors",
        "sha256": sha,
        "modalities": [modality],
        "vessel_classes": [class_name],
        "patch_size_zyx": [16, 32, 32],
        "overlap": 0.25,
    }


@pytest.fixture
def ensemble_registry(tmp_path, monkeypatch):
    members = [
        _member(tmp_path, monkeypatch, "probe-artery", "artery", "TOF-MRA"),
        _member(tmp_path, monkeypatch, "probe-vein", "vein", "SWI"),
        _member(tmp_path, monkeypatch, "probe-micro", "micro", "SWI"),
    ]
    ensemble = {
        "name": "probe",
        "kind": "ensemble",
        "display_name": "Probe ensemble",
        "members": {"artery": "probe-artery", "vein": "probe-vein", "micro": "probe-micro"},
        "modalities": ["TOF-MRA", "SWI"],
        "vessel_classes": ["artery", "vein", "micro"],
    }
    (tmp_path / "models.json").write_text(json.dumps({"models": [*members, ensemble]}))
    return ModelRegistry.from_file(tmp_path / "models.json")


@pytest.fixture(scope="module")
def tof_and_swi():
    spacing = (0.8, 0.5, 0.5)
    tof = make_phantom_case("TOF-MRA", (32, 64, 64), spacing_zyx=spacing, seed=11)
    swi = make_phantom_case("SWI", (32, 64, 64), spacing_zyx=spacing, seed=11)
    return tof, swi


def test_each_member_reads_its_own_contrast(ensemble_registry, tof_and_swi):
    tof, swi = tof_and_swi
    result = segment_image(
        tof.image,
        tof.spacing_zyx,
        modality="TOF-MRA",
        method="probe",
        brain_mask=tof.brain_mask,
        companion_images={"SWI": swi.image},
        registry=ensemble_registry,
        min_component_mm3=0,
        keep_probabilities=True,
        device="cpu",
    )
    assert result.vessel_classes == ("artery", "vein", "micro")
    expected_tof = torch.sigmoid(8 * (torch.from_numpy(normalize_intensity(tof.image, "TOF-MRA")) - 0.5))
    expected_swi = torch.sigmoid(
        8 * (torch.from_numpy(normalize_intensity(swi.image, "SWI", swi.brain_mask)) - 0.5)
    )
    inside = tof.brain_mask
    np.testing.assert_allclose(
        result.probabilities["artery"][inside], expected_tof.numpy()[inside], atol=1e-4
    )
    np.testing.assert_allclose(result.probabilities["vein"][inside], expected_swi.numpy()[inside], atol=1e-4)
    # Vein and micro members give the same probability here: the overlap goes to one class only.
    assert not np.any((result.class_map == 2) & (result.class_map == 3))
    assert result.model_sha256.count("=") == 3


def test_missing_companion_skips_its_classes_with_a_warning(ensemble_registry, tof_and_swi, caplog):
    tof, _ = tof_and_swi
    with caplog.at_level(logging.WARNING):
        result = segment_image(
            tof.image,
            tof.spacing_zyx,
            modality="TOF-MRA",
            method="probe",
            registry=ensemble_registry,
            device="cpu",
        )
    assert result.vessel_classes == ("artery",)
    assert "no SWI image" in caplog.text
    with pytest.raises(ValueError, match="companion image"):
        segment_image(
            tof.image,
            tof.spacing_zyx,
            modality="TOF-MRA",
            method="probe",
            vessel_classes=("vein",),
            registry=ensemble_registry,
        )


def test_companion_on_another_grid_is_refused(ensemble_registry, tof_and_swi):
    tof, swi = tof_and_swi
    with pytest.raises(ValueError, match="resample it onto the input"):
        segment_image(
            tof.image,
            tof.spacing_zyx,
            modality="TOF-MRA",
            method="probe",
            companion_images={"SWI": swi.image[:, :, :32]},
            registry=ensemble_registry,
        )


def test_ensemble_with_a_missing_member_is_refused(tmp_path):
    ensemble = {
        "name": "broken",
        "kind": "ensemble",
        "members": {"artery": "nowhere"},
        "modalities": ["TOF-MRA"],
        "vessel_classes": ["artery"],
    }
    (tmp_path / "models.json").write_text(json.dumps({"models": [ensemble]}))
    with pytest.raises(ValueError, match="member 'nowhere' for artery"):
        ModelRegistry.from_file(tmp_path / "models.json")


# ------------------------------------------------------------------- shipped models through the Logic


def test_logic_runs_the_shipped_vcnet_into_three_coloured_segments(tof_and_swi):
    import slicer.util

    from VesselSegLib.mrml.logic import VesselSegLogic
    from VesselSegLib.mrml.scene import create_headless_scene, release_headless_scene
    from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

    tof, swi = tof_and_swi
    scene = create_headless_scene()
    try:
        nodes = {}
        for name, array in (
            ("tof", tof.image),
            ("swi", swi.image),
            ("mask", tof.brain_mask.astype(np.uint8)),
        ):
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            slicer.util.updateVolumeFromArray(node, array)
            node.SetSpacing(*reversed(tof.spacing_zyx))
            nodes[name] = node
        swi_before = slicer.util.arrayFromVolume(nodes["swi"]).copy()
        outputs = VesselSegLogic().process(
            nodes["tof"],
            maskVolume=nodes["mask"],
            companionVolumes={"SWI": nodes["swi"]},
            request=SegmentationRequest(
                modality="TOF-MRA", method="vcnet", device="cpu", create_models=False
            ),
        )
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["swi"]), swi_before)
        segmentation = outputs.segmentationNode.GetSegmentation()
        assert outputs.result.vessel_classes == ("artery", "vein", "micro")
        assert segmentation.GetNumberOfSegments() == 3
        for name in ("artery", "vein", "micro"):
            vessel_class = VESSEL_CLASS_BY_NAME[name]
            segment = segmentation.GetSegment(vessel_class.display_name)
            np.testing.assert_allclose(segment.GetColor(), vessel_class.color_rgb, atol=1e-6)
        # Trained models: arteries and veins found with real overlap on this unseen phantom.
        for name, label in (("artery", 1), ("vein", 2)):
            predicted, truth = outputs.result.class_map == label, tof.class_map == label
            dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
            assert dice > 0.5, f"{name} Dice {dice:.2f}"
    finally:
        release_headless_scene(scene)
