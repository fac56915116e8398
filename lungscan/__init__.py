"""LungScan core: everything training and serving must agree on.

Decoding (:mod:`lungscan.imaging`, :mod:`lungscan.dicom`), preprocessing
(:mod:`lungscan.transforms`), the model bundle (:mod:`lungscan.bundle`), prediction
(:mod:`lungscan.classifier`) and the S3 registry (:mod:`lungscan.registry`; its pointer and history in
:mod:`lungscan.registry_pointer`, its layout in :mod:`lungscan.registry_keys`). Adapters import these;
nothing here imports an adapter, HTTP or argparse.
"""

__version__ = "0.1.0"
