# Two commands on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
# what running needs (runtime + demo + the embedded emulator) and, for `make test`, the dev extras
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)

.PHONY: setup setup-dev run run-ai stop test lint bench chaos clean

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,emulator]'
	rm -f $(VENV)/.installed-run-* && touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[dev,demo,emulator]'
	rm -f $(VENV)/.installed-test-* && touch $@

setup: $(RUN_STAMP)
setup-dev: $(TEST_STAMP)

# kinesis-mock (npm kinesis-local, plain JS): the Kinesis fidelity tier of the tests
KINESIS_MOCK := $(VENV)/node/node_modules/kinesis-local/main.js
$(KINESIS_MOCK):
	npm install --no-audit --no-fund --silent --prefix $(VENV)/node kinesis-local@0.6.2

## run: start the local emulator, create resources, publish CDNOW, consume it, summarise,
## then write the HTML report (out/report.html) and print its path
run: setup
	$(VENV)/bin/caa run
	$(VENV)/bin/caa report

## run-ai: `make run` with the Bedrock analyzer, pointed at the local Bedrock-protocol test
## server (deploy/local/bedrock_server.py) by AWS_ENDPOINT_URL_BEDROCK_RUNTIME; its own stream and
## tables (prefix caa-ai-); prints `caa costs` and `caa history` at the end. LIMIT=n events.
AI_ENV := CAA_ANALYZER=bedrock CAA_CONSENT_MODE=opt_out CAA_STREAM_NAME=caa-ai-purchases \
	CAA_TABLE_PREFIX=caa-ai- CAA_BEDROCK_TPM=5000000 \
	AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127.0.0.1:4599
run-ai: setup
	@mkdir -p .caa
	@rm -f .caa/bedrock.log; $(PY) -m deploy.local.bedrock_server --port 4599 > .caa/bedrock.log 2>&1 & echo $$! > .caa/bedrock.pid
	@until grep -q READY .caa/bedrock.log; do sleep 0.1; done
	@echo "run-ai: caa run on stream caa-ai-purchases and tables caa-ai-*, Bedrock = the local test server (canned answers)"
	@$(AI_ENV) $(VENV)/bin/caa run --limit $(or $(LIMIT),5000); rc=$$?; \
	$(AI_ENV) $(VENV)/bin/caa costs; $(AI_ENV) $(VENV)/bin/caa history 00001; \
	kill $$(cat .caa/bedrock.pid); rm -f .caa/bedrock.pid; exit $$rc

## stop: stop the local emulator that `make run` left running; it keeps its data in memory, so
## this discards every stream, table and prediction
stop:
	@test -x $(VENV)/bin/caa && $(VENV)/bin/caa emulator stop || true

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# headless Chromium (Debian's package) renders the report in a test; installed when missing
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q chromium >/dev/null)) || \
	  echo "chromium missing: install Debian's chromium package for the report test"

# JAXB's API for the KCL daemon (deploy/kcl.py: JAXB_JAR), Debian's package
JAXB := /usr/share/java/jaxb-api.jar
$(JAXB):
	command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q libjaxb-api-java >/dev/null || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q libjaxb-api-java >/dev/null)) || \
	  echo "jaxb-api missing: install Debian's libjaxb-api-java for the KCL daemon"

## test: lint, type-check, unit + integration tests (starts its own emulator)
# two workers (pytest-xdist; an idle one takes queued tests from a busy one), each starting
# its own emulator servers on free ports; TEST_WORKERS=0 runs them in this process
test: lint $(KINESIS_MOCK) $(CHROMIUM) $(JAXB)
	$(VENV)/bin/pytest -n $(or $(TEST_WORKERS),2) --dist worksteal

## chaos: the crash harness on the whole CDNOW log (>= 10 SIGKILLs); last line
## lost=<n> double_counted=<n> kills=<n> rejected=<n>
chaos: setup-dev
	$(PY) -m deploy.local.chaos --kills $(or $(KILLS),12)

## bench: pipeline.py measures the core (CPU and wall, both streams, both models, with the
## applier's GC policy); core_cpu.py adds what the GC policy saves, on the default model
bench: setup-dev
	$(PY) bench/pipeline.py
	$(PY) bench/analysis_policy.py
	$(PY) bench/cost.py
	$(PY) bench/core_cpu.py --models pareto_nbd
	$(PY) bench/replay.py
	$(PY) bench/state_size.py
	$(PY) bench/refit_lag.py

.PHONY: package deploy
## package: every Lambda artifact of deploy/template.yaml for arm64 / Python 3.12
## (build/lambda/caa-<name>.zip) from deploy/lambda-requirements.txt only (pinned, no
## pandas, scikit-learn, matplotlib, moto, localstack-client or dev tools); prints each one's
## unzipped and zipped size, then builds the same tree for this machine and imports the
## handlers from it (the smoke check). Wheels are kept in build/wheels/.
package: setup
	$(PY) -m deploy.package --smoke

## deploy: STACK=name [CONFIRM=1] [REGION=r] [BUCKET=b] [PARAMS="Key=Value ..."]: prints what
## it will create (target account, uploads, every resource), then, confirmed, uploads the
## artifacts and creates or updates the stack (boto3: AWS_PROFILE, AWS_REGION as usual)
deploy: package
	@test -n "$(STACK)" || { echo "usage: make deploy STACK=name [CONFIRM=1]" >&2; exit 2; }
	$(PY) -m deploy.stack --stack $(STACK) $(if $(CONFIRM),--yes) \
	  $(if $(REGION),--region $(REGION)) $(if $(BUCKET),--bucket $(BUCKET)) \
	  $(foreach p,$(PARAMS),--param $(p))

clean:
	rm -rf $(VENV) .caa out build .pytest_cache .mypy_cache .ruff_cache
