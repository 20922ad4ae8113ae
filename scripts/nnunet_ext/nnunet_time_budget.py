"""nnU-Net trainer that stops at a wall-clock budget (scripts/nnunet_baseline.py).

nnU-Net's trainers run a fixed number of epochs (1000 x 250 iterations). This one runs until
``VMAMBAX_NNUNET_MINUTES`` minutes of training have passed, so nnU-Net gets the same time per fold
as ``vmambax train --folds K --time-budget``. Everything else is stock ``nnUNetTrainer`` (network,
loss, augmentation, sampling, optimiser), except:

- the poly learning-rate schedule (lr0 * (1 - t)^0.9) runs over the fraction t of the time budget
  used, per iteration, instead of over the epoch count, so the rate still decays to ~0 at the end;
- an "epoch" is ``VMAMBAX_NNUNET_ITERS`` iterations (default 50; nnU-Net's 250 take longer than a
  whole budget on a CPU) with a fifth as many validation iterations (nnU-Net's 5:1);
- torch uses ``VMAMBAX_NNUNET_THREADS`` threads (default 1; nnUNetv2_train sets all cores on a CPU);
- the final validation on the validation cases is skipped: the held-out fold is scored by the
  driver script instead, and the validation cases only pick checkpoint_best (as in nnU-Net).

Run as ``python nnunet_time_budget.py DATASET_NAME`` (fold 0 of the dataset's splits_final.json,
2-D configuration, CPU), which does what ``nnUNetv2_train DATASET 2d 0 -tr ... -device cpu`` does
minus the trainer lookup. That lookup (``nnUNet_extTrainer`` would find this class) first imports
every trainer module of nnunetv2, the Primus ones included, which import timm and so torchvision;
PyPI's torchvision wheels are CUDA builds that do not load next to the CPU torch, so on a CPU-only
install the lookup itself fails ("operator torchvision::nms does not exist"). The plain U-Net
trained here never needs timm or torchvision.
"""

from __future__ import annotations

import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerTimeBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("VMAMBAX_NNUNET_MINUTES", "20")) * 60.0
        self.num_iterations_per_epoch = int(os.environ.get("VMAMBAX_NNUNET_ITERS", "50"))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.num_epochs = 10 ** 6  # an upper bound only: the wall clock ends training
        self.iterations_done = 0
        torch.set_num_threads(int(os.environ.get("VMAMBAX_NNUNET_THREADS", "1")))

    def _set_lr(self, fraction: float) -> float:
        lr = self.initial_lr * (1.0 - min(fraction, 1.0)) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run_training(self):
        started = time.monotonic()  # the budget includes nnU-Net's own set-up, as vmambax's does
        cpu_started = time.process_time()
        self.on_train_start()
        elapsed = lambda: time.monotonic() - started  # noqa: E731
        lr = self.initial_lr
        while elapsed() < self.budget_s:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if elapsed() >= self.budget_s:
                    break
                lr = self._set_lr(elapsed() / self.budget_s)
                outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += 1
            if not outputs:
                break
            self.on_train_epoch_end(outputs)
            # the epoch the budget cut short gets one validation batch (nnU-Net's logger needs one),
            # not a full round after the budget has run out
            n_val = self.num_val_iterations_per_epoch if elapsed() < self.budget_s else 1
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(n_val)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        train_s = elapsed()
        cpu_s = time.process_time() - cpu_started  # less than train_s x threads on a busy machine
        self.on_train_end()
        stats = {"epochs": int(self.current_epoch), "iterations": int(self.iterations_done),
                 "iterations_per_epoch": self.num_iterations_per_epoch,
                 "batch_size": int(self.configuration_manager.batch_size), "patch_size": list(self.configuration_manager.patch_size),
                 "budget_s": self.budget_s, "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1), "last_lr": lr,
                 "threads": torch.get_num_threads(), "best_ema_pseudo_dice": self._best_ema}
        with open(os.path.join(self.output_folder, "time_budget.json"), "w", encoding="utf-8") as fh:
            json.dump(stats, fh, indent=1, default=float)
        self.print_to_log_file(f"time budget: {stats}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (the held-out fold is scored by "
                               "scripts/nnunet_baseline.py)")


def main(argv=None) -> int:
    import sys

    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed

    dataset_name = (argv if argv is not None else sys.argv[1:])[0]
    base = join(nnUNet_preprocessed, dataset_name)
    plans = load_json(join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False  # as nnunetv2.run.run_training.get_trainer_from_args sets it
    trainer = nnUNetTrainerTimeBudget(plans=plans, configuration="2d",
                                      fold=0, dataset_json=load_json(join(base, "dataset.json")),
                                      device=torch.device("cpu"))
    trainer.run_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
