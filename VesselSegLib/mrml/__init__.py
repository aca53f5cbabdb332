"""VesselSeg on Slicer's MRML scene: the module's Logic, scene set-up and file export.

Nothing here imports Qt or needs the Slicer application: the same code runs inside 3D Slicer and on a
headless ``vtkMRMLScene`` from the PyPI package ``slicer-core`` (``create_headless_scene``).
Import the submodules directly (``from VesselSegLib.mrml.logic import VesselSegLogic``); this package
does not import ``slicer`` itself, so that ``import VesselSegLib`` works without slicer-core installed.
"""
