# Two commands on a fresh machine:  `make quickstart`  and  `make test`.
# Both create the virtual environment first if it is missing. The CPU set-up pins torch
# (constraints/cpu.txt) so pip takes the local CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SEEDS  ?= 0 1 2

.PHONY: setup quickstart test bench bench-teacher bench-distill bench-distill-cost bench-distill-sweep bench-compress bench-compress-seeds bench-faults bench-kar clean

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

# CPU cost of a distillation epoch vs a plain one (first and steady epoch; run it on an idle machine).
bench-distill-cost: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/recdistill bench distill-cost --output-dir benchmarks/results --update-readme README.md

# The best distillation on SASRec hidden 16/32/64 (+ --students gru4rec caser bert4rec).
bench-distill-sweep: $(STAMP)
	$(BIN)/recdistill bench distill-sweep --output-dir benchmarks/results --students --update-readme README.md

# Every student compressed, gated and profiled; teacher-to-student latency.
bench-compress: $(STAMP)
	$(BIN)/recdistill bench compress --output-dir benchmarks/results --update-readme README.md

# SASRec's PQ stage and compression targets over seeds, each seed against its own plain parent.
bench-compress-seeds: $(STAMP)
	$(BIN)/recdistill bench compress --output-dir benchmarks/results --students sasrec --pq-only --seeds $(SEEDS)
	$(BIN)/recdistill bench compress --output-dir benchmarks/results --students sasrec --quality-only --seeds $(SEEDS) --update-readme README.md

# SIGKILL loops, byte flips and bad inputs (tiny models; a few minutes).
bench-faults: $(STAMP)
	$(BIN)/recdistill bench faults --output-dir benchmarks/results --update-readme README.md

# CTR students with / without KAR teacher item vectors (needs the ml100k_teacher_ctr cache: KAR_SIGNALS).
bench-kar: $(STAMP)
	$(BIN)/recdistill bench kar --output-dir benchmarks/results --seeds $(SEEDS) --signals $(or $(KAR_SIGNALS),runs/ml100k/teacher_ctr/signals) --update-readme README.md

clean:
	rm -rf $(VENV) runs .pytest_cache
