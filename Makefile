# edgegov: the two commands a newcomer needs.
#   make demo   set everything up, run the demo (emulated device -> agent -> broker -> audit)
#   make test   set everything up, run the whole test suite
# Both create their own virtual environment in .venv (and .venv-oracle for the
# independent COSE verifier used only by the tests).

PYTHON ?= python3
VENV   := .venv
ORACLE := .venv-oracle
STAMP  := $(VENV)/.installed
PIP_Q  := --quiet --disable-pip-version-check

.PHONY: demo test soak fuzz-atheris bench lint system-deps mosquitto test-system-deps clean

demo: $(STAMP)
	$(VENV)/bin/edgegov demo

# Two workers (the suite is mostly waiting on subprocesses, brokers and ptys); --dist
# loadfile keeps each file's session fixtures (the wheels, the fault runs) in one worker.
test: $(STAMP) $(ORACLE)/.installed mosquitto test-system-deps
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

# The long fault runs (30 kills at random moments, broker outages up to 60 s) and the long
# fuzz campaign of the audit verifier (20,000 cases, both paths); `make test` runs their
# short versions.
soak: $(STAMP) $(ORACLE)/.installed mosquitto test-system-deps
	$(VENV)/bin/python -m pytest -m soak

# Coverage-guided differential fuzzing of the verifier's decoders with Atheris (issue 13),
# 120 s: compiled twins against pure ones, and the whole pipeline (tests/atheris_verify.py).
# A crash-* file (the input) lands in fuzz-out/; replay it by naming it after the script.
fuzz-atheris: $(STAMP)
	@$(VENV)/bin/python -c "import atheris" 2>/dev/null || $(VENV)/bin/pip install $(PIP_Q) atheris
	mkdir -p fuzz-out
	$(VENV)/bin/python tests/atheris_verify.py -max_total_time=120 -seed=1 -artifact_prefix=fuzz-out/

# The benchmarks side by side; peers (cel-python, regopy) are optional: rows say
# "not installed" when they cannot be installed here.
bench: $(STAMP)
	-$(VENV)/bin/pip install $(PIP_Q) -e '.[bench]'
	$(VENV)/bin/edgegov bench

# ruff, ruff format, mypy --strict, cython-lint (not part of `make test`).
lint: $(STAMP)
	$(VENV)/bin/pip install $(PIP_Q) -e '.[lint]'
	$(VENV)/bin/ruff check agent native firmware_bridge tests configs/models
	$(VENV)/bin/ruff format --check agent native firmware_bridge tests configs/models
	$(VENV)/bin/mypy
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/cython-lint --max-line-length 100 native/*.pyx

# What a fresh Debian/Ubuntu machine lacks to build the Cython extensions.
system-deps:
	@missing=""; \
	$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	$(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	test -f /usr/include/openssl/sha.h || missing="$$missing libssl-dev"; \
	if [ -n "$$missing" ]; then bash .ci/apt-install $$missing; fi

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || bash .ci/apt-install mosquitto

# SoftHSM2 (PKCS#11 backend tests), Chromium (the HTML report is rendered in it), and the
# brokers beside Mosquitto (tests/test_brokers.py): NATS server, RabbitMQ with its MQTT plugin.
test-system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null 2>&1 || missing="$$missing softhsm2"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || missing="$$missing nats-server"; \
	test -x /usr/lib/rabbitmq/bin/rabbitmq-server || missing="$$missing rabbitmq-server"; \
	if [ -n "$$missing" ]; then bash .ci/apt-install $$missing; fi

$(STAMP): pyproject.toml setup.py $(wildcard native/*.pyx) | system-deps
	@echo "setting up $(VENV) (Python packages and the Cython extensions)..."
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_Q) -e '.[test]'
	@$(VENV)/bin/python -c "import native.policy as p; assert p.IMPLEMENTATION == 'cython', 'the Cython evaluator was not built'"
	@touch $@

# pycose 1.1 needs cbor2 < 6, while the agent uses cbor2 6: give the oracle its own venv.
$(ORACLE)/.installed:
	@test -x $(ORACLE)/bin/python || $(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/pip install $(PIP_Q) 'pycose>=1.1' 'cbor2<6'
	@touch $@

clean:
	rm -rf $(VENV) $(ORACLE) build dist *.egg-info native/*.c native/*.so demo-out
