// lstm_jax CPU kernel: the LSTM recurrence as two XLA FFI handlers (forward, backward).
//
// Time-major, one layer and direction, float32. The input projection zx = x W_x + b is computed
// by XLA before the call (one large GEMM); per step the kernel does ONE BLAS GEMM
// (gates = zx_t + (h * mask) W_h) and the gate nonlinearities and state update in one
// vectorised loop. Lengths: past lengths[b] the carry is frozen and the outputs are zero.
// Leading axes before [t, b, .] are independent problems (jax.vmap with
// vmap_method="broadcast_all": ensemble members), each with its own W_h; they run in parallel
// (OpenMP threads, one member per thread at a time).
//
// Forward inputs:  zx [..., t, b, 4h], w_h [..., h, 4h], h0 [..., b, h], c0 [..., b, h],
//                  lengths [..., b] int32, mask [..., b, h]
// Forward outputs: ys [..., t, b, h], h_T, c_T [..., b, h]
//                  and with residuals (LstmCpuForwardTrain): acts [..., t, b, 4h] (i, f, g, o after
//                  their nonlinearities), cs [..., t, b, h] (cell state after each step)
// Backward inputs: w_h, acts, cs, c0, lengths, mask, dys [..., t, b, h], dh_T, dc_T [..., b, h]
// Backward outputs: dz [..., t, b, 4h] (gradient of the gate pre-activations), dh0, dc0 [..., b, h]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float sigmoid(float x) { return 0.5f * std::tanh(0.5f * x) + 0.5f; }

struct Dims {
  int64_t members, t, b, h;
};

ffi::Error get_dims(const ffi::Buffer<ffi::F32>& zx_or_acts, const ffi::Buffer<ffi::F32>& w_h, Dims* d) {
  auto zd = zx_or_acts.dimensions();
  auto wd = w_h.dimensions();
  if (zd.size() < 3 || wd.size() < 2 || zd.size() != wd.size() + 1) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected zx [..., t, b, 4h] and w_h [..., h, 4h]");
  }
  int64_t r = zd.size();
  d->t = zd[r - 3];
  d->b = zd[r - 2];
  d->h = wd[wd.size() - 2];
  if (zd[r - 1] != 4 * d->h || wd[wd.size() - 1] != 4 * d->h) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected the last axis of zx and w_h to be 4h");
  }
  d->members = 1;
  for (int64_t i = 0; i < r - 3; ++i) {
    if (zd[i] != wd[i]) return ffi::Error::InvalidArgument("lstm_cpu: leading axes of zx and w_h differ");
    d->members *= zd[i];
  }
  return ffi::Error::Success();
}

// One forward problem. acts/cs may be null (inference).
void forward_one(const Dims& d, const float* zx, const float* w_h, const float* h0, const float* c0,
                 const int32_t* lengths, const float* mask, float* ys, float* h_out, float* c_out, float* acts,
                 float* cs) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h;
  std::vector<float> gates(B * G), hm(B * H);
  std::copy(h0, h0 + B * H, h_out);
  std::copy(c0, c0 + B * H, c_out);
  for (int64_t k = 0; k < B * H; ++k) hm[k] = h_out[k] * mask[k];
  int32_t longest = 0;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, lengths[b]);
  for (int64_t t = 0; t < d.t; ++t) {
    float* y_t = ys + t * B * H;
    if (t >= longest) {  // every row is past its length: zero outputs, frozen carry
      std::fill(y_t, y_t + B * H, 0.0f);
      if (acts) std::fill(acts + t * B * G, acts + (t + 1) * B * G, 0.0f);
      if (cs) std::copy(c_out, c_out + B * H, cs + t * B * H);
      continue;
    }
    std::copy(zx + t * B * G, zx + (t + 1) * B * G, gates.data());
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, G, H, 1.0f, hm.data(), H, w_h, G, 1.0f,
                      gates.data(), G);
    for (int64_t b = 0; b < B; ++b) {
      float* h = h_out + b * H;
      float* c = c_out + b * H;
      float* y = y_t + b * H;
      float* a = acts ? acts + (t * B + b) * G : nullptr;
      if (t >= lengths[b]) {
        std::fill(y, y + H, 0.0f);
        if (a) std::fill(a, a + G, 0.0f);
      } else {
        const float* g = gates.data() + b * G;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          float ig = sigmoid(g[j]), fg = sigmoid(g[H + j]), gg = std::tanh(g[2 * H + j]), og = sigmoid(g[3 * H + j]);
          float cn = fg * c[j] + ig * gg;
          float hn = og * std::tanh(cn);
          c[j] = cn;
          h[j] = hn;
          y[j] = hn;
          hm[b * H + j] = hn * mask[b * H + j];
          if (a) {
            a[j] = ig;
            a[H + j] = fg;
            a[2 * H + j] = gg;
            a[3 * H + j] = og;
          }
        }
      }
      if (cs) std::copy(c, c + H, cs + (t * B + b) * H);
    }
  }
}

