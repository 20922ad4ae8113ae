"""The vMambaX network: shared encoder, per-stage fusion (CGM/CRM, DCIM), MambaDecoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmambax.errors import InputError
from vmambax.model.cgm import CGM
from vmambax.model.config import ModelConfig
from vmambax.model.crm import CRM
from vmambax.model.dcim import DCIM
from vmambax.model.decoder import MambaDecoder
from vmambax.model.encoder import VMambaEncoder

SIZE_MULTIPLE = 128  # the stage-4 map (H/32) must split into 4×4 DCIM regions


class VMambaX(nn.Module):
    """``model(ct, pet) -> logits (B, 1, H, W)``.

    ``ct`` and ``pet`` are normalised slices (``v/255*3.2-1.6``) of shape (B, 1, H, W) or
    (B, in_chans, H, W) each (e.g. 3 CT windows and 1 PET channel), H == W a multiple of 128 (``cipa``: exactly ``config.img_size``). 1-channel
    inputs are repeated to 3 channels, as the reference does, so the 3-channel patch embedding of
    ImageNet and the authors' checkpoints loads unchanged (repeating the input is the same as
    summing the kernel over its input channels). The encoder is Siamese: one set of weights, run
    on CT and PET as one batch of 2B.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        dims = config.dims
        self.encoder = VMambaEncoder(dims, config.depths, config.d_state, config.ssm_ratio,
                                     config.drop_path, config.in_chans)
        self.cgm = nn.ModuleList(CGM(d, config.cgm_reduction, config.cgm_min_channels, config.cgm_residual)
                                 for d in dims) if config.use_cgm else None
        self.crm = nn.ModuleList(CRM(d, (config.img_size // (4 * 2 ** i)) ** 2, config.crm_dim, config.d_state)
                                 for i, d in enumerate(dims)) if config.use_crm else None
        self.dcim = nn.ModuleList(DCIM(d, config.d_state, config.ssm_ratio)
                                  for d in dims) if config.use_dcim else None
        self.decoder = MambaDecoder(dims, config.decoder_depths, config.dec_d_state, config.ssm_ratio,
                                    config.dec_drop_path, config.num_classes)

    def check_inputs(self, ct, pet) -> None:
        """Raise InputError (before any compute) unless ct/pet are usable by this model."""
        for name, t in (("ct", ct), ("pet", pet)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise InputError(f"{name} must be a floating-point torch tensor (got {type(t).__name__}"
                                 f"{'' if not isinstance(t, torch.Tensor) else ' of ' + str(t.dtype)}).")
            if t.dim() != 4 or t.shape[1] not in (1, self.config.in_chans):
                raise InputError(f"{name} must have shape (batch, 1, H, W) or (batch, "
                                 f"{self.config.in_chans}, H, W); got {tuple(t.shape)}.")
        if ct.shape[0] != pet.shape[0] or ct.shape[-2:] != pet.shape[-2:]:
            raise InputError(f"ct and pet must have the same batch and slice size (co-registered slices "
                             f"on one grid); got {tuple(ct.shape)} and {tuple(pet.shape)}. Resample PET "
                             f"onto the CT grid.")
        h, w = ct.shape[-2:]
        if h != w or h % SIZE_MULTIPLE or h == 0:
            raise InputError(f"slices must be square with a side that is a multiple of {SIZE_MULTIPLE} "
                             f"(e.g. 512); got {h}x{w}. Pad to square and resize (vmambax.data.preprocess "
                             f"does this).")
        if self.crm is not None and h != self.config.img_size:
            s = self.config.img_size
            raise InputError(f"this CIPA model's CRM is built for {s}x{s} slices (its layers act on whole "
                             f"flattened feature maps); got {h}x{w}. Resize to {s}x{s}, or build the "
                             f"model with img_size={h} (that model cannot load {s}x{s} weights).")
        if self.training and ct.shape[0] < 2 and self._cgm_has_local_batchnorm():
            raise InputError("training with a batch of 1 is not possible: CGM's BatchNorm sees one pooled "
                             "value per channel. Use a batch of at least 2, or call model.eval().")

    def _cgm_has_local_batchnorm(self) -> bool:
        # SyncBatchNorm (multi-GPU) pools statistics over devices, so 1 sample per device is fine.
        return self.cgm is not None and type(self.cgm[0].gate_ct.channel[1]) is nn.BatchNorm2d

    def forward(self, ct: torch.Tensor, pet: torch.Tensor) -> torch.Tensor:
        self.check_inputs(ct, pet)
        size = ct.shape[-2:]
        b = ct.shape[0]
        # Each input may have 1 channel (repeated, as the reference does) or in_chans (e.g.
        # several CT windows; vmambax.data.input_spec): the shared encoder takes both as one batch.
        n = self.config.in_chans
        x = torch.cat([t if t.shape[1] == n else t.expand(-1, n, -1, -1) for t in (ct, pet)], dim=0)
        feats = self.encoder(x)
        fused = [self.fuse(i, f[:b], f[b:]) for i, f in enumerate(feats)]
        logits = self.decoder(fused)
        if logits.shape[-2:] != size:  # a no-op for multiples of 128; kept as the reference does
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def fuse(self, i: int, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Per-stage fusion (spec §5)."""
        if self.cgm is not None:  # vMambaX: F = Ĉ + P̂ (+ DCIM(Ĉ, P̂))
            c, p = self.cgm[i](c, p)
            return c + p + self.dcim[i](c, p) if self.dcim is not None else c + p
        if self.crm is not None:  # CIPA: F = C + P (+ DCIM(C̃, P̃)); DCIM alone sees rectified features
            c_rec, p_rec = self.crm[i](c, p)
            return c + p + self.dcim[i](c_rec, p_rec) if self.dcim is not None else c_rec + p_rec
        return c + p + self.dcim[i](c, p) if self.dcim is not None else c + p
