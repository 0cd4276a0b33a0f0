// Host emulation of __half (see cuda_runtime.h here) on the compiler's _Float16.
#pragma once

struct __half {
  _Float16 value;
};
inline float __half2float(__half v) { return static_cast<float>(v.value); }
inline __half __float2half(float f) { return __half{static_cast<_Float16>(f)}; }
