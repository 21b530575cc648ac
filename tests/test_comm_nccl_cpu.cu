// test_comm_nccl_cpu.cu: mst/comm.h's NCCL backend (device buffers, the Comm's stream) on the CPU device,
// whose NCCL runs over MPI (mst/cpu_device/nccl.cpp), against the MPI backend on host buffers: every
// collective the trainer will use, in fp32 (both sum in rank order: bitwise equal), bf16 sums (NCCL only:
// within one bf16 rounding of the fp32 sum), int32 moves, on the world and on groups split from it.
//   mpirun -np 4 ./test_comm_nccl_cpu       (make test runs it where MPI and nccl.h are)
#include <cmath>
#include <string>
#include <vector>

#include "mst/comm.h"
#include "tests/test_util.h"

#define CUDA_CHECK(call) comm_cuda_check((call), #call)

static Comm world;

// a check every rank makes; counted once, on rank 0, as failed if it failed on any rank
static void check_all(bool ok, const std::string& name) {
    int good = ok, all = 0;
    comm_mpi_check(MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_MIN, world.mpi), "MPI_Allreduce");
    if (world.rank == 0) check(all == 1, name.c_str());
}

// element i of rank r's send buffer: exact in bf16 and fp32, distinct per rank and element
static float element(int rank, size_t i) { return (float)((int)((rank * 37 + i * 11) % 101) - 50) / 16.f; }

// runs one collective on both backends and compares the received bytes
template <typename Run>
static void compare_backends(const Comm& host, const Comm& nccl, size_t send_count, size_t recv_count, CommDtype type,
                             const std::string& name, Run run) {
    size_t es = comm_type_size(type);
    std::vector<unsigned char> send(send_count * es), want(recv_count * es), got(recv_count * es);
    for (size_t i = 0; i < send_count; i++) {
        float x = element(host.rank, i);
        if (type == COMM_F32) memcpy(&send[i * 4], &x, 4);
        else if (type == COMM_I32) { int32_t v = (int32_t)(x * 16); memcpy(&send[i * 4], &v, 4); }
        else { uint32_t u; memcpy(&u, &x, 4); uint16_t b = (uint16_t)(u >> 16); memcpy(&send[i * 2], &b, 2); }
    }
    void *d_send, *d_recv;
    CUDA_CHECK(cudaMalloc(&d_send, send.size()));
    CUDA_CHECK(cudaMalloc(&d_recv, got.size()));
    CUDA_CHECK(cudaMemcpy(d_send, send.data(), send.size(), cudaMemcpyHostToDevice));
    run(nccl, d_send, d_recv);
    CUDA_CHECK(cudaStreamSynchronize(nccl.stream));
    CUDA_CHECK(cudaMemcpy(got.data(), d_recv, got.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(d_send));
    CUDA_CHECK(cudaFree(d_recv));
    if (type != COMM_BF16) {  // the MPI backend sums fp32 in rank order, as the CPU device's NCCL does
        run(host, send.data(), want.data());
        check_all(want == got, name + ": NCCL backend bitwise equal to the MPI backend");
        return;
    }
    // bf16 sums exist on NCCL only: against the fp32 backend's sum of the same values, rounded once
    std::vector<float> send32(send_count), want32(recv_count);
    for (size_t i = 0; i < send_count; i++) send32[i] = element(host.rank, i);
    run(host, send32.data(), want32.data());
    bool ok = true;
    for (size_t i = 0; i < recv_count; i++) {
        uint16_t b;
        memcpy(&b, &got[i * 2], 2);
        uint32_t u = (uint32_t)b << 16;
        float g;
        memcpy(&g, &u, 4);
        ok &= std::isfinite(g) && fabsf(g - want32[i]) <= fabsf(want32[i]) * (1.f / 256) + 1e-6f;
    }
    check_all(ok, name + ": NCCL backend's bf16 sums within one bf16 rounding of the fp32 sums");
}

static void test_group(const Comm& host, const Comm& nccl, const std::string& group) {
    const size_t n = 1000;  // per rank and block: not a power of two
    for (CommDtype type : {COMM_F32, COMM_I32}) {
        std::string t = type == COMM_F32 ? " fp32" : " int32";
        compare_backends(host, nccl, n * host.size, n * host.size, type, group + ": all-to-all" + t,
                         [&](const Comm& c, const void* s, void* r) { comm_all_to_all(c, s, r, n, type); });
        compare_backends(host, nccl, n, n * host.size, type, group + ": all-gather" + t,
                         [&](const Comm& c, const void* s, void* r) { comm_all_gather(c, s, r, n, type); });
        compare_backends(host, nccl, n, n, type, group + ": broadcast from the last rank" + t, [&](const Comm& c, const void* s, void* r) {
            if (c.backend == COMM_NCCL) CUDA_CHECK(cudaMemcpy(r, s, n * comm_type_size(type), cudaMemcpyDeviceToDevice));
            else memcpy(r, s, n * comm_type_size(type));
            comm_broadcast(c, r, n, type, c.size - 1);
        });
    }
    for (CommDtype type : {COMM_F32, COMM_BF16}) {
        std::string t = type == COMM_F32 ? " fp32" : " bf16";
        // the host side of a bf16 case sums the same values in fp32
        auto host_type = [&](const Comm& c) { return c.backend == COMM_NCCL ? type : COMM_F32; };
        compare_backends(host, nccl, n * host.size, n, type, group + ": reduce-scatter" + t,
                         [&](const Comm& c, const void* s, void* r) { comm_reduce_scatter(c, s, r, n, host_type(c)); });
        compare_backends(host, nccl, n, n, type, group + ": all-reduce" + t,
                         [&](const Comm& c, const void* s, void* r) { comm_all_reduce(c, s, r, n, host_type(c)); });
    }
}

int main(int argc, char** argv) {
    world = comm_init_mpi(&argc, &argv);
    Comm nccl_world = comm_init_nccl(world);
    check_all(nccl_world.size == world.size && nccl_world.rank == world.rank, "the NCCL group is the MPI world, rank for rank");
    test_group(world, nccl_world, "world of " + std::to_string(world.size));
    // Ulysses-like groups of consecutive ranks (color rank / 2), ordered by rank
    Comm host_half = comm_split(world, world.rank / 2, world.rank), nccl_half = comm_split(nccl_world, world.rank / 2, world.rank);
    test_group(host_half, nccl_half, "groups of 2 split from the world");
    comm_free(nccl_half);
    comm_free(host_half);
    comm_free(nccl_world);
    int status = 0;
    if (world.rank == 0) status = test_summary();
    comm_mpi_check(MPI_Bcast(&status, 1, MPI_INT, 0, world.mpi), "MPI_Bcast");
    MPI_Finalize();
    return status;
}
