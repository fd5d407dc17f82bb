// The published WRC solve between its FFTs (wrcli.ops.solvers.official), fused: one thread per element k
// of the half spectrum (B, C, H, W/2+1) forms the alias-group quotient q at k's low-resolution index and at
// that of −k on the fly, and writes the Hermitian part of x̂ directly:
//
//   q(i)  = W_L(i) Z(i) / max(W_L(i) P(i) + M(i), floor)          (low grid, i = k mod (h, w))
//   x̂(k) = ½ [ R̂(k) (v(k) + v(−k)) − conj K̂(k) (q(i_k) v(k) + conj q(i_−k) v(−k)) ],  v = 1 / max(d, floor)
//
// Inputs (float32 / complex64, contiguous): R̂ = rfft2(r) (B,C,H,Wh); Z = fft2(A r) (B,C,h,w);
// W_L (B,C,h,w); P = ⟨|K̂|²⟩↓ (C,h,w); M = ⟨W_H⟩↓ + λ (B,C,h,w); d = W_H + λ (B,C,H,W); K̂ (C,H,Wh).
// The backward kernels gather instead of scatter (no atomics); gradients follow torch's convention for
// complex tensors (the conjugate Wirtinger derivative, so they feed straight into torch's FFT backward).
#include "wrc_common.cuh"

WRC_HD cf alias_q(const cf* z, const float* wl, const float* power, const float* mh, long long low, long long chan,
                  long long i, float floor) {
    const float wli = wl[low + i];
    return z[low + i] * (wli / fmaxf(wli * power[chan + i] + mh[low + i], floor));
}

// The two sums x̂(k) is formed from: T = q(i_k) v(k) + conj q(i_−k) v(−k) and v(k) + v(−k), for output
// (k1, k2) of plane bc (channel c).
struct Mix {
    cf t;
    float vsum;
};

WRC_HD Mix mix_terms(const cf* z, const float* wl, const float* power, const float* mh, const float* d, long long bc,
                     long long c, long long k1, long long k2, long long H, long long W, long long h, long long w,
                     float floor) {
    const long long r1 = neg_mod(k1, H), r2 = neg_mod(k2, W);
    const long long high = bc * H * W, low = bc * h * w, chan = c * h * w;
    const float vf = 1.f / fmaxf(d[high + k1 * W + k2], floor);
    const float vr = 1.f / fmaxf(d[high + r1 * W + r2], floor);
    const cf qf = alias_q(z, wl, power, mh, low, chan, (k1 % h) * w + k2 % w, floor);
    const cf qr = alias_q(z, wl, power, mh, low, chan, (r1 % h) * w + r2 % w, floor);
    Mix m;
    m.t = qf * vf + conj(qr) * vr;
    m.vsum = vf + vr;
    return m;
}

WRC_GLOBAL void wrc_official_forward(const cf* __restrict__ rhat, const cf* __restrict__ z, const float* __restrict__ wl,
                                     const float* __restrict__ power, const float* __restrict__ mh,
                                     const float* __restrict__ d, const cf* __restrict__ khat, cf* __restrict__ out,
                                     long long B, long long C, long long H, long long W, long long h, long long w,
                                     float floor) {
    const long long Wh = W / 2 + 1;
    WRC_FOR(t, B * C * H * Wh) {
        const long long k2 = t % Wh, k1 = (t / Wh) % H, bc = t / (Wh * H), c = bc % C;
        const Mix m = mix_terms(z, wl, power, mh, d, bc, c, k1, k2, H, W, h, w, floor);
        out[t] = (rhat[t] * m.vsum - conj(khat[(c * H + k1) * Wh + k2]) * m.t) * 0.5f;
    }
}

// Per element j of the full high-resolution grid: ∂/∂R̂(j) (j in the half spectrum) and ∂/∂d(j), which
// collects v(j)'s two uses: as v(k) of output k = j and as v(−k) of output k = −j.
WRC_GLOBAL void wrc_official_backward_high(const cf* __restrict__ grad, const cf* __restrict__ rhat,
                                           const cf* __restrict__ z, const float* __restrict__ wl,
                                           const float* __restrict__ power, const float* __restrict__ mh,
                                           const float* __restrict__ d, const cf* __restrict__ khat,
                                           cf* __restrict__ grad_rhat, float* __restrict__ grad_d, long long B,
                                           long long C, long long H, long long W, long long h, long long w,
                                           float floor) {
    const long long Wh = W / 2 + 1;
    WRC_FOR(t, B * C * H * W) {
        const long long j2 = t % W, j1 = (t / W) % H, bc = t / (W * H), c = bc % C;
        const long long r1 = neg_mod(j1, H), r2 = neg_mod(j2, W);
        const long long high = bc * H * W, low = bc * h * w, chan = c * h * w;
        const float v = 1.f / fmaxf(d[t], floor);
        const cf q = alias_q(z, wl, power, mh, low, chan, (j1 % h) * w + j2 % w, floor);
        float gv = 0.f;
        if (j2 < Wh) {
            const long long k = (bc * H + j1) * Wh + j2;
            const float vr = 1.f / fmaxf(d[high + r1 * W + r2], floor);
            grad_rhat[k] = grad[k] * (0.5f * (v + vr));
            gv += 0.5f * re_dot(grad[k], rhat[k] - conj(khat[(c * H + j1) * Wh + j2]) * q);
        }
        if (r2 < Wh) {
            const long long k = (bc * H + r1) * Wh + r2;
            gv += 0.5f * re_dot(grad[k], rhat[k] - conj(khat[(c * H + r1) * Wh + r2]) * conj(q));
        }
        grad_d[t] = d[t] > floor ? -gv * v * v : 0.f;
    }
}

