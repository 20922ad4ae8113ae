"""Choices a run makes on its own validation cases after training (``--postprocess auto``)."""

from __future__ import annotations

import numpy as np
import torch

from vmambax.data.preprocess import normalize_uint8


@torch.inference_mode()
def case_probabilities(net: torch.nn.Module, val_src, spec, batch_size: int = 8):
    """``{case_id: (probability (z, S, S), mask (z, S, S))}`` at network resolution for the whole
    cases of a ``VolumeSlices`` validation source, with the spec's test-time flips."""
    from vmambax.model.tta import FlipTTA  # the same flips segment applies

    model = FlipTTA(net, spec.tta).eval() if spec.tta != "none" else net.eval()
    out = {}
    for cid in val_src.case_ids:
        a = val_src._arrays(cid)
        z = a["mask"].shape[0]
        prob = np.empty(a["mask"].shape, np.float32)
        for start in range(0, z, batch_size):
            rows = np.arange(start, min(start + batch_size, z))
            ct = normalize_uint8(torch.from_numpy(spec.gather(a["ct"], rows)).float())
            pet = normalize_uint8(torch.from_numpy(spec.gather(a["pet"], rows)).float())
            prob[rows] = torch.sigmoid(model(ct, pet)[:, 0].float()).numpy()
        out[cid] = (prob, np.asarray(a["mask"]) > 0)
    return out


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    den = pred.sum() + gt.sum()
    return 1.0 if den == 0 else float(2 * (pred & gt).sum() / den)


def choose_postprocess(net, val_src, spec):
    """(spec with the better post-processing, scores): ``largest`` only when it raises the mean
    3-D Dice of the validation cases (network resolution), else ``none``."""
    from vmambax.data.postprocess import keep_largest_component

    probs = case_probabilities(net, val_src, spec)
    scores = {"none": [], "largest": []}
    for prob, gt in probs.values():
        pred = prob > spec.threshold
        scores["none"].append(_dice(pred, gt))
        scores["largest"].append(_dice(keep_largest_component(pred) > 0, gt))
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    choice = "largest" if means["largest"] > means["none"] else "none"
    return spec.replace(postprocess=choice), {"mean_val_dice_3d": means, "chosen": choice}
