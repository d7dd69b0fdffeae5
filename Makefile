# Pond: `make run` starts the stack, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp

.PHONY: setup run test test-redis bench bench-quick lint protos client clean

setup: $(STAMP) $(GEN_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# Make the repo root and gen/ importable from anywhere (python -m services.member).
	$(PY) -c "import sysconfig, pathlib; root = pathlib.Path.cwd(); pathlib.Path(sysconfig.get_paths()['purelib'], 'pond-paths.pth').write_text(f'{root}\n{root / \"gen\"}\n')"
	touch $(STAMP)

protos: $(STAMP)
	rm -rf gen
	$(MAKE) $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	# protoc's stubs (for mypy) type an enum field as the enum or its name; the runtime
	# takes its number too, which is what the services pass (their IntEnums).
	$(PY) -c "import pathlib, re; [p.write_text(re.sub(r'_Union\[([\w.]+), str\]', r'_Union[\1, str, int]', p.read_text())) for p in pathlib.Path('gen').rglob('*.pyi')]"
	touch $(GEN_STAMP)

run: setup
	$(PY) -m stack

test: setup
	$(PY) -m pytest -q

# The tests that need a Redis-compatible server (CI reruns them against redis-server).
test-redis: setup
	$(PY) -m pytest -q -m redis

# Member RPCs against an echo baseline, the gateway's GET /v1/me against a bare
# Starlette endpoint (and its added latency over GetMember), community RouteMember and
# CheckIn (and routing at 25,000 groups against 100), then the tagging service on a
# synthetic 1M-member brand (about 15 minutes; `make bench-quick` for 100k).
bench: setup
	$(PY) -m bench
	$(PY) -m bench.gateway
	$(PY) -m bench.community
	$(PY) -m bench.tagging

bench-quick: setup
	$(PY) -m bench --duration 3
	$(PY) -m bench.community --duration 3
	$(PY) -m bench.gateway --duration 2 --members 50 --latency-calls 500
	$(PY) -m bench.tagging --quick

# The mini-program's TypeScript types: the gateway's OpenAPI document (written without a
# server) and the types npm's openapi-typescript (pinned in client/package-lock.json)
# makes from it. Both files are committed; a test keeps client/openapi.json current.
client: setup
	$(PY) -m gateway.openapi client/openapi.json
	cd client && npm ci --no-audit --no-fund --loglevel=error && npx --no-install openapi-typescript openapi.json -o pond-api.d.ts

# ruff; mypy over services/ (strict for the runtime and every domain package);
# import-linter's walls (pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) gen .pond
