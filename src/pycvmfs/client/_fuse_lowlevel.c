/* pycvmfs.client._fuse_lowlevel: the mount's FUSE session on libfuse3's low-level API.
 *
 * Why not pyfuse3: measured on this project's benchmark tree (docs/mount.md), every pyfuse3
 * request costs 75-120 us of interpreter time in trio's scheduler before the file system's own
 * code runs, and pyfuse3's opendir cannot ask the kernel to cache directory listings
 * (FOPEN_CACHE_DIR). This module keeps libfuse3 (the request protocol, mounting, splicing) and
 * replaces only the binding:
 *
 *  - worker threads are Python threads that call Session.loop(); each waits for requests
 *    without the interpreter lock and takes it only for the requests that need Python;
 *  - requests answered without Python at all: read() of a file whose open() handed over a
 *    file descriptor (the verified object in the cache: spliced from the page cache to the
 *    kernel), release of such a file; opendir/releasedir are left to the kernel (which then
 *    keeps listings in its cache), flush is never asked for;
 *  - open() of a file whose attributes named its cached object (an 11th item of the
 *    attribute tuple, see below): the object file is opened here and its size checked; only
 *    when it is not in the cache (yet) does ops.open run (which downloads it);
 *  - read() of a chunked file: ops.open hands over the chunk offsets, and each chunk's
 *    cached object is asked of ops.chunk once (downloaded, verified, pinned there) and then
 *    read here like a whole object; a few chunk descriptors are kept per open file, and
 *    ops.chunk_done is told of each one closed;
 *  - everything else calls a method of the Python file system object ("ops") with plain
 *    arguments (ints, bytes) and takes plain results (tuples, bytes); an OSError raised there
 *    becomes the request's error number, anything else EIO (reported through
 *    sys.unraisablehook).
 *
 * The Python side is pycvmfs.client.fuse (see its CvmfsFilesystem for the methods called).
 * Attributes travel as a tuple (ino, mode, nlink, uid, gid, rdev, size, blocks, mtime_ns,
 * timeout[, object]): the same timeout is used for the entry and the attributes. ``object``
 * (bytes, optional) is the path of the file's verified object in the cache: a lookup or
 * readdirplus answer carrying it lets open() of that inode go without Python while the inode
 * is known to the kernel (until its forget). Python only names a path there that holds the
 * file's verified content whenever it exists (objects are renamed into place after their
 * hash was checked), and only where an open needs no bookkeeping (no cache quota pins).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <limits.h>
#include <pthread.h>
#include <unistd.h>

/* The thread state of a worker while it waits in libfuse without the interpreter lock. */
static __thread PyThreadState *worker_state;

#define TAKE_GIL() PyEval_RestoreThread(worker_state)
#define DROP_GIL() (worker_state = PyEval_SaveThread())

enum {
    C_LOOKUP, C_FORGET, C_GETATTR, C_READLINK, C_OPEN, C_OPEN_PY, C_READ, C_READ_PY,
    C_CHUNK_PY, C_RELEASE, C_RELEASE_PY, C_OPENDIR, C_READDIR, C_RELEASEDIR, C_STATFS,
    C_GETXATTR, C_LISTXATTR, C_COUNT
};
static const char *counter_names[C_COUNT] = {
    "lookup", "forget", "getattr", "readlink", "open", "open_python", "read", "read_python",
    "chunk_python", "release", "release_python", "opendir", "readdir", "releasedir", "statfs",
    "getxattr", "listxattr"};

/* The Python methods called, in this order (bound once, when the session is made). */
enum {
    M_LOOKUP, M_FORGET, M_GETATTR, M_READLINK, M_OPEN, M_READ, M_RELEASE, M_READDIR,
    M_STATFS, M_GETXATTR, M_LISTXATTR, M_CHUNK, M_CHUNK_DONE, M_COUNT
};
static const char *method_names[M_COUNT] = {
    "lookup", "forget", "getattr", "readlink", "open", "read", "release", "readdir",
    "statfs", "getxattr", "listxattr", "chunk", "chunk_done"};
#define M_OPTIONAL M_CHUNK /* methods from here on may be missing (no chunk reads in C) */

/* The cached objects of inodes the kernel knows (ino -> object path and size), for open()
 * without Python: a chained hash table under one mutex. */
typedef struct ObjectEntry {
    struct ObjectEntry *next;
    unsigned long long ino;
    long long size;
    char path[];
} ObjectEntry;

typedef struct {
    pthread_mutex_t lock;
    ObjectEntry **buckets;
    size_t nbuckets, count;
} ObjectTable;

typedef struct {
    PyObject_HEAD
    struct fuse_session *se;
    PyObject *ops;
    PyObject *methods[M_COUNT];
    int mounted;
    int loops; /* loop() calls running (atomic) */
    int no_opendir; /* the kernel handles opendir/releasedir itself (Linux >= 5.1) */
    unsigned long long counters[C_COUNT];
    ObjectTable objects;
    int objects_ready; /* its mutex initialised */
} Session;

#define COUNT(s, c) __atomic_fetch_add(&(s)->counters[c], 1, __ATOMIC_RELAXED)

/* Chunk descriptors an open chunked file keeps (each pins its object, in Python). */
#define CHUNK_SLOTS 4

/* An open file: a descriptor read in C (or -1: reads go to ops.read, or to the chunks) and
 * the Python object that ops.open returned with it, handed to ops.read, ops.chunk,
 * ops.chunk_done and ops.release (NULL: nothing to release, the descriptor is all there is).
 * A chunked file read in C has its chunk offsets (nchunks + 1 of them: the last is the file
 * size) and a few open chunk descriptors, under ``lock``. */
typedef struct {
    int fd;
    PyObject *obj;
    size_t nchunks;
    long long *starts;
    pthread_mutex_t lock;
    struct {
        long long index; /* -1: free */
        int fd;
        unsigned long long used;
    } slot[CHUNK_SLOTS];
    unsigned long long clock;
} FileHandle;

