"""The `math` environment against realistic model outputs, plus property tests for numeric equivalence."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts.envs import MathEnvironment, VerifyResult
from rollouts.envs.math_env import answers_match, extract_answer, normalize
from rollouts.errors import VerifierError

ENV = MathEnvironment()


def response(text: str, reasoning: str | None = None) -> dict:
    output: list[dict] = []
    if reasoning:
        output.append({"type": "reasoning", "summary": [{"type": "summary_text", "text": reasoning}]})
    output.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
    return {"output": output}


def score(text: str, expected: object, key: str = "expected_answer") -> VerifyResult:
    return ENV.score({"responses_create_params": {"input": "q"}, key: expected}, response(text))


COT_QUADRATIC = r"""We need to solve $x^2 - 5x + 6 = 0$.

Factoring, we look for two numbers whose product is $6$ and whose sum is $-5$: these are $-2$ and $-3$.
So $(x-2)(x-3) = 0$, which gives $x = 2$ or $x = 3$.

The question asks for the sum of the roots. By Vieta's formulas, the sum is $-\frac{b}{a} = 5$.

Checking: $2 + 3 = 5$. ✓

Therefore, the sum of the roots is $\boxed{5}$."""

COT_PROBABILITY = r"""Let's count the outcomes. Rolling two fair dice gives $6 \times 6 = 36$ equally likely outcomes.
The pairs summing to 7 are $(1,6), (2,5), (3,4), (4,3), (5,2), (6,1)$: 6 of them.

So the probability is $\frac{6}{36}$, which simplifies to

