"""Where a volume file keeps its voxels, and whether they are all there.

SimpleITK reads a ``.nii.gz`` cut short, or one whose gzip checksum is wrong, and a ``.nii`` cut in the
middle of its voxels, without a word: the missing voxels come back as zeros. (Its NIfTI reader also turns
NaN and Inf voxels into 0: ITK's copy of niftilib does so in ``nifti_read_buffer``.) So before SimpleITK
reads a file, :func:`check_voxel_data` reads the voxel stream itself, to its end: every gzip member's CRC-32
and length, zlib's Adler-32 for compressed MetaImage, and the byte count the header promises. For NIfTI it
also counts the NaN/Inf voxels on the way, since SimpleITK hides them.

The layouts come from the formats' own libraries where there is one: nibabel's NIfTI header (``vox_offset``,
shape, data type) and pynrrd's NRRD header (encoding, type, sizes, byte skip, detached data file). MetaImage
has no reader apart from ITK; its header is a few ``Key = Value`` lines, read here.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Decoded bytes handled at a time while checking a file (the check's memory, apart from the decoder's).
_CHUNK_BYTES = 1 << 24
_FIX = "re-export or re-copy the file"


def damaged(name: str, why: str) -> ValueError:
    """The one-line error for a file whose voxel data is incomplete or corrupt."""
    return ValueError(f"{name} is truncated or damaged ({why}); {_FIX}.")


def refuse_non_finite(
    name: str, array: np.ndarray | None = None, *, count: int | None = None, where: str = ""
) -> None:
    """Raise if ``array`` (or a ``count`` found in the file) has NaN/Inf voxels.

    Every later step (percentiles, normalisation, the network, thresholds) would spread them or turn them
    into an arbitrary class; the user chooses the replacement value, not VesselSeg.
    """
    if count is None:
        if array is None or np.asarray(array).dtype.kind not in "fc":
            return
        count = int(array.size - np.count_nonzero(np.isfinite(array)))
    if count:
        raise ValueError(
            f"Input {name} has {count} NaN/Inf voxels{where}; replace them (e.g. with 0) before segmenting."
        )


@dataclass(frozen=True)
class VoxelData:
    """Where a file's voxels are and how they are encoded.

    Attributes
    ----------
    path : Path
        The file holding the voxels (the header file itself, or a detached data file).
    start : int
        Byte offset in ``path`` where the (possibly compressed) data stream begins.
    codec : str
        ``"raw"``, ``"gzip"`` (one or more gzip members) or ``"zlib"`` (a zlib stream).
    skip : int or None
        Decoded bytes before the voxels; None when the voxels are the last bytes of the stream.
    nbytes : int
        Voxel bytes the header promises.
    dtype : numpy.dtype or None
        Voxel type, when the non-finite values are to be counted (float data SimpleITK would zero);
        needs ``skip`` to be known.
    """

    path: Path
    start: int
    codec: str
    skip: int | None
    nbytes: int
    dtype: np.dtype | None = None


# ------------------------------------------------------------------------------------------ decoding


def _raw_chunks(handle: Any) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK_BYTES):
        yield chunk


def _gzip_chunks(handle: Any) -> Iterator[bytes]:
    # GzipFile checks each member's CRC-32 and length at its end (BadGzipFile), and raises EOFError when
    # the stream stops before an end marker: exactly the checks SimpleITK skips.
    with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            yield chunk


def _zlib_chunks(handle: Any) -> Iterator[bytes]:
    decoder = zlib.decompressobj()
    while not decoder.eof:
        data = decoder.unconsumed_tail or handle.read(_CHUNK_BYTES // 16)
        if not data:
            if tail := decoder.flush():
                yield tail
            break
        # max_length bounds each output chunk: a label map can inflate a thousandfold.
        if chunk := decoder.decompress(data, _CHUNK_BYTES):
            yield chunk
    if not decoder.eof:
        raise EOFError("the compressed stream ends before its end marker")


_DECODERS = {"raw": _raw_chunks, "gzip": _gzip_chunks, "zlib": _zlib_chunks}


def _count_non_finite(
    chunks: Iterator[bytes], begin: int, nbytes: int, dtype: np.dtype | None
) -> tuple[int, int]:
    """Decoded length of the whole stream, and the non-finite values in bytes [begin, begin + nbytes)."""
    total, bad, carry = 0, 0, b""
    for chunk in chunks:
        offset, total = total, total + len(chunk)
        if dtype is None:
            continue
        low, high = max(begin - offset, 0), min(begin + nbytes - offset, len(chunk))
        if low >= high:
            continue
        part = carry + chunk[low:high]
        usable = len(part) - len(part) % dtype.itemsize  # a value may straddle two chunks
        values = np.frombuffer(part, dtype=dtype, count=usable // dtype.itemsize)
        bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        carry = part[usable:]
    return total, bad


def check_voxel_data(data: VoxelData, name: str) -> int:
    """Read the voxel stream to its end; raise if it is short or corrupt.

    Parameters
    ----------
    data : VoxelData
    name : str
        File name for the message.

    Returns
    -------
    int
        NaN/Inf values among the voxels (0 unless ``data.dtype`` is a float type).

    Raises
    ------
    ValueError
        "<name> is truncated or damaged (...); re-export or re-copy the file."
    """
    dtype = data.dtype if data.dtype is not None and data.dtype.kind in "fc" else None
    if data.codec == "raw" and dtype is None:  # nothing to decode: the size says it all
        available = data.path.stat().st_size - data.start
    else:
        try:
            with open(data.path, "rb") as handle:
                handle.seek(data.start)
                available, bad = _count_non_finite(
                    _DECODERS[data.codec](handle), data.skip or 0, data.nbytes, dtype
                )
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
            raise damaged(name, f"{data.codec} data: {error}") from None
    present = max(available - (data.skip or 0), 0)
    if present < data.nbytes:
        raise damaged(name, f"{present} of the {data.nbytes} voxel bytes its header promises")
    return bad if dtype is not None else 0


# ------------------------------------------------------------------------------------------ formats


def nifti_voxel_data(path: Path, image: Any) -> VoxelData:
    """The voxel data of a NIfTI-1/2 file opened by ``nibabel.load``.

    The offset, shape and on-disk type come from the image's array proxy: ``image.header`` is a copy
    whose ``vox_offset`` nibabel resets for writing.
    """
    proxy = image.dataobj
    dtype = np.dtype(proxy.dtype)
    nbytes = math.prod(int(s) for s in proxy.shape) * dtype.itemsize
    codec = "gzip" if path.name.lower().endswith(".gz") else "raw"
    return VoxelData(path, 0, codec, int(proxy.offset), nbytes, dtype)


@dataclass(frozen=True)
class NrrdLayout:
    """A NRRD header (parsed by pynrrd) and where its voxels are.

    Attributes
    ----------
    header : dict
        pynrrd's parsed header.
    data_path : Path or None
        File holding the voxels; None when they are split over several files.
    data_start : int
        Offset of the data in ``data_path``: the header length for attached data, else 0.
    encoding : str
        Normalised: raw, gzip, bzip2, ascii or hex.
    dtype : numpy.dtype
        Voxel type with the file's byte order.
    sizes : tuple of int
        Axis sizes in NRRD order (fastest first).
    byte_skip, line_skip : int
    """

    header: dict
    data_path: Path | None
    data_start: int
    encoding: str
    dtype: np.dtype
    sizes: tuple[int, ...]
    byte_skip: int
    line_skip: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.sizes) * self.dtype.itemsize

    def voxel_data(self) -> VoxelData | None:
        """For :func:`check_voxel_data`; None where ITK's own check has to do (bzip2, text, line skip)."""
        if self.data_path is None or self.line_skip or self.encoding not in ("raw", "gzip"):
            return None
        if self.encoding == "raw":
            if self.byte_skip == -1:  # the voxels end the file
                start = max(self.data_path.stat().st_size - self.nbytes, self.data_start)
                return VoxelData(self.data_path, start, "raw", 0, self.nbytes)
            return VoxelData(self.data_path, self.data_start + self.byte_skip, "raw", 0, self.nbytes)
        skip = None if self.byte_skip == -1 else self.byte_skip  # gzip: byte skip counts decoded bytes
        return VoxelData(self.data_path, self.data_start, "gzip", skip, self.nbytes)


