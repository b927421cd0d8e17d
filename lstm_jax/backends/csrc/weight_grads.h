// lstm_jax CPU kernel: the weight gradients of one layer as one packed GEMM,
//   dW = [X | H_prev]^T dZ  ([D + H, 4H])  and  db = the column sums of dZ  ([4H]),
// over the R = T * B rows (t, b) of X = xs [R, D], dZ [R, 4H] and H_prev, whose row (t, b) is
// h_{t-1}[b] * mask[b] (h_{-1} = h0), read from ys and h0 as it is packed: [X | H_prev] is never
// written out. XLA ran this transposed-operand GEMM at ~210-220 GFLOP/s on a 2-core AVX-512 Xeon
// where oneDNN's ran at ~310 (benchmarks/cpu_speed.py: it is a third of a train step's FLOPs).
//
// Blocked as GotoBLAS does it: per block of KC rows, [X | H_prev] is packed once into micro-panels
// of MR columns ([M / MR][KC][MR], shared by the team), then every panel of NV vectors of dZ's
// columns is packed ([KC][NV * VL], by the member that owns the panel in that block, which also
// adds its column sums to db) and multiplied into dW's rows MR at a time by the register-blocked
// micro-kernel (accumulating over the blocks). Two team steps per block: pack, then multiply.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "packed_gemm.h"
#include "thread_pool.h"

namespace lstm_jax_cpu {

// The micro-kernel's shape, as the forward pass's: MR rows x NV vectors of accumulators.
#ifdef __AVX512F__
constexpr int WG_NV = 4;
#else
constexpr int WG_NV = 2;
#endif
constexpr int WG_MR = FW_MR;
constexpr int WG_W = WG_NV * VL;  // dZ columns per panel
constexpr int64_t WG_KC = 256;    // rows per block: packed [X | H_prev] and a dZ panel stay in L2

struct WeightGradArgs {
  const float *xs, *ys, *h0, *mask, *dz;  // xs [R, D], ys [R, H], h0 and mask [B, H], dz [R, 4H]
  int64_t t, b, d, h;
  float *dw, *db;  // [D + H, 4H], [4H]
};

// Rows [r0, r0 + kc) of [X | H_prev], columns of micro-panels [g0, g1) (MR columns each, zero past
// M = D + H), into ap[g][k][MR].
inline void pack_inputs(const WeightGradArgs& a, int64_t r0, int64_t kc, int64_t g0, int64_t g1, float* ap) {
  const int64_t D = a.d, H = a.h, M = D + H;
  const int64_t x_end = std::min(g1, D / WG_MR), h_begin = std::max(g0, (D + WG_MR - 1) / WG_MR);
  const int64_t h_end = std::min(g1, M / WG_MR);  // micro-panels wholly in X, wholly in H_prev
  float row[WG_MR];
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t r = r0 + k, bi = r % a.b;
    const float* x = a.xs + r * D;
    const float* hp = r < a.b ? a.h0 + bi * H : a.ys + (r - a.b) * H;  // h_{t-1}
    const float* m = a.mask + bi * H;
    float* dst = ap + k * WG_MR;
    for (int64_t g = g0; g < g1; ++g) {
      if (g < x_end) {
        std::memcpy(row, x + g * WG_MR, sizeof(row));
      } else if (g >= h_begin && g < h_end) {
        const int64_t c = g * WG_MR - D;
        for (int i = 0; i < WG_MR; ++i) row[i] = hp[c + i] * m[c + i];
      } else {  // straddles X and H_prev, or runs past M
        for (int i = 0; i < WG_MR; ++i) {
          const int64_t c = g * WG_MR + i;
          row[i] = c < D ? x[c] : (c < M ? hp[c - D] * m[c - D] : 0.0f);
        }
      }
      std::memcpy(dst + g * kc * WG_MR, row, sizeof(row));
    }
  }
}

// out[r * ldo + 0 : NV * VL] += a^T p for the rows r < rows (<= MR) of one micro-panel.
template <int NV, int MR>
inline void micro_packed(int rows, const float* a, const float* p, int64_t K, float* out, int64_t ldo) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = vf{};
      if (r < rows) std::memcpy(&acc[r][v], out + r * ldo + v * VL, sizeof(vf));
    }
  accumulate<NV, MR, true>(acc, a, 0, p, K);  // a: one micro-panel packed k-major
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(out + r * ldo + v * VL, &acc[r][v], sizeof(vf));
}

// dW and db of one problem (see the top of this file) on up to `threads` threads of `pool`.
template <class Pool>
void weight_grads(const WeightGradArgs& a, Pool* pool, int threads) {
  const int64_t G = 4 * a.h, M = a.d + a.h, R = a.t * a.b;
  const int64_t groups = (M + WG_MR - 1) / WG_MR, panels = (G + WG_W - 1) / WG_W;
  const int64_t blocks = (R + WG_KC - 1) / WG_KC, kc_max = std::min<int64_t>(WG_KC, R);
  std::fill(a.dw, a.dw + M * G, 0.0f);
  std::fill(a.db, a.db + G, 0.0f);
  float* ap = scratch<float>(5, groups * kc_max * WG_MR);
  float* bps = scratch<float>(6, max_team(pool, threads) * kc_max * WG_W);  // per member: one packed dZ panel
  run_steps(pool, threads, 2 * blocks, [&](int64_t s, int tid, int size) {
    const int64_t r0 = (s / 2) * WG_KC, kc = std::min<int64_t>(WG_KC, R - r0);
    int64_t lo, hi;
    if (s % 2 == 0) {  // pack this block of [X | H_prev], its micro-panels shared out
      share(groups, tid, size, &lo, &hi);
      pack_inputs(a, r0, kc, lo, hi, ap);
      return;
    }
    float* bp = bps + tid * kc_max * WG_W;
    share(panels, tid, size, &lo, &hi);
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t n0 = p * WG_W, nw = std::min<int64_t>(WG_W, G - n0);
      alignas(64) float sums[WG_W] = {};
      for (int64_t k = 0; k < kc; ++k) {  // pack the panel (zero past G) and sum its columns for db
        const float* src = a.dz + (r0 + k) * G + n0;
        float* dst = bp + k * WG_W;
        std::copy(src, src + nw, dst);
        std::fill(dst + nw, dst + WG_W, 0.0f);
        for (int j = 0; j < WG_W; ++j) sums[j] += dst[j];
      }
      for (int64_t j = 0; j < nw; ++j) a.db[n0 + j] += sums[j];
      for (int64_t g = 0; g < groups; ++g) {
        const int rows = static_cast<int>(std::min<int64_t>(WG_MR, M - g * WG_MR));
        float* out = a.dw + g * WG_MR * G + n0;
        if (nw == WG_W) {
          micro_packed<WG_NV, WG_MR>(rows, ap + g * kc * WG_MR, bp, kc, out, G);
        } else {  // the last, partial panel: through a full-width tile
          alignas(64) float tile[WG_MR * WG_W] = {};
          for (int r = 0; r < rows; ++r) std::copy(out + r * G, out + r * G + nw, tile + r * WG_W);
          micro_packed<WG_NV, WG_MR>(rows, ap + g * kc * WG_MR, bp, kc, tile, WG_W);
          for (int r = 0; r < rows; ++r) std::copy(tile + r * WG_W, tile + r * WG_W + nw, out + r * G);
        }
      }
    }
  });
}

}  // namespace lstm_jax_cpu
