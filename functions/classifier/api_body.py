"""The body of ``POST /predict``, whatever its framing (JSON, raw image bytes, multipart form), as bytes and options.

Sizes and counts are decided before anything is decoded or parsed.
"""

import base64
import email.errors
import email.parser
import email.policy
import json
import re
from dataclasses import dataclass, field

from api_schemas import PredictOptions, PredictRequest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import ValidationError

from lungscan.errors import ConflictingRequestError, MalformedInputError, PayloadTooLargeError, UnsupportedFormatError
from lungscan.inputs.imaging import decode_base64
from lungscan.uploads import MAX_STUDY_SLICES

# Lambda takes at most 6 MB per synchronous request, event envelope included.
MAX_BODY_CHARS = 6 * 1024 * 1024 - 64 * 1024
# A form holds the files of one study and the options; counted before the parser runs.
MAX_FORM_PARTS = MAX_STUDY_SLICES + 16
# A browser writes a few hundred bytes of headers per part; the email package's header parser
# is quadratic in some shapes (1 MB of "()" takes a minute), so longer header blocks are refused.
MAX_PART_HEADER_BYTES = 8 * 1024
RAW_IMAGE_TYPES = {
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/tiff",
    "application/dicom",
    "application/octet-stream",
}


@dataclass
class Upload:
    images: list[bytes]
    is_study: bool = False
    options: PredictOptions = field(default_factory=PredictOptions)


def read_upload(event: APIGatewayProxyEvent, query: PredictOptions) -> Upload:
    """Turn the proxy event's body into image bytes and options (the body's options win over the query's,
    except ``patient``: two different references in one request are refused, never one picked)."""
    if len(set((event.multi_value_query_string_parameters or {}).get("patient") or [])) > 1:
        raise _conflicting_patients()
    body = event.body or ""
    if len(body) > MAX_BODY_CHARS:
        raise PayloadTooLargeError(
            f"The request is larger than {MAX_BODY_CHARS // 2**20} MB, the most API Gateway and Lambda carry."
        )
    if not body:
        raise MalformedInputError("The request body is empty: send an image.", code="empty_body")
    content_type = event.get_header_value("content-type", default_value="", case_sensitive=False) or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    raw = body_bytes(body, event.is_base64_encoded)
    if media_type == "application/json" or (not media_type and raw.lstrip().startswith(b"{")):
        return _read_json(raw, query)
    if media_type == "multipart/form-data":
        return _read_multipart(content_type, raw, query)
    if media_type in RAW_IMAGE_TYPES:
        return Upload(images=[raw], options=query)
    raise UnsupportedFormatError(
        "Unsupported Content-Type: send application/json, multipart/form-data, "
        "image/png, image/jpeg or application/dicom.",
        code="unsupported_media_type",
    )


def invalid_request(error: ValidationError) -> MalformedInputError:
    """Name the fields, never echo their values (they hold image data)."""
    if any(issue["type"] == "json_invalid" for issue in error.errors()):
        return MalformedInputError("The body is not valid JSON.", code="invalid_json")
    problems = [f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}" for issue in error.errors()]
    return MalformedInputError("Invalid request: " + "; ".join(problems), code="invalid_request")


def body_bytes(body: str, is_base64_encoded: bool | None) -> bytes:
    if not is_base64_encoded:
        return body.encode("utf-8", errors="surrogateescape")
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as error:
        raise MalformedInputError("The request body is not valid base64.", code="invalid_base64") from error


def _conflicting_patients() -> ConflictingRequestError:
    return ConflictingRequestError(
        "The request names two different patients (query, body or form fields): send one 'patient'.",
        code="conflicting_patient",
    )


def _with_query(query: PredictOptions, body_options: dict) -> PredictOptions:
    # A record stored under the wrong patient (or a query's patient silently dropped by a body's null) is worse
    # than a refused request.
    if query.patient is not None and "patient" in body_options and query.patient != body_options["patient"]:
        raise _conflicting_patients()
    try:
        return PredictOptions(**{**query.model_dump(exclude_unset=True), **body_options})
    except ValidationError as error:
        raise invalid_request(error) from None


def _read_json(raw: bytes, query: PredictOptions) -> Upload:
    try:
        request = PredictRequest.model_validate_json(raw)
    except ValidationError as error:
        raise invalid_request(error) from None
    _refuse_repeated_patient_keys(raw)
    options = _with_query(query, request.model_dump(exclude_unset=True))
    if request.images is not None:
        return Upload(images=[decode_base64(image) for image in request.images], is_study=True, options=options)
    return Upload(images=[decode_base64(request.image or "")], options=options)


