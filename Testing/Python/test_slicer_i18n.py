"""Everything the panels show can be translated (issue 17.4): Slicer's translation tools find a
string only as a literal inside ``_("...")`` / ``translate("context", "...")``, so a label
passed as a variable, or a literal shown without them, stays English in every language.

Checked on the source (ast) of both module files and of the glue that makes panel labels."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ["VMambaXSegment/VMambaXSegment.py", "VMambaXTrain/VMambaXTrain.py",
         "VMambaXCommon/devices.py", "VMambaXCommon/pet.py", "VMambaXCommon/dialogs.py",
         "VMambaXTrain/VMambaXTrainLib/progress.py", "VMambaXTrain/VMambaXTrainLib/crossval.py",
         "VMambaXTrain/VMambaXTrainLib/chart.py"]
TRANSLATE = {"_", "translate", "tr"}
SHOWN_ATTRIBUTES = {"text", "toolTip", "title", "placeholderText"}
SHOWING_CALLS = {"errorDisplay", "infoDisplay", "warningDisplay", "confirmOkCancelDisplay",
                 "confirmYesNoDisplay", "showStatusMessage", "addItem", "setText",
                 "appendPlainText", "setWindowTitle", "tryWithErrorDisplay"}


def _name(func) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _has_words(node) -> bool:
    """A literal (or f-string) holding words of its own (not just punctuation or spaces)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(ch.isalpha() for ch in node.value)
    if isinstance(node, ast.JoinedStr):
        return any(_has_words(v) for v in node.values if isinstance(v, ast.Constant))
    return False


def _untranslated(node) -> list[ast.AST]:
    """Literal words in a value shown to the user that no translate call wraps."""
    if isinstance(node, ast.Call):
        if _name(node.func) in TRANSLATE:
            return []
        if _name(node.func) == "format" and isinstance(node.func, ast.Attribute):
            return _untranslated(node.func.value)
        return []  # another function's result (a message made by the logic, a node's name)
    if isinstance(node, ast.BinOp):
        return _untranslated(node.left) + _untranslated(node.right)
    if isinstance(node, ast.IfExp):
        return _untranslated(node.body) + _untranslated(node.orelse)
    return [node] if _has_words(node) else []


def _problems(path: str) -> list[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) in TRANSLATE:
            text = node.args[-1] if node.args else None
            if not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)} translates a variable "
                             f"(the tools cannot find the text)")
        shown = []
        if isinstance(node, ast.Assign):
            shown = [node.value] if any(isinstance(t, ast.Attribute) and t.attr in SHOWN_ATTRIBUTES
                                        for t in node.targets) else []
        elif isinstance(node, ast.Call) and _name(node.func) in SHOWING_CALLS:
            shown = list(node.args[:1])
        if isinstance(node, ast.Call):
            shown += [k.value for k in node.keywords if k.arg == "windowTitle"]
        for value in shown:
            for literal in _untranslated(value):
                found.append(f"{path}:{literal.lineno}: {ast.unparse(literal)} is shown untranslated")
    return found


@pytest.mark.parametrize("path", FILES)
def test_every_shown_string_is_a_translatable_literal(path):
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_both_mistakes(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("label = 'CPU'\ncombo.addItem(_(label), 'cpu')\n"
                   "self.ui.statusLabel.text = 'Done.'\nshow(windowTitle=f'VMambaX {x}')\n"
                   "ok = _('Done: {n}').format(n=1) + '\\n\\n'\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    problems = _problems("bad.py")
    assert len(problems) == 3, problems
