/* Fused CPU loops of the TIES merge method; plugins/ties/kernels.py calls them through ctypes.
 *
 * Each loop does, per entry, the float32 operations of the eager torch path in the same order,
 * so the results are the same bits. Built with -ffp-contract=off: no a*b+c is fused into one
 * rounding (torch's elementwise kernels round each operation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define PREFKIT_API __declspec(dllexport) /* ctypes finds only exported functions */
#else
#define PREFKIT_API
#endif

static inline uint32_t magnitude_pattern(const float *values, int64_t j)
{
    uint32_t bits;
    memcpy(&bits, values + j, sizeof bits);
    return bits & 0x7FFFFFFFu; /* |x|: for non-negative floats, integer order is value order */
}

static inline float elected_sign(const float *votes, int64_t j)
{
    uint32_t bits;
    memcpy(&bits, votes + j, sizeof bits);
    return 1.0f - 2.0f * (float)(bits >> 31); /* + where the sign bit is clear (0 elects +) */
}

/* Round 1 of the exact selection, for one value: count its high bin, and keep its pattern when
 * it lies in [lo, hi) (branch-free: the store always happens, the index moves only when kept;
 * `kept` has room + 1 places, the last one a sink for what no longer fits). Returns the new
 * number of patterns met in [lo, hi) (a local in the caller: no store per value). */
static inline int64_t count_and_keep(uint32_t pattern, uint32_t lo, uint32_t hi,
                                     int64_t *restrict counts, uint32_t *restrict kept,
                                     int64_t room, int64_t met)
{
    counts[pattern >> 16]++;
    kept[met < room ? met : room] = pattern;
    return met + (pattern - lo < hi - lo);
}

/* counts[p >> 16] += 1 for the pattern p of every |values[j]| (2^15 counts), and the patterns
 * in [lo, hi) kept in `kept` (room for `room`; an empty range keeps none). With `base`,
 * values -= base first, in place (the task vector, rounded as torch's sub_ rounds it), in the
 * same pass. Returns how many patterns lay in [lo, hi): more than `room` means some were not
 * kept. */
PREFKIT_API int64_t prefkit_high_counts(float *restrict values, const float *restrict base,
                                        int64_t n, uint32_t lo, uint32_t hi,
                                        int64_t *restrict counts, uint32_t *restrict kept,
                                        int64_t room)
{
    int64_t met = 0;
    if (base != NULL && hi > lo) {
        for (int64_t j = 0; j < n; j++) {
            values[j] = values[j] - base[j];
            met = count_and_keep(magnitude_pattern(values, j), lo, hi, counts, kept, room, met);
        }
    } else if (base != NULL) {
        for (int64_t j = 0; j < n; j++) {
            values[j] = values[j] - base[j];
            counts[magnitude_pattern(values, j) >> 16]++;
        }
    } else if (hi > lo) {
        for (int64_t j = 0; j < n; j++)
            met = count_and_keep(magnitude_pattern(values, j), lo, hi, counts, kept, room, met);
    } else {
        for (int64_t j = 0; j < n; j++)
            counts[magnitude_pattern(values, j) >> 16]++;
    }
    return met;
}

/* counts[p & 0xFFFF] += 1 for the patterns p of |values[j]| in high bin `high_bin` (2^16).
 * One bin of 2^15 holds few entries: a block of 64 is first checked for any (a loop the
 * compiler vectorizes), and counted only when it has some. */
static inline void count_low(const float *values, int64_t start, int64_t stop, uint32_t high_bin,
                             int64_t *counts)
{
    for (int64_t j = start; j < stop; j++) {
        uint32_t pattern = magnitude_pattern(values, j);
        if ((pattern >> 16) == high_bin)
            counts[pattern & 0xFFFFu]++;
    }
}

PREFKIT_API void prefkit_low_counts(const float *values, int64_t n, uint32_t high_bin,
                                    int64_t *counts)
{
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) {
        int any = 0;
        for (int i = 0; i < 64; i++)
            any |= (magnitude_pattern(values, j + i) >> 16) == high_bin;
        if (any)
            count_low(values, j, j + 64, high_bin, counts);
    }
    count_low(values, j, n, high_bin, counts);
}

