"""What several test modules share, as plain functions and classes (fixtures live in ``conftest.py``).

Test modules import these from here (``from helpers import ...``; pyproject.toml puts ``tests/`` on
pytest's ``pythonpath``), never from another test module or from a conftest.

Keras, pydicom and the training package are imported inside the helpers that need them, so that
importing this module (``conftest.py`` does, before it sets the function's environment) stays light.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from infrastructure.emulation import REPO_ROOT, proxy_event
from lungscan.bundle.metadata import BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec
from lungscan.bundle.store import write_metadata
from lungscan.model.gate import FEATURE_NAMES, GateSpec
from lungscan.registry.model_store import ModelStore

if TYPE_CHECKING:
    import keras
    import pydicom

BUNDLED_MODEL = REPO_ROOT / "models" / "iq-oth-3class"
EVENTS_DIR = REPO_ROOT / "events"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
MODEL_BUCKET = "lungscan-models-test"
SAME_TEST_SET = "a" * 64  # the test-set fingerprint evaluated_bundle records by default


# ---------------------------------------------------------------- images and events


def ct_like_image(size: int = 256, seed: int = 0, mode: str = "L") -> Image.Image:
    """A synthetic axial chest CT slice in a soft-tissue window: black air, the table, a body with a
    fat layer, ribs, spine and mediastinum, two dark lungs with vessels, and scanner noise.

    Realistic enough for the not-CT gate (flat ellipses with uniform noise are refused as drawings).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def ellipse(cx, cy, rx, ry):
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1

    pixels = np.full((size, size), 4.0)
    pixels[np.abs(yy - 0.9 - 0.15 * (xx - 0.5) ** 2) < 0.012] = 120  # the table
    pixels[ellipse(0.5, 0.52, 0.44, 0.33)] = 85  # subcutaneous fat
    pixels[ellipse(0.5, 0.52, 0.41, 0.3)] = 135  # muscle
    for angle in np.linspace(0.25, np.pi - 0.25, 8):  # ribs along the chest wall
        for side in (-1, 1):
            pixels[ellipse(0.5 + side * 0.37 * np.cos(angle), 0.52 - 0.27 * np.sin(angle) + 0.05, 0.02, 0.025)] = 225
    for cx in (0.3, 0.7):  # lungs, with vessels
        pixels[ellipse(cx, 0.5, 0.15, 0.22)] = 22
        for _ in range(int(rng.integers(15, 30))):
            vx, vy = cx + rng.uniform(-0.11, 0.11), 0.5 + rng.uniform(-0.17, 0.17)
            pixels[ellipse(vx, vy, rng.uniform(0.004, 0.012), rng.uniform(0.004, 0.012))] = rng.uniform(90, 150)
    pixels[ellipse(0.52, 0.47, 0.1, 0.13)] = 150  # heart and mediastinum
    pixels[ellipse(0.47, 0.4, 0.03, 0.03)] = 175  # aorta
    pixels[ellipse(0.5, 0.77, 0.045, 0.045)] = 230  # vertebra
    pixels[ellipse(0.5, 0.77, 0.025, 0.025)] = 140
    pixels += rng.normal(0, 7, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(0.6))
    return image.convert(mode) if mode != "L" else image


