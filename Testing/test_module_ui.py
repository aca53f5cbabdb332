"""The Slicer panel and its typed parameter node agree, checked without the Slicer application.

The widget binds each ``.ui`` control to the parameter of the same ``SlicerParameterName``; a control naming
a parameter the node lacks (or a parameter no control shows) silently does nothing in Slicer. Both files are
read as text (XML, Python syntax tree) because ``slicer.parameterNodeWrapper`` needs the application.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "VesselSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VesselSeg.ui"


def _bound_parameters() -> dict[str, str]:
    """SlicerParameterName -> widget name of every control of the .ui file."""
    bound = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("name")
    return bound


def _parameter_node_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class in VesselSeg.py."""
    tree = ast.parse((MODULE_DIR / "VesselSeg.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "VesselSegParameterNode":
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign)
            }
    raise AssertionError("VesselSegParameterNode not found in VesselSeg.py")


def test_every_control_is_bound_to_a_parameter_and_every_parameter_has_a_control():
    bound, fields = _bound_parameters(), _parameter_node_fields()
    assert set(bound) - set(fields) == set(), "controls bound to parameters the node lacks"
    # companionModality/method are filled by the widget's code (combo boxes populated from the registry).
    unbound = set(fields) - set(bound) - {"method"}
    assert unbound == set(), f"parameters without a control: {unbound}"


def test_2pm_preprocessing_and_graph_options_are_in_the_panel():
    bound, fields = _bound_parameters(), _parameter_node_fields()
    for name in ("subtractSliceMedian", "medianFilter", "intensityScale", "createGraph"):
        assert name in bound and name in fields
    assert fields["createGraph"] == "bool" and "float" in fields["intensityScale"]


# ---------------------------------------------------------------------------------------------- review

REVIEW_CONTROLS = {  # parameter -> widget class in the Review section
    "reviewSlab": "QCheckBox",
    "reviewSlabThicknessMm": "ctkSliderWidget",
    "reviewProjection": "QComboBox",
    "reviewShowArtery": "QCheckBox",
    "reviewShowVein": "QCheckBox",
    "reviewShowMicro": "QCheckBox",
}


def _parameter_node_defaults() -> dict[str, object]:
    """Field name -> default value (a literal) of the parameter node's fields that have one."""
    tree = ast.parse((MODULE_DIR / "VesselSeg.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VesselSegParameterNode")
    return {
        item.target.id: ast.literal_eval(item.value)
        for item in node.body
        if isinstance(item, ast.AnnAssign) and item.value is not None
    }


def _annotation_call_arguments(annotation: str, name: str) -> list:
    """Literal arguments of the ``name(...)`` call inside an annotation, e.g. WithinRange(1.0, 50.0)."""
    for call in ast.walk(ast.parse(annotation, mode="eval")):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == name:
            return [ast.literal_eval(argument) for argument in call.args]
    raise AssertionError(f"{annotation} has no {name}(...)")


def _properties(widget) -> dict[str, str]:
    """Property name -> its value as text (the first child element's text) of a .ui widget element."""
    return {prop.get("name"): next(iter(prop)).text for prop in widget.findall("property")}


def _top_level_widget_names() -> list[str]:
    layout = ET.parse(UI_FILE).getroot().find("widget").find("layout")
    return [
        item.find("widget").get("name") for item in layout.findall("item") if item.find("widget") is not None
    ]


def test_every_ui_widget_the_module_uses_exists():
    import re

    names = {widget.get("name") for widget in ET.parse(UI_FILE).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "VesselSeg.py").read_text()))
    assert used - names == set(), "VesselSeg.py uses widgets the .ui file lacks"


def test_review_section_controls_match_the_parameter_node():
    fields = _parameter_node_fields()
    top = _top_level_widget_names()
    assert "reviewCollapsibleButton" in top
    assert top.index("reviewCollapsibleButton") > top.index("outputsCollapsibleButton")
    section = next(w for w in ET.parse(UI_FILE).iter("widget") if w.get("name") == "reviewCollapsibleButton")
    assert _properties(section)["text"] == "Review"
    in_section = {}
    for widget in section.iter("widget"):
        parameter = _properties(widget).get("SlicerParameterName")
        if parameter is not None:
            in_section[parameter] = widget
    assert set(in_section) == set(REVIEW_CONTROLS), "Review controls and review parameters differ"
    for parameter, widget_class in REVIEW_CONTROLS.items():
        assert in_section[parameter].get("class") == widget_class, parameter
        assert parameter in fields
    assert _properties(in_section["reviewSlab"])["text"] == "Slab MIP review"
    for name in ("reviewSlab", "reviewShowArtery", "reviewShowVein", "reviewShowMicro"):
        assert fields[name] == "bool"


def test_review_slider_range_default_and_choices_agree():
    from VesselSegLib.mrml.review import DEFAULT_THICKNESS_MM, SLAB_PROJECTIONS, default_projection
    from VesselSegLib.vessel_classes import VESSEL_CLASSES

    fields, defaults = _parameter_node_fields(), _parameter_node_defaults()
    widgets = {w.get("name"): w for w in ET.parse(UI_FILE).iter("widget")}
    # The GUI connector sets a ctkSliderWidget's range from WithinRange: the .ui says the same (1-50 mm).
    minimum, maximum = _annotation_call_arguments(fields["reviewSlabThicknessMm"], "WithinRange")
    slider = _properties(widgets["reviewThicknessSliderWidget"])
    assert (float(slider["minimum"]), float(slider["maximum"])) == (minimum, maximum) == (1.0, 50.0)
    assert float(slider["value"]) == defaults["reviewSlabThicknessMm"] == DEFAULT_THICKNESS_MM
    assert slider["suffix"].strip() == "mm"
    # The combo box is filled from Choice; the review accepts exactly those, default = the modality's.
    (choices,) = _annotation_call_arguments(fields["reviewProjection"], "Choice")
    assert choices == list(SLAB_PROJECTIONS)
    assert defaults["reviewProjection"] == default_projection(defaults["modality"])
    # One outline toggle per vessel class, labelled with the segment name.
    for vessel in VESSEL_CLASSES:
        parameter = "reviewShow" + vessel.name.capitalize()
        assert defaults[parameter] is True
        widget = next(w for w in widgets.values() if _properties(w).get("SlicerParameterName") == parameter)
        assert _properties(widget)["text"] == vessel.display_name
