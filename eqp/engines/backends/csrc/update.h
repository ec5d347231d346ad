/*
 * The EqProp weight update on the connections that exist (eqp_update, see eqp/native.py).
 *
 * Trainer._update's torch path forms dW = both^T signed as one dense N x H product (MKL,
 * K = 2 x batch) and then passes over it many times. Here each connection of the upper
 * triangle (i < j) is visited once: its dot product, then in registers the same float32
 * operations, in the same order, that the torch path applies to that entry:
 *
 *     acc = fma(both[k][i], signed[k][j], acc), k = 0 .. K-1, from +0  (MKL's rounding: one
 *           FMA chain in k per entry, measured bit-equal; eqp.native checks it at run time)
 *     d   = ((acc / beta) / size) * mask[i][j]
 *     w   = W[i][j] + (factor ? d * factor[i][j] : rate * d)
 *     W[i][j] = W[j][i] = w, the kernel's packed copies eps * w, |dW| sum at (i, j) += |d|
 *
 * dW and W are symmetric (products commute, and the torch path mirrors the input rows), so
 * the lower triangle is written, not computed (its |dW| sums are the upper's: the trainer
 * copies them across once per epoch). Dense blocks (the mask's populated layer
 * pairs) run as tiles of 4 rows x 16 columns in registers (the mirrored entries written
 * four at a time through 4 x 4 transposes); the scattered rest as a CSR list,
 * 8 entries at a time (sgn transposed once per call, so that eight products of eight entries
 * are eight loads and a transpose in registers, not eight gathers). Tasks are split across
 * threads by cost; every entry is computed by one thread with the same instructions whatever
 * the thread count, so the results are bitwise the same for any number of threads. Only the
 * AVX2+FMA variant exists: the portable one could not match MKL's fused chain, so there the
 * torch path stays.
 */

struct eqp_update_plan {
    int32_t n;                 /* neurons: W is n x n */
    int32_t n_in;              /* inputs: dW's columns are W's columns n_in .. n-1 */
    int32_t k;                 /* products per entry: 2 x batch */
    int32_t n_tasks;
    const int32_t *blk_row;    /* dense blocks: first row, rows, first column, columns */
    const int32_t *blk_rows;   /* (indices of W; the block lies in the upper triangle) */
    const int32_t *blk_col;
    const int32_t *blk_cols;
    const int64_t *blk_pack;   /* eps W[block] row-major in packed, or -1 */
    const int64_t *blk_pack_t; /* eps W[block]^T row-major in packed, or -1 */
    const int32_t *blk_record; /* 1: store d in record (a block the per-layer rates read) */
    const int32_t *blk_full;   /* 1: every entry a connection (the mask's 1 need not be read) */
    const int32_t *task_block; /* a task's dense block, or -1: rows of the CSR list */
    const int32_t *task_row;   /* its first row */
    const int32_t *task_rows;  /* and rows */
    const int64_t *task_cost;  /* cumulative cost of tasks 0 .. t-1 (n_tasks + 1 entries) */
    const int32_t *crow;       /* CSR of the other upper-triangle connections (n + 1) */
    const int32_t *ccol;       /* their columns (indices of W) */
    const int64_t *cpack;      /* eps W[i][j]: >= 0 in values, <= -2 at -(x + 2) in packed, -1 none */
    const int64_t *cpack_t;    /* the same for eps W[j][i] */
};

struct eqp_update_args {
    float beta, size, rate, eps;
    const float *both;   /* k x n: rho of the nudged, then the free states, inputs included */
    const float *sgn;    /* k x h: the nudged, then the negated free states */
    const float *mask;   /* n x n */
    const float *factor; /* n x h per-entry rates, or NULL: `rate` for all */
    float *weights;      /* n x n, updated in place */
    float *packed;       /* the fused kernel's dense blocks (eps W), or NULL */
    float *values;       /* the fused kernel's CSR values (eps W), or NULL */
    float *record;       /* n x h: d of the blocks the per-layer rates read, and of the CSR list */
    float *abs_sum;      /* n x h: += |d| (the upper triangle's entries only) */
};

