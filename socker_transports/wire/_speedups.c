/* socker_transports.wire._speedups: the frame layer's hot loops in C.
 *
 * Optional: socker_transports.wire.masking falls back to pure Python when this
 * module is missing (no compiler at install time) or when SOCKER_NO_SPEEDUPS=1.
 * Both implementations are tested against each other (tests/transports/test_masking.py).
 *
 * - unmask(data, start, end, key, phase) -> bytes: data[start:end] XOR the 4-byte
 *   masking key, the key taken from offset `phase` (RFC 6455 section 5.3).
 * - unmask_into(target, data, start, end, key, phase): the same, appended to the
 *   bytearray `target` (one copy: the payload goes from the read straight into the
 *   message being assembled).
 * - alloc_message(n) / unmask_at(target, offset, data, start, end, key, phase): a
 *   single-frame message announced by its header is unmasked piece by piece straight
 *   into the bytes object the handler will get (one copy from the reads), instead
 *   of a growing bytearray and a final copy to bytes. Private to the reader: the
 *   bytes object is filled before it is shared.
 * - Assembly(limit): a fragmented binary message assembled in a bytes object the
 *   assembly alone holds (so it may grow in place, _PyBytes_Resize: with glibc a big
 *   one grows by remapping pages, not copying) and handed out by finish() at its
 *   exact size: one copy from the reads, as for a single frame, instead of a
 *   bytearray and a final copy to bytes. reserve(n) makes room for n more bytes
 *   (the frame whose header just arrived; at least doubling, capped at `limit`),
 *   add(data, start, end, key, phase) appends data[start:end] unmasked.
 * - skip_data_frames(data, start, client) -> int: the offset of the first frame at or
 *   after `start` that is not a complete, well-formed data frame (so Python looks at
 *   it), skipping the payloads of those that are. Used once a connection is closing,
 *   when data frames are discarded unread: a flood of tiny frames costs nanoseconds
 *   each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static void
xor_mask(char *out, const char *in, Py_ssize_t n, const unsigned char *key, Py_ssize_t phase)
{
    unsigned char rotated[8];
    Py_ssize_t i = 0;
    uint64_t key64;
    for (int j = 0; j < 8; j++) {
        rotated[j] = key[(phase + j) & 3];
    }
    memcpy(&key64, rotated, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t chunk;
        memcpy(&chunk, in + i, 8);
        chunk ^= key64;
        memcpy(out + i, &chunk, 8);
    }
    for (; i < n; i++) {
        out[i] = in[i] ^ rotated[i & 7];
    }
}

static int
check_range(Py_buffer *view, Py_ssize_t start, Py_ssize_t end, Py_buffer *key)
{
    if (start < 0 || end < start || end > view->len) {
        PyErr_SetString(PyExc_ValueError, "start/end out of range");
        return -1;
    }
    if (key->len != 4) {
        PyErr_SetString(PyExc_ValueError, "a masking key is 4 bytes");
        return -1;
    }
    return 0;
}

static PyObject *
unmask(PyObject *self, PyObject *args)
{
    Py_buffer data, key;
    Py_ssize_t start, end, phase;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nny*n", &data, &start, &end, &key, &phase)) {
        return NULL;
    }
    if (check_range(&data, start, end, &key) == 0) {
        result = PyBytes_FromStringAndSize(NULL, end - start);
        if (result != NULL) {
            xor_mask(PyBytes_AS_STRING(result), (const char *)data.buf + start, end - start,
                     (const unsigned char *)key.buf, phase & 3);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

static PyObject *
unmask_into(PyObject *self, PyObject *args)
{
    PyObject *target;
    Py_buffer data, key;
    Py_ssize_t start, end, phase;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "O!y*nny*n", &PyByteArray_Type, &target, &data, &start, &end,
                          &key, &phase)) {
        return NULL;
    }
    if (check_range(&data, start, end, &key) == 0) {
        Py_ssize_t old = PyByteArray_GET_SIZE(target);
        if (PyByteArray_Resize(target, old + (end - start)) == 0) {
            xor_mask(PyByteArray_AS_STRING(target) + old, (const char *)data.buf + start,
                     end - start, (const unsigned char *)key.buf, phase & 3);
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

static PyObject *
skip_data_frames(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t pos;
    int client;
    if (!PyArg_ParseTuple(args, "y*np", &data, &pos, &client)) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)data.buf;
    Py_ssize_t n = data.len;
    while (pos >= 0 && n - pos >= 2) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        unsigned int opcode = b0 & 0x0F;
        if (opcode > 2 || (b0 & 0x70) || (((b1 & 0x80) != 0) == (client != 0))) {
            break; /* a control frame, or one Python must refuse */
        }
        uint64_t length = b1 & 0x7F;
        Py_ssize_t head = 2;
        if (length == 126) {
            if (n - pos < 4) break;
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            if (length <= 125) break;
            head = 4;
        } else if (length == 127) {
            if (n - pos < 10) break;
            length = 0;
            for (int j = 0; j < 8; j++) length = (length << 8) | buf[pos + 2 + j];
            if (length <= 0xFFFF || (length >> 63)) break;
            head = 10;
        }
        if (!client) head += 4;
        if (n - pos < head || (uint64_t)(n - pos - head) < length) {
            break; /* incomplete: Python streams it */
        }
        pos += head + (Py_ssize_t)length;
    }
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(pos);
}

