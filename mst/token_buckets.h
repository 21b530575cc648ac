// mst/token_buckets.h: the embedding backward's buckets, computed on the host as each batch's tokens are
// uploaded. A stable counting sort by token id lists every position once, ids ascending and the positions
// of one id ascending; the GPU (embedding_backward, mst_kernels.cuh) then reduces one bucket per block in
// that order, which is embedding_backward_cpu's order for every dwte element: the weight gradient is
// bitwise equal to the CPU reference's and to itself across runs, without atomics.
//
// The table, uploaded in one copy (memory_plan.h's tokens region holds it after the inputs and targets):
//   positions[N]           the token positions, sorted by id, ascending within an id
//   bucket_start[N + 1]    bucket b is positions[bucket_start[b] .. bucket_start[b + 1]); entries past the
//                          bucket count are unused
//   bucket_id[N]           bucket b's token id
#pragma once
#include <cstddef>
#include <vector>

// ints in the table for N tokens: N + (N + 1) + N
static inline size_t token_bucket_ints(size_t N) { return 3 * N + 1; }

struct TokenBuckets {
    std::vector<int> counts;  // V + 1: the counting sort's histogram, then each id's next free slot
    std::vector<int> table;   // token_bucket_ints(N), the layout above
    int N = 0;
    int count = 0;            // distinct ids: the number of buckets (<= N)
    const int* positions() const { return table.data(); }
    const int* bucket_start() const { return table.data() + N; }
    const int* bucket_id() const { return table.data() + 2 * (size_t)N + 1; }
};

// Fills b from tokens[0 .. N), each an id in [0, V). Returns false (b unspecified) if an id is outside.
// O(N + V) time; b's vectors are reused from call to call.
static inline bool bucket_tokens(TokenBuckets* b, const int* tokens, int N, int V) {
    b->N = N;
    b->counts.assign((size_t)V + 1, 0);
    b->table.resize(token_bucket_ints(N));
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V) return false;
        b->counts[tokens[n] + 1]++;
    }
    for (int v = 0; v < V; v++) b->counts[v + 1] += b->counts[v];  // counts[v]: id v's first slot
    int* positions = b->table.data();
    for (int n = 0; n < N; n++) positions[b->counts[tokens[n]]++] = n;  // ascending n: stable
    int* start = b->table.data() + N;
    int* id = b->table.data() + 2 * (size_t)N + 1;
    int buckets = 0;
    for (int i = 0; i < N; i++) {
        int token = tokens[positions[i]];
        if (i == 0 || token != id[buckets - 1]) {
            start[buckets] = i;
            id[buckets++] = token;
        }
    }
    start[buckets] = N;
    b->count = buckets;
    return true;
}
