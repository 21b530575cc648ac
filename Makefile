# mst: Mini-Sequence Transformer trainer for Llama 3 in raw CUDA C++.
# make train_llama | test_llama | test | dev | tokenizer | data | bench_tokenizer | clean
# Everything builds on a machine with the CUDA toolkit and no GPU; GPU tests skip there.

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CXX       ?= g++
# sm_80 (A100) and sm_90a (H100/H200, wgmma); override with e.g. GPU_ARCH="-gencode arch=compute_90a,code=sm_90a"
GPU_ARCH  ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a

CXXFLAGS  ?= -O2 -std=c++17 -Wall -Wextra -fopenmp -march=x86-64-v2
NVCCFLAGS ?= -O3 -std=c++17 $(GPU_ARCH) -Xcompiler -fopenmp,-Wall --expt-relaxed-constexpr -lineinfo
CUDA_LIBS  = -lcublasLt -lcublas -lgomp

PCRE2_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE2_LIBS   := $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)

COMMON_HEADERS = llama_config.h memory_plan.h llama_reference.h test_util.h

.PHONY: all test dev clean tokenizer data bench_tokenizer

all: train_llama test_llama tokenize

# ---- the trainer and its GPU test (issues 2, 4, 5) ----
train_llama: train_llama.cu mst_kernels.cuh dataloader.h tokenizer.h $(COMMON_HEADERS)
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

test_llama: test_llama.cu mst_kernels.cuh $(COMMON_HEADERS)
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

# ---- CPU reference, golden comparison, memory plan (issue 2) ----
test_reference: test_reference.cpp $(COMMON_HEADERS)
	$(CXX) $(CXXFLAGS) -o $@ $<

test_memory_plan: test_memory_plan.cpp memory_plan.h llama_config.h test_util.h
	$(CXX) $(CXXFLAGS) -o $@ $<

# ---- tokenizer and data (issue 3) ----

# ---- checkpoints and Hugging Face weights (issue 6) ----

# ---- kernel microbenchmarks (issue 4) ----

# ---- the whole suite: CPU tests always, GPU tests where a GPU is present ----
TEST_PROGRAMS = ./test_memory_plan ./test_reference ./test_llama
test: $(patsubst ./%,%,$(TEST_PROGRAMS)) train_llama
	bash dev/run_tests.sh $(TEST_PROGRAMS) "bash dev/test_cli.sh"

clean:
	rm -f train_llama test_llama test_reference test_memory_plan tokenize test_tokenizer bench_tokenizer test_checkpoint
	rm -rf dev/cuda/bin