// Per low-resolution element i: ∂/∂q(i) gathered from the alias group of i (q v terms) and of −i
// (conj q v terms), then through q = W_L Z / max(W_L P + M, floor). Writes ∂Z, ∂W_L (complete) and
// ∂M = ∂den (the caller forms ∂P = Σ_b ∂den · W_L).
WRC_GLOBAL void wrc_official_backward_low(const cf* __restrict__ grad, const cf* __restrict__ z,
                                          const float* __restrict__ wl, const float* __restrict__ power,
                                          const float* __restrict__ mh, const float* __restrict__ d,
                                          const cf* __restrict__ khat, cf* __restrict__ grad_z,
                                          float* __restrict__ grad_wl, float* __restrict__ grad_mh, long long B,
                                          long long C, long long H, long long W, long long h, long long w,
                                          float floor) {
    const long long Wh = W / 2 + 1, s1 = H / h, s2 = W / w;
    WRC_FOR(t, B * C * h * w) {
        const long long i2 = t % w, i1 = (t / w) % h, bc = t / (w * h), c = bc % C;
        const long long n1 = neg_mod(i1, h), n2 = neg_mod(i2, w);
        const long long high = bc * H * W;
        cf gq = cf_make(0.f, 0.f);
        for (long long a = 0; a < s1; ++a) {
            for (long long b = 0; b < s2; ++b) {
                long long k1 = i1 + a * h, k2 = i2 + b * w;
                if (k2 < Wh) {
                    const float vf = 1.f / fmaxf(d[high + k1 * W + k2], floor);
                    gq = gq + khat[(c * H + k1) * Wh + k2] * grad[(bc * H + k1) * Wh + k2] * (-0.5f * vf);
                }
                k1 = n1 + a * h;
                k2 = n2 + b * w;
                if (k2 < Wh) {
                    const float vr = 1.f / fmaxf(d[high + neg_mod(k1, H) * W + neg_mod(k2, W)], floor);
                    gq = gq + conj(khat[(c * H + k1) * Wh + k2] * grad[(bc * H + k1) * Wh + k2]) * (-0.5f * vr);
                }
            }
        }
        const long long i = t % (h * w);
        const float wli = wl[t], den = wli * power[c * h * w + i] + mh[t], inv = 1.f / fmaxf(den, floor);
        const cf q = z[t] * (wli * inv);
        const float gden = den > floor ? -re_dot(gq, q) * inv : 0.f;
        grad_z[t] = gq * (wli * inv);
        grad_wl[t] = re_dot(gq, z[t] * inv) + gden * power[c * h * w + i];
        grad_mh[t] = gden;
    }
}

// Per element (c, k) of K̂'s half spectrum, summed over the batch: x̂ holds −½ conj K̂ T, so ∂K̂ = −½ Σ_b conj(g) T.
WRC_GLOBAL void wrc_official_backward_khat(const cf* __restrict__ grad, const cf* __restrict__ z,
                                           const float* __restrict__ wl, const float* __restrict__ power,
                                           const float* __restrict__ mh, const float* __restrict__ d,
                                           cf* __restrict__ grad_khat, long long B, long long C, long long H,
                                           long long W, long long h, long long w, float floor) {
    const long long Wh = W / 2 + 1;
    WRC_FOR(t, C * H * Wh) {
        const long long k2 = t % Wh, k1 = (t / Wh) % H, c = t / (Wh * H);
        cf acc = cf_make(0.f, 0.f);
        for (long long b = 0; b < B; ++b) {
            const long long bc = b * C + c;
            const Mix m = mix_terms(z, wl, power, mh, d, bc, c, k1, k2, H, W, h, w, floor);
            acc = acc + conj(grad[(bc * H + k1) * Wh + k2]) * m.t;
        }
        grad_khat[t] = acc * -0.5f;
    }
}
