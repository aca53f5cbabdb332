"""U-Net shapes, safetensors checkpoints (SHA256 and architecture checks) and the model registry."""

from __future__ import annotations

import json

import pytest
import torch

from VesselSegLib.errors import CheckpointError
from VesselSegLib.models import ModelRegistry, UNet3D, build_network, load_checkpoint, save_checkpoint
from VesselSegLib.models.checkpoint import card_path_for, sha256_of_file
from VesselSegLib.models.unet3d import check_divisible

ARGS = {"in_channels": 1, "out_channels": 3, "base_channels": 2, "levels": 3}


@pytest.mark.parametrize(
    ("arguments", "input_shape", "output_shape"),
    [
        ({"out_channels": 3, "base_channels": 2, "levels": 3}, (2, 1, 16, 32, 32), (2, 3, 16, 32, 32)),
        ({"out_channels": 1, "base_channels": 4, "levels": 2}, (1, 1, 8, 16, 24), (1, 1, 8, 16, 24)),
        (
            {"out_channels": 2, "base_channels": 2, "levels": 3, "pool_z": False},
            (1, 1, 5, 16, 16),
            (1, 2, 5, 16, 16),
        ),
    ],
)
def test_unet_shapes(arguments, input_shape, output_shape):
    network = UNet3D(**arguments)
    assert network(torch.zeros(input_shape)).shape == output_shape


def test_unet_rejects_bad_arguments_and_patches():
    with pytest.raises(ValueError, match="levels"):
        UNet3D(levels=1)
    with pytest.raises(ValueError, match="base_channels"):
        UNet3D(base_channels=0)
    with pytest.raises(ValueError, match="multiple of"):
        check_divisible((16, 30, 32), UNet3D(levels=3).size_divisor_zyx)
    with pytest.raises(ValueError, match="known architectures: .*UNet3D"):
        build_network("ResNet", {})


def test_checkpoint_round_trip_and_card(tmp_path):
    torch.manual_seed(0)
    network = UNet3D(**ARGS)
    sha = save_checkpoint(
        network,
        tmp_path / "m.safetensors",
        architecture="UNet3D",
        arguments=ARGS,
        card={"training": {"command": "python -m trainer train x.toml"}},
    )
    card = json.loads(card_path_for(tmp_path / "m.safetensors").read_text())
    assert card["sha256"] == sha == sha256_of_file(tmp_path / "m.safetensors")
    assert card["architecture"] == "UNet3D" and card["arguments"] == ARGS
    loaded = load_checkpoint(tmp_path / "m.safetensors", expected_sha256=sha, expected_architecture="UNet3D")
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network.eval()(x))
    assert not loaded.training


def test_checkpoint_errors_are_clear(tmp_path):
    network = UNet3D(**ARGS)
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(network, path, architecture="UNet3D", arguments=ARGS)
    with pytest.raises(CheckpointError, match="SHA256"):
        load_checkpoint(path, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(path, expected_architecture="VCNet")
    with pytest.raises(CheckpointError, match="arguments"):
        load_checkpoint(path, expected_arguments={**ARGS, "base_channels": 8})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    pickled = tmp_path / "pickle.safetensors"
    torch.save(network.state_dict(), pickled)  # a pickle with the right name is refused, never unpickled
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)
    # Weights of another width in a file that claims these arguments: shapes do not fit.
    from safetensors.torch import save_file

    wide = UNet3D(**{**ARGS, "base_channels": 4})
    save_file(
        dict(wide.state_dict()),
        str(tmp_path / "wide.safetensors"),
        metadata={"architecture": "UNet3D", "arguments": json.dumps(ARGS)},
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "wide.safetensors")
    assert sha  # the good file still loads
    load_checkpoint(path, expected_sha256=sha)


def _registry_file(tmp_path, entries):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": entries}))
    return path


