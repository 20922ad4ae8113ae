"""Render the VMambaX Segment / Train panels from their real .ui files (the README's pictures).

Qt (PySide6, offscreen) loads each module's Qt Designer file with ``QUiLoader``, as Slicer's
``slicer.util.loadUI`` does; the CTK and MRML widgets Slicer provides (collapsible sections,
node selectors, path edits, the lesion table) are stand-ins built on plain Qt widgets, and the
panel is filled with example content by widget name. Layout, labels, tooltips' widgets, buttons
and their order are the .ui file's own, so the picture changes when the panel does. Each PNG
records the SHA-256 of the .ui file it was made from (PNG text ``ui-sha256``); a test checks the
pictures against the current .ui files.

    pip install PySide6-Essentials        # once (``pip install -e ".[docs]"``)
    python docs/images/render_panels.py   # writes docs/images/segment-panel.png, train-panel.png

What it cannot show: Slicer's style sheet and icons, and the module panel around the widgets.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
PANELS = {"VMambaXSegment": "segment-panel.png", "VMambaXTrain": "train-panel.png"}
WIDTH = 440
TEXT_KEY = "ui-sha256"
_STAND_INS: list = []

EXAMPLES = {
    "ctSelector": "CT Thorax 2.5mm", "petSelector": "PET AC WB",
    "modelComboBox": "Default model", "deviceComboBox": "Automatic (GPU if available)",
    "petUnitsComboBox": "Auto-detect",
    "outputSegmentationSelector": "Create new segmentation",
    "petInfoLabel": "PET loaded from DICOM: SUV is computed from its tags.",
    "modelInfoLabel": "demo: vmambax-nano trained on synthetic PET/CT phantoms",
    "statusLabel_VMambaXSegment": ("3 lesion(s), total MTV 41.7 mL; model vmambax-nano-phantom "
                                   "on cpu (16 threads) in 48.2 s."),
    "statusLabel_VMambaXTrain": ("Training: epoch 12, step 1320/5500, loss 0.3121, validation "
                                 "Dice 0.612, about 41 min left"),
    "caseCtSelector": "CT Thorax 2.5mm", "casePetSelector": "PET AC WB",
    "caseSegmentationSelector": "GTV (reviewed)",
    "configComboBox": "vMambaX (paper network, needs a GPU)",
    "trainDeviceComboBox": "NVIDIA GPU (CUDA)", "foldsComboBox": "Off",
    "runFolderPathLineEdit": "~/VMambaX/runs/run1", "dataFolderPathLineEdit": "~/VMambaX/cases",
}
PROGRESS = {"VMambaXSegment": 100, "VMambaXTrain": 24}
LIST_ROWS = ["CT 01 | PET 01 | GTV 01", "CT 02 | PET 02 | GTV 02", "CT 03 | PET 03 | GTV 03"]
LESIONS = (["Lesion", "Voxels", "MTV (mL)", "SUVmax", "SUVmean", "SUVpeak", "TLG (g)"],
           [["1", "21842", "29.4", "14.8", "6.9", "11.2", "202.9"],
            ["2", "6313", "8.5", "9.6", "4.8", "7.4", "40.8"],
            ["3", "2836", "3.8", "5.1", "3.0", "4.2", "11.4"],
            ["Total", "30991", "41.7", "14.8", "5.9", "11.2", "255.1"]])
# Segment: just after a run; Train: while training (Stop and Cancel are what can be pressed).
ENABLED = {"segmentButton", "browseModelButton", "stopButton", "cancelTrainingButton"}
# Disabled by the panel in the state shown: the epochs while "Train for" limits the time.
DISABLED = {"epochsSpinBox"}


def ui_sha256(module: str) -> str:
    return hashlib.sha256(ui_path(module).read_bytes()).hexdigest()


def ui_path(module: str) -> Path:
    return ROOT / module / "Resources" / "UI" / f"{module}.ui"


def stand_ins():
    """Plain-Qt classes named like the CTK/MRML widgets of the .ui files."""
    from PySide6.QtCore import Property
    from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QGroupBox, QLineEdit,
                                   QTableWidget, QTableWidgetItem, QWidget)

    class qMRMLWidget(QWidget):
        pass

    class ctkCollapsibleButton(QGroupBox):
        """A section: its title is the .ui's ``text``; ``collapsed`` hides its content."""

        def _text(self):
            return self.title()

        def _set_text(self, value):
            self.setTitle(value)

        def _collapsed(self):
            return bool(getattr(self, "_is_collapsed", False))

        def _set_collapsed(self, value):
            self._is_collapsed = bool(value)

        text = Property(str, _text, _set_text)
        collapsed = Property(bool, _collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QComboBox):
        pass

    class ctkPathLineEdit(QLineEdit):
        pass

    class ctkDoubleSpinBox(QDoubleSpinBox):
        pass

    class qMRMLTableView(QTableWidget):
        def fill(self, header, rows):
            from PySide6.QtWidgets import QHeaderView

            self.setColumnCount(len(header))
            self.setRowCount(len(rows))
            self.setHorizontalHeaderLabels(header)
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    self.setItem(r, c, QTableWidgetItem(value))
            self.verticalHeader().hide()
            self.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
            self.resizeRowsToContents()
            height = self.horizontalHeader().height() + sum(self.rowHeight(r) for r in range(len(rows)))
            self.setFixedHeight(height + 2 * self.frameWidth())

    return [qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit,
            ctkDoubleSpinBox, qMRMLTableView]


