#pragma once
// Small dense linear algebra for the quantizers (GPTQ): a register-tiled "C -= A·B" kernel, a
// blocked right-looking Cholesky factorisation and a blocked lower-triangular inverse, all on
// row-major matrices and all parallel over a ThreadPool. Internals: qlm::detail, no public API.
//
// The kernels are plain C++ loops over fixed-size register tiles (MR x NR accumulators) that the
// compiler vectorises (-O2/-O3; -march=native gives AVX-512 / AVX2 widths). They are not BLAS,
// but they reach a useful fraction of the FMA rate for the sizes GPTQ needs (K <= a few thousand).
#include <qlm/core/thread_pool.hpp>

#include <qlm/core/detail/xsimd.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <utility>
#include <vector>

// Full unrolling of the register-tile loops, so the accumulators live in registers.
#if defined(__clang__)
#define QLM_LINALG_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define QLM_LINALG_UNROLL _Pragma("GCC unroll 16")
#else
#define QLM_LINALG_UNROLL
#endif

namespace qlm::detail {

// Calls fn(tile) for every tile in [0, n); the threads of `pool` (or the caller alone when pool is
// null) pull tiles from a shared counter, so tiles of unequal cost balance themselves.
template <class F>
void parallel_tiles(ThreadPool* pool, std::size_t n, F&& fn) {
    if (n == 0) return;
    if (!pool || pool->size() == 1 || n == 1) {
        for (std::size_t t = 0; t < n; ++t) fn(t);
        return;
    }
    std::atomic<std::size_t> next{0};
    pool->run_on_all([&](std::size_t) {
        for (std::size_t t = next.fetch_add(1, std::memory_order_relaxed); t < n;
             t = next.fetch_add(1, std::memory_order_relaxed))
            fn(t);
    });
}

// One register tile: out[r][j] = Σ_{p < kc} a(r, p) · b[p][j] for r < MR, j < NV·W (W = SIMD
// lanes), with a(r, p) = a[r·a_rs + p·a_ps] (so A may be row-major or a packed transposed panel)
// and b row-major with row stride ldb. MR x NV vector accumulators stay in registers.
template <class T, int MR, int NV>
inline void tile_acc(std::size_t kc, const T* a, std::size_t a_rs, std::size_t a_ps, const T* b, std::size_t ldb,
                     T* out) noexcept {
    using V = xsimd::batch<T>;
    constexpr std::size_t W = V::size;
    V acc[MR][NV];
    QLM_LINALG_UNROLL
    for (int r = 0; r < MR; ++r)
        QLM_LINALG_UNROLL
        for (int v = 0; v < NV; ++v) acc[r][v] = V(T(0));
    for (std::size_t p = 0; p < kc; ++p) {
        V bv[NV];
        QLM_LINALG_UNROLL
        for (int v = 0; v < NV; ++v) bv[v] = V::load_unaligned(b + p * ldb + static_cast<std::size_t>(v) * W);
        const T* ap = a + p * a_ps;
        QLM_LINALG_UNROLL
        for (int r = 0; r < MR; ++r) {
            const V ar(ap[static_cast<std::size_t>(r) * a_rs]);
            QLM_LINALG_UNROLL
            for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(ar, bv[v], acc[r][v]);
        }
    }
    QLM_LINALG_UNROLL
    for (int r = 0; r < MR; ++r)
        QLM_LINALG_UNROLL
        for (int v = 0; v < NV; ++v) acc[r][v].store_unaligned(out + static_cast<std::size_t>(r) * NV * W + static_cast<std::size_t>(v) * W);
}

template <class T>
struct GemmTile {
    static constexpr int mr = 6;
    static constexpr int nv = 2;                                           // vectors per tile row
    static constexpr std::size_t nr = nv * xsimd::batch<T>::size;          // columns per tile
};

// C[m x n] -= A[m x kc] · B[kc x n], single-threaded, row-major with the given strides.
// Blocked over kc (kKc at a time); for each nr-column tile the kKc x nr slice of B is packed into a
// contiguous buffer (a strided slice would map onto a few L1 sets when ldb is a multiple of 1 KiB),
// then every row tile streams over it.
template <class T>
void gemm_sub(std::size_t m, std::size_t n, std::size_t kc, const T* a, std::size_t lda, const T* b, std::size_t ldb,
              T* c, std::size_t ldc) noexcept {
    constexpr int MR = GemmTile<T>::mr, NV = GemmTile<T>::nv;
    constexpr std::size_t NR = GemmTile<T>::nr;
    constexpr std::size_t kKc = 256;
    if (m == 0 || n == 0 || kc == 0) return;
    alignas(64) T out[MR * NR];
    alignas(64) T bpack[kKc * NR];
    const std::size_t n_full = n / NR * NR;
    for (std::size_t p0 = 0; p0 < kc; p0 += kKc) {
        const std::size_t pc = std::min(kKc, kc - p0);
        const T* ab = a + p0;
        for (std::size_t j0 = 0; j0 < n_full; j0 += NR) {
            for (std::size_t p = 0; p < pc; ++p)
                for (std::size_t j = 0; j < NR; ++j) bpack[p * NR + j] = b[(p0 + p) * ldb + j0 + j];
            for (std::size_t i = 0; i < m; i += MR) {
                const std::size_t rows = std::min<std::size_t>(MR, m - i);
                if (rows == static_cast<std::size_t>(MR))
                    tile_acc<T, MR, NV>(pc, ab + i * lda, lda, 1, bpack, NR, out);
                else
                    for (std::size_t r = 0; r < rows; ++r) tile_acc<T, 1, NV>(pc, ab + (i + r) * lda, lda, 1, bpack, NR, out + r * NR);
                for (std::size_t r = 0; r < rows; ++r) {
                    T* cr = c + (i + r) * ldc + j0;
                    for (std::size_t j = 0; j < NR; ++j) cr[j] -= out[r * NR + j];
                }
            }
        }
    }
    if (n_full < n) {  // right edge: plain loops
        for (std::size_t i = 0; i < m; ++i) {
            T* cr = c + i * ldc;
            const T* ar = a + i * lda;
            for (std::size_t p = 0; p < kc; ++p) {
                const T av = ar[p];
                const T* bp = b + p * ldb;
                for (std::size_t j = n_full; j < n; ++j) cr[j] -= av * bp[j];
            }
        }
    }
}

// In-place lower Cholesky A = L·Lᵀ of the n x n row-major matrix `a` (only the lower triangle is
// read; the strict upper triangle is left holding garbage). Returns -1 on success, or the index
// of the first pivot that is not > rel_tol · (its original diagonal value) (not positive
// definite, numerically singular, or NaN): the factorisation stops there.
inline std::ptrdiff_t cholesky_lower(double* a, std::size_t n, ThreadPool* pool, double rel_tol = 0.0) {
    constexpr std::size_t nb = 96;   // panel width
    constexpr std::size_t mb = 64;   // row tile of the trailing update
    std::vector<double> d0(n), panel_t, l11t;
    std::vector<std::pair<std::size_t, std::size_t>> tiles;
    for (std::size_t i = 0; i < n; ++i) d0[i] = a[i * n + i];
    for (std::size_t k0 = 0; k0 < n; k0 += nb) {
        const std::size_t k1 = std::min(n, k0 + nb);
        // 1. the diagonal block (its earlier updates were applied by previous trailing updates)
        for (std::size_t j = k0; j < k1; ++j) {
            double s = a[j * n + j];
            for (std::size_t p = k0; p < j; ++p) s -= a[j * n + p] * a[j * n + p];
            if (!(s > rel_tol * d0[j]) || !std::isfinite(s)) return static_cast<std::ptrdiff_t>(j);
            const double l = std::sqrt(s);
            a[j * n + j] = l;
            for (std::size_t i = j + 1; i < k1; ++i) {
                double t = a[i * n + j];
                for (std::size_t p = k0; p < j; ++p) t -= a[i * n + p] * a[j * n + p];
                a[i * n + j] = t / l;
            }
        }
        if (k1 == n) break;
        const std::size_t m = n - k1, kc = k1 - k0;
        // 2. the panel below it: L21 = A21 · L11^-T, row by row, in axpy form against L11ᵀ
        //    (column c of L11 made contiguous), so the inner loops vectorise.
        const std::size_t row_tiles = (m + mb - 1) / mb;
        l11t.assign(kc * kc, 0.0);
        for (std::size_t c = 0; c < kc; ++c)
            for (std::size_t p = c; p < kc; ++p) l11t[c * kc + p] = a[(k0 + p) * n + k0 + c];
        parallel_tiles(pool, row_tiles, [&](std::size_t t) {
            const std::size_t i0 = k1 + t * mb, i1 = std::min(n, i0 + mb);
            for (std::size_t i = i0; i < i1; ++i) {
                double* row = a + i * n + k0;
                for (std::size_t c = 0; c < kc; ++c) {
                    const double* lc = l11t.data() + c * kc;
                    const double v = row[c] / lc[c];
                    row[c] = v;
                    for (std::size_t p = c + 1; p < kc; ++p) row[p] -= v * lc[p];
                }
            }
        });
        // 3. trailing update A22 -= L21 · L21ᵀ (lower part, by row tiles), with L21ᵀ packed
        //    as a kc x m row-major panel so the kernel streams it.
        panel_t.assign(kc * m, 0.0);
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t p = 0; p < kc; ++p) panel_t[p * m + i] = a[(k1 + i) * n + k0 + p];
        // Work items: (row tile of mb rows, column block of nbc columns) on or below the diagonal,
        // so an item's slices of L21 and L21ᵀ both stay in L2.
        constexpr std::size_t nbc = 128;
        tiles.clear();
        for (std::size_t ti = row_tiles; ti-- > 0;)  // costly-last rows first: all items cost the same
            for (std::size_t j0 = 0; j0 < std::min(m, (ti + 1) * mb); j0 += nbc)
                tiles.emplace_back(ti, j0);
        parallel_tiles(pool, tiles.size(), [&](std::size_t t) {
            const std::size_t i0 = tiles[t].first * mb, i1 = std::min(m, i0 + mb);
            const std::size_t j0 = tiles[t].second, j1 = std::min(i1, j0 + nbc);
            gemm_sub<double>(i1 - i0, j1 - j0, kc, a + (k1 + i0) * n + k0, n, panel_t.data() + j0, m,
                             a + (k1 + i0) * n + k1 + j0, n);
        });
    }
    return -1;
}

