/*
 * Fused settling kernels for the fast engine's "fused" layout (see eqp/native.py).
 *
 * Euler phases (eqp_settle), one step for every hidden and output neuron i:
 *
 *     buf[i] = drive[i] + keep * s[i] + sum_blocks W_blk[i, :] s[src..] + sum_csr v s[j]
 *     buf[i] += pull * (target[i] - buf[i])            (weakly clamped phase, outputs only)
 *     s'[i]  = clamp(buf[i], 0, 1)
 *
 * all computed for a tile of rows in registers, so a step is one pass over the weights with
 * no temporaries. `drive` is eps * (W_hx x + b) and the packed weights are eps * W.
 *
 * Converged free phase (eqp_converge): projected layer-wise SOR. Layers are visited in order
 * and each is set, in place, to clamp((1 - omega) s + omega h), h = W s + b + W_hx x being
 * the layer's exact minimiser given the others (no intra-layer weights). Every example
 * (column) runs its own little state machine: Euler steps while its fixed-point residual
 * |clamp(h) - s| is at least `warm_tol` (`cold_tol` for a column starting from all zeros), so
 * a start far from equilibrium follows the faithful dynamics into its basin, then SOR sweeps until a sweep's residual is at most `tol`, then one pass that
 * measures the true residual at the unchanged state; it stops there if that is at most `tol`
 * too, else it sweeps on. Frozen columns no longer change, so a column's result depends on
 * nothing but its own trajectory: not on the other examples of its strip, the strip width
 * or the number of threads. With more columns than one strip holds, each thread keeps one
 * working strip and refills a lane with the next column as soon as its column has finished,
 * so a converged example stops costing work.
 *
 * States are stored in strips of 8, 16 or 24 batch columns (one to three AVX vectors):
 * strip c is a contiguous (hidden x width) array, so a strip stays in cache while every row
 * tile reads it, however large the batch. Padded columns carry zeros and stay zero.
 *
 * Threads (OpenMP): with at least as many strips as threads, whole strips run side by side;
 * otherwise (a training batch is one strip) the row tiles of every step (Euler) or of every
 * layer (SOR) are split across the threads, with a barrier after each. Every output element
 * is computed by one thread with the same instructions in the same order whatever the thread
 * count, so results are bitwise identical for any number of threads.
 *
 * The arithmetic is built for AVX2+FMA with a portable default clone, chosen at load time
 * (-DEQP_PORTABLE_ONLY builds the portable code alone; the tests check it that way). The
 * OpenMP parallel regions live in the exported functions; the per-thread workers they call
 * are the cloned functions, so the outlined regions themselves hold no arithmetic.
 *
 * Python reaches it through ctypes (eqp/native.py); the module init at the end only makes the
 * file a valid extension module for setuptools and for locating it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EQP_SETTLE_ABI 3
#define MAX_ROWS 4
#define MAX_VECS 3
#define MAX_WIDTH 24
#define MAX_THREADS 256
#define RES_STRIDE 32 /* floats per thread's residual row (128 bytes: no false sharing) */

typedef float vf __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(32), aligned(4), may_alias));
#define SPLAT(x) ((vf){(x), (x), (x), (x), (x), (x), (x), (x)})

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) \
    && !defined(EQP_PORTABLE_ONLY)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

int eqp_settle_abi(void) { return EQP_SETTLE_ABI; }

/* 1 when built with OpenMP (threads available), else 0. */
int eqp_settle_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

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

/* Parameters of a converged free phase (eqp_converge). */
struct eqp_converge_args {
    float keep;     /* 1 - eps: the Euler warm-up's kept fraction */
    float inv_eps;  /* 1 / eps: turns drive + eps W s into h */
    float omega;    /* SOR relaxation */
    float tol;      /* residual at which a column has converged */
    float warm_tol; /* residual below which a column leaves Euler for SOR */
    float cold_tol; /* the same for a column starting from the all-zero state */
    int32_t max_work; /* passes (Euler steps or sweeps) after which a column stops anyway */
    int32_t batch;  /* real columns; the padding beyond is never worked on */
};

