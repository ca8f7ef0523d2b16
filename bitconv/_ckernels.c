/* bitconv._ckernels: the inner loops of ternarization and packing, in C (optional; bitconv.core.native; the callers
 * fall back to their numpy code, which writes the same bytes).
 *
 * abs_sum_bf16(bits, threads, lanes) -> float
 *     torch's float32 `sum` of |w| for a contiguous bf16 tensor (given as its uint16 bit patterns), in exactly the
 *     order bitconv.torchsum replays (ATen cascade_sum: `threads` per-thread ranges, `lanes`-wide vectors, four of
 *     them per row, multi_row_sum's four accumulator levels). One pass over the bf16 data: |w| is made in registers,
 *     never stored. Every step is one IEEE float32 addition in torch's order, so the build must not reassociate or
 *     contract floating point (setup.py compiles with -O3 -fno-fast-math -ffp-contract=off); tests compare it with
 *     torch's own sum and with torchsum.replay_sum.
 * codes_bf16(bits, out, threshold) -> None
 *     out[i] = +1 if bits[i] is positive with magnitude bits > threshold, -1 if negative with magnitude > threshold,
 *     else 0: the ternary codes for the threshold bitconv.quant derives from the scale.
 *
 * pack2 / pack_tq1 / pack_iq1bn(codes, out, ...) -> None
 *     the layouts' code packing (HF, I2_S, IQ2_BN, TQ2_0 2-bit; TQ1_0 and IQ1_BN base 3), byte for byte what the
 *     layouts' numpy encoders write (tests compare them); the layouts add their scales.
 * unpack2(packed, codes, ...) -> bool
 *     pack2's inverse (the HF layout's decoder): the codes, and whether a field holds 0b11, which no code makes.
 * block_d(codes, out, block_codes, block_bytes, d) -> int
 *     the TQ layouts' per-block fp16 d: the last two bytes of each block_bytes-byte block of `out` get the 16 bits
 *     `d` (little-endian) where the block's codes hold a non-zero, else 0; returns how many blocks got `d`.
 * same_bytes(a, b) -> bool
 *     memcmp of two buffers (verify compares codes and stored tensors with it).
 *
 * f16_of_bf16(bits, out) -> bool
 *     bf16 -> IEEE half (round to nearest even, NaN payloads kept quiet), 8 values per F16C instruction where the CPU
 *     has AVX2 and F16C (checked at run time; the same bits as torch's `.to(torch.float16)`, tested on all 65536
 *     patterns); False, nothing written, elsewhere: the caller converts with torch.
 *
 * All release the GIL (the compute workers run two tensors at once). Buffers: any C-contiguous buffer; lengths are
 * checked (bits: an even number of bytes; out: one byte per element).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define GRAIN 32768
#define ILP 4
#define LEVELS 4
#define MAX_LANES (ILP * 32)

static inline float mag(uint16_t b) {
    uint32_t u = ((uint32_t)(b & 0x7FFFu)) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int r = 0;
    uint64_t v = (uint64_t)(x - 1);
    while (v) { r++; v >>= 1; }
    return r;
}

/* ATen's multi_row_sum: row r is added lane-wise to level 0; whenever a block of 2^p rows ends, level j-1 is added
 * into level j and cleared, climbing while the row count is a multiple of 2^(j*p); rows after the last whole block
 * stay in level 0; the result folds levels 1..3 into level 0 in order. These three steps serve both the
 * whole-tensor sum (multi_row_sum) and the streamed one (the MRS state of mrs_*, fed a block of rows at a time). */
typedef float Levels[LEVELS][MAX_LANES];

/* Add n rows of `lanes` values from `src` (float32 when `f32`, else bf16 bit patterns taken as |w|) to a0. */
static void add_rows(float *restrict a0, const void *src, int64_t n, int lanes, int f32) {
    if (f32) {
        const float *f = (const float *)src;
        for (int64_t r = 0; r < n; ++r, f += lanes)
            for (int k = 0; k < lanes; ++k) a0[k] += f[k];
    } else {
        const uint16_t *b = (const uint16_t *)src;
        for (int64_t r = 0; r < n; ++r, b += lanes)
            for (int k = 0; k < lanes; ++k) a0[k] += mag(b[k]);
    }
}

/* The cascade after the block that ends at row count i (a multiple of 2^p). */
static void cascade(Levels acc, int64_t i, int p, int lanes) {
    const int64_t mask = ((int64_t)1 << p) - 1;
    for (int j = 1; j < LEVELS; ++j) {
        for (int k = 0; k < lanes; ++k) {
            acc[j][k] += acc[j - 1][k];
            acc[j - 1][k] = 0.0f;
        }
        if ((i & (mask << (j * p))) != 0) break;
    }
}

