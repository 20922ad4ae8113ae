"""The vMambaX network: exact sizes, shapes, fusion modules, scan plumbing, input checks, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from vmambax.errors import ConfigError, InputError
from vmambax.model import build_model, count_parameters, get_config, list_configs, param_groups
from vmambax.model.cgm import CGM
from vmambax.model.dcim import DCIM
from vmambax.model.ss2d import SS2D, cross_merge, cross_scan, scan_override

# A tiny architecture (same modules as the paper model) for ablation/forward tests.
TINY = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1), cgm_min_channels=4)


def meta_model(name, **overrides):
    with torch.device("meta"):  # shapes only: instant, no memory
        return build_model(name, **overrides)


def test_vmambax_parameter_count_matches_paper_and_spec():
    p = count_parameters(meta_model("vmambax"))
    assert p["total"] == 53_403_682
    assert p["encoder"] == 22_125_792
    assert p["cgm"] == 1_235_840 and p["crm"] == 0
    assert p["dcim_tokenizer"] == 6_015_330 and p["dcim_blocks"] == 12_237_120
    assert p["decoder"] == 11_789_600


def test_cipa_parameter_count_and_per_stage_crm():
    model = meta_model("cipa")
    p = count_parameters(model)
    assert p["total"] == 54_572_198
    assert p["crm"] == 2_404_356 and p["cgm"] == 0
    per_stage = [sum(q.numel() for q in m.parameters()) for m in model.crm]
    assert per_stage == [1_673_601, 469_377, 168_321, 93_057]


def test_per_stage_and_decoder_breakdown():
    model = meta_model("vmambax")
    assert [sum(q.numel() for q in m.parameters()) for m in model.cgm] == [22_208, 62_784, 236_160, 914_688]
    dec = model.decoder
    n = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    assert n(dec.expand) == 1_180_416
    assert [n(s) for s in dec.stages] == [7_998_848, 2_054_848, 536_576]
    assert n(dec.norm) + n(dec.final_up) + n(dec.head) == 18_912
    # decoder drop-path schedule: linspace(0, 0.1, 16); C3 stage 8-11, C1 stage 0-3
    rates = [b.drop_path.p for b in dec.stages[0].blocks]
    assert rates == pytest.approx([0.1 * k / 15 for k in (8, 9, 10, 11)])
    assert [b.drop_path.p for b in dec.stages[2].blocks] == pytest.approx([0.1 * k / 15 for k in range(4)])


def test_ablations_do_not_build_unused_modules():
    full = count_parameters(meta_model("vmambax"))
    no_cgm = count_parameters(meta_model("vmambax-no-cgm"))
    no_dcim = count_parameters(meta_model("vmambax-no-dcim"))
    base = count_parameters(meta_model("dual-vmamba-baseline"))
    assert no_cgm["total"] == full["total"] - full["cgm"] and no_cgm["cgm"] == 0
    assert no_dcim["total"] == full["total"] - full["dcim"] and no_dcim["dcim"] == 0
    assert base["total"] == 33_915_392 == full["encoder"] + full["decoder"]
    nano = count_parameters(meta_model("vmambax-nano"))["total"]
    assert 1_000_000 < nano < 3_000_000  # demo model file stays well under 20 MB


def test_config_registry_errors():
    assert {"vmambax", "cipa", "vmambax-no-cgm", "vmambax-no-dcim", "dual-vmamba-baseline",
            "vmambax-nano"} <= set(list_configs())
    with pytest.raises(ConfigError, match="Did you mean 'vmambax'"):
        get_config("vmambx")
    with pytest.raises(ConfigError, match="unknown model option"):
        get_config("vmambax", dimz=(1, 2))
    with pytest.raises(ConfigError, match="double"):
        get_config("vmambax", dims=(96, 192, 384, 384))
    with pytest.raises(ConfigError, match="cannot both"):
        get_config("vmambax", use_crm=True)
    assert get_config("vmambax", depths=[1, 1, 1, 1]).depths == (1, 1, 1, 1)  # lists accepted


def test_cross_scan_directions_and_merge_inverse():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # non-square on purpose
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, 20)
    assert torch.equal(xs[:, 0], x.flatten(2))
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.equal(xs[:, 2], x.flatten(2).flip(-1))
    assert torch.equal(xs[:, 3], x.transpose(2, 3).flatten(2).flip(-1))
    assert torch.equal(cross_merge(xs, 4, 5), 4 * x.flatten(2))


def test_ss2d_uses_the_scan_once_with_the_reference_layout():
    ss = SS2D(16, d_state=4)
    calls = []

    def identity_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
        calls.append((u.shape, A.shape, B.shape, D.shape, delta_bias.shape, delta_softplus))
        return u  # identity SSM: the block reduces to merge(scan(x)) = 4x

    x = torch.randn(2, 4, 6, 16)
    with scan_override(identity_scan):
        out = ss(x)
    assert out.shape == x.shape
    assert calls == [((2, 128, 24), (128, 4), (2, 4, 4, 24), (128,), (128,), True)]
    # with the identity scan, SS2D = out_proj(LN(4·x_conv) * silu(z))
    xs, z = ss.in_proj(x).chunk(2, -1)
    xc = F.silu(ss.conv2d(xs.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    expect = ss.out_proj(ss.out_norm(4 * xc) * F.silu(z))
    assert torch.allclose(out, expect, atol=1e-5)
    # reference init: A = -(1..N), D = 1, dt = softplus(bias) in [1e-3, 0.1]
    assert torch.allclose(-torch.exp(ss.A_logs[0]), -torch.arange(1.0, 5.0))
    assert torch.equal(ss.Ds, torch.ones(128))
    dt = F.softplus(ss.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert ss.dt_rank == math.ceil(16 / 16)


def test_cgm_gates_and_residual():
    torch.manual_seed(1)
    cgm = CGM(32, reduction=4, min_channels=8).eval()
    assert cgm.gate_ct.channel[0].out_channels == 8
    ct, pet = torch.rand(2, 32, 8, 8) + 0.1, torch.rand(2, 32, 8, 8) + 0.1
    y_ct, y_pet = cgm(ct, pet)
    assert y_ct.shape == ct.shape and y_pet.shape == pet.shape
    ratio = y_ct / ct  # = 1 + G with G = channel gate * spatial gate in (0, 1)
    assert (ratio > 1).all() and (ratio < 2).all()
    g = cgm.gate_ct(ct, pet)
    assert torch.allclose(y_ct, ct * (1 + g))
    # the CT gate sees concat[PET, CT]: swapping the inputs' roles changes it
    assert not torch.allclose(g, cgm.gate_ct(pet, ct))
    cgm.residual = False
    assert torch.allclose(cgm(ct, pet)[0], ct * g)


def test_dcim_windows_regions_and_bridge():
    torch.manual_seed(2)
    dcim = DCIM(32).eval()
    ct, pet = torch.randn(1, 32, 16, 16), torch.randn(1, 32, 16, 16)
    assert dcim(ct, pet).shape == (1, 32, 16, 16)
    assert dcim.local_norm.normalized_shape == (16 * 32,)
    # Silence both SS2D branches: the output must be the CT words plus each region's PET token
    # broadcast over its 4x4 window (checks window cutting, bridge and reassembly order).
    with torch.no_grad():
        dcim.region_ssm.out_proj.weight.zero_()
        dcim.local_ssm.out_proj.weight.zero_()
    words, regions = dcim.tokenizer(ct, pet)
    assert regions.shape == (1, 32, 4, 4)
    expect = words + regions.repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.allclose(dcim(ct, pet), expect, atol=1e-6)


def test_full_vmambax_forward_256():
    model = build_model("vmambax").eval()
    x = torch.rand(1, 1, 256, 256) * 3.2 - 1.6
    with torch.inference_mode():
        out = model(x, x.flip(-1))
    assert out.shape == (1, 1, 256, 256) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vmambax-no-cgm", "vmambax-no-dcim", "dual-vmamba-baseline", "cipa"])
def test_ablations_forward(name):
    overrides = dict(TINY, img_size=128) if name == "cipa" else TINY
    model = build_model(name, **overrides).eval()
    ct, pet = torch.randn(2, 1, 128, 128), torch.randn(2, 1, 128, 128)
    with torch.inference_mode():
        out = model(ct, pet)
        assert out.shape == (2, 1, 128, 128) and torch.isfinite(out).all()
        # 3-channel input equals the repeated 1-channel input; PET matters
        assert torch.allclose(model(ct.expand(-1, 3, -1, -1), pet.expand(-1, 3, -1, -1)), out, atol=1e-5)
        assert not torch.allclose(model(ct, torch.zeros_like(pet)), out)


def test_bad_inputs_raise_clear_errors_before_compute():
    model = build_model("vmambax-nano")
    good = torch.zeros(2, 1, 128, 128)
    cases = [
        (torch.zeros(2, 1, 128, 256), torch.zeros(2, 1, 128, 256), "square"),
        (torch.zeros(2, 1, 200, 200), torch.zeros(2, 1, 200, 200), "multiple of 128"),
        (good, torch.zeros(2, 1, 256, 256), "same batch and slice size"),
        (torch.zeros(1, 128, 128), torch.zeros(1, 128, 128), "shape"),
        (torch.zeros(2, 2, 128, 128), torch.zeros(2, 2, 128, 128), "shape"),
        (good.to(torch.uint8), good.to(torch.uint8), "floating-point"),
        (torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 128, 128), "batch of 1"),  # train mode + BN
    ]
    for ct, pet, words in cases:
        with pytest.raises(InputError, match=words):
            model(ct, pet)
    # with SyncBatchNorm (multi-GPU) one sample per device is fine: statistics are pooled
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced.check_inputs(torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 128, 128))
    cipa = build_model("cipa", **TINY).eval()  # CRM built for 512
    with pytest.raises(InputError, match="512x512"):
        cipa(good, good)


def test_nano_trains_and_loss_falls():
    torch.manual_seed(0)
    model = build_model("vmambax-nano").train()
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    target = torch.stack([((yy - 40) ** 2 + (xx - 70) ** 2 < 15 ** 2),
                          ((yy - 80) ** 2 + (xx - 45) ** 2 < 12 ** 2)]).float()[:, None]
    ct = torch.randn(2, 1, 128, 128) * 0.2 + target * 0.5
    pet = torch.randn(2, 1, 128, 128) * 0.2 + target * 1.5
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=2e-3)

    def loss_fn(logits):
        p = torch.sigmoid(logits)
        dice = (2 * (p * target).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits, target) + 1 - dice.mean()

    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = loss_fn(model(ct, pet))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    # every parameter got a gradient (nothing is built that the fusion does not use)
    assert all(p.grad is not None for p in model.parameters())


def test_param_groups_cover_every_parameter_once():
    model = meta_model("vmambax")
    groups = param_groups(model, 0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    for name, p in named.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("A_logs", "Ds", "scale1", "scale2", "dt_projs_bias", "bias") or p.dim() == 1:
            assert id(p) not in decay, name
    for name in ("encoder.stages.0.blocks.0.ssm.x_proj_weight", "encoder.stages.0.blocks.0.ssm.dt_projs_weight",
                 "encoder.stages.0.blocks.0.ssm.in_proj.weight", "decoder.head.weight",
                 "cgm.0.gate_ct.spatial.weight"):
        assert id(named[name]) in decay, name
