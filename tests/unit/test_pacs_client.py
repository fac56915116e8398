"""``lungscan pacs``'s own logic, without a PACS: what a STOW answer means, the command line's rules. The round trip
itself runs against a real Orthanc (tests/integration/test_pacs.py)."""

from __future__ import annotations

import pydicom
import pytest
import requests

from lungscan_client.cli import main
from lungscan_client.pacs import PacsError, round_trip, store
from lungscan_client.pacs_command import since_date


class SilentPacs:
    """A PACS that answers STOW 200 with no body (allowed) and holds only the UIDs in ``holds``."""

    def __init__(self, holds: set[str]) -> None:
        self.holds = holds

    def store_instances(self, datasets, study_instance_uid=None):
        return pydicom.Dataset()

    def search_for_instances(self, study_uid, search_filters):
        return [{}] if search_filters["SOPInstanceUID"] in self.holds else []


def results() -> list[pydicom.Dataset]:
    report, image = pydicom.Dataset(), pydicom.Dataset()
    report.SOPInstanceUID, image.SOPInstanceUID = "2.25.1", "2.25.2"
    return [report, image]


def test_an_empty_stow_answer_is_checked_with_the_pacs():
    assert [item["kind"] for item in store(SilentPacs({"2.25.1", "2.25.2"}), "1.2", results())] == ["sr", "key_image"]
    with pytest.raises(PacsError) as missing:
        store(SilentPacs({"2.25.1"}), "1.2", results())
    assert missing.value.code == "stow_refused" and missing.value.message == "the PACS did not store the key image"


def test_an_answer_of_an_unexpected_shape_is_a_failure_in_words_not_a_traceback():
    class OddPacs:
        def search_for_series(self, study_uid, fields):
            raise ValueError("Response message has unexpected media type: 1.2.840.99 was ...")

    outcome = round_trip(OddPacs(), "1.2.840.99", classify=lambda paths: {}, results=lambda answer: [])
    assert outcome.error is not None and outcome.error.code == "unexpected_answer"
    assert "1.2.840.99" not in outcome.error.message  # the study's UID is not echoed from the error text


def test_a_timeout_or_a_refusal_reads_plainly():
    class DownPacs:
        def __init__(self, error):
            self.error = error

        def search_for_series(self, study_uid, fields):
            raise self.error

    refused = requests.HTTPError(response=requests.Response())
    refused.response.status_code = 403
    for error, code in ((requests.Timeout(), "pacs_timeout"), (refused, "pacs_unauthorized")):
        outcome = round_trip(DownPacs(error), "1.2", classify=lambda paths: {}, results=lambda answer: [])
        assert outcome.error is not None and outcome.error.code == code


@pytest.mark.parametrize(
    "argv",
    [
        ["pacs", "--dicomweb", "http://127.0.0.1:8042/dicom-web", "--api", "http://127.0.0.1:5001"],  # no study
        ["pacs", "--dicomweb", "http://127.0.0.1:1", "--api", "http://127.0.0.1:2", "--since", "yesterday"],
        ["pacs", "--dicomweb", "http://pacs.example.org/dicom-web", "--study", "1.2", "--api", "https://a.example"],
        ["pacs", "--dicomweb", "http://127.0.0.1:1", "--study", "1.2", "--api", "https://a.example", "--password", "x"],
        ["pacs", "--dicomweb", "http://127.0.0.1:1", "--study", "1.2", "--since", "2026-01-01", "--api", "https://a"],
    ],
)
def test_usage_errors_exit_2(argv, capsys, monkeypatch):
    monkeypatch.delenv("LUNGSCAN_DICOMWEB_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_since_takes_a_date_in_either_form(capsys):

    assert since_date("2026-12-01") == since_date("20261201") == "20261201"