static PyObject *s_errno;
static PyTypeObject DirBufferType;
static void forget_many(Session *s, size_t count, const struct fuse_forget_data *items);

/* -- the object table ------------------------------------------------------------------ */

static size_t object_bucket(const ObjectTable *t, unsigned long long ino)
{
    return (size_t)((ino * 0x9E3779B97F4A7C15ULL) >> 20) & (t->nbuckets - 1);
}

/* Grow to twice the buckets (with the lock held); on no memory, stay as is. */
static void objects_grow(ObjectTable *t)
{
    size_t n = t->nbuckets ? 2 * t->nbuckets : 1024;
    ObjectEntry **grown = calloc(n, sizeof *grown);
    if (grown == NULL)
        return;
    ObjectTable bigger = {.buckets = grown, .nbuckets = n};
    for (size_t i = 0; i < t->nbuckets; i++) {
        ObjectEntry *e = t->buckets[i];
        while (e != NULL) {
            ObjectEntry *next = e->next;
            size_t b = object_bucket(&bigger, e->ino);
            e->next = grown[b];
            grown[b] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = grown;
    t->nbuckets = n;
}

/* Remove ``ino``'s entry from bucket ``b``, if any; with the table's lock held. */
static void objects_unlink(ObjectTable *t, size_t b, unsigned long long ino)
{
    for (ObjectEntry **at = &t->buckets[b]; *at != NULL; at = &(*at)->next) {
        if ((*at)->ino == ino) {
            ObjectEntry *gone = *at;
            *at = gone->next;
            free(gone);
            t->count--;
            return;
        }
    }
}

/* ino names the object at ``path`` (of ``size`` bytes) from now on, replacing what it named
 * before; a failure to remember only means open() asks Python. */
static void objects_put(ObjectTable *t, unsigned long long ino, const char *path, size_t len,
                        long long size)
{
    if (len >= PATH_MAX)
        return;
    pthread_mutex_lock(&t->lock);
    if (t->count >= t->nbuckets)
        objects_grow(t);
    if (t->nbuckets == 0) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    size_t b = object_bucket(t, ino);
    for (ObjectEntry *e = t->buckets[b]; e != NULL; e = e->next) {
        if (e->ino == ino) {
            if (e->size == size && strlen(e->path) == len && memcmp(e->path, path, len) == 0) {
                pthread_mutex_unlock(&t->lock); /* the usual case: known already */
                return;
            }
            break;
        }
    }
    objects_unlink(t, b, ino); /* (an old name is never kept, even if malloc fails) */
    ObjectEntry *e = malloc(sizeof *e + len + 1);
    if (e != NULL) {
        e->ino = ino;
        e->size = size;
        memcpy(e->path, path, len);
        e->path[len] = '\0';
        e->next = t->buckets[b];
        t->buckets[b] = e;
        t->count++;
    }
    pthread_mutex_unlock(&t->lock);
}

/* Copy the object path of ``ino`` into ``out`` (PATH_MAX bytes); its size, or -1 if none. */
static long long objects_get(ObjectTable *t, unsigned long long ino, char *out)
{
    long long size = -1;
    pthread_mutex_lock(&t->lock);
    if (t->nbuckets) {
        for (ObjectEntry *e = t->buckets[object_bucket(t, ino)]; e != NULL; e = e->next) {
            if (e->ino == ino) {
                strcpy(out, e->path);
                size = e->size;
                break;
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    return size;
}

static void objects_drop(ObjectTable *t, unsigned long long ino)
{
    pthread_mutex_lock(&t->lock);
    if (t->nbuckets)
        objects_unlink(t, object_bucket(t, ino), ino);
    pthread_mutex_unlock(&t->lock);
}

static void objects_clear(ObjectTable *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        ObjectEntry *e = t->buckets[i];
        while (e != NULL) {
            ObjectEntry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = NULL;
    t->nbuckets = t->count = 0;
}

/* -- calling Python -------------------------------------------------------------------- */

/* The error number for the exception set now (cleared): an OSError's errno, else EIO (the
 * exception goes to sys.unraisablehook first). */
static int take_errno(PyObject *where)
{
    PyObject *type, *value, *tb;
    int err = EIO;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && PyErr_GivenExceptionMatches(type, PyExc_OSError)) {
        PyObject *n = PyObject_GetAttr(value, s_errno);
        if (n != NULL && PyLong_Check(n)) {
            long v = PyLong_AsLong(n);
            if (v > 0 && v < 4096)
                err = (int)v;
        }
        Py_XDECREF(n);
        PyErr_Clear();
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return err;
    }
    PyErr_Restore(type, value, tb);
    PyErr_WriteUnraisable(where);
    return EIO;
}

/* ops.<method>(*args) with args built by Py_BuildValue(fmt, ...); fmt is a tuple format. */
static PyObject *call(Session *s, int method, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *args = Py_VaBuildValue(fmt, va);
    va_end(va);
    if (args == NULL)
        return NULL;
    PyObject *r = PyObject_Call(s->methods[method], args, NULL);
    Py_DECREF(args);
    return r;
}

/* -- attributes ------------------------------------------------------------------------ */

static int fill_stat(PyObject *t, struct stat *st, double *timeout)
{
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 10 || PyTuple_GET_SIZE(t) > 11) {
        PyErr_SetString(PyExc_TypeError, "attributes must be a tuple of 10 or 11 items");
        return -1;
    }
    unsigned long long v[8];
    for (int i = 0; i < 8; i++) {
        v[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, i));
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
    }
    long long ns = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 8));
    if (ns == -1 && PyErr_Occurred())
        return -1;
    double to = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 9));
    if (to == -1.0 && PyErr_Occurred())
        return -1;
    memset(st, 0, sizeof *st);
    st->st_ino = (ino_t)v[0];
    st->st_mode = (mode_t)v[1];
    st->st_nlink = (nlink_t)v[2];
    st->st_uid = (uid_t)v[3];
    st->st_gid = (gid_t)v[4];
    st->st_rdev = (dev_t)v[5];
    st->st_size = (off_t)v[6];
    st->st_blocks = (blkcnt_t)v[7];
    st->st_blksize = 4096;
    long long sec = ns / 1000000000LL, rem = ns % 1000000000LL;
    if (rem < 0) {
        rem += 1000000000LL;
        sec -= 1;
    }
    st->st_mtim.tv_sec = st->st_atim.tv_sec = st->st_ctim.tv_sec = (time_t)sec;
    st->st_mtim.tv_nsec = st->st_atim.tv_nsec = st->st_ctim.tv_nsec = (long)rem;
    *timeout = to < 0 ? 0 : to;
    return 0;
}

