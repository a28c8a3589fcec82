from promptflow.core import tool

from phi3course.evaluate import contains_answer
from phi3course.probe import keyword_match


@tool
def grade(answer: str, expected: str, kind: str = "facts") -> bool:
    """A held-out fact is right when the expected value appears in the answer (case and spacing ignored); a
    general-knowledge question when the answer has one of its keywords (``expected`` lists them, ' / ' between)."""
    if kind == "general":
        return keyword_match(answer or "", expected.split(" / "))
    return contains_answer(answer or "", expected)
