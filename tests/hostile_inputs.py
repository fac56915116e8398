"""Files that cost a decoder far more than their size says (issue 24), built from small generators.

Each takes its count or size as a parameter: the tests build small ones (a few times the limit, so that
today's code does the work and the fix refuses it), ``benchmarks/bench_hostile_inputs.py`` the sizes the
issue measured. Only pydicom, Pillow and numpy: the benchmark imports this module outside pytest.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # an empty sequence item (Explicit or Implicit VR Little Endian)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
UNDEFINED_LENGTH = 0xFFFFFFFF


def ct_dicom(side: int = 64, *, transfer_syntax: str | None = None, pixels: np.ndarray | None = None):
    """A plain single-frame CT DICOM dataset (pydicom), ``side`` x ``side`` 16-bit HU-like pixels."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if pixels is None:
        yy, xx = np.mgrid[0:side, 0:side] / side
        body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.52) / 0.32) ** 2 < 1
        lungs = (((np.abs(xx - 0.5) - 0.2) / 0.13) ** 2 + ((yy - 0.5) / 0.2) ** 2) < 1
        pixels = np.where(body, np.where(lungs, 150, 1060), 24).astype(np.uint16)
        pixels += (np.add.outer(np.arange(side), np.arange(side)) % 7).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.RescaleIntercept, dataset.RescaleSlope = -1024, 1
    dataset.PixelData = pixels.astype("<u2").tobytes()
    return dataset


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _split_at_pixel_data(dataset) -> tuple[bytes, bytes]:
    """The file's bytes before (0028,xxxx) < ... < (7FE0,0010) PixelData, and PixelData's element."""
    data = dicom_bytes(dataset)
    tag = struct.pack("<HH", 0x7FE0, 0x0010)
    at = data.rindex(tag + b"O")  # OW or OB: the element, not a value that happens to hold the tag
    return data[:at], data[at:]


def dicom_with_empty_items(items: int, side: int = 64) -> bytes:
    """Finding 1: a CT slice plus one undefined-length sequence (0040,A730) of ``items`` empty items.

    8 bytes an item: 520,000 fit in 4 MB, and pydicom builds a Dataset for each (~70 us)."""
    head, pixel_data = _split_at_pixel_data(ct_dicom(side))
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, UNDEFINED_LENGTH) + ITEM * items + SEQUENCE_END
    return head + sequence + pixel_data


def dicom_with_empty_elements(elements: int, side: int = 128) -> bytes:
    """Finding 3: a valid CT slice followed by ``elements`` empty private elements (8 bytes each)."""
    headers = np.zeros(elements, dtype=[("group", "<u2"), ("element", "<u2"), ("vr", "S2"), ("length", "<u2")])
    headers["group"] = 0x7FE1 + 2 * (np.arange(elements) // 0xEF00)  # odd groups: private, after PixelData
    headers["element"] = 0x1000 + np.arange(elements) % 0xEF00
    headers["vr"] = b"LO"
    return dicom_bytes(ct_dicom(side)) + headers.tobytes()


def dicom_with_items_in_a_defined_length_sequence(items: int, side: int = 64) -> bytes:
    """A defined-length ModalityLUTSequence of ``items`` empty items: pydicom parses it only when the
    tag is first read (after ``dcmread``), so counting what ``dcmread`` reads would not see it."""
    dataset = ct_dicom(side)
    head, pixel_data = _split_at_pixel_data(dataset)
    body = ITEM * items
    sequence = struct.pack("<HH2sHI", 0x0028, 0x3000, b"SQ", 0, len(body)) + body
    return head + sequence + pixel_data


def deflated_dicom(rows: int, columns: int) -> bytes:
    """Finding 4: the largest deflated CT DICOM allowed (4096x4000 16-bit inflates to 31 MB, under 32 MB)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    yy, xx = np.mgrid[0:rows, 0:columns]
    body = ((xx / columns - 0.5) / 0.42) ** 2 + ((yy / rows - 0.52) / 0.32) ** 2 < 1
    lungs = (((np.abs(xx / columns - 0.5) - 0.2) / 0.13) ** 2 + ((yy / rows - 0.5) / 0.2) ** 2) < 1
    pixels = np.where(body, np.where(lungs, 150, 1060), 24).astype(np.uint16)
    pixels += ((xx // 64 + yy // 64) % 5).astype(np.uint16)
    del yy, xx, body, lungs
    dataset = ct_dicom(transfer_syntax=DeflatedExplicitVRLittleEndian, pixels=pixels)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)  # pydicom deflates at its default level
    return buffer.getvalue()


# ---------------------------------------------------------------- BMP


def rle_bmp(side: int, *, rle4: bool = False) -> bytes:
    """Finding 2: a ``side`` x ``side`` RLE8 (or RLE4) BMP whose rows are one pixel, then end-of-line.

    4 bytes a row on the wire; Pillow's pure-Python decoder pads each row to ``side`` a byte at a time."""
    colours = 16 if rle4 else 256
    palette = b"".join(
        struct.pack("<BBBB", level, level, level, 0) for level in np.linspace(0, 255, colours, dtype=int)
    )
    rows = (b"\x01\x07" + b"\x00\x00") * side + b"\x00\x01"  # one pixel of colour 7, end of line; end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack(
        "<IiiHHIIiiII", 40, side, side, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(rows), 2835, 2835, colours, 0
    )
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


