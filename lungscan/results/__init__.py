"""Results as DICOM objects a PACS files into the patient's study: a Structured Report and a key image.

Built in memory with highdicom from the few identifiers a study keeps (``identity``); sent or downloaded,
never stored by LungScan.
"""
