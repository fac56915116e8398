"""The key image: the most suspicious slice with its heatmap overlay, as a DICOM secondary capture.

The label is burned into the pixels, not only into a header a viewer may hide: whoever sees the image reads
that it is an AI heatmap and not for diagnosis.
"""

from __future__ import annotations

import highdicom
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from lungscan.results.identity import SourceSlice, result_uid

LABEL = "AI heatmap - not for diagnosis"
MANUFACTURER = "LungScan"
SERIES_NUMBER = 9902  # the SR is 9901: high numbers, after the scanner's own series
MIN_SIDE = 512  # a model-sized overlay is enlarged so that the label and the heat stay readable


def labelled_pixels(overlay: Image.Image, label: str = LABEL) -> np.ndarray:
    """The overlay (RGB), enlarged to at least ``MIN_SIDE`` pixels a side, with ``label`` burned in on a band."""
    image = overlay.convert("RGB")
    scale = max(1.0, MIN_SIDE / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    band = max(20, image.height // 16)
    font = ImageFont.load_default(size=int(band * 0.65))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, band), fill=(0, 0, 0))
    draw.text((band // 4, band // 2), label, fill=(255, 255, 0), font=font, anchor="lm")
    return np.asarray(image, dtype=np.uint8)


def build_key_image(
    identity: dict[str, str], source: SourceSlice, overlay: Image.Image, *, seed: str, disclaimer: str
) -> Dataset:
    """A secondary capture in ``identity``'s study (a new series) of ``source``'s slice with its heatmap."""
    pixels = labelled_pixels(overlay)
    image = highdicom.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=identity["StudyInstanceUID"],
        series_instance_uid=result_uid(seed, "key-image-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(seed, "key-image"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=identity["PatientID"],
        patient_name=identity["PatientName"],
        accession_number=identity["AccessionNumber"],
        study_id=identity["StudyID"],
        study_date=identity["StudyDate"] or None,
        study_time=identity["StudyTime"] or None,
        patient_orientation=("L", "P"),  # an axial slice as the scanner stored it: rows to the left, columns back
        series_description=f"LungScan {LABEL}",
        specific_character_set=identity.get("SpecificCharacterSet") or None,
    )
    image.BurnedInAnnotation = "YES"
    image.ConversionType = "WSD"  # made on a workstation from a digital image, not digitised film
    image.ImageComments = f"{LABEL}. {disclaimer}"
    image.DerivationDescription = "LungScan model heatmap (Grad-CAM) blended over the windowed slice"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    image.SourceImageSequence = DicomSequence([reference])
    return image
