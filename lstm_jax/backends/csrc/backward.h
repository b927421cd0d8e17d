// lstm_jax CPU kernel: the backward recurrence of one layer and direction (the reverse-time loop
// of the LSTM's gradient; see lstm_cpu.cc for the operands).
#pragma once

#include <algorithm>
#include <cstdint>

#include "fast_math.h"
#include "packed_gemm.h"
#include "recurrence.h"
#include "thread_pool.h"

namespace lstm_jax_cpu {

constexpr int BW_NV = 2;  // panel: 2 VL hidden units = 2 vectors
constexpr int BW_U = BW_NV * VL;
constexpr int64_t BW_KC = 16384 / (BW_U * sizeof(float));  // rows of a 16 KiB panel chunk (stays in L1)

// W_h [H, 4H] -> W_h^T panels [P][4H][2 VL]: panel p, row g, column u = W_h[2 VL*p + u, g].
inline void pack_backward(const float* w_h, int64_t H, float* out) {
  const int64_t P = (H + BW_U - 1) / BW_U, G = 4 * H;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t g = 0; g < G; ++g)
      for (int u = 0; u < BW_U; ++u) {
        const int64_t k = p * BW_U + u;
        out[(p * G + g) * BW_U + u] = k < H ? w_h[k * G + g] : 0.0f;
      }
}

// The gate derivatives of n units of one row (kN > 0: n = kN known at compile time): dz from the
// stored activations a (gate q at q * H), the cell states, dy + dh and dc; updates dc.
template <int kN>
inline void grad_units(int64_t n, int64_t H, const float* a, const float* c_t, const float* c_prev, const float* dy,
                       const float* dhb, float* dcb, float* z) {
  const int64_t units = kN > 0 ? kN : n;
#pragma omp simd
  for (int64_t j = 0; j < units; ++j) {
    float ig = a[j], fg = a[H + j], gg = a[2 * H + j], og = a[3 * H + j];
    float tc = tanh_f(c_t[j]);
    float dht = dy[j] + dhb[j];
    float dct = dcb[j] + dht * og * (1.0f - tc * tc);
    z[j] = dct * gg * ig * (1.0f - ig);
    z[H + j] = dct * c_prev[j] * fg * (1.0f - fg);
    z[2 * H + j] = dct * ig * (1.0f - gg * gg);
    z[3 * H + j] = dht * tc * og * (1.0f - og);
    dcb[j] = dct * fg;
  }
}

// dz of step t for rows b and units [k0, k0 + kn): the gate derivatives from dh, dc; updates dc.
inline void gate_grads(const Dims& d, int64_t t, int64_t b, int64_t k0, int64_t kn, const float* acts,
                       const float* cs, const float* c0, const int32_t* lengths, const float* dys, const float* dh,
                       float* dc, float* dz) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h;
  float* z = dz + (t * B + b) * G + k0;
  if (t >= lengths[b]) {
    for (int q = 0; q < 4; ++q) std::fill(z + q * H, z + q * H + kn, 0.0f);
    return;
  }
  const float* a = acts + (t * B + b) * G + k0;
  const float* c_t = cs + (t * B + b) * H + k0;
  const float* c_prev = (t > 0 ? cs + ((t - 1) * B + b) * H : c0 + b * H) + k0;
  const float* dy = dys + (t * B + b) * H + k0;
  const float* dhb = dh + b * H + k0;
  float* dcb = dc + b * H + k0;
  if (t > 0) {  // the same rows of step t - 1, read one step from now: fetch them while this one runs
    for (int64_t j = 0; j < kn; j += 64 / sizeof(float)) {
      for (int q = 0; q < 4; ++q) __builtin_prefetch(a - B * G + q * H + j);
      if (t > 1) __builtin_prefetch(c_prev - B * H + j);
      __builtin_prefetch(dy - B * H + j);
    }
  }
  if (kn == BW_U) {
    grad_units<BW_U>(kn, H, a, c_t, c_prev, dy, dhb, dcb, z);
  } else {
    grad_units<0>(kn, H, a, c_t, c_prev, dy, dhb, dcb, z);
  }
}

template <class Pool>
void backward_one(const Dims& d, const float* w_h, const float* acts, const float* cs, const float* c0,
                  const int32_t* lengths, const float* mask, const float* dys, const float* dh_T, const float* dc_T,
                  float* dz, float* dh, float* dc, Pool* pool, int threads) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h, P = (H + BW_U - 1) / BW_U;
  float* packed = scratch<float>(0, P * G * BW_U);
  pack_backward(w_h, H, packed);
  std::copy(dh_T, dh_T + B * H, dh);
  std::copy(dc_T, dc_T + B * H, dc);
  if (d.t == 0) return;
  const int64_t* live = live_rows(d, lengths, 3);
  float* prods = scratch<float>(4, max_team(pool, threads) * B * BW_U);  // per member: its block of dz_t W_h^T
  // step 0: dz of the last step; step s > 0, t = T - s: dh_{t-1} = (dz_t W_h^T) * mask for rows
  // inside their sequence (a frozen step passes dh through), and at once the dz of step t - 1,
  // panel by panel (the GEMM split along its K = 4h in chunks that stay in L1 across the rows);
  // a barrier between steps: step t - 1's GEMM reads every panel's units of dz_{t-1}
  run_steps(pool, threads, d.t + 1, [&](int64_t s, int tid, int size) {
    float* prod = prods + tid * B * BW_U;
    int64_t p_lo, p_hi;  // this member's panels
    share(P, tid, size, &p_lo, &p_hi);
    if (s == 0) {
      for (int64_t p = p_lo; p < p_hi; ++p) {
        const int64_t k0 = p * BW_U, kn = std::min<int64_t>(BW_U, H - k0);
        for (int64_t b = 0; b < B; ++b) gate_grads(d, d.t - 1, b, k0, kn, acts, cs, c0, lengths, dys, dh, dc, dz);
      }
      return;
    }
    const int64_t t = d.t - s;
    const float* dz_t = dz + t * B * G;
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const int64_t k0 = p * BW_U, kn = std::min<int64_t>(BW_U, H - k0);
      const float* panel = packed + p * G * BW_U;
      const int64_t rows = live[t], step_rows = even_rows(rows, BW_MR);  // dz_t is zero past live[t]
      for (int64_t g0 = 0; g0 < G; g0 += BW_KC) {
        const int64_t kc = std::min<int64_t>(BW_KC, G - g0);
        for (int64_t r0 = 0; r0 < rows; r0 += step_rows) {
          const int mr = static_cast<int>(std::min<int64_t>(step_rows, rows - r0));
          micro_rows<BW_NV, BW_MR>(mr, dz_t + r0 * G + g0, G, kc, nullptr, 0, 0, panel + g0 * BW_U, prod + r0 * BW_U,
                                   BW_U, g0 > 0);
        }
      }
      for (int64_t b = 0; b < B; ++b) {
        if (t < lengths[b]) {
          const float* back = prod + b * BW_U;
          for (int64_t j = 0; j < kn; ++j) dh[b * H + k0 + j] = back[j] * mask[b * H + k0 + j];
        }
        if (t > 0) gate_grads(d, t - 1, b, k0, kn, acts, cs, c0, lengths, dys, dh, dc, dz);
      }
    }
  });
}

}  // namespace lstm_jax_cpu
