"""``phi3course``: the course's command line (``phi3course course --profile smoke``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"course": "run the notebooks in order with papermill"}
    if not args or args[0] in {"-h", "--help"} or args[0] not in commands:
        print("usage: phi3course COMMAND [options]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:10} {text}")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    from .runner import main as course_main

    return course_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
