// comm.h: the collectives of training on several GPUs (issue 12), over one group of ranks:
//
//   comm_all_to_all(c, send, recv, count, type)      send, recv: size x count; block j of send goes to
//                                                    rank j, block i of recv came from rank i
//   comm_reduce_scatter(c, send, recv, count, type)  send: size x count; recv (count) = the sum over
//                                                    ranks q of block `rank` of q's send
//   comm_all_gather(c, send, recv, count, type)      send: count; recv: size x count, block i from rank i
//   comm_all_reduce(c, send, recv, count, type)      recv (count) = the sum over ranks of send
//   comm_broadcast(c, buffer, count, type, root)     root's buffer to every rank
//
// Three backends:
//   COMM_SINGLE  one rank, any machine: copies (nothing when send == recv); always compiled
//   COMM_MPI     host buffers through MPI (the tests, any machine); compiled with MST_WITH_MPI
//   COMM_NCCL    device buffers through NCCL on the Comm's stream (the trainer); MST_WITH_NCCL (needs
//                MST_WITH_MPI: MPI starts the ranks and broadcasts the NCCL unique id, as llm.c does)
//
// Fixed-order reductions: the MPI backend never calls MPI_Reduce/MPI_Allreduce (their order of summation
// is the implementation's and may follow message timing). It moves every rank's contribution
// (MPI_Allgather, MPI_Alltoall) and sums in ascending rank order, ((x_0 + x_1) + x_2) + ..., in the
// element type, so every rank gets the same bits, run after run. NCCL's sums follow its ring/tree
// schedule, which is fixed for a given NCCL version, topology and world size (not timing-dependent), but
// is not rank order. An MPI or NCCL failure is one line, `error: rank R: comm: <call>: <message>`, and the whole
// job ends (MPI_Abort), since one rank leaving alone would hang the others.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <climits>
#include <vector>

#include "mst/comm_watchdog.h"

#ifdef MST_WITH_NCCL
#ifndef MST_WITH_MPI
#error "MST_WITH_NCCL needs MST_WITH_MPI (MPI starts the ranks and broadcasts the NCCL id)"
#endif
#include <cuda_runtime.h>
#include <nccl.h>
#endif
#ifdef MST_WITH_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only (OpenMPI's C++ bindings are deprecated and warn)
#include <mpi.h>
#endif

enum CommBackend { COMM_SINGLE, COMM_MPI, COMM_NCCL };
// element types: sums are defined for F32 and F64 everywhere, BF16 only on NCCL; any type moves
enum CommDtype { COMM_F32, COMM_F64, COMM_BF16, COMM_I32 };

static inline size_t comm_type_size(CommDtype t) { return t == COMM_F64 ? 8 : t == COMM_BF16 ? 2 : 4; }

struct Comm {
    CommBackend backend = COMM_SINGLE;
    int rank = 0, size = 1;
#ifdef MST_WITH_MPI
    MPI_Comm mpi = MPI_COMM_NULL;     // the group (MPI and NCCL backends)
#endif
#ifdef MST_WITH_NCCL
    ncclComm_t nccl = nullptr;
    cudaStream_t stream = nullptr;    // every NCCL collective of this group runs on it, in call order
#endif
};

// one error line, then the whole job ends
[[noreturn]] static inline void comm_fail(const char* call, const char* message) {
#ifdef MST_WITH_MPI
    int initialized = 0, rank = 0;
    MPI_Initialized(&initialized);
    if (initialized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "error: rank %d: comm: %s: %s\n", rank, call, message);
    fflush(stderr);
    if (initialized) MPI_Abort(MPI_COMM_WORLD, 1);
#else
    fprintf(stderr, "error: comm: %s: %s\n", call, message);
#endif
    exit(1);
}

static inline Comm comm_single() { return Comm(); }

// ----------------------------------------------------------------------------
// MPI: host buffers

#ifdef MST_WITH_MPI
static inline void comm_mpi_check(int result, const char* call) {
    if (result == MPI_SUCCESS) return;
    char message[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(result, message, &length);
    comm_fail(call, message);
}

// MPI counts are int: a block larger than INT_MAX bytes is refused (the tests move a few MB)
static inline int comm_mpi_bytes(size_t count, CommDtype type, const char* call) {
    size_t bytes = count * comm_type_size(type);
    if (bytes > (size_t)INT_MAX) comm_fail(call, "a block over 2 GiB is beyond the MPI host backend");
    return (int)bytes;
}

// Starts MPI (once per process) and returns the world. Errors come back as codes, checked by each call.
static inline Comm comm_init_mpi(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && MPI_Init(argc, argv) != MPI_SUCCESS) comm_fail("MPI_Init", "MPI did not start");
    Comm c;
    c.backend = COMM_MPI;
    c.mpi = MPI_COMM_WORLD;
    comm_mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    comm_mpi_check(MPI_Comm_rank(c.mpi, &c.rank), "MPI_Comm_rank");
    comm_mpi_check(MPI_Comm_size(c.mpi, &c.size), "MPI_Comm_size");
    return c;
}

