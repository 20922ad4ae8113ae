"""Live training curves as MRML: tables fed from progress events, a Plots chart showing them.

Loss arrives every few steps, validation Dice once per epoch, so each curve has its own table
(x = optimisation step). A cross-validation trains one model per fold, each from step 0: the
curves start again with each fold, under a title naming it. Works in full Slicer (shown in the
Plots view / the panel's plot widget) and in slicer-core (tests).
"""

from __future__ import annotations

import math

LOSS_TABLE = "VMambaX training loss"
DICE_TABLE = "VMambaX validation Dice"
CHART_NAME = "VMambaX training"


def _new_table(scene, name: str, y_title: str):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for title in ("Step", y_title):
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
    return node


def _new_series(scene, name: str, table_node, y_title: str, color):
    import slicer

    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("Step")
    series.SetYColumnName(y_title)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    series.SetMarkerSize(6)
    series.SetColor(*color)
    return series


class TrainingChart:
    """Loss and validation-Dice curves of one training run."""

    def __init__(self, scene):
        self.scene = scene
        self.lossTable = _new_table(scene, LOSS_TABLE, "Loss")
        self.diceTable = _new_table(scene, DICE_TABLE, "Validation Dice")
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", CHART_NAME)
        self.fold = None  # the cross-validation fold the curves are of (None: not one)
        self.folds = None  # how many folds (from the crossval_start event)
        self.chartNode.SetTitle(_title())
        self.chartNode.SetXAxisTitle("Step")
        self.chartNode.SetYAxisTitle("Loss / Dice")
        self.lossSeries = _new_series(scene, "Loss", self.lossTable, "Loss", (0.2, 0.4, 0.9))
        self.diceSeries = _new_series(scene, "Validation Dice", self.diceTable, "Validation Dice",
                                      (0.9, 0.3, 0.1))
        self.chartNode.AddAndObservePlotSeriesNodeID(self.lossSeries.GetID())
        self.chartNode.AddAndObservePlotSeriesNodeID(self.diceSeries.GetID())

    def nodes(self) -> list:
        return [self.chartNode, self.lossSeries, self.diceSeries, self.lossTable, self.diceTable]

    @staticmethod
    def _append(table_node, x: float, y: float) -> None:
        table = table_node.GetTable()
        row = table.InsertNextBlankRow()
        table.SetValue(row, 0, x)
        table.SetValue(row, 1, y)

    def addEvents(self, events) -> int:
        """Append the loss / Dice points of ``events``; returns how many points were added."""
        added = 0
        touched = set()
        for event in events:
            if event.get("event") == "crossval_start" and event.get("folds"):
                self.folds = int(event["folds"])
            fold = event.get("fold") if event.get("event") in ("start", "step", "epoch") else None
            if fold is not None and fold != self.fold:
                self.startFold(int(fold))
                touched.update((self.lossTable, self.diceTable))
            step = event.get("step")
            if step is None:
                continue
            kind = event.get("event")
            if kind == "step" and _finite(event.get("loss")):
                self._append(self.lossTable, float(step), float(event["loss"]))
                touched.add(self.lossTable)
                added += 1
            elif kind == "epoch" and _finite(event.get("val_dice")):
                self._append(self.diceTable, float(step), float(event["val_dice"]))
                touched.add(self.diceTable)
                added += 1
        for node in touched:
            node.GetTable().Modified()
            node.Modified()
        return added

    def startFold(self, fold: int) -> None:
        """Empty the curves for fold ``fold`` (its steps count from 0) and name it in the title."""
        self.fold = fold
        for node in (self.lossTable, self.diceTable):
            node.GetTable().SetNumberOfRows(0)
        from VMambaXTrainLib.progress import foldLabel

        self.chartNode.SetTitle(f"{foldLabel(fold, self.folds)}: {_title()}")

    def values(self, which: str = "loss") -> list[tuple[float, float]]:
        table = (self.lossTable if which == "loss" else self.diceTable).GetTable()
        return [(table.GetValue(r, 0).ToDouble(), table.GetValue(r, 1).ToDouble())
                for r in range(table.GetNumberOfRows())]

    def remove(self) -> None:
        for node in self.nodes():
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)


def _title() -> str:
    from VMambaXCommon.i18n import translate

    return translate("VMambaX", "Training loss and validation Dice")


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