void backward_one(const Dims& d, const float* w_h, const float* acts, const float* cs, const float* c0,
                  const int32_t* lengths, const float* mask, const float* dys, const float* dh_T, const float* dc_T,
                  float* dz, float* dh, float* dc) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h;
  std::vector<float> back(B * H);
  std::copy(dh_T, dh_T + B * H, dh);
  std::copy(dc_T, dc_T + B * H, dc);
  int32_t longest = 0;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, lengths[b]);
  for (int64_t t = d.t - 1; t >= 0; --t) {
    float* dz_t = dz + t * B * G;
    if (t >= longest) {
      std::fill(dz_t, dz_t + B * G, 0.0f);
      continue;
    }
    for (int64_t b = 0; b < B; ++b) {
      float* z = dz_t + b * G;
      if (t >= lengths[b]) {
        std::fill(z, z + G, 0.0f);
        continue;
      }
      const float* a = acts + (t * B + b) * G;
      const float* c_t = cs + (t * B + b) * H;
      const float* c_prev = t > 0 ? cs + ((t - 1) * B + b) * H : c0 + b * H;
      const float* dy = dys + (t * B + b) * H;
      float* dhb = dh + b * H;
      float* dcb = dc + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        float ig = a[j], fg = a[H + j], gg = a[2 * H + j], og = a[3 * H + j];
        float tc = std::tanh(c_t[j]);
        float dht = dy[j] + dhb[j];
        float dct = dcb[j] + dht * og * (1.0f - tc * tc);
        z[j] = dct * gg * ig * (1.0f - ig);
        z[H + j] = dct * c_prev[j] * fg * (1.0f - fg);
        z[2 * H + j] = dct * ig * (1.0f - gg * gg);
        z[3 * H + j] = dht * tc * og * (1.0f - og);
        dcb[j] = dct * fg;
      }
    }
    // dh_{t-1} = (dz_t W_h^T) * mask for rows still inside their sequence
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, G, 1.0f, dz_t, G, w_h, G, 0.0f, back.data(), H);
    for (int64_t b = 0; b < B; ++b) {
      if (t >= lengths[b]) continue;
      for (int64_t j = 0; j < H; ++j) dh[b * H + j] = back[b * H + j] * mask[b * H + j];
    }
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                   ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T, ffi::ResultBuffer<ffi::F32> c_T,
                   float* acts, float* cs) {
  Dims d;
  if (auto e = get_dims(zx, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, H = d.h, G = 4 * d.h, T = d.t;
#pragma omp parallel for schedule(static) if (d.members > 1)
  for (int64_t m = 0; m < d.members; ++m) {
    forward_one(d, zx.typed_data() + m * T * B * G, w_h.typed_data() + m * H * G, h0.typed_data() + m * B * H,
                c0.typed_data() + m * B * H, lengths.typed_data() + m * B, mask.typed_data() + m * B * H,
                ys->typed_data() + m * T * B * H, h_T->typed_data() + m * B * H, c_T->typed_data() + m * B * H,
                acts ? acts + m * T * B * G : nullptr, cs ? cs + m * T * B * H : nullptr);
  }
  return ffi::Error::Success();
}

ffi::Error ForwardInfer(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T,
                        ffi::ResultBuffer<ffi::F32> c_T) {
  return Forward(zx, w_h, h0, c0, lengths, mask, ys, h_T, c_T, nullptr, nullptr);
}

ffi::Error ForwardTrain(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T,
                        ffi::ResultBuffer<ffi::F32> c_T, ffi::ResultBuffer<ffi::F32> acts,
                        ffi::ResultBuffer<ffi::F32> cs) {
  return Forward(zx, w_h, h0, c0, lengths, mask, ys, h_T, c_T, acts->typed_data(), cs->typed_data());
}

ffi::Error Backward(ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_T, ffi::Buffer<ffi::F32> dc_T,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  Dims d;
  if (auto e = get_dims(acts, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, H = d.h, G = 4 * d.h, T = d.t;
#pragma omp parallel for schedule(static) if (d.members > 1)
  for (int64_t m = 0; m < d.members; ++m) {
    backward_one(d, w_h.typed_data() + m * H * G, acts.typed_data() + m * T * B * G, cs.typed_data() + m * T * B * H,
                 c0.typed_data() + m * B * H, lengths.typed_data() + m * B, mask.typed_data() + m * B * H,
                 dys.typed_data() + m * T * B * H, dh_T.typed_data() + m * B * H, dc_T.typed_data() + m * B * H,
                 dz->typed_data() + m * T * B * G, dh0->typed_data() + m * B * H, dc0->typed_data() + m * B * H);
  }
  return ffi::Error::Success();
}

}  // namespace

#define LSTM_CPU_FORWARD_ARGS                                                                            \
  ffi::Ffi::Bind()                                                                                       \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::S32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForward, ForwardInfer, LSTM_CPU_FORWARD_ARGS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForwardTrain, ForwardTrain,
                              LSTM_CPU_FORWARD_ARGS.Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