#ifdef EQP_AVX2
/* Hide a product from the compiler, so that no -ffp-contract setting fuses it with the sum
 * that follows (the torch path rounds the two separately). */
#define OPAQUE(x) __asm__("" : "+x"(x))
#define UPD_ROWS 4
#define UPD_VECS 2

/* One dense tile's dot products: rows i0 .. i0+R-1, columns j0 .. j0+8NV-1 (of dW); with
 * `lanes` < 8 (NV = 1) only that many columns are read (a block's last ones). */
static inline __attribute__((always_inline, target("avx2,fma"))) void upd_dots(
    const int R, const int NV, const struct eqp_update_plan *p, const struct eqp_update_args *a,
    int i0, int j0, int lanes, __m256 acc[UPD_ROWS][UPD_VECS])
{
    /* named accumulators, not an array: GCC's -O3 would interchange the loops over an
     * array's rows and k, leaving one FMA chain in flight */
    const int64_t n = p->n, h = p->n - p->n_in;
    const float *b = a->both + i0, *s = a->sgn + (j0 - p->n_in);
    const __m256i first = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i some = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), first);
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
    __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (int k = 0; k < p->k; k++) {
        const float *sk = s + k * h, *bk = b + k * n;
        const __m256 x0 = lanes < 8 ? _mm256_maskload_ps(sk, some) : _mm256_loadu_ps(sk);
        const __m256 x1 = NV > 1 ? _mm256_loadu_ps(sk + 8) : x0;
        __m256 y = _mm256_broadcast_ss(bk);
        a00 = _mm256_fmadd_ps(y, x0, a00);
        if (NV > 1) a01 = _mm256_fmadd_ps(y, x1, a01);
        if (R > 1) {
            y = _mm256_broadcast_ss(bk + 1);
            a10 = _mm256_fmadd_ps(y, x0, a10);
            if (NV > 1) a11 = _mm256_fmadd_ps(y, x1, a11);
        }
        if (R > 2) {
            y = _mm256_broadcast_ss(bk + 2);
            a20 = _mm256_fmadd_ps(y, x0, a20);
            if (NV > 1) a21 = _mm256_fmadd_ps(y, x1, a21);
        }
        if (R > 3) {
            y = _mm256_broadcast_ss(bk + 3);
            a30 = _mm256_fmadd_ps(y, x0, a30);
            if (NV > 1) a31 = _mm256_fmadd_ps(y, x1, a31);
        }
    }
    acc[0][0] = a00;
    acc[0][1] = a01;
    acc[1][0] = a10;
    acc[1][1] = a11;
    acc[2][0] = a20;
    acc[2][1] = a21;
    acc[3][0] = a30;
    acc[3][1] = a31;
}

/* d from a dot product: the torch path's divisions and mask, one rounding each. */
static inline float upd_d(const struct eqp_update_args *a, float acc, float mask)
{
    return ((acc / a->beta) / a->size) * mask;
}

/* The new weight from the old one and d (the same product and sum as the torch path). */
static inline float upd_w(const struct eqp_update_args *a, float old, float d, int64_t at)
{
    float step = a->factor ? d * a->factor[at] : a->rate * d;
    OPAQUE(step);
    return old + step;
}

/* Write one entry's results: W and its mirror, the |d| sum, d where recorded, and the packed
 * copies eps w at `pk` and `pk_t` (NULL: none). */
static inline void upd_store(const struct eqp_update_plan *p, const struct eqp_update_args *a,
                             int i, int j, float d, float w, float *pk, float *pk_t, int record)
{
    const int64_t n = p->n, h = n - p->n_in;
    a->weights[i * n + j] = w;
    a->weights[j * n + i] = w;
    const float ad = __builtin_fabsf(d);
    a->abs_sum[i * h + (j - p->n_in)] += ad;
    if (record) a->record[i * h + (j - p->n_in)] = d;
    if (pk) *pk = a->eps * w;
    if (pk_t) *pk_t = a->eps * w;
}