static PyObject *
alloc_message(PyObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    /* Uninitialized: the reader fills every byte (unmask_at) before anyone sees it. */
    return PyBytes_FromStringAndSize(NULL, n);
}

static PyObject *
unmask_at(PyObject *self, PyObject *args)
{
    PyObject *target, *key_obj;
    Py_ssize_t offset, start, end, phase;
    Py_buffer data;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "O!ny*nnOn", &PyBytes_Type, &target, &offset, &data, &start,
                          &end, &key_obj, &phase)) {
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(target);
    if (start < 0 || end < start || end > data.len || offset < 0 || offset > size - (end - start)) {
        PyErr_SetString(PyExc_ValueError, "start/end/offset out of range");
    } else if (key_obj == Py_None) {
        memcpy(PyBytes_AS_STRING(target) + offset, (const char *)data.buf + start, end - start);
        result = Py_None;
    } else if (!PyBytes_Check(key_obj) || PyBytes_GET_SIZE(key_obj) != 4) {
        PyErr_SetString(PyExc_ValueError, "a masking key is 4 bytes");
    } else {
        xor_mask(PyBytes_AS_STRING(target) + offset, (const char *)data.buf + start, end - start,
                 (const unsigned char *)PyBytes_AS_STRING(key_obj), phase & 3);
        result = Py_None;
    }
    Py_XINCREF(result);
    PyBuffer_Release(&data);
    return result;
}

typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* owned by the assembly alone until finish() */
    Py_ssize_t size;  /* bytes filled */
    Py_ssize_t limit; /* the most it may grow to (-1: no limit) */
} Assembly;

static int
Assembly_init(Assembly *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t limit = -1;
    static char *keywords[] = {"limit", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", keywords, &limit)) {
        return -1;
    }
    Py_CLEAR(self->bytes);
    self->size = 0;
    self->limit = limit < 0 ? -1 : limit;
    return 0;
}

