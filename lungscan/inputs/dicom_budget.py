"""How much of a DICOM file pydicom may parse: sequence items counted in the bytes, data elements as read.

pydicom reads every element of a file when it opens it, and builds a Dataset for every sequence item (about
17 us of CPU each here; the issue measured 80): 520,000 empty items fit in 4 MB and took 42 s; 400,000 empty
elements after the pixel data 2.4 s. Nothing in pydicom bounds either, so each parse of a request spends
from one :class:`DicomBudget`:

- items: the item tags (FFFE,E000) in the bytes, counted before pydicom starts (C speed, like JPEG scans);
  an over-count at worst (pixel data may hold the four bytes), never an under-count, whatever the nesting,
  and encapsulated pixel data's fragments are items too;
- elements: every element and item header pydicom reads (an 8-byte read each, through the stream handed to
  ``dcmread``), counted as it reads them; the read stops at the limit.

A defined-length sequence is parsed by pydicom later, when its tag is first read, from a copy of its bytes:
:func:`read_within_budget` parses those too, with pydicom's own reader on the same budget, so nothing is
left for pydicom to parse without a bound once it returns (down to ``MAX_SEQUENCE_DEPTH``: deeper ones, which
nothing LungScan or pydicom's pixel code reads, stay bytes; their items were counted all the same).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from lungscan.errors import NotACTSliceError

# Per request, every parse of every file included (a study reads each file twice: header, then pixels).
# A CT slice holds 150-600 elements and a few dozen items, so 64 slices read twice fit with room to spare.
MAX_DICOM_ELEMENTS = 50_000
MAX_DICOM_ITEMS = 10_000
# Sequences nested deeper are left as pydicom read them: no path LungScan or pydicom's pixel code reads is this deep.
MAX_SEQUENCE_DEPTH = 8
ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")  # (FFFE,E000): little endian, big endian
HEADER_BYTES = 8  # pydicom reads each element's and each item's tag and length in one 8-byte read


@dataclass
class DicomBudget:
    """What one request may have pydicom parse, in all its DICOM files together."""

    elements: int = MAX_DICOM_ELEMENTS
    items: int = MAX_DICOM_ITEMS
    exhausted: NotACTSliceError | None = None

    def spend_items(self, data: bytes) -> None:
        found = sum(data.count(tag) for tag in ITEM_TAGS)
        self.items -= found
        if self.items < 0:
            self._refuse(f"The DICOM holds {found:,} sequence items; at most {MAX_DICOM_ITEMS:,} are read per request.")

    def spend_element(self) -> None:
        self.elements -= 1
        if self.elements < 0:
            self._refuse(f"The DICOM holds more than {MAX_DICOM_ELEMENTS:,} data elements; a CT slice holds hundreds.")

    def _refuse(self, message: str) -> None:
        # pydicom turns some errors raised inside its reads into OSError: the budget remembers its own.
        self.exhausted = self.exhausted or NotACTSliceError(message, code="too_many_elements")
        raise self.exhausted

    def stream(self, data: bytes) -> io.BytesIO:
        """``data`` as a file whose every 8-byte read (an element or item header) spends one element."""
        return _CountedReads(data, self)


class _CountedReads(io.BytesIO):
    def __init__(self, data: bytes, budget: DicomBudget) -> None:
        super().__init__(data)
        self._budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        if size == HEADER_BYTES:
            self._budget.spend_element()
        return super().read(size)


def read_within_budget(data: bytes, budget: DicomBudget) -> Any:
    """``pydicom.dcmread`` of ``data`` (forced), every sequence included, within ``budget``.

    The caller spends ``data``'s items first (:meth:`DicomBudget.spend_items`), before anything reads it:
    the file meta is read before the dataset, and a deflated dataset is only seen inflated.

    Raises:
        NotACTSliceError: ``too_many_elements``, as soon as the budget is spent (pydicom parses no further).
        and whatever pydicom raises on a damaged file.
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(budget.stream(data), force=True)
        _parse_sequences(dataset, budget, depth=0)
    except Exception:
        if budget.exhausted is not None:
            raise budget.exhausted from None
        raise
    return dataset


def _parse_sequences(dataset: Any, budget: DicomBudget, depth: int) -> None:
    """Parse each defined-length sequence pydicom left as bytes, as pydicom would on first access, within the budget.

    One that pydicom cannot parse is left as it was: pydicom fails on it the same way if it is ever read.
    """
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.filereader import read_sequence
    from pydicom.hooks import hooks
    from pydicom.valuerep import VR

    if depth >= MAX_SEQUENCE_DEPTH:
        return
    encoding = dataset._character_set
    for element in list(dataset.elements()):
        if isinstance(element, RawDataElement):
            value = element.value or b""
            if value[:4] not in ITEM_TAGS:
                continue  # no sequence (an empty one holds nothing to parse)
            resolved: dict = {}
            try:
                hooks.raw_element_vr(element, resolved, encoding=encoding, ds=dataset)
                if resolved["VR"] != VR.SQ:
                    continue
                sequence = read_sequence(
                    budget.stream(value),
                    element.is_implicit_VR,
                    element.is_little_endian,
                    len(value),
                    encoding,
                    element.value_tell or 0,
                )
            except Exception:
                if budget.exhausted is not None:
                    raise
                continue
            element = DataElement(element.tag, VR.SQ, sequence, element.value_tell, already_converted=True)
            dataset[element.tag] = element
        if element.VR == VR.SQ:
            for item in element.value or ():
                _parse_sequences(item, budget, depth + 1)
