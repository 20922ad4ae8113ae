"""The authors' checkpoints in every layout their code writes (issue 12.2): plain, Lightning (with
an argparse.Namespace in its hyper-parameters), {"model", "args"}; CIPA with its CRM; ablation
checkpoints that carry unused CGM/DCIM weights."""

import argparse
import dataclasses
import warnings

import pytest
import torch

from vmambax.cli import main
from vmambax.errors import ModelFileError
from vmambax.model import build_model, load_model_file, model_file_info
from vmambax.model.checkpoint import ReferenceCheckpointWarning
from vmambax.model.config import _REGISTRY, get_config, register_config
from vmambax.model.reference_keys import to_reference_state_dict

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class NotAllowed:
    """A class nobody allowed: a pickle holding one must still be refused."""

    def __init__(self):
        self.value = 1


def _randomised(model):
    """The model with every weight and buffer perturbed (so a mapping mistake changes logits)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = 0.05 * torch.randn(t.shape, generator=g)
                t.copy_(t.abs() + 0.5 + noise if name.endswith("running_var") else t + noise)
    return model.eval()


def _logits(model, size=128):
    g = torch.Generator().manual_seed(2)
    ct, pet = torch.randn(1, 1, size, size, generator=g), torch.randn(1, 1, size, size, generator=g)
    with torch.inference_mode():
        return model(ct, pet)


def _args(**kw):
    return argparse.Namespace(lr=6e-5, epochs=50, backbone="sigma_tiny", **kw)


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    model = _randomised(build_model("vmambax-nano"))
    return model, _logits(model), to_reference_state_dict(model.state_dict())


def _layouts(ref, model):
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5)
    return {
        "plain": ref,
        "lightning": {"epoch": 49, "global_step": 1000, "pytorch-lightning_version": "2.4.0",
                      "state_dict": {"model." + k: v for k, v in ref.items()},
                      "hyper_parameters": {"args": _args()}, "hparams_name": "kwargs",
                      "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.61)}}},
        "lightning-namespace": {"state_dict": {"model." + k: v for k, v in ref.items()},
                                "hyper_parameters": _args()},
        "model+args": {"model": ref, "optimizer": opt.state_dict(), "epoch": 49, "args": _args()},
        "ddp": {"model": {"module." + k: v for k, v in ref.items()}, "args": _args()},
    }


def test_every_layout_loads_with_identical_logits(tmp_path, nano):
    model, expected, ref = nano
    for layout, obj in _layouts(ref, model).items():
        path = tmp_path / f"{layout}.pth"
        torch.save(obj, path)
        with pytest.warns(ReferenceCheckpointWarning, match="cannot tell"):
            loaded, info = load_model_file(path)
        assert info["format"] == "reference" and info["config"] == "vmambax-nano", layout
        assert info["layout"] == {"plain": "plain", "ddp": "model+args"}.get(
            layout, "model+args" if layout == "model+args" else "lightning")
        own = model.state_dict()
        assert all(torch.equal(loaded.state_dict()[k], own[k]) for k in own), layout
        assert torch.equal(_logits(loaded), expected), layout


def test_namespace_is_allowed_only_for_the_load_and_nothing_else_is(tmp_path, nano):
    model, _, ref = nano
    path = tmp_path / "ns.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in ref.items()}, "hyper_parameters": _args()}, path)
    with pytest.warns(ReferenceCheckpointWarning):
        load_model_file(path)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # scoped to the load
    with pytest.raises(Exception):  # plain weights-only loading still refuses the Namespace
        torch.load(path, weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in ref.items()},
                "hyper_parameters": {"args": _args(), "extra": NotAllowed()}}, evil)
    with pytest.raises(ModelFileError, match="weights-only load refuses.*not executed"):
        load_model_file(evil)
    with pytest.raises(ModelFileError, match="weights-only load refuses"):
        model_file_info(evil)


@pytest.fixture()
def nano_ablations():
    """Nano-sized twins of the registered ablations (the real ones are 53 M parameters)."""
    base = get_config("vmambax-nano")
    names = {"nano-no-cgm-no-dcim": dict(use_cgm=False, use_dcim=False),
             "nano-no-dcim": dict(use_dcim=False)}
    for name, switches in names.items():
        register_config(name, dataclasses.replace(base, **switches))
    yield names
    for name in names:
        _REGISTRY.pop(name)


def test_ablation_checkpoint_drops_unused_weights_only_when_named(tmp_path, nano, nano_ablations):
    _, _, ref_full = nano
    torch.manual_seed(3)
    baseline = _randomised(build_model("nano-no-cgm-no-dcim"))
    expected = _logits(baseline)
    # What the reference saves for a run without --use_cgm --use_dcim: its trained encoder and
    # decoder, plus the CGM/DCIM it built but never used (here: the full model's random ones).
    ref = dict(ref_full)
    ref.update(to_reference_state_dict(baseline.state_dict()))
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in ref.items()}, "hyper_parameters": {"lr": 6e-5}}, path)

    with pytest.warns(ReferenceCheckpointWarning, match="cannot tell 'vmambax-nano' from its ablations"):
        full, info = load_model_file(path)  # never silently the full model
    assert info["config"] == "vmambax-nano" and "dual-vmamba-baseline" in info["warnings"][0]
    assert not torch.equal(_logits(full), expected)

    with pytest.warns(ReferenceCheckpointWarning, match="does not use cgm .stages 0, 1, 2, 3.*dcim"):
        loaded, info = load_model_file(path, config="nano-no-cgm-no-dcim")
    assert info["dropped"] and all(k.startswith(("cgm.", "dcim.")) for k in info["dropped"])
    assert len(info["dropped"]) == sum(1 for k in ref if k.startswith(("backbone.modal_fusion",
                                       "backbone.region_patch", "backbone.channel_attn_mamba")))
    assert torch.equal(_logits(loaded), expected)

    # CGM only: DCIM's weights go, CGM's are used.
    with pytest.warns(ReferenceCheckpointWarning, match="does not use dcim"):
        _, info = load_model_file(path, config="nano-no-dcim")
    assert info["dropped"] and all(k.startswith("dcim.") for k in info["dropped"])


def test_recorded_training_flags_pick_the_ablation(tmp_path, nano, nano_ablations):
    _, _, ref = nano
    path = tmp_path / "flags.pth"
    torch.save({"model": ref, "args": _args(use_cgm=False, use_dcim=False)}, path)
    with pytest.warns(ReferenceCheckpointWarning, match="does not use cgm") as record:
        _, info = load_model_file(path)
    assert not [w for w in record if "cannot tell" in str(w.message)]  # the flags settle it
    assert info["config"] == "nano-no-cgm-no-dcim"
    assert "records use_cgm=False, use_dcim=False" in info["notes"][0]


def test_convert_command_writes_a_model_file_with_the_ablation(tmp_path, nano, nano_ablations, capsys):
    _, _, ref = nano
    src = tmp_path / "authors.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in ref.items()}, "hyper_parameters": _args()}, src)
    out = tmp_path / "baseline.pt"
    assert main(["models", "convert", str(src), str(out), "--config", "nano-no-cgm-no-dcim"]) == 0
    captured = capsys.readouterr()
    assert "does not use cgm" in captured.err and "'nano-no-cgm-no-dcim'" in captured.out
    info = model_file_info(out)
    assert info["format"] == "vmambax-model" and info["config"] == "nano-no-cgm-no-dcim"
    assert info["metadata"]["dropped_unused_tensors"] > 0
    torch.load(out, weights_only=True)  # plain types only: no Namespace in our own files
    assert main(["models", "convert", str(src), str(out)]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["models", "convert", str(src), str(tmp_path / "full.pt")]) == 0
    assert "cannot tell" in capsys.readouterr().err


def test_cipa_checkpoint_with_its_crm_converts_exactly(tmp_path):
    torch.manual_seed(4)
    cipa = _randomised(build_model("cipa"))
    ref = to_reference_state_dict(cipa.state_dict())
    # CIPA's CRM as the reference stores it: SS1D's single direction as (1, ...) stacks.
    crm = "backbone.cross_mamba.0.channel_weights.mlp."
    assert ref[crm + "3.x_proj_weight"].shape == (1, 38, 192)
    assert ref[crm + "3.dt_projs_weight"].shape == (1, 192, 6)
    assert ref[crm + "3.dt_projs_bias"].shape == (1, 192)
    assert ref[crm + "3.A_logs"].shape == (192, 16) and ref[crm + "3.Ds"].shape == (192,)
    assert ref[crm + "1.weight"].shape == (96, 128 * 128)
    per_stage = [sum(v.numel() for k, v in ref.items() if k.startswith(f"backbone.cross_mamba.{i}."))
                 for i in range(4)]
    assert per_stage == [1_673_601, 469_377, 168_321, 93_057]  # spec §11
    assert not any(k.startswith("backbone.modal_fusion") for k in ref)
    path = tmp_path / "best_model.pth"  # CIPA train.py's layout
    torch.save({"model": ref, "epoch": 10, "args": _args()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceCheckpointWarning)  # CIPA is unambiguous
        loaded, info = load_model_file(path)
    assert info["config"] == "cipa" and info["layout"] == "model+args"
    own = cipa.state_dict()
    assert set(loaded.state_dict()) == set(own)
    for k, v in own.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # CRM values really land where they belong: same rectified features from both.
    c, p = torch.randn(1, 768, 16, 16), torch.randn(1, 768, 16, 16)
    with torch.inference_mode():
        for a, b in zip(cipa.crm[3](c, p), loaded.crm[3](c, p)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("ablation", ["dual-vmamba-baseline", "vmambax-no-cgm", "vmambax-no-dcim"])
def test_reference_listing_drops_to_each_real_ablation(ablation):
    """The reference's own key listing (53.4 M, always with CGM and DCIM) minus the dropped
    weights is exactly the ablation's state dict (names and shapes), for the real configs."""
    from pathlib import Path

    from vmambax.model.checkpoint import _drop_unused
    from vmambax.model.reference_keys import from_reference_state_dict

    tsv = Path(__file__).resolve().parent.parent / "Data" / "reference-state-dict-keys.tsv"
    ref = {}
    for line in tsv.read_text().splitlines():
        if line.startswith(("#", "name\t")) or not line.strip():
            continue
        name, shape = line.split("\t")
        ref[name] = torch.empty(tuple(int(s) for s in shape.strip("()").split(",") if s.strip()),
                                device="meta")
    state = from_reference_state_dict({"state_dict": {"model." + k: v for k, v in ref.items()}})
    kept, dropped, message = _drop_unused(state, get_config(ablation), ablation)
    with torch.device("meta"):
        own = build_model(ablation).state_dict()
    assert {k: tuple(v.shape) for k, v in kept.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert dropped and message and ablation in message[0]
