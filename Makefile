# The two commands: `make dev` (run it) and `make test` (test it). Both set up what they need.
.PHONY: dev test venv migrate admin lint bench package clean

PYTHON := .venv/bin/python

venv:
	@bash infra/venvs.sh

dev: venv
	@$(PYTHON) infra/devstack.py dev

test: venv
	@$(PYTHON) infra/devstack.py test $(PYTEST_ARGS)

# The inner loop: `make test` without the tests marked slow (packaging with cfn-lint, fault
# injection, throughput); CI (.ci/run) runs all of them with `make test`.
.PHONY: test-fast
test-fast: venv
	@$(PYTHON) infra/devstack.py test -m "not slow" $(PYTEST_ARGS)

migrate: venv
	@$(PYTHON) infra/devstack.py migrate

admin: venv
	@$(PYTHON) -m chalicelib.admin $(ARGS)

lint: venv
	@.venv/bin/ruff check .

bench: venv
	@$(PYTHON) infra/devstack.py bench $(BENCH)

clean:
	rm -rf .venv .venv-localstack .localstack