static int fill_entry(PyObject *t, struct fuse_entry_param *e)
{
    double timeout;
    memset(e, 0, sizeof *e);
    if (fill_stat(t, &e->attr, &timeout) < 0)
        return -1;
    e->ino = e->attr.st_ino;
    e->attr_timeout = e->entry_timeout = timeout;
    return 0;
}

/* Remember the object an attribute tuple names (its 11th item, bytes), if any; with the
 * interpreter lock held. */
static void note_object(Session *s, PyObject *t, const struct stat *st)
{
    if (PyTuple_GET_SIZE(t) < 11)
        return;
    PyObject *path = PyTuple_GET_ITEM(t, 10);
    if (!PyBytes_Check(path) || !S_ISREG(st->st_mode) || st->st_ino == 0)
        return;
    if (memchr(PyBytes_AS_STRING(path), '\0', (size_t)PyBytes_GET_SIZE(path)) != NULL)
        return; /* not a path (and objects_get copies up to the first NUL) */
    objects_put(&s->objects, (unsigned long long)st->st_ino, PyBytes_AS_STRING(path),
                (size_t)PyBytes_GET_SIZE(path), (long long)st->st_size);
}

static Session *session_of(fuse_req_t req) { return (Session *)fuse_req_userdata(req); }

/* -- requests -------------------------------------------------------------------------- */

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
    Session *s = (Session *)userdata;
    s->no_opendir = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
    unsigned want = FUSE_CAP_READDIRPLUS | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_SPLICE_WRITE
                    | FUSE_CAP_SPLICE_MOVE | FUSE_CAP_ASYNC_READ | FUSE_CAP_PARALLEL_DIROPS;
    conn->want |= want & conn->capable;
    /* every listing as readdirplus: the kernel learns each entry's attributes with it */
    conn->want &= ~(unsigned)(FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_WRITEBACK_CACHE);
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    Session *s = session_of(req);
    struct fuse_entry_param e;
    int err = 0;
    COUNT(s, C_LOOKUP);
    TAKE_GIL();
    PyObject *r = call(s, M_LOOKUP, "(Ky)", (unsigned long long)parent, name);
    if (r == NULL || fill_entry(r, &e) < 0)
        err = take_errno(s->methods[M_LOOKUP]);
    else
        note_object(s, r, &e.attr);
    Py_XDECREF(r);
    DROP_GIL();
    if (err) {
        fuse_reply_err(req, err);
    } else if (fuse_reply_entry(req, &e) != 0 && e.ino != 0) {
        /* not delivered (an interrupted request): the kernel did not count this lookup,
         * which ops.lookup did */
        struct fuse_forget_data one = {.ino = e.ino, .nlookup = 1};
        forget_many(s, 1, &one);
    }
}

static void forget_many(Session *s, size_t count, const struct fuse_forget_data *items)
{
    COUNT(s, C_FORGET);
    for (size_t i = 0; i < count; i++) /* the kernel no longer has the inode */
        objects_drop(&s->objects, (unsigned long long)items[i].ino);
    TAKE_GIL();
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list != NULL) {
        for (size_t i = 0; i < count; i++) {
            PyObject *t = Py_BuildValue("(KK)", (unsigned long long)items[i].ino,
                                        (unsigned long long)items[i].nlookup);
            if (t == NULL) {
                Py_CLEAR(list);
                break;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
        }
    }
    PyObject *r = list ? call(s, M_FORGET, "(O)", list) : NULL;
    if (r == NULL)
        take_errno(s->methods[M_FORGET]);
    Py_XDECREF(r);
    Py_XDECREF(list);
    DROP_GIL();
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    struct fuse_forget_data one = {.ino = ino, .nlookup = nlookup};
    forget_many(session_of(req), 1, &one);
    fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    forget_many(session_of(req), count, forgets);
    fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    Session *s = session_of(req);
    struct stat st;
    double timeout = 0;
    int err = 0;
    COUNT(s, C_GETATTR);
    TAKE_GIL();
    PyObject *r = call(s, M_GETATTR, "(K)", (unsigned long long)ino);
    if (r == NULL || fill_stat(r, &st, &timeout) < 0)
        err = take_errno(s->methods[M_GETATTR]);
    Py_XDECREF(r);
    DROP_GIL();
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_attr(req, &st, timeout);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino)
{
    Session *s = session_of(req);
    char *target = NULL;
    int err = 0;
    COUNT(s, C_READLINK);
    TAKE_GIL();
    PyObject *r = call(s, M_READLINK, "(K)", (unsigned long long)ino);
    if (r != NULL && !PyBytes_Check(r)) {
        Py_CLEAR(r);
        PyErr_SetString(PyExc_TypeError, "readlink must return bytes");
    }
    if (r == NULL)
        err = take_errno(s->methods[M_READLINK]);
    else if ((target = strdup(PyBytes_AS_STRING(r))) == NULL)
        err = ENOMEM;
    Py_XDECREF(r);
    DROP_GIL();
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_readlink(req, target);
    free(target);
}