/* --- arithmetic of one tile of rows --------------------------------------------------- */

/* acc = drive + keep * s + (eps W s) for rows row..row+R-1 of one strip: NV vectors of
 * columns from a row stride of w8 floats. */
static inline __attribute__((always_inline)) void accumulate(
    const int R, const int NV, const int64_t w8, const struct eqp_plan *p, int seg, int row,
    const float *s, const float *drive, float keep, vf acc[MAX_ROWS][MAX_VECS])
{
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
}

/* Clamp to [0, 1] in place (NaN-free inputs). */
static inline __attribute__((always_inline)) void clamp01(vf *a)
{
    const vf zero = SPLAT(0.0f), one = SPLAT(1.0f);
    const vi positive = *a > zero;
    *a = (vf)((vi)*a & positive);
    const vi above = *a > one;
    *a = (vf)(((vi)*a & ~above) | ((vi)one & above));
}

/* One Euler step of a tile: out = clamp(acc [+ pull (target - acc) for outputs]). */
static inline __attribute__((always_inline)) void euler_tile(
    const int R, const int NV, const struct eqp_plan *p, int seg, int row,
    const float *s, float *out, const float *drive, float keep,
    const float *target, float pull, int first_output)
{
    const int64_t w8 = 8 * NV;
    vf acc[MAX_ROWS][MAX_VECS];
    accumulate(R, NV, w8, p, seg, row, s, drive, keep, acc);
    const vf vpull = SPLAT(pull);
    for (int r = 0; r < R; r++) {
        const int i = row + r;
        for (int v = 0; v < NV; v++) {
            vf a = acc[r][v];
            if (target && i >= first_output) {
                const vf y = *(const vf *)(target + (i - first_output) * w8 + 8 * v);
                a = a + vpull * (y - a);
            }
            clamp01(&a);
            *(vf *)(out + i * w8 + 8 * v) = a;
        }
    }
}

/* acc = drive + eps W s for a tile, stored unclamped in out: the converged phase's h * eps.
 * The same loop as an Euler step's, so that it compiles to the same register-only code. */
static inline __attribute__((always_inline)) void raw_tile(
    const int R, const int NV, const int64_t w8, const struct eqp_plan *p, int seg, int row,
    const float *s, float *out, const float *drive)
{
    vf acc[MAX_ROWS][MAX_VECS];
    accumulate(R, NV, w8, p, seg, row, s, drive, 0.0f, acc);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) *(vf *)(out + (row + r) * w8 + 8 * v) = acc[r][v];
}

/*
 * The converged phase's update of rows r0..r1-1 from their raw sums: SOR lanes (mask `sor`)
 * are set in place in s; every lane's Euler step goes to buf (kept only for lanes in Euler
 * mode); res gets the max over the rows of |clamp(h) - s| per lane.
 */
static inline __attribute__((always_inline)) void converge_rows(
    const int NV, const int64_t w8, int64_t r0, int64_t r1, float *s, float *buf,
    const float *raw, const struct eqp_converge_args *a, const vi *sor, int euler_columns,
    float *res)
{
    const vf vkeep = SPLAT(a->keep), vinv = SPLAT(a->inv_eps);
    const vf vomega = SPLAT(a->omega), vstay = SPLAT(1.0f - a->omega);
    const vi magnitude = (vi)SPLAT(0.0f) | 0x7fffffff;
    for (int v = 0; v < NV; v++) {
        vf worst = *(const vf *)(res + 8 * v);
        const vi mask = sor[v];
        for (int64_t i = r0; i < r1; i++) {
            const int64_t at = i * w8 + 8 * v;
            const vf old = *(const vf *)(s + at), sum = *(const vf *)(raw + at);
            const vf h = sum * vinv;
            vf target = h;
            clamp01(&target);
            const vf gap = (vf)((vi)(target - old) & magnitude);
            const vi larger = gap > worst;
            worst = (vf)(((vi)worst & ~larger) | ((vi)gap & larger));
            vf relaxed = vstay * old + vomega * h;
            clamp01(&relaxed);
            *(vf *)(s + at) = (vf)(((vi)relaxed & mask) | ((vi)old & ~mask));
            if (euler_columns) {
                vf step = sum + vkeep * old;
                clamp01(&step);
                *(vf *)(buf + at) = step;
            }
        }
        *(vf *)(res + 8 * v) = worst;
    }
}