def encode(image: Image.Image, image_format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def make_event(
    method: str = "POST",
    path: str = "/predict",
    body: str | bytes | None = None,
    content_type: str | None = None,
    *,
    base64_body: bool = False,
    query: dict | None = None,
    headers: dict | None = None,
) -> dict:
    """An API Gateway REST proxy event (``infrastructure.emulation.proxy_event``) with a fixed request id.

    ``bytes`` go base64-encoded with ``base64_body``, else as latin-1 text: any byte reaches the handler.
    """
    headers = {**(headers or {}), **({"Content-Type": content_type} if content_type else {})}
    if isinstance(body, bytes) and not base64_body:
        body = body.decode("latin-1")
    return proxy_event(
        method, path, body=body, headers=headers, query=query, is_base64=base64_body, request_id="test-request-id"
    )


def load_event(name: str) -> dict:
    return json.loads((EVENTS_DIR / name).read_text())


# ---------------------------------------------------------------- the page (Playwright)

DESKTOP = {"width": 1280, "height": 900}  # viewports
PHONE = {"width": 375, "height": 667}


def serious_axe_violations(page, axe_script: Path) -> list[str]:
    """Run axe-core on the page as it is; describe its serious and critical violations."""
    # The production CSP allows no inline script: hand axe over as a same-origin file.
    page.route("**/__axe.min.js", lambda route: route.fulfill(path=str(axe_script), content_type="text/javascript"))
    page.add_script_tag(url="/__axe.min.js")
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {[node['target'] for node in v['nodes']][:5]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


# ---------------------------------------------------------------- DICOM


def dicom_bytes(dataset: pydicom.Dataset, preamble: bool = True) -> bytes:
    buffer = io.BytesIO()
    if not preamble:  # a bare dataset: no preamble, no "DICM", no file meta
        dataset.preamble = None
        del dataset.file_meta
    dataset.save_as(buffer, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def ct_hounsfield(size: int = 256, offset: int = 0) -> np.ndarray:
    """A real CT slice in Hounsfield units (int16): the shipped fixture through the inverse of the lung
    window (-600/1500), so that the lung window shows it as its PNG export. The not-CT gate reads a DICOM's
    pixels, so a DICOM that must be answered carries these; ``offset`` (HU) tells frames apart."""
    grey = np.asarray(Image.open(FIXTURES_DIR / "ct_normal_256.png").convert("L").resize((size, size)), np.float32)
    return (grey / 255.0 * 1500.0 - 1350.0 + offset).round().astype(np.int16)


def ct_dataset(frames: list[np.ndarray] | None = None, **tags) -> pydicom.Dataset:
    """pydicom's CT_small (its tags: Modality CT, ORIGINAL/PRIMARY/AXIAL) carrying ``frames`` of HU
    (by default one ``ct_hounsfield`` slice: the gate reads a DICOM's pixels), stored as HU (slope 1,
    intercept 0); tags overridden, None deletes."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.RescaleIntercept, dataset.RescaleSlope = 0, 1  # stored values are HU
    stack = np.stack(frames if frames is not None else [ct_hounsfield()]).astype(np.int16)
    dataset.Rows, dataset.Columns = stack.shape[1:]
    if frames is not None:
        dataset.NumberOfFrames = len(frames)
    dataset.PixelData = stack.tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for name, value in tags.items():
        if value is None:
            delattr(dataset, name)
        else:
            setattr(dataset, name, value)
    return dataset


def frame(value: int, size: int = 64) -> np.ndarray:
    """A real CT slice in HU (the gate reads DICOM pixels); ``value`` (around -1200..0) shifts it a little
    to tell frames apart."""
    return ct_hounsfield(size, offset=(value + 600) // 20)


SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def real_ct_hounsfield(name: str, size: int = 256, offset: int = 0) -> np.ndarray:
    """A real fixture slice (``ct_normal_256.png``, ``ct_malignant_256.jpg``) in HU, as ``ct_hounsfield``."""
    grey = np.asarray(Image.open(FIXTURES_DIR / name).convert("L").resize((size, size)), np.float32)
    return (grey / 255.0 * 1500.0 - 1350.0 + offset).round().astype(np.int16)


def ct_series(count: int, size: int = 256, series: str = SERIES_UID, **tags) -> list[tuple[float, bytes]]:
    """``count`` axial DICOM slices of one series built from the real fixture slices (normal and malignant in
    turn, each shifted a few HU), with ImagePositionPatient z (``2.5 * i``), InstanceNumber and a StudyDate:
    ``[(z, file bytes)]`` in position order (shuffle them to test the reading order)."""
    slices = []
    fixtures = ["ct_normal_256.png", "ct_malignant_256.jpg"]
    for index in range(count):
        z = round(-300.0 + 2.5 * index, 2)
        pixels = real_ct_hounsfield(fixtures[index % 2], size, offset=index % 7)
        dataset = ct_dataset(
            [pixels],
            SeriesInstanceUID=series,
            SOPInstanceUID=f"{series}.{index + 1}",
            InstanceNumber=index + 1,
            ImagePositionPatient=[-150.0, -150.0, z],
            **({"StudyDate": "20240301", "AcquisitionDate": "20240301"} | tags),
        )
        slices.append((z, dicom_bytes(dataset)))
    return slices


def localizer_dicom(series: str = SERIES_UID) -> bytes:
    """A scout of the same series: refused from its header (``not_ct_localizer``), never classified."""
    return dicom_bytes(
        ct_dataset(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesInstanceUID=series, InstanceNumber=999)
    )


# ---------------------------------------------------------------- tiny bundles


def tiny_cnn(input_shape, outputs: int, activation: str) -> keras.Model:
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


def metadata(**overrides) -> BundleMetadata:
    """model.json of the model "tiny": 32x32 grayscale, normal/benign/malignant, malignant positive."""
    fields = {
        "name": "tiny",
        "version": "v1",
        "classes": ["normal", "benign", "malignant"],
        "positive_classes": ["malignant"],
        "input": InputSpec(height=32, width=32, channels=1, colour="grayscale"),
        "preprocessing": PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=32, width=32)),
    }
    return BundleMetadata(**{**fields, **overrides})


def build_bundle(path: Path, version: str = "v1", *, model: keras.Model | None = None, **overrides) -> Path:
    """A bundle folder at ``path``: ``model`` (an untrained 32x32 three-class ``tiny_cnn`` by default) saved
    as model.h5, and ``metadata(version=version, **overrides)`` as model.json, whatever the model's shape."""
    path.mkdir(parents=True, exist_ok=True)
    (model or tiny_cnn((32, 32, 1), 3, "softmax")).save(path / "model.h5")
    write_metadata(path, metadata(version=version, **overrides))
    return path


def evaluated_bundle(path: Path, version: str, macro_f1: float = 0.6, fingerprint: str | None = SAME_TEST_SET) -> Path:
    """A bundle as `evaluate` leaves it: metrics with a test-set fingerprint, report/smoke.npz, report sha256s."""
    from lungscan.bundle.files import SMOKE_FILE, report_files
    from lungscan.bundle.metadata import BundleMetrics, ReportRecord
    from lungscan.bundle.store import read_metadata
    from lungscan.model.classifier import Classifier
    from lungscan.model.conformal import ConformalSpec
    from training.data.layouts import Sample
    from training.measure.evaluate import write_smoke_set

    build_bundle(path, version)
    classifier = Classifier(path)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (6, 32, 32, 1)).astype(np.float32) / 255.0
    labels = np.array([0, 1, 2, 0, 1, 2])
    samples = [Sample(Path(f"img{i}.png"), "normal", i, "0" * 64) for i in range(6)]
    smoke = write_smoke_set(path / SMOKE_FILE, classifier, inputs, labels, samples, path, 6)
    meta = classifier.metadata
    meta.metrics = BundleMetrics(
        **{
            "accuracy": 0.7,
            "macro_f1": macro_f1,
            "suspicious_sensitivity": 0.9,
            "suspicious_specificity": 0.8,
            "evaluation_set": {"split": "test", "n": 6, "fingerprint": fingerprint} if fingerprint else {},
            "smoke": smoke,
        }
    )
    meta.conformal = ConformalSpec(coverage=0.9, thresholds=dict.fromkeys(meta.classes, 0.8))
    (path / "MODEL_CARD.md").write_text(f"# tiny {version}\n")
    meta.report = ReportRecord(files=report_files(path))
    meta.gate = read_metadata(BUNDLED_MODEL).gate  # publish refuses a bundle without a not-CT gate
    write_metadata(path, meta)
    return path


def hand_made_spec(probability_threshold: float = 0.5, distance_threshold: float = 10.0) -> GateSpec:
    """A gate whose scores can be worked out by hand: one hidden unit reads feature 0."""
    n = len(FEATURE_NAMES)
    hidden = np.zeros((n, 1))
    hidden[0, 0] = 1.0
    precision = np.eye(n) * 0.5
    return GateSpec(
        feature_names=FEATURE_NAMES,
        mean=[0.0] * n,
        scale=[2.0] * n,
        hidden_weights=hidden.tolist(),
        hidden_bias=[0.0],
        output_weights=[3.0],
        output_bias=-1.5,
        probability_threshold=probability_threshold,
        ct_location=[0.0] * n,
        ct_precision=precision.tolist(),
        distance_threshold=distance_threshold,
    )


# ---------------------------------------------------------------- the registry (moto's S3)


class Clock:
    """A clock the test moves by hand (``clock.now = 61``), for a ModelStore's refresh interval."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loaded_store(s3, cache_dir: Path, baked: Path | None = None, **options) -> ModelStore:
    """A ModelStore for the model "tiny" in ``s3``'s MODEL_BUCKET, ``baked`` its fallback, after its cold start.

    ``options`` go to ModelStore as they are (``refresh_seconds``, ``clock``...): its defaults otherwise.
    """
    store = ModelStore("tiny", baked, s3=s3, bucket=MODEL_BUCKET, cache_dir=cache_dir, **options)
    store.load()
    return store


def served_after(store: ModelStore, clock: Clock, at: float) -> str:
    """Move the clock to ``at``, let a request start the refresh, wait for it, and say what is served."""
    clock.now = at
    store.get()  # starts the refresh, if due, in the background and answers at once
    assert store.wait_for_refresh(timeout=60)
    return store.get().metadata.version


def cli(s3, capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m training ARGV --bucket MODEL_BUCKET`` against ``s3``: (exit code, stdout, stderr)."""
    from training.cli import main

    code = main([*argv, "--bucket", MODEL_BUCKET], s3=s3)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def keys(s3) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=MODEL_BUCKET).get("Contents", [])}