/* hardshrink(x, bound) (0 where -bound ≤ x ≤ bound; NaN kept) · ratio · weight, each product
 * rounded as the eager path's in-place multiplications round it. */
static inline float trim_scale(float x, float bound, float ratio, float weight)
{
    x = (x >= -bound && x <= bound) ? 0.0f : x;
    x = x * ratio;
    return x * weight;
}

#define BLOCK 256 /* entries merged at a time: every model's block stays in L1 */

/* One block of the TIES merge; see prefkit_ties_merge. */
static void ties_block(const float *const *deltas, int models, int64_t at, int n,
                       const float *bounds, const float *ratios, const float *weights, int count,
                       int normalize, float lambda, const float *base, float *out,
                       float *restrict trimmed) /* `out` may be deltas[0]: not restrict */
{
    float votes[BLOCK], total[BLOCK], divisor[BLOCK];
    for (int j = 0; j < n; j++)
        votes[j] = total[j] = divisor[j] = 0.0f;
    for (int i = 0; i < models; i++) { /* trim, scale, vote: Σ x_i or Σ sign(x_i), in order */
        const float *restrict delta = deltas[i] + at;
        float *restrict x = trimmed + i * BLOCK;
        for (int j = 0; j < n; j++)
            x[j] = trim_scale(delta[j], bounds[i], ratios[i], weights[i]);
        if (count)
            for (int j = 0; j < n; j++)
                votes[j] += (float)((x[j] > 0.0f) - (x[j] < 0.0f)); /* torch.sign: 0 for NaN */
        else
            for (int j = 0; j < n; j++)
                votes[j] += x[j];
    }
    for (int i = 0; i < models; i++) { /* Σ of the agreeing x_i (max(s·x_i, 0), NaN passing as
                                          clamp_min lets it) and of their weights, in order */
        const float *restrict x = trimmed + i * BLOCK;
        float weight = normalize ? weights[i] : 0.0f;
        for (int j = 0; j < n; j++) {
            float part = x[j] * elected_sign(votes, j);
            total[j] += part < 0.0f ? 0.0f : part;
            divisor[j] += part > 0.0f ? weight : 0.0f;
        }
    }
    /* base + λ · s·total / divisor, a zero divisor counting as 1. Without `normalize` the
     * divisors are all 0 (so 1), and without λ it is 1: dividing or multiplying by 1 is exact,
     * so these are the eager path's bits in every case. */
    for (int j = 0; j < n; j++) {
        float d = divisor[j];
        float mixed = total[j] * elected_sign(votes, j) / (d + (float)(d == 0.0f));
        out[at + j] = mixed * lambda + base[at + j];
    }
}

/* The TIES merge of n entries: out = base + λ · disjoint mean of the trimmed, weighted task
 * vectors (`deltas[i]`, i < models, left as they are; `out` may be one of them, as each block
 * is read before it is written). Per model: the hardshrink bound (-inf keeps all), the rescale
 * ratio (1: none) and the weight; `count`: sign votes by count, not by sum. Returns -1 when the
 * scratch cannot be allocated (nothing written), else 0. */
PREFKIT_API int prefkit_ties_merge(const float *const *deltas, int models, int64_t n,
                                   const float *bounds, const float *ratios, const float *weights,
                                   int count, int normalize, float lambda, const float *base,
                                   float *out)
{
    float *trimmed = malloc(sizeof(float) * BLOCK * (size_t)models);
    if (trimmed == NULL)
        return -1;
    for (int64_t at = 0; at < n; at += BLOCK) {
        int size = n - at < BLOCK ? (int)(n - at) : BLOCK;
        ties_block(deltas, models, at, size, bounds, ratios, weights, count, normalize, lambda,
                   base, out, trimmed);
    }
    free(trimmed);
    return 0;
}

/* A Python module too, so that setuptools builds and names it like any extension; prefkit
 * loads the functions above with ctypes (which releases the GIL while they run). */
static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels", "C loops of prefkit.plugins.ties.kernels (called through "
    "ctypes).", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
