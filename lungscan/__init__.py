"""LungScan core: everything training and serving must agree on.

Decoding (:mod:`lungscan.inputs.imaging`, :mod:`lungscan.inputs.dicom`), preprocessing
(:mod:`lungscan.model.transforms`), the model bundle (:mod:`lungscan.bundle.metadata`), prediction
(:mod:`lungscan.model.classifier`) and the S3 registry (:mod:`lungscan.registry.bundles`; its pointer and history in
:mod:`lungscan.registry.pointer`, its layout in :mod:`lungscan.registry.keys`). Adapters import these;
nothing here imports an adapter, HTTP or argparse.
"""

__version__ = "0.1.0"