_NRRD_ENCODINGS = {"gz": "gzip", "bz2": "bzip2", "txt": "ascii", "text": "ascii"}


def read_nrrd_layout(path: Path) -> NrrdLayout:
    """Parse a NRRD header with pynrrd.

    Raises
    ------
    ValueError
        Not a NRRD file, or a header without a valid type, sizes or endianness.
    """
    import nrrd
    from nrrd.reader import _determine_datatype  # pynrrd's own type table (private, stable since 0.4)

    try:
        with open(path, "rb") as handle:
            header = nrrd.read_header(handle)
            header_end = handle.tell()  # read_header leaves the file just after the header
        sizes = tuple(int(s) for s in header["sizes"])
        dtype = _determine_datatype(header)
    except (nrrd.NRRDError, KeyError, ValueError, TypeError, UnicodeError, StopIteration) as error:
        # A KeyError names a missing field ('sizes') or an unknown type ('what'): say which.
        why = f"missing or unknown {error}" if isinstance(error, KeyError) else str(error) or "empty"
        raise ValueError(
            f"Cannot read NRRD {path.name}: its header is damaged or it is not a NRRD file ({why})."
        ) from None
    if int(header.get("dimension", len(sizes))) != len(sizes):
        raise ValueError(
            f"NRRD {path.name} says dimension {header['dimension']} but lists {len(sizes)} sizes."
        )
    encoding = str(header.get("encoding", "")).lower()
    data_file = header.get("data file", header.get("datafile"))
    data_path, data_start = path, header_end
    if data_file is not None:
        data_start = 0
        split = str(data_file).upper().startswith("LIST") or len(str(data_file).split()) > 1
        data_path = None if split else (path.parent / str(data_file)).resolve()
        if data_path is not None and not data_path.is_file():
            raise ValueError(f"NRRD {path.name} names data file {data_file}, which does not exist.")
    return NrrdLayout(
        header=dict(header),
        data_path=data_path,
        data_start=data_start,
        encoding=_NRRD_ENCODINGS.get(encoding, encoding),
        dtype=np.dtype(dtype),
        sizes=sizes,
        byte_skip=int(header.get("byte skip", header.get("byteskip", 0))),
        line_skip=int(header.get("line skip", header.get("lineskip", 0))),
    )


