"""Model files, reference (authors') checkpoints and VMamba ImageNet encoder checkpoints."""

from pathlib import Path

import pytest
import torch

from vmambax.errors import ConfigError, ModelFileError
from vmambax.model import build_model, load_model_file, load_pretrained_encoder, model_file_info, save_model_file
from vmambax.model.reference_keys import from_reference_state_dict, to_reference_state_dict

TSV = Path(__file__).resolve().parent.parent / "Data" / "reference-state-dict-keys.tsv"


def _reference_shapes() -> dict:
    shapes = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or line.startswith("name\t") or not line.strip():
            continue
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def test_state_dict_maps_exactly_onto_the_reference_names_and_shapes():
    with torch.device("meta"):
        ours = build_model("vmambax").state_dict()
    ref = to_reference_state_dict(ours)
    expected = _reference_shapes()
    assert len(expected) == 852
    assert set(ref) == set(expected)
    assert {k: tuple(v.shape) for k, v in ref.items()} == expected
    # and back, also from a Lightning-style checkpoint with "model." prefixes
    back = from_reference_state_dict({"state_dict": {"model." + k: v for k, v in ref.items()}})
    assert list(back) == list(ours)
    with pytest.raises(ModelFileError, match="no VMambaX name"):
        from_reference_state_dict({"backbone.something_else.weight": torch.zeros(1)})


def test_reference_checkpoint_loads_and_is_recognised(tmp_path):
    model = build_model("vmambax-nano").eval()
    ref = to_reference_state_dict(model.state_dict())
    path = tmp_path / "authors.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in ref.items()}, "epoch": 3}, path)
    with pytest.warns(UserWarning, match="cannot tell"):  # CGM/DCIM weights: maybe an ablation
        loaded, info = load_model_file(path)  # no config given: recognised from the weights
    assert info["config"] == "vmambax-nano" and info["format"] == "reference"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    plain = tmp_path / "plain.pth"
    torch.save(ref, plain)
    assert load_model_file(plain, config="vmambax-nano")[1]["config"] == "vmambax-nano"


def test_model_file_round_trip_with_overrides(tmp_path):
    model = build_model("vmambax-nano", depths=(1, 1, 1, 1)).eval()
    path = tmp_path / "m.pt"
    save_model_file(path, model, config_name="vmambax-nano", preprocessing={"ct_window": [-1200, -200]},
                    metadata={"epochs": 2, "note": "test"})
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind
    info = model_file_info(path)
    assert info["format"] == "vmambax-model" and info["config"] == "vmambax-nano"
    assert info["config_overrides"] == {"depths": [1, 1, 1, 1]}
    assert info["preprocessing"] == {"ct_window": [-1200, -200]} and info["metadata"]["epochs"] == 2
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    loaded, linfo = load_model_file(path)
    assert loaded.config.depths == (1, 1, 1, 1) and not loaded.training
    assert linfo["metadata"]["note"] == "test"
    x = torch.randn(1, 1, 128, 128)
    with torch.inference_mode():
        assert torch.equal(loaded(x, x), model(x, x))
    raw = torch.load(path, weights_only=True)  # plain types only
    assert set(raw) == {"format", "format_version", "config", "config_overrides", "state_dict",
                        "preprocessing", "metadata"}


def test_model_file_errors(tmp_path):
    model = build_model("vmambax-nano")
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model_file(corrupt)
    with pytest.raises(ModelFileError, match="cannot read"):
        model_file_info(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelFileError, match="not a VMambaX model file"):
        load_model_file(other)
    good = tmp_path / "nano.pt"
    save_model_file(good, model, config_name="vmambax-nano", preprocessing={}, metadata={})
    with pytest.raises(ModelFileError, match="do not fit configuration 'vmambax-no-dcim'.*'vmambax-nano'"):
        load_model_file(good, config="vmambax-no-dcim")
    with pytest.raises(ConfigError, match="holds a Tensor"):
        save_model_file(tmp_path / "bad.pt", model, config_name="vmambax-nano", preprocessing={},
                        metadata={"x": torch.zeros(1)})
    assert not (tmp_path / "bad.pt").exists()


