# mfuser.cu — top-level commands. CMake does the building; this file installs what is missing and wraps it.
#
#   make            build (Release) into build/
#   make test       install missing packages, build, run every test (GPU tests skip without a device)
#   make demo       the README's run command
#   make gpu-check  on a GPU machine: build there, run the GPU tests, print a table
#   make deps       only install missing Debian packages (a fast no-op when all are there)
#
# Variables: BUILD_DIR (build), BUILD_TYPE (Release), JOBS (nproc), CMAKE_ARGS (extra -D flags),
#            e.g. make CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=80 for an A100.

BUILD_DIR  ?= build
BUILD_TYPE ?= Release
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=

# Debian 12 packages the build and the tests need (python3-torch is the tests' oracle, never a runtime dep).
DEB_PACKAGES := cmake g++ make pkg-config nlohmann-json3-dev libgtest-dev libpng-dev zlib1g-dev \
                libjpeg62-turbo-dev libopenblas-openmp-dev python3-torch python3-numpy python3-opencv

.PHONY: all deps configure build test demo gpu-check clean

all: build

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

configure:
	@[ -f $(BUILD_DIR)/CMakeCache.txt ] || cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: deps
	@$(MAKE) --no-print-directory build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# The demo segments tools/demo/street.png. With converted real weights at $(REAL_MODEL) it uses them;
# otherwise a TINY model of the same architecture with UNTRAINED random weights (made by `mfuser init`),
# which exercises the whole pipeline but segments nothing meaningfully, and says so.
REAL_MODEL ?= models/mfuser-clip-vitl-512/model.safetensors
DEMO_OUT   ?= out

demo: deps
	@$(MAKE) --no-print-directory build
	@if [ -f "$(REAL_MODEL)" ]; then \
	  echo "demo: using the converted weights $(REAL_MODEL)"; \
	  $(BUILD_DIR)/mfuser segment --weights "$(REAL_MODEL)" tools/demo/street.png --out $(DEMO_OUT); \
	else \
	  echo "demo: no real weights at $(REAL_MODEL) (see README: Weights)."; \
	  echo "demo: using a TINY, UNTRAINED model of the same architecture: the output shows the pipeline works,"; \
	  echo "      not what MFuser sees."; \
	  [ -f $(DEMO_OUT)/tiny-untrained/model.safetensors ] || \
	    $(BUILD_DIR)/mfuser init --config tools/configs/mfuser_clip_tiny.json --out $(DEMO_OUT)/tiny-untrained --force; \
	  $(BUILD_DIR)/mfuser segment --weights $(DEMO_OUT)/tiny-untrained/model.safetensors tools/demo/street.png \
	    --scale 1024x512 --out $(DEMO_OUT); \
	fi
	@echo "demo: outputs in $(DEMO_OUT)/ (street_label.png, street_color.png, street_overlay.png)"

gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf $(BUILD_DIR)
