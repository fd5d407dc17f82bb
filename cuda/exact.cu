// The exact weighted solve (wrcli.ops.solvers.exact) for kernels no larger than the scale s: no FFT. One
// thread per low-resolution pixel i owns the s×s block B_i of the high-resolution grid, which starts at
// (s·i + start) mod (H, W), and solves D_B + w_i a aᵀ by Sherman–Morrison:
//
//   p = aᵀx0_B,  q = Σ_B a²/d,  r = w_i (y_i − p) / (1 + w_i q),  x_B = x0_B + (a / d_B) r,
//
// with a(u, v) = k(kh−1−u, kw−1−v) on the block (zero outside kh×kw) and d = W_H + λ > 0.
// Inputs float32, contiguous: y, W_L (B,C,h,w); x0, d (B,C,H,W); kernel (C,kh,kw); start ≥ 0.
#include "wrc_common.cuh"

struct Block {
    long long high, s, H, W, r0, c0;  // block origin (r0, c0) on the H×W grid of plane `high`
    WRC_HD long long at(long long u, long long v) const { return high + ((r0 + u) % H) * W + (c0 + v) % W; }
};

WRC_HD Block block_of(long long t, long long h, long long w, long long s, long long st0, long long st1) {
    const long long i2 = t % w, i1 = (t / w) % h, bc = t / (w * h), H = s * h, W = s * w;
    Block blk;
    blk.high = bc * H * W; blk.s = s; blk.H = H; blk.W = W; blk.r0 = s * i1 + st0; blk.c0 = s * i2 + st1;
    return blk;
}

// a(u, v) on the block: the flipped kernel tap, zero outside kh×kw.
WRC_HD float tap(const float* a, long long u, long long v, long long kh, long long kw) {
    return (u < kh && v < kw) ? a[(kh - 1 - u) * kw + kw - 1 - v] : 0.f;
}

// The block sums both passes need: p = aᵀx0_B, q = Σ a²/d and, given the output gradient g, Σ g a/d.
struct Moments {
    float p, q, g;
};

WRC_HD Moments moments(const Block& blk, const float* a, long long kh, long long kw, const float* x0, const float* d,
                       const float* grad) {
    Moments m;
    m.p = m.q = m.g = 0.f;
    for (long long u = 0; u < kh; ++u) {
        for (long long v = 0; v < kw; ++v) {
            const long long j = blk.at(u, v);
            const float au = tap(a, u, v, kh, kw), ad = au / d[j];
            m.p += au * x0[j];
            m.q += au * ad;
            if (grad) m.g += grad[j] * ad;
        }
    }
    return m;
}

WRC_GLOBAL void wrc_exact_forward(const float* __restrict__ y, const float* __restrict__ x0,
                                  const float* __restrict__ wl, const float* __restrict__ d,
                                  const float* __restrict__ kernel, float* __restrict__ x, long long B, long long C,
                                  long long h, long long w, long long s, long long kh, long long kw, long long st0,
                                  long long st1) {
    WRC_FOR(t, B * C * h * w) {
        const Block blk = block_of(t, h, w, s, st0, st1);
        const float* a = kernel + ((t / (w * h)) % C) * kh * kw;
        const Moments m = moments(blk, a, kh, kw, x0, d, nullptr);
        const float r = wl[t] * (y[t] - m.p) / (1.f + wl[t] * m.q);
        for (long long u = 0; u < s; ++u) {
            for (long long v = 0; v < s; ++v) {
                const long long j = blk.at(u, v);
                x[j] = x0[j] + tap(a, u, v, kh, kw) / d[j] * r;
            }
        }
    }
}

// Per block: ∂y, ∂W_L (low grid), ∂x0 and ∂d on the block, and the block's share of ∂a in grad_a
// (B,C,h,w,kh,kw), indexed by (u, v) of a; the caller sums it over (b, i) and flips it back onto the kernel.
WRC_GLOBAL void wrc_exact_backward(const float* __restrict__ grad, const float* __restrict__ y,
                                   const float* __restrict__ x0, const float* __restrict__ wl,
                                   const float* __restrict__ d, const float* __restrict__ kernel,
                                   float* __restrict__ grad_y, float* __restrict__ grad_x0,
                                   float* __restrict__ grad_wl, float* __restrict__ grad_d,
                                   float* __restrict__ grad_a, long long B, long long C, long long h, long long w,
                                   long long s, long long kh, long long kw, long long st0, long long st1) {
    WRC_FOR(t, B * C * h * w) {
        const Block blk = block_of(t, h, w, s, st0, st1);
        const float* a = kernel + ((t / (w * h)) % C) * kh * kw;
        const Moments m = moments(blk, a, kh, kw, x0, d, grad);
        const float p = m.p, gr = m.g;
        const float wi = wl[t], den = 1.f + wi * m.q, r = wi * (y[t] - p) / den, gp = -gr * wi / den;  // gp = ∂/∂p
        grad_y[t] = gr * wi / den;
        grad_wl[t] = gr * (y[t] - p) / (den * den);
        for (long long u = 0; u < s; ++u) {
            for (long long v = 0; v < s; ++v) {
                const long long j = blk.at(u, v);
                const float au = tap(a, u, v, kh, kw), dj = d[j];
                grad_x0[j] = grad[j] + gp * au;
                grad_d[j] = (-au * r * grad[j] + gr * r * wi / den * au * au) / (dj * dj);
                if (u < kh && v < kw)
                    grad_a[t * kh * kw + u * kw + v] = grad[j] * r / dj + gp * (x0[j] + 2.f * r * au / dj);
            }
        }
    }
}
