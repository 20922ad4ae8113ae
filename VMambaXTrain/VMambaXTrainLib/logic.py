"""VMambaX Train logic: annotated cases in the scene (or a folder) -> a trained, registered model.

GUI-free (MRML + subprocess), so it runs from the Python console and under slicer-core::

    logic = VMambaXTrainLogic()
    cases = [TrainingCase(ct1, pet1, seg1), TrainingCase(ct2, pet2, seg2)]
    data = logic.exportCases(cases, "/data/my-cases")          # volume case folders
    run = logic.startTraining(data, "/data/run1", config="vmambax-nano", epochs=5)
    run = logic.startTraining(data, "/data/cv", timeBudget=45, folds=5)  # 45 min, 5-fold CV
    while run.isRunning():  # a QTimer in the widget
        for event in run.poll(): ...                             # progress.jsonl events
    run.stop()                                                   # clean stop, resumable
    run = logic.startTraining(data, "/data/run1", resume=True)
    logic.registerModel(run, "my-model")                         # VMambaX Segment lists it

Training runs as a separate ``python -m vmambax train`` process: Slicer stays responsive, a crash
in training cannot take the scene down, and the same run can be continued from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
from pathlib import Path

from vmambax.errors import ConfigError, InputError, ModelFileError
from vmambax.utils import atomic_dir

from VMambaXCommon.processes import launch, python_executable, terminate_tree, vmambax_env
from vmambax.locks import RunLock  # the one lock implementation (core)

TERMINAL_EVENTS = ("done", "stopped", "error")
CROSSVAL_STATE = "crossval-state.json"  # vmambax.crossval.runner.STATE (no torch import here)
MAX_PANEL_FOLDS = 10  # the panel offers 2..10 folds (the CLI takes up to 20)


@dataclasses.dataclass
class TrainingCase:
    """One annotated case in the scene: CT, PET and the tumour segmentation (segment optional)."""

    ctNode: object
    petNode: object
    segmentationNode: object
    segmentId: str | None = None  # None: the segment named like a tumour, or the only one

    @property
    def name(self) -> str:
        return self.ctNode.GetName() if self.ctNode is not None else "(no CT)"


def tumourSegmentId(segmentationNode) -> str:
    """The segment holding the tumour: named like one (tumour, tumor, lesion, GTV...), or the
    only segment. Raises InputError listing the segments when it is ambiguous."""
    from vmambax.data.rtstruct import TUMOUR_WORDS  # one list: ROIs, segments

    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InputError(f"segmentation {segmentationNode.GetName()!r} has no segments; draw the "
                         f"tumour in Segment Editor first")
    matches = [i for i in ids
               if any(w in segmentation.GetSegment(i).GetName().lower() for w in TUMOUR_WORDS)]
    if len(matches) == 1 or (matches and len(ids) == 1):
        return matches[0]
    if len(ids) == 1:
        return ids[0]
    names = ", ".join(repr(segmentation.GetSegment(i).GetName()) for i in ids)
    raise InputError(f"segmentation {segmentationNode.GetName()!r} has several segments ({names}) "
                     f"and {'several' if matches else 'none'} named like a tumour; rename the "
                     f"tumour segment to 'tumour' (or keep only that segment)")


def _safe_case_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "case"
    case_id, n = base, 2
    while case_id in taken:
        case_id, n = f"{base}-{n}", n + 1
    taken.add(case_id)
    return case_id


def pythonExecutable() -> str:
    """The Python that runs ``vmambax train`` (PythonSlicer inside Slicer, else this Python)."""
    return python_executable()


def defaultConfig(cuda: bool | None = None) -> str:
    """The network a new run starts with: the paper's on a CUDA GPU, the nano one elsewhere
    (the full network takes days per epoch on a CPU)."""
    if cuda is None:
        from VMambaXCommon.devices import PROBE

        if PROBE.answered:
            cuda = bool(PROBE.info.get("cuda"))
        else:  # no torch import in Slicer: an NVIDIA driver is the guess until the probe answers
            from vmambax.deps import nvidia_gpu_present

            cuda = nvidia_gpu_present()
    return "vmambax" if cuda else "vmambax-nano"


class TrainingRun:
    """A running (or finished) ``vmambax train`` process and its progress stream."""

    def __init__(self, process: subprocess.Popen, runDir: Path, logFile, offset: int = 0,
                 lock: RunLock | None = None):
        self.process = process
        self.lock = lock  # released once the process has exited
        self.runDir = Path(runDir)
        self.progressPath = self.runDir / "progress.jsonl"
        self.stopPath = self.runDir / "STOP"
        self.logPath = self.runDir / "train.log"
        self._logFile = logFile
        self._offset = offset
        self._partial = b""
        self.events: list[dict] = []
        self.finalEvent: dict | None = None
        self.stopRequestedAt: float | None = None
        self.cancelled = False  # ended by cancel() (the exit status then says nothing)

    def poll(self) -> list[dict]:
        """Events appended to progress.jsonl since the last call (only complete lines)."""
        if not self.progressPath.exists():
            return []
        with open(self.progressPath, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        new = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not ours (the file is JSON lines by contract)
            new.append(event)
            # A cross-validation fold's own done/stopped (tagged "fold": k) is not the end of
            # the command: its untagged done/stopped/error follows.
            if event.get("event") in TERMINAL_EVENTS and event.get("fold") is None:
                self.finalEvent = event
        self.events.extend(new)
        return new

    def isRunning(self) -> bool:
        running = self.process.poll() is None
        if not running:
            if self._logFile is not None:
                self._logFile.close()
                self._logFile = None
            if self.lock is not None:
                self.lock.release()
        return running

    @property
    def returncode(self):
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self.isRunning()
        return code

    def stop(self) -> None:
        """Ask the trainer to stop after the current step (it checkpoints, then exits);
        ``stopOverdue`` says when to give up waiting and ``cancel``."""
        if self.process.poll() is None:
            self.stopPath.touch()
            if self.stopRequestedAt is None:
                self.stopRequestedAt = time.monotonic()

    def stopOverdue(self, grace_s: float = 300.0) -> bool:
        """A stop was requested more than ``grace_s`` seconds ago and the trainer still runs."""
        return (self.stopRequestedAt is not None and self.process.poll() is None
                and time.monotonic() - self.stopRequestedAt > grace_s)

    def cancel(self, timeout: float = 10.0) -> None:
        """End the trainer now, with every process it started (PythonSlicer's real Python,
        data-loader workers): terminate, then kill what is left after ``timeout`` seconds.
        The last saved checkpoint stays usable (Resume)."""
        if self.process.poll() is None:
            self.cancelled = True
            terminate_tree(self.process.pid, timeout=timeout)
        self.wait()

    kill = cancel  # the old name

    @property
    def modelFile(self) -> Path:
        if self.finalEvent and self.finalEvent.get("model_file"):
            return Path(self.finalEvent["model_file"])
        return self.runDir / "model.pt"

    def failureMessage(self) -> str:
        """Why the run ended without a model: the error event, else the log's last lines."""
        if self.finalEvent and self.finalEvent.get("event") == "error":
            return str(self.finalEvent.get("message") or "training failed")
        tail = ""
        if self.logPath.exists():
            tail = "\n".join(self.logPath.read_text(errors="replace").strip().splitlines()[-5:])
        code = self.returncode
        return f"training exited with status {code}" + (f":\n{tail}" if tail else "")