/* Where a CSR entry's packed copy lives (see cpack), or NULL. */
static inline float *upd_packed_at(const struct eqp_update_args *a, int64_t at)
{
    if (at >= 0) return a->values ? a->values + at : NULL;
    if (at <= -2 && a->packed) return a->packed + (-(at + 2));
    return NULL;
}

/* Four rows' 4 x 4 sub-tile (columns c .. c+3 of `t`) as four columns: out[q] holds
 * column c+q of rows 0..3. */
static inline __attribute__((always_inline, target("avx2,fma"))) void upd_transpose(
    const float t[UPD_ROWS][8 * UPD_VECS], int c, __m128 out[4])
{
    __m128 r0 = _mm_loadu_ps(t[0] + c), r1 = _mm_loadu_ps(t[1] + c);
    __m128 r2 = _mm_loadu_ps(t[2] + c), r3 = _mm_loadu_ps(t[3] + c);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    out[0] = r0;
    out[1] = r1;
    out[2] = r2;
    out[3] = r3;
}

/* Rows i0 .. i0+R-1 of dense block `blk`, columns j .. j+8NV-1 (`lanes` of them when fewer
 * than 8 remain): dot products, then every entry's update in registers; the mirrored entries
 * (W[j][i], eps W[j][i] packed) four rows at a time by 4 x 4 transposes. */
static inline __attribute__((always_inline, target("avx2,fma"))) void upd_chunk(
    const int R, const int NV, const struct eqp_update_plan *p, const struct eqp_update_args *a,
    int blk, int i0, int j, int lanes)
{
    const int64_t n = p->n, h = n - p->n_in, n_in = p->n_in;
    const int row0 = p->blk_row[blk], rows = p->blk_rows[blk];
    const int col0 = p->blk_col[blk], cols = p->blk_cols[blk];
    const int64_t pack = a->packed ? p->blk_pack[blk] : -1;
    const int64_t pack_t = a->packed ? p->blk_pack_t[blk] : -1;
    const int record = p->blk_record[blk], full = p->blk_full[blk];
    __m256 acc[UPD_ROWS][UPD_VECS];
    upd_dots(R, NV, p, a, i0, j, lanes, acc);
    if (lanes < 8) {
        float sums[UPD_ROWS][8];
        for (int r = 0; r < R; r++) _mm256_storeu_ps(sums[r], acc[r][0]);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < lanes; c++) {
                const int i = i0 + r, jj = j + c;
                const float d = upd_d(a, sums[r][c], full ? 1.0f : a->mask[(int64_t)i * n + jj]);
                const float w = upd_w(a, a->weights[(int64_t)i * n + jj], d, i * h + (jj - n_in));
                float *pk = pack >= 0 ? a->packed + pack + (int64_t)(i - row0) * cols + (jj - col0)
                                      : NULL;
                float *pk_t = pack_t >= 0
                                  ? a->packed + pack_t + (int64_t)(jj - col0) * rows + (i - row0)
                                  : NULL;
                upd_store(p, a, i, jj, d, w, pk, pk_t, record);
            }
        return;
    }
    const __m256 vbeta = _mm256_set1_ps(a->beta), vsize = _mm256_set1_ps(a->size);
    const __m256 vrate = _mm256_set1_ps(a->rate), veps = _mm256_set1_ps(a->eps);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    float ws[UPD_ROWS][8 * UPD_VECS], es[UPD_ROWS][8 * UPD_VECS];
    for (int r = 0; r < R; r++) {
        const int64_t i = i0 + r;
        for (int v = 0; v < NV; v++) {
            const int64_t at = i * n + j + 8 * v, hat = i * h + (j - n_in) + 8 * v;
            __m256 d = _mm256_div_ps(_mm256_div_ps(acc[r][v], vbeta), vsize);
            if (!full) d = _mm256_mul_ps(d, _mm256_loadu_ps(a->mask + at));
            __m256 step = a->factor ? _mm256_mul_ps(d, _mm256_loadu_ps(a->factor + hat))
                                    : _mm256_mul_ps(vrate, d);
            OPAQUE(step);
            const __m256 w = _mm256_add_ps(_mm256_loadu_ps(a->weights + at), step);
            const __m256 ad = _mm256_and_ps(d, magnitude);
            const __m256 e = _mm256_mul_ps(veps, w);
            _mm256_storeu_ps(a->weights + at, w);
            if (record) _mm256_storeu_ps(a->record + hat, d);
            _mm256_storeu_ps(a->abs_sum + hat, _mm256_add_ps(_mm256_loadu_ps(a->abs_sum + hat), ad));
            if (pack >= 0)
                _mm256_storeu_ps(a->packed + pack + (i - row0) * cols + (j - col0) + 8 * v, e);
            _mm256_storeu_ps(ws[r] + 8 * v, w);
            _mm256_storeu_ps(es[r] + 8 * v, e);
        }
    }
    if (R < 4) {
        for (int c = 0; c < 8 * NV; c++) {
            const int64_t jj = j + c;
            for (int r = 0; r < R; r++) {
                const int i = i0 + r;
                a->weights[jj * n + i] = ws[r][c];
                if (pack_t >= 0) a->packed[pack_t + (jj - col0) * rows + (i - row0)] = es[r][c];
            }
        }
        return;
    }
    for (int c = 0; c < 8 * NV; c += 4) {
        __m128 t[4];
        upd_transpose(ws, c, t);
        for (int q = 0; q < 4; q++) _mm_storeu_ps(a->weights + (j + c + q) * n + i0, t[q]);
        if (pack_t >= 0) {
            upd_transpose(es, c, t);
            for (int q = 0; q < 4; q++)
                _mm_storeu_ps(a->packed + pack_t + (j + c + q - col0) * rows + (i0 - row0), t[q]);
        }
    }
}

