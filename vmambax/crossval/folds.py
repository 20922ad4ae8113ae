"""Patient-level folds for cross-validation.

Every case of a volume export is one patient (``pclt_export`` names case folders after their
case IDs); a patient's slices never appear in two folds. Folds are a seeded shuffle dealt round
robin, so their sizes differ by at most one and depend only on the case IDs and the seed.
"""

from __future__ import annotations

import random
from typing import Sequence

from vmambax.errors import ConfigError


def assign_folds(case_ids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint, sorted lists of case IDs covering all of ``case_ids``."""
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ConfigError("cross-validation needs distinct case IDs (one case per patient).")
    if not 2 <= k <= len(ids):
        raise ConfigError(f"--folds {k} needs between 2 and {len(ids)} folds for {len(ids)} cases.")
    order = ids[:]
    random.Random(f"folds:{seed}").shuffle(order)
    folds = [sorted(order[i::k]) for i in range(k)]
    return folds


def fold_cases(folds: list[list[str]], index: int, val_fraction: float, seed: int):
    """(train, validation, test) case lists of fold ``index``: its own fold is the test set; the
    validation cases (checkpoint choice, post-processing) are carved from the others."""
    from vmambax.data.pclt import split_patients

    test = folds[index]
    rest = sorted(c for i, f in enumerate(folds) if i != index for c in f)
    train, val = split_patients(rest, val_fraction, seed, group=lambda c: c)
    return train, val, test
