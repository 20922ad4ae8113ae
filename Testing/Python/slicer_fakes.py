"""Just enough of Slicer's GUI layer to run the module widgets under slicer-core (no Qt).

The widgets' panels are built from their real .ui files: every named widget becomes a fake with
the behaviour the widget code relies on (combo boxes that emit ``currentIndexChanged`` on
``clear``/``addItem`` like QComboBox, signals that can be blocked, node selectors, path edits).
The scene, the nodes and the Lib logic are real (slicer-core). The parameter-node wrapper is a
small stand-in that keeps typed values on a real ``vtkMRMLScriptedModuleNode`` and binds widgets
that name a ``SlicerParameterName`` in the .ui file, as Slicer's does.

What this cannot show: layout, painting, real Qt signal timing. It does run every line of the
widget code the tests reach, so a wrong widget name, a missing import or a lost setting fails here
instead of in a user's Slicer.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer
import slicer.util

ROOT = Path(__file__).resolve().parents[2]


class Anything:
    """Accepts any call or attribute (setMRMLScene, mrmlPlotViewNode().SetPlotChartNodeID...)."""

    def __call__(self, *args, **kwargs):
        return Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()


def _positional_capacity(slot, available):
    """How many signal arguments PythonQt passes: as many as the slot takes (clicked(bool) to a
    method without arguments is fine in Slicer)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                              for p in parameters))


class FakeWidget:
    def __init__(self, name="", cls="QWidget", props=None):
        props = props or {}
        self._slots: dict[str, list] = {}
        self._blocked = False
        self.objectName, self.className = name, cls
        self.enabled = props.get("enabled", True)
        self.visible, self.toolTip = True, props.get("toolTip", "")
        self.text = props.get("text", "")
        self.checked = props.get("checked", False)
        self.slicerParameterName = props.get("SlicerParameterName")

    def connect(self, signal, slot):
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def disconnect(self, signal, slot):
        slots = self._slots.get(signal.split("(")[0], [])
        if slot in slots:
            slots.remove(slot)

    def emit(self, signal, *args):
        if not self._blocked:
            for slot in list(self._slots.get(signal, [])):
                slot(*args[:_positional_capacity(slot, len(args))])

    def click(self):
        """What a user's click does: nothing on a disabled button."""
        if self.enabled:
            self.emit("clicked", False)

    def blockSignals(self, blocked):
        previous, self._blocked = self._blocked, bool(blocked)
        return previous

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return Anything()


class FakeComboBox(FakeWidget):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.items: list[list] = []  # [label, data, {role: value}]
        self.currentIndex = -1

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def labels(self):
        return [item[0] for item in self.items]

    def data(self):
        return [item[1] for item in self.items]

    def clear(self):
        self.items, self.currentIndex = [], -1
        self.emit("currentIndexChanged", -1)

    def addItem(self, label, data=None):
        self.items.append([label, data, {}])
        if self.currentIndex < 0:
            self.currentIndex = 0
            self.emit("currentIndexChanged", 0)

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def setCurrentIndex(self, index):
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged", index)

    def setItemData(self, index, value, role):
        self.items[index][2][role] = value

    def itemData(self, index, role):
        return self.items[index][2].get(role)


class FakeNodeComboBox(FakeWidget):
    _node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged", node)


def _signalling(name, signal, default):
    def get(self):
        return self.__dict__.get(name, default)

    def set_(self, value):
        if self.__dict__.get(name, default) != value:
            self.__dict__[name] = value
            self.emit(signal, value)

    return property(get, set_)


class FakePathLineEdit(FakeWidget):
    currentPath = _signalling("_path", "currentPathChanged", "")


class FakeSpinBox(FakeWidget):
    value = _signalling("_value", "valueChanged", 0)


class FakeLineEdit(FakeWidget):
    pass


FakeLineEdit.text = _signalling("_text", "textChanged", "")


class FakeCheckBox(FakeWidget):
    pass


FakeCheckBox.checked = _signalling("_checked", "toggled", False)


class FakeListWidget(FakeWidget):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows, self.currentRow = [], -1

    def addItem(self, text):
        self.rows.append(text)

    def takeItem(self, row):
        return self.rows.pop(row)

    def clear(self):
        self.rows = []


