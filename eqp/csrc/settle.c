/*
 * Fused Euler steps for the fast engine's "fused" layout (see eqp/native.py).
 *
 * One step for every hidden and output neuron i (states transposed: neurons x padded batch):
 *
 *     buf[i] = drive[i] + keep * s[i] + sum_blocks W_blk[i, :] s[src..] + sum_csr v s[j]
 *     buf[i] += pull * (target[i] - buf[i])            (weakly clamped phase, outputs only)
 *     s'[i]  = clamp(buf[i], 0, 1)
 *
 * all computed for a tile of rows in registers, so a step is one pass over the weights with
 * no temporaries. The batch is padded to a multiple of 8 floats (one AVX vector); padded
 * columns carry zeros and stay zero. Built for AVX2+FMA with a portable default clone.
 *
 * Python reaches it through ctypes (eqp/native.py); the module init at the end only makes the
 * file a valid extension module for setuptools and for locating it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define EQP_SETTLE_ABI 1
#define MAX_ROWS 4
#define MAX_VECS 3

typedef float vf __attribute__((vector_size(32), aligned(4), may_alias));
#define SPLAT(x) ((vf){(x), (x), (x), (x), (x), (x), (x), (x)})
typedef int32_t vi __attribute__((vector_size(32), aligned(4), may_alias));

int eqp_settle_abi(void) { return EQP_SETTLE_ABI; }

struct eqp_plan {
    int32_t hidden;          /* rows of the state */
    int32_t padded;          /* padded batch: floats per state row, a multiple of 8 */
    int32_t n_segments;      /* destination row ranges (layers) */
    const int32_t *seg_row;  /* first row of each segment */
    const int32_t *seg_rows; /* rows in each segment */
    const int32_t *seg_term; /* first dense term of each segment */
    const int32_t *seg_terms;/* number of dense terms of each segment */
    const int32_t *term_src; /* first source row of each term */
    const int32_t *term_width; /* source rows of each term (the block's row length) */
    const int64_t *term_offset; /* where the term's row-major block starts in weights */
    const float *weights;    /* eps * W blocks, packed */
    const int32_t *crow;     /* CSR of the remaining connections (NULL if none) */
    const int32_t *ccol;
    const float *cval;       /* eps * W values */
};

static inline __attribute__((always_inline)) void tile(
    const int R, const int NV, const struct eqp_plan *p, int seg, int row, int col,
    const float *s, float *out, const float *drive, float keep,
    const float *target, float pull, int first_output)
{
    const int bp = p->padded;
    vf acc[MAX_ROWS][MAX_VECS];
    const vf vkeep = SPLAT(keep);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const int64_t at = (int64_t)(row + r) * bp + col + 8 * v;
            acc[r][v] = *(const vf *)(drive + at) + vkeep * *(const vf *)(s + at);
        }
    const int in_segment = row - p->seg_row[seg];
    const int first = p->seg_term[seg], last = first + p->seg_terms[seg];
    for (int t = first; t < last; t++) {
        const int width = p->term_width[t];
        const float *w = p->weights + p->term_offset[t] + (int64_t)in_segment * width;
        const float *src = s + (int64_t)p->term_src[t] * bp + col;
        for (int k = 0; k < width; k++) {
            vf x[MAX_VECS];
            for (int v = 0; v < NV; v++) x[v] = *(const vf *)(src + (int64_t)k * bp + 8 * v);
            for (int r = 0; r < R; r++) {
                const vf b = SPLAT(w[r * width + k]);
                for (int v = 0; v < NV; v++) acc[r][v] += b * x[v];
            }
        }
    }
    if (p->crow) {
        for (int r = 0; r < R; r++) {
            for (int q = p->crow[row + r]; q < p->crow[row + r + 1]; q++) {
                const vf b = SPLAT(p->cval[q]);
                const float *src = s + (int64_t)p->ccol[q] * bp + col;
                for (int v = 0; v < NV; v++) acc[r][v] += b * *(const vf *)(src + 8 * v);
            }
        }
    }
    const vf zero = SPLAT(0.0f), one = SPLAT(1.0f), vpull = SPLAT(pull);
    for (int r = 0; r < R; r++) {
        const int i = row + r;
        for (int v = 0; v < NV; v++) {
            vf a = acc[r][v];
            if (target && i >= first_output) {
                const vf y = *(const vf *)(target + (int64_t)(i - first_output) * bp + col + 8 * v);
                a = a + vpull * (y - a);
            }
            const vi positive = a > zero;
            a = (vf)((vi)a & positive);
            const vi above = a > one;
            a = (vf)(((vi)a & ~above) | ((vi)one & above));
            *(vf *)(out + (int64_t)i * bp + col + 8 * v) = a;
        }
    }
}

#define ROWS_CASES(NV)                                                                         \
    switch (rows) {                                                                            \
    case 4: tile(4, NV, p, seg, row, col, s, out, drive, keep, target, pull, first_output); break; \
    case 3: tile(3, NV, p, seg, row, col, s, out, drive, keep, target, pull, first_output); break; \
    case 2: tile(2, NV, p, seg, row, col, s, out, drive, keep, target, pull, first_output); break; \
    default: tile(1, NV, p, seg, row, col, s, out, drive, keep, target, pull, first_output); break; \
    }

static inline __attribute__((always_inline)) void step(const struct eqp_plan *p, const float *s, float *out, const float *drive,
                 float keep, const float *target, float pull, int first_output)
{
    for (int seg = 0; seg < p->n_segments; seg++) {
        const int end = p->seg_row[seg] + p->seg_rows[seg];
        for (int row = p->seg_row[seg]; row < end; row += MAX_ROWS) {
            const int rows = end - row < MAX_ROWS ? end - row : MAX_ROWS;
            for (int col = 0; col < p->padded;) {
                const int vecs = (p->padded - col) / 8;
                if (vecs >= 3) { ROWS_CASES(3); col += 24; }
                else if (vecs == 2) { ROWS_CASES(2); col += 16; }
                else { ROWS_CASES(1); col += 8; }
            }
        }
    }
}

/*
 * Run `steps` Euler steps from the state in s (hidden x padded), using buf as scratch; the
 * result is left in s. target is NULL in the free phase.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void eqp_settle(const struct eqp_plan *p, int steps, float *s, float *buf, const float *drive,
                float keep, const float *target, float pull, int first_output)
{
    float *from = s, *to = buf;
    for (int n = 0; n < steps; n++) {
        step(p, from, to, drive, keep, target, pull, first_output);
        float *swap = from; from = to; to = swap;
    }
    if (from != s) memcpy(s, from, sizeof(float) * (size_t)p->hidden * (size_t)p->padded);
}

static struct PyModuleDef settle_module = {
    PyModuleDef_HEAD_INIT, "_settle", "Fused Euler steps, called through ctypes (eqp.native).",
    0, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__settle(void) { return PyModuleDef_Init(&settle_module); }
