// The program every install consumer builds: it uses mamclip the way a user
// would and exits non-zero when the gradient autograd computes disagrees with
// central finite differences, so a broken install shows up as a failing test.

#include <mamclip/mamclip.hpp>
#ifdef MAMCLIP_CONSUMER_TEXT
#include <mamclip/text/unicode.hpp>
#endif
#ifdef MAMCLIP_CONSUMER_MPI
#include <mamclip/dist/mpi.hpp>
#endif

#include <cmath>
#include <cstdio>

using namespace mamclip;

// f(x, w) = sum(tanh(x^T * w) * x^T) over a transposed (non-contiguous) view of x.
static double f(const Tensor<double>& x, const Tensor<double>& w) {
  NoGradGuard no_grad;
  Tensor<double> xt = x.t();
  return sum(tanh(xt * w) * xt).item();
}

int main() {
  Generator gen(7);
  Tensor<double> x = randn<double>({3, 5}, gen).set_requires_grad();
  Tensor<double> w = randn<double>({5, 1}, gen).set_requires_grad();
  Tensor<double> xt = x.t();
  Tensor<double> loss = sum(tanh(xt * w) * xt);
  loss.backward();

  constexpr double eps = 1e-6, tol = 1e-7;
  int bad = 0;
  for (const Tensor<double>* p : {&x, &w}) {
    const Tensor<double> g = p->grad();
    if (!g.defined() || g.shape() != p->shape()) {
      std::fprintf(stderr, "missing or misshapen gradient\n");
      return 1;
    }
    const int64_t rows = p->size(0), cols = p->size(1);
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        double& v = p->at({i, j});
        const double orig = v;
        v = orig + eps;
        const double plus = f(x, w);
        v = orig - eps;
        const double minus = f(x, w);
        v = orig;
        const double numeric = (plus - minus) / (2 * eps);
        const double analytic = g.at({i, j});
        if (!(std::abs(numeric - analytic) <= tol + 1e-6 * std::abs(numeric))) {
          std::fprintf(stderr, "gradient mismatch at (%lld, %lld): autograd %.10g, finite differences %.10g\n",
                       static_cast<long long>(i), static_cast<long long>(j), analytic, numeric);
          ++bad;
        }
      }
    }
  }
  if (bad) return 1;
  // Through nlohmann_json: a safetensors round trip in memory.
  const std::vector<uint8_t> bytes = io::serialize_safetensors({{"w", w.detach()}});
  const Tensor<double> back = io::SafetensorsFile::from_bytes(bytes, "consumer").get<double>("w");
  if (back.to_vector() != w.detach().to_vector()) {
    std::fprintf(stderr, "safetensors round trip changed the tensor\n");
    return 1;
  }
#ifdef MAMCLIP_CONSUMER_TEXT
  // Through utf8proc: "e" + COMBINING ACUTE ACCENT composes (NFC) to "é".
  namespace u = text::unicode;
  if (u::to_utf8(u::nfc(u::from_utf8("e\xCC\x81"))) != "\xC3\xA9") {
    std::fprintf(stderr, "mamclip::text: NFC of e + U+0301 is not U+00E9\n");
    return 1;
  }
#endif
#ifdef MAMCLIP_CONSUMER_MPI
  // Through MPI: a one-process job (an MPI singleton) sums a tensor over itself.
  {
    dist::MpiCommunicator comm;
    Tensor<float> t = full<float>({3}, 2.5f);
    dist::all_reduce(comm, t);
    if (comm.world_size() != 1 || comm.backend() != "mpi" || t.to_vector() != std::vector<float>(3, 2.5f)) {
      std::fprintf(stderr, "mamclip::mpi: a one-process all_reduce changed the tensor or the world size is %d\n",
                   comm.world_size());
      return 1;
    }
  }
#endif
  std::printf("mamclip %d.%d.%d: loss %.6f, gradients match finite differences\n", MAMCLIP_VERSION_MAJOR,
              MAMCLIP_VERSION_MINOR, MAMCLIP_VERSION_PATCH, loss.item());
  return 0;
}