def _fill(module, panel):
    """Example content by widget name (what a user sees during a run)."""
    from PySide6.QtWidgets import (QComboBox, QGroupBox, QLabel, QLineEdit, QListWidget,
                                   QProgressBar, QPushButton, QWidget)

    for widget in panel.findChildren(QWidget):
        name = widget.objectName()
        example = EXAMPLES.get(f"{name}_{module}", EXAMPLES.get(name))
        cls = type(widget).__name__
        if isinstance(widget, QComboBox) and example:
            widget.addItem(example)
        elif isinstance(widget, QLineEdit) and example:
            widget.setText(example)
        elif isinstance(widget, QLabel) and example:
            widget.setText(example)
        elif isinstance(widget, QProgressBar):
            widget.setValue(PROGRESS[module])
        elif isinstance(widget, QListWidget):
            widget.addItems(LIST_ROWS)
            widget.setMaximumHeight(80)
        elif cls == "qMRMLTableView":
            widget.fill(*LESIONS)
        elif isinstance(widget, QPushButton):
            widget.setEnabled(name in ENABLED)
        elif cls == "ctkCollapsibleButton" and widget.collapsed:
            widget.setTitle("▸ " + widget.title())
            for child in widget.findChildren(QWidget):
                child.hide()
            widget.setFlat(True)
            widget.setFixedHeight(widget.fontMetrics().height() + 4)
        elif isinstance(widget, QGroupBox):
            widget.setTitle("▾ " + widget.title())
        if name in DISABLED:
            widget.setEnabled(False)
        if name == "folderCasesWidget":  # shown only when "From a folder" is chosen
            widget.hide()
        if name == "plotContainer":  # Slicer puts a qMRMLPlotWidget here at run time
            hint = QLabel("(Slicer's plot of the training loss and validation Dice)")
            hint.setEnabled(False)
            if widget.layout() is not None:
                widget.layout().addWidget(hint)
            widget.setMinimumHeight(60)


def render(module: str, out: Path) -> Path:
    import xml.etree.ElementTree as ET

    from PySide6.QtCore import QBuffer, QByteArray
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    global _STAND_INS
    _STAND_INS = _STAND_INS or stand_ins()  # kept alive: Qt holds only a C++ pointer to them
    for cls in _STAND_INS:
        loader.registerCustomWidget(cls)
    tree = ET.parse(ui_path(module))
    for connections in tree.getroot().findall("connections"):  # MRML scene signals: Slicer's
        tree.getroot().remove(connections)
    data = QByteArray(ET.tostring(tree.getroot(), encoding="utf-8"))
    buffer = QBuffer(data)
    buffer.open(QBuffer.ReadOnly)
    panel = loader.load(buffer)
    buffer.close()
    if panel is None:
        raise SystemExit(f"Qt could not load {ui_path(module)}: {loader.errorString()}")
    _fill(module, panel)
    panel.resize(WIDTH, 100)
    panel.adjustSize()
    panel.resize(WIDTH, panel.sizeHint().height())
    image = panel.grab().toImage()
    image.setText(TEXT_KEY, ui_sha256(module))
    image.setText("made-by", "docs/images/render_panels.py from " +
                  str(ui_path(module).relative_to(ROOT)))
    if not image.save(str(out)):
        raise SystemExit(f"cannot write {out}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QT_SCALE_FACTOR", "1.5")  # crisp text in the README
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError:
        print("error: PySide6 is needed: pip install PySide6-Essentials", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication([])
    args.out.mkdir(parents=True, exist_ok=True)
    for module, name in PANELS.items():
        print(render(module, args.out / name))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
