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
