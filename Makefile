# fastlightgen: the two commands a newcomer runs are `make demo` and `make test`.
# Both install what they need first (`make setup`), and every step is idempotent:
# a second run skips what is already there.

SHELL := /bin/bash
VENV  := $(CURDIR)/.venv
TORCH_VERSION := 2.13.0
# The Python side of Wan interop (tests/python, tools/): diffusers' WanTransformer3DModel,
# AutoencoderKLWan and WanPipeline, transformers' UMT5EncoderModel; accelerate because
# diffusers' from_pretrained needs it for Wan's f32-kept modules; PyAV (with its own FFmpeg)
# to read and write mp4 clips. Pinned; CPU is enough.
# tensorboard: its own reader checks the event files the runs write (tests).
PY_PKGS := diffusers==0.42.1 transformers==5.23.0 accelerate==1.15.0 av==18.1.0 tensorboard==2.21.0
DEBS  := libopenmpi-dev openmpi-bin libclang-dev clang pkg-config build-essential fonts-dejavu-core unzip
# Only the tests need a browser: the status page is checked in headless Chromium.
TEST_DEBS := chromium

# libtorch comes from the torch wheel in the project's virtual environment; torch-sys finds it
# through the environment's python. The binaries embed its directory as an rpath (worker/build.rs),
# so they run without LD_LIBRARY_PATH.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO := cargo

.PHONY: setup debs test-debs install-debs venv build test demo paper gpu-kit fmt clean-runs help

help:
	@echo "make demo   - set up, build, and run the laptop demo (see README.md)"
	@echo "make test   - set up, build, and run every test"
	@echo "make paper  - the paper's experiments on moving-shapes (hours; resumable)"
	@echo "make setup  - install Debian packages and the torch wheel (idempotent)"
	@echo "make build  - build the release binaries into target/release/"
	@echo "make gpu-kit - the GPU check kit (target/gpu-kit, <= 60 MB): run its gpu-check.sh on a CUDA machine"

setup: debs venv

# Debian packages: OpenMPI (workers), libclang (the mpi crate's bindgen), a C/C++ toolchain.
debs:
	@$(MAKE) --no-print-directory install-debs PKGS="$(DEBS)"

test-debs:
	@$(MAKE) --no-print-directory install-debs PKGS="$(TEST_DEBS)"

install-debs:
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The torch wheel provides libtorch (and the NCCL that cudarc loads on GPU machines).
venv:
	@if ! $(VENV)/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null; then \
	  echo "installing torch==$(TORCH_VERSION) into $(VENV) (about 5 GB, a few minutes)"; \
	  python3 -m venv $(VENV) && \
	  $(VENV)/bin/pip install -q --disable-pip-version-check torch==$(TORCH_VERSION) numpy; \
	fi
	@if ! $(VENV)/bin/python -c "import sys, importlib.metadata as m; want = dict(p.split('==') for p in sys.argv[1:]); sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)" $(PY_PKGS) 2>/dev/null; then \
	  echo "installing $(PY_PKGS) into $(VENV)"; \
	  $(VENV)/bin/pip install -q --disable-pip-version-check $(PY_PKGS); \
	fi

build: setup
	$(CARGO) build --release --workspace --bins

# Unit tests of each crate, then the multi-process integration tests (real mpirun ranks).
# The last line sums up every test binary's result.
test: build test-debs
	@set -o pipefail; $(CARGO) test --release --workspace 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

# The laptop demo on the shipped tiny teacher: the real coordinator and 2 real MPI ranks run
# every FastLightGen stage (Stage I importance, Stage II pruning, Stage III distillation,
# export, sampling and evaluation of teacher and student) with committed checkpoints, about
# 15 minutes after the build on 2 cores, then write runs/demo-cpu/report.md and print its
# three numbers. Run again, it continues an interrupted run or shows the finished one's
# numbers; `rm -rf runs/demo-cpu` to start over.
demo: build
	./target/release/fastlightgen validate cluster-configs/demo-cpu.toml
	./target/release/fastlightgen run cluster-configs/demo-cpu.toml

# The paper's experiments on moving-shapes (main table, alpha and b2 ablations, quality
# against cost): about 2.5 hours on 2 cores after the demo; resumable (bench/paper.sh).
paper: build
	bench/paper.sh

# The GPU check kit: the worker built against the torch 2.11 wheel (what the lent GPU machines
# have), OpenMPI's run-time files and bench/gpu-check.sh in target/gpu-kit (at most 60 MB).
# See bench/gpu-kit/build.sh; run `target/gpu-kit/gpu-check.sh cuda` on the GPU machine.
gpu-kit: debs
	bench/gpu-kit/build.sh

fmt:
	$(CARGO) fmt --all