/* A new handle of no descriptor, no chunks. */
static FileHandle *new_handle(void)
{
    FileHandle *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    for (int i = 0; i < CHUNK_SLOTS; i++) {
        h->slot[i].index = -1;
        h->slot[i].fd = -1;
    }
    return h;
}

/* Tell ops.chunk_done that the descriptor of chunk ``index`` was closed; with the
 * interpreter lock held. */
static void chunk_done(Session *s, FileHandle *h, long long index)
{
    if (h->obj == NULL || s->methods[M_CHUNK_DONE] == NULL)
        return;
    PyObject *r = call(s, M_CHUNK_DONE, "(OL)", h->obj, index);
    if (r == NULL)
        take_errno(s->methods[M_CHUNK_DONE]);
    Py_XDECREF(r);
}

/* ops.release(obj) (the handle ops.open returned); with the interpreter lock held. */
static void release_object(Session *s, PyObject *obj)
{
    COUNT(s, C_RELEASE_PY);
    PyObject *r = call(s, M_RELEASE, "(O)", obj);
    if (r == NULL)
        take_errno(s->methods[M_RELEASE]);
    Py_XDECREF(r);
}

/* Close what an open file holds; with the interpreter lock held. */
static void release_handle(Session *s, FileHandle *h)
{
    if (h->fd >= 0)
        close(h->fd);
    for (int i = 0; i < CHUNK_SLOTS; i++) {
        if (h->slot[i].index >= 0) {
            close(h->slot[i].fd);
            chunk_done(s, h, h->slot[i].index);
        }
    }
    if (h->obj != NULL) {
        release_object(s, h->obj);
        Py_DECREF(h->obj);
    }
    pthread_mutex_destroy(&h->lock);
    free(h->starts);
    free(h);
}

/* open() without Python: the inode's object named at lookup, if it is in the cache and has
 * the size of the file. Returns the descriptor, or -1 (then ops.open decides). */
static int open_known_object(Session *s, fuse_ino_t ino)
{
    char path[PATH_MAX];
    long long size = objects_get(&s->objects, (unsigned long long)ino, path);
    if (size < 0)
        return -1;
    /* no symlink followed, no FIFO or device waited on: only a regular file is served (on
     * a regular file O_NONBLOCK changes nothing) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1; /* not downloaded yet (or evicted by another process): Python fetches it */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != size) {
        close(fd); /* Python opens it again and reports what is wrong */
        return -1;
    }
    return fd;
}

/* The chunk offsets of ops.open's third item (a buffer of native 64-bit integers: each
 * chunk's start, then the file size); with the interpreter lock held. */
static int take_chunks(FileHandle *h, PyObject *starts)
{
    Py_buffer view;
    if (PyObject_GetBuffer(starts, &view, PyBUF_SIMPLE) < 0)
        return -1;
    size_t n = (size_t)view.len / sizeof(long long);
    if (n < 2 || (size_t)view.len % sizeof(long long) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "chunk offsets: at least a start and the size");
        return -1;
    }
    h->starts = malloc((size_t)view.len);
    if (h->starts == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(h->starts, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    h->nchunks = n - 1;
    for (size_t i = 0; i < h->nchunks; i++) {
        if (h->starts[i] < 0 || h->starts[i + 1] < h->starts[i] || h->starts[0] != 0) {
            free(h->starts);
            h->starts = NULL;
            h->nchunks = 0;
            PyErr_SetString(PyExc_ValueError, "chunk offsets must start at 0 and ascend");
            return -1;
        }
    }
    return 0;
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    Session *s = session_of(req);
    FileHandle *h = NULL;
    int err = 0;
    COUNT(s, C_OPEN);
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_CREAT | O_TRUNC | O_APPEND))) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if ((h = new_handle()) == NULL) { /* first: once ops.open succeeded, nothing fails */
        fuse_reply_err(req, ENOMEM);
        return;
    }
    h->fd = open_known_object(s, ino);
    if (h->fd < 0) {
        COUNT(s, C_OPEN_PY);
        TAKE_GIL();
        PyObject *r = call(s, M_OPEN, "(Ki)", (unsigned long long)ino, fi->flags);
        int fd = -1;
        PyObject *obj = NULL; /* a reference of ours once ops.open returned */
        if (r != NULL && !(PyTuple_Check(r) && (PyTuple_GET_SIZE(r) == 2
                                                || PyTuple_GET_SIZE(r) == 3))) {
            Py_CLEAR(r);
            PyErr_SetString(PyExc_TypeError, "open must return (handle, fd[, chunk offsets])");
        }
        if (r != NULL) {
            obj = PyTuple_GET_ITEM(r, 0);
            Py_INCREF(obj);
            fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(r, 1));
            if (fd == -1 && PyErr_Occurred())
                Py_CLEAR(r);
        }
        if (r != NULL && PyTuple_GET_SIZE(r) == 3 && PyTuple_GET_ITEM(r, 2) != Py_None) {
            if (fd >= 0 || obj == Py_None || s->methods[M_CHUNK] == NULL) {
                PyErr_SetString(PyExc_ValueError, "chunk offsets need a handle, no fd and "
                                "ops.chunk");
                Py_CLEAR(r);
            } else if (take_chunks(h, PyTuple_GET_ITEM(r, 2)) < 0) {
                Py_CLEAR(r);
            }
        }
        if (r == NULL) {
            err = take_errno(s->methods[M_OPEN]);
            if (fd >= 0)
                close(fd);
            if (obj != NULL && obj != Py_None) /* ops.open succeeded: undo what it took */
                release_object(s, obj);
            Py_XDECREF(obj);
        } else {
            h->fd = fd;
            if (obj == Py_None)
                Py_CLEAR(obj);
            h->obj = obj; /* (our reference) */
        }
        Py_XDECREF(r);
        DROP_GIL();
        if (err) {
            pthread_mutex_destroy(&h->lock);
            free(h);
            fuse_reply_err(req, err);
            return;
        }
    }
    fi->fh = (uint64_t)(uintptr_t)h;
    fi->keep_cache = 1; /* a revision is immutable: the page cache of an inode stays valid */
    fi->noflush = 1;
    if (fuse_reply_open(req, fi) != 0) { /* not delivered: no release will come */
        TAKE_GIL();
        release_handle(s, h);
        DROP_GIL();
    }
}

