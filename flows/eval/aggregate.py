from promptflow.core import log_metric, tool


@tool
def exact_match(grades: list[bool]) -> float:
    share = sum(bool(g) for g in grades) / len(grades) if grades else 0.0
    log_metric("exact_match", round(share, 4))
    return share
