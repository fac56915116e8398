"""Which models a running function serves, and keeping them fresh.

A ``ModelStore`` starts from the bundle baked into the image (the fallback), then asks
the S3 registry for the latest published version of each served name; later it asks
again every ``refresh_seconds``. Any failure (S3 unreachable, missing pointer, sha256
mismatch, a model that does not load or has the wrong shapes) keeps the model it has
and logs why: the function never serves a broken model and never stops serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lungscan import registry
from lungscan.errors import ModelUnavailableError, UnknownModelError
from lungscan.predict import Classifier


class ModelStore:
    def __init__(
        self,
        default_name: str,
        baked_bundle: Path | str | None = None,
        *,
        s3=None,
        bucket: str | None = None,
        names: list[str] | None = None,
        refresh_seconds: float = 300.0,
        cache_dir: Path | str = "/tmp/lungscan-models",
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            default_name: the model a request gets when it names none.
            baked_bundle: a bundle folder (or bare model.h5 folder) shipped with the code.
            s3, bucket: the registry; without them only the baked bundle is served.
            names: registry names to serve (default: just ``default_name``).
            refresh_seconds: how long a loaded version is trusted before re-reading the pointer.
        """
        self.default_name = default_name
        self.baked_bundle = Path(baked_bundle) if baked_bundle else None
        self.s3 = s3
        self.bucket = bucket
        self.names = names or [default_name]
        self.refresh_seconds = refresh_seconds
        self.cache_dir = Path(cache_dir)
        self.logger = logger or logging.getLogger(__name__)
        self.clock = clock
        self.models: dict[str, Classifier] = {}
        self.last_refresh: float | None = None
        self._refresh_lock = threading.Lock()

    def load(self) -> None:
        """Load the baked fallback, then whatever the registry points at."""
        if self.baked_bundle is not None:
            try:
                classifier = Classifier(self.baked_bundle)
                self.models[classifier.metadata.name] = classifier
                self.logger.info(
                    "loaded baked model",
                    extra={"model_name": classifier.metadata.name, "model_version": classifier.metadata.version},
                )
            except Exception as error:  # keep going: the registry may still provide one
                self.logger.error("baked model failed to load", extra={"reason": str(error)})
        self.refresh()

    def refresh(self) -> None:
        """Swap in the registry's latest version of each name, keeping the old one on any failure."""
        self.last_refresh = self.clock()
        if self.s3 is None or not self.bucket:
            return
        for name in self.names:
            try:
                version = registry.latest_version(self.s3, self.bucket, name)
                current = self.models.get(name)
                if current is not None and current.metadata.version == version:
                    continue
                bundle_dir = registry.download_bundle(self.s3, self.bucket, name, version, self.cache_dir)
                classifier = Classifier(bundle_dir)  # loads, checks shapes, warms up
                if classifier.metadata.name != name:
                    raise ValueError(f"bundle under models/{name}/ is named {classifier.metadata.name!r}")
                self.models[name] = classifier  # a single reference swap: readers see old or new
                self.logger.info("model swapped in", extra={"model_name": name, "model_version": version})
            except Exception as error:
                self.logger.warning(
                    "registry model not loaded; keeping the current one",
                    extra={"model_name": name, "reason": f"{type(error).__name__}: {error}"},
                )

    def get(self, name: str | None = None) -> Classifier:
        """The classifier for ``name`` (the default when None), refreshing first if due.

        Raises:
            ModelUnavailableError: no model could be loaded at all.
            UnknownModelError: ``name`` is not among the served models.
        """
        refresh_due = self.last_refresh is not None and self.clock() - self.last_refresh >= self.refresh_seconds
        if refresh_due and self._refresh_lock.acquire(blocking=False):  # one refresher; others keep serving
            try:
                self.refresh()
            finally:
                self._refresh_lock.release()
        if not self.models:
            raise ModelUnavailableError("No model is loaded; try again shortly.")
        if name is None:
            # The default, or the only model there is (e.g. a bare legacy model.h5).
            return self.models.get(self.default_name) or next(iter(self.models.values()))
        classifier = self.models.get(name)
        if classifier is None:
            raise UnknownModelError(f"Model '{name}' is not served. Available: {', '.join(sorted(self.models))}.")
        return classifier