class FakePlainTextEdit(FakeWidget):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: list[str] = []

    def appendPlainText(self, text):
        self.lines.append(text)

    def toPlainText(self):
        return "\n".join(self.lines)

    def clear(self):
        self.lines = []


class FakeTableWidgetItem:
    def __init__(self, text=""):
        self._text = str(text)

    def text(self):
        return self._text


class FakeTableWidget(FakeWidget):
    """QTableWidget: headers and cell texts (``cells()``: the rows as lists of text)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rowCount = self.columnCount = 0
        self.clear()

    def clear(self):  # as QTableWidget.clear: items and headers go, the counts stay
        self.headers, self._items = [], {}

    def setRowCount(self, n):
        self.rowCount = n

    def setColumnCount(self, n):
        self.columnCount = n

    def setHorizontalHeaderLabels(self, labels):
        self.headers = list(labels)

    def setItem(self, row, column, item):
        assert 0 <= row < self.rowCount and 0 <= column < self.columnCount, (row, column)
        self._items[row, column] = item

    def item(self, row, column):
        return self._items.get((row, column))

    def cells(self):
        return [[self._items[r, c].text() if (r, c) in self._items else ""
                 for c in range(self.columnCount)] for r in range(self.rowCount)]


CLASSES = {"QTableWidget": FakeTableWidget, "QPlainTextEdit": FakePlainTextEdit, "QComboBox": FakeComboBox, "qMRMLNodeComboBox": FakeNodeComboBox,
           "ctkPathLineEdit": FakePathLineEdit, "QSpinBox": FakeSpinBox,
           "ctkDoubleSpinBox": FakeSpinBox, "QDoubleSpinBox": FakeSpinBox,
           "QLineEdit": FakeLineEdit, "QListWidget": FakeListWidget, "QCheckBox": FakeCheckBox}


def _properties(element):
    """The widget's own <property> values (not those of widgets nested in it)."""
    props = {}
    for prop in element.findall("property"):
        value = prop.find("*")
        if value is None:
            continue
        text = value.text or ""
        if value.tag == "bool":
            props[prop.get("name")] = text == "true"
        elif value.tag == "number":
            props[prop.get("name")] = int(text)
        else:
            props[prop.get("name")] = text
    return props


def load_ui(path):
    """The .ui file's named widgets as fakes, under a root with ``children``."""
    root = ET.parse(path).getroot()
    top = FakeWidget("ui root")
    top.children = {}
    for element in root.iter("widget"):
        cls = element.get("class")
        widget = CLASSES.get(cls, FakeWidget)(element.get("name"), cls, _properties(element))
        if isinstance(widget, FakeSpinBox) and "value" in _properties(element):
            widget.__dict__["_value"] = _properties(element)["value"]
        if isinstance(widget, FakeLineEdit):
            widget.__dict__["_text"] = _properties(element).get("text", "")
        top.children[element.get("name")] = widget
    return top


# -- the parameter-node wrapper ------------------------------------------------------------------
class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


_VALUES: dict[str, dict] = {}  # node ID -> typed values (Slicer keeps strings on the node)


