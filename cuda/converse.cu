// The Converse2D solve between its FFTs (wrcli.ops.solvers.converse): on the low-resolution half spectrum
// (B, C, h, w/2+1), X(i) = R(i) / den(i) with den = ⟨|K̂|²⟩↓ + λ real and > 0, either per batch element
// (den_batched = 1, shape (B,C,h,wh)) or shared by the batch (den_batched = 0, shape (C,h,wh)).
#include "wrc_common.cuh"

WRC_GLOBAL void wrc_converse_forward(const cf* __restrict__ res, const float* __restrict__ den, cf* __restrict__ out,
                                     long long n, long long per_batch, long long den_batched) {
    WRC_FOR(t, n) { out[t] = res[t] * (1.f / den[den_batched ? t : t % per_batch]); }
}

// ∂R = g / den; ∂den = −Re(g · conj R) / den², per element (the caller sums over the batch when den is shared).
WRC_GLOBAL void wrc_converse_backward(const cf* __restrict__ grad, const cf* __restrict__ res,
                                      const float* __restrict__ den, cf* __restrict__ grad_res,
                                      float* __restrict__ grad_den, long long n, long long per_batch, long long den_batched) {
    WRC_FOR(t, n) {
        const float inv = 1.f / den[den_batched ? t : t % per_batch];
        grad_res[t] = grad[t] * inv;
        grad_den[t] = -re_dot(grad[t], res[t]) * inv * inv;
    }
}