class VMambaXTrainLogic:
    """Export annotated cases, run and follow ``vmambax train``, register the model."""

    # -- cases --------------------------------------------------------------------------------
    def validateCases(self, cases) -> list[str]:
        """Check every case before anything is written; returns the tumour segment IDs."""
        if len(cases) < 2:
            raise InputError(f"{len(cases)} case(s) given; training needs at least 2 annotated "
                             f"cases (one is held out to measure the validation Dice)")
        segment_ids = []
        for number, case in enumerate(cases, start=1):
            for role, node in (("CT", case.ctNode), ("PET", case.petNode),
                               ("segmentation", case.segmentationNode)):
                if node is None or node.GetScene() is None:
                    raise InputError(f"case {number}: no {role} selected (or it was removed from "
                                     f"the scene); remove the case and add it again")
            if case.ctNode is case.petNode:
                raise InputError(f"case {number} ({case.name}): the same volume is CT and PET")
            segment_ids.append(case.segmentId or tumourSegmentId(case.segmentationNode))
        return segment_ids

    def exportCases(self, cases, folder, progress=None) -> Path:
        """Write the scene cases as volume case folders (ct.nii.gz in HU, pet.nii.gz in SUV on
        its own grid, label.nii.gz on the CT grid, case.json) under ``folder``; returns it.

        Every case is read and checked first (segment choice, PET units), so a bad case fails
        before anything is written; each case folder appears only once complete.
        """
        import SimpleITK as sitk

        from VMambaXCommon.mrml_sitk import segment_to_array, volume_node_to_image
        from VMambaXCommon.pet import pet_node_to_suv

        segment_ids = self.validateCases(cases)
        folder = Path(folder)
        prepared, taken = [], {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        for number, (case, segment_id) in enumerate(zip(cases, segment_ids), start=1):
            if progress:
                progress(0.5 * (number - 1) / len(cases), f"Reading case {number}: {case.name}")
            ct = volume_node_to_image(case.ctNode)
            # Units from the node first (PETDICOMExtension loads SUV), then the DICOM tags.
            converted = pet_node_to_suv(case.petNode, "auto",
                                        name=f"case {number} PET {case.petNode.GetName()!r}")
            pet, conversion = converted.image, f"{converted.conversion} [{converted.rule}]"
            label = sitk.GetImageFromArray(
                segment_to_array(case.segmentationNode, segment_id, case.ctNode))
            label.CopyInformation(ct)
            info = {"source": "3D Slicer scene", "ct": case.ctNode.GetName(),
                    "pet": case.petNode.GetName(),
                    "segmentation": case.segmentationNode.GetName(),
                    "segment": case.segmentationNode.GetSegmentation().GetSegment(segment_id).GetName(),
                    "pet_conversion": conversion}
            prepared.append((_safe_case_id(case.name, taken), ct, pet, label, info))
        for number, (case_id, ct, pet, label, info) in enumerate(prepared, start=1):
            if progress:
                progress(0.5 + 0.5 * (number - 1) / len(prepared), f"Writing case {case_id}")
            with atomic_dir(folder / case_id) as tmp:
                sitk.WriteImage(ct, str(tmp / "ct.nii.gz"), True)
                sitk.WriteImage(pet, str(tmp / "pet.nii.gz"), True)
                sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(tmp / "label.nii.gz"), True)
                (tmp / "case.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if progress:
            progress(1.0, f"Exported {len(prepared)} case(s) to {folder}")
        return folder

    # -- training -------------------------------------------------------------------------------
    @staticmethod
    def checkTrainingOptions(timeBudget=None, folds=None, numberOfCases: int | None = None):
        """Refuse a time budget or a number of folds ``vmambax train`` would refuse, before
        anything is exported or launched. ``numberOfCases``: the cases to fold (None: unknown).
        Returns (timeBudget or None, folds or None)."""
        if timeBudget in (None, 0, ""):
            timeBudget = None
        else:
            try:
                timeBudget = float(timeBudget)
            except (TypeError, ValueError):
                raise ConfigError(f"the training time {timeBudget!r} is not a number of minutes"
                                  ) from None
            if not timeBudget >= 1:  # also NaN
                raise ConfigError(f"the training time must be at least 1 minute (got "
                                  f"{timeBudget:g}); choose 'until the epochs end' for no limit")
        if folds in (None, 0):
            folds = None
        else:
            if isinstance(folds, bool) or not isinstance(folds, int):
                raise ConfigError(f"the number of cross-validation folds must be a whole number "
                                  f"(got {folds!r})")
            if not 2 <= folds <= MAX_PANEL_FOLDS:
                raise ConfigError(f"cross-validation needs 2 to {MAX_PANEL_FOLDS} folds (got "
                                  f"{folds}); choose Off to train one model on all cases")
            if numberOfCases is not None and folds > numberOfCases:
                raise InputError(f"{folds}-fold cross-validation needs at least {folds} cases "
                                 f"(one fold each); there are {numberOfCases}: add cases or "
                                 f"choose fewer folds")
        return timeBudget, folds

    @staticmethod
    def countCases(dataDir) -> int:
        """How many volume cases ``dataDir`` holds; ConfigError for a PCLT20K-layout folder
        (cross-validation scores whole volumes, which that layout does not have)."""
        from vmambax.data.pclt_export import find_case_folders

        data = Path(dataDir)
        if (data / "train.txt").is_file():
            raise ConfigError(f"cross-validation needs volume case folders (<case>/ct.nii.gz, "
                              f"pet.nii.gz, label); {data} is a PCLT20K-layout folder")
        return len(find_case_folders(data))

    @staticmethod
    def isCrossValidation(runDir) -> bool:
        """The run folder holds a cross-validation (stopped or finished)."""
        return (Path(runDir) / CROSSVAL_STATE).is_file()

    @classmethod
    def canResume(cls, runDir) -> bool:
        """The run folder holds a run that Resume continues (one model, or a cross-validation)."""
        run_dir = Path(runDir)
        return (run_dir / "checkpoints" / "last.ckpt").is_file() or cls.isCrossValidation(run_dir)

    @staticmethod
    def trainCommand(dataDir, runDir, config: str = "vmambax", epochs: int | None = None,
                     device: str = "auto", resume: bool = False, extraArgs=(),
                     timeBudget: float | None = None, folds: int | None = None) -> list[str]:
        """The ``vmambax train`` command line (argument list; never through a shell).

        A resumed run takes its data, network, schedule, time budget and folds from its
        checkpoint / cross-validation state (changing them would change the schedule, which the
        CLI refuses), so only the run folder and the device are passed then. With a time
        budget the schedule (and so the number of epochs) is fitted to it: no --epochs.
        """
        run_dir = Path(runDir)
        command = [pythonExecutable(), "-m", "vmambax", "train", "--out", str(run_dir),
                   "--progress-file", str(run_dir / "progress.jsonl"),
                   "--no-progress-bar"]  # progress comes from the JSON lines, not the log
        if resume:
            command += ["--resume"]
        else:
            command += ["--data", str(dataDir), "--config", config]
            if timeBudget:
                command += ["--time-budget", f"{float(timeBudget):g}"]
            elif epochs:
                command += ["--epochs", str(int(epochs))]
            if folds:
                command += ["--folds", str(int(folds))]
        if device and device != "auto":  # cuda -> gpu; cpu and mps as they are
            command += ["--accelerator", "gpu" if device.startswith("cuda") else device]
        return command + [str(a) for a in extraArgs]

    def startTraining(self, dataDir, runDir, config: str = "vmambax", epochs: int | None = None,
                      device: str = "auto", resume: bool = False, extraArgs=(),
                      timeBudget: float | None = None, folds: int | None = None) -> TrainingRun:
        """Start ``vmambax train`` in the background and return at once (``dataDir`` is not
        needed to resume: the run continues on the data it started with, with its own time
        budget and folds). ``timeBudget``: minutes for the whole command (None: the epochs);
        ``folds``: K-fold cross-validation (None or 0: one model on all cases)."""
        run_dir = Path(runDir)
        if resume:
            if not self.canResume(run_dir):
                raise InputError(f"nothing to resume in {run_dir}: it has no checkpoints/last.ckpt "
                                 f"(nor {CROSSVAL_STATE}); start a new training run instead")
            timeBudget = folds = None  # the run's own (see trainCommand)
        else:
            if not dataDir or not Path(dataDir).is_dir():  # "" would mean the current folder
                raise InputError(f"training data folder {dataDir} does not exist; export the "
                                 f"cases first or choose the folder of case sub-folders")
            timeBudget, folds = self.checkTrainingOptions(timeBudget, folds)
            if folds:
                self.checkTrainingOptions(None, folds, self.countCases(dataDir))
            if self.canResume(run_dir) or (run_dir / "fold-1").exists():
                raise ConfigError(f"run folder {run_dir} already holds a training run; press "
                                  f"Resume to continue it, or choose an empty run folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()  # refuses a second trainer on this folder while the first is alive
        try:
            return self._launch(lock, dataDir, run_dir, config, epochs, device, resume, extraArgs,
                                timeBudget, folds)
        except BaseException:
            lock.release()
            raise

    def _launch(self, lock, dataDir, run_dir, config, epochs, device, resume, extraArgs,
                timeBudget=None, folds=None):
        (run_dir / "STOP").unlink(missing_ok=True)  # an old stop request would end it at once
        command = self.trainCommand(dataDir, run_dir, config, epochs, device, resume, extraArgs,
                                    timeBudget=timeBudget, folds=folds)
        env = vmambax_env()  # PYTHONPATH: vmambax sits next to the modules inside Slicer
        # Follow only what this process writes: a resumed run appends to the same file.
        offset = _size(run_dir / "progress.jsonl")
        log = open(run_dir / "train.log", "ab")
        run = None
        try:
            # No console window on Windows (as slicer.util.launchConsoleProcess); output to the
            # log file, which outlives Slicer, rather than a pipe into Slicer.
            process = launch(command, stdout=log, env=env, cwd=str(run_dir))
            lock.update(process.pid)
            run = TrainingRun(process, run_dir, log, offset, lock=lock)
        finally:
            if run is None:
                log.close()
        return run

    # -- result ---------------------------------------------------------------------------------
    @staticmethod
    def checkModelName(name: str) -> bool:
        """Refuse a name the registry would refuse at the end of the run (checked when training
        starts, so a bad name does not waste the run); True when it replaces a user model."""
        from vmambax.infer.registry import DEFAULT_ALIASES, _NAME_RE, shipped_models, user_models

        if not _NAME_RE.match(name or "") or name in DEFAULT_ALIASES:
            raise ConfigError(f"invalid model name {name!r}: use letters, digits, '.', '_' or "
                              f"'-' (at most 64, starting with a letter or digit), not "
                              f"{' / '.join(DEFAULT_ALIASES)}")
        if any(e.name == name for e in shipped_models()):
            raise ConfigError(f"{name!r} is the name of a shipped model; choose another name")
        return any(e.name == name for e in user_models())

    def registerModel(self, run: TrainingRun, name: str, description: str = ""):
        """Add the run's model file to the user's model registry (VMambaX Segment lists it)."""
        from vmambax.infer.registry import add_user_model

        model_file = run.modelFile
        if not model_file.is_file():
            raise ModelFileError(f"the run in {run.runDir} has no model file ({model_file}); "
                                 f"{run.failureMessage()}")
        return add_user_model(name, model_file,
                              description=description or f"trained in 3D Slicer ({run.runDir})",
                              overwrite=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
