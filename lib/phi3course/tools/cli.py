"""``phi3course``: the course's command line (``phi3course course --profile smoke``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "course": "run the notebooks in order with papermill",
        "warm": "prepare models in the cache before a class (default: the local and smoke models)",
        "classroom": "run learners' notebooks headless and collect their summaries (see --help)",
    }
    if not args or args[0] in {"-h", "--help"} or args[0] not in commands:
        print("usage: phi3course COMMAND [options]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:10} {text}")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    if args[0] == "warm":
        return warm(args[1:])
    if args[0] == "classroom":
        from .classroom import main as classroom_main

        return classroom_main(args[1:])
    from .runner import main as course_main

    return course_main(args[1:])


def warm(names: list[str]) -> int:
    from ..models import ModelError, cache_dir
    from ..models import warm as warm_models

    try:
        done = warm_models(names or ["smollm2-135m-instruct", "phi-3-tiny"])
    except ModelError as error:
        print(error, file=sys.stderr)
        return 1
    for name, folder, seconds in done:
        print(f"✓ {name:24} ready in {seconds:5.1f} s  {folder}")
    print(f"\nCopy {cache_dir()} to each learner's machine (same path), or point COURSE_CACHE at a shared copy.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