// sum[i] = ((blocks[0][i] + blocks[1][i]) + blocks[2][i]) + ..., blocks `count` apart: the fixed order
template <typename T>
static inline void comm_sum_in_rank_order(T* sum, const T* blocks, int ranks, size_t count) {
    for (size_t i = 0; i < count; i++) {
        T acc = blocks[i];
        for (int r = 1; r < ranks; r++) acc += blocks[(size_t)r * count + i];
        sum[i] = acc;
    }
}

static inline void comm_sum_blocks(void* sum, const void* blocks, int ranks, size_t count, CommDtype type, const char* call) {
    if (type == COMM_F32) comm_sum_in_rank_order((float*)sum, (const float*)blocks, ranks, count);
    else if (type == COMM_F64) comm_sum_in_rank_order((double*)sum, (const double*)blocks, ranks, count);
    else comm_fail(call, "the MPI host backend sums only fp32 and fp64");
}
#endif

// ----------------------------------------------------------------------------
// NCCL: device buffers, on c.stream

#ifdef MST_WITH_NCCL
static inline void comm_nccl_check(ncclResult_t result, const char* call) {
    if (result != ncclSuccess) comm_fail(call, ncclGetErrorString(result));
}
static inline void comm_cuda_check(cudaError_t result, const char* call) {
    if (result != cudaSuccess) comm_fail(call, cudaGetErrorString(result));
}
// an NCCL collective enqueued on c.stream; on a GPU the watchdog times it (the CPU device's NCCL waits on the host)
template <typename Enqueue>
static inline void comm_nccl_collective(const Comm& c, const char* call, Enqueue enqueue) {
#ifdef MST_WATCH_DEVICE_COLLECTIVES
    comm_watch_device_collective(c.stream, call, enqueue);
#else
    (void)c;
    (void)call;
    enqueue();
#endif
}
static inline ncclDataType_t comm_nccl_type(CommDtype t) {
    return t == COMM_F64 ? ncclFloat64 : t == COMM_BF16 ? ncclBfloat16 : t == COMM_I32 ? ncclInt32 : ncclFloat32;
}

// The NCCL group of an MPI group (one rank per GPU, the device already selected with cudaSetDevice):
// rank 0 makes the unique id, MPI broadcasts it, every rank joins.
static inline Comm comm_init_nccl(const Comm& mpi_group) {
    Comm c = mpi_group;
    c.backend = COMM_NCCL;
    ncclUniqueId id;
    if (c.rank == 0) comm_nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    CommWait wait("ncclCommInitRank");  // every rank joins
    comm_mpi_check(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, c.mpi), "MPI_Bcast (NCCL id)");
    comm_nccl_check(ncclCommInitRank(&c.nccl, c.size, id, c.rank), "ncclCommInitRank");
    comm_cuda_check(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    return c;
}
#endif

