"""Segmentation metrics (2-D set metrics as the papers define them, 3-D per case) and PET
lesion quantification. See docs/ARCHITECTURE.md, "Metrics"."""

from vmambax.metrics.quantification import PEAK_RADIUS_MM, quantify_lesions, sphere_kernel
from vmambax.metrics.segmentation import (Confusion, SetMetrics, case_metrics, confusion, dice_3d, hd95_3d_mm,
                                          lesion_detection, set_metrics)
from vmambax.metrics.surface import hd95, hd95_reference_2d, hd_percentile, surface_distances

__all__ = [
    "PEAK_RADIUS_MM", "Confusion", "SetMetrics", "case_metrics", "confusion", "dice_3d", "hd95",
    "hd95_3d_mm", "hd95_reference_2d", "hd_percentile", "lesion_detection", "quantify_lesions",
    "set_metrics", "sphere_kernel", "surface_distances",
]