/* Rows i0 .. i0+R-1 of dense block `blk`, all its columns. */
static inline __attribute__((always_inline, target("avx2,fma"))) void upd_block_rows(
    const int R, const struct eqp_update_plan *p, const struct eqp_update_args *a, int blk,
    int i0)
{
    const int end = p->blk_col[blk] + p->blk_cols[blk];
    int j = p->blk_col[blk];
    for (; j + 16 <= end; j += 16) upd_chunk(R, 2, p, a, blk, i0, j, 8);
    for (; j + 8 <= end; j += 8) upd_chunk(R, 1, p, a, blk, i0, j, 8);
    if (j < end) upd_chunk(R, 1, p, a, blk, i0, j, end - j);
}

/* Eight rows of eight floats, transposed in registers: out[u] lane t = in[t] lane u. */
static inline __attribute__((always_inline, target("avx2,fma"))) void upd_transpose8(__m256 r[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* The CSR list's entries of rows r0 .. r0+R-1, eight dot products at a time. `sgn_t` holds
 * sgn transposed (h x k: each column's k products contiguous), so eight k of eight entries
 * are eight loads and a transpose instead of eight gathers; the chain per entry is the same
 * (k ascending, one FMA each), so are its bits. */
static __attribute__((target("avx2,fma"))) void upd_sparse_rows(
    const struct eqp_update_plan *p, const struct eqp_update_args *a, const float *sgn_t, int r0,
    int R)
{
    const int64_t n = p->n, h = n - p->n_in, K = p->k;
    for (int i = r0; i < r0 + R; i++) {
        const int first = p->crow[i], last = p->crow[i + 1];
        for (int q = first; q < last; q += 8) {
            const int lanes = last - q < 8 ? last - q : 8;
            int32_t idx[8];
            for (int t = 0; t < 8; t++) idx[t] = p->ccol[q + (t < lanes ? t : 0)] - p->n_in;
            __m256 acc = _mm256_setzero_ps();
            int k = 0;
            for (; k + 8 <= K; k += 8) {
                __m256 x[8];
                for (int t = 0; t < 8; t++) x[t] = _mm256_loadu_ps(sgn_t + idx[t] * K + k);
                upd_transpose8(x);
                for (int u = 0; u < 8; u++)
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a->both + (k + u) * n + i), x[u], acc);
            }
            if (k < K) {
                const __m256i vidx = _mm256_loadu_si256((const __m256i *)idx);
                for (; k < K; k++) {
                    const __m256 x = _mm256_i32gather_ps(a->sgn + k * h, vidx, 4);
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a->both + k * n + i), x, acc);
                }
            }
            float sums[8];
            _mm256_storeu_ps(sums, acc);
            for (int t = 0; t < lanes; t++) {
                const int j = p->ccol[q + t];
                const float d = upd_d(a, sums[t], a->mask[(int64_t)i * n + j]);
                const float w = upd_w(a, a->weights[(int64_t)i * n + j], d,
                                      (int64_t)i * h + (j - p->n_in));
                float *pk = upd_packed_at(a, p->cpack[q + t]);
                float *pk_t = upd_packed_at(a, p->cpack_t[q + t]);
                upd_store(p, a, i, j, d, w, pk, pk_t, 1);
            }
        }
    }
}

