/*
 * The arithmetic of the fused kernels: settle.c includes this file once per instruction set,
 * with
 *
 *     V(name)       the variant's name for a function (name_avx2, name_portable)
 *     INLINE        the attributes of the inlined helpers, WORKER those of the two workers
 *     MADD(a, b, c) a * b + c: one fused multiply-add (one rounding) in the AVX2+FMA variant,
 *                   a product and a sum (two roundings) in the portable one
 *
 * Every multiply-add is written as MADD and the file is compiled with -ffp-contract=off, so
 * which operations fuse is fixed by this text, not by how a compiler contracts each inlined
 * copy: the results are the same for every strip width, lane order and thread count, and for
 * any compiler.
 */

/* --- arithmetic of one tile of rows --------------------------------------------------- */

/* acc = drive + keep * s + (eps W s) for rows row..row+R-1 of one strip: NV vectors of
 * columns from a row stride of w8 floats. */
INLINE void V(accumulate)(
    const int R, const int NV, const int64_t w8, const struct eqp_plan *p, int seg, int row,
    const float *s, const float *drive, float keep, vf acc[MAX_ROWS][MAX_VECS])
{
    const vf vkeep = SPLAT(keep);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            const int64_t at = (row + r) * w8 + 8 * v;
            acc[r][v] = MADD(vkeep, *(const vf *)(s + at), *(const vf *)(drive + at));
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
                for (int v = 0; v < NV; v++) acc[r][v] = MADD(b, x[v], acc[r][v]);
            }
        }
    }
    if (p->crow) {
        for (int r = 0; r < R; r++) {
            for (int q = p->crow[row + r]; q < p->crow[row + r + 1]; q++) {
                const vf b = SPLAT(p->cval[q]);
                const float *src = s + p->ccol[q] * w8;
                for (int v = 0; v < NV; v++) acc[r][v] = MADD(b, *(const vf *)(src + 8 * v), acc[r][v]);
            }
        }
    }
}

/* Clamp to [0, 1] in place (NaN-free inputs). */
INLINE void V(clamp01)(vf *a)
{
    const vf zero = SPLAT(0.0f), one = SPLAT(1.0f);
    const vi positive = *a > zero;
    *a = (vf)((vi)*a & positive);
    const vi above = *a > one;
    *a = (vf)(((vi)*a & ~above) | ((vi)one & above));
}

/* One Euler step of a tile: out = clamp(acc [+ pull (target - acc) for outputs]). */
INLINE void V(euler_tile)(
    const int R, const int NV, const struct eqp_plan *p, int seg, int row,
    const float *s, float *out, const float *drive, float keep,
    const float *target, float pull, int first_output)
{
    const int64_t w8 = 8 * NV;
    vf acc[MAX_ROWS][MAX_VECS];
    V(accumulate)(R, NV, w8, p, seg, row, s, drive, keep, acc);
    const vf vpull = SPLAT(pull);
    for (int r = 0; r < R; r++) {
        const int i = row + r;
        for (int v = 0; v < NV; v++) {
            vf a = acc[r][v];
            if (target && i >= first_output) {
                const vf y = *(const vf *)(target + (i - first_output) * w8 + 8 * v);
                a = MADD(vpull, y - a, a);
            }
            V(clamp01)(&a);
            *(vf *)(out + i * w8 + 8 * v) = a;
        }
    }
}

/* acc = drive + eps W s for a tile, stored unclamped in out: the converged phase's h * eps.
 * The same loop as an Euler step's, so that it compiles to the same register-only code. */
INLINE void V(raw_tile)(
    const int R, const int NV, const int64_t w8, const struct eqp_plan *p, int seg, int row,
    const float *s, float *out, const float *drive)
{
    vf acc[MAX_ROWS][MAX_VECS];
    V(accumulate)(R, NV, w8, p, seg, row, s, drive, 0.0f, acc);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) *(vf *)(out + (row + r) * w8 + 8 * v) = acc[r][v];
}

/*
 * The converged phase's update of rows r0..r1-1 from their raw sums: SOR lanes (mask `sor`)
 * are set in place in s; every lane's Euler step goes to buf (kept only for lanes in Euler
 * mode); res gets the max over the rows of |clamp(h) - s| per lane.
 */
INLINE void V(converge_rows)(
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
            V(clamp01)(&target);
            const vf gap = (vf)((vi)(target - old) & magnitude);
            const vi larger = gap > worst;
            worst = (vf)(((vi)worst & ~larger) | ((vi)gap & larger));
            vf relaxed = MADD(vstay, old, vomega * h);
            V(clamp01)(&relaxed);
            *(vf *)(s + at) = (vf)(((vi)relaxed & mask) | ((vi)old & ~mask));
            if (euler_columns) {
                vf step = MADD(vkeep, old, sum);
                V(clamp01)(&step);
                *(vf *)(buf + at) = step;
            }
        }
        *(vf *)(res + 8 * v) = worst;
    }
}

#define EULER_CASES(NV)                                                                   \
    switch (rows) {                                                                       \
    case 4: V(euler_tile)(4, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    case 3: V(euler_tile)(3, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    case 2: V(euler_tile)(2, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    default: V(euler_tile)(1, NV, p, seg, row, from, to, d, j->keep, y, j->pull, fo); break; \
    }

/* One Euler step of tiles lo..hi-1 of one strip. */
INLINE void V(euler_tiles)(
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

WORKER void V(eqp_euler_worker)(const struct euler_job *j, int tid, int nt)
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
            V(euler_tiles)(j, lo, hi, from, to, d, y);
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

#define RAW_CASES(NV)                                                      \
    switch (rows) {                                                        \
    case 4: V(raw_tile)(4, NV, w, p, seg, row, s, raw, d); break;             \
    case 3: V(raw_tile)(3, NV, w, p, seg, row, s, raw, d); break;             \
    case 2: V(raw_tile)(2, NV, w, p, seg, row, s, raw, d); break;             \
    default: V(raw_tile)(1, NV, w, p, seg, row, s, raw, d); break;            \
    }

/* One converged-phase pass over tiles lo..hi-1 (rows of one layer, which read only other
 * layers) for the first `vecs` vectors of lanes: first every tile's raw sums, then the
 * update of those rows. */
INLINE void V(converge_tiles)(
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
    if (vecs == 3) V(converge_rows)(3, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
    else if (vecs == 2) V(converge_rows)(2, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
    else V(converge_rows)(1, w, r0, r1, s, buf, raw, j->a, sor, euler, res);
}

/*
 * Settle a set of lanes (the columns of one working strip). With a row split (`split`) the
 * lanes are strip c of the caller's arrays, settled in place by the whole team, each thread
 * keeping an identical copy of the lane modes. Otherwise the thread owns a working strip
 * whose lanes it fills with the next unsettled columns (a shared counter) and refills as
 * columns finish, so a finished column stops costing work.
 */
INLINE void V(converge_lanes)(
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
            V(converge_tiles)(j, lo, hi, s, buf, raw, d, sor, euler, res, vecs);
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

WORKER void V(eqp_converge_worker)(const struct converge_job *j, int tid, int nt)
{
    if (j->by_strips) {
        /* every thread settles lanes until the shared column counter runs out */
        V(converge_lanes)(j, 0, tid, nt);
    } else {
        for (int c = 0; c < j->p->strips; c++) V(converge_lanes)(j, c, tid, nt);
    }
}