static void fold(Levels acc, int lanes, float *out) {
    for (int k = 0; k < lanes; ++k) {
        float a = acc[0][k];
        for (int j = 1; j < LEVELS; ++j) a += acc[j][k];
        out[k] = a;
    }
}

static int level_power(int64_t size) {
    int p = ceil_log2(size) / LEVELS;
    return p < 4 ? 4 : p;
}

static inline const void *row_at(const void *src, int64_t row, int lanes, int f32) {
    return (const char *)src + row * lanes * (f32 ? 4 : 2);
}

/* multi_row_sum over `size` rows of `lanes` values at `src` (row r = src[r*lanes .. r*lanes+lanes)), into out. */
static void multi_row_sum(const void *src, int64_t size, int lanes, int f32, float *out) {
    Levels acc;
    memset(acc, 0, sizeof acc);
    const int p = level_power(size);
    const int64_t step = (int64_t)1 << p;
    int64_t i = 0;
    for (; i + step <= size; i += step) {
        add_rows(acc[0], row_at(src, i, lanes, f32), step, lanes, f32);
        cascade(acc, i + step, p, lanes);
    }
    add_rows(acc[0], row_at(src, i, lanes, f32), size - i, lanes, f32);
    fold(acc, lanes, out);
}

static inline float load(const void *src, int64_t i, int f32) {
    return f32 ? ((const float *)src)[i] : mag(((const uint16_t *)src)[i]);
}

/* scalar_inner_sum: a range shorter than one vector (row_sum with ILP scalar accumulators). */
static float scalar_range_sum(const void *src, int64_t n, int f32) {
    int64_t size_ilp = n / ILP;
    float acc[ILP] = {0, 0, 0, 0};
    if (size_ilp) multi_row_sum(src, size_ilp, ILP, f32, acc);
    float p0 = acc[0];
    for (int64_t i = size_ilp * ILP; i < n; ++i) p0 += load(src, i, f32);
    for (int k = 1; k < ILP; ++k) p0 += acc[k];
    return p0;
}

/* vectorized_inner_sum + row_sum over [0, count) of src (count >= v). */
static float range_sum(const void *src, int64_t count, int v, int f32) {
    int64_t nvec = count / v, size_ilp = nvec / ILP;
    int lanes = ILP * v;
    float acc[MAX_LANES];
    multi_row_sum(src, size_ilp, lanes, f32, acc);
    float part[32];
    memcpy(part, acc, (size_t)v * sizeof(float));
    int64_t left = nvec - size_ilp * ILP;
    for (int64_t r = 0; r < left; ++r)
        for (int k = 0; k < v; ++k) part[k] += load(src, size_ilp * lanes + r * v + k, f32);
    for (int g = 1; g < ILP; ++g)
        for (int k = 0; k < v; ++k) part[k] += acc[g * v + k];
    float fin = 0.0f;
    for (int64_t i = nvec * v; i < count; ++i) fin += load(src, i, f32);
    for (int k = 0; k < v; ++k) fin += part[k];
    return fin;
}

static float replay(const uint16_t *bits, int64_t n, int v, int threads) {
    if (n == 0) return 0.0f;
    if (n < GRAIN || threads == 1) {
        float s = n >= v ? range_sum(bits, n, v, 0) : scalar_range_sum(bits, n, 0);
        return 0.0f + s;
    }
    int64_t t = (n + GRAIN - 1) / GRAIN;
    if (t > threads) t = threads;
    int64_t c = (n + t - 1) / t;
    float slots[256];
    memset(slots, 0, sizeof slots);
    int k = 0;
    for (int64_t b = 0; b < n; b += c, ++k) {
        int64_t cnt = (b + c < n ? c : n - b);
        float s = cnt >= v ? range_sum(bits + b, cnt, v, 0) : scalar_range_sum(bits + b, cnt, 0);
        slots[k] = 0.0f + s;
    }
    if (k == 1) return slots[0];
    return scalar_range_sum(slots, threads, 1);
}

static PyObject *abs_sum_bf16(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int threads, lanes;
    if (!PyArg_ParseTuple(args, "y*ii", &buf, &threads, &lanes)) return NULL;
    if (buf.len % 2 || threads < 1 || threads > 256 || lanes < 1 || lanes > 32) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "abs_sum_bf16: odd byte count, or threads/lanes out of range");
        return NULL;
    }
    float s;
    Py_BEGIN_ALLOW_THREADS
    s = replay((const uint16_t *)buf.buf, (int64_t)(buf.len / 2), lanes, threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyFloat_FromDouble((double)s);
}