/* --- tiles and their split across threads -------------------------------------------- */

/* The row tiles of a plan, in row order: tile k covers rows row[k] .. row[k] + rows[k] - 1
 * of segment seg[k]; segment s owns tiles first[s] .. first[s + 1] - 1. */
struct tiles {
    int32_t n;
    int32_t *seg, *row, *rows, *first;
    int64_t *cost; /* cumulative cost: weights read by tiles 0..k-1 */
};

static void free_tiles(struct tiles *t)
{
    free(t->seg);
    free(t->row);
    free(t->rows);
    free(t->first);
    free(t->cost);
}

static int make_tiles(const struct eqp_plan *p, struct tiles *t)
{
    int n = 0;
    for (int g = 0; g < p->n_segments; g++) n += (p->seg_rows[g] + MAX_ROWS - 1) / MAX_ROWS;
    t->n = n;
    t->seg = malloc(sizeof(int32_t) * (n + 1));
    t->row = malloc(sizeof(int32_t) * (n + 1));
    t->rows = malloc(sizeof(int32_t) * (n + 1));
    t->first = malloc(sizeof(int32_t) * (p->n_segments + 1));
    t->cost = malloc(sizeof(int64_t) * (n + 1));
    if (!t->seg || !t->row || !t->rows || !t->first || !t->cost) {
        free_tiles(t);
        return -1;
    }
    int k = 0;
    t->cost[0] = 0;
    for (int g = 0; g < p->n_segments; g++) {
        t->first[g] = k;
        int per_row = 4; /* the epilogue */
        for (int q = p->seg_term[g]; q < p->seg_term[g] + p->seg_terms[g]; q++)
            per_row += p->term_width[q];
        const int end = p->seg_row[g] + p->seg_rows[g];
        for (int row = p->seg_row[g]; row < end; row += MAX_ROWS, k++) {
            const int rows = end - row < MAX_ROWS ? end - row : MAX_ROWS;
            int64_t cost = (int64_t)per_row * rows;
            if (p->crow) cost += p->crow[row + rows] - p->crow[row];
            t->seg[k] = g;
            t->row[k] = row;
            t->rows[k] = rows;
            t->cost[k + 1] = t->cost[k] + cost;
        }
    }
    t->first[p->n_segments] = k;
    return 0;
}

/* Split tiles lo..hi-1 into nt contiguous parts of about equal cost: part j is
 * bound[j] .. bound[j + 1] - 1. */
static void split_tiles(const struct tiles *t, int lo, int hi, int nt, int32_t *bound)
{
    const int64_t base = t->cost[lo], total = t->cost[hi] - base;
    int k = lo;
    bound[0] = lo;
    for (int j = 1; j < nt; j++) {
        const int64_t goal = base + total * j / nt;
        while (k < hi && t->cost[k] < goal) k++;
        bound[j] = k;
    }
    bound[nt] = hi;
}

/* Work (weights x columns) below which a further thread splitting rows costs more in
 * barriers than it saves. */
#define MIN_WORK_PER_THREAD 60000

/* Threads that splitting the rows of one strip can use. */
static int row_threads(const struct eqp_plan *p, const struct tiles *t, int threads)
{
    const int64_t work = t->cost[t->n] * p->width;
    int64_t useful = work / MIN_WORK_PER_THREAD;
    if (useful < 1) useful = 1;
    return threads < useful ? threads : (int)useful;
}

/* Wait for the whole team (an orphaned barrier: it binds to the caller's parallel region). */
static void barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#define TEAM_SIZE() omp_get_num_threads()
#endif

