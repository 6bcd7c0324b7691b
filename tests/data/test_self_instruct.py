"""Self-instruct: requests from seeds, replies parsed, new instructions deduplicated against seeds and each other."""
import pytest

from kdistill.config.generation import SelfInstructConfig
from kdistill.data.self_instruct import parse_instruction, requests, select

SEEDS = ["Write a short poem about the sea at night.", "Explain why leaves change colour in autumn.",
         "Give three tips for learning to cook."]


def test_requests_show_seeds_and_are_reproducible():
    cfg = SelfInstructConfig(num_instructions=3, examples_per_request=2, oversample=2.0)
    asks = requests(SEEDS, cfg, seed=1)
    assert len(asks) == 6 and asks[0].text.count("\n1. ") == 1 and "2. " in asks[0].text
    assert [a.text for a in asks] == [a.text for a in requests(SEEDS, cfg, seed=1)]


@pytest.mark.parametrize("reply, want", [
    ("4. Describe a rainy day in a city.\nMore text", "Describe a rainy day in a city."),
    ("Task: List three uses of salt.", "List three uses of salt."),
    ('  "Write a limerick about a cat."', "Write a limerick about a cat."),
    ("\n\n- Name two planets.", "Name two planets."),
    ("Hello", None),
    ("", None),
])
def test_parse_instruction(reply, want):
    assert parse_instruction(reply) == want


def test_select_drops_seed_copies_duplicates_and_surplus():
    cfg = SelfInstructConfig(num_instructions=2, max_similarity=0.7)
    candidates = ["Write a short poem about the sea at night!", None, "Describe a rainy day in a city.",
                  "describe a rainy day in a city", "List three uses of salt.", "Name two planets."]
    kept, dropped = select(candidates, SEEDS, cfg)
    assert kept == ["Describe a rainy day in a city.", "List three uses of salt."]
    assert dict(dropped) == {"copies_seed": 1, "unusable": 1, "duplicate": 1, "surplus": 1}
