"""Reading and writing volumes with their geometry: the only place VesselSeg reads volume files.

- :func:`read_volume` / :func:`write_volume`: whole volumes (NIfTI, NRRD, MHA, TIFF stacks);
- :func:`open_volume_lazily`: region-by-region reading of stacks larger than memory (:mod:`.lazy`);
- :class:`Grid`: a volume's physical grid, to check that a mask or reference lies on the input's;
- :mod:`.metadata`: voxel size from OME-XML, ImageJ and TIFF tags, NRRD units, shear checks;
- :mod:`.layout`: where a file's voxels are, and whether they are all there.
"""

from VesselSegLib.io.grid import Grid
from VesselSegLib.io.lazy import LazyVolume, open_volume_lazily
from VesselSegLib.io.volume import SUPPORTED_SUFFIXES, Volume, read_volume, write_volume

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Grid",
    "LazyVolume",
    "Volume",
    "open_volume_lazily",
    "read_volume",
    "write_volume",
]
