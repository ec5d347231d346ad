# The two set-up commands of the README: `make run` (every artifact of the paper, on the full
# data sets, showing its findings; under 30 minutes on 2 cores) and `make test`. Both create
# the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: run demo paper paper-converged test test-fast bench bench-settle equivalence lint format clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard eqp/engines/backends/csrc/*.c eqp/engines/backends/csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

demo: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml $(SNAKEMAKE_ARGS)

paper: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/paper.yaml $(SNAKEMAKE_ARGS)

# the published settings in 16-20 h on 2 cores: MNIST and Fashion-MNIST settle converged (sor)
paper-converged: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/paper-converged.yaml $(SNAKEMAKE_ARGS)

test: venv
	$(BIN)/python -m pytest -ra

test-fast: venv
	$(BIN)/python -m pytest -ra -m "not slow and not slurm"

bench: venv
	$(BIN)/python -m eqp bench --batches 3

# settle methods and thread counts from one warm state (real MNIST where it was fetched)
bench-settle: venv
	$(BIN)/python -m eqp bench --settle euler --settle sor --threads 1 --threads 2 \
		--batches 10 --warm-batches 300

# converged settling against the faithful Euler phases (about half an hour on 2 cores)
equivalence: venv
	$(BIN)/python -m eqp equivalence --out results/equivalence

# ruff and snakefmt must be clean; snakemake --lint reports one documented lint (no conda
# envs: the Snakefile imports eqp, so everything runs in this one environment) and exits 1
# for it.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow
	-$(BIN)/snakemake --lint

# Format the workflow and regenerate config/README.md's parameter tables from the schema.
format: venv
	$(BIN)/snakefmt workflow
	$(BIN)/python -m eqp config-doc --write config/README.md

clean:
	rm -rf results figures tables logs benchmarks/runs report.html .snakemake
