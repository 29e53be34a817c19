/*
 * Fuzz target for the C entry points gs_ce_index_f32/f64 and gs_ce_probs_f32/f64.
 *
 * The input bytes are decoded into one call: dtype, target kind, shape (small), strides
 * (including invalid and overflowing ones), targets (in range, ignore_index, out of range),
 * weights (or NULL), params (valid and invalid), grad_output (or NULL), NULL pointers,
 * NaN/Inf/huge/denormal values, and in-place aliasing.  Every buffer is allocated at its exact
 * size, so AddressSanitizer (or valgrind) reports any access outside it; the padding between
 * rows holds NaN on input and a sentinel on output, so reading or writing it is caught too.
 * Invariants checked (a violation aborts, which every fuzzer reports as a crash):
 *   - the status is one of the errors that apply to the arguments, or GS_OK when none does;
 *     *bad_row is the first bad row for GS_ERR_TARGET and -1 otherwise;
 *   - on an error no output (nor the logits, in place) has been written;
 *   - on GS_OK every output element is written and no padding is; ignored rows have zero loss
 *     and gradient; a row holding NaN/Inf has NaN loss, gradient and lse; a finite row (with
 *     weights, grad_output and options in a sane range) has finite loss, gradient and lse, and
 *     without z-loss and softcap its gradient sums to zero; an empty batch gives NaN for "mean"
 *     and 0 for "sum";
 *   - in place gives bit for bit the result of the out-of-place call.
 *
 * With gcc (no libFuzzer): build with tests/fuzz/driver.c, e.g.
 *   gcc -std=c99 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all \
 *       -Igenerated/c tests/fuzz/fuzz_ce.c tests/fuzz/driver.c generated/c/gradsmith_ce.c \
 *       -lm -o fuzz_ce && ./fuzz_ce -seconds 60 -seed 1
 * With clang and libFuzzer (no driver.c):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -Igenerated/c tests/fuzz/fuzz_ce.c generated/c/gradsmith_ce.c -lm -o fuzz_ce_lf \
 *       && ./fuzz_ce_lf -max_total_time=60 -max_len=4096
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradsmith_ce.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t pos;
} reader;

static uint64_t take(reader *r, int bytes)
{
    uint64_t value = 0;
    int i;
    for (i = 0; i < bytes; ++i) {
        value = (value << 8) | (r->pos < r->size ? r->data[r->pos++] : 0u);
    }
    return value;
}

static unsigned pick(reader *r, unsigned n)
{
    return (unsigned)(take(r, 1) % n);
}

/* With -DGS_FUZZ_STATS, counts of what the inputs exercised are printed at exit. */
#ifdef GS_FUZZ_STATS
static long long stats_status[6], stats_finite_rows, stats_nonfinite_rows, stats_ignored_rows;
static long long stats_zero_sum_rows, stats_inplace, stats_probs, stats_f32;
#define GS_COUNT(counter) ((counter) += 1)
static void print_stats(void)
{
    fprintf(stderr, "status ok %lld null %lld shape %lld target %lld params %lld; finite rows checked "
            "%lld, zero-sum rows %lld, NaN rows %lld, ignored rows %lld, in place %lld, probs %lld, f32 %lld\n",
            stats_status[0], stats_status[1], stats_status[2], stats_status[3], stats_status[4],
            stats_finite_rows, stats_zero_sum_rows, stats_nonfinite_rows, stats_ignored_rows,
            stats_inplace, stats_probs, stats_f32);
}
#else
#define GS_COUNT(counter) ((void)0)
#endif

/* Prints the decoded call when an invariant fails (set by the dtype's run function). */
static void (*describe_case)(void);

static void fail(const char *what, int64_t row, int64_t column)
{
    fprintf(stderr, "gradsmith fuzz: invariant violated: %s (row %lld, column %lld)\n", what,
            (long long)row, (long long)column);
    if (describe_case != NULL) {
        describe_case();
    }
    abort();
}

static void *allocate(int64_t count, size_t item)
{
    /* exact size; malloc(0) may return NULL, and the kernels refuse NULL pointers */
    void *p = malloc(count > 0 ? (size_t)count * item : 1);
    if (p == NULL) {
        fprintf(stderr, "gradsmith fuzz: out of memory\n");
        exit(3);
    }
    return p;
}

