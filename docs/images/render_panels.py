"""Draw the VMambaX Segment / Train panels from their .ui files (a drawing, not a screenshot).

Walks each module's Qt Designer file and lays its widgets out the way Slicer's module panel
does (collapsible sections, form rows, button rows), filled with example content, so the
README pictures stay in step with the real panels. Run: python docs/images/render_panels.py
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
SCALE = 2
WIDTH = 430
PAD = 8
BG, PANEL, BORDER, TEXT, MUTED = "#eef0f3", "#ffffff", "#b8bec8", "#1d232c", "#667080"
ACCENT, FIELD = "#2f6fd6", "#f9fafc"

EXAMPLES = {
    "ctSelector": "CT Thorax 2.5mm", "petSelector": "PET AC WB", "petUnitsComboBox": "Auto-detect",
    "weightSpinBox": "0.0 kg", "doseSpinBox": "0.0 MBq",
    "petInfoLabel": "PET loaded from DICOM: SUV is computed from its tags.",
    "modelComboBox": "Default model", "deviceComboBox": "auto (GPU if available)",
    "modelInfoLabel": "demo: vmambax-nano trained on synthetic PET/CT phantoms",
    "outputSegmentationSelector": "Create new segmentation",
    "statusLabel_VMambaXSegment": "3 lesion(s), total MTV 41.7 mL; model vmambax-nano-phantom on cpu (16 threads) in 48.2 s.",
    "statusLabel_VMambaXTrain": "Training: epoch 12, step 1320/5500, loss 0.3121, validation Dice 0.612, about 41 min left",
    "caseCtSelector": "CT Thorax 2.5mm", "casePetSelector": "PET AC WB",
    "caseSegmentationSelector": "GTV (reviewed)", "configComboBox": "vMambaX (paper network, needs a GPU)",
    "epochsSpinBox": "50", "trainDeviceComboBox": "cuda",
    "runFolderPathLineEdit": "~/VMambaX/runs/run1", "modelNameLineEdit": "my-vmambax",
}
PROGRESS = {"VMambaXSegment": 100, "VMambaXTrain": 24}
HIDDEN = {"folderCasesWidget"}  # shown only when "From a folder" is chosen
DISABLED = {"cancelButton", "resumeButton", "startButton"}


def font(size, bold=False):
    names = ["DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"]
    for name in names:
        for base in ("/usr/share/fonts/truetype/dejavu", ""):
            try:
                return ImageFont.truetype(str(Path(base) / name), size * SCALE)
            except OSError:
                continue
    return ImageFont.load_default()


F, FB, FS = font(11), font(11, True), font(10)


def text_of(widget):
    for prop in widget.findall("property"):
        if prop.get("name") == "text":
            return prop.findtext("string") or ""
    return ""


class Painter:
    def __init__(self, module, height=1400):
        self.module = module
        self.img = Image.new("RGB", (WIDTH * SCALE, height * SCALE), BG)
        self.d = ImageDraw.Draw(self.img)

    def box(self, x, y, w, h, fill=FIELD, outline=BORDER, r=4):
        self.d.rounded_rectangle([x * SCALE, y * SCALE, (x + w) * SCALE, (y + h) * SCALE],
                                 radius=r * SCALE, fill=fill, outline=outline, width=SCALE)

    def text(self, x, y, s, f=F, fill=TEXT, w=None):
        if w is not None:  # wrap to width
            words, line, lines = s.split(), "", []
            for word in words:
                trial = (line + " " + word).strip()
                if self.d.textlength(trial, font=f) / SCALE > w and line:
                    lines.append(line)
                    line = word
                else:
                    line = trial
            lines.append(line)
            for i, ln in enumerate(lines):
                self.d.text((x * SCALE, (y + 15 * i) * SCALE), ln, font=f, fill=fill)
            return 15 * len(lines)
        self.d.text((x * SCALE, y * SCALE), s, font=f, fill=fill)
        return 15

    # -- widgets ---------------------------------------------------------------------------
    def widget(self, w, x, y, width) -> int:
        cls, name = w.get("class"), w.get("name")
        if name in HIDDEN:
            return 0
        example = EXAMPLES.get(f"{name}_{self.module}", EXAMPLES.get(name))
        if cls == "ctkCollapsibleButton":
            self.box(x, y, width, 24, fill="#dfe4ec", r=3)
            self.text(x + 8, y + 5, "▾  " + text_of(w), FB)
            inner = self.layout(w.find("layout"), x + 6, y + 30, width - 12) if w.find("layout") is not None else 0
            return 30 + inner + 4
        if name == "plotContainer":  # filled with a qMRMLPlotWidget at run time
            return self.plot(x, y, width)
        if cls in ("QWidget", "qMRMLWidget"):
            lay = w.find("layout")
            return self.layout(lay, x, y, width) if lay is not None else 0
        if cls == "QLabel":
            s = example if example is not None else text_of(w)
            if not s:
                return 0
            muted = name in ("petInfoLabel", "modelInfoLabel", "disclaimerLabel")
            return self.text(x, y + 3, s, FS if muted else F, MUTED if muted else TEXT, w=width) + 6
        if cls in ("qMRMLNodeComboBox", "QComboBox", "ctkPathLineEdit"):
            self.box(x, y, width, 24)
            self.text(x + 7, y + 5, example or "", F)
            if cls == "ctkPathLineEdit":
                self.box(x + width - 26, y + 2, 24, 20, fill="#e6e9ee")
                self.text(x + width - 20, y + 4, "…")
            else:
                self.text(x + width - 16, y + 5, "▾", F, MUTED)
            return 30
        if cls in ("ctkDoubleSpinBox", "QSpinBox", "QLineEdit"):
            self.box(x, y, width, 24)
            self.text(x + 7, y + 5, example or text_of(w))
            return 30
        if cls == "QPushButton":
            label = text_of(w)
            primary = name in ("segmentButton",)
            enabled = name not in DISABLED
            self.box(x, y, width, 28 if primary else 26, fill=ACCENT if primary else "#e9ecf1",
                     outline="#2456a8" if primary else BORDER)
            tw = self.d.textlength(label, font=FB if primary else F) / SCALE
            self.text(x + (width - tw) / 2, y + 6, label, FB if primary else F,
                      "#ffffff" if primary else (TEXT if enabled else "#a0a6b0"))
            return 34 if primary else 32
        if cls == "QRadioButton":
            checked = name == "sceneCasesRadioButton"
            self.d.ellipse([(x + 2) * SCALE, (y + 5) * SCALE, (x + 14) * SCALE, (y + 17) * SCALE],
                           outline=MUTED, width=SCALE, fill=ACCENT if checked else PANEL)
            self.text(x + 20, y + 4, text_of(w))
            return 24
        if cls == "QProgressBar":
            value = PROGRESS.get(self.module, 0)
            self.box(x, y + 2, width, 18, fill=PANEL)
            if value:
                self.box(x, y + 2, width * value / 100, 18, fill="#4caf50", outline="#3d8c40")
            self.text(x + width / 2 - 12, y + 4, f"{value}%", FS)
            return 26
        if cls == "QListWidget":
            rows = ["CT 01 | PET 01 | GTV 01", "CT 02 | PET 02 | GTV 02", "CT 03 | PET 03 | GTV 03"]
            self.box(x, y, width, 70, fill=PANEL)
            for i, row in enumerate(rows):
                self.text(x + 6, y + 5 + 20 * i, row, FS)
            return 76
        if cls == "qMRMLTableView":
            return self.table(x, y, width)
        return 0

    def table(self, x, y, width):
        cols = ["Lesion", "Voxels", "MTV (mL)", "SUVmax", "SUVmean", "SUVpeak", "TLG (g)"]
        rows = [["1", "21842", "29.4", "14.8", "6.9", "11.2", "202.9"],
                ["2", "6313", "8.5", "9.6", "4.8", "7.4", "40.8"],
                ["3", "2836", "3.8", "5.1", "3.0", "4.2", "11.4"],
                ["Total", "30991", "41.7", "14.8", "5.9", "11.2", "255.1"]]
        cw = width / len(cols)
        self.box(x, y, width, 20 * (len(rows) + 1) + 4, fill=PANEL)
        for j, c in enumerate(cols):
            self.text(x + 4 + j * cw, y + 4, c, font(9, True))
        for i, row in enumerate(rows, start=1):
            for j, v in enumerate(row):
                self.text(x + 4 + j * cw, y + 4 + 20 * i, v, font(9, i == len(rows)))
        return 20 * (len(rows) + 1) + 10

    def plot(self, x, y, width):
        h = 170
        self.box(x, y, width, h, fill=PANEL)
        left, top, right, bottom = x + 34, y + 22, x + width - 10, y + h - 24
        self.text(x + 8, y + 4, "Training loss and validation Dice", font(9, True))
        self.d.line([(left * SCALE, bottom * SCALE), (right * SCALE, bottom * SCALE)], fill=MUTED, width=SCALE)
        self.d.line([(left * SCALE, top * SCALE), (left * SCALE, bottom * SCALE)], fill=MUTED, width=SCALE)
        for v in (0.0, 0.5, 1.0):
            yy = bottom - v * (bottom - top)
            self.text(x + 6, yy - 7, f"{v:.1f}", font(8), MUTED)
        steps = 1320
        loss = [(s, 0.25 + 0.72 * math.exp(-s / 300) + 0.03 * math.sin(s / 23)) for s in range(0, steps, 20)]
        dice = [(s, 0.64 * (1 - math.exp(-s / 380))) for s in range(110, steps, 110)]

        def pt(s, v):
            return ((left + (right - left) * s / 5500 * 3.5) * SCALE, (bottom - min(v, 1.0) * (bottom - top)) * SCALE)

        self.d.line([pt(s, v) for s, v in loss], fill="#3366e6", width=2 * SCALE)
        for s, v in dice:
            cx, cy = pt(s, v)
            self.d.ellipse([cx - 4 * SCALE, cy - 4 * SCALE, cx + 4 * SCALE, cy + 4 * SCALE], fill="#e6501a")
        self.d.line([pt(s, v) for s, v in dice], fill="#e6501a", width=SCALE)
        self.text(left + 4, bottom + 6, "Step", font(8), MUTED)
        self.text(right - 150, top - 2, "— Loss   ● Validation Dice", font(8), MUTED)
        return h + 6

    # -- layouts ---------------------------------------------------------------------------
    def layout(self, lay, x, y, width) -> int:
        cls = lay.get("class")
        items = lay.findall("item")
        if cls == "QFormLayout":
            rows: dict[int, dict] = {}
            for it in items:
                rows.setdefault(int(it.get("row")), {})[(int(it.get("column", 0)), it.get("colspan"))] = it
            h = 0
            label_w = 118
            for r in sorted(rows):
                cells = rows[r]
                row_h = 0
                for (col, span), it in sorted(cells.items()):
                    child = it.find("widget")
                    sub = it.find("layout")
                    if span == "2":
                        cx, cw = x, width
                    elif col == 0:
                        cx, cw = x, label_w - 6
                    else:
                        cx, cw = x + label_w, width - label_w
                    used = self.widget(child, cx, y + h, cw) if child is not None else self.layout(sub, cx, y + h, cw)
                    row_h = max(row_h, used)
                h += row_h
            return h
        if cls == "QHBoxLayout":
            kids = [it for it in items if it.find("widget") is not None or it.find("layout") is not None]
            kids = [k for k in kids if (k.find("widget") is None or k.find("widget").get("name") not in HIDDEN)]
            weights = []
            for k in kids:
                w = k.find("widget")
                weights.append(1 if (w is not None and w.get("class") == "QPushButton"
                                     and w.get("name") in ("browseModelButton", "cancelButton")) else 3)
            if all(wt == 3 for wt in weights):
                weights = [1] * len(weights)
            total, cx, h = sum(weights), x, 0
            for k, wt in zip(kids, weights):
                cw = (width - 6 * (len(kids) - 1)) * wt / total
                child = k.find("widget")
                used = self.widget(child, cx, y, cw) if child is not None else self.layout(k.find("layout"), cx, y, cw)
                h = max(h, used)
                cx += cw + 6
            return h
        h = 0
        for it in items:
            child = it.find("widget")
            if child is not None:
                used = self.widget(child, x, y + h, width)
                h += used + (4 if used else 0)
            elif it.find("layout") is not None:
                h += self.layout(it.find("layout"), x, y + h, width) + 4
        return h

    def render(self, out: Path):
        root = ET.parse(ROOT / self.module / "Resources" / "UI" / f"{self.module}.ui").getroot()
        top = root.find("widget")
        title = {"VMambaXSegment": "VMambaX Segment", "VMambaXTrain": "VMambaX Train"}[self.module]
        self.box(0, 0, WIDTH, 34, fill="#2b3442", outline="#2b3442", r=0)
        self.text(PAD + 2, 9, f"Modules:  {title}", font(12, True), "#ffffff")
        h = self.layout(top.find("layout"), PAD, 44, WIDTH - 2 * PAD)
        self.img.crop((0, 0, WIDTH * SCALE, (44 + h + PAD) * SCALE)).save(out, optimize=True)


if __name__ == "__main__":
    Painter("VMambaXSegment").render(ROOT / "docs" / "images" / "segment-panel.png")
    Painter("VMambaXTrain").render(ROOT / "docs" / "images" / "train-panel.png")