$$\boxed{\dfrac{1}{6}}$$"""

COT_GSM8K = """Natalia sold 48 clips in April.
In May she sold half as many: 48 / 2 = 24 clips.
Altogether she sold 48 + 24 = 72 clips in April and May.
The answer is 72."""

COT_THINK = r"""<think>
Hmm, 17 * 23... 17*20 = 340, 17*3 = 51, so 391. Wait, let me double check: 391 / 17 = 23. Yes.
Maybe the answer is \boxed{390}? No, that was an arithmetic slip.
</think>
The product is $17 \times 23 = 391$, so the answer is $\boxed{391}$."""

COT_NESTED = r"""Rationalising the denominator:
$$\frac{1}{\sqrt{2}} = \frac{\sqrt{2}}{2}.$$
Hence the exact value is $\boxed{\frac{\sqrt{2}}{2}}$."""

COT_TRUNCATED = r"""First we compute the partial sums, giving $\boxed{12}$ for the first part.
For the second part the total is \boxed{\frac{7}{"""  # cut off by max_tokens mid-box


POSITIVE = [
    # (model output, expected answer)
    (COT_QUADRATIC, "5"),
    (COT_PROBABILITY, "1/6"),
    (COT_PROBABILITY, r"\frac{1}{6}"),
    (COT_GSM8K, "72"),
    (COT_GSM8K, 72),
    (COT_THINK, "391"),
    (COT_NESTED, r"\frac{\sqrt{2}}{2}"),
    (COT_NESTED, r"\frac{1}{\sqrt{2}}"),
    (COT_NESTED, "0.7071067811865476"),
    (r"The probability is $\boxed{0.5}$.", "1/2"),
    (r"So $p = \boxed{\frac{1}{2}}$.", "0.5"),
    (r"Thus the answer is $\boxed{\dfrac12}$.", ".5"),
    (r"Final answer: \boxed{.5}", r"\frac12"),
    (r"In total the company made $\boxed{1,000}$ sales.", "1000"),
    (r"The population is $\boxed{1{,}000{,}000}$.", "1000000"),
    (r"There are \boxed{1\,000} marbles.", "1000"),
    (r"So $x = \boxed{3.0}$.", "3"),
    (r"Hence $\boxed{3}$.", 3.0),
    (r"The slope is $\boxed{-\frac{3}{4}}$.", "-0.75"),
    (r"The slope is $\boxed{-\dfrac{3}{4}}$.", r"\frac{-3}{4}"),
    (r"The discount is $\boxed{50\%}$.", "50"),
    (r"The discount is $\boxed{50\%}$.", "0.5"),
    (r"The rate is \boxed{0.25}.", r"25\%"),
    (r"The length of the side is $\boxed{12\text{ cm}}$.", "12"),
    (r"The area is $\boxed{24 \text{ cm}^2}$.", "24"),
    (r"The angle measures $\boxed{30^\circ}$.", "30"),
    (r"The angle measures $\boxed{45^{\circ}}$.", "45°"),
    (r"So the diagonal is $\boxed{2\sqrt{2}}$.", r"\sqrt{8}"),
    (r"The answer is $\boxed{\sqrt{12}}$", r"2\sqrt3"),
    (r"We get $\boxed{\left( 3, -\frac{1}{2} \right)}$.", r"(3,-0.5)"),
    (r"The solution set is $\boxed{[2, 5)}$.", "[2,5)"),
    (r"The domain is $\boxed{(-\infty, 1) \cup (2, \infty)}$.", r"(-\infty,1)\cup(2,\infty)"),
    (r"The roots are $\boxed{3, 1}$.", "1, 3"),
    (r"Simplifying, $\boxed{1 + x}$.", "x+1"),
    (r"Expanding gives $\boxed{(x-1)(x+1)}$.", "x^2-1"),
    (r"So the day is $\boxed{\text{Monday}}$.", "monday"),
    (r"Solving, $\boxed{x = 7}$.", "7"),
    (r"The cost is $\boxed{\$18.50}$.", "18.5"),
    (r"Therefore \fbox{42} is the answer.", "42"),
    (r"Therefore the result is \boxed {13}.", "13"),
    (r"We find $\boxed{10^{3}}$ ways.", "1000"),
    (r"In scientific notation: $\boxed{1.5 \times 10^{3}}$.", "1500"),
    (r"She ran $\boxed{2\frac{1}{2}}$ miles.", "2.5"),
    (r"The circumference is $\boxed{\pi r^2}$", r"r^2\pi"),
    (COT_TRUNCATED, "12"),  # the cut-off box is skipped; the last complete one counts
    ("After working it out, we get 1,234 apples left over.", "1234"),
    ("So the final answer is: **-17**", "-17"),
    ("Answer: 3/4", "0.75"),
    ("The answer is $\\frac{7}{8}$.", "0.875"),
    (r"$\boxed{5}$", "#### 5"),  # GSM8K-style reference
    ("He has 18 dollars left.\n#### 18", "Natalia sold 48/2 = 24 clips.\n#### 18"),
]

NEGATIVE = [
    (COT_QUADRATIC, "6"),
    (COT_PROBABILITY, "1/36"),
    (COT_THINK, "390"),  # only the final box counts, not the one inside <think>
    (r"The probability is $\boxed{0.5}$.", "0.05"),
    (r"So $\boxed{0.333}$.", "1/3"),  # decimals are exact: no rounding tolerance for rationals
    (r"So $x = \boxed{3.01}$.", "3"),
    (r"The slope is $\boxed{\frac{3}{4}}$.", "-0.75"),
    (r"The interval is $\boxed{(2, 5)}$.", "[2,5)"),  # open vs half-open
    (r"The point is $\boxed{(1, 3)}$.", "(3,1)"),  # tuples are ordered
    (r"So $\boxed{x + 2}$.", "x+1"),
    (r"So $\boxed{2x}$.", "x^2"),
    (r"$\boxed{\sqrt{2}}$", "1.414"),
    ("I could not determine the value.", "7"),
    ("", "7"),
    (r"The answer is $\boxed{}$", "7"),
    (r"So the answer is $\boxed{\text{no}}$.", "yes"),
    (r"The answer is $\boxed{1000}$", "100"),
    (r"$\boxed{50}$", "0.5"),  # without a % sign 50 is fifty
    ("x-5 gives 7-3", "-3"),  # a binary minus is not a sign
    (r"Therefore $\boxed{\frac{1}{0}}$", "0"),
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_correct_answers_score_one(text: str, expected: object) -> None:
    result = score(text, expected)
    assert result.reward == 1.0, result.extra


@pytest.mark.parametrize(("text", "expected"), NEGATIVE)
def test_wrong_answers_score_zero(text: str, expected: object) -> None:
    result = score(text, expected)
    assert result.reward == 0.0, result.extra


def test_extras_name_both_answers() -> None:
    result = score(COT_PROBABILITY, "1/6")
    assert result.extra == {"extracted_answer": r"\dfrac{1}{6}", "expected_answer": "1/6"}
    missing = score("no numbers here at all", "7")
    assert missing.reward == 0.0
    assert missing.extra == {"extracted_answer": None, "expected_answer": "7"}


def test_answer_key_is_a_fallback_and_missing_key_is_a_verifier_error() -> None:
    assert score("The answer is 4.", "4", key="answer").reward == 1.0
    with pytest.raises(VerifierError, match="expected_answer"):
        ENV.score({"responses_create_params": {"input": "q"}}, response("42"))


def test_extraction_picks_the_final_answer() -> None:
    assert extract_answer(r"first \boxed{1} then \boxed{\frac{a}{b+\{c\}}}") == r"\frac{a}{b+\{c\}}"
    assert extract_answer("Answer: 12 apples") == "12 apples"
    assert extract_answer("The total is 3.25.") == "3.25"
    assert extract_answer("The answer is that she keeps 12 of them in the basket at home.") == "12"
    assert extract_answer("x-5 gives 7-3") == "3"


def test_normalize_strips_presentation_only() -> None:
    assert normalize(r"$\left( 1, 2 \right)$") == "(1,2)"
    assert normalize(r"\text{ 5 }") == "5"
    assert normalize("1{,}000") == "1000"
    assert normalize(r"\dfrac{1}{2}") == r"\frac{1}{2}"


async def test_verify_is_the_async_face_of_score() -> None:
    row = {"responses_create_params": {"input": "q"}, "expected_answer": "5"}
    result = await ENV.verify(row, response(COT_QUADRATIC), http=None)
    assert result.reward == 1.0
    assert ENV.remote is False
    assert await ENV.seed_session(row, None) is None
    with pytest.raises(VerifierError, match="no tools"):
        await ENV.call_tool("calculate", "{}", None, None)


# ---- properties -------------------------------------------------------------------------------------------------

fractions = st.builds(
    Fraction, st.integers(min_value=-10_000, max_value=10_000), st.integers(min_value=1, max_value=1_000)
)


def spellings(value: Fraction) -> list[str]:
    sign = "-" if value < 0 else ""
    num, den = abs(value.numerator), value.denominator
    forms = [
        f"{value.numerator}/{den}",
        f"{sign}\\frac{{{num}}}{{{den}}}",
        f"{sign}\\dfrac{{{num}}}{{{den}}}",
        f"\\frac{{{value.numerator}}}{{{den}}}",
        f"${sign}\\tfrac{{{num}}}{{{den}}}$",
    ]
    if den == 1:
        forms += [str(value.numerator), f"{value.numerator}.0", f"{value.numerator:,}"]
    d = den
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal
        decimal = f"{float(value):.12f}".rstrip("0").rstrip(".")
        forms += [decimal, decimal + ("000" if "." in decimal else ".000")]
    return forms


@settings(max_examples=150, deadline=None, database=None)
@given(fractions, st.data())
def test_every_spelling_of_a_fraction_is_equal(value: Fraction, data: st.DataObject) -> None:
    forms = spellings(value)
    a = data.draw(st.sampled_from(forms))
    b = data.draw(st.sampled_from(forms))
    assert answers_match(a, b), (a, b)
    assert score(f"so the result is $\\boxed{{{a}}}$.", b).reward == 1.0


@settings(max_examples=150, deadline=None, database=None)
@given(fractions, fractions)
def test_different_fractions_are_different(x: Fraction, y: Fraction) -> None:
    if x != y:
        assert not answers_match(spellings(x)[1], spellings(y)[0])


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    assert score(text, "3").reward in (0.0, 1.0)


def test_verify_cost_per_call() -> None:
    """Prints the per-verify cost for a typical ~500-char chain of thought (not a timed assertion: see bench/)."""
    body = (
        "Let me think step by step. The triangle has base 12 and height 7, so its area is "
        "$\\frac{1}{2}\\cdot 12 \\cdot 7 = 42$. We remove the inner square of side 3, of area 9, leaving "
        "$42 - 9 = 33$. The semicircle of radius 2 has area $2\\pi$ and lies outside the region, so it does not "
        "change the count. Double-checking the arithmetic once more: 42 - 9 = 33, which is consistent with the "
        "figure. Hence the shaded fraction of the bounding square of area 44 is "
    )
    cases = [
        ({"expected_answer": f"{k}/{k + 7}"}, response(body + f"$\\boxed{{\\dfrac{{{k}}}{{{k + 7}}}}}$."))
        for k in range(2000)
    ]
    normalize.cache_clear()
    start = time.perf_counter()
    for row, resp in cases:
        assert ENV.score(row, resp).reward == 1.0
    per_call = (time.perf_counter() - start) / len(cases) * 1e6
    print(f"\nmath verify: {per_call:.1f} us per call (~{len(body) + 30}-char answers, no cache hits)")
