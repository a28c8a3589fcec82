from promptflow.core import tool

from phi3course.evaluate import contains_answer


@tool
def grade(answer: str, expected: str) -> bool:
    """The course's exact-match: the expected value appears in the answer (case and spacing ignored)."""
    return contains_answer(answer or "", expected)
