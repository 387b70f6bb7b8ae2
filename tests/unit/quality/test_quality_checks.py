from __future__ import annotations

import pytest
from PIL import Image, ImageDraw
from synthetic_images import Pictures, image_record

from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.quality.checks import (
    DecodesCheck,
    FormatCheck,
    NearDuplicateCheck,
    NotBlankCheck,
    NsfwCheck,
    QualityScoreCheck,
    Sample,
    SizeCheck,
)
from airflow_provider_flux2.quality.decoding import decode_image


def sample(image_bytes: bytes | None, **record_fields) -> Sample:
    return Sample(image_record(**record_fields), decode_image(image_bytes))


# -- decodes -------------------------------------------------------------------------------------


def test_decodes_passes_a_whole_image_and_reports_what_it_found():
    verdict = DecodesCheck().verdict(sample(Pictures.encode(Pictures.scene(1))))

    assert verdict.passed
    assert verdict.value == {"format": "PNG", "width": 256, "height": 192}


def test_decodes_fails_truncated_bytes_with_the_decoder_error():
    data = Pictures.encode(Pictures.noise(1))

    verdict = DecodesCheck().verdict(sample(data[:4000]))

    assert not verdict.passed
    assert verdict.check == "decodes"
    assert "does not decode" in verdict.reason


# -- format --------------------------------------------------------------------------------------


def test_format_passes_when_the_bytes_are_what_was_asked_for():
    data = Pictures.encode(Pictures.scene(1), "jpeg")

    verdict = FormatCheck().verdict(sample(data, output_format="jpeg"))

    assert verdict.passed
    assert verdict.value == "jpeg"


def test_format_fails_a_jpeg_delivered_for_a_png_request():
    data = Pictures.encode(Pictures.scene(1), "jpeg")

    verdict = FormatCheck().verdict(sample(data, output_format="png"))

    assert not verdict.passed
    assert verdict.value == "jpeg"
    assert "expected PNG" in verdict.reason


# -- size ----------------------------------------------------------------------------------------


def test_size_passes_the_exact_requested_size():
    verdict = SizeCheck().verdict(sample(Pictures.encode(Pictures.scene(1, (256, 192)))))

    assert verdict.passed
    assert verdict.value == [256, 192]


@pytest.mark.parametrize("size", [(255, 192), (256, 193), (192, 256)])
def test_size_fails_any_other_size_even_by_one_pixel(size):
    verdict = SizeCheck().verdict(sample(Pictures.encode(Pictures.scene(1, size))))

    assert not verdict.passed
    assert verdict.value == list(size)
    assert "expected 256×192" in verdict.reason


# -- not_blank -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [Pictures.scene(1), Pictures.noise(2), Pictures.gradient()],
    ids=["scene", "noise", "gradient"],
)
def test_not_blank_passes_images_with_content(image):
    verdict = NotBlankCheck().verdict(sample(Pictures.encode(image)))

    assert verdict.passed, verdict.reason
    assert verdict.value["std"] > 4.0
    assert verdict.value["dominant_fraction"] < 0.98


def test_not_blank_fails_a_uniform_image_on_its_standard_deviation():
    verdict = NotBlankCheck().verdict(sample(Pictures.encode(Pictures.flat())))

    assert not verdict.passed
    assert verdict.value == {"std": 0.0, "dominant_fraction": 1.0}
    assert verdict.reason.startswith("near-uniform")


def test_not_blank_fails_a_flat_image_with_faint_jpeg_noise():
    faint = Pictures.perturbed(Pictures.flat((200, 40, 40)), amplitude=3)

    verdict = NotBlankCheck().verdict(sample(Pictures.encode(faint, "jpeg", quality=70), output_format="jpeg"))

    assert not verdict.passed
    assert verdict.value["std"] <= 4.0


def test_not_blank_fails_a_black_frame_with_a_caption_on_its_dominant_colour():
    # The blacked-out image a moderated run returns: high contrast text, but 99 % one colour.
    image = Pictures.flat((0, 0, 0))
    ImageDraw.Draw(image).text((4, 4), "content moderated", fill="white")

    verdict = NotBlankCheck().verdict(sample(Pictures.encode(image)))

    assert not verdict.passed
    assert verdict.value["std"] > 4.0
    assert verdict.value["dominant_fraction"] >= 0.98
    assert "one colour covers" in verdict.reason


def test_not_blank_thresholds_are_configurable():
    soft = Pictures.perturbed(Pictures.flat(), amplitude=12)  # std ≈ 7: not blank by default
    data = Pictures.encode(soft)

    assert NotBlankCheck().verdict(sample(data)).passed
    assert not NotBlankCheck(max_std=10.0).verdict(sample(data)).passed


def test_not_blank_measures_large_images_on_a_sample_without_smoothing_noise_away():
    # RGB noise has a grayscale std of ≈ 49. Averaging 2048² down to 512² (16 pixels each) would
    # flatten it to ≈ 12; a nearest-neighbour sample keeps the distribution.
    data = Pictures.encode(Pictures.noise(5, (2048, 2048)))

    verdict = NotBlankCheck().verdict(sample(data, width=2048, height=2048))

    assert verdict.passed
    assert verdict.value["std"] > 45


# -- nsfw ----------------------------------------------------------------------------------------