/* --- Euler phases --------------------------------------------------------------------- */

struct euler_job {
    const struct eqp_plan *p;
    const struct tiles *t;
    int steps;
    float *s, *buf;
    const float *drive, *target;
    float keep, pull;
    int first_output;
    int by_strips;        /* 1: whole strips per thread; 0: rows of each strip split */
    const int32_t *bound; /* row split: tiles of thread j are bound[j] .. bound[j + 1] - 1 */
};

#define EULER_CASES(NV)                                                                   \
    switch (rows) {                                                                       \
    case 4: euler_tile(4, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    case 3: euler_tile(3, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    case 2: euler_tile(2, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    default: euler_tile(1, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    }

/* One Euler step of tiles lo..hi-1 of one strip. */
static inline __attribute__((always_inline)) void euler_tiles(
    const struct euler_job *j, int lo, int hi, const float *from, float *to, const float *d,
    const float *y)
{
    const struct eqp_plan *p = j->p;
    const int vecs = p->width / 8, fo = j->first_output;
    for (int k = lo; k < hi; k++) {
        const int seg = j->t->seg[k], row = j->t->row[k], rows = j->t->rows[k];
        if (vecs == 3) { EULER_CASES(3); }
        else if (vecs == 2) { EULER_CASES(2); }
        else { EULER_CASES(1); }
    }
}

CLONES void eqp_euler_worker(const struct euler_job *j, int tid, int nt)
{
    const struct eqp_plan *p = j->p;
    const int64_t strip = (int64_t)p->hidden * p->width;
    const int64_t outputs = (int64_t)(p->hidden - j->first_output) * p->width;
    const int lo = j->by_strips ? 0 : j->bound[tid];
    const int hi = j->by_strips ? j->t->n : j->bound[tid + 1];
    const int first = j->by_strips ? tid : 0, stride = j->by_strips ? nt : 1;
    for (int c = first; c < p->strips; c += stride) {
        float *home = j->s + c * strip, *from = home, *to = j->buf + c * strip;
        const float *d = j->drive + c * strip;
        const float *y = j->target ? j->target + c * outputs : NULL;
        for (int n = 0; n < j->steps; n++) {
            euler_tiles(j, lo, hi, from, to, d, y);
            if (!j->by_strips) barrier();
            float *swap = from; from = to; to = swap;
        }
        if (from != home && lo < hi) {
            const int64_t start = (int64_t)j->t->row[lo] * p->width;
            const int64_t end = (int64_t)(j->t->row[hi - 1] + j->t->rows[hi - 1]) * p->width;
            memcpy(home + start, from + start, sizeof(float) * (size_t)(end - start));
        }
    }
}

/*
 * Run `steps` Euler steps from the state in s (strips x hidden x width), using buf (same
 * shape) as scratch; the result is left in s. target (strips x outputs x width) is NULL in
 * the free phase. Returns the threads used, or -1 when out of memory.
 */
int eqp_settle(const struct eqp_plan *p, int steps, float *s, float *buf, const float *drive,
               float keep, const float *target, float pull, int first_output, int threads)
{
    struct tiles t;
    if (make_tiles(p, &t)) return -1;
    int32_t bound[MAX_THREADS + 1];
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    struct euler_job job = {p, &t, steps, s, buf, drive, target, keep, pull, first_output,
                            0, bound};
    int nt = threads;
    job.by_strips = 1;
    if (p->strips < threads) {
        nt = row_threads(p, &t, threads);
        job.by_strips = nt == 1;
        if (job.by_strips) nt = p->strips;
        else split_tiles(&t, 0, t.n, nt, bound);
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
    eqp_euler_worker(&job, THREAD_ID(), TEAM_SIZE());
#else
    nt = 1;
    eqp_euler_worker(&job, 0, 1);
#endif
    free_tiles(&t);
    return nt;
}

/* --- converged free phase ------------------------------------------------------------- */

enum column_mode { EULER = 0, SWEEP = 1, CHECK = 2, DONE = 3 };

struct converge_job {
    const struct eqp_plan *p;
    const struct tiles *t;
    const struct eqp_converge_args *a;
    float *s, *buf;
    const float *drive;
    int32_t *work;   /* out: passes per column (batch entries) */
    int32_t *capped; /* out: 1 where a column stopped at max_work unconverged */
    int by_strips;
    const int32_t *bound; /* per segment g: tiles of thread j are bound[g*(nt+1) + j] .. +1 */
    float *res;           /* nt x RES_STRIDE residuals (row split) */
    float *scratch;       /* nt working strips (state, buffer, drive, raw) without a row split */
    float *raw;           /* raw sums of one strip (row split) */
    int *next;            /* next column to settle without a row split */
};

#define RAW_CASES(NV)                                                      \
    switch (rows) {                                                        \
    case 4: raw_tile(4, NV, w, p, seg, row, s, raw, d); break;             \
    case 3: raw_tile(3, NV, w, p, seg, row, s, raw, d); break;             \
    case 2: raw_tile(2, NV, w, p, seg, row, s, raw, d); break;             \
    default: raw_tile(1, NV, w, p, seg, row, s, raw, d); break;            \
    }

/* One converged-phase pass over tiles lo..hi-1 (rows of one layer, which read only other
 * layers) for the first `vecs` vectors of lanes: first every tile's raw sums, then the
 * update of those rows. */
static inline __attribute__((always_inline)) void converge_tiles(
    const struct converge_job *j, int lo, int hi, float *s, float *buf, float *raw,
    const float *d, const vi *sor, int euler, float *res, int vecs)
{
    if (lo == hi) return;
    const struct eqp_plan *p = j->p;
    const int64_t w = p->width;
    for (int k = lo; k < hi; k++) {
        const int seg = j->t->seg[k], row = j->t->row[k], rows = j->t->rows[k];
        if (vecs == 3) { RAW_CASES(3); }
        else if (vecs == 2) { RAW_CASES(2); }
        else { RAW_CASES(1); }
    }
    const int64_t r0 = j->t->row[lo], r1 = j->t->row[hi - 1] + j->t->rows[hi - 1];
    if (vecs == 3) converge_rows(3, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
    else if (vecs == 2) converge_rows(2, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
    else converge_rows(1, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
}

/* The tiles of segment g that thread tid works on. */
static inline void segment_tiles(const struct converge_job *j, int g, int tid, int nt, int *lo,
                                 int *hi)
{
    if (j->by_strips) {
        *lo = j->t->first[g];
        *hi = j->t->first[g + 1];
    } else {
        *lo = j->bound[g * (nt + 1) + tid];
        *hi = j->bound[g * (nt + 1) + tid + 1];
    }
}

/* Copy column col of the caller's strip layout (from) into lane `lane` of a working strip
 * (to), or back when `out` is set. */
static inline void copy_column(const struct eqp_plan *p, float *strips, float *lanes, int col,
                               int lane, int out)
{
    const int width = p->width;
    float *home = strips + (int64_t)(col / width) * p->hidden * width + col % width;
    for (int64_t row = 0; row < p->hidden; row++) {
        if (out) home[row * width] = lanes[row * width + lane];
        else lanes[row * width + lane] = home[row * width];
    }
}

/*
 * Settle a set of lanes (the columns of one working strip). With a row split (`split`) the
 * lanes are strip c of the caller's arrays, settled in place by the whole team, each thread
 * keeping an identical copy of the lane modes. Otherwise the thread owns a working strip
 * whose lanes it fills with the next unsettled columns (a shared counter) and refills as
 * columns finish, so a finished column stops costing work.
 */
static inline __attribute__((always_inline)) void converge_lanes(
    const struct converge_job *j, int c, int tid, int nt)
{
    const struct eqp_plan *p = j->p;
    const struct eqp_converge_args *a = j->a;
    const int width = p->width, split = !j->by_strips;
    const int64_t strip = (int64_t)p->hidden * width;
    float *s, *buf, *d, *raw;
    if (split) {
        s = j->s + c * strip;
        buf = j->buf + c * strip;
        d = (float *)j->drive + c * strip;
        raw = j->raw;
    } else {
        s = j->scratch + (int64_t)tid * 4 * strip;
        buf = s + strip;
        d = buf + strip;
        raw = d + strip;
    }
    int col_of[MAX_WIDTH], mode[MAX_WIDTH], work[MAX_WIDTH], capped[MAX_WIDTH];
    int back[MAX_WIDTH];
    float leave[MAX_WIDTH]; /* residual at which the column's Euler warm-up ends */
    float own[RES_STRIDE];
    float *res = split ? j->res + tid * RES_STRIDE : own;
    int live = 0, vecs = width / 8;
    for (int lane = 0; lane < width; lane++) {
        int col = c * width + lane;
        if (!split) col = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED);
        col_of[lane] = col < a->batch ? col : -1;
        if (!split) {
            if (col_of[lane] >= 0) {
                copy_column(p, j->s, s, col, lane, 0);
                copy_column(p, (float *)j->drive, d, col, lane, 0);
            } else {
                for (int64_t row = 0; row < p->hidden; row++)
                    s[row * width + lane] = d[row * width + lane] = 0.0f;
            }
        }
        mode[lane] = col_of[lane] >= 0 ? EULER : DONE;
        work[lane] = capped[lane] = 0;
        live += col_of[lane] >= 0;
        int cold = 1;
        for (int64_t row = 0; cold && row < p->hidden; row++) cold = s[row * width + lane] == 0.0f;
        leave[lane] = cold ? a->cold_tol : a->warm_tol;
    }
    while (live > 0) {
        vi sor[MAX_VECS];
        int euler = 0;
        for (int lane = 0; lane < width; lane++) {
            ((int32_t *)sor)[lane] = mode[lane] == SWEEP ? -1 : 0;
            euler |= mode[lane] == EULER;
        }
        for (int lane = 0; lane < width; lane++) res[lane] = 0.0f;
        for (int g = 0; g < p->n_segments; g++) {
            int lo, hi;
            segment_tiles(j, g, tid, nt, &lo, &hi);
            converge_tiles(j, lo, hi, s, buf, raw, d, sor, euler, res, vecs);
            if (split) barrier();
        }
        for (int lane = 0; lane < width; lane++) {
            back[lane] = 0;
            if (mode[lane] == DONE) continue;
            float r = res[lane];
            for (int q = 0; split && q < nt; q++) {
                const float other = j->res[q * RES_STRIDE + lane];
                r = other > r ? other : r;
            }
            work[lane]++;
            const int converged = r <= a->tol;
            if (mode[lane] == EULER) {
                back[lane] = !converged;
                mode[lane] = converged ? DONE : (r < leave[lane] ? SWEEP : EULER);
            } else if (mode[lane] == SWEEP) {
                mode[lane] = converged ? CHECK : SWEEP;
            } else {
                mode[lane] = converged ? DONE : SWEEP;
            }
            if (mode[lane] != DONE && work[lane] >= a->max_work) {
                mode[lane] = DONE;
                capped[lane] = 1;
            }
        }
        if (euler) {
            for (int g = 0; g < p->n_segments; g++) {
                int lo, hi;
                segment_tiles(j, g, tid, nt, &lo, &hi);
                if (lo == hi) continue;
                const int64_t r0 = j->t->row[lo], r1 = j->t->row[hi - 1] + j->t->rows[hi - 1];
                for (int64_t row = r0; row < r1; row++)
                    for (int lane = 0; lane < width; lane++)
                        if (back[lane]) s[row * width + lane] = buf[row * width + lane];
            }
        }
        if (split) barrier();
        live = 0;
        for (int lane = 0; lane < width; lane++) {
            const int col = col_of[lane];
            if (col < 0) continue;
            if (mode[lane] != DONE) {
                live++;
                continue;
            }
            if (tid == 0 || !split) {
                j->work[col] = work[lane];
                j->capped[col] = capped[lane];
            }
            col_of[lane] = -1;
            if (split) continue;
            copy_column(p, j->s, s, col, lane, 1);
            const int next = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED);
            if (next >= a->batch) continue;
            col_of[lane] = next;
            copy_column(p, j->s, s, next, lane, 0);
            copy_column(p, (float *)j->drive, d, next, lane, 0);
            mode[lane] = EULER;
            work[lane] = capped[lane] = 0;
            int cold = 1;
            for (int64_t row = 0; cold && row < p->hidden; row++)
                cold = s[row * width + lane] == 0.0f;
            leave[lane] = cold ? a->cold_tol : a->warm_tol;
            live++;
        }
        if (!split && live > 0 && live <= 8 * (vecs - 1)) {
            /* the pool has run dry: move the unfinished lanes down and stop computing the
             * vectors that hold only finished ones */
            int to = 0;
            for (int lane = 0; lane < 8 * vecs; lane++) {
                if (col_of[lane] < 0) continue;
                if (lane != to) {
                    for (int64_t row = 0; row < p->hidden; row++) {
                        s[row * width + to] = s[row * width + lane];
                        d[row * width + to] = d[row * width + lane];
                    }
                    col_of[to] = col_of[lane];
                    mode[to] = mode[lane];
                    work[to] = work[lane];
                    capped[to] = capped[lane];
                    leave[to] = leave[lane];
                    col_of[lane] = -1;
                    mode[lane] = DONE;
                }
                to++;
            }
            vecs = (live + 7) / 8;
        }
    }
}

CLONES void eqp_converge_worker(const struct converge_job *j, int tid, int nt)
{
    if (j->by_strips) {
        /* every thread settles lanes until the shared column counter runs out */
        converge_lanes(j, 0, tid, nt);
    } else {
        for (int c = 0; c < j->p->strips; c++) converge_lanes(j, c, tid, nt);
    }
}

/*
 * Converged free phase from the state in s (strips x hidden x width), buf as scratch; the
 * result is left in s, the passes per column in work and the unconverged-at-the-cap flags
 * in capped (both batch entries). Returns the threads used, or -1 when out of memory.
 */
int eqp_converge(const struct eqp_plan *p, const struct eqp_converge_args *a, float *s,
                 float *buf, const float *drive, int32_t *work, int32_t *capped, int threads)
{
    struct tiles t;
    if (make_tiles(p, &t)) return -1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    int nt = threads, by_strips = 1;
    if (p->strips < threads) {
        nt = row_threads(p, &t, threads);
        by_strips = nt == 1;
        if (by_strips) nt = p->strips;
    }
    int32_t *bound = malloc(sizeof(int32_t) * (size_t)p->n_segments * (nt + 1));
    float *res = malloc(sizeof(float) * (size_t)nt * RES_STRIDE);
    const size_t strip = (size_t)p->hidden * p->width;
    float *scratch = malloc(sizeof(float) * (by_strips ? 4 * (size_t)nt * strip : strip));
    if (!bound || !res || !scratch) {
        free(bound);
        free(res);
        free(scratch);
        free_tiles(&t);
        return -1;
    }
    for (int g = 0; g < p->n_segments; g++)
        split_tiles(&t, t.first[g], t.first[g + 1], by_strips ? 1 : nt, bound + g * (nt + 1));
    int next = 0;
    struct converge_job job = {p, &t, a, s, buf, drive, work, capped, by_strips, bound, res,
                               scratch, scratch, &next};
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
    eqp_converge_worker(&job, THREAD_ID(), TEAM_SIZE());
#else
    nt = 1;
    eqp_converge_worker(&job, 0, 1);
#endif
    free(bound);
    free(res);
    free(scratch);
    free_tiles(&t);
    return nt;
}

static struct PyModuleDef settle_module = {
    PyModuleDef_HEAD_INIT, "_settle", "Fused settling kernels, called through ctypes (eqp.native).",
    0, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__settle(void) { return PyModuleDef_Init(&settle_module); }