/* Small values in [-8, 8); with `extreme`, also zeros, huge, NaN, +-Inf, raw bits, denormals. */
static double value(reader *r, int f32, int extreme)
{
    const unsigned k = extreme ? pick(r, 32) : pick(r, 20);
    const double huge = f32 ? 1e30 : 1e300;
    if (k < 18) {
        return (double)(int16_t)take(r, 2) / 4096.0;
    }
    switch (k) {
    case 18:
    case 19:
        return (double)(int16_t)take(r, 2) / 16.0;
    case 20:
        return 0.0;
    case 21:
        return -0.0;
    case 22:
        return huge * (1.0 - (double)pick(r, 8) / 16.0);
    case 23:
        return -huge;
    case 24:
        return (double)NAN;
    case 25:
        return (double)INFINITY;
    case 26:
        return -(double)INFINITY;
    case 27:
        if (f32) {
            const uint32_t bits = (uint32_t)take(r, 4);
            float f;
            memcpy(&f, &bits, sizeof f);
            return (double)f;
        } else {
            const uint64_t bits = take(r, 8);
            double d;
            memcpy(&d, &bits, sizeof d);
            return d;
        }
    case 28:
        return (f32 ? 1.401298464324817e-45 : 4.9406564584124654e-324) * (double)(1 + pick(r, 4));
    case 29:
        return f32 ? (double)FLT_MAX : DBL_MAX;
    case 30:
        return -(f32 ? (double)FLT_MAX : DBL_MAX);
    default:
        return (double)(int16_t)take(r, 2) * 64.0;
    }
}

typedef struct {
    int f32, probs, weighted, has_grad_output, has_lse, has_bad_row, inplace, extreme;
    int null_which; /* 0 none, 1 logits, 2 targets, 3 params, 4 loss, 5 dlogits */
    int64_t n_rows, n_classes, logits_stride, dlogits_stride, targets_stride;
    gs_ce_params params;
} fuzz_case;

static int64_t bad_stride(reader *r, int64_t n_rows, int64_t n_classes)
{
    switch (pick(r, 4)) {
    case 0:
        return n_classes > 0 ? n_classes - 1 : 0;
    case 1:
        return -1;
    case 2:
        return n_rows > 1 ? INT64_MAX / n_rows + 1 + (int64_t)pick(r, 4) : INT64_MIN;
    default:
        return INT64_MAX;
    }
}

static int64_t stride(reader *r, int64_t n_rows, int64_t n_classes)
{
    if (pick(r, 24) == 0) {
        return bad_stride(r, n_rows, n_classes);
    }
    if (n_rows == 1 && pick(r, 8) == 0) {
        return INT64_MAX; /* one row: the stride is never applied */
    }
    return n_classes + (int64_t)pick(r, 4);
}

static double option(reader *r, const double *valid, unsigned n_valid, const double *invalid,
                     unsigned n_invalid)
{
    if (pick(r, 16) == 0) {
        return invalid[pick(r, n_invalid)];
    }
    return valid[pick(r, n_valid)];
}

