"""Reading and writing volumes with their geometry."""

from VesselSegLib.io.volume import SUPPORTED_SUFFIXES, Volume, read_volume, write_volume

__all__ = ["SUPPORTED_SUFFIXES", "Volume", "read_volume", "write_volume"]
