"""Whole studies' core (lungscan/studies) and the local engine that runs template.yaml's state machine."""

from __future__ import annotations

import random

import pytest
from helpers import SERIES_UID, ct_like_image, ct_series, encode, localizer_dicom

from infrastructure.local_engine import LocalEngine, StateError, machine_definition, read_template
from lungscan.errors import PayloadTooLargeError
from lungscan.studies import plan
from lungscan.studies.ordering import RASTER_SERIES, order_slices, read_slice_tags
from lungscan.studies.summary import conclude, summarize

# ---------------------------------------------------------------- limits


def test_limits_are_checked_from_the_sizes_alone():
    plan.check_sizes([512 * 1024] * plan.MAX_FILES)  # 2,000 slices of a real series: fine
    with pytest.raises(PayloadTooLargeError) as error:
        plan.check_sizes([1] * (plan.MAX_FILES + 1))
    assert error.value.code == "too_many_slices"
    with pytest.raises(PayloadTooLargeError) as error:
        plan.check_sizes([plan.MAX_FILE_BYTES + 1])
    assert error.value.code == "payload_too_large"
    with pytest.raises(PayloadTooLargeError) as error:
        plan.check_sizes([plan.MAX_FILE_BYTES] * 33)  # 2.06 GiB
    assert error.value.code == "payload_too_large"


def test_study_ids_are_unguessable_and_checked():
    ids = {plan.new_study_id() for _ in range(100)}
    assert len(ids) == 100 and all(plan.is_study_id(value) for value in ids)
    assert not plan.is_study_id("../../etc") and not plan.is_study_id("short")
    assert plan.upload_key("A" * 32, 7) == f"studies/{'A' * 32}/00007"


# ---------------------------------------------------------------- reading order


def test_slices_go_by_position_then_instance_then_upload_order():
    by_z = [{"index": 0, "series": "1", "position": 10.0, "instance_number": 1}]
    by_z += [{"index": 1, "series": "1", "position": -5.0, "instance_number": 2}]
    by_instance = [{"index": 2, "series": "2", "position": None, "instance_number": 9}]
    by_instance += [{"index": 3, "series": "2", "position": 4.0, "instance_number": 3}]
    by_upload = [{"index": 5, "series": "3"}, {"index": 4, "series": "3"}]
    unreadable = [{"index": 6, "series": None, "error": {"code": "corrupt_image"}}]
    ordered = order_slices(unreadable + by_upload + by_instance + by_z)
    assert [item["index"] for item in ordered] == [1, 0, 3, 2, 4, 5, 6]


def test_a_refused_slice_without_position_does_not_undo_the_order():
    slices = [{"index": index, "series": "1", "position": float(-index), "instance_number": 1} for index in range(3)]
    slices.append({"index": 3, "series": "1", "position": None, "instance_number": None, "error": {"code": "x"}})
    assert [item["index"] for item in order_slices(slices)] == [2, 1, 0, 3]


def test_placing_tags_are_read_from_a_dicom_and_none_from_a_raster():
    (_, data), *_ = ct_series(1)
    tags = read_slice_tags(data, is_dicom=True)
    assert (tags.series, tags.instance_number, tags.position) == (SERIES_UID, 1, -300.0)
    assert tags.study_date == "2024-03-01" and tags.sop_instance_uid == f"{SERIES_UID}.1"
    assert read_slice_tags(encode(ct_like_image()), is_dicom=False).series == RASTER_SERIES
    assert read_slice_tags(b"DICM" * 40, is_dicom=True).series is None


# ---------------------------------------------------------------- summary


def _answered(index: int, probability: float, series: str = "1", tier: str = "clear") -> dict:
    return {
        "index": index,
        "name": f"{index:05d}",
        "series": series,
        "position": float(index),
        "instance_number": index + 1,
        "positive_probability": probability,
        "suspicious": tier != "clear",
        "uncertain": False,
        "tier": tier,
    }


def test_the_summary_counts_flagged_of_answered_and_ranks_the_most_suspicious():
    slices = [_answered(index, 0.1 * index, tier="suspicious" if index >= 7 else "clear") for index in range(10)]
    slices.append({"index": 10, "name": "00010", "series": None, "error": {"code": "corrupt_image"}})
    summary = summarize(order_slices(slices))
    assert (summary["flagged"], summary["total"], summary["failed"]) == (3, 10, 1)
    assert summary["tier"] == "suspicious" and summary["suspicious"] is True
    assert [item["index"] for item in summary["most_suspicious_slices"]] == [9, 8, 7, 6, 5]
    assert len(summary["positive_probabilities"]) == 10