static void decode_case(reader *r, fuzz_case *c)
{
    static const double eps_valid[] = {0.0, 0.0, 0.1, 0.5, 1.0, 1e-300};
    static const double eps_invalid[] = {-0.1, 1.5, (double)NAN, (double)INFINITY, -0.0 - 1e-300};
    static const double zl_valid[] = {0.0, 0.0, 1e-4, 0.5, 100.0, 1e300};
    static const double zl_invalid[] = {-1.0, (double)NAN, (double)INFINITY, -1e-300};
    static const double cap_valid[] = {0.0, 0.0, 0.5, 30.0, 1e6, 1e-300, 1e300};
    static const double cap_invalid[] = {-1.0, (double)NAN, (double)INFINITY, -(double)INFINITY};
    const unsigned flags = (unsigned)take(r, 2);
    const unsigned size_kind = pick(r, 16);
    c->f32 = flags & 1u;
    c->probs = (flags >> 1) & 1u;
    c->weighted = ((flags >> 2) & 3u) != 0;
    c->has_grad_output = ((flags >> 4) & 3u) != 0;
    c->has_lse = (flags >> 6) & 1u;
    c->has_bad_row = ((flags >> 7) & 3u) != 0;
    c->inplace = ((flags >> 9) & 3u) == 0;
    c->extreme = ((flags >> 11) & 3u) == 0;
    c->null_which = ((flags >> 13) & 7u) == 0 ? (int)pick(r, 6) : 0;

    if (size_kind == 0) {
        c->n_rows = (int64_t)pick(r, 3); /* long rows: several 512-class chunks */
        c->n_classes = 500 + (int64_t)take(r, 2) % 700;
    } else if (size_kind == 1) {
        static const int64_t bad_rows[] = {-1, INT64_MIN, 0, 1};
        static const int64_t bad_classes[] = {0, -1, INT64_MIN, 1};
        c->n_rows = bad_rows[pick(r, 4)];
        c->n_classes = bad_classes[pick(r, 4)];
    } else {
        c->n_rows = (int64_t)pick(r, 9);
        c->n_classes = 1 + (int64_t)pick(r, size_kind < 6 ? 4 : 40);
    }
    c->logits_stride = stride(r, c->n_rows, c->n_classes);
    c->dlogits_stride = c->inplace && pick(r, 16) != 0 ? c->logits_stride
                                                       : stride(r, c->n_rows, c->n_classes);
    c->targets_stride = stride(r, c->n_rows, c->n_classes);

    {
        const int64_t last = c->n_classes > 0 ? c->n_classes - 1 : 0;
        const int64_t choices[] = {-100, -1, 0, 1, last, last + 1, INT64_MIN, INT64_MAX};
        c->params.ignore_index = choices[pick(r, 8)];
    }
    c->params.reduction = pick(r, 16) == 0 ? (pick(r, 2) ? 3 : -1) : (int32_t)pick(r, 3);
    c->params.reserved = pick(r, 32) == 0 ? 1 : 0;
    c->params.label_smoothing = option(r, eps_valid, 6, eps_invalid, 5);
    c->params.lse_square_scale = option(r, zl_valid, 6, zl_invalid, 4);
    c->params.softcap = option(r, cap_valid, 7, cap_invalid, 4);
}

static int shape_ok(const fuzz_case *c, int inplace)
{
    const int64_t n = c->n_rows;
    const int64_t strides[3] = {c->logits_stride, c->dlogits_stride, c->targets_stride};
    int i;
    if (n < 0 || c->n_classes < 1) {
        return 0;
    }
    for (i = 0; i < 3; ++i) {
        if (i == 2 && !c->probs) {
            continue;
        }
        if (strides[i] < c->n_classes || (n > 0 && strides[i] > INT64_MAX / n)) {
            return 0;
        }
    }
    return !(inplace && c->logits_stride != c->dlogits_stride);
}

/* Valid parameters for a kernel whose type has smallest normal real_min and largest real_max. */
static int params_ok(const gs_ce_params *p, double real_min, double real_max)
{
    return p->reduction >= 0 && p->reduction <= 2 && p->reserved == 0
        && p->label_smoothing >= 0.0 && p->label_smoothing <= 1.0
        && p->lse_square_scale >= 0.0 && p->lse_square_scale <= real_max
        && (p->softcap == 0.0 || (p->softcap >= real_min && p->softcap <= real_max));
}

/* Elements a (rows, stride) buffer spans; 1 when the shape is invalid (nothing may be read). */
static int64_t span(const fuzz_case *c, int64_t row_stride)
{
    if (!shape_ok(c, 0)) {
        return 1;
    }
    return c->n_rows == 0 ? 0 : (c->n_rows - 1) * row_stride + c->n_classes;
}

#define GS_SUFFIX f32
#define GS_REAL float
#define GS_EPSILON ((double)FLT_EPSILON)
#define GS_HUGE 1e30
#define GS_REAL_MIN ((double)FLT_MIN)
#define GS_REAL_MAX ((double)FLT_MAX)
#include "fuzz_body.inc"
#undef GS_SUFFIX
#undef GS_REAL
#undef GS_EPSILON
#undef GS_HUGE
#undef GS_REAL_MIN
#undef GS_REAL_MAX

#define GS_SUFFIX f64
#define GS_REAL double
#define GS_EPSILON DBL_EPSILON
#define GS_HUGE 1e300
#define GS_REAL_MIN DBL_MIN
#define GS_REAL_MAX DBL_MAX
#include "fuzz_body.inc"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    fuzz_case c;
    decode_case(&r, &c);
#ifdef GS_FUZZ_STATS
    {
        static int registered;
        if (!registered) {
            registered = atexit(print_stats) == 0;
        }
        if (c.probs) GS_COUNT(stats_probs);
        if (c.f32) GS_COUNT(stats_f32);
    }
#endif
    if (c.f32) {
        run_f32(&c, &r);
    } else {
        run_f64(&c, &r);
    }
    return 0;
}