static void codes_of_bits(const int16_t *restrict b, int8_t *restrict o, int64_t n, int threshold) {
    const int16_t tp = (int16_t)threshold;
    const uint16_t tn = (uint16_t)(0x8000 + threshold);
    for (int64_t i = 0; i < n; ++i) {
        int16_t x = b[i];
        o[i] = (int8_t)((x > tp) - ((uint16_t)x > tn));
    }
}

static PyObject *codes_bf16(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    int threshold;
    if (!PyArg_ParseTuple(args, "y*w*i", &in, &out, &threshold)) return NULL;
    if (in.len % 2 || out.len != in.len / 2 || threshold < -1 || threshold > 0x7FFF) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "codes_bf16: out must hold one byte per bf16 element; threshold in -1..32767");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    codes_of_bits((const int16_t *)in.buf, (int8_t *)out.buf, (int64_t)(in.len / 2), threshold);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------------- packing kernels
 * All take int8 codes (-1, 0, +1; trit t = code + 1) and write into a caller-allocated uint8 buffer. Codes form
 * groups of `group_blocks` blocks; group g's block b is written at out[g*group_stride + group_offset + b*block_out]
 * (group_stride = the row bytes of a layout with a per-row prefix, or the block bytes of one with a block suffix).
 * Bytes of `out` outside those block payloads are left as they are (the layout writes its scales).
 */
static int check_groups(Py_ssize_t ncodes, Py_ssize_t nout, Py_ssize_t block_codes, Py_ssize_t block_out,
                        Py_ssize_t group_blocks, Py_ssize_t group_stride, Py_ssize_t group_offset, Py_ssize_t *ngroups) {
    if (block_codes <= 0 || group_blocks <= 0 || group_offset < 0 || ncodes % (block_codes * group_blocks)) {
        PyErr_SetString(PyExc_ValueError, "pack: codes are not a whole number of groups of blocks");
        return -1;
    }
    *ngroups = ncodes / (block_codes * group_blocks);
    if (*ngroups && (group_stride < group_offset + group_blocks * block_out ||
                     (*ngroups - 1) * group_stride + group_offset + group_blocks * block_out > nout)) {
        PyErr_SetString(PyExc_ValueError, "pack: output buffer too small for the groups");
        return -1;
    }
    return 0;
}

/* pack2(codes, out, span, descending, group_blocks, group_stride, group_offset): 2-bit trits, 4 per byte. A block is
 * 4*span codes; its byte j = sum_i t[i*span + j] << (descending ? 6 - 2i : 2i). One loop per shift order, with the
 * shifts constant and the pointers restrict, so the compiler packs 16 bytes per SSE2 step (12 -> 2 ms for
 * 17.7 M codes; AVX2 clones gained nothing measurable: the loop is then bound by memory). */
static void pack2_block_asc(const uint8_t *restrict c, uint8_t *restrict o, Py_ssize_t span) {
    const uint8_t *restrict c1 = c + span, *restrict c2 = c + 2 * span, *restrict c3 = c + 3 * span;
    for (Py_ssize_t j = 0; j < span; ++j)
        o[j] = (uint8_t)((uint8_t)(c[j] + 1) | (uint8_t)((c1[j] + 1) << 2) | (uint8_t)((c2[j] + 1) << 4) |
                         (uint8_t)((c3[j] + 1) << 6));
}

static void pack2_block_desc(const uint8_t *restrict c, uint8_t *restrict o, Py_ssize_t span) {
    const uint8_t *restrict c1 = c + span, *restrict c2 = c + 2 * span, *restrict c3 = c + 3 * span;
    for (Py_ssize_t j = 0; j < span; ++j)
        o[j] = (uint8_t)((uint8_t)((c[j] + 1) << 6) | (uint8_t)((c1[j] + 1) << 4) | (uint8_t)((c2[j] + 1) << 2) |
                         (uint8_t)(c3[j] + 1));
}

static void pack2_groups(const uint8_t *c, uint8_t *o, Py_ssize_t ng, Py_ssize_t span, int desc,
                         Py_ssize_t gb, Py_ssize_t gs, Py_ssize_t go) {
    for (Py_ssize_t g = 0; g < ng; ++g)
        for (Py_ssize_t b = 0; b < gb; ++b) {
            const uint8_t *cb = c + (g * gb + b) * 4 * span;
            uint8_t *ob = o + g * gs + go + b * span;
            if (desc) pack2_block_desc(cb, ob, span);
            else pack2_block_asc(cb, ob, span);
        }
}