def test_registry_lists_known_methods_on_unknown_name(tmp_path):
    network = UNet3D(**ARGS)
    sha = save_checkpoint(network, tmp_path / "net.safetensors", architecture="UNet3D", arguments=ARGS)
    path = _registry_file(
        tmp_path,
        [
            {"name": "frangi", "kind": "vesselness", "modalities": ["TOF-MRA"], "vessel_classes": ["artery"]},
            {
                "name": "net",
                "kind": "network",
                "architecture": "UNet3D",
                "arguments": ARGS,
                "weights": "net.safetensors",
                "sha256": sha,
                "modalities": ["TOF-MRA", "2PM"],
                "default_for": ["TOF-MRA"],
                "vessel_classes": ["artery", "vein", "micro"],
            },
        ],
    )
    registry = ModelRegistry.from_file(path)
    assert registry.names == ["frangi", "net"]
    assert registry.default_for("TOF-MRA").name == "net"
    assert registry.default_for("2PM").name == "net"
    assert isinstance(registry.get("net").load_network(), UNet3D)
    with pytest.raises(ValueError, match="known methods are: frangi, net"):
        registry.get("vcnet")
    with pytest.raises(ValueError, match="No method"):
        registry.default_for("CT")


def test_a_method_family_name_picks_the_member_made_for_the_modality(tmp_path):
    def vesselness(name, modalities):
        return {"name": name, "kind": "vesselness", "modalities": modalities, "vessel_classes": ["vein"]}

    entries = [
        vesselness("rose-tof", ["TOF-MRA"]),
        vesselness("rose-swi", ["SWI"]),
        vesselness("rose", ["2PM"]),  # an exact name always wins over the family
        vesselness("flow-a", ["SWI"]),
        vesselness("flow-b", ["SWI"]),
    ]
    registry = ModelRegistry.from_file(_registry_file(tmp_path, entries))
    assert registry.get_for_modality("rose-swi", "SWI").name == "rose-swi"
    assert registry.get_for_modality("rose", "2PM").name == "rose"
    assert registry.get_for_modality("flow-a", "SWI").name == "flow-a"
    with pytest.raises(ValueError, match="several SWI models \\(flow-a, flow-b\\)"):
        registry.get_for_modality("flow", "SWI")
    with pytest.raises(ValueError, match="no model for 2PM images"):
        registry.get_for_modality("flow", "2PM")
    with pytest.raises(ValueError, match="Unknown method 'vcnet'"):
        registry.get_for_modality("vcnet", "SWI")
    # Without the exact entry, the family resolves by modality.
    family_only = ModelRegistry.from_file(_registry_file(tmp_path, entries[:2]))
    assert family_only.get_for_modality("rose", "SWI").name == "rose-swi"
    assert family_only.get_for_modality("rose", "TOF-MRA").name == "rose-tof"


def test_registry_rejects_malformed_entries(tmp_path):
    with pytest.raises(ValueError, match="lacks the field"):
        ModelRegistry.from_file(_registry_file(tmp_path, [{"name": "x", "kind": "network"}]))
    with pytest.raises(ValueError, match="Unknown vessel class"):
        ModelRegistry.from_file(
            _registry_file(
                tmp_path,
                [{"name": "x", "kind": "vesselness", "modalities": ["SWI"], "vessel_classes": ["capillary"]}],
            )
        )
    with pytest.raises(ValueError, match="needs 'architecture'"):
        ModelRegistry.from_file(
            _registry_file(
                tmp_path,
                [{"name": "x", "kind": "network", "modalities": ["SWI"], "vessel_classes": ["vein"]}],
            )
        )


def test_shipped_registry_loads_every_network():
    registry = ModelRegistry.default()
    assert "frangi" in registry.names
    for entry in registry.entries():
        if entry.kind == "network":
            assert isinstance(entry.load_network(), torch.nn.Module)  # SHA256 and architecture checked


def test_every_library_package_is_listed_in_pyproject(repo_root):
    """`pip install .` ships only the packages pyproject.toml lists: a new folder must be added there."""
    import tomllib

    listed = set(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(repo_root).parts)
        for folder in ("VesselSegLib", "trainer")
        for init in (repo_root / folder).rglob("__init__.py")
    }
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"


def test_shipped_rose_family_resolves_per_modality():
    from VesselSegLib.methods.super_resolution import architecture_output_scale
    from VesselSegLib.request import SegmentationRequest

    registry = ModelRegistry.default()
    for modality, name, vessel_class in (("TOF-MRA", "rose-tof", "artery"), ("SWI", "rose-swi", "vein")):
        plan = SegmentationRequest(method="rose", modality=modality).resolve(registry)
        assert plan.entry.name == name and plan.vessel_classes == (vessel_class,)
        assert architecture_output_scale(plan.entry) == (2, 2, 2)  # the finer grid of the issue
    with pytest.raises(ValueError, match="no model for 2PM images"):
        SegmentationRequest(method="rose", modality="2PM").resolve(registry)