_MET_ITEM_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_MET_HEADER_LIMIT = 1 << 16


def mha_voxel_data(path: Path) -> VoxelData | None:
    """The voxel data of a MetaImage (.mha/.mhd) file; None where ITK's own check has to do.

    The header is ``Key = Value`` lines ending with ``ElementDataFile``; the voxels follow it (LOCAL) or
    lie in one named raw file. Lists of files, and element types whose size depends on the platform,
    are left to ITK.
    """
    with open(path, "rb") as handle:
        head = handle.read(_MET_HEADER_LIMIT)
    fields, end = {}, 0
    for line in head.splitlines(keepends=True):
        end += len(line)
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return None  # no complete header in the first 64 KiB: ITK reports it
    item = _MET_ITEM_BYTES.get(fields.get("ElementType", ""))
    try:
        sizes = [int(s) for s in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return None
    if item is None:
        return None
    nbytes = math.prod(sizes) * channels * item
    codec = "zlib" if fields.get("CompressedData", "False").lower() == "true" else "raw"
    data_file = fields["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        return VoxelData(path, end, codec, 0, nbytes)
    if data_file.upper().startswith("LIST") or len(data_file.split()) > 1 or "%" in data_file:
        return None
    header_size = int(fields.get("HeaderSize", "0") or 0)
    data_path = path.parent / data_file
    if not data_path.is_file():
        raise ValueError(f"MetaImage {path.name} names data file {data_file}, which does not exist.")
    if header_size == -1 and codec == "raw":
        return VoxelData(data_path, max(data_path.stat().st_size - nbytes, 0), codec, 0, nbytes)
    return VoxelData(data_path, max(header_size, 0), codec, 0, nbytes)


__all__ = [
    "NrrdLayout",
    "VoxelData",
    "check_voxel_data",
    "damaged",
    "mha_voxel_data",
    "nifti_voxel_data",
    "read_nrrd_layout",
    "refuse_non_finite",
]