def test_nsfw_passes_unflagged_and_fails_flagged_images():
    data = Pictures.encode(Pictures.scene(1))

    clean = NsfwCheck().verdict(sample(data, nsfw=False))
    flagged = NsfwCheck().verdict(sample(data, nsfw=True))

    assert clean.passed and clean.value is False
    assert not flagged.passed and flagged.value is True
    assert flagged.reason == "flagged NSFW by the API"


# -- quality_score -------------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "passed"), [(0.9, True), (0.5, True), (0.49, False), (0.0, False)])
def test_quality_score_is_compared_with_the_minimum(score, passed):
    verdict = QualityScoreCheck().verdict(sample(b"", quality_score=score))

    assert verdict.passed is passed
    assert verdict.value == score


def test_quality_score_minimum_is_configurable():
    assert not QualityScoreCheck(min_score=0.95).verdict(sample(b"", quality_score=0.9)).passed


def test_a_missing_quality_score_passes_unless_required():
    assert QualityScoreCheck().verdict(sample(b"", quality_score=None)).passed
    required = QualityScoreCheck(required=True).verdict(sample(b"", quality_score=None))
    assert not required.passed
    assert "required" in required.reason


# -- near_duplicate ------------------------------------------------------------------------------


def judge(check: NearDuplicateCheck, images: list[Image.Image | None], eligible: list[bool] | None = None):
    samples = [sample(None if image is None else Pictures.encode(image), index=i) for i, image in enumerate(images)]
    prints = [check.fingerprint(s) if s.decoded.ok else None for s in samples]
    return check.verdicts([s.record for s in samples], prints, eligible or [True] * len(samples))


def test_near_duplicate_passes_different_images():
    verdicts = judge(NearDuplicateCheck(), [Pictures.scene(seed) for seed in range(6)])

    assert all(v.passed for v in verdicts), [v.reason for v in verdicts]
    assert all(v.value["distance"] > 8 for v in verdicts[1:])


def test_the_later_of_a_near_duplicate_pair_fails_and_names_the_earlier():
    base = Pictures.scene(7)
    images = [Pictures.scene(1), base, Pictures.scene(2), Pictures.perturbed(base, seed=3)]

    verdicts = judge(NearDuplicateCheck(), images)

    assert [v.passed for v in verdicts] == [True, True, True, False]
    assert verdicts[3].value["duplicate_of"] == 1
    assert verdicts[3].value["distance"] <= 8
    assert "near-duplicate of image 1" in verdicts[3].reason


def test_a_reencoded_copy_is_a_near_duplicate():
    base = Pictures.scene(8)
    jpeg_copy = decode_image(Pictures.encode(base, "jpeg", quality=60)).image

    verdicts = judge(NearDuplicateCheck(), [base, jpeg_copy])

    assert not verdicts[1].passed


def test_the_distance_threshold_is_configurable():
    base = Pictures.scene(9)
    images = [base, Pictures.reframed(base, margin=8)]
    distance = judge(NearDuplicateCheck(), images)[1].value["distance"]
    assert 0 < distance <= 8

    assert not judge(NearDuplicateCheck(max_distance=distance), images)[1].passed
    assert judge(NearDuplicateCheck(max_distance=distance - 1), images)[1].passed


def test_an_image_failing_other_checks_is_never_the_reference_of_a_duplicate():
    base = Pictures.scene(10)
    verdicts = judge(NearDuplicateCheck(), [base, Pictures.perturbed(base)], eligible=[False, True])

    assert verdicts[1].passed  # image 0 will be dropped; image 1 is the one to keep


def test_a_duplicate_is_not_a_reference_either_so_drift_chains_keep_both_ends():
    a = Pictures.scene(11)
    b = Pictures.perturbed(a, seed=1, amplitude=4)

    verdicts = judge(NearDuplicateCheck(), [a, b, Pictures.perturbed(b, seed=2, amplitude=4)])

    assert not verdicts[1].passed and verdicts[1].value["duplicate_of"] == 0
    assert not verdicts[2].passed and verdicts[2].value["duplicate_of"] == 0


def test_an_undecodable_image_fails_near_duplicate_as_not_measured():
    verdicts = judge(NearDuplicateCheck(), [Pictures.scene(1), None])

    assert not verdicts[1].passed
    assert verdicts[1].reason.startswith("not measured")


@pytest.mark.parametrize("name", ["dhash", "average_hash", "whash"])
def test_other_perceptual_hashes_can_be_chosen(name):
    base = Pictures.scene(12)

    verdicts = judge(NearDuplicateCheck(hash=name), [base, Pictures.scene(13), Pictures.perturbed(base)])

    assert [v.passed for v in verdicts] == [True, True, False]


def test_an_unknown_hash_is_refused_with_the_choices():
    with pytest.raises(FluxValidationError, match="phash"):
        NearDuplicateCheck(hash="md5")


# -- options -------------------------------------------------------------------------------------


def test_unknown_options_are_refused_naming_the_allowed_ones():
    with pytest.raises(FluxValidationError) as err:
        NotBlankCheck.from_options({"max_sd": 3})

    assert err.value.field == "checks.not_blank.max_sd"
    assert "max_std" in err.value.allowed


def test_a_check_without_options_says_so():
    with pytest.raises(FluxValidationError, match="no options"):
        NsfwCheck.from_options({"strict": True})