// Splits a group into subgroups: ranks with the same color form one, ordered by key (Ulysses groups of
// S consecutive ranks, data-parallel groups of ranks S apart).
static inline Comm comm_split(const Comm& parent, int color, int key) {
    if (parent.backend == COMM_SINGLE) return parent;
    Comm c = parent;
    CommWait wait("comm_split");  // every rank of the parent group takes part
#ifdef MST_WITH_MPI
    comm_mpi_check(MPI_Comm_split(parent.mpi, color, key, &c.mpi), "MPI_Comm_split");
    comm_mpi_check(MPI_Comm_set_errhandler(c.mpi, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    comm_mpi_check(MPI_Comm_rank(c.mpi, &c.rank), "MPI_Comm_rank");
    comm_mpi_check(MPI_Comm_size(c.mpi, &c.size), "MPI_Comm_size");
#endif
#ifdef MST_WITH_NCCL
    if (parent.backend == COMM_NCCL) {
        comm_nccl_check(ncclCommSplit(parent.nccl, color, key, &c.nccl, nullptr), "ncclCommSplit");
        comm_cuda_check(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    }
#endif
    return c;
}

static inline void comm_free(Comm& c) {
#ifdef MST_WITH_NCCL
    if (c.nccl) { ncclCommDestroy(c.nccl); c.nccl = nullptr; }
    if (c.stream) { cudaStreamDestroy(c.stream); c.stream = nullptr; }
#endif
#ifdef MST_WITH_MPI
    if (c.mpi != MPI_COMM_NULL && c.mpi != MPI_COMM_WORLD) MPI_Comm_free(&c.mpi);
#endif
    c = Comm();
}

// one rank: the collective is a copy of count elements (nothing when in place)
static inline void comm_single_copy(void* recv, const void* send, size_t count, CommDtype type) {
    if (recv != send) memmove(recv, send, count * comm_type_size(type));
}

// ----------------------------------------------------------------------------
// the collectives

static inline void comm_all_to_all(const Comm& c, const void* send, void* recv, size_t count, CommDtype type) {
    if (c.backend == COMM_SINGLE) return comm_single_copy(recv, send, count, type);
#ifdef MST_WITH_NCCL
    if (c.backend == COMM_NCCL) {  // ncclSend/ncclRecv pairs in one group: NCCL's all-to-all
        size_t bytes = count * comm_type_size(type);
        return comm_nccl_collective(c, "all-to-all (ncclSend/ncclRecv)", [&] {
            comm_nccl_check(ncclGroupStart(), "ncclGroupStart");
            for (int peer = 0; peer < c.size; peer++) {
                comm_nccl_check(ncclSend((const char*)send + peer * bytes, count, comm_nccl_type(type), peer, c.nccl, c.stream), "ncclSend");
                comm_nccl_check(ncclRecv((char*)recv + peer * bytes, count, comm_nccl_type(type), peer, c.nccl, c.stream), "ncclRecv");
            }
            comm_nccl_check(ncclGroupEnd(), "ncclGroupEnd (all-to-all)");
        });
    }
#endif
#ifdef MST_WITH_MPI
    int bytes = comm_mpi_bytes(count, type, "MPI_Alltoall");
    CommWait wait("MPI_Alltoall");
    comm_mpi_check(MPI_Alltoall(send, bytes, MPI_BYTE, recv, bytes, MPI_BYTE, c.mpi), "MPI_Alltoall");
#endif
}

static inline void comm_all_gather(const Comm& c, const void* send, void* recv, size_t count, CommDtype type) {
    if (c.backend == COMM_SINGLE) return comm_single_copy(recv, send, count, type);
#ifdef MST_WITH_NCCL
    if (c.backend == COMM_NCCL)
        return comm_nccl_collective(c, "ncclAllGather", [&] {
            comm_nccl_check(ncclAllGather(send, recv, count, comm_nccl_type(type), c.nccl, c.stream), "ncclAllGather");
        });
#endif
#ifdef MST_WITH_MPI
    int bytes = comm_mpi_bytes(count, type, "MPI_Allgather");
    CommWait wait("MPI_Allgather");
    comm_mpi_check(MPI_Allgather(send, bytes, MPI_BYTE, recv, bytes, MPI_BYTE, c.mpi), "MPI_Allgather");
#endif
}

static inline void comm_reduce_scatter(const Comm& c, const void* send, void* recv, size_t count, CommDtype type) {
    if (c.backend == COMM_SINGLE) return comm_single_copy(recv, send, count, type);
#ifdef MST_WITH_NCCL
    if (c.backend == COMM_NCCL)
        return comm_nccl_collective(c, "ncclReduceScatter", [&] {
            comm_nccl_check(ncclReduceScatter(send, recv, count, comm_nccl_type(type), ncclSum, c.nccl, c.stream), "ncclReduceScatter");
        });
#endif
#ifdef MST_WITH_MPI
    // every rank's block for this rank (all-to-all), then their sum in rank order
    std::vector<char> blocks(c.size * count * comm_type_size(type));
    comm_all_to_all(c, send, blocks.data(), count, type);
    comm_sum_blocks(recv, blocks.data(), c.size, count, type, "reduce-scatter");
#endif
}

static inline void comm_all_reduce(const Comm& c, const void* send, void* recv, size_t count, CommDtype type) {
    if (c.backend == COMM_SINGLE) return comm_single_copy(recv, send, count, type);
#ifdef MST_WITH_NCCL
    if (c.backend == COMM_NCCL)
        return comm_nccl_collective(c, "ncclAllReduce", [&] {
            comm_nccl_check(ncclAllReduce(send, recv, count, comm_nccl_type(type), ncclSum, c.nccl, c.stream), "ncclAllReduce");
        });
#endif
#ifdef MST_WITH_MPI
    // every rank's contribution (all-gather), then their sum in rank order
    std::vector<char> blocks(c.size * count * comm_type_size(type));
    comm_all_gather(c, send, blocks.data(), count, type);
    comm_sum_blocks(recv, blocks.data(), c.size, count, type, "all-reduce");
#endif
}

static inline void comm_broadcast(const Comm& c, void* buffer, size_t count, CommDtype type, int root) {
    if (c.backend == COMM_SINGLE) return;
#ifdef MST_WITH_NCCL
    if (c.backend == COMM_NCCL)
        return comm_nccl_collective(c, "ncclBroadcast", [&] {
            comm_nccl_check(ncclBroadcast(buffer, buffer, count, comm_nccl_type(type), root, c.nccl, c.stream), "ncclBroadcast");
        });
#endif
#ifdef MST_WITH_MPI
    int bytes = comm_mpi_bytes(count, type, "MPI_Bcast");
    CommWait wait("MPI_Bcast");
    comm_mpi_check(MPI_Bcast(buffer, bytes, MPI_BYTE, root, c.mpi), "MPI_Bcast");
#endif
}

// a scalar summed over the group (host memory on every backend but NCCL): the loss, counts, norms
static inline double comm_sum_scalar(const Comm& c, double x) {
    double sum = x;
    if (c.backend != COMM_NCCL) comm_all_reduce(c, &x, &sum, 1, COMM_F64);
    else comm_fail("comm_sum_scalar", "the NCCL backend sums device buffers (use comm_all_reduce)");
    return sum;
}