static void
Assembly_dealloc(Assembly *self)
{
    Py_CLEAR(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Assembly_reserve(Assembly *self, PyObject *arg)
{
    Py_ssize_t more = PyLong_AsSsize_t(arg);
    if (more == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (more < 0 || more > PY_SSIZE_T_MAX - self->size) {
        PyErr_SetString(PyExc_ValueError, "bad size");
        return NULL;
    }
    Py_ssize_t need = self->size + more;
    if (self->limit >= 0 && need > self->limit) {
        PyErr_SetString(PyExc_ValueError, "past the assembly's limit");
        return NULL;
    }
    Py_ssize_t have = self->bytes == NULL ? 0 : PyBytes_GET_SIZE(self->bytes);
    if (need <= have) {
        Py_RETURN_NONE;
    }
    Py_ssize_t grow = have > PY_SSIZE_T_MAX / 2 ? PY_SSIZE_T_MAX : have * 2;
    if (grow < need) {
        grow = need;
    }
    if (self->limit >= 0 && grow > self->limit) {
        grow = self->limit;
    }
    if (self->bytes == NULL) {
        self->bytes = PyBytes_FromStringAndSize(NULL, grow);
        if (self->bytes == NULL) {
            return NULL;
        }
    } else if (_PyBytes_Resize(&self->bytes, grow) < 0) {
        return NULL; /* (self->bytes is NULL then: the assembly is empty) */
    }
    Py_RETURN_NONE;
}

static PyObject *
Assembly_add(Assembly *self, PyObject *args)
{
    PyObject *key_obj;
    Py_ssize_t start, end, phase;
    Py_buffer data;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nnOn", &data, &start, &end, &key_obj, &phase)) {
        return NULL;
    }
    Py_ssize_t have = self->bytes == NULL ? 0 : PyBytes_GET_SIZE(self->bytes);
    if (start < 0 || end < start || end > data.len) {
        PyErr_SetString(PyExc_ValueError, "start/end out of range");
    } else if (end - start > have - self->size) {
        PyErr_SetString(PyExc_ValueError, "not reserved");
    } else if (key_obj == Py_None) {
        memcpy(PyBytes_AS_STRING(self->bytes) + self->size, (const char *)data.buf + start,
               end - start);
        self->size += end - start;
        result = Py_None;
    } else if (!PyBytes_Check(key_obj) || PyBytes_GET_SIZE(key_obj) != 4) {
        PyErr_SetString(PyExc_ValueError, "a masking key is 4 bytes");
    } else {
        xor_mask(PyBytes_AS_STRING(self->bytes) + self->size, (const char *)data.buf + start,
                 end - start, (const unsigned char *)PyBytes_AS_STRING(key_obj), phase & 3);
        self->size += end - start;
        result = Py_None;
    }
    Py_XINCREF(result);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
Assembly_finish(Assembly *self, PyObject *unused)
{
    PyObject *out = self->bytes;
    Py_ssize_t size = self->size;
    self->bytes = NULL;
    self->size = 0;
    if (out == NULL) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (PyBytes_GET_SIZE(out) != size && _PyBytes_Resize(&out, size) < 0) {
        return NULL;
    }
    return out;
}

static Py_ssize_t
Assembly_len(Assembly *self)
{
    return self->size;
}

static PyObject *
Assembly_capacity(Assembly *self, void *closure)
{
    return PyLong_FromSsize_t(self->bytes == NULL ? 0 : PyBytes_GET_SIZE(self->bytes));
}

static PyGetSetDef Assembly_getset[] = {
    {"capacity", (getter)Assembly_capacity, NULL, "Bytes allocated (filled or reserved).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Assembly_methods[] = {
    {"reserve", (PyCFunction)Assembly_reserve, METH_O, "Room for n more bytes."},
    {"add", (PyCFunction)Assembly_add, METH_VARARGS,
     "Append data[start:end], XOR the key unless it is None."},
    {"finish", (PyCFunction)Assembly_finish, METH_NOARGS,
     "The message (bytes, exactly what was added); the assembly is empty after."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Assembly_sequence = {
    .sq_length = (lenfunc)Assembly_len,
};

static PyTypeObject AssemblyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "socker_transports.wire._speedups.Assembly",
    .tp_basicsize = sizeof(Assembly),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A fragmented message assembled in place (private to the reader).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Assembly_init,
    .tp_dealloc = (destructor)Assembly_dealloc,
    .tp_methods = Assembly_methods,
    .tp_getset = Assembly_getset,
    .tp_as_sequence = &Assembly_sequence,
};

static PyMethodDef methods[] = {
    {"alloc_message", alloc_message, METH_O,
     "An uninitialized bytes object of n bytes, for the reader to fill (private)."},
    {"unmask_at", unmask_at, METH_VARARGS,
     "data[start:end] (XOR the key unless it is None) into a bytes object being filled."},
    {"unmask", unmask, METH_VARARGS, "data[start:end] XOR the masking key, from key offset phase."},
    {"unmask_into", unmask_into, METH_VARARGS, "unmask, appended to a bytearray."},
    {"skip_data_frames", skip_data_frames, METH_VARARGS,
     "Offset of the first frame from start that is not a complete well-formed data frame."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "socker's frame-layer loops in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&AssemblyType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&AssemblyType);
    if (PyModule_AddObject(m, "Assembly", (PyObject *)&AssemblyType) < 0) {
        Py_DECREF(&AssemblyType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
