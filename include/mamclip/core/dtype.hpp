#pragma once
// Element types. Tensor<T> is templated on T; DType is its runtime name, used in
// messages, file formats and the kernel registry.

#include <Eigen/Core>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace mamclip {

using half = Eigen::half;
using bfloat16 = Eigen::bfloat16;

enum class DType : uint8_t { f32, f64, f16, bf16, i64, i32, u8, boolean };

constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
    case DType::boolean: return "bool";
  }
  return "unknown";
}

// Bytes per element.
constexpr size_t dtype_size(DType d) {
  switch (d) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::u8: case DType::boolean: return 1;
  }
  return 0;
}

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<half> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<bfloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

// Floating types take part in autograd; integer and bool tensors hold indices and masks.
template <class T>
inline constexpr bool is_floating_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                      std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

// The type arithmetic is done in: half and bfloat16 compute in float.
template <class T> struct acc_type { using type = T; };
template <> struct acc_type<half> { using type = float; };
template <> struct acc_type<bfloat16> { using type = float; };
template <class T> using acc_t = typename acc_type<T>::type;

// Machine epsilon per type, for tolerances that scale with the dtype.
template <class T> constexpr double dtype_eps() {
  if constexpr (std::is_same_v<T, double>) return 2.220446049250313e-16;
  else if constexpr (std::is_same_v<T, float>) return 1.1920928955078125e-07;
  else if constexpr (std::is_same_v<T, half>) return 9.765625e-04;
  else if constexpr (std::is_same_v<T, bfloat16>) return 7.8125e-03;
  else return 0.0;
}

}  // namespace mamclip