def _imagenet_checkpoint(encoder) -> dict:
    """An encoder's weights under the VMamba v0 ImageNet names, plus its classifier."""
    old_names = {"stages": "layers", "norm": "ln_1", "ssm": "self_attention"}
    sd = {}
    for k, v in encoder.state_dict().items():
        if k.startswith("out_norms."):
            continue  # not part of ImageNet checkpoints
        parts = k.split(".")
        parts[0] = old_names.get(parts[0], parts[0])
        if len(parts) > 4 and parts[2] == "blocks":  # layers.i.blocks.j.<norm|ssm>...
            parts[4] = old_names.get(parts[4], parts[4])
        sd[".".join(parts)] = v.clone()
    sd["norm.weight"] = torch.ones(encoder.dims[-1])
    sd["head.weight"] = torch.zeros(1000, encoder.dims[-1])
    return {"model": sd, "epoch": 292}


def test_pretrained_encoder_loading(tmp_path):
    source = build_model("vmambax-nano")
    ckpt = _imagenet_checkpoint(source.encoder)
    assert "layers.0.blocks.0.ln_1.weight" in ckpt["model"]
    assert "layers.0.blocks.0.self_attention.A_logs" in ckpt["model"]
    path = tmp_path / "vssm.pth"
    torch.save(ckpt, path)
    target = build_model("vmambax-nano")
    fresh_out_norm = target.encoder.out_norms[0].weight.clone()
    report = load_pretrained_encoder(target, path)
    assert report["fresh"] and all(k.startswith("out_norms.") for k in report["fresh"])
    for k, v in source.encoder.state_dict().items():
        if not k.startswith("out_norms."):
            assert torch.equal(target.encoder.state_dict()[k], v), k
    assert torch.equal(target.encoder.out_norms[0].weight, fresh_out_norm)
    # the config option loads it at build time
    built = build_model("vmambax-nano", pretrained_encoder=str(path))
    assert torch.equal(built.encoder.patch_embed.proj.weight, source.encoder.patch_embed.proj.weight)

    dropped = {**ckpt, "model": dict(ckpt["model"])}
    del dropped["model"]["layers.1.blocks.0.self_attention.Ds"]
    torch.save(dropped, tmp_path / "dropped.pth")
    with pytest.raises(ModelFileError, match=r"missing key.*stages\.1\.blocks\.0\.ssm\.Ds"):
        load_pretrained_encoder(target, tmp_path / "dropped.pth")
    extra = {**ckpt, "model": {**ckpt["model"], "layers.0.blocks.0.self_attention.bogus": torch.zeros(2)}}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ModelFileError, match="unexpected key.*bogus"):
        load_pretrained_encoder(target, tmp_path / "extra.pth")
    with torch.device("meta"):
        tiny = build_model("vmambax")  # VMamba-T encoder: every shape differs from nano's
    with pytest.raises(ModelFileError, match="shape mismatch.*VMamba-T"):
        load_pretrained_encoder(tiny, path)
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_pretrained_encoder(target, tmp_path / "corrupt.pth")
    with pytest.raises(ModelFileError, match="not found"):
        build_model("vmambax-nano", pretrained_encoder=str(tmp_path / "nope.pth"))


def test_torch_without_safe_globals_is_a_dependency_error_naming_the_version(tmp_path, monkeypatch):
    """torch < 2.5 has no torch.serialization.safe_globals: say which torch is needed, never an
    AttributeError from deep inside the load."""
    import argparse

    from vmambax import deps
    from vmambax.errors import DependencyError
    from vmambax.model.pretrained import safe_torch_load

    path = tmp_path / "model.pt"
    save_model_file(path, build_model("vmambax-nano", depths=(1, 1, 1, 1)), config_name="vmambax-nano",
                    preprocessing={}, metadata={})
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with pytest.raises(DependencyError, match=rf"torch>={deps.TORCH.minimum}") as info:
        safe_torch_load(path, allow=(argparse.Namespace,))
    assert f"found {torch.__version__}" in str(info.value)
    with pytest.raises(DependencyError, match=rf"torch>={deps.TORCH.minimum}"):
        load_model_file(path)