# ---------------------------------------------------------------- PNG


def png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_parts(image: Image.Image) -> tuple[bytes, bytes, bytes]:
    """A PNG's signature + IHDR, its zlib stream (all IDAT data joined), and its IEND chunk."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    position, stream = 8, []
    head = b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        if kind == b"IHDR":
            head = data[: position + 12 + length]
        elif kind == b"IDAT":
            stream.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return head, b"".join(stream), png_chunk(b"IEND")


def png_with_empty_chunks(image: Image.Image, chunks: int) -> bytes:
    """Finding 3: a valid PNG with ``chunks`` empty ancillary chunks (``zzZz``, 12 bytes each) before its data."""
    head, stream, end = png_parts(image)
    return head + png_chunk(b"zzZz") * chunks + png_chunk(b"IDAT", stream) + end


def png_with_split_data(image: Image.Image, chunks: int) -> bytes:
    """Finding 3: a valid PNG whose zlib stream is split over ``chunks`` IDAT chunks (empty ones first when the
    stream is shorter than ``chunks`` bytes)."""
    head, stream, end = png_parts(image)
    size = max(1, -(-len(stream) // chunks))
    pieces = [png_chunk(b"IDAT", stream[index : index + size]) for index in range(0, len(stream), size)]
    return head + png_chunk(b"IDAT") * max(0, chunks - len(pieces)) + b"".join(pieces) + end


def jpeg_with_filler(jpeg: bytes, filler: bytes, count: int) -> bytes:
    """A JPEG with ``count`` copies of ``filler`` (fill bytes ``FF``, empty comments ``FF FE 00 02``) before its
    first segment: Pillow's header reader steps over each in Python."""
    return jpeg[:2] + filler * count + jpeg[2:]


# ---------------------------------------------------------------- the largest legitimate inputs


def png_16_bit(base: Image.Image, side: int) -> bytes:
    """A 16-bit greyscale PNG ``side`` x ``side``: ``base`` (8-bit) scaled up, levels x 256."""
    grey = np.asarray(base.convert("L").resize((side, side), Image.Resampling.BILINEAR), np.uint16) * 256
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def float_tiff(base: Image.Image, side: int) -> bytes:
    """A float32 greyscale TIFF ``side`` x ``side`` (deflate-compressed): ``base`` scaled up, 0..1."""
    grey = np.asarray(base.convert("L").resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255.0
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="F").save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def jpeg_slice(base: Image.Image, side: int, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    base.convert("L").resize((side, side), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
