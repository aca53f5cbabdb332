"""Exceptions shared by the library, the Slicer module and the command line."""


class SegmentationCancelled(Exception):
    """Raised when the user cancels a running segmentation; nothing has been written or added."""


class CheckpointError(ValueError):
    """A weights file is missing, corrupt, or does not match the architecture it is loaded into."""
