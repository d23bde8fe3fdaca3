/* Fused CPU loops for prefkit's TIES merge; prefkit/kernels.py calls them through ctypes.
 *
 * Each loop does, per entry, the float32 operations of the eager torch path in the same order,
 * so the results are the same bits. Built with -ffp-contract=off: no a*b+c is fused into one
 * rounding (torch's elementwise kernels round each operation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* counts[p >> 16] += 1 for the pattern p of every |values[j]| (2^15 counts). */
void prefkit_high_counts(const float *values, int64_t n, int64_t *counts)
{
    for (int64_t j = 0; j < n; j++)
        counts[magnitude_pattern(values, j) >> 16]++;
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

void prefkit_low_counts(const float *values, int64_t n, uint32_t high_bin, int64_t *counts)
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

/* δ ← trim_scale(δ) in place, then the vote: votes += δ, or votes += sign(δ) (`count`; 0 for
 * ±0 and NaN, as torch.sign). */
void prefkit_ties_trim_vote(float *restrict delta, int64_t n, float bound, float ratio,
                            float weight, float *restrict votes, int count)
{
    if (count) {
        for (int64_t j = 0; j < n; j++) {
            float x = delta[j] = trim_scale(delta[j], bound, ratio, weight);
            votes[j] += (float)((x > 0.0f) - (x < 0.0f));
        }
    } else {
        for (int64_t j = 0; j < n; j++)
            votes[j] += delta[j] = trim_scale(delta[j], bound, ratio, weight);
    }
}

/* total += max(s·δ, 0) (s the elected sign: the agreeing |δ|, NaN passing as clamp_min lets
 * it), and with `normalize`, divisor += weight where δ agrees. */
void prefkit_ties_disjoint_add(const float *restrict delta, int64_t n,
                               const float *restrict votes, float weight, float *restrict total,
                               float *restrict divisor, int normalize)
{
    if (normalize) {
        for (int64_t j = 0; j < n; j++) {
            float part = delta[j] * elected_sign(votes, j);
            total[j] += part < 0.0f ? 0.0f : part;
            divisor[j] += part > 0.0f ? weight : 0.0f;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            float part = delta[j] * elected_sign(votes, j);
            total[j] += part < 0.0f ? 0.0f : part;
        }
    }
}

/* out = base + λ · s·total / divisor, where a zero divisor counts as 1. Without `normalize` the
 * divisors are all 0 (so 1), and without λ it is 1: dividing or multiplying by 1 is exact, so
 * one loop with no branches serves every case and gives the eager path's bits. */
void prefkit_ties_finish(const float *restrict total, const float *restrict votes,
                         const float *restrict divisor, int64_t n, float lambda,
                         const float *restrict base, float *restrict out)
{
    for (int64_t j = 0; j < n; j++) {
        float d = divisor[j];
        float mixed = total[j] * elected_sign(votes, j) / (d + (float)(d == 0.0f));
        out[j] = mixed * lambda + base[j];
    }
}

/* A Python module too, so that setuptools builds and names it like any extension; prefkit
 * loads the functions above with ctypes (which releases the GIL while they run). */
static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels", "C loops of prefkit.kernels (called through ctypes).", -1,
    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
