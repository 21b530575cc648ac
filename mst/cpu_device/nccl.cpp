// mst/cpu_device/nccl.cpp: the NCCL calls mst/comm.h makes, on the CPU device, over MPI (the ranks are
// processes under mpirun on one machine; device buffers are host memory here). Each collective runs in its
// stream's order (mst_cpu::stream_enqueue), so a rank's collectives reach MPI in the order its program
// issues them, as NCCL requires. Sums go through MPI_Allgather and add the ranks' contributions in rank
// order (fp32 for fp32 and bf16, which is rounded once at the end; fp64, int32 in their own types): the
// same bits on every rank. NCCL's own order follows its ring or tree; results agree within rounding.
// Built only where MPI is (the Makefile's MPI_CFLAGS); nccl.h comes with the CUDA toolkit.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#include <cstdio>
#include <cstring>
#include <vector>
#include <nccl.h>

#include "mst/cpu_device/runtime.h"
#ifndef MST_WITH_MPI
#define MST_WITH_MPI 1  // this file is MPI's: the watchdog's timeout ends the job with MPI_Abort
#endif
#include "mst/comm_watchdog.h"  // each MPI call that waits for the other ranks is timed (--comm-timeout)

struct ncclComm {
    MPI_Comm mpi;
    int rank, size;
};

namespace {

size_t type_size(ncclDataType_t t) {
    switch (t) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        default: return 8;
    }
}

void check(int result, const char* call) {
    if (result != MPI_SUCCESS) mst_cpu::fatal("%s (NCCL over MPI on the CPU device): MPI error %d", call, result);
}

using mst_cpu::bf16_to_float;
using mst_cpu::float_to_bf16;

// out[i] = sum over ranks r (in order) of blocks[r * stride + offset + i]
void sum_blocks(void* out, const unsigned char* blocks, int ranks, size_t stride, size_t offset, size_t count, ncclDataType_t t) {
    for (size_t i = 0; i < count; i++) {
        if (t == ncclFloat32 || t == ncclBfloat16) {
            float s = 0.f;
            for (int r = 0; r < ranks; r++) {
                const unsigned char* p = blocks + (r * stride + offset + i) * type_size(t);
                float x;
                if (t == ncclFloat32) memcpy(&x, p, 4);
                else { uint16_t b; memcpy(&b, p, 2); x = bf16_to_float(b); }
                s = r == 0 ? x : s + x;
            }
            if (t == ncclFloat32) memcpy((float*)out + i, &s, 4);
            else ((uint16_t*)out)[i] = float_to_bf16(s);
        } else if (t == ncclFloat64) {
            double s = 0;
            for (int r = 0; r < ranks; r++) s += ((const double*)blocks)[r * stride + offset + i];
            ((double*)out)[i] = s;
        } else if (t == ncclInt32) {
            int32_t s = 0;
            for (int r = 0; r < ranks; r++) s += ((const int32_t*)blocks)[r * stride + offset + i];
            ((int32_t*)out)[i] = s;
        } else {
            mst_cpu::fatal("NCCL sum over data type %d: not emulated (float32, bfloat16, float64, int32 are)", (int)t);
        }
    }
}

// every rank's `bytes` from send, rank r's at r * bytes
std::vector<unsigned char> gather_all(const void* send, size_t bytes, const ncclComm* c, const char* call) {
    if (bytes > (size_t)INT32_MAX) mst_cpu::fatal("%s: %zu bytes per rank, more than MPI's int counts", call, bytes);
    std::vector<unsigned char> all(bytes * c->size);
    CommWait wait(call);
    check(MPI_Allgather(send, (int)bytes, MPI_BYTE, all.data(), (int)bytes, MPI_BYTE, c->mpi), call);
    return all;
}

struct PointToPoint {
    bool send;
    void* buffer;
    size_t bytes;
    int peer;
    ncclComm* comm;
};
int g_group_depth = 0;
std::vector<PointToPoint> g_group;
cudaStream_t g_group_stream = nullptr;  // the stream of the group's first send or receive

void run_point_to_point(const std::vector<PointToPoint>& ops) {
    std::vector<MPI_Request> requests(ops.size());
    for (size_t i = 0; i < ops.size(); i++) {
        const PointToPoint& p = ops[i];
        if (p.bytes > (size_t)INT32_MAX) mst_cpu::fatal("ncclSend/ncclRecv: %zu bytes, more than MPI's int counts", p.bytes);
        if (p.send) check(MPI_Isend(p.buffer, (int)p.bytes, MPI_BYTE, p.peer, 77, p.comm->mpi, &requests[i]), "ncclSend");
        else check(MPI_Irecv(p.buffer, (int)p.bytes, MPI_BYTE, p.peer, 77, p.comm->mpi, &requests[i]), "ncclRecv");
    }
    CommWait wait("ncclGroupEnd (ncclSend/ncclRecv)");
    check(MPI_Waitall((int)requests.size(), requests.data(), MPI_STATUSES_IGNORE), "ncclGroupEnd");
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    memset(id, 0, sizeof *id);
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    snprintf(id->internal, sizeof id->internal, "mst-cpu-device-nccl-%d", world_rank);
    return ncclSuccess;
}

