#!/usr/bin/env bash
# The GPU checks of the CUDA path, in one run (as on the lent H100/H200 of the issue):
# `python -m eqp bench --device cuda`, then the test suite with EQP_TEST_DEVICE=cuda.
# Needs a python3 with torch (CUDA), numpy, pandas, scikit-learn, safetensors, pyyaml,
# filelock, tqdm, torchvision and pytest; MNIST's four files in $EQP_TEST_MNIST_DIR.
# Writes logs and the bench JSON into ${OUT:-benchmarks/cuda}.
set -uo pipefail
out=${OUT:-benchmarks/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD EQP_TEST_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/card.txt"
python3 setup.py -q build_ext --inplace >"$out/build.log" 2>&1 || echo "fused CPU kernel not built (see build.log)"
timeout "${BENCH_TIMEOUT:-240}" python3 -m eqp bench --device cuda --batches 10 --repeats 3 \
    --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench.log"
# Everything but the Snakemake/Slurm/packaging tests (no snakemake or ruff on such a machine),
# then the fidelity trials, the slow ones included, and the kernel's builds by that machine's
# compiler (the same bits as its installed build).
ignore="--ignore=tests/test_workflow.py --ignore=tests/test_faults.py
    --ignore=tests/test_cluster_pipeline.py --ignore=tests/test_slurm_harness.py
    --ignore=tests/test_lint.py --ignore=tests/test_packaging.py --ignore=tests/test_environment.py
    --ignore=tests/test_trial_ensembles.py"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -n 8 \
    -m "not slow and not slurm" $ignore tests 2>&1 | tee "$out/pytest.log" | tail -15
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m "not slurm" \
    tests/test_fidelity.py tests/test_cuda_path.py tests/test_kernel_build.py 2>&1 | tee "$out/pytest_fidelity.log" | tail -8
