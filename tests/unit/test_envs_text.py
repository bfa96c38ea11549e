"""The `exact_match` and `multiple_choice` environments against realistic model outputs."""

from __future__ import annotations

import pytest

from rollouts.envs import ExactMatchEnvironment, MultipleChoiceEnvironment
from rollouts.envs.text import extract_choice, normalize_text, option_texts
from rollouts.errors import VerifierError

EXACT = ExactMatchEnvironment()
CHOICE = MultipleChoiceEnvironment()


def response(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def row(expected: object, **extra: object) -> dict:
    return {"responses_create_params": {"input": "q"}, "expected_answer": expected, **extra}


# ---- exact_match ------------------------------------------------------------------------------------------------

EXACT_CASES = [
    # (model output, expected, reward)
    ("Paris", "Paris", 1.0),
    ("  paris.  ", "Paris", 1.0),
    ('"Paris"', "paris", 1.0),
    ("The capital of France is Paris, a city on the Seine.\n\nAnswer: Paris", "Paris", 1.0),
    ("Let me recall the author... it was written in 1813.\n**Answer:** Jane   Austen.", "jane austen", 1.0),
    (r"The element is $\boxed{\text{Helium}}$.", "helium", 1.0),
    ("<think>maybe Lyon? no.</think>Answer: Paris", "Paris", 1.0),
    ("Answer: ‘Mercury’", "Mercury", 1.0),
    ("Answer: 1945", 1945, 1.0),
    ("Answer: H2O", ["water", "H2O"], 1.0),
    ("Answer: Lyon", "Paris", 0.0),
    ("Paris, I think", "Paris", 0.0),
    ("The capital of France is Paris.", "Paris", 0.0),  # no Answer: line: the whole text must match
    ("Answer: Pariss", "Paris", 0.0),
    ("", "Paris", 0.0),
    ("Answer: Jane Austin", "Jane Austen", 0.0),
]


@pytest.mark.parametrize(("text", "expected", "reward"), EXACT_CASES)
def test_exact_match(text: str, expected: object, reward: float) -> None:
    result = EXACT.score(row(expected), response(text))
    assert result.reward == reward, result.extra


def test_exact_match_extras_and_missing_key() -> None:
    assert EXACT.score(row("Paris"), response("Answer: Paris.")).extra == {"extracted_answer": "Paris."}
    assert EXACT.score(row("Paris"), response("")).extra == {"extracted_answer": None}
    with pytest.raises(VerifierError, match="'expected_answer'"):
        EXACT.score({"responses_create_params": {"input": "q"}}, response("Paris"))


def test_normalize_text() -> None:
    assert normalize_text('  "**The  Hobbit**". ') == "the hobbit"
    assert normalize_text("$x$") == "x"


# ---- multiple_choice --------------------------------------------------------------------------------------------

MMLU_COT = """Let's analyze each option.
(A) Mitochondria produce ATP — true, but the question asks about protein synthesis.
(B) Ribosomes are the site of protein synthesis.
(C) The Golgi apparatus modifies proteins but does not synthesize them.
(D) Lysosomes digest waste.

The answer is B."""

GPQA_COT = r"""The reaction proceeds via an SN2 mechanism, so the stereocenter is inverted.
Option A keeps the configuration, option C is a racemate, option D is the elimination product.
Therefore, the correct answer is $\boxed{B}$."""

CHOICE_CASES = [
    # (model output, expected, reward)
    (MMLU_COT, "B", 1.0),
    (MMLU_COT, "A", 0.0),
    (GPQA_COT, "B", 1.0),
    ("Answer: C", "C", 1.0),
    ("**Answer: (D)**", "D", 1.0),
    ("After eliminating the others, the best choice is (C).", "C", 1.0),
    ("The correct option is E because the others fail.", "E", 1.0),
    (r"Final answer: $\boxed{\text{(A)}}$", "A", 1.0),
    ("Reasoning...\n\nC", "C", 1.0),
    ("Reasoning...\n**J.**", "J", 1.0),
    ("I think the answer is I.", "I", 1.0),
    (
        "The answer is A. Option (B) is a distractor because it confuses cause and effect.",
        "A",
        1.0,
    ),  # strong beats weak
    ("At first I thought the answer is A, but re-reading the passage, the answer is C.", "C", 1.0),  # last wins
    ("Answer: C", "(c)", 1.0),
    ("I believe that none of these is right.", "B", 0.0),
    ("The answer is D.", "B", 0.0),
]


@pytest.mark.parametrize(("text", "expected", "reward"), CHOICE_CASES)
def test_multiple_choice(text: str, expected: str, reward: float) -> None:
    result = CHOICE.score(row(expected), response(text))
    assert result.reward == reward, result.extra


def test_choice_extraction_details() -> None:
    assert extract_choice("I think it's B") is None  # no strong or weak signal: "I" is a pronoun, B is not on a line
    assert extract_choice("The answer is I think C") is None
    assert extract_choice("nothing here") is None
    assert extract_choice("Answer:\nC") == "C"


OPTIONS_LIST = [{"A": "Mitochondria"}, {"B": "Ribosome"}, {"C": "Golgi apparatus"}, {"D": "Lysosome"}]
OPTIONS_DICT = {"A": "Mitochondria", "B": "Ribosome", "C": "Golgi apparatus", "D": "Lysosome"}


@pytest.mark.parametrize("options", [OPTIONS_LIST, OPTIONS_DICT, list(OPTIONS_DICT.values())])
def test_expected_option_text_maps_to_its_letter(options: object) -> None:
    assert option_texts(options)["B"] == "Ribosome"
    assert CHOICE.score(row("Ribosome", options=options), response(MMLU_COT)).reward == 1.0
    assert CHOICE.score(row("lysosome", options=options), response(MMLU_COT)).reward == 0.0


def test_answer_given_as_option_text() -> None:
    result = CHOICE.score(row("B", options=OPTIONS_LIST), response("The answer is Ribosome."))
    assert result.reward == 1.0
    assert result.extra == {"extracted_answer": "B"}


def test_unmappable_expected_answer_is_a_verifier_error() -> None:
    with pytest.raises(VerifierError, match="neither a letter"):
        CHOICE.score(row("Nucleus", options=OPTIONS_LIST), response("Answer: B"))
    with pytest.raises(VerifierError, match="expected_answer"):
        CHOICE.score({"responses_create_params": {"input": "q"}}, response("Answer: B"))
