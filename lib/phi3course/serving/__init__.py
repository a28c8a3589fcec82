"""What the online deployment runs: ``score.py``, Azure ML's scoring contract for the course's model.

The deployment uploads a folder of its own: ``score.py`` and the one course module it imports, ``hardware.py``,
side by side (``phi3course.endpoint.scoring_code`` lays it out; the local endpoint serves the same folder).
"""
