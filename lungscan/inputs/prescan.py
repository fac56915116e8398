"""Structure counted in the bytes before a decoder walks it: what costs a decoder per record, not per byte.

Pillow reads PNG chunks and the JPEG marker segments before the first scan in Python (about 5 and 2 us
each), and decodes RLE-compressed BMP in pure Python, a pixel at a time: a 4 MB PNG of 340,000 empty
chunks took 1.8 s, 4 MB of JPEG fill bytes 1.9 s, a 17 KB RLE8 BMP 8 s. Each check here reads record
headers only, stops at its limit, and raises before Pillow starts.
"""

from __future__ import annotations

import struct

from lungscan.errors import NotACTSliceError, UnsupportedFormatError

# A PNG encoder writes its image data in chunks of 8 KB (libpng) to 64 KB (Pillow): a 4 MB PNG holds at most
# ~512 of them, and a few ancillary chunks.
MAX_PNG_CHUNKS = 1024
# JPEG marker segments (and fill bytes, which Pillow steps over one at a time) before the first scan: real
# files have 10 to 40 (APPn, DQT, SOF, DHT, ICC profile parts).
MAX_JPEG_SEGMENTS = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BMP_RLE_COMPRESSIONS = {1: "RLE8", 2: "RLE4"}  # BITMAPINFOHEADER biCompression


def check_png_chunks(data: bytes, max_chunks: int = MAX_PNG_CHUNKS) -> None:
    """Refuse a PNG with more chunks than any encoder writes, from the chunk headers (length, type) alone."""
    position, chunks = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > max_chunks:
            raise NotACTSliceError(
                f"The PNG is split into more than {max_chunks} chunks; encoders write a few dozen.",
                code="too_many_chunks",
            )
        if kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC


def check_jpeg_segments(data: bytes, max_segments: int = MAX_JPEG_SEGMENTS) -> None:
    """Refuse a JPEG with more marker segments (or fill bytes) before its first scan than any encoder writes.

    Walks the segments as Pillow's header reader does: a marker, its 2-byte length, the next marker; a byte
    that is not a marker is one step. Stops at the first start-of-scan: what follows is libjpeg's, in C.
    """
    position, steps = 2, 0  # after the start-of-image marker
    while position + 1 < len(data):
        steps += 1
        if steps > max_segments:
            raise NotACTSliceError(
                f"The JPEG holds more than {max_segments} marker segments before its image data.",
                code="too_many_segments",
            )
        if data[position] != 0xFF:
            position += 1  # junk between segments
            continue
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan
            return
        if marker in (0x00, 0xFF):  # a fill byte
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            position += 2
        elif position + 4 <= len(data):
            (length,) = struct.unpack_from(">H", data, position + 2)
            position += 2 + length
        else:
            return


def check_bmp_compression(info: dict) -> None:
    """Refuse an RLE-compressed BMP (Pillow's header fields in ``info``): its decoder is pure Python, a pixel
    at a time, so a 17 KB file of 4096 one-pixel rows costs seconds. No CT exporter writes RLE BMP."""
    compression = BMP_RLE_COMPRESSIONS.get(info.get("compression", 0))
    if compression is not None:
        raise UnsupportedFormatError(
            f"{compression}-compressed BMP is not decoded: send PNG, or an uncompressed BMP.", code="compressed_bmp"
        )
