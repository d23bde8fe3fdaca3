/* The fused multiply-add loops of prefkit.ops (`add_product_`, `fused_multiply_add`: linear and
 * task arithmetic on numpy arrays); prefkit/engine/clib.py loads them through ctypes.
 *
 * Built with -ffp-contract=off like every prefkit extension (setup.py): here the one rounding
 * of a*b+c is asked for explicitly, with fmaf/fma.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(_WIN32)
#define PREFKIT_API __declspec(dllexport) /* ctypes finds only exported functions */
#else
#define PREFKIT_API
#endif

/* Linear merging's acc += x * w as torch's addcmul_ computes it: fused, one rounding (mergekit's
 * linear uses addcmul_, so its outputs are these bits). fmaf/fma are exact wherever they run;
 * on x86-64 a clone built for FMA hardware is chosen at load time, so the loop vectorises. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define PREFKIT_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define PREFKIT_FMA_CLONES
#endif

PREFKIT_FMA_CLONES
PREFKIT_API void prefkit_fma_f32(float *restrict acc, const float *restrict x, float w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        acc[i] = fmaf(x[i], w, acc[i]);
}

PREFKIT_FMA_CLONES
PREFKIT_API void prefkit_fma_f64(double *restrict acc, const double *restrict x, double w,
                                 int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        acc[i] = fma(x[i], w, acc[i]);
}

/* A Python module too, so that setuptools builds and names it like any extension; prefkit
 * loads the functions above with ctypes (which releases the GIL while they run). */
static struct PyModuleDef fma_module = {
    PyModuleDef_HEAD_INIT, "_fma", "C loops of prefkit.ops' fused multiply-add (called through "
    "ctypes).", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fma(void) { return PyModule_Create(&fma_module); }