def _default(cls, name, hint):
    """The class's default, else what Slicer's wrapper gives: an empty list for ``list[...]``."""
    if hasattr(cls, name):
        return getattr(cls, name)
    return [] if typing.get_origin(hint) is list else None


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: _default(cls, name, hint) for name, hint in hints.items()}

    class Wrapper:
        __name__ = cls.__name__

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})
            values = _VALUES.setdefault(node.GetID(), copy.deepcopy(defaults))
            object.__setattr__(self, "_values", values)

        def __bool__(self):
            return True

        def __getattr__(self, name):
            if name in hints:
                return self._values[name]
            return getattr(self.parameterNode, name)  # AddObserver, StartModify, ...

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            old = self._values.get(name)
            if old is not value and old != value:
                self._values[name] = value
                self.parameterNode.Modified()

        def connectGui(self, ui):
            tag = object()
            bound = []
            for widget in vars(ui).values():
                name = getattr(widget, "slicerParameterName", None)
                if not name:
                    continue
                if name not in hints:
                    raise RuntimeError(f"{widget.objectName} binds unknown parameter {name!r}")
                signal, attr = {FakeSpinBox: ("valueChanged", "value"),
                                FakeLineEdit: ("textChanged", "text"),
                                FakeCheckBox: ("toggled", "checked"),
                                FakeNodeComboBox: ("currentNodeChanged", None)}[type(widget)]

                def read(*_args, widget=widget, name=name, attr=attr):
                    setattr(self, name, getattr(widget, attr) if attr else widget.currentNode())

                def write(*_args, widget=widget, name=name, attr=attr):
                    was = widget.blockSignals(True)
                    try:
                        if attr:
                            setattr(widget, attr, self._values[name])
                        else:
                            widget.setCurrentNode(self._values[name])
                    finally:
                        widget.blockSignals(was)

                write()
                widget.connect(signal, read)
                observer = self.parameterNode.AddObserver("ModifiedEvent", write)
                bound.append((widget, signal, read, observer))
            self._guis[tag] = bound
            return tag

        def disconnectGui(self, tag):
            for widget, signal, read, observer in self._guis.pop(tag, []):
                widget.disconnect(signal, read)
                self.parameterNode.RemoveObserver(observer)

    Wrapper.__name__ = cls.__name__
    return Wrapper


# -- ScriptedLoadableModule -------------------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self):
        pass

    def getParameterNode(self):
        tag = type(self).__name__
        node = slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(tag)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.reloaded = False

    def setup(self):
        self.layout = Anything()

    def resourcePath(self, relative):
        module_file = Path(sys.modules[type(self).__module__].__file__)
        return str(module_file.parent / "Resources" / relative)

    def onReload(self):
        self.reloaded = True


class ScriptedLoadableModuleTest:
    pass


class FakeApp:
    """``slicer.app``: processEvents runs whatever the test queued (a click while pip runs)."""

    def __init__(self):
        self.during_events: list = []
        self.connections: list = []

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def processEvents(self):
        while self.during_events:
            self.during_events.pop(0)()

    def layoutManager(self):
        return None


class FakeQSettings:
    """QSettings on one dict per test session (Slicer's persists to the user's settings file)."""

    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class FakeQTimer:
    def __init__(self):
        self.active, self._slots = False, []

    def setInterval(self, _ms):
        pass

    def connect(self, _signal, slot):
        self._slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def install(monkeypatch):
    """Put the fakes in place (undone by ``monkeypatch``); returns what the tests steer."""
    qt = types.ModuleType("qt")
    qt.QTimer = FakeQTimer
    qt.QSettings = FakeQSettings
    qt.QTableWidgetItem = FakeTableWidgetItem
    monkeypatch.setattr(FakeQSettings, "store", {})
    qt.Qt = types.SimpleNamespace(ToolTipRole=3)
    qt.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *a: "")
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.WithinRange = parameterNodeWrapper, WithinRange
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(slm, name, globals()[name])
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)

    _VALUES.clear()  # a new scene: node IDs start again
    scene = slicer.vtkMRMLScene()
    app = FakeApp()
    dialogs = types.SimpleNamespace(errors=[], infos=[], warnings=[], confirms=[], answer=True)

    def confirm(text, **_kwargs):
        dialogs.confirms.append(text)
        return dialogs.answer

    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "modules", Anything(), raising=False)
    monkeypatch.setattr(slicer, "qMRMLPlotWidget", FakeWidget, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables",
                        lambda top: types.SimpleNamespace(**top.children))
    monkeypatch.setattr(slicer.util, "errorDisplay",
                        lambda text, **kw: dialogs.errors.append(text))
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda text, **kw: dialogs.infos.append(text))
    monkeypatch.setattr(slicer.util, "warningDisplay",
                        lambda text, **kw: dialogs.warnings.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", confirm, raising=False)
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda *a, **k: None)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    return types.SimpleNamespace(scene=scene, app=app, dialogs=dialogs)


def import_module_file(monkeypatch, module):
    """Import ``<module>/<module>.py`` as Slicer does (a fresh copy per test)."""
    folder = ROOT / module
    spec = importlib.util.spec_from_file_location(f"{module}_under_test", folder / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, loaded)
    spec.loader.exec_module(loaded)
    return loaded
