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
 * The arithmetic (settle_arith.h) is compiled twice, for AVX2+FMA and portable, and the
 * first call picks the variant this CPU can run (-DEQP_PORTABLE_ONLY builds the portable one
 * alone; the tests check it that way). Every multiply-add is spelled out and the file is
 * built with -ffp-contract=off, so the rounding is fixed by the source, not by the compiler:
 * GCC 11 and 12, any contraction setting and -march=native give the same bits. The OpenMP
 * parallel regions live in the exported functions; the per-thread workers they call hold
 * the arithmetic, so the outlined regions themselves hold none.
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

#define EQP_SETTLE_ABI 5
#define MAX_ROWS 4
#define MAX_VECS 3
#define MAX_WIDTH 24
#define MAX_THREADS 256
#define RES_STRIDE 32 /* floats per thread's residual row (128 bytes: no false sharing) */

typedef float vf __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(32), aligned(4), may_alias));
#define SPLAT(x) ((vf){(x), (x), (x), (x), (x), (x), (x), (x)})

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(EQP_PORTABLE_ONLY)
#define EQP_AVX2 1
#include <immintrin.h>
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

/* Threads a call uses, at most `threads` (one without OpenMP), and how: whole strips per
 * thread (*by_strips), or the rows of each strip split across them. */
static int team_size(const struct eqp_plan *p, const struct tiles *t, int threads, int *by_strips)
{
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
#ifndef _OPENMP
    threads = 1; /* built without OpenMP: one thread, whatever was asked */
#endif
    *by_strips = 1;
    if (p->strips >= threads) return threads;
    const int nt = row_threads(p, t, threads);
    *by_strips = nt == 1;
    return *by_strips ? p->strips : nt;
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

/* --- the arithmetic, once per instruction set (settle_arith.h) ------------------------ */

#define V_JOIN(name, suffix) name##_##suffix
#define V_NAME(name, suffix) V_JOIN(name, suffix)
#define V(name) V_NAME(name, VARIANT)

#ifdef EQP_AVX2
#define VARIANT avx2
#define INLINE static inline __attribute__((always_inline, target("avx2,fma")))
#define WORKER static __attribute__((target("avx2,fma")))
#define MADD(a, b, c) ((vf)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#include "settle_arith.h"
#undef VARIANT
#undef INLINE
#undef WORKER
#undef MADD
#undef EULER_CASES
#undef RAW_CASES
#endif

#define VARIANT portable
#define INLINE static inline __attribute__((always_inline))
#define WORKER static
#define MADD(a, b, c) ((a) * (b) + (c))
#include "settle_arith.h"

typedef void (*euler_worker)(const struct euler_job *, int, int);
typedef void (*converge_worker)(const struct converge_job *, int, int);

/* 1 where this CPU runs the AVX2+FMA variant (checked once). */
static int use_avx2(void)
{
#ifdef EQP_AVX2
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
#else
    return 0;
#endif
}

/* The instruction set the arithmetic runs with here: "avx2+fma" or "portable". */
const char *eqp_settle_variant(void) { return use_avx2() ? "avx2+fma" : "portable"; }

static euler_worker pick_euler_worker(void)
{
#ifdef EQP_AVX2
    if (use_avx2()) return eqp_euler_worker_avx2;
#endif
    return eqp_euler_worker_portable;
}

static converge_worker pick_converge_worker(void)
{
#ifdef EQP_AVX2
    if (use_avx2()) return eqp_converge_worker_avx2;
#endif
    return eqp_converge_worker_portable;
}

/* --- the weight update (update.h; AVX2+FMA only) -------------------------------------- */

#include "update.h"

/* Work (entries x products) below which a further thread costs more than it saves. */
#define MIN_UPDATE_WORK 400000

/*
 * The EqProp update of every connection (see update.h). Returns the threads used, or -2
 * where this CPU or build has no AVX2+FMA (the caller keeps its torch path).
 */
int eqp_update(const struct eqp_update_plan *p, const struct eqp_update_args *a, int threads)
{
#ifdef EQP_AVX2
    if (!use_avx2()) return -2;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
#ifndef _OPENMP
    threads = 1;
#endif
    const int64_t useful = p->task_cost[p->n_tasks] * p->k / MIN_UPDATE_WORK;
    const int nt = useful < 1 ? 1 : (threads < useful ? threads : (int)useful);
    int32_t bound[MAX_THREADS + 1];
    int t = 0;
    bound[0] = 0;
    for (int q = 1; q < nt; q++) {
        const int64_t goal = p->task_cost[p->n_tasks] * q / nt;
        while (t < p->n_tasks && p->task_cost[t] < goal) t++;
        bound[q] = t;
    }
    bound[nt] = p->n_tasks;
    float *sgn_t = NULL;
    if (p->crow && p->crow[p->n] > 0) {
        sgn_t = malloc(sizeof(float) * (size_t)(p->n - p->n_in) * (size_t)p->k);
        if (!sgn_t) return -1;
        upd_transpose_sgn(p, a->sgn, sgn_t);
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
    upd_tasks(p, a, sgn_t, bound[THREAD_ID()], bound[THREAD_ID() + 1]);
#else
    upd_tasks(p, a, sgn_t, 0, p->n_tasks);
#endif
    free(sgn_t);
    return nt;
#else
    (void)p;
    (void)a;
    (void)threads;
    return -2;
#endif
}

/* dW's every entry by eqp_update's dot products (n x h into out); -2 without AVX2+FMA. */
int eqp_update_dots(const float *both, const float *sgn, float *out, int k, int n, int n_in)
{
#ifdef EQP_AVX2
    if (!use_avx2()) return -2;
    struct eqp_update_plan p = {0};
    struct eqp_update_args a = {0};
    p.n = n;
    p.n_in = n_in;
    p.k = k;
    a.both = both;
    a.sgn = sgn;
    upd_all_dots(&p, &a, out);
    return 1;
#else
    (void)both;
    (void)sgn;
    (void)out;
    (void)k;
    (void)n;
    (void)n_in;
    return -2;
#endif
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
    struct euler_job job = {p, &t, steps, s, buf, drive, target, keep, pull, first_output,
                            0, bound};
    const int nt = team_size(p, &t, threads, &job.by_strips);
    if (!job.by_strips) split_tiles(&t, 0, t.n, nt, bound);
    const euler_worker worker = pick_euler_worker();
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
    worker(&job, THREAD_ID(), TEAM_SIZE());
#else
    worker(&job, 0, 1);
#endif
    free_tiles(&t);
    return nt;
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
    int by_strips;
    const int nt = team_size(p, &t, threads, &by_strips);
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
    const converge_worker worker = pick_converge_worker();
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
    worker(&job, THREAD_ID(), TEAM_SIZE());
#else
    worker(&job, 0, 1);
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
