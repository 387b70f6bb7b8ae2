from __future__ import annotations

import pytest
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.models import CheckVerdict
from airflow_provider_flux2.quality.checks import NotBlankCheck
from airflow_provider_flux2.quality.suite import DEFAULT_CHECKS, CheckSuite, check_image, check_images, run_checks

ALL = ["decodes", "format", "size", "not_blank", "nsfw", "near_duplicate", "quality_score"]


def verdicts_by_check(record) -> dict[str, CheckVerdict]:
    return {v.check: v for v in record.checks}


# -- configuration -------------------------------------------------------------------------------


def test_no_config_means_every_check_with_its_defaults():
    suite = CheckSuite.from_config()

    assert suite.names == ALL == list(DEFAULT_CHECKS)
    assert suite.as_config()[3] == {
        "check": "not_blank",
        "max_std": 4.0,
        "max_dominant_fraction": 0.98,
        "colour_tolerance": 8,
        "sample_side": 512,
    }


def test_a_suite_is_built_from_names_dicts_and_check_objects():
    suite = CheckSuite.from_config(
        ["decodes", {"check": "near_duplicate", "max_distance": 4}, NotBlankCheck(max_std=6.0)]
    )

    assert suite.names == ["decodes", "near_duplicate", "not_blank"]
    assert suite.checks[1].max_distance == 4
    assert suite.checks[2].max_std == 6.0


def test_as_config_round_trips():
    suite = CheckSuite.from_config([{"check": "quality_score", "min_score": 0.7, "required": True}, "size"])

    assert CheckSuite.from_config(suite.as_config()) == suite


@pytest.mark.parametrize(
    ("config", "field", "allowed"),
    [
        (["sharpness"], "checks", "one of decodes, format"),
        ([{"max_std": 3}], "checks", 'a "check" key'),
        ([42], "checks", "a check name"),
        ([{"check": "near_duplicate", "distance": 3}], "checks.near_duplicate.distance", "max_distance"),
        (["size", "size"], "checks", "at most once"),
    ],
)
def test_bad_config_is_refused_naming_what_is_allowed(config, field, allowed):
    with pytest.raises(FluxValidationError) as err:
        CheckSuite.from_config(config)

    assert err.value.field == field
    assert allowed in err.value.allowed


# -- running -------------------------------------------------------------------------------------


def test_a_batch_gets_every_verdict_in_suite_order_and_a_clear_pass_fail():
    base = Pictures.scene(20)
    items = [
        (image_record(0), Pictures.encode(Pictures.scene(21))),
        (image_record(1), Pictures.encode(Pictures.flat())),  # blank
        (image_record(2), Pictures.encode(base)),
        (image_record(3), Pictures.encode(Pictures.perturbed(base))),  # near-duplicate of 2
        (image_record(4, nsfw=True), Pictures.encode(Pictures.scene(22))),
        (image_record(5), Pictures.encode(Pictures.scene(23, (250, 192)))),  # wrong size
        (image_record(6), Pictures.encode(Pictures.scene(24), "jpeg")),  # wrong format
        (image_record(7), Pictures.encode(Pictures.scene(25))[:500]),  # truncated
        (image_record(8, quality_score=0.1), Pictures.encode(Pictures.scene(26))),
    ]

    result = CheckSuite.from_config().run(items)

    assert result.passed == [0, 2]
    assert result.failed == [1, 3, 4, 5, 6, 7, 8]
    assert not result.ok
    failing = {r.index: sorted(v.check for v in r.checks if not v.passed) for r in result.failures()}
    assert failing == {
        1: ["not_blank"],
        3: ["near_duplicate"],
        4: ["nsfw"],
        5: ["size"],
        6: ["format"],
        7: ["decodes", "format", "near_duplicate", "not_blank", "size"],
        8: ["quality_score"],
    }
    assert all([v.check for v in r.checks] == ALL for r in result.records)


