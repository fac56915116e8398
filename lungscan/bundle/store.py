"""Reading and writing ``model.json``: the only code that does.

Training writes a bundle's metadata in stages (train, evaluate, the gate, the twin); each stage
reads what is there, changes its own fields and writes it back through :func:`edit_metadata`, so
the stages may run in any order and none of them needs to know the others' fields.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from lungscan.bundle.files import METADATA_FILE, MODEL_FILE, file_sha256
from lungscan.bundle.metadata import BundleMetadata, legacy_metadata
from lungscan.errors import InvalidBundleError


def has_metadata(bundle_dir: Path) -> bool:
    """Whether the folder holds a full bundle (a bare model.h5 has the original app's meaning)."""
    return (Path(bundle_dir) / METADATA_FILE).is_file()


def parse_metadata(text: str | bytes, where: str, *, dropping: str | None = None) -> BundleMetadata:
    """A model.json's text, checked; ``dropping`` names a top-level section left unread.

    Raises:
        InvalidBundleError: not JSON, or not a valid model.json.
    """
    try:
        if dropping is None:
            return BundleMetadata.model_validate_json(text)
        recorded = json.loads(text)
        if not isinstance(recorded, dict):
            raise InvalidBundleError(f"{where} is not a valid model.json: not an object")
        recorded.pop(dropping, None)
        return BundleMetadata.model_validate(recorded)
    except (ValidationError, UnicodeDecodeError, ValueError) as error:
        raise InvalidBundleError(f"{where} is not a valid model.json: {error}") from error


def read_metadata(bundle_dir: Path, *, verify_sha256: bool = True, dropping: str | None = None) -> BundleMetadata:
    """Read and check a bundle's metadata (or the legacy meaning of a bare model.h5); ``dropping`` names a
    section left unread (see :func:`edit_metadata`).

    Raises:
        InvalidBundleError: missing model.h5, unreadable/invalid model.json, sha256 mismatch.
    """
    bundle_dir = Path(bundle_dir)
    model_path = bundle_dir / MODEL_FILE
    if not model_path.is_file():
        raise InvalidBundleError(f"{model_path} does not exist")
    actual_sha = file_sha256(model_path)
    metadata_path = bundle_dir / METADATA_FILE
    if not metadata_path.exists():
        return legacy_metadata(actual_sha)
    try:
        text = metadata_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidBundleError(f"{metadata_path} is not a valid model.json: {error}") from error
    metadata = parse_metadata(text, str(metadata_path), dropping=dropping)
    if verify_sha256 and metadata.sha256 and metadata.sha256 != actual_sha:
        raise InvalidBundleError(f"sha256 of {model_path} does not match model.json")
    metadata.sha256 = actual_sha
    return metadata


def write_metadata(bundle_dir: Path, metadata: BundleMetadata) -> None:
    """Write model.json with the sha256 of the model.h5 beside it (replaced whole: a reader never sees half)."""
    bundle_dir = Path(bundle_dir)
    metadata.sha256 = file_sha256(bundle_dir / MODEL_FILE)
    absent = {name for name in ("training", "report") if getattr(metadata, name) is None}  # not written as null
    text = json.dumps(metadata.model_dump(mode="json", exclude=absent), indent=2, sort_keys=False) + "\n"
    handle, scratch = tempfile.mkstemp(prefix=".model-", suffix=".json", dir=bundle_dir)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(scratch, 0o644)
        os.replace(scratch, bundle_dir / METADATA_FILE)
    finally:
        Path(scratch).unlink(missing_ok=True)


@contextmanager
def edit_metadata(bundle_dir: Path, *, replacing: str | None = None) -> Iterator[BundleMetadata]:
    """Read model.json (checked against model.h5), let the caller change it, write it back.

    ``replacing`` names a section the caller writes anew: it is dropped unread, so that a section an
    older version wrote in a shape this one no longer accepts can be replaced. Nothing is written if
    the block raises.

    Raises:
        InvalidBundleError: no model.json, or it does not describe the model.h5 beside it.
    """
    bundle_dir = Path(bundle_dir)
    if not has_metadata(bundle_dir):
        raise InvalidBundleError(f"{bundle_dir} has no model.json")
    metadata = read_metadata(bundle_dir, dropping=replacing)
    yield metadata
    write_metadata(bundle_dir, metadata)
