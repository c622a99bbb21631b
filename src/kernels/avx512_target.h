#pragma once
// For the AVX-512 kernel files only (x86-64): the intrinsics, and the target attribute that lets
// a function use AVX-512 in a build for baseline x86-64 (kernels.cpp's dispatch runs it only
// where the CPU can).
#include <immintrin.h>

// GCC 12's avx512fintrin.h seeds some intrinsics (unpack, extract) with a deliberately
// uninitialized vector, which -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define LB_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define LB_INLINE inline __attribute__((always_inline))