# ---------------------------------------------------------------- patient history: moto's DynamoDB and Cognito

HISTORY_TABLE = "lungscan-history-test"


class HistoryWorld:
    """An empty history table and a user pool in moto (in-process, inside ``mock_aws``), wired into the
    function's ``history_api`` with ``monkeypatch``. ``enroll`` adds a clinician: a pool user named by the
    ``sub`` its claims carry (claims without ``cognito:username`` name the user by ``sub``)."""

    def __init__(self, monkeypatch, history_api, clock: Clock | None = None) -> None:
        import boto3

        from lungscan.accounts.directory import ClinicianDirectory
        from lungscan.accounts.history_store import HistoryStore, create_table

        self.dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(self.dynamodb, HISTORY_TABLE)
        self.store = HistoryStore(self.dynamodb, HISTORY_TABLE, retention_days=30)
        self.cognito = boto3.client("cognito-idp", region_name="us-east-1")
        self.pool = self.cognito.create_user_pool(PoolName="lungscan-test")["UserPool"]["Id"]
        self.clock = clock or Clock()
        self.directory = ClinicianDirectory(self.cognito, self.pool, cache_seconds=60, clock=self.clock)
        monkeypatch.setattr(history_api, "_store", self.store)
        monkeypatch.setattr(history_api, "_directory", self.directory)
        monkeypatch.setattr(history_api, "_hash_key", b"test-hash-key")

    def enroll(self, username: str, *teams: str) -> None:
        self.cognito.admin_create_user(UserPoolId=self.pool, Username=username, MessageAction="SUPPRESS")
        for team in teams:
            self.join(username, team)

    def join(self, username: str, team: str) -> None:
        with contextlib.suppress(self.cognito.exceptions.GroupExistsException):
            self.cognito.create_group(UserPoolId=self.pool, GroupName=team)
        self.cognito.admin_add_user_to_group(UserPoolId=self.pool, Username=username, GroupName=team)

    def leave(self, username: str, team: str) -> None:
        self.cognito.admin_remove_user_from_group(UserPoolId=self.pool, Username=username, GroupName=team)


