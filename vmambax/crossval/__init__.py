"""Cross-validation on a clinic's own cases (``vmambax train --folds K``): above training and
inference, since it trains fold models and then segments each fold's held-out cases."""

from vmambax.crossval.folds import assign_folds, fold_cases  # noqa: F401
from vmambax.crossval.runner import CrossValResult, evaluate_fold, run_crossval  # noqa: F401
