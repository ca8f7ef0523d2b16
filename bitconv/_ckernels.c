/* bitconv._ckernels: the two inner loops of bf16 ternarization, in C (optional; bitconv.quant falls back to numpy).
 *
 * abs_sum_bf16(bits, threads, lanes) -> float
 *     torch's float32 `sum` of |w| for a contiguous bf16 tensor (given as its uint16 bit patterns), in exactly the
 *     order bitconv.torchsum replays (ATen cascade_sum: `threads` per-thread ranges, `lanes`-wide vectors, four of
 *     them per row, multi_row_sum's four accumulator levels). One pass over the bf16 data: |w| is made in registers,
 *     never stored. Every step is one IEEE float32 addition in torch's order, so the build must not reassociate or
 *     contract floating point (setup.py compiles with -O2 -fno-fast-math -ffp-contract=off); tests compare it with
 *     torch's own sum and with torchsum.replay_sum.
 * codes_bf16(bits, out, threshold) -> None
 *     out[i] = +1 if bits[i] is positive with magnitude bits > threshold, -1 if negative with magnitude > threshold,
 *     else 0: the ternary codes for the threshold bitconv.quant derives from the scale.
 *
 * Both release the GIL (the compute workers run two tensors at once). Buffers: any C-contiguous buffer; lengths are
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

/* multi_row_sum over `size` rows of `lanes` values starting at `src` (row r = src[r*lanes .. r*lanes+lanes)), into
 * out[lanes]. `f32` selects float32 input (else bf16 magnitudes). */
static void multi_row_sum(const void *src, int64_t size, int lanes, int f32, float *out) {
    float acc[LEVELS][MAX_LANES];
    memset(acc, 0, sizeof acc);
    int p = ceil_log2(size) / LEVELS;
    if (p < 4) p = 4;
    const int64_t step = (int64_t)1 << p, mask = step - 1;
    int64_t i = 0;
    const uint16_t *b16 = (const uint16_t *)src;
    const float *f = (const float *)src;
    for (; i + step <= size;) {
        for (int64_t j = 0; j < step; ++j, ++i) {
            if (f32) {
                const float *row = f + i * lanes;
                for (int k = 0; k < lanes; ++k) acc[0][k] += row[k];
            } else {
                const uint16_t *row = b16 + i * lanes;
                for (int k = 0; k < lanes; ++k) acc[0][k] += mag(row[k]);
            }
        }
        for (int j = 1; j < LEVELS; ++j) {
            for (int k = 0; k < lanes; ++k) {
                acc[j][k] += acc[j - 1][k];
                acc[j - 1][k] = 0.0f;
            }
            if ((i & (mask << (j * p))) != 0) break;
        }
    }
    for (; i < size; ++i) {
        if (f32) {
            const float *row = f + i * lanes;
            for (int k = 0; k < lanes; ++k) acc[0][k] += row[k];
        } else {
            const uint16_t *row = b16 + i * lanes;
            for (int k = 0; k < lanes; ++k) acc[0][k] += mag(row[k]);
        }
    }
    for (int j = 1; j < LEVELS; ++j)
        for (int k = 0; k < lanes; ++k) acc[0][k] += acc[j][k];
    memcpy(out, acc[0], (size_t)lanes * sizeof(float));
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
    const int16_t *b = (const int16_t *)in.buf;
    int8_t *o = (int8_t *)out.buf;
    const int16_t tp = (int16_t)threshold;
    const uint16_t tn = (uint16_t)(0x8000 + threshold);
    int64_t n = (int64_t)(in.len / 2);
    for (int64_t i = 0; i < n; ++i) {
        int16_t x = b[i];
        o[i] = (int8_t)((x > tp) - ((uint16_t)x > tn));
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"abs_sum_bf16", abs_sum_bf16, METH_VARARGS, "torch's float32 sum of |w| for bf16 bit patterns (threads, lanes)."},
    {"codes_bf16", codes_bf16, METH_VARARGS, "ternary codes of bf16 bit patterns for a magnitude threshold."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
