# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv, installs trainlab, runs the demo study, writes a report
#   make test   -> creates .venv, installs trainlab with its test extras, runs the tests
# Both install the optional extras (Optuna, Ray, Opacus, transformers, Triton, TensorBoard, MLflow, W&B) so every
# code path is tested; EXTRAS=test skips them.
# Torch is installed first and explicitly so pip never pulls a multi-GB CUDA build.
# Override TORCH for another build, e.g. make demo TORCH="torch --index-url <your CPU index>".

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
EXTRAS ?= sweep,ray,dp,hf,triton,tensorboard,mlflow,wandb,test
STAMP  := $(VENV)/.trainlab-installed

.PHONY: demo test chaos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trainlab run examples/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

# every benchmark in CPU mode (about 5 minutes on 2 cores; 4.8 in the latest run) -> docs/PERFORMANCE.md;
# GPU=1 adds GPU figures; SMOKE=1 runs each at a tiny size (about 75 s, table to a temporary folder),
# as CI does on every change (tests/test_benchmarks.py)
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(GPU),--gpu) $(if $(SMOKE),--smoke)

# the long chaos test: 25 random SIGKILLs of a study, each followed by a resume (CI runs 6)
chaos: $(STAMP)
	TRAINLAB_CHAOS_KILLS=25 $(BIN)/python -m pytest tests/test_chaos.py -s -k sigkills

clean:
	rm -rf $(VENV) runs
