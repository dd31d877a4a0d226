# Two commands on a fresh machine:  `make quickstart`  and  `make test`.
# Both create the virtual environment first if it is missing. The CPU set-up pins torch
# (constraints/cpu.txt) so pip takes the local CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SEEDS  ?= 0 1 2

.PHONY: setup quickstart test bench bench-teacher bench-distill clean

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# data -> teacher fit/emit/eval -> vanilla + distilled students -> compress -> ONNX -> profile -> report
quickstart: $(STAMP)
	$(BIN)/recdistill run recipes/quickstart.yaml --output-dir runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/recdistill bench students --output-dir benchmarks/results --seeds $(SEEDS) --update-readme README.md

# The LLM teacher over seeds + ablations (reuses the student runs above when they exist).
bench-teacher: $(STAMP)
	$(BIN)/recdistill bench teacher --output-dir benchmarks/results --seeds $(SEEDS) --update-readme README.md

# Vanilla vs distilled students from one teacher cache (reuses the runs above when they exist).
bench-distill: $(STAMP)
	$(BIN)/recdistill bench distill --output-dir benchmarks/results --seeds $(SEEDS) --update-readme README.md

clean:
	rm -rf $(VENV) runs .pytest_cache