static PyObject *pack2(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t span, gb, gs, go;
    int desc;
    if (!PyArg_ParseTuple(args, "y*w*ninnn", &in, &out, &span, &desc, &gb, &gs, &go)) return NULL;
    Py_ssize_t ng;
    if (span <= 0 || check_groups(in.len, out.len, 4 * span, span, gb, gs, go, &ng)) {
        if (span <= 0) PyErr_SetString(PyExc_ValueError, "pack2: span must be positive");
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pack2_groups((const uint8_t *)in.buf, (uint8_t *)out.buf, ng, span, desc, gb, gs, go);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* unpack2(packed, codes, span, descending, group_blocks, group_stride, group_offset) -> int: pack2's inverse, code
 * t - 1 from each 2-bit field; returns how many fields hold 0b11 (no ternary code: the caller refuses the data; those
 * codes are written as 2). The bytes of `packed` outside the block payloads are not read. */
static unsigned unpack2_block(const uint8_t *restrict b, uint8_t *restrict c, Py_ssize_t span, int desc) {
    uint8_t *restrict c1 = c + span, *restrict c2 = c + 2 * span, *restrict c3 = c + 3 * span;
    const int s0 = desc ? 6 : 0, s1 = desc ? 4 : 2, s2 = desc ? 2 : 4, s3 = desc ? 0 : 6;
    uint8_t bad = 0;
    for (Py_ssize_t j = 0; j < span; ++j) {
        const uint8_t x = b[j];
        c[j] = (uint8_t)(((x >> s0) & 3) - 1);
        c1[j] = (uint8_t)(((x >> s1) & 3) - 1);
        c2[j] = (uint8_t)(((x >> s2) & 3) - 1);
        c3[j] = (uint8_t)(((x >> s3) & 3) - 1);
        bad |= (uint8_t)(x & (x >> 1) & 0x55);
    }
    return bad;
}

static PyObject *unpack2(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t span, gb, gs, go;
    int desc;
    if (!PyArg_ParseTuple(args, "y*w*ninnn", &in, &out, &span, &desc, &gb, &gs, &go)) return NULL;
    Py_ssize_t ng;
    if (span <= 0 || check_groups(out.len, in.len, 4 * span, span, gb, gs, go, &ng)) {
        if (span <= 0) PyErr_SetString(PyExc_ValueError, "unpack2: span must be positive");
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    unsigned bad = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *b = (const uint8_t *)in.buf;
    uint8_t *c = (uint8_t *)out.buf;
    for (Py_ssize_t g = 0; g < ng; ++g)
        for (Py_ssize_t k = 0; k < gb; ++k)
            bad |= unpack2_block(b + g * gs + go + k * span, c + (g * gb + k) * 4 * span, span, desc);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return PyBool_FromLong(bad != 0);
}

/* block_d(codes, out, block_codes, block_bytes, d) -> count: see the header. One pass over the codes (words ORed
 * eight codes at a time), two bytes written per block. */
static PyObject *block_d(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t qk, bb;
    unsigned int d;
    if (!PyArg_ParseTuple(args, "y*w*nnI", &in, &out, &qk, &bb, &d)) return NULL;
    Py_ssize_t ng;
    if (qk % 8 || bb < 2 || d > 0xFFFFu || check_groups(in.len, out.len, qk, bb, 1, bb, 0, &ng)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "block_d: blocks of 8k codes, >= 2 bytes, 16-bit d");
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < ng; ++g) {
        const uint8_t *c = (const uint8_t *)in.buf + g * qk;
        uint64_t any = 0;
        for (Py_ssize_t j = 0; j < qk; j += 8) {
            uint64_t w;
            memcpy(&w, c + j, 8);
            any |= w;
        }
        uint8_t *o = (uint8_t *)out.buf + g * bb + bb - 2;
        unsigned v = any ? d : 0u;
        count += any != 0;
        o[0] = (uint8_t)(v & 0xFFu);
        o[1] = (uint8_t)(v >> 8);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(count);
}

/* same_bytes(a, b) -> bool: the two buffers have equal length and bytes (memcmp, without the GIL). */
static PyObject *same_bytes(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*", &a, &b)) return NULL;
    int same = a.len == b.len;
    if (same && a.len) {
        Py_BEGIN_ALLOW_THREADS
        same = memcmp(a.buf, b.buf, (size_t)a.len) == 0;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyBool_FromLong(same);
}

/* pack_tl2(codes, out, M, K, K3, BM, BK): bitnet.cpp's TL2 content of codes [M, K], the layout
 * bitconv/layouts/gguf_tl.py documents (and packs the same way in numpy):
 *   part 1, M*K3/6 bytes: magnitudes |9t0 + 3t1 + t2| of column triplets, two per byte (high nibble first), loop nest
 *     tm, tk < K3/BK, sm < BM/32, sk < BK/6, p < 32: row tm*BM + 32sm + 8*SIG[p/8] + p%8, triplets tk*BK/3 + 2sk, +1;
 *   part 2, M*K3/24 bytes: signs as uint16 LE words, tm, tk, sm, c < BK/24, j < 16: bit 15-i is the sign of row
 *     tm*BM + 32sm + 16(i%2) + j, triplet tk*BK/3 + 8c + i/2;
 *   part 3, M*(K-K3)/4 bytes: columns [K3, K) as pair indices 3a + b + 4, rows as in part 1, tm, tk < (K-K3)/32, sm,
 *     sk < 8, pairs 16tk + 2sk and +1 (high nibble first).
 * A BM-row tile's triplet values are computed row by row first (the codes are read in order). */
static const int TL2_SIG[4] = {0, 2, 1, 3};

static void tl2_triplets(const int8_t *row, int8_t *v, Py_ssize_t S) {
    for (Py_ssize_t s = 0; s < S; ++s) v[s] = (int8_t)(9 * row[3 * s] + 3 * row[3 * s + 1] + row[3 * s + 2]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <tmmintrin.h>
/* the same values, 16 triplets (48 codes) per step: pshufb gathers the first, second and third codes of each triplet
 * from three 16-byte loads; 9a + 3b + c in int8 is exact (|v| <= 13) */
__attribute__((target("ssse3"))) static void tl2_triplets_ssse3(const int8_t *row, int8_t *v, Py_ssize_t S) {
    static const int8_t idx[3][3][16] = {
        {{0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 4, 7, 10, 13}},
        {{1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14}},
        {{2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, 1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1},
         {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15}}};
    __m128i m[3][3];
    for (int t = 0; t < 3; ++t)
        for (int part = 0; part < 3; ++part) m[t][part] = _mm_loadu_si128((const __m128i *)idx[t][part]);
    Py_ssize_t s = 0;
    for (; s + 16 <= S; s += 16) {
        const int8_t *p = row + 3 * s;
        const __m128i a = _mm_loadu_si128((const __m128i *)p), b = _mm_loadu_si128((const __m128i *)(p + 16)),
                      c = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i x[3];
        for (int t = 0; t < 3; ++t)
            x[t] = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m[t][0]), _mm_shuffle_epi8(b, m[t][1])),
                                _mm_shuffle_epi8(c, m[t][2]));
        __m128i u = _mm_add_epi8(_mm_add_epi8(_mm_add_epi8(x[0], x[0]), x[0]), x[1]); /* 3a + b */
        u = _mm_add_epi8(_mm_add_epi8(_mm_add_epi8(u, u), u), x[2]);                  /* 9a + 3b + c */
        _mm_storeu_si128((__m128i *)(v + s), u);
    }
    tl2_triplets(row + 3 * s, v + s, S - s);
}
#endif

static PyObject *pack_tl2(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t M, K, K3, BM, BK;
    if (!PyArg_ParseTuple(args, "y*w*nnnnn", &in, &out, &M, &K, &K3, &BM, &BK)) return NULL;
    const Py_ssize_t K2 = K - K3, S = K3 / 3;
    const char *err = NULL;
    if (M <= 0 || K <= 0 || BM <= 0 || BK <= 0 || M % BM || BM % 32 || BK % 24 || K3 < 0 || K3 % BK || K2 < 0 ||
        K2 % 32)
        err = "pack_tl2: M, K, K3, BM, BK do not describe whole TL2 tiles";
    else if (in.len != M * K)
        err = "pack_tl2: codes are not M x K";
    else if (out.len < M * K3 / 6 + M * K3 / 24 + M * K2 / 4)
        err = "pack_tl2: output buffer too small";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    int8_t *vbuf = (int8_t *)malloc((size_t)(BM * S > 0 ? BM * S : 1));
    if (!vbuf) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    void (*triplets)(const int8_t *, int8_t *, Py_ssize_t) = tl2_triplets;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (__builtin_cpu_supports("ssse3")) triplets = tl2_triplets_ssse3;
#endif
    Py_BEGIN_ALLOW_THREADS
    const int8_t *c = (const int8_t *)in.buf;
    uint8_t *o1 = (uint8_t *)out.buf;
    uint8_t *o2 = o1 + M * K3 / 6, *o3 = o2 + M * K3 / 24;
    const Py_ssize_t T = BK / 3; /* triplets per tile row */
    for (Py_ssize_t tm = 0; tm < M / BM; ++tm) {
        for (Py_ssize_t r = 0; r < BM; ++r) triplets(c + (tm * BM + r) * K, vbuf + r * S, S);
        for (Py_ssize_t tk = 0; tk < K3 / BK; ++tk) {
            for (Py_ssize_t sm = 0; sm < BM / 32; ++sm) {
                const int8_t *g = vbuf + 32 * sm * S + tk * T; /* this 32-row group's tile */
                for (Py_ssize_t sk = 0; sk < BK / 6; ++sk) {
                    for (int p = 0; p < 32; ++p) {
                        const int8_t *v = g + (8 * TL2_SIG[p >> 3] + (p & 7)) * S + 2 * sk;
                        const int a0 = v[0] < 0 ? -v[0] : v[0], a1 = v[1] < 0 ? -v[1] : v[1];
                        *o1++ = (uint8_t)(a0 << 4 | a1);
                    }
                }
                for (Py_ssize_t cc = 0; cc < BK / 24; ++cc) {
                    for (int j = 0; j < 16; ++j) {
                        const int8_t *v0 = g + j * S + 8 * cc, *v1 = g + (16 + j) * S + 8 * cc;
                        unsigned w = 0;
                        for (int q = 0; q < 8; ++q)
                            w |= (unsigned)(v0[q] < 0) << (15 - 2 * q) | (unsigned)(v1[q] < 0) << (14 - 2 * q);
                        *o2++ = (uint8_t)(w & 0xff);
                        *o2++ = (uint8_t)(w >> 8);
                    }
                }
            }
        }
        for (Py_ssize_t tk = 0; tk < K2 / 32; ++tk) {
            for (Py_ssize_t sm = 0; sm < BM / 32; ++sm) {
                for (int sk = 0; sk < 8; ++sk) {
                    for (int p = 0; p < 32; ++p) {
                        const int8_t *t = c + (tm * BM + 32 * sm + 8 * TL2_SIG[p >> 3] + (p & 7)) * K + K3 +
                                          2 * (16 * tk + 2 * sk);
                        *o3++ = (uint8_t)((3 * t[0] + t[1] + 4) << 4 | (3 * t[2] + t[3] + 4));
                    }
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(vbuf);
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static inline uint8_t map243(unsigned v) { return (uint8_t)((v * 256u + 242u) / 243u); }

/* pack_tq1(codes, out, group_stride): TQ1_0, 256-code blocks -> bytes 0..51 of each block (qs[48], qh[4]):
 * qs[j] (j < 32) = elements j + 32n (n = 0..4), qs[32 + j] (j < 16) = elements 160 + j + 16n, qh[j] (j < 4) =
 * elements 240 + j + 4n (n = 0..3, fifth trit 0); value sum_n t_n 3^(4-n), stored as map243. */
static PyObject *pack_tq1(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t gs;
    if (!PyArg_ParseTuple(args, "y*w*n", &in, &out, &gs)) return NULL;
    Py_ssize_t ng;
    if (check_groups(in.len, out.len, 256, 52, 1, gs, 0, &ng)) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < ng; ++g) {
        const uint8_t *c = (const uint8_t *)in.buf + g * 256;
        uint8_t *o = (uint8_t *)out.buf + g * gs;
        for (int j = 0; j < 32; ++j) {
            unsigned v = 0;
            for (int n = 0; n < 5; ++n) v = v * 3 + (uint8_t)(c[j + 32 * n] + 1);
            o[j] = map243(v);
        }
        for (int j = 0; j < 16; ++j) {
            unsigned v = 0;
            for (int n = 0; n < 5; ++n) v = v * 3 + (uint8_t)(c[160 + j + 16 * n] + 1);
            o[32 + j] = map243(v);
        }
        for (int j = 0; j < 4; ++j) {
            unsigned v = 0;
            for (int n = 0; n < 4; ++n) v = v * 3 + (uint8_t)(c[240 + j + 4 * n] + 1);
            o[48 + j] = map243(v * 3);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* pack_iq1bn(codes, out, group_blocks, group_stride, group_offset): IQ1_BN, 64-code blocks -> 13 bytes: ql[3g + k]
 * (g < 4, k < 3) = sum_i 3^i t[16g + 5k + i] (i < 5), extra = sum_g 3^g t[16g + 15]; each stored as map243. */
static PyObject *pack_iq1bn(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t gb, gs, go;
    if (!PyArg_ParseTuple(args, "y*w*nnn", &in, &out, &gb, &gs, &go)) return NULL;
    Py_ssize_t ng;
    if (check_groups(in.len, out.len, 64, 13, gb, gs, go, &ng)) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < ng; ++g) {
        for (Py_ssize_t b = 0; b < gb; ++b) {
            const uint8_t *c = (const uint8_t *)in.buf + (g * gb + b) * 64;
            uint8_t *o = (uint8_t *)out.buf + g * gs + go + b * 13;
            unsigned extra = 0;
            for (int q = 0; q < 4; ++q) {
                const uint8_t *t = c + 16 * q;
                for (int k = 0; k < 3; ++k) {
                    unsigned v = 0;
                    for (int i = 4; i >= 0; --i) v = v * 3 + (uint8_t)(t[5 * k + i] + 1);
                    o[3 * q + k] = map243(v);
                }
            }
            for (int q = 3; q >= 0; --q) extra = extra * 3 + (uint8_t)(c[16 * q + 15] + 1);
            o[12] = map243(extra);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* float32 -> IEEE half, round to nearest even (numpy's float32 -> float16 cast), for the Q8_0 block scale. */
static uint16_t half_of(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7FFFFFu;
    int exp = (int)((x >> 23) & 0xFF);
    if (exp == 0xFF) return (uint16_t)(sign | 0x7C00u | (mant ? 0x200u | (mant >> 13) : 0)); /* NaN: quiet, payload kept */
    int e = exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* q8_0_bf16(bits, out) -> bool: Q8_0 blocks (fp16 d, 32 int8) of bf16 values, the reference arithmetic in float32:
 * d = max|x| / 127, id = d ? 1/d : 0, q = copysign(floor(|x| * id + 0.5), x). Returns False (out partly written)
 * when a block's d is not finite (NaN/Inf input): the caller then runs numpy, whose casts decide those bytes. */
static PyObject *q8_0_bf16(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "y*w*", &in, &out)) return NULL;
    if (in.len % 64 || out.len != in.len / 64 * 34) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "q8_0_bf16: 32-value blocks in, 34 bytes per block out");
        return NULL;
    }
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS
    const uint16_t *b = (const uint16_t *)in.buf;
    uint8_t *o = (uint8_t *)out.buf;
    Py_ssize_t nb = in.len / 64;
    for (Py_ssize_t k = 0; k < nb; ++k) {
        const uint16_t *x = b + k * 32;
        /* max |x| on the magnitude bits: for non-negative floats the bit patterns order like the values, and a
         * NaN or Inf pattern (>= 0x7F80) is above every finite one */
        uint16_t mb = 0;
        for (int j = 0; j < 32; ++j) {
            uint16_t m = x[j] & 0x7FFFu;
            mb = m > mb ? m : mb;
        }
        if (mb >= 0x7F80u) { finite = 0; break; }
        uint32_t au = (uint32_t)mb << 16;
        float amax;
        memcpy(&amax, &au, sizeof amax);
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t *ob = o + k * 34;
        uint16_t h = half_of(d);
        ob[0] = (uint8_t)(h & 0xFF);
        ob[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 32; ++j) {
            uint32_t u = (uint32_t)(x[j] & 0x7FFFu) << 16;
            float a;
            memcpy(&a, &u, sizeof a);
            int q = (int)(a * id + 0.5f); /* >= 0, so truncation is floor: roundf of |x| * id */
            ob[2 + j] = (uint8_t)(x[j] & 0x8000u ? -q : q);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return PyBool_FromLong(finite);
}

/* -------------------------------------------------------------------------------------------------- bf16 -> f16 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BITCONV_F16C 1
__attribute__((target("avx2,f16c")))
static void f16_of_bf16_f16c(const uint16_t *in, uint16_t *out, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_loadu_si128((const __m128i *)(in + i));
        __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16)); /* bf16 -> f32: exact */
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; ++i) {
        uint32_t u = (uint32_t)in[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        out[i] = (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    }
}
#endif

static PyObject *f16_of_bf16(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "y*w*", &in, &out)) return NULL;
    if (in.len % 2 || out.len != in.len) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "f16_of_bf16: 2 bytes per value in and out");
        return NULL;
    }
    int done = 0;
#ifdef BITCONV_F16C
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
        Py_BEGIN_ALLOW_THREADS
        f16_of_bf16_f16c((const uint16_t *)in.buf, (uint16_t *)out.buf, in.len / 2);
        Py_END_ALLOW_THREADS
        done = 1;
    }
#endif
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return PyBool_FromLong(done);
}

/* ------------------------------------------------------------------------------------ streamed multi_row_sum
 * mrs_new(size, lanes) -> bytearray; mrs_feed_bf16(state, bits); mrs_finish(state) -> bytes (lanes float32)
 * multi_row_sum's steps (add_rows, cascade, fold) on a state kept in a bytearray between calls, for tensors read a
 * block of whole rows at a time. */
typedef struct {
    int64_t size, i;
    int32_t p, lanes;
    Levels acc;
} MRS;

static PyObject *mrs_new(PyObject *self, PyObject *args) {
    Py_ssize_t size;
    int lanes;
    if (!PyArg_ParseTuple(args, "ni", &size, &lanes)) return NULL;
    if (size < 0 || lanes < 1 || lanes > MAX_LANES) {
        PyErr_SetString(PyExc_ValueError, "mrs_new: size >= 0 and 1 <= lanes <= 128");
        return NULL;
    }
    PyObject *st = PyByteArray_FromStringAndSize(NULL, sizeof(MRS));
    if (!st) return NULL;
    MRS *m = (MRS *)PyByteArray_AS_STRING(st);
    memset(m, 0, sizeof *m);
    m->size = size;
    m->lanes = lanes;
    m->p = level_power(size);
    return st;
}

static MRS *mrs_of(PyObject *st) {
    if (!PyByteArray_Check(st) || PyByteArray_GET_SIZE(st) != (Py_ssize_t)sizeof(MRS)) {
        PyErr_SetString(PyExc_TypeError, "not a state made by mrs_new");
        return NULL;
    }
    return (MRS *)PyByteArray_AS_STRING(st);
}

static PyObject *mrs_feed_bf16(PyObject *self, PyObject *args) {
    PyObject *st;
    Py_buffer in;
    if (!PyArg_ParseTuple(args, "Oy*", &st, &in)) return NULL;
    MRS *m = mrs_of(st);
    if (!m) { PyBuffer_Release(&in); return NULL; }
    const int lanes = m->lanes;
    Py_ssize_t rows = in.len / 2 / lanes;
    if (in.len % (2 * lanes) || m->i + rows > m->size) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "mrs_feed_bf16: whole rows, at most the remaining ones");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    const int64_t step = (int64_t)1 << m->p;
    const uint16_t *b = (const uint16_t *)in.buf;
    while (rows > 0) {  /* up to the next block end, then its cascade */
        int64_t n = step - m->i % step;
        if (n > rows) n = rows;
        add_rows(m->acc[0], b, n, lanes, 0);
        b += n * lanes;
        rows -= n;
        m->i += n;
        if (m->i % step == 0) cascade(m->acc, m->i, m->p, lanes);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    Py_RETURN_NONE;
}

static PyObject *mrs_finish(PyObject *self, PyObject *args) {
    PyObject *st;
    if (!PyArg_ParseTuple(args, "O", &st)) return NULL;
    MRS *m = mrs_of(st);
    if (!m) return NULL;
    if (m->i != m->size) {
        PyErr_SetString(PyExc_ValueError, "mrs_finish: not every row was fed");
        return NULL;
    }
    float out[MAX_LANES];
    fold(m->acc, m->lanes, out);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)m->lanes * (Py_ssize_t)sizeof(float));
}

static PyMethodDef methods[] = {
    {"abs_sum_bf16", abs_sum_bf16, METH_VARARGS, "torch's float32 sum of |w| for bf16 bit patterns (threads, lanes)."},
    {"codes_bf16", codes_bf16, METH_VARARGS, "ternary codes of bf16 bit patterns for a magnitude threshold."},
    {"pack2", pack2, METH_VARARGS, "2-bit trits, 4 per byte, blocks of 4*span codes."},
    {"unpack2", unpack2, METH_VARARGS, "pack2's inverse; True when a field holds 0b11."},
    {"block_d", block_d, METH_VARARGS, "TQ per-block fp16 d where the block has a non-zero code; the count."},
    {"same_bytes", same_bytes, METH_VARARGS, "equal length and bytes (memcmp)."},
    {"pack_tq1", pack_tq1, METH_VARARGS, "TQ1_0 block payloads (52 bytes per 256 codes)."},
    {"pack_iq1bn", pack_iq1bn, METH_VARARGS, "IQ1_BN blocks (13 bytes per 64 codes)."},
    {"pack_tl2", pack_tl2, METH_VARARGS, "bitnet.cpp TL2 content (magnitudes, sign words, pair-index tail)."},
    {"q8_0_bf16", q8_0_bf16, METH_VARARGS, "Q8_0 blocks of bf16 values (False on a non-finite block)."},
    {"f16_of_bf16", f16_of_bf16, METH_VARARGS, "bf16 -> f16 bits with F16C (False where the CPU has none)."},
    {"mrs_new", mrs_new, METH_VARARGS, "state of a streamed multi_row_sum (size rows, lanes)."},
    {"mrs_feed_bf16", mrs_feed_bf16, METH_VARARGS, "feed whole rows of bf16 bit patterns (|w| summed)."},
    {"mrs_finish", mrs_finish, METH_VARARGS, "the lane sums (float32 bytes) once every row was fed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