/* A descriptor of chunk ``index`` of ``h`` for the caller to close (-1 with *err set):
 * from the handle's slots, else from ops.chunk (which fetches and pins the chunk). The
 * least recently used slot makes room; its descriptor is closed and ops.chunk_done told. */
static int chunk_fd(Session *s, FileHandle *h, long long index, int *err)
{
    int fd = -1;
    pthread_mutex_lock(&h->lock);
    for (int i = 0; i < CHUNK_SLOTS; i++) {
        if (h->slot[i].index == index) {
            fd = fcntl(h->slot[i].fd, F_DUPFD_CLOEXEC, 0);
            h->slot[i].used = ++h->clock;
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
    if (fd >= 0)
        return fd;
    COUNT(s, C_CHUNK_PY);
    TAKE_GIL();
    PyObject *r = call(s, M_CHUNK, "(OL)", h->obj, index);
    int got = -1;
    if (r != NULL) {
        got = (int)PyLong_AsLong(r);
        if (got < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "chunk must return a descriptor");
    }
    if (got < 0) {
        *err = take_errno(s->methods[M_CHUNK]);
        Py_XDECREF(r);
        DROP_GIL();
        return -1;
    }
    Py_DECREF(r);
    DROP_GIL();
    long long victim = -1;
    int victim_fd = -1;
    pthread_mutex_lock(&h->lock);
    int at = -1;
    for (int i = 0; i < CHUNK_SLOTS && at < 0; i++) {
        if (h->slot[i].index == index) { /* another reader got it meanwhile: drop ours */
            victim = index;
            victim_fd = got;
            at = i;
        }
    }
    if (at < 0) {
        at = 0;
        for (int i = 1; i < CHUNK_SLOTS; i++) {
            if (h->slot[i].index < 0 || (h->slot[at].index >= 0
                                         && h->slot[i].used < h->slot[at].used))
                at = i;
        }
        victim = h->slot[at].index;
        victim_fd = h->slot[at].fd;
        h->slot[at].index = index;
        h->slot[at].fd = got;
    }
    h->slot[at].used = ++h->clock;
    fd = fcntl(h->slot[at].fd, F_DUPFD_CLOEXEC, 0);
    pthread_mutex_unlock(&h->lock);
    if (fd < 0)
        *err = errno;
    if (victim >= 0) {
        close(victim_fd);
        TAKE_GIL();
        chunk_done(s, h, victim);
        DROP_GIL();
    }
    return fd;
}

/* read() of a chunked file in C: each chunk the range spans, from its cached object. */
static void read_chunks(fuse_req_t req, Session *s, FileHandle *h, size_t size, off_t off)
{
    long long fsize = h->starts[h->nchunks];
    long long end = (long long)off + (long long)size;
    if (end > fsize)
        end = fsize;
    if ((long long)off >= end) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    /* the first chunk: the last whose start is <= off */
    size_t lo = 0, hi = h->nchunks;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (h->starts[mid] <= (long long)off)
            lo = mid;
        else
            hi = mid;
    }
    size_t first = lo, n = 0;
    while (first + n < h->nchunks && h->starts[first + n] < end)
        n++;
    struct fuse_bufvec *bufv = calloc(1, sizeof *bufv + n * sizeof(struct fuse_buf));
    if (bufv == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    bufv->count = 0;
    int err = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = first + k;
        long long from = k == 0 ? (long long)off : h->starts[i];
        long long to = h->starts[i + 1] < end ? h->starts[i + 1] : end;
        if (to <= from)
            continue;
        int fd = chunk_fd(s, h, (long long)i, &err);
        if (fd < 0)
            break;
        struct fuse_buf *b = &bufv->buf[bufv->count++];
        b->size = (size_t)(to - from);
        b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        b->fd = fd;
        b->pos = from - h->starts[i];
    }
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_data(req, bufv, FUSE_BUF_SPLICE_MOVE);
    for (size_t k = 0; k < bufv->count; k++)
        close(bufv->buf[k].fd);
    free(bufv);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino;
    Session *s = session_of(req);
    FileHandle *h = (FileHandle *)(uintptr_t)fi->fh;
    if (h->fd >= 0) { /* the cached object: from the page cache to the kernel, no Python */
        COUNT(s, C_READ);
        struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
        buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
        buf.buf[0].fd = h->fd;
        buf.buf[0].pos = off;
        fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
        return;
    }
    if (h->starts != NULL) { /* a chunked file: its chunks' cached objects */
        COUNT(s, C_READ);
        read_chunks(req, s, h, size, off);
        return;
    }
    COUNT(s, C_READ_PY);
    int err = 0;
    TAKE_GIL();
    PyObject *r = call(s, M_READ, "(OKn)", h->obj ? h->obj : Py_None, (unsigned long long)off,
                       (Py_ssize_t)size);
    Py_buffer view = {0};
    if (r != NULL && PyObject_GetBuffer(r, &view, PyBUF_SIMPLE) < 0)
        Py_CLEAR(r);
    if (r == NULL) {
        err = take_errno(s->methods[M_READ]);
        DROP_GIL();
        fuse_reply_err(req, err);
        return;
    }
    /* reply while holding the buffer (a bytes object: it cannot change under us) */
    size_t n = (size_t)view.len < size ? (size_t)view.len : size;
    const void *data = view.buf;
    DROP_GIL();
    fuse_reply_buf(req, data, n);
    TAKE_GIL();
    PyBuffer_Release(&view);
    Py_DECREF(r);
    DROP_GIL();
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    Session *s = session_of(req);
    FileHandle *h = (FileHandle *)(uintptr_t)fi->fh;
    COUNT(s, C_RELEASE);
    if (h->obj == NULL && h->starts == NULL) {
        if (h->fd >= 0)
            close(h->fd);
        pthread_mutex_destroy(&h->lock);
        free(h);
    } else {
        TAKE_GIL();
        release_handle(s, h);
        DROP_GIL();
    }
    fuse_reply_err(req, 0);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    Session *s = session_of(req);
    COUNT(s, C_OPENDIR);
    if (s->no_opendir) {
        /* "opendir is not implemented": the kernel stops sending opendir and releasedir,
         * and keeps directory listings in its cache (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) */
        fuse_reply_err(req, ENOSYS);
        return;
    }
    fi->fh = 0; /* listings need no handle: ops.readdir's offsets name their revision */
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

typedef struct {
    PyObject_HEAD
    Session *s;
    fuse_req_t req; /* NULL once the request was answered */
    char *buf;
    size_t size, used;
    int plus;
    /* readdirplus: the inodes of the entries added (the kernel counts each as a lookup once
     * the reply arrives; if it does not, ops.forget must be told) */
    struct fuse_forget_data *added;
    size_t nadded, room;
} DirBuffer;

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi, int plus)
{
    (void)fi;
    Session *s = session_of(req);
    int err = 0;
    COUNT(s, C_READDIR);
    char *mem = malloc(size ? size : 1);
    if (mem == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    TAKE_GIL();
    DirBuffer *b = PyObject_New(DirBuffer, &DirBufferType);
    PyObject *r = NULL;
    size_t used = 0, nadded = 0;
    struct fuse_forget_data *added = NULL;
    if (b != NULL) {
        b->s = s;
        b->req = req;
        b->buf = mem;
        b->size = size;
        b->used = 0;
        b->plus = plus;
        b->added = NULL;
        b->nadded = b->room = 0;
        r = call(s, M_READDIR, "(KLO)", (unsigned long long)ino, (long long)off, (PyObject *)b);
        used = b->used;
        added = b->added;
        nadded = b->nadded;
        b->req = NULL;
        b->buf = NULL;
        b->added = NULL;
        Py_DECREF(b);
    }
    if (r == NULL)
        err = take_errno(s->methods[M_READDIR]);
    Py_XDECREF(r);
    DROP_GIL();
    if (err)
        fuse_reply_err(req, err);
    else if (fuse_reply_buf(req, mem, used) != 0 && nadded > 0)
        forget_many(s, nadded, added); /* not delivered: the kernel counted none of them */
    free(added);
    free(mem);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, fi, 0);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, off, fi, 1);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    COUNT(session_of(req), C_RELEASEDIR);
    fuse_reply_err(req, 0);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino)
{
    Session *s = session_of(req);
    struct statvfs st;
    int err = 0;
    COUNT(s, C_STATFS);
    memset(&st, 0, sizeof st);
    TAKE_GIL();
    PyObject *r = call(s, M_STATFS, "(K)", (unsigned long long)ino);
    unsigned long long files = 0, bsize = 4096, namemax = 255;
    if (r != NULL && !PyArg_ParseTuple(r, "KKK", &files, &bsize, &namemax))
        Py_CLEAR(r);
    if (r == NULL)
        err = take_errno(s->methods[M_STATFS]);
    Py_XDECREF(r);
    DROP_GIL();
    if (err) {
        fuse_reply_err(req, err);
        return;
    }
    st.f_bsize = st.f_frsize = (unsigned long)bsize;
    st.f_files = (fsfilcnt_t)files;
    st.f_namemax = (unsigned long)namemax;
    fuse_reply_statfs(req, &st);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    Session *s = session_of(req);
    int err = 0;
    COUNT(s, C_GETXATTR);
    TAKE_GIL();
    PyObject *r = call(s, M_GETXATTR, "(Ky)", (unsigned long long)ino, name);
    if (r != NULL && !PyBytes_Check(r)) {
        Py_CLEAR(r);
        PyErr_SetString(PyExc_TypeError, "getxattr must return bytes");
    }
    if (r == NULL) {
        err = take_errno(s->methods[M_GETXATTR]);
        DROP_GIL();
        fuse_reply_err(req, err);
        return;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(r);
    const char *data = PyBytes_AS_STRING(r);
    DROP_GIL();
    if (size == 0)
        fuse_reply_xattr(req, n);
    else if (n > size)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, data, n);
    TAKE_GIL();
    Py_DECREF(r);
    DROP_GIL();
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    Session *s = session_of(req);
    int err = 0;
    COUNT(s, C_LISTXATTR);
    TAKE_GIL();
    PyObject *r = call(s, M_LISTXATTR, "(K)", (unsigned long long)ino);
    char *out = NULL;
    size_t n = 0;
    PyObject *seq = r ? PySequence_Fast(r, "listxattr must return a list of bytes") : NULL;
    if (seq != NULL) {
        Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyBytes_Check(item)) {
                PyErr_SetString(PyExc_TypeError, "listxattr must return a list of bytes");
                Py_CLEAR(seq);
                break;
            }
            n += (size_t)PyBytes_GET_SIZE(item) + 1;
        }
    }
    if (seq != NULL && (out = malloc(n ? n : 1)) != NULL) {
        size_t at = 0;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
            memcpy(out + at, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item) + 1);
            at += (size_t)PyBytes_GET_SIZE(item) + 1;
        }
    } else if (seq != NULL) {
        err = ENOMEM;
    }
    if (seq == NULL)
        err = take_errno(s->methods[M_LISTXATTR]);
    Py_XDECREF(seq);
    Py_XDECREF(r);
    DROP_GIL();
    if (err)
        fuse_reply_err(req, err);
    else if (size == 0)
        fuse_reply_xattr(req, n);
    else if (n > size)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, out, n);
    free(out);
}

