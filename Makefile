# mafs_ros developer entry points. `make test` is the test command (CI: .ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
PYTHON := $(VENV)/bin/python
# The test command, exactly as in the README.
TEST_CMD := $(PYTHON) -m pytest -q test
# oneDNN picks kernels by instruction set, so float32 sums come out in another order on a CPU without
# AVX-512: the parity tests run a second time limited to AVX2, as on such a host.
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
PARITY_TESTS := test/test_model.py test/test_parity_encoder.py test/test_parity_decoder.py

.PHONY: setup test demo clean distclean

## setup: create/update .venv, the editable install and the generated messages (fast when up to date)
setup:
	@bash scripts/setup_env.sh

## test: setup, then run the test suite
test: setup
	$(TEST_CMD)
	$(AVX2_ENV) $(PYTHON) -m pytest -q $(PARITY_TESTS)

## demo: setup, then the real node over a rosbag of the bundled sample pairs (report and PNGs in demo_out/)
demo: setup
	$(VENV)/bin/mafs demo --out demo_out

## clean: remove build products (keeps the venv; `make distclean` removes it too)
clean:
	rm -rf build install log demo_out .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
