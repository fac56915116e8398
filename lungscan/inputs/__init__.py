"""What arrives: image files (PNG, JPEG, TIFF, BMP) and DICOM, decoded within limits to pixels."""
