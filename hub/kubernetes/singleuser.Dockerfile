# The learners' image for Zero to JupyterHub (hub/kubernetes/z2jh-values.yaml), built from the course's one
# dependency list by the same `make` targets a learner's machine uses. From the checkout's root:
#   docker build -f hub/kubernetes/singleuser.Dockerfile -t <your registry>.azurecr.io/phi3course-singleuser:0.1.0 .
FROM python:3.11-slim-bookworm

RUN apt-get update && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --gid 100 jovyan \
    && mkdir -p /srv/phi3course/cache && chown -R 1000:100 /srv/phi3course \
    && mkdir /srv/venv && chown 1000:100 /srv/venv

# The course in /srv/phi3-course (each learner's server copies it into their home once), its environment beside it
# in /srv/venv (so the copy is the course alone), and the models converted into a cache every learner reads.
COPY --chown=1000:100 . /srv/phi3-course
WORKDIR /srv/phi3-course
USER 1000
ENV COURSE_CACHE=/srv/phi3course/cache
RUN make setup VENV=/srv/venv TORCH=cpu \
    && /srv/venv/bin/python -m pip install --quiet --no-compile -e '.[hub]' \
    && make warm VENV=/srv/venv \
    && rm -rf runs /home/jovyan/.cache/pip
ENV PATH=/srv/venv/bin:$PATH \
    COURSE_ROOT=/home/jovyan/phi3-course \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=true
WORKDIR /home/jovyan
CMD ["jupyterhub-singleuser"]
