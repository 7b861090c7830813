# Everything a fresh machine needs, from the package registries only.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WHEEL_CACHE ?= $(HOME)/.cache/switchboard/wheels
LLAMA_CPP_VERSION := 0.3.36
STAMP := $(VENV)/.installed
# Machines of this kind keep CPU torch wheels here; pip must look here rather than pull a CUDA build.
LOCAL_WHEELS := $(wildcard /opt/wheels)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/build_llama_wheel.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	scripts/build_llama_wheel.sh $(PY) $(WHEEL_CACHE) $(LLAMA_CPP_VERSION)
	$(PY) -m pip install --quiet --find-links $(WHEEL_CACHE) $(if $(LOCAL_WHEELS),--find-links $(LOCAL_WHEELS)) -e '.[dev,router-offline,ray]'
	# The local embedding expert's model as ONNX, exported once into ~/.cache/switchboard/onnx (needs torch; serving does not).
	$(VENV)/bin/switchboard embeddings prepare
	touch $(STAMP)

run: install
	$(VENV)/bin/switchboard serve --host $(HOST) --port $(PORT)

test: install
	scripts/ensure_chromium.sh
	# The official openai Node client (and zod, for its parse helpers) and the Vercel AI SDK for tests/conformance, pinned by its package-lock.json (node and npm: the machine's).
	test -f tests/conformance/node/node_modules/openai/package.json -a -f tests/conformance/node/node_modules/zod/package.json \
		-a -f tests/conformance/node/node_modules/ai/package.json -a -f tests/conformance/node/node_modules/@ai-sdk/openai/package.json \
		|| (cd tests/conformance/node && npm ci --no-audit --no-fund --loglevel=error)
	# Debian's redis-server for the GCS fault-tolerance test (tests/cluster/test_ray_gcs.py starts its own from it).
	pg_url=$$(scripts/postgres.sh) && redis_server=$$(scripts/redis.sh) && SWITCHBOARD_TEST_PG_URL=$$pg_url \
		SWITCHBOARD_TEST_REDIS_SERVER=$$redis_server $(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV)
