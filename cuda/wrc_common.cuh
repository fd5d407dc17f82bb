// Shared by every kernel in this folder: complex arithmetic, the grid-stride loop and the floor of the
// published CUDA path. The same source builds for a GPU (NVRTC via CuPy, or nvcc) and, with -DWRC_HOST,
// for the CPU with any C++17 compiler; the host build runs each kernel's loop serially, which the tests
// use to check the kernels' arithmetic against the PyTorch path on machines without a GPU.
#pragma once

#ifdef WRC_HOST
#include <cmath>
using std::fmaxf;
#define WRC_GLOBAL extern "C"
#define WRC_HD inline
#define WRC_FOR(i, n) for (long long i = 0; i < (n); ++i)
#else
#define WRC_GLOBAL extern "C" __global__
#define WRC_HD __device__ __forceinline__
#define WRC_FOR(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)
#endif

// complex64 as torch and CuPy store it: (re, im) interleaved.
struct alignas(8) cf {
    float re, im;
};

WRC_HD cf cf_make(float re, float im) { cf z; z.re = re; z.im = im; return z; }
WRC_HD cf operator+(cf a, cf b) { return cf_make(a.re + b.re, a.im + b.im); }
WRC_HD cf operator-(cf a, cf b) { return cf_make(a.re - b.re, a.im - b.im); }
WRC_HD cf operator*(cf a, cf b) { return cf_make(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re); }
WRC_HD cf operator*(cf a, float s) { return cf_make(a.re * s, a.im * s); }
WRC_HD cf conj(cf a) { return cf_make(a.re, -a.im); }
// Re(a · conj(b)): the gradient of a real parameter that multiplies b, given the output gradient a.
WRC_HD float re_dot(cf a, cf b) { return a.re * b.re + a.im * b.im; }
WRC_HD long long neg_mod(long long i, long long n) { return (n - i) % n; }  // (−i) mod n for 0 ≤ i < n