def test_an_undecodable_image_still_gets_the_checks_that_need_no_pixels():
    result = CheckSuite.from_config().run([(image_record(0, nsfw=True, quality_score=0.9), b"garbage")])

    verdicts = verdicts_by_check(result.records[0])
    assert verdicts["size"].reason.startswith("not measured: the image is not in a format")
    assert verdicts["nsfw"].reason == "flagged NSFW by the API"
    assert verdicts["quality_score"].passed


def test_records_without_an_image_are_passed_through_unchecked():
    items = [
        (image_record(0, status="failed", uri=None, failure_code="CONTENT_MODERATED"), None),
        (image_record(1), Pictures.encode(Pictures.scene(1))),
        (image_record(2, status="dropped"), Pictures.encode(Pictures.flat())),
    ]

    result = CheckSuite.from_config(["decodes", "not_blank"]).run(items)

    assert result.unchecked == [0, 2]
    assert result.passed == [1]
    assert result.records[0] is items[0][0]
    assert result.records[2].checks == []


def test_checking_again_replaces_the_previous_verdicts():
    stale = image_record(0, checks=[CheckVerdict(check="not_blank", passed=False, reason="old")])

    result = CheckSuite.from_config(["not_blank"]).run([(stale, Pictures.encode(Pictures.scene(3)))])

    assert [(v.check, v.passed) for v in result.records[0].checks] == [("not_blank", True)]


def test_a_suite_reads_a_generator_one_image_at_a_time():
    consumed = []

    def items():
        for i in range(3):
            consumed.append(i)
            yield image_record(i), Pictures.encode(Pictures.scene(30 + i))

    result = CheckSuite.from_config(["decodes", "near_duplicate"]).run(items())

    assert consumed == [0, 1, 2]
    assert result.passed == [0, 1, 2]


# -- run_checks (for @task) ----------------------------------------------------------------------


def test_run_checks_reads_each_image_through_the_reader_and_returns_xcom_dicts():
    store = {
        "mem://0": Pictures.encode(Pictures.scene(40)),
        "mem://1": Pictures.encode(Pictures.flat()),
    }
    records = [image_record(0, uri="mem://0").to_xcom(), image_record(1, uri="mem://1")]

    out = run_checks(records, reader=store.__getitem__, checks=["decodes", {"check": "not_blank", "max_std": 2}])

    assert [type(r) for r in out] == [dict, dict]
    assert [[v["passed"] for v in r["checks"]] for r in out] == [[True, True], [True, False]]


def test_run_checks_fails_decodes_for_an_image_that_is_not_stored():
    def reader(uri: str) -> bytes:
        raise FileNotFoundError(uri)

    out = run_checks([image_record(0, uri="file:///gone.png"), image_record(1, uri=None)], reader=reader)

    for record in out:
        decodes = record["checks"][0]
        assert (decodes["check"], decodes["passed"]) == ("decodes", False)
        assert decodes["reason"] == "the image has no bytes (missing or empty)"


def test_run_checks_does_not_hide_storage_errors_that_are_not_missing_objects():
    def reader(uri: str) -> bytes:
        raise PermissionError("AccessDenied")

    with pytest.raises(PermissionError):
        run_checks([image_record(0)], reader=reader)


# -- check_image / check_images (bytes, for @task) -----------------------------------------------

SCENE = Pictures.encode(Pictures.scene(50))  # 256×192 PNG


def names(verdicts) -> list[str]:
    return [v.check for v in verdicts]


def failing(verdicts) -> list[str]:
    return [v.check for v in verdicts if not v.passed]


def test_check_image_judges_raw_bytes_against_the_expectations_given():
    verdicts = check_image(SCENE, width=256, height=192, output_format="png", nsfw=False, score=0.9)

    assert names(verdicts) == ["decodes", "format", "size", "not_blank", "nsfw", "quality_score"]
    assert all(isinstance(v, CheckVerdict) and v.passed for v in verdicts)
    assert verdicts[2].value == [256, 192]


def test_check_image_without_expectations_runs_only_the_checks_that_need_none():
    assert names(check_image(SCENE)) == ["decodes", "not_blank"]