def test_several_series_are_answered_per_series_and_a_study_of_only_errors_fails():
    slices = [_answered(0, 0.9, "A", "suspicious"), _answered(1, 0.2, "B"), _answered(2, 0.3, "B", "not_excluded")]
    status, _, summary, series = conclude(slices)
    assert status == "done" and summary["tier"] == "suspicious"
    assert [(item["series"], item["summary"]["tier"], item["summary"]["total"]) for item in series] == [
        ("A", "suspicious", 1),
        ("B", "not_excluded", 2),
    ]
    status, _, summary, series = conclude([{"index": 0, "name": "0", "series": None, "error": {"code": "x"}}])
    assert status == "failed" and summary["tier"] is None and summary["total"] == 0 and series == []


# ---------------------------------------------------------------- the local engine


def test_the_local_engine_runs_the_templates_definition_with_its_distributed_map():
    definition = machine_definition(read_template(), {"StudyBatchSize": 3, "StudyMaxConcurrency": 2})
    calls: list[dict] = []

    class Listing:  # what s3:listObjectsV2 hands the ItemReader
        def get_paginator(self, name):
            return self

        def paginate(self, **query):
            from datetime import UTC, datetime

            now = datetime.now(UTC)
            return [
                {"Contents": [{"Key": f"{query['Prefix']}{i:05d}", "Size": 10, "LastModified": now} for i in range(7)]}
            ]

        def put_object(self, **request):
            calls.append({"put": request["Key"]})

    def worker(event, context):
        calls.append({"batch": [item["Key"] for item in event["Items"]], "input": event["BatchInput"]})
        return {"slices": len(event["Items"])}

    def summary(event, context):
        calls.append({"summary": event})
        return {"status": "done"}

    engine = LocalEngine(
        definition, {"local:StudyWorkerFunction": worker, "local:StudySummaryFunction": summary}, Listing()
    )
    machine_input = {"bucket": "b", "prefix": "studies/x/", "study_id": "x", "model": None}
    output = engine.run(machine_input | {"results_bucket": "b", "results_prefix": "results/x/"}, "x")
    batches = [call for call in calls if "batch" in call]
    assert sorted(len(call["batch"]) for call in batches) == [1, 3, 3]  # ItemBatcher's MaxItemsPerBatch (3)
    assert all(call["input"] == machine_input for call in batches)  # BatchInput
    assert any(call.get("put", "").endswith("manifest.json") for call in calls)  # ResultWriter
    assert calls[-1]["summary"]["study_id"] == "x" and output == {"status": "done"}


def test_past_the_tolerated_failures_the_study_is_still_summarized():
    definition = machine_definition(read_template(), {"StudyBatchSize": 1})

    class Listing:
        def get_paginator(self, name):
            return self

        def paginate(self, **query):
            from datetime import UTC, datetime

            return [{"Contents": [{"Key": f"k{i}", "Size": 1, "LastModified": datetime.now(UTC)} for i in range(3)]}]

    def worker(event, context):
        raise RuntimeError("a worker bug")

    summarized = []
    handlers = {"local:StudyWorkerFunction": worker, "local:StudySummaryFunction": lambda e, c: summarized.append(e)}
    LocalEngine(definition, handlers, Listing()).run(
        {"bucket": "b", "prefix": "p", "study_id": "s", "model": None, "results_bucket": "b", "results_prefix": "r/"}
    )
    assert summarized and summarized[0]["study_id"] == "s"


def test_the_local_engine_refuses_what_it_does_not_implement():
    definition = {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 1, "End": True}}}
    with pytest.raises(NotImplementedError):
        LocalEngine(definition, {}, None).run({})
    failing = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "E", "Cause": "c"}}}
    with pytest.raises(StateError):
        LocalEngine(failing, {}, None).run({})


def test_shuffled_series_helper_keeps_positions():
    slices = ct_series(4)
    random.Random(0).shuffle(slices)
    assert sorted(z for z, _ in slices) == [-300.0, -297.5, -295.0, -292.5]
    assert localizer_dicom()[128:132] == b"DICM"