/* sgn (k x h) transposed into out (h x k). */
static void upd_transpose_sgn(const struct eqp_update_plan *p, const float *sgn, float *out)
{
    const int64_t h = p->n - p->n_in, K = p->k;
    for (int64_t k = 0; k < K; k++)
        for (int64_t j = 0; j < h; j++) out[j * K + k] = sgn[k * h + j];
}

/* The tasks first .. last-1 of one thread. */
static __attribute__((target("avx2,fma"))) void upd_tasks(
    const struct eqp_update_plan *p, const struct eqp_update_args *a, const float *sgn_t,
    int first, int last)
{
    for (int t = first; t < last; t++) {
        const int blk = p->task_block[t], row = p->task_row[t], rows = p->task_rows[t];
        if (blk < 0) {
            upd_sparse_rows(p, a, sgn_t, row, rows);
            continue;
        }
        switch (rows) {
        case 4: upd_block_rows(4, p, a, blk, row); break;
        case 3: upd_block_rows(3, p, a, blk, row); break;
        case 2: upd_block_rows(2, p, a, blk, row); break;
        default: upd_block_rows(1, p, a, blk, row); break;
        }
    }
}

/* dW = both^T sgn, every entry (n x h, row-major), by the update's own dot products: what
 * eqp.native compares with torch's product before it uses eqp_update. */
static __attribute__((target("avx2,fma"))) void upd_all_dots(
    const struct eqp_update_plan *p, const struct eqp_update_args *a, float *out)
{
    const int64_t h = p->n - p->n_in;
    for (int i0 = 0; i0 < p->n; i0 += UPD_ROWS) {
        const int R = p->n - i0 < UPD_ROWS ? p->n - i0 : UPD_ROWS;
        for (int j = p->n_in; j < p->n; j += 8) {
            const int lanes = p->n - j < 8 ? p->n - j : 8;
            __m256 acc[UPD_ROWS][UPD_VECS];
            switch (R) {
            case 4: upd_dots(4, 1, p, a, i0, j, lanes, acc); break;
            case 3: upd_dots(3, 1, p, a, i0, j, lanes, acc); break;
            case 2: upd_dots(2, 1, p, a, i0, j, lanes, acc); break;
            default: upd_dots(1, 1, p, a, i0, j, lanes, acc); break;
            }
            for (int r = 0; r < R; r++) {
                float sums[8];
                _mm256_storeu_ps(sums, acc[r][0]);
                for (int c = 0; c < lanes; c++) out[(i0 + r) * h + (j - p->n_in) + c] = sums[c];
            }
        }
    }
}
#endif