static const struct fuse_lowlevel_ops ll_ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .readlink = ll_readlink,
    .open = ll_open,
    .read = ll_read,
    .release = ll_release,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .readdirplus = ll_readdirplus,
    .releasedir = ll_releasedir,
    .statfs = ll_statfs,
    .getxattr = ll_getxattr,
    .listxattr = ll_listxattr,
};

/* -- DirBuffer: what ops.readdir fills ------------------------------------------------- */

static PyObject *dirbuffer_add(DirBuffer *b, PyObject *args)
{
    const char *name;
    Py_ssize_t name_len;
    PyObject *attrs;
    long long next;
    if (!PyArg_ParseTuple(args, "y#OL", &name, &name_len, &attrs, &next))
        return NULL;
    if (b->req == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the readdir request was answered already");
        return NULL;
    }
    if ((Py_ssize_t)strlen(name) != name_len) {
        PyErr_SetString(PyExc_ValueError, "a name with a NUL byte");
        return NULL;
    }
    struct fuse_entry_param e;
    if (fill_entry(attrs, &e) < 0)
        return NULL;
    size_t room = b->size - b->used, need;
    if (b->plus)
        need = fuse_add_direntry_plus(b->req, b->buf + b->used, room, name, &e, (off_t)next);
    else
        need = fuse_add_direntry(b->req, b->buf + b->used, room, name, &e.attr, (off_t)next);
    if (need > room)
        Py_RETURN_FALSE;
    if (b->plus && e.ino != 0) {
        if (b->nadded == b->room) {
            size_t more = b->room ? 2 * b->room : 64;
            struct fuse_forget_data *grown = realloc(b->added, more * sizeof *grown);
            if (grown == NULL)
                return PyErr_NoMemory(); /* nothing added: the request fails whole */
            b->added = grown;
            b->room = more;
        }
        b->added[b->nadded].ino = e.ino;
        b->added[b->nadded].nlookup = 1;
        b->nadded++;
        note_object(b->s, attrs, &e.attr); /* (the kernel will know the inode) */
    }
    b->used += need;
    Py_RETURN_TRUE;
}

