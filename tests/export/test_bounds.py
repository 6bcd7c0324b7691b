"""Every export type states the KL it should give; a measured KL above it is a warning that says what to try."""
from kdistill.commands import args as cli_args
from kdistill.export.bounds import EXPECTED_KL, NEXT_TRY, kind_of, kl_warning


def test_every_type_has_a_bound_and_a_next_step():
    kinds = {*cli_args.GGUF_TYPES, *cli_args.INT_SCHEMES}
    assert set(EXPECTED_KL) == kinds == set(NEXT_TRY)
    assert EXPECTED_KL["F32"] < EXPECTED_KL["F16"] < EXPECTED_KL["Q8_0"] < EXPECTED_KL["Q5_0"] < EXPECTED_KL["Q4_0"]
    assert EXPECTED_KL["int4"] <= EXPECTED_KL["Q4_0"]  # Q4_0's rule is one of int4's candidates


def test_warning_only_above_the_bound():
    assert kind_of("gguf", "Q4_0") == "Q4_0" and kind_of("int4", "F16") == "int4"
    assert kl_warning("int4", 0.3) is None
    text = kl_warning("int4", 1.53)
    assert text.startswith("warning:") and "1.53" in text and "<= 0.6" in text and "--max-bits" in text