// the ranks that pass the same id form the communicator (split from MPI_COMM_WORLD by the id's hash)
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    uint32_t color = 2166136261u;
    for (char ch : id.internal) color = (color ^ (unsigned char)ch) * 16777619u;
    ncclComm* c = new ncclComm;
    CommWait wait("ncclCommInitRank");
    check(MPI_Comm_split(MPI_COMM_WORLD, (int)(color & 0x7fffffff), rank, &c->mpi), "ncclCommInitRank");
    MPI_Comm_rank(c->mpi, &c->rank);
    MPI_Comm_size(c->mpi, &c->size);
    if (c->size != nranks || c->rank != rank)
        mst_cpu::fatal("ncclCommInitRank: rank %d of %d, but the ranks with this id are %d (this one %d)", rank, nranks, c->size, c->rank);
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t*) {
    ncclComm* c = new ncclComm;
    CommWait wait("ncclCommSplit");
    check(MPI_Comm_split(comm->mpi, color, key, &c->mpi), "ncclCommSplit");
    MPI_Comm_rank(c->mpi, &c->rank);
    MPI_Comm_size(c->mpi, &c->size);
    *newcomm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    MPI_Comm_free(&comm->mpi);
    delete comm;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) { return result == ncclSuccess ? "no error" : "NCCL error (CPU device)"; }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
    if (op != ncclSum) mst_cpu::fatal("ncclAllReduce: reduction %d (the CPU device emulates ncclSum)", (int)op);
    mst_cpu::stream_enqueue(stream, "ncclAllReduce", [=] {
        std::vector<unsigned char> all = gather_all(send, count * type_size(type), comm, "ncclAllReduce");
        sum_blocks(recv, all.data(), comm->size, count, 0, count, type);
    });
    return ncclSuccess;
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
    if (op != ncclSum) mst_cpu::fatal("ncclReduceScatter: reduction %d (the CPU device emulates ncclSum)", (int)op);
    mst_cpu::stream_enqueue(stream, "ncclReduceScatter", [=] {
        size_t per_rank = count * comm->size;
        std::vector<unsigned char> all = gather_all(send, per_rank * type_size(type), comm, "ncclReduceScatter");
        sum_blocks(recv, all.data(), comm->size, per_rank, (size_t)comm->rank * count, count, type);
    });
    return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm, cudaStream_t stream) {
    mst_cpu::stream_enqueue(stream, "ncclAllGather", [=] {
        std::vector<unsigned char> all = gather_all(send, count * type_size(type), comm, "ncclAllGather");
        memcpy(recv, all.data(), all.size());
    });
    return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream) {
    mst_cpu::stream_enqueue(stream, "ncclBroadcast", [=] {
        size_t bytes = count * type_size(type);
        if (comm->rank == root && recv != send) memmove(recv, send, bytes);
        if (bytes > (size_t)INT32_MAX) mst_cpu::fatal("ncclBroadcast: %zu bytes, more than MPI's int counts", bytes);
        CommWait wait("ncclBroadcast");
        check(MPI_Bcast(recv, (int)bytes, MPI_BYTE, root, comm->mpi), "ncclBroadcast");
    });
    return ncclSuccess;
}

ncclResult_t ncclGroupStart() { g_group_depth++; return ncclSuccess; }

// the group's sends and receives, posted together and completed together (as NCCL fuses a group), in the
// order of the first op's stream
ncclResult_t ncclGroupEnd() {
    if (g_group_depth == 0) mst_cpu::fatal("ncclGroupEnd without ncclGroupStart");
    if (--g_group_depth > 0 || g_group.empty()) return ncclSuccess;
    std::vector<PointToPoint> ops;
    ops.swap(g_group);
    mst_cpu::stream_enqueue(g_group_stream, "ncclGroupEnd (send/recv)", [ops] { run_point_to_point(ops); });
    return ncclSuccess;
}

// outside a group a send or receive runs alone (it completes only when its peer's matching call does)
static void point_to_point(const PointToPoint& p, cudaStream_t stream) {
    if (g_group_depth == 0) {
        mst_cpu::stream_enqueue(stream, p.send ? "ncclSend" : "ncclRecv", [p] { run_point_to_point({p}); });
        return;
    }
    if (g_group.empty()) g_group_stream = stream;
    g_group.push_back(p);
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
    point_to_point({true, const_cast<void*>(send), count * type_size(type), peer, comm}, stream);
    return ncclSuccess;
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
    point_to_point({false, recv, count * type_size(type), peer, comm}, stream);
    return ncclSuccess;
}

}  // extern "C"
