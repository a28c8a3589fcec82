"""phi3course: the thin library behind the course's notebooks.

Fine-tune a Phi-3 model, deploy it to an online endpoint and chat with it through Prompt flow.
Notebooks import what they need from here so that their cells stay short::

    from phi3course import course
    stage = course.start("01_data", globals())
"""

__version__ = "0.1.0"