def demo_id_token(endpoint: str, email: str) -> str:
    """A local demo user's ID token (docs/accounts.md), as any script signs in: find the pool in the local stack's
    moto server at ``endpoint`` and its client, then InitiateAuth with the demo password."""
    import boto3

    from infrastructure.local_accounts import DEMO_PASSWORD

    cognito = boto3.client(
        "cognito-idp",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    (pool,) = [pool for pool in cognito.list_user_pools(MaxResults=10)["UserPools"] if "lungscan" in pool["Name"]]
    (client,) = cognito.list_user_pool_clients(UserPoolId=pool["Id"], MaxResults=10)["UserPoolClients"]
    result = cognito.initiate_auth(
        ClientId=client["ClientId"],
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": email, "PASSWORD": DEMO_PASSWORD},
    )
    return result["AuthenticationResult"]["IdToken"]


# ---------------------------------------------------------------- a CT series, as a scanner sends it


def scanner_study(
    count: int = 4, *, patient_id: str = "LS-TEST-1", modality: str = "CT", **tags
) -> list[pydicom.Dataset]:
    """A short CT series of one new study: the real fixture slices (normal PNG, malignant JPEG) as HU, in
    ``ct_dataset``'s header, each slice with its own SOP Instance UID, instance number and z position."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    sources = [FIXTURES_DIR / "ct_normal_256.png", FIXTURES_DIR / "ct_malignant_256.jpg"]
    slices = []
    for index in range(count):
        grey = np.asarray(Image.open(sources[index % 2]).convert("L"), np.float32)
        hounsfield = (grey / 255.0 * 1500.0 - 1350.0).round().astype(np.int16)  # the lung window's inverse
        uid = generate_uid()
        dataset = ct_dataset(
            [hounsfield],
            NumberOfFrames=None,
            PatientID=patient_id,
            PatientName="Test^Series",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SOPInstanceUID=uid,
            InstanceNumber=index + 1,
            ImagePositionPatient=[-125.0, -125.0, -100.0 + 5.0 * index],
            Modality=modality,
            AccessionNumber="ACC-1",
            **tags,
        )
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        slices.append(dataset)
    return slices


class StudiesOnMoto:
    """The whole-study routes and engine on moto's in-process S3 and DynamoDB: Step Functions' StartExecution runs
    template.yaml's machine (the local engine) to its end before answering. Use inside ``mock_aws()``."""

    BUCKET, TABLE = "uploads-test", "studies-test"

    def __init__(self, app_module, lambda_context, monkeypatch) -> None:
        import boto3
        import studies_api

        from infrastructure.local_engine import local_engine
        from lungscan.studies.store import create_table

        self.app, self.context = app_module, lambda_context
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.BUCKET)
        self.dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table(self.dynamodb, self.TABLE)
        self.engine = local_engine(self.s3)
        monkeypatch.setenv("UPLOADS_BUCKET", self.BUCKET)
        monkeypatch.setenv("STUDIES_TABLE", self.TABLE)
        monkeypatch.setenv("STUDY_STATE_MACHINE", "arn:aws:states:us-east-1:123456789012:stateMachine:Studies")
        monkeypatch.setattr(studies_api, "_clients", {"s3": self.s3, "dynamodb": self.dynamodb, "stepfunctions": self})

    def start_execution(self, stateMachineArn: str, name: str, input: str) -> dict:  # noqa: N803 - boto3's names
        self.engine.run(json.loads(input), name)
        return {"executionArn": name}

    def call(self, method: str, path: str, body=None, claims=None) -> tuple[int, dict]:
        headers = {"Authorization": "token-checked-by-the-claims"} if claims else None
        event = make_event(
            method, path, json.dumps(body) if body is not None else None, "application/json", headers=headers
        )
        if claims:
            event["requestContext"]["authorizer"] = {"claims": dict(claims)}
        response = self.app.lambda_handler(event, self.context)
        return response["statusCode"], json.loads(response["body"] or "null")

    def run(self, files: list[bytes], claims=None, start: bool = True) -> str:
        """A study of ``files`` created, uploaded (as the presigned POSTs would) and, by default, classified."""
        status, created = self.call("POST", "/studies", {"files": [{"size": len(data)} for data in files]}, claims)
        assert status == 201, created
        for target, data in zip(created["uploads"], files, strict=True):
            self.s3.put_object(Bucket=self.BUCKET, Key=target["fields"]["key"], Body=data)
        if start:
            status, started = self.call("POST", f"/studies/{created['study_id']}/start", claims=claims)
            assert status == 202, started
        return created["study_id"]