@pytest.mark.parametrize(
    ("data", "kwargs", "fails", "reason"),
    [
        (Pictures.encode(Pictures.flat()), {}, ["not_blank"], "near-uniform"),
        (SCENE, {"width": 256, "height": 200}, ["size"], "is 256×192, expected 256×200"),
        (Pictures.encode(Pictures.scene(51), "jpeg"), {"output_format": "png"}, ["format"], "is JPEG, expected PNG"),
        (SCENE, {"nsfw": True}, ["nsfw"], "flagged NSFW by the API"),
        (SCENE, {"score": 0.1}, ["quality_score"], "score 0.1 < 0.5"),
        (SCENE[:400], {}, ["decodes", "not_blank"], "does not decode"),
        (b"", {}, ["decodes", "not_blank"], "has no bytes"),
    ],
)
def test_check_image_fails_bad_bytes_with_a_reason(data, kwargs, fails, reason):
    verdicts = check_image(data, **kwargs)

    assert failing(verdicts) == fails
    assert reason in next(v for v in verdicts if not v.passed).reason


def test_check_image_gives_the_verdicts_a_suite_gives_on_a_record():
    blank = Pictures.encode(Pictures.flat())
    record = image_record(0, width=256, height=192, output_format="png", nsfw=True, quality_score=0.3)
    suite = CheckSuite.from_config(["decodes", "format", "size", "not_blank", "nsfw", "quality_score"])

    from_record = suite.run([(record, blank)]).records[0].checks
    from_bytes = check_image(blank, width=256, height=192, output_format="png", nsfw=True, score=0.3)

    assert from_bytes == from_record


def test_check_image_takes_check_names_options_and_objects():
    verdicts = check_image(SCENE, checks=[{"check": "not_blank", "max_std": 200.0}, "decodes"])

    assert names(verdicts) == ["not_blank", "decodes"]
    assert failing(verdicts) == ["not_blank"]
    assert check_image(SCENE, checks=[NotBlankCheck(max_std=200.0)])[0].passed is False


def test_an_unscored_image_passes_quality_score_when_asked_for_unless_required():
    assert check_image(SCENE, checks=["quality_score"])[0].reason == "no score from the API"
    assert not check_image(SCENE, checks=[{"check": "quality_score", "required": True}])[0].passed


@pytest.mark.parametrize(
    ("checks", "kwargs", "field"),
    [
        (["size"], {}, "width"),
        (["size"], {"width": 256}, "height"),
        (["format"], {}, "output_format"),
        (["nsfw"], {}, "nsfw"),
    ],
)
def test_a_check_asked_for_without_what_it_compares_with_is_refused(checks, kwargs, field):
    with pytest.raises(FluxValidationError) as err:
        check_image(SCENE, checks=checks, **kwargs)

    assert err.value.field == field
    assert repr(checks[0]) in err.value.allowed


def test_check_images_finds_near_duplicates_among_raw_bytes():
    base = Pictures.scene(60)
    images = [
        Pictures.encode(base),
        Pictures.encode(Pictures.perturbed(base)),  # near-duplicate of 0
        Pictures.encode(Pictures.scene(61)),
        Pictures.encode(Pictures.flat()),
    ]

    results = check_images(images, width=256, height=192, output_format="png")

    assert [names(r) for r in results] == [["decodes", "format", "size", "not_blank", "near_duplicate"]] * 4
    assert [failing(r) for r in results] == [[], ["near_duplicate"], [], ["not_blank"]]
    assert results[1][-1].value["duplicate_of"] == 0


def test_check_images_takes_one_nsfw_flag_and_score_per_image():
    images = [SCENE, Pictures.encode(Pictures.scene(62)), Pictures.encode(Pictures.scene(63))]

    results = check_images(images, nsfw=[False, True, False], scores=[0.9, None, 0.2])

    assert [failing(r) for r in results] == [[], ["nsfw"], ["quality_score"]]


@pytest.mark.parametrize("kwargs", [{"nsfw": [False]}, {"scores": [0.5, 0.5, 0.5]}])
def test_check_images_refuses_per_image_values_that_do_not_match_the_images(kwargs):
    with pytest.raises(FluxValidationError, match="one entry per image"):
        check_images([SCENE, SCENE], **kwargs)