def _refuse_repeated_patient_keys(raw: bytes) -> None:
    """``{"patient": "A", ..., "patient": "B"}``: JSON parsers keep the last, which would store the scan under B.

    A byte count rules it out almost always; only a body that may hold it (two ``"patient"`` strings, or a
    ``\\u`` escape that could spell one) is parsed a second time, keeping every key.
    """
    if raw.count(b'"patient"') < 2 and b"\\u" not in raw:
        return

    def check(pairs: list[tuple[str, object]]) -> dict:
        if len({str(value) for key, value in pairs if key == "patient"}) > 1:
            raise _conflicting_patients()
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=check)
    except (ValueError, RecursionError):  # what pydantic's parser took but Python's does not (e.g. deep nesting)
        raise MalformedInputError("The body is not valid JSON.", code="invalid_json") from None


def _read_multipart(content_type: str, raw: bytes, query: PredictOptions) -> Upload:
    """The original Flask app's contract: ``multipart/form-data`` with a ``file`` field."""
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", errors="replace")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    try:
        boundary = parser.parsebytes(header, headersonly=True).get_boundary()
        if len(content_type) > MAX_PART_HEADER_BYTES:
            raise MalformedInputError("The Content-Type header is too long.", code="invalid_multipart")
        if boundary:
            _check_form_shape(raw, boundary.encode("latin-1", errors="replace"))
        message = parser.parsebytes(header + raw)
        if not message.is_multipart():
            raise MalformedInputError("The multipart body could not be parsed.", code="invalid_multipart")
        files: list[bytes] = []
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):  # None: a part that is itself multipart
                payload = b""
            if name == "file":
                files.append(payload)
            elif name in PredictOptions.model_fields:
                value = payload.decode("utf-8", errors="replace").strip()
                if name not in fields:
                    fields[str(name)] = value
                elif name == "patient" and fields[name] != value:
                    raise _conflicting_patients()
    except (RecursionError, LookupError, ValueError, TypeError, AttributeError, email.errors.MessageError) as error:
        # The email package's header parser recurses on nested comments: "((((...".
        raise MalformedInputError("The multipart body could not be parsed.", code="invalid_multipart") from error
    if not files:
        raise MalformedInputError("The form has no 'file' field.", code="missing_file")
    return Upload(images=files, is_study=len(files) > 1, options=_with_query(query, fields))


def _check_form_shape(raw: bytes, boundary: bytes) -> None:
    """Count the parts and bound their header blocks before the email parser sees the body: it
    takes seconds per ten thousand parts, and a study needs at most 64 files plus the options."""
    delimiters = re.finditer(rb"(?:\A|\n)--" + re.escape(boundary), raw)
    for count, delimiter in enumerate(delimiters):
        if count > MAX_FORM_PARTS:  # the last delimiter closes the form: count + 1 delimiters, count parts
            raise PayloadTooLargeError(f"A form may hold at most {MAX_FORM_PARTS} parts.", code="too_many_parts")
        head = raw[delimiter.end() : delimiter.end() + MAX_PART_HEADER_BYTES]
        ends_in_reach = b"\n\r\n" in head or b"\n\n" in head or len(head) < MAX_PART_HEADER_BYTES
        if not head.startswith(b"--") and not ends_in_reach:
            raise MalformedInputError(
                f"A form part's headers are longer than {MAX_PART_HEADER_BYTES // 1024} KB.", code="invalid_multipart"
            )


def _not_null(schema: dict) -> dict:
    """A form field is text, never JSON's null (the word "null" is a value): a field left out is absent."""
    branches = [branch for branch in schema.get("anyOf", []) if branch != {"type": "null"}]
    if len(branches) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**rest, **branches[0]}


def document_predict_body(document: dict) -> dict:
    """Add ``POST /predict``'s body to an OpenAPI document: read by hand in three framings, it is
    invisible to Powertools. Its models go to ``components``; the query parameters get their full schema
    (Powertools writes ``string`` for an optional integer)."""
    operation = document["paths"]["/predict"]["post"]
    options = PredictOptions.model_json_schema()["properties"]
    for parameter in operation.get("parameters", []):
        parameter["schema"] = options[parameter["name"]]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    request = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(request.pop("$defs", {}))
    schemas["PredictRequest"] = request
    binary = {"type": "string", "format": "binary", "minLength": 1}  # an empty file is no image
    form_options = {name: _not_null(schema) for name, schema in options.items() if name != "window"}
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "array", "items": binary, "minItems": 1, "description": "One slice, or a study's slices"},
            **form_options,
        },
    }
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {"schema": form},
            **{media_type: {"schema": binary} for media_type in sorted(RAW_IMAGE_TYPES)},
        },
    }
    return document
