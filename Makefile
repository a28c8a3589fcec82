# The course's commands. `make course` and `make test` are all a new machine needs (Python 3.11 + pip).
SHELL  := /bin/bash
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= local
FROM   ?=
STAMP  := $(VENV)/.installed
# torch: on Linux without an NVIDIA GPU, the CPU build from PyTorch's CPU index (a 190 MB wheel) instead of the
# default index's CUDA build (several GB a CPU never uses). TORCH=cuda keeps the default index; TORCH_INDEX=<url>
# names another. Where the CPU index cannot be reached, torch comes from the default index (one line says so).
TORCH       ?= auto
TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true

.PHONY: setup course cleanup test test-notebooks test-local lint bench lab clean class collect screenshots warm measurements hub hub-setup test-hub

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall when the one dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	@echo "Installing the course into $(VENV) (a few minutes the first time)…"
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@case "$(TORCH)" in auto|cpu|cuda) ;; *) echo "TORCH=$(TORCH): use auto, cpu or cuda"; exit 2;; esac; \
	index="$(TORCH_INDEX)"; \
	if [ -z "$$index" ] && [ "$(TORCH)" != cuda ] && { [ "$(TORCH)" = cpu ] || { [ "$$(uname -s)" = Linux ] && \
	     ! command -v nvidia-smi >/dev/null && [ ! -e /proc/driver/nvidia/version ]; }; }; then \
	  if $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
	    index=$(TORCH_CPU_INDEX); echo "torch: the CPU build from $$index (no NVIDIA GPU here; TORCH=cuda for the CUDA build)"; \
	  else echo "torch: $(TORCH_CPU_INDEX) cannot be reached, so torch comes from the default index (on Linux: the CUDA build, several GB)"; fi; \
	fi; \
	if [ -n "$$index" ]; then \
	  torch=$$($(PY) -c "import tomllib; print(*[d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch=')])"); \
	  $(PY) -m pip install --quiet --no-compile --index-url "$$index" "$$torch" 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0; \
	fi
	$(PY) -m pip install --quiet --no-compile -e '.[dev]' 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	$(PY) -m pip install --quiet --no-compile --no-deps $$($(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['phi3course']['install-without-deps'])") \
	  2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0  # see [tool.phi3course] in pyproject.toml
	@# pip compiles every module to bytecode one file at a time (a minute of the install on 2 cores); compileall
	@# does it on every core, and leaves out what the course never imports: packages' own tests and the ~300
	@# transformers architectures it does not use (a quarter of the files; Python compiles any of them on import).
	@# Files that do not compile (some packages ship Python 2 test data) are skipped, as pip skips them.
	$(PY) -m compileall -q -j 0 -x '/tests/|/transformers/models/(?!(auto|llama|phi3|gpt2|bloom|encoder_decoder)/)[^/]+/' \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

course: $(STAMP)
	$(PY) -m phi3course.tools.runner --profile $(PROFILE) $(if $(DRY_RUN),--dry-run) $(if $(FROM),--from $(FROM))

# 99_cleanup for this profile's run: nothing left running locally, no Azure ML endpoint left billing.
cleanup: $(STAMP)
	$(PY) -m phi3course.tools.runner --profile $(PROFILE) $(if $(DRY_RUN),--dry-run) --from 99 --cleanup

# The learning guard first, alone (training the real offline model runs many times slower beside other work); then
# the unit tests beside the notebook checks (`make test-notebooks`, its own Prompt flow home and run folders), each
# stream on one torch thread so that two streams share the two cores; the notebooks' log is printed at the end.
# The models are converted into the cache first, so the two streams never convert the same one at once.
# Tests and notebooks keep their Prompt flow connections in homes of their own, never the learner's ~/.promptflow.
test: export PF_HOME_DIRECTORY := $(CURDIR)/runs/promptflow-home
test: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks
	HF_HUB_OFFLINE=1 $(PY) -m phi3course.tools.cli warm
	HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:cacheprovider --durations=3 tests/test_evaluate.py
	@mkdir -p runs; \
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory test-notebooks > runs/test-notebooks.log 2>&1 & notebooks=$$!; \
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest --durations=15 --ignore=tests/test_hub.py \
	  --ignore=tests/test_browser.py --ignore=tests/test_evaluate.py tests; \
	units=$$?; wait $$notebooks; checks=$$?; \
	echo "=== make test-notebooks (ran beside the unit tests) ==="; cat runs/test-notebooks.log; \
	echo "unit tests: exit $$units; notebook checks: exit $$checks"; [ $$units -eq 0 ] && [ $$checks -eq 0 ]

# nbval over every notebook in order under the smoke profile, then the Azure dry run (every Azure cell against the
# local stand-in of the workspace) under nbval too; after each, no key in anything the run wrote, and what a learner
# sees in 02–05 as tests/expected_outputs/<profile>/ expects it (tests/test_outputs.py). The notebooks with exercises
# also run with the reference solutions filled in, every check strict (02, 03 and 04 on the smoke run's state, after
# it). The browser test (tests/test_browser.py) steps through 04 in JupyterLab on a copy of nbval's smoke run, rather
# than running 00→03 again (on its own it runs them itself).
test-notebooks: export PF_HOME_DIRECTORY := $(CURDIR)/runs/promptflow-home-notebooks
test-notebooks: $(STAMP)
	rm -rf runs/nbval runs/solved
	HF_HUB_OFFLINE=1 COURSE_PROFILE=smoke COURSE_RUN_DIR=runs/nbval $(PY) -m pytest -p no:cacheprovider -p tests.nbval_outputs \
	  --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 notebooks
	HF_HUB_OFFLINE=1 COURSE_OUTPUTS_RUN_DIR=runs/nbval $(PY) -m pytest -p no:cacheprovider -q tests/test_outputs.py tests/test_noise.py
	HF_HUB_OFFLINE=1 COURSE_BROWSER_FROM_RUN=runs/nbval $(PY) -m pytest -p no:cacheprovider --durations=5 tests/test_browser.py
	COURSE_UNTOUCHED_RUN_DIR=runs/nbval $(PY) -m pytest -p no:cacheprovider -q tests/test_exercises.py -k test_untouched_notebooks_pass_no_exercise
	$(PY) -m phi3course.exercises solve --out runs/solved/notebooks
	HF_HUB_OFFLINE=1 COURSE_PROFILE=smoke COURSE_RUN_DIR=runs/solved COURSE_EXERCISES=solutions $(PY) -m pytest \
	  -p no:cacheprovider --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 \
	  runs/solved/notebooks/00_setup.ipynb runs/solved/notebooks/01_data.ipynb
	HF_HUB_OFFLINE=1 COURSE_PROFILE=smoke COURSE_RUN_DIR=runs/nbval COURSE_EXERCISES=solutions $(PY) -m pytest \
	  -p no:cacheprovider -p tests.nbval_outputs --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 \
	  runs/solved/notebooks/02_fine_tune.ipynb runs/solved/notebooks/03_deploy.ipynb runs/solved/notebooks/04_prompt_flow_chat.ipynb
	HF_HUB_OFFLINE=1 COURSE_SCAN_RUN_DIR=runs/nbval $(PY) -m pytest -p no:cacheprovider -q tests/test_secrets.py
	rm -rf runs/nbval-azureml && $(PY) -m phi3course.tools.notebooks unchecked runs/nbval-azureml/notebooks
	HF_HUB_OFFLINE=1 COURSE_PROFILE=azureml-dryrun-smoke COURSE_RUN_DIR=runs/nbval-azureml $(PY) -m pytest \
	  -p no:cacheprovider -p tests.nbval_outputs --nbval-lax --nbval-cell-timeout 600 runs/nbval-azureml/notebooks
	HF_HUB_OFFLINE=1 COURSE_SCAN_RUN_DIR=runs/nbval-azureml COURSE_OUTPUTS_RUN_DIR=runs/nbval-azureml $(PY) -m pytest \
	  -p no:cacheprovider -q tests/test_secrets.py tests/test_outputs.py tests/test_noise.py

# The course as a learner runs it: `make course` with the local profile (about ten minutes on 2 cores), 99_cleanup at
# the end, then the noise scan over every notebook it executed (tests/test_noise.py). CI runs it after `make test`.
test-local: export PF_HOME_DIRECTORY := $(CURDIR)/runs/promptflow-home-local
test-local: $(STAMP)
	rm -rf runs/local-check
	HF_HUB_OFFLINE=1 $(PY) -m phi3course.tools.runner --profile local --run-dir runs/local-check --cleanup
	COURSE_NOISE_EXECUTED_DIR=runs/local-check $(PY) -m pytest -p no:cacheprovider -q tests/test_noise.py

# Before a class: the models converted once into the cache (~/.cache/phi3course), ready to copy to a room.
warm: $(STAMP)
	$(PY) -m phi3course.tools.cli warm $(MODELS)

# For educators: every learner's run headless (LEARNERS="ana ben", PROFILE, TO=02), then one table.
class: $(STAMP)
	@test -n "$(LEARNERS)" || { echo 'name the learners: make class LEARNERS="ana ben" [PROFILE=smoke] [TO=02]'; exit 2; }
	$(PY) -m phi3course.tools.classroom run --profile $(PROFILE) --learners $(LEARNERS) $(if $(TO),--to $(TO))

# One table from summary.json files wherever they are: make collect RUNS="/home/*/phi3-course/runs/local"
collect: $(STAMP)
	$(PY) -m phi3course.tools.classroom collect $(or $(RUNS),runs) $(if $(CSV),--csv $(CSV))

# The browser test with the local profile, its screenshots written into images/ (README and 04 show them).
screenshots: $(STAMP)
	HF_HUB_OFFLINE=1 COURSE_BROWSER_PROFILE=local COURSE_SCREENSHOT_DIR=images $(PY) -m pytest -p no:cacheprovider \
	  -k learner tests/test_browser.py

# A JupyterHub for a class on this machine (docs/workshop.md, "A JupyterHub on one machine"): on 127.0.0.1 unless
# HUB_IP is set (then HUB_SSL_CERT/HUB_SSL_KEY too). Without HUB_WORKSHOP_PASSWORD(_FILE) and HUB_ADMIN_PASSWORD(_FILE),
# it writes random ones into hub/state/ (readable by you only) and uses them.
HUB_STATE ?= hub/state
HUB_STAMP := $(VENV)/.hub-installed
HUB_PROXY := hub/node_modules/.bin/configurable-http-proxy

$(HUB_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet --no-compile -e '.[dev,hub]' 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	@touch $(HUB_STAMP)

$(HUB_PROXY): hub/package.json hub/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the hub's proxy (configurable-http-proxy): install Node.js 18 or later"; exit 1; }
	npm ci --prefix hub --no-audit --no-fund --loglevel=error
	@touch $(HUB_PROXY)

hub-setup: $(HUB_STAMP) $(HUB_PROXY)

# The hub's end-to-end test on its own (CI runs it after `make test`): a real JupyterHub on loopback, two learners'
# servers pulling the course by nbgitpuller and running 00 and 01, 01's exercises released, submitted, collected and
# autograded through nbgrader's exchange, everything stopped after. Kept out of `make test`, a learner's check.
# HUB_SIZING_RECORD=docs/measurements/<date>-sizing-<cpu class>.json also writes the sizing record it measured.
test-hub: hub-setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:cacheprovider tests/test_hub.py

hub: hub-setup
	@mkdir -p -m 700 $(HUB_STATE); umask 077; \
	for secret in WORKSHOP:workshop-password:16 ADMIN:admin-password:32; do \
	  IFS=: read var file bytes <<< "$$secret"; \
	  if [ -z "$$(printenv HUB_$${var}_PASSWORD)$$(printenv HUB_$${var}_PASSWORD_FILE)" ]; then \
	    [ -s $(HUB_STATE)/$$file ] || $(PY) -c "import secrets; print(secrets.token_urlsafe($$bytes))" > $(HUB_STATE)/$$file; \
	    echo "HUB_$${var}_PASSWORD_FILE=$(HUB_STATE)/$$file (read it with: cat $(HUB_STATE)/$$file)"; \
	  fi; \
	done
	$(if $(HUB_WORKSHOP_PASSWORD)$(HUB_WORKSHOP_PASSWORD_FILE),,HUB_WORKSHOP_PASSWORD_FILE=$(HUB_STATE)/workshop-password) \
	$(if $(HUB_ADMIN_PASSWORD)$(HUB_ADMIN_PASSWORD_FILE),,HUB_ADMIN_PASSWORD_FILE=$(HUB_STATE)/admin-password) \
	HUB_STATE_DIR=$(HUB_STATE) $(PY) -m jupyterhub -f hub/jupyterhub_config.py

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests benchmarks
	$(VENV)/bin/ruff format --check lib tests benchmarks

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.bench

# docs/measurements.md from the records in docs/measurements/ (add a run's file: python -m benchmarks.measurements add).
measurements: $(STAMP)
	$(PY) -m benchmarks.measurements render

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# First stop what the runs started (local endpoints, pf flow serve, the stand-in's processes), then delete them:
# their records are what says which processes are the course's. Your typed facts (my_facts/) stay.
clean:
	@if [ -d runs ] && [ -x $(PY) ]; then \
	  $(PY) -m phi3course.flow stop runs || exit 1; \
	  find runs -type d -name rehearsal -prune -exec $(PY) -m phi3course.rehearsal stop {} \; || exit 1; \
	elif [ -d runs ]; then echo "no $(PY): nothing of runs/ can be stopped first (make setup installs it)"; fi
	rm -rf runs .pytest_cache
