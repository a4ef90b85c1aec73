// Repacking uint8 codes into the kernels' layouts (qgen_cpu.h): the "planes" words of every
// tier and the integer-table path's "nibbles" and "quads" bytes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstring>
#include <string>

#include "checks.h"
#include "entry_points.h"
#include "qgen_cpu.h"
#include "select.h"
#include "thread_pool.h"

namespace qgen {

int64_t planes_words(int64_t C, int64_t R, int bits) {
    return ceil_div(C, kLanes) * ceil_div(R, kChunkR) * bits * kLanes;
}

int64_t nibbles_bytes(int64_t N, int64_t K, int bits) {
    return ceil_div(N, 32) * ceil_div(K, 8) * bits * 32;
}

int64_t quads_bytes(int64_t N, int64_t K, int bits) {
    return ceil_div(N, 16) * ceil_div(K, 16) * bits * 64;
}

// codes uint8 [N, K] -> planes words for the forward (col = n, r = k) or, transposed, for the
// input gradient (col = k, r = n). Layout: qgen_cpu.h. Items are blocks of 16 columns, on the
// kernels' ThreadPool (safe in a forked child, where an OpenMP loop would never start).
py::array_t<uint32_t> repack_planes(const py::array& codes_a, int bits, bool transposed,
                                    int threads) {
    check_bits(bits);
    const uint8_t* codes = checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1);
    const int64_t C = transposed ? K : N, R = transposed ? N : K;
    const int64_t C16 = ceil_div(C, kLanes), R32 = ceil_div(R, kChunkR);
    py::array_t<uint32_t> out(planes_words(C, R, bits));
    uint32_t* w = out.mutable_data();
    const uint8_t top = static_cast<uint8_t>((1 << bits) - 1);
    std::atomic<bool> bad{false};
    {
        py::gil_scoped_release release;
        std::memset(w, 0, sizeof(uint32_t) * out.size());
        ThreadPool::instance().parallel_for(C16, resolve_threads(threads), [&](int64_t cb, int) {
            bool block_bad = false;
            for (int l = 0; l < kLanes; ++l) {
                const int64_t col = cb * kLanes + l;
                if (col >= C) break;
                for (int64_t r = 0; r < R; ++r) {
                    const uint8_t c = transposed ? codes[r * K + col] : codes[col * K + r];
                    block_bad = block_bad || c > top;
                    uint32_t* base = w + (cb * R32 + r / kChunkR) * bits * kLanes + l;
                    for (int b = 0; b < bits; ++b)
                        base[b * kLanes] |= static_cast<uint32_t>((c >> b) & 1u) << (r % kChunkR);
                }
            }
            if (block_bad) bad.store(true, std::memory_order_relaxed);
        });
    }
    if (bad.load())
        throw py::value_error("codes must lie in [0, " + std::to_string(top) + "] for " +
                              std::to_string(bits) + "-bit weights");
    return out;
}

// The byte layouts' shared walk over codes [N, K], one item per block of `cols` columns on the
// kernels' pool (GIL released): init(block) prepares the block's bytes, put(block, c, k, code)
// sets code (column c of the block, reduction index k); codes above 2^bits - 1 end in one
// ValueError after the walk.
template <class Init, class Put>
void walk_code_blocks(const py::array& codes_a, int bits, int threads, int cols, Init init,
                      Put put) {
    const uint8_t* codes = checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1);
    const uint8_t top = static_cast<uint8_t>((1 << bits) - 1);
    std::atomic<bool> bad{false};
    {
        py::gil_scoped_release release;
        ThreadPool::instance().parallel_for(ceil_div(N, cols), resolve_threads(threads),
                                            [&](int64_t cb, int) {
            init(cb);
            bool block_bad = false;
            for (int c = 0; c < cols && cb * cols + c < N; ++c) {
                const uint8_t* row = codes + (cb * cols + c) * K;
                for (int64_t k = 0; k < K; ++k) {
                    block_bad = block_bad || row[k] > top;
                    put(cb, c, k, row[k]);
                }
            }
            if (block_bad) bad.store(true, std::memory_order_relaxed);
        });
    }
    if (bad.load())
        throw py::value_error("codes must lie in [0, " + std::to_string(top) + "] for " +
                              std::to_string(bits) + "-bit weights");
}

// codes uint8 [N, K] -> the nibbles layout; items are 32-column blocks.
py::array_t<uint8_t> repack_nibbles(const py::array& codes_a, int bits, int threads) {
    check_bits(bits);
    checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1), Q = ceil_div(K, 8);
    py::array_t<uint8_t> out(nibbles_bytes(N, K, bits));
    uint8_t* w = out.mutable_data();
    std::memset(w, 0, out.size());
    walk_code_blocks(codes_a, bits, threads, 32, [](int64_t) {},
                     [&](int64_t cb, int l, int64_t k, uint8_t code) {
        const int64_t g = k / 4, q = g / 2;
        const int shift = static_cast<int>((g % 2) * 4 + k % 4);
        uint8_t* base = w + ((cb * Q + q) * bits) * 32 + l;
        for (int b = 0; b < bits; ++b)
            base[b * 32] |= static_cast<uint8_t>(((code >> b) & 1u) << shift);
    });
    return out;
}

// codes uint8 [N, K] -> the quads layout (qgen_cpu.h); items are 16-column blocks.
py::array_t<uint8_t> repack_quads(const py::array& codes_a, int bits, int threads) {
    check_bits(bits);
    checked<uint8_t>(codes_a, "codes", {-1, -1}, "uint8");
    const int64_t N = codes_a.shape(0), K = codes_a.shape(1), Q4 = ceil_div(K, 16);
    py::array_t<uint8_t> out(quads_bytes(N, K, bits));
    uint8_t* w = out.mutable_data();
    const int64_t block_bytes = Q4 * bits * 64;
    walk_code_blocks(codes_a, bits, threads, 16,
                     [&](int64_t cb) {  // every group's offset, index 0 (padding stays so)
        for (int64_t i = 0; i < block_bytes; ++i)
            w[cb * block_bytes + i] = static_cast<uint8_t>(16 * (i % 4));
    },
                     [&](int64_t cb, int c, int64_t k, uint8_t code) {
        const int64_t g = k / 4, q = g / 4;
        uint8_t* base = w + cb * block_bytes + q * bits * 64 + 4 * c + g % 4;
        for (int b = 0; b < bits; ++b)
            base[b * 64] |= static_cast<uint8_t>(((code >> b) & 1u) << (k % 4));
    });
    return out;
}

}  // namespace qgen