// A square matrix stored as column panels of kPanelCols columns, each panel row-major over all
// n rows (panel t holds X[i][t·w + c] at data[(t·n + i)·w + c]). Walking down a panel is
// contiguous, which row-major storage with a row stride of n doubles is not (TLB misses).
struct PanelMatrix {
    static constexpr std::size_t w = 64;
    std::size_t n = 0;
    std::vector<double> data;
    explicit PanelMatrix(std::size_t size) : n(size), data(((size + w - 1) / w) * w * size, 0.0) {}
    double* panel(std::size_t t) noexcept { return data.data() + t * n * w; }
    double at(std::size_t i, std::size_t j) const noexcept { return data[((j / w) * n + i) * w + j % w]; }
};

// X = L^-1 for the lower-triangular n x n row-major L (only its lower triangle is read); X is
// lower triangular (its upper part stays zero). Row blocks of mb, each one
//   X[I, :i0] = -L[I,I]^-1 · (L[I, :i0] · X[:i0, :i0]),   X[I, I] = L[I,I]^-1,
// parallel over the column panels (each needs only p >= its first column, X being lower).
inline PanelMatrix invert_lower(const double* l, std::size_t n, ThreadPool* pool) {
    constexpr std::size_t mb = 64;  // row block
    constexpr std::size_t nt = PanelMatrix::w;
    PanelMatrix x(n);
    for (std::size_t i0 = 0; i0 < n; i0 += mb) {
        const std::size_t i1 = std::min(n, i0 + mb);
        const std::size_t tiles = (i1 + nt - 1) / nt;  // columns [0, i1)
        parallel_tiles(pool, tiles, [&](std::size_t t) {
            const std::size_t j0 = t * nt, j1 = std::min(i1, j0 + nt), w = j1 - j0;
            double* xp = x.panel(t);  // xp[i * nt + c] = X[i][j0 + c]
            if (j0 < i0) {
                // Z = -L[I, j0:i0] · X[j0:i0, j0:j1]  (X[p, j] = 0 for p < j)
                gemm_sub<double>(i1 - i0, w, i0 - j0, l + i0 * n + j0, n, xp + j0 * nt, nt, xp + i0 * nt, nt);
            }
            // forward substitution inside the block: X[i, cols] = (Z[i, cols] - Σ_q L[i,q] X[q, cols]) / L[i,i]
            for (std::size_t i = i0; i < i1; ++i) {
                double* xi = xp + i * nt;
                if (i >= j0 && i < j1) xi[i - j0] += 1.0;  // the identity's column
                const std::size_t q0 = std::max(i0, j0);
                for (std::size_t q = q0; q < i; ++q) {
                    const double lq = l[i * n + q];
                    const double* xq = xp + q * nt;
                    const std::size_t c1 = std::min(j1, q + 1) - j0;  // X[q, c] = 0 for c > q
                    for (std::size_t c = 0; c < c1; ++c) xi[c] -= lq * xq[c];
                }
                const double inv = 1.0 / l[i * n + i];
                const std::size_t c1 = std::min(j1, i + 1) - j0;
                for (std::size_t c = 0; c < c1; ++c) xi[c] *= inv;
            }
        });
    }
    return x;
}

}  // namespace qlm::detail
