# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/stemd.yaml
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit bench bench-hosts bench-backends gpu-check check-config clean system-deps lock outdated image image-test

system-deps:
	@bash scripts/install-system-deps.sh

# One install for run and test: exactly the versions of constraints/lock.txt (hashes
# checked), torch pinned by constraints/ci.txt so CI never pulls the CUDA build, and
# the package itself (editable). TORCH=keep keeps a torch you installed into .venv.
$(STAMP): pyproject.toml constraints/lock.txt constraints/ci.txt \
		scripts/install-system-deps.sh scripts/install-venv.sh
	@bash scripts/install-system-deps.sh
	PYTHON=$(PYTHON) bash scripts/install-venv.sh $(VENV)
	touch $(STAMP)

# Resolve pyproject's ranges into constraints/lock.txt (commit the result): pins that
# still fit are kept; `make lock UPGRADE=1` takes the newest releases.
lock: $(STAMP)
	bash scripts/lock.sh

# The newest releases pyproject's ranges allow, in a scratch venv, and the whole suite
# against them: what moved since the lock, and whether stemd still passes.
outdated: $(STAMP)
	bash scripts/outdated.sh

run: $(STAMP)
	mkdir -p inbox outbox state
	$(BIN)/stemd -c $(CONFIG) run

check-config: $(STAMP)
	$(BIN)/stemd -c $(CONFIG) check

lint: $(STAMP)
	$(BIN)/ruff check daemon tests
	$(BIN)/ruff format --check daemon tests
	$(BIN)/mypy

# Two workers, a test file each at a time (a file's tests share fixtures and
# sometimes order): the e2e tests wait on daemons more than they compute, so two
# at once roughly halves the wall time on CI's two cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile
	$(MAKE) --no-print-directory lint

# The container image (packaging/container/Containerfile): the CPU build as
# stemd:latest (podman: localhost/stemd:latest); TORCH=cuda builds stemd:cuda.
image:
	bash scripts/image.sh

# The image as a NAS runs it: podman, PUID/PGID/UMASK, health, the page, stop, restart.
image-test: $(STAMP) image
	$(BIN)/python -m pytest tests/image -s --timeout 900

# stemd against the demucs CLI, then jobs per second through the ledger (SQLite,
# PostgreSQL, three daemons), then the CPU forward pass's runtimes side by side
# (torch and OpenVINO, fp32 and bf16, and under an AVX2 cap); BENCH_ARGS=--quick
# for a short run. Tables on stdout, JSON in bench-results/bench.json,
# bench-results/hosts.json and bench-results/backends.json.
bench: $(STAMP)
	$(BIN)/python tests/bench/bench.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/hosts.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/backends.py $(BENCH_ARGS)

# the ledger part alone
bench-hosts: $(STAMP)
	$(BIN)/python tests/bench/hosts.py $(BENCH_ARGS)

# the runtimes part alone
bench-backends: $(STAMP)
	$(BIN)/python tests/bench/backends.py $(BENCH_ARGS)

# The prepared GPU run: a table on a CUDA machine, one line elsewhere. A bare GPU
# machine has no .venv: scripts/gpu-wheels.sh prepares the wheels it needs, and
# PYTHON=python3 runs it with that machine's torch.
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) tests/gpu/gpu_check.py $(GPU_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) .venv-outdated .mypy_cache .ruff_cache .pytest_cache
