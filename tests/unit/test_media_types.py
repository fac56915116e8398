"""Every raw body type the handler accepts reaches it base64-encoded, on AWS and in the local stack.

API Gateway hands a body whose type is not in BinaryMediaTypes to Lambda as text: image bytes
arrive mangled (a raw TIFF answered "No Cancer Detected" for a malignant slice).
"""

from __future__ import annotations

from cfnlint.decode import decode

from infrastructure.emulation import BINARY_MEDIA_TYPES, REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"


def template_binary_media_types() -> set[str]:
    parsed, matches = decode(str(TEMPLATE))
    assert not matches, matches
    # CloudFormation writes "/" as "~1" in BinaryMediaTypes.
    return {
        value.replace("~1", "/") for value in parsed["Resources"]["ClassifierApi"]["Properties"]["BinaryMediaTypes"]
    }


def test_every_raw_type_the_handler_accepts_is_binary_in_the_template(app_module):
    from api_body import RAW_IMAGE_TYPES

    binary = template_binary_media_types()
    assert RAW_IMAGE_TYPES | {"multipart/form-data"} <= binary


def test_the_local_stack_uses_the_templates_binary_types():
    assert template_binary_media_types() == BINARY_MEDIA_TYPES
