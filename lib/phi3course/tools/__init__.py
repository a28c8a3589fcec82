"""What educators and the course's maintainers run; no notebook imports it.

- :mod:`.runner`: every notebook in order under papermill (``make course``);
- :mod:`.classroom`: every learner's run headless, and one table of many runs (``make class``, ``make collect``);
- :mod:`.notebooks`: notebooks committed clean, checked outputs refreshed;
- :mod:`.export`: the library modules generated from notebook cells (``recipe``, ``agents``);
- :mod:`.cli`: the ``phi3course`` command.
"""
