"""``python -m phi3course.rehearsal``: see :func:`phi3course.rehearsal.main`."""

from . import main

raise SystemExit(main())
