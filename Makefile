# The project's workflows. `make setup` once (or let any target do it), then `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Without CUDA take the local CPU build of torch (an unpinned torch pulls GBs of CUDA
# wheels); with CUDA keep the user's torch by letting the venv see system packages.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: setup test test-slow test-all lint publish multiturn bench-cache bench-repair gpu-check memory-check runtime tiny-model tiny-model-distractors check-model phase01 probe retention repair policy rank-profile collect paper clean help

help:
	@echo "make setup        create .venv and install the project (+dev extras)"
	@echo "make test         the CPU test suite (what CI runs)"
	@echo "make test-slow    the slower checks, marked @pytest.mark.slow"
	@echo "make bench-cache  promote throughput vs memcpy (and host->device on CUDA)"
	@echo "make bench-repair engine vs the reference protocol; exact scoring vs CPU fp32; repair latency"
	@echo "make gpu-check    one run that proves the CUDA side (docs/real_models.md); --quick on the CPU in the tests"
	@echo "make memory-check peak KV memory at 32K for the Qwen2.5-7B and Llama-3.1-8B shapes vs the prediction"
	@echo "make lint         ruff check (the tests run it too)"
	@echo "make tiny-model   train the embedded model into models/embedded (resumable)"
	@echo "make tiny-model-distractors  stage 7: models/embedded fine-tuned on the distractor-needle haystack (models/embedded_distractors)"
	@echo "make check-model  the embedded model's retrieval and needle-row ablations (200 held-out samples)"
	@echo "make phase01      the full-cache gate on the embedded model"
	@echo "make probe        train the learned-relevance probe on the embedded model's own attention"
	@echo "make retention    phase02: every retention rule vs budget, eviction inside the model"
	@echo "make collect PHASE=phase03_repair_4q   merge a multirun sweep's job rows and publish them (see docs/sweeps.md)"
	@echo "make repair       the main job: phase03's 4Q repair frontier on the embedded model (-> runs/phase03_repair_4q/)"
	@echo "make publish PHASE=phase03_repair_4q   rebuild a finished run's CSV and figure into saved_results/ and paper/figures/"
	@echo "make rank-profile where the turn-1 rule ranks each needle: why Matched does or does not rise with K"
	@echo "make multiturn    phase04: five turns, one cache per condition carried across them, repaired at every pause"
	@echo "make runtime      phase07: score / select / promote vs warm candidates (to 1M), digest recall, repair vs re-prefill"
	@echo "make policy       phase06: the repair under every turn-1 retention rule (Matched, IdleKV, Random-K per rule)"
	@echo "make paper        paper/main.pdf from saved_results/ (needs: apt-get install latexmk texlive-latex-recommended texlive-latex-extra)"

setup: $(STAMP)

$(STAMP): pyproject.toml
ifeq ($(HAS_CUDA),1)
	test -d $(VENV) || $(PYTHON) -m venv --system-site-packages $(VENV)
else
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
endif
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

bench-cache: setup
	$(BIN)/python -m idlekv.bench.cache_bench

bench-repair: setup
	$(BIN)/python -m idlekv.bench.repair_bench

gpu-check: setup
	$(BIN)/python -m idlekv.bench.gpu_check --out runs/gpu_check.json

memory-check: setup
	$(BIN)/python -m idlekv.bench.memory_check --out runs/memory_check.json

lint: setup
	$(BIN)/ruff check .

tiny-model: setup
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage1_recall.yaml
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage2_recall.yaml
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage3_noise.yaml
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage4_keys.yaml
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage5_tagged.yaml
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage6_long.yaml

tiny-model-distractors: setup
	$(BIN)/python -m idlekv.embedded.train --config configs/embedded/stage7_distractors.yaml

check-model: setup
	$(BIN)/python -m idlekv.embedded.check

phase01: setup
	$(BIN)/python -m phases.phase01_full_cache.run experiment=phase01_full_cache

probe: setup
	$(BIN)/python -m idlekv.retention.probe_train

retention: setup
	$(BIN)/python -m phases.phase02_retention.run experiment=phase02_retention

repair: setup
	$(BIN)/python -m phases.phase03_repair.run experiment=phase03_repair_4q

multiturn: setup
	$(BIN)/python -m phases.phase04_multiturn.run experiment=phase04_multiturn

paper: setup
	$(BIN)/python paper/scripts/build.py

policy: setup
	$(BIN)/python -m phases.phase06_policy_sensitivity.run experiment=phase06_policy_sensitivity

runtime: setup
	$(BIN)/python -m phases.phase07_runtime.run experiment=phase07_runtime

EXPERIMENT ?= phase03_repair_4q
rank-profile: setup
	$(BIN)/python -m phases.phase03_repair.rank_profile experiment=$(EXPERIMENT)

PHASE ?= phase03_repair_4q
collect: setup
	$(BIN)/python -m idlekv.collect multirun/$(PHASE)

publish: setup
	$(BIN)/python -m phases.publish runs/$(PHASE)

clean:
	rm -rf runs multirun .pytest_cache