static PyObject *dirbuffer_plus(DirBuffer *b, void *closure)
{
    (void)closure;
    return PyBool_FromLong(b->plus);
}

static PyMethodDef dirbuffer_methods[] = {
    {"add", (PyCFunction)dirbuffer_add, METH_VARARGS,
     "add(name, attrs, next_offset) -> bool: append an entry; False when it does not fit "
     "(nothing was added: stop, the kernel asks again from that offset)."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef dirbuffer_getset[] = {
    {"plus", (getter)dirbuffer_plus, NULL,
     "Whether entries carry attributes (readdirplus): the kernel then counts each entry added "
     "as a lookup of its inode.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject DirBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycvmfs.client._fuse_lowlevel.DirBuffer",
    .tp_basicsize = sizeof(DirBuffer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The reply buffer of one readdir request.",
    .tp_methods = dirbuffer_methods,
    .tp_getset = dirbuffer_getset,
};

/* -- Session --------------------------------------------------------------------------- */

static void session_dealloc(Session *self)
{
    if (self->se != NULL) {
        if (self->mounted)
            fuse_session_unmount(self->se);
        fuse_session_destroy(self->se);
    }
    for (int i = 0; i < M_COUNT; i++)
        Py_XDECREF(self->methods[i]);
    Py_XDECREF(self->ops);
    if (self->objects_ready) {
        objects_clear(&self->objects);
        pthread_mutex_destroy(&self->objects.lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int session_init(Session *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ops", "mountpoint", "options", NULL};
    PyObject *ops, *options;
    PyObject *mountpoint_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO&O", kwlist, &ops, PyUnicode_FSConverter,
                                     &mountpoint_obj, &options))
        return -1;
    if (self->se != NULL) {
        Py_DECREF(mountpoint_obj);
        PyErr_SetString(PyExc_RuntimeError, "session already initialised");
        return -1;
    }
    for (int i = 0; i < M_COUNT; i++) {
        self->methods[i] = PyObject_GetAttrString(ops, method_names[i]);
        if (self->methods[i] == NULL && i >= M_OPTIONAL
                && PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear(); /* optional: chunked files are then read through ops.read */
            continue;
        }
        if (self->methods[i] == NULL) {
            Py_DECREF(mountpoint_obj);
            return -1;
        }
    }
    if (!self->objects_ready) {
        pthread_mutex_init(&self->objects.lock, NULL);
        self->objects_ready = 1;
    }
    Py_INCREF(ops);
    self->ops = ops;
    /* argv: program name, then "-o opt1,opt2,..." */
    PyObject *joined = NULL, *comma = PyUnicode_FromString(",");
    if (comma != NULL)
        joined = PyUnicode_Join(comma, options);
    Py_XDECREF(comma);
    if (joined == NULL) {
        Py_DECREF(mountpoint_obj);
        return -1;
    }
    const char *opts = PyUnicode_AsUTF8(joined);
    char *argv[4] = {"pycvmfs", "-o", NULL, NULL};
    int argc = 1;
    if (opts != NULL && *opts) {
        argv[2] = strdup(opts);
        argc = 3;
    }
    Py_DECREF(joined);
    if (opts == NULL) {
        Py_DECREF(mountpoint_obj);
        return -1;
    }
    struct fuse_args fargs = FUSE_ARGS_INIT(argc, argv);
    struct fuse_session *se;
    Py_BEGIN_ALLOW_THREADS
    se = fuse_session_new(&fargs, &ll_ops, sizeof ll_ops, self);
    Py_END_ALLOW_THREADS
    fuse_opt_free_args(&fargs);
    free(argv[2]);
    if (se == NULL) {
        Py_DECREF(mountpoint_obj);
        PyErr_SetString(PyExc_OSError, "fuse_session_new failed (bad mount options?)");
        return -1;
    }
    int rc;
    const char *mp = PyBytes_AS_STRING(mountpoint_obj);
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_session_mount(se, mp);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        fuse_session_destroy(se);
        PyErr_Format(PyExc_OSError, "cannot mount FUSE at %s (is /dev/fuse usable?)", mp);
        Py_DECREF(mountpoint_obj);
        return -1;
    }
    Py_DECREF(mountpoint_obj);
    self->se = se;
    self->mounted = 1;
    return 0;
}

static int check_session(Session *self)
{
    if (self->se == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no FUSE session");
        return -1;
    }
    return 0;
}

static PyObject *session_loop(Session *self, PyObject *noargs)
{
    (void)noargs;
    if (check_session(self) < 0)
        return NULL;
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    int res = 0;
    PyThreadState *outer = worker_state; /* (a worker calling loop() twice, nested: odd) */
    __atomic_fetch_add(&self->loops, 1, __ATOMIC_SEQ_CST);
    DROP_GIL();
    while (!fuse_session_exited(self->se)) {
        res = fuse_session_receive_buf(self->se, &buf);
        if (res == -EINTR || res == -EAGAIN)
            continue;
        if (res <= 0)
            break;
        fuse_session_process_buf(self->se, &buf);
    }
    TAKE_GIL();
    worker_state = outer;
    __atomic_fetch_sub(&self->loops, 1, __ATOMIC_SEQ_CST);
    free(buf.mem);
    if (fuse_session_exited(self->se))
        Py_RETURN_NONE; /* unmounted: whatever the last read said */
    if (res < 0 && res != -ENODEV && res != -EINTR && res != -EAGAIN) {
        errno = -res;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* libfuse's unmount closes /dev/fuse at once: with a loop() still running, its reply would
 * go to a closed descriptor (the reader waiting for it hangs) or, once the number is reused,
 * to another file. So the session ends only after the kernel ended the connection (an
 * unmount from outside, or an abort) and every loop() returned. */
static PyObject *session_close(Session *self, PyObject *noargs)
{
    (void)noargs;
    if (check_session(self) < 0)
        return NULL;
    if (__atomic_load_n(&self->loops, __ATOMIC_SEQ_CST) > 0) {
        PyErr_SetString(PyExc_RuntimeError, "close(): loop() is still running in a thread "
                        "(unmount or abort the connection first)");
        return NULL;
    }
    if (self->mounted) {
        self->mounted = 0;
        Py_BEGIN_ALLOW_THREADS
        fuse_session_exit(self->se);
        fuse_session_unmount(self->se); /* closes /dev/fuse; unmounts if the kernel has it */
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *notify_result(int rc)
{
    if (rc == 0 || rc == -ENOENT)
        Py_RETURN_TRUE;
    if (rc == -ENOSYS || rc == -ENOTCONN || rc == -EBADF || rc == -ENODEV)
        Py_RETURN_FALSE; /* kernel without it, or the mount is gone */
    errno = -rc;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *session_invalidate_entry(Session *self, PyObject *args)
{
    unsigned long long parent;
    const char *name;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Ky#", &parent, &name, &len) || check_session(self) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_lowlevel_notify_inval_entry(self->se, (fuse_ino_t)parent, name, (size_t)len);
    Py_END_ALLOW_THREADS
    return notify_result(rc);
}

static PyObject *session_invalidate_inode(Session *self, PyObject *args)
{
    unsigned long long ino;
    if (!PyArg_ParseTuple(args, "K", &ino) || check_session(self) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_lowlevel_notify_inval_inode(self->se, (fuse_ino_t)ino, 0, 0);
    Py_END_ALLOW_THREADS
    return notify_result(rc);
}

static PyObject *session_counters(Session *self, PyObject *noargs)
{
    (void)noargs;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < C_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(
            __atomic_load_n(&self->counters[i], __ATOMIC_RELAXED));
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *session_fd(Session *self, void *closure)
{
    (void)closure;
    if (check_session(self) < 0)
        return NULL;
    return PyLong_FromLong(fuse_session_fd(self->se));
}

static PyMethodDef session_methods[] = {
    {"loop", (PyCFunction)session_loop, METH_NOARGS,
     "loop(): serve requests in this thread until the file system is unmounted. Call it "
     "from several threads at once: requests that wait (a download) block only their thread."},
    {"close", (PyCFunction)session_close, METH_NOARGS,
     "close(): release /dev/fuse (and unmount if still mounted) once every loop() has "
     "returned; a loop() returns when the kernel ends the connection (unmount, abort)."},
    {"invalidate_entry", (PyCFunction)session_invalidate_entry, METH_VARARGS,
     "invalidate_entry(parent, name) -> bool: make the kernel forget a cached name. Never "
     "from a request handler (the kernel may wait for that request)."},
    {"invalidate_inode", (PyCFunction)session_invalidate_inode, METH_VARARGS,
     "invalidate_inode(ino) -> bool: drop the kernel's cached attributes, data and listing "
     "of an inode. Never from a request handler."},
    {"counters", (PyCFunction)session_counters, METH_NOARGS,
     "counters() -> dict: requests served, per kind (read: in C; read_python: through ops)."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef session_getset[] = {
    {"fd", (getter)session_fd, NULL, "The /dev/fuse descriptor.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycvmfs.client._fuse_lowlevel.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(ops, mountpoint, options): a mounted FUSE file system served by ops.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)session_init,
    .tp_dealloc = (destructor)session_dealloc,
    .tp_methods = session_methods,
    .tp_getset = session_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pycvmfs.client._fuse_lowlevel",
    "libfuse3 low-level session for the pycvmfs mount (see pycvmfs.client.fuse).", -1,
    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fuse_lowlevel(void)
{
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&DirBufferType) < 0)
        return NULL;
    s_errno = PyUnicode_InternFromString("errno");
    if (s_errno == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0
        || PyModule_AddIntConstant(m, "ROOT_INODE", FUSE_ROOT_ID) < 0
        || PyModule_AddIntConstant(m, "FUSE_VERSION", fuse_version()) < 0) {
        Py_DECREF(&SessionType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
