/*
 * Fused Euler steps for the fast engine's "fused" layout (see eqp/native.py).
 *
 * One step for every hidden and output neuron i:
 *
 *     buf[i] = drive[i] + keep * s[i] + sum_blocks W_blk[i, :] s[src..] + sum_csr v s[j]
 *     buf[i] += pull * (target[i] - buf[i])            (weakly clamped phase, outputs only)
 *     s'[i]  = clamp(buf[i], 0, 1)
 *
 * all computed for a tile of rows in registers, so a step is one pass over the weights with
 * no temporaries. States are stored in strips of 8, 16 or 24 batch columns (one to three
 * AVX vectors): strip c is a contiguous (hidden x width) array, so a strip stays in cache
 * while every row tile reads it, however large the batch. Padded columns carry zeros and
 * stay zero. Built for AVX2+FMA with a portable default clone, chosen at load time
 * (-DEQP_PORTABLE_ONLY builds the portable code alone; the tests check it that way).
 *
 * Python reaches it through ctypes (eqp/native.py); the module init at the end only makes the
 * file a valid extension module for setuptools and for locating it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define EQP_SETTLE_ABI 2
#define MAX_ROWS 4
#define MAX_VECS 3

typedef float vf __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(32), aligned(4), may_alias));
#define SPLAT(x) ((vf){(x), (x), (x), (x), (x), (x), (x), (x)})

int eqp_settle_abi(void) { return EQP_SETTLE_ABI; }

struct eqp_plan {
    int32_t hidden;             /* rows of the state */
    int32_t width;              /* floats per row within a strip: 8, 16 or 24 */
    int32_t strips;             /* strips of the state (padded batch = strips * width) */
    int32_t n_segments;         /* destination row ranges (layers) */
    const int32_t *seg_row;     /* first row of each segment */
    const int32_t *seg_rows;    /* rows in each segment */
    const int32_t *seg_term;    /* first dense term of each segment */
    const int32_t *seg_terms;   /* number of dense terms of each segment */
    const int32_t *term_src;    /* first source row of each term */
    const int32_t *term_width;  /* source rows of each term (the block's row length) */
    const int64_t *term_offset; /* where the term's row-major block starts in weights */
    const float *weights;       /* eps * W blocks, packed */
    const int32_t *crow;        /* CSR of the remaining connections (NULL if none) */
    const int32_t *ccol;
    const float *cval;          /* eps * W values */
};

/* Rows row..row+R-1 of one strip; s, out, drive and target point at the strip. */
static inline __attribute__((always_inline)) void tile(
    const int R, const int NV, const struct eqp_plan *p, int seg, int row,
    const float *s, float *out, const float *drive, float keep,
    const float *target, float pull, int first_output)
{
    const int64_t w8 = 8 * NV;
    vf acc[MAX_ROWS][MAX_VECS];
    const vf vkeep = SPLAT(keep);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const int64_t at = (row + r) * w8 + 8 * v;
            acc[r][v] = *(const vf *)(drive + at) + vkeep * *(const vf *)(s + at);
        }
    const int in_segment = row - p->seg_row[seg];
    const int first = p->seg_term[seg], last = first + p->seg_terms[seg];
    for (int t = first; t < last; t++) {
        const int width = p->term_width[t];
        const float *w = p->weights + p->term_offset[t] + (int64_t)in_segment * width;
        const float *src = s + p->term_src[t] * w8;
        for (int k = 0; k < width; k++) {
            vf x[MAX_VECS];
            for (int v = 0; v < NV; v++) x[v] = *(const vf *)(src + k * w8 + 8 * v);
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
                const float *src = s + p->ccol[q] * w8;
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
                const vf y = *(const vf *)(target + (i - first_output) * w8 + 8 * v);
                a = a + vpull * (y - a);
            }
            const vi positive = a > zero;
            a = (vf)((vi)a & positive);
            const vi above = a > one;
            a = (vf)(((vi)a & ~above) | ((vi)one & above));
            *(vf *)(out + i * w8 + 8 * v) = a;
        }
    }
}

#define ROWS_CASES(NV)                                                                     \
    switch (rows) {                                                                        \
    case 4: tile(4, NV, p, seg, row, s, out, drive, keep, target, pull, first_output); break; \
    case 3: tile(3, NV, p, seg, row, s, out, drive, keep, target, pull, first_output); break; \
    case 2: tile(2, NV, p, seg, row, s, out, drive, keep, target, pull, first_output); break; \
    default: tile(1, NV, p, seg, row, s, out, drive, keep, target, pull, first_output); break; \
    }

/* One step of one strip. */
static inline __attribute__((always_inline)) void step(
    const struct eqp_plan *p, const float *s, float *out, const float *drive, float keep,
    const float *target, float pull, int first_output)
{
    const int vecs = p->width / 8;
    for (int seg = 0; seg < p->n_segments; seg++) {
        const int end = p->seg_row[seg] + p->seg_rows[seg];
        for (int row = p->seg_row[seg]; row < end; row += MAX_ROWS) {
            const int rows = end - row < MAX_ROWS ? end - row : MAX_ROWS;
            if (vecs == 3) { ROWS_CASES(3); }
            else if (vecs == 2) { ROWS_CASES(2); }
            else { ROWS_CASES(1); }
        }
    }
}

/*
 * Run `steps` Euler steps from the state in s (strips x hidden x width), using buf (same
 * shape) as scratch; the result is left in s. target (strips x outputs x width) is NULL in
 * the free phase. Strips are independent, so each runs all its steps while it is in cache.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) \
    && !defined(EQP_PORTABLE_ONLY)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void eqp_settle(const struct eqp_plan *p, int steps, float *s, float *buf, const float *drive,
                float keep, const float *target, float pull, int first_output)
{
    const int64_t strip = (int64_t)p->hidden * p->width;
    const int64_t outputs = (int64_t)(p->hidden - first_output) * p->width;
    for (int c = 0; c < p->strips; c++) {
        float *from = s + c * strip, *to = buf + c * strip;
        const float *d = drive + c * strip;
        const float *y = target ? target + c * outputs : NULL;
        for (int n = 0; n < steps; n++) {
            step(p, from, to, d, keep, y, pull, first_output);
            float *swap = from; from = to; to = swap;
        }
        if (from != s + c * strip) memcpy(s + c * strip, from, sizeof(float) * (size_t)strip);
    }
}

static struct PyModuleDef settle_module = {
    PyModuleDef_HEAD_INIT, "_settle", "Fused Euler steps, called through ctypes (eqp.native).",
    0, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__settle(void) { return PyModuleDef_Init(&settle_module); }
