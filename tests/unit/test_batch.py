"""The faster serving path's answers (issue 25): the batch entry of the studies and archive workers answers as
one request per upload, explain=true answers from one run of the twin, older bundles (gate and detector on
version-1 features) answer as before, and a request imports nothing the function's init left out.

No wall-clock time is asserted here: the figures live in ``benchmarks/bench_predict.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import (
    BUNDLED_MODEL,
    FIXTURES_DIR,
    ct_dataset,
    ct_hounsfield,
    ct_like_image,
    dicom_bytes,
    encode,
    frame,
)
from PIL import Image

from infrastructure.emulation import with_function_path
from lungscan.errors import MalformedInputError, NotCTLikeError, PayloadTooLargeError, UnsupportedFormatError
from lungscan.model.classifier import Classifier
from lungscan.model.gate import gate_features, is_ct_like
from lungscan.model.thumbnail import SliceView
from lungscan.uploads import UploadOptions, classify_batch, classify_upload, decode_upload
from training.gate import generators as non_ct_generators

SHIPPED = sorted(path.parent for path in BUNDLED_MODEL.parent.glob("*/model.json"))


@pytest.fixture(scope="module")
def classifiers() -> dict[str, Classifier]:
    return {bundle.name: Classifier(bundle) for bundle in SHIPPED}


def uploads() -> list[bytes]:
    """CT slices of every kind at hand (the fixtures, DICOM included; generated ones), and bad uploads between them."""
    files = [path.read_bytes() for path in sorted(FIXTURES_DIR.glob("ct_*")) if path.suffix != ".md"]
    files += [encode(ct_like_image(size, seed=seed)) for seed, size in ((0, 256), (1, 512), (2, 300), (5, 200))]
    files.insert(2, encode(non_ct_generators.screenshot(np.random.default_rng(3))))  # not CT: refused
    files.insert(4, encode(ct_like_image(64))[:200])  # truncated
    files.insert(5, b"GIF89a" + bytes(64))  # a format the API does not read
    files.append(b"x" * (4 * 2**20 + 1))  # too large
    return files


@pytest.mark.parametrize("name", [bundle.name for bundle in SHIPPED])
def test_a_batch_answers_as_one_request_per_upload(classifiers, name):
    """One result per upload, in order: the answer classify_upload gives it alone (tier, set, unfamiliar flag and
    notes included), or the error it gets alone; a bad upload does not stop the others, whatever the chunk."""
    classifier, files = classifiers[name], uploads()
    singles = []
    for data in files:
        try:
            singles.append(classify_upload(classifier, [data], UploadOptions()).predictions[0])
        except (NotCTLikeError, MalformedInputError, PayloadTooLargeError, UnsupportedFormatError) as error:
            singles.append(type(error))
    for chunk in (1, 3, 16):
        results = classify_batch(classifier, files, chunk=chunk)
        assert len(results) == len(files)
        assert isinstance(results[2].error, NotCTLikeError) and results[2].prediction is None
        assert results[2].error.code == "not_ct_like" and results[2].input.format == "PNG"
        assert isinstance(results[4].error, MalformedInputError) and results[4].input is None
        assert isinstance(results[5].error, UnsupportedFormatError)
        assert isinstance(results[-1].error, PayloadTooLargeError) and results[-1].error.code == "payload_too_large"
        for data, result, single in zip(files, results, singles, strict=True):
            if isinstance(single, type):
                assert isinstance(result.error, single) and result.prediction is None
                continue
            assert result.error is None and result.prediction == single
            if result.input.format != "DICOM":
                assert result.input.width == Image.open(io.BytesIO(data)).width
    flagged = {result.prediction.unfamiliar for result in results if result.prediction is not None}
    assert flagged <= {True, False}  # every shipped bundle carries its detector


def test_a_multi_frame_dicom_is_one_upload_read_as_a_single_request_reads_it(classifiers):
    classifier = classifiers[BUNDLED_MODEL.name]
    frames = [ct_hounsfield(offset=offset) for offset in (-300, 0, 200)]
    data = dicom_bytes(ct_dataset(frames))
    for options in (UploadOptions(), UploadOptions(frame=2), UploadOptions(all_frames=True, explain=True)):
        results = classify_batch(classifier, [data, data[: len(data) // 2]], options)  # and one cut short
        assert len(results) == 2 and isinstance(results[1].error, MalformedInputError)
        expected_frame = 2 if options.frame == 2 else 1  # the asked frame, else the middle one
        assert (results[0].input.format, results[0].input.frame) == ("DICOM", expected_frame)
        single = classify_upload(classifier, [data], UploadOptions(frame=expected_frame)).predictions[0]
        assert results[0].prediction == single and results[0].prediction.heatmap is None
    assert classify_batch(classifier, []) == []
    too_many = dicom_bytes(ct_dataset([frame(0)] * 3, NumberOfFrames=100_000))
    assert classify_batch(classifier, [too_many])[0].error.code == "too_many_pixels"


def test_an_explanation_comes_from_the_same_run_and_answers_alike(classifiers):
    """explain=true runs the twin once for the probabilities, the detector's features and the Grad-CAM inputs:
    the same answer as without explain, and the same map as the separate Grad-CAM run."""
    from lungscan.model.transforms import preprocess_image

    for classifier in classifiers.values():
        for path in sorted(FIXTURES_DIR.glob("ct_*")):
            if path.suffix == ".md":
                continue
            decoded = decode_upload(path.read_bytes())
            plain, explained = classifier.classify(decoded), classifier.classify(decoded, explain=True)
            assert explained.heatmap is not None and explained.explained_class == explained.label
            explained.heatmap, explained.explained_class = None, None
            assert plain == explained
            array, _ = preprocess_image(decoded, classifier.preprocess)
            raw, pooled, gradcam = classifier.runtime.explained_forward(array)
            separate_raw, separate_pooled = classifier.runtime.forward_with_features(array[np.newaxis])
            np.testing.assert_array_equal(raw, separate_raw)
            np.testing.assert_array_equal(pooled, separate_pooled)
            for index in range(len(classifier.metadata.classes)):
                np.testing.assert_array_equal(gradcam(index), classifier.gradcam(array, index))


def test_the_gate_and_the_detector_each_read_the_features_version_they_were_fitted_on(classifiers):
    """A bundle published before the refit (gate and detector on version 1, the bilinear thumbnail) still loads and
    is scored on the features it was fitted on; each part on its own version, computed once when they agree."""
    classifier = classifiers[BUNDLED_MODEL.name]
    metadata = classifier.metadata
    view = SliceView(ct_like_image(300, seed=3))
    try:
        for gate_version, detector_version in ((1, 1), (2, 2), (2, 1), (1, 2)):
            gate = metadata.gate.model_copy(update={"features_version": gate_version})
            detector = metadata.familiarity.model_copy(update={"image_features_version": detector_version})
            classifier.metadata = metadata.model_copy(update={"gate": gate, "familiarity": detector})
            features = classifier.image_features([view])
            assert set(features) == {gate_version, detector_version}
            for version, rows in features.items():
                np.testing.assert_array_equal(rows[0], gate_features(view, version))
            assert classifier.gate_passes(features, 1).tolist() == is_ct_like(gate_features(view, gate_version), gate)
            np.testing.assert_array_equal(classifier.familiarity_rows(features), features[detector_version])
    finally:
        classifier.metadata = metadata


# ---------------------------------------------------------------- imports: at init what every request needs


LAZY = (
    "aws_xray_sdk",
    "jwt",
    "cryptography",
    "scipy",
    "boto3",
    "botocore.session",  # Powertools imports the bare botocore package (a millisecond): not its sessions
    "aws_lambda_powertools.event_handler.openapi.models",
)


def run_function(script: str, env: dict[str, str]) -> str:
    """``script`` in a fresh process, as the function's image runs (the task root on PYTHONPATH): its last line."""
    done = subprocess.run(
        [sys.executable, "-c", script], env=with_function_path(env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_function_imports_at_init_what_requests_need_and_nothing_it_does_not(tmp_path):
    """A cold function process (import app = init): no X-Ray SDK with tracing off, no PyJWT/crypto, no scipy,
    no boto3 without a model bucket, no OpenAPI models. Then a request of every kind imports nothing more,
    except what only its kind needs: pydicom for a DICOM (as before), the OpenAPI models for /openapi.json."""
    image = ct_like_image(256)
    uploads = {
        "png": encode(image),
        "jpeg": encode(image, "JPEG", quality=90),
        "tiff": encode(image, "TIFF"),
        "bmp": encode(image, "BMP"),
        "rgba_png": encode(image.convert("RGBA")),
        "sixteen_bit_png": encode(Image.fromarray(np.asarray(image).astype(np.uint16) * 257)),
    }
    bodies = {name: {"image": base64.b64encode(data).decode()} for name, data in uploads.items()}
    bodies["explain"] = {"image": bodies["png"]["image"], "explain": True}
    bodies["study"] = {"images": [bodies["png"]["image"], bodies["jpeg"]["image"]], "explain": True}
    bodies["not_ct"] = {"image": base64.b64encode(encode(non_ct_generators.chart(np.random.default_rng(1)))).decode()}
    (tmp_path / "bodies.json").write_text(json.dumps(bodies))
    script = textwrap.dedent(
        f"""
        import json, sys
        import app
        from infrastructure.emulation import LambdaContext, proxy_event

        lazy = {LAZY!r}
        def loaded():
            return sorted(name for name in lazy if name in sys.modules)
        at_init = loaded()
        seen, statuses = set(sys.modules), {{}}
        bodies = json.loads(open({str(tmp_path / "bodies.json")!r}).read())
        requests = [("POST", "/predict", name, json.dumps(body)) for name, body in bodies.items()]
        requests += [("GET", "/health", "health", None), ("GET", "/model", "model", None)]
        for method, path, name, body in requests:
            event = proxy_event(method, path, body=body, headers={{"Content-Type": "application/json"}})
            statuses[name] = app.lambda_handler(event, LambdaContext("cold"))["statusCode"]
        new = sorted(set(sys.modules) - seen)
        openapi = app.lambda_handler(proxy_event("GET", "/openapi.json"), LambdaContext("cold"))["statusCode"]
        print(json.dumps({{"at_init": at_init, "statuses": statuses, "new": new, "openapi": openapi,
                          "after_openapi": loaded()}}))
        """
    )
    env = {**os.environ, "MODEL_DIR": str(BUNDLED_MODEL), "POWERTOOLS_TRACE_DISABLED": "1"}
    env.pop("MODEL_BUCKET", None)
    result = json.loads(run_function(script, env))
    assert result["at_init"] == []
    assert result["statuses"] == {**dict.fromkeys(bodies, 200), "not_ct": 422, "health": 200, "model": 200}
    assert result["new"] == []  # nothing a request needs is left to its first occurrence
    assert result["openapi"] == 200
    assert result["after_openapi"] == ["aws_lambda_powertools.event_handler.openapi.models"]


def test_tracing_on_still_traces():
    """With tracing on (deployed: POWERTOOLS_TRACE_DISABLED unset), the handler is wrapped by Powertools' Tracer."""
    script = 'import sys, app; print(app.TRACING, type(app.tracer).__name__, "aws_xray_sdk" in sys.modules)'
    env = {**os.environ, "MODEL_DIR": str(BUNDLED_MODEL)}
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    env.pop("MODEL_BUCKET", None)
    assert run_function(script, env).split() == ["True", "Tracer", "True"]


def test_the_shipped_bundles_load_with_their_gate_arrays_ready(classifiers):
    for classifier in classifiers.values():
        spec = classifier.metadata.gate
        detector = classifier.metadata.familiarity
        for cache in (spec._arrays, detector._arrays):
            assert cache._entry is not None  # converted by the warm-up at load, not by the first request
        assert spec.arrays().ct_precision.shape == (len(spec.feature_names),) * 2
        assert detector.arrays().components.shape == (len(detector.variances), len(detector.mean))


def test_converted_arrays_never_tell_two_specs_apart():
    """pydantic compares private attributes: a spec whose arrays were converted equals one read afresh."""
    from lungscan.bundle.store import read_metadata

    served, fresh = Classifier(BUNDLED_MODEL).metadata, read_metadata(BUNDLED_MODEL)
    assert served.gate._arrays._entry is not None and fresh.gate._arrays._entry is None
    assert served == fresh and served.gate == fresh.gate and served.familiarity == fresh.familiarity
    fresh.gate.arrays(), fresh.familiarity.arrays()
    assert served == fresh
    assert served.model_copy(update={"version": "another"}) != fresh
