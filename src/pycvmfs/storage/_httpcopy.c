/* pycvmfs.storage._httpcopy: copy content-addressed objects from an HTTP server into a local
 * storage directory, each body checked against its name before it is kept.
 *
 * An Engine is one thread of its own driving libcurl's multi interface. It takes jobs (an
 * object's relative path, its hash algorithm and digest, and a token), downloads each body
 * while hashing it with OpenSSL, keeps a small body in memory and spills a large one into a
 * file as it arrives; when the transfer ends with a 200 and the digest matches, the body is
 * written (if still in memory) and the file given the object's name. The file is a nameless
 * one (O_TMPFILE) in the object's folder, linked into place, or where the file system cannot
 * make those, a named one in data/txn, renamed into place. So neither a reader nor a resumed
 * replication ever sees a partial or an unverified file. Every job ends with exactly one
 * result: (token, stored bytes, None) or (token, 0, reason).
 *
 * The thread never takes the interpreter lock: Python submits lists of jobs and collects lists
 * of results, waiting for them with the lock released. Tokens are only touched by those calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIGEST_SIZE 20
#define N_ALGORITHMS 3          /* the catalog's codes: 0 SHA-1, 1 RIPEMD-160, 2 SHAKE-128 */
#define SPILL_AT (1 << 20)      /* a body larger than this goes to its file as it arrives */
#define MAX_RELPATH 80         /* data/XX/ + 38 hex + -shake128 + a kind letter: 57 */
#define MAX_BASE 2048
#define ERROR_SIZE 256
#define POLL_MS 100

struct engine;
struct handle;

typedef struct job {
    struct job *next;
    PyObject *token;            /* owned; touched only with the interpreter lock held */
    struct engine *engine;
    char relpath[MAX_RELPATH + 1];
    int algorithm;
    unsigned char digest[DIGEST_SIZE];
    /* the transfer (engine thread only) */
    struct handle *handle;
    EVP_MD_CTX *md;
    unsigned char *buf;
    size_t len, cap;
    int fd;                     /* its file, once opened (-1 before) */
    int nameless;               /* the file is an O_TMPFILE one in the object's own folder */
    char tmp[160];              /* the named file in data/txn ("" when there is none), or
                                   what the nameless one is called in messages */
    unsigned long long size;
    unsigned long long max_size;  /* stored bytes allowed (with has_max_size) */
    int has_max_size;
    int status_checked;
    char error[ERROR_SIZE];     /* "" while all is well */
} job;

typedef struct handle {
    CURL *easy;
    unsigned long route;        /* the route generation its options were set for */
    char curl_error[CURL_ERROR_SIZE];
    job *job;
} handle;

typedef struct engine {
    PyObject_HEAD
    int initialized;
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* to the thread: jobs, or a stop, while it is idle */
    pthread_cond_t ready;       /* to collectors: results, or the thread ended */
    pthread_t thread;
    pthread_mutex_t join_lock;  /* one pthread_join, whoever calls close() or cancel() */
    int started, running, joined;
    int closing, cancelled;
    job *queue_head, *queue_tail;
    job *done_head, *done_tail;
    Py_ssize_t unfinished;      /* submitted and not yet in the done list */
    unsigned long long requests;
    /* the route (under the lock; the thread copies it when the generation changes) */
    char base_url[MAX_BASE + 1];
    char proxy[MAX_BASE + 1];
    long connect_timeout_ms, low_speed_time;
    long low_speed_limit;       /* bytes/s under which a transfer fails (after the time) */
    long timeout_ms;            /* a transfer's deadline (0: none) */
    unsigned long route;
    char *user_agent;
    char setup_error[ERROR_SIZE];
    /* the destination */
    int root_fd;
    int do_fsync, fix_mode;
    int named_files;            /* the file system cannot make nameless files: use data/txn */
    unsigned long names;
    /* the thread's own */
    CURLM *multi;
    CURLM *multi_for_wakeup;    /* set under the lock while the thread's multi handle lives */
    int parallel;
    EVP_MD *md[N_ALGORITHMS];
} Engine;

/* -- jobs ---------------------------------------------------------------------------------- */

static void set_error(job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_error(job *j, const char *fmt, ...) {
    if (j->error[0])
        return;  /* the first reason is the one that counts */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, ERROR_SIZE, fmt, ap);
    va_end(ap);
    if (!j->error[0])
        strcpy(j->error, "failed");
}

static void release_body(job *j) {
    free(j->buf);
    j->buf = NULL;
    j->len = j->cap = 0;
    if (j->md) {
        EVP_MD_CTX_free(j->md);
        j->md = NULL;
    }
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A file for j's body, invisible until store() links it into place: a nameless one in the
 * object's own folder (nothing is left behind if the process dies, and linking it is cheaper
 * than a rename from another folder, which takes a lock of the whole file system), else a
 * named one in data/txn. */
static int open_temporary(Engine *e, job *j) {
    if (!e->named_files) {
        char folder[MAX_RELPATH + 1];
        strcpy(folder, j->relpath);
        *strrchr(folder, '/') = 0;  /* (a valid relpath has a folder) */
        j->fd = openat(e->root_fd, folder, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        if (j->fd >= 0) {
            j->nameless = 1;
            snprintf(j->tmp, sizeof j->tmp, "a new file in %s", folder);
            return 0;
        }
        if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
            set_error(j, "cannot create a file in %s: %s", folder, strerror(errno));
            return -1;
        }
        e->named_files = 1;  /* (engine thread only) */
    }
    unsigned long n = e->names++;
    snprintf(j->tmp, sizeof j->tmp, "data/txn/copy.%ld.%lx.%lu", (long)getpid(),
             (unsigned long)(uintptr_t)e, n);
    j->fd = openat(e->root_fd, j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (j->fd < 0) {
        set_error(j, "cannot create %s: %s", j->tmp, strerror(errno));
        j->tmp[0] = 0;
        return -1;
    }
    return 0;
}

static void discard_temporary(Engine *e, job *j) {
    if (j->fd >= 0) {
        close(j->fd);
        j->fd = -1;
    }
    if (j->tmp[0] && !j->nameless)
        unlinkat(e->root_fd, j->tmp, 0);
    j->tmp[0] = 0;
}

/* Give the nameless file of j its object's name (then close it). A regular file that arrived
 * meanwhile under the same name has the same content: that is no error. */
static void link_nameless(Engine *e, job *j) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", j->fd);
    int rc = linkat(AT_FDCWD, proc, e->root_fd, j->relpath, AT_SYMLINK_FOLLOW);
    if (rc < 0 && errno == ENOENT)  /* no /proc: the privileged way */
        rc = linkat(j->fd, "", e->root_fd, j->relpath, AT_EMPTY_PATH);
    if (rc < 0) {
        int err = errno;
        struct stat st;
        if (err == EEXIST && fstatat(e->root_fd, j->relpath, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(st.st_mode)) {
            /* (the object arrived meanwhile) */
        } else {
            set_error(j, "cannot link %s as %s: %s", j->tmp, j->relpath,
                      err == EEXIST ? "something else is there" : strerror(err));
            if (err == ENOENT || err == EPERM)
                e->named_files = 1;  /* the next ones go through data/txn */
            return;
        }
    }
    close(j->fd);
    j->fd = -1;
    j->tmp[0] = 0;
}

/* Keep a verified body: into its temporary file (if still in memory), flushed, renamed. */
static void store(Engine *e, job *j) {
    if (j->fd < 0) {
        if (open_temporary(e, j) < 0)
            return;
        if (write_all(j->fd, j->buf, j->len) < 0) {
            set_error(j, "cannot write %s: %s", j->tmp, strerror(errno));
            return;
        }
    }
    if (e->fix_mode && fchmod(j->fd, 0644) < 0) {
        set_error(j, "cannot set the mode of %s: %s", j->tmp, strerror(errno));
        return;
    }
    if (e->do_fsync && fsync(j->fd) < 0) {
        set_error(j, "cannot flush %s: %s", j->tmp, strerror(errno));
        return;
    }
    if (j->nameless) {
        link_nameless(e, j);
        return;
    }
    int rc = close(j->fd);
    j->fd = -1;
    if (rc < 0) {
        set_error(j, "cannot write %s: %s", j->tmp, strerror(errno));
        return;
    }
    if (renameat(e->root_fd, j->tmp, e->root_fd, j->relpath) < 0) {
        set_error(j, "cannot move %s to %s: %s", j->tmp, j->relpath, strerror(errno));
        return;
    }
    j->tmp[0] = 0;
}

/* -- transfers (engine thread) ----------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
    job *j = userdata;
    size_t n = size * nmemb;
    if (n == 0)
        return 0;
    if (!j->status_checked) {
        long status = 0;
        curl_easy_getinfo(j->handle->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
            set_error(j, "HTTP %ld", status);
            return 0;  /* ends the transfer (a write error) */
        }
        j->status_checked = 1;
    }
    if (EVP_DigestUpdate(j->md, data, n) != 1) {
        set_error(j, "hashing failed");
        return 0;
    }
    j->size += n;
    if (j->has_max_size && j->size > j->max_size) {
        set_error(j, "more than %llu stored bytes, its size limit; stopped there",
                  j->max_size);
        return 0;
    }
    if (j->fd < 0 && j->len + n <= SPILL_AT) {
        if (j->len + n > j->cap) {
            size_t cap = j->cap ? j->cap : 16384;
            while (cap < j->len + n)
                cap *= 2;
            unsigned char *p = realloc(j->buf, cap);
            if (!p) {
                set_error(j, "out of memory");
                return 0;
            }
            j->buf = p;
            j->cap = cap;
        }
        memcpy(j->buf + j->len, data, n);
        j->len += n;
        return n;
    }
    if (j->fd < 0) {  /* the body outgrew memory: what came so far goes to the file first */
        if (open_temporary(j->engine, j) < 0)
            return 0;
        if (write_all(j->fd, j->buf, j->len) < 0) {
            set_error(j, "cannot write %s: %s", j->tmp, strerror(errno));
            return 0;
        }
        free(j->buf);
        j->buf = NULL;
        j->len = j->cap = 0;
    }
    if (write_all(j->fd, (const unsigned char *)data, n) < 0) {
        set_error(j, "cannot write %s: %s", j->tmp, strerror(errno));
        return 0;
    }
    return n;
}

static void hex(const unsigned char *d, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < DIGEST_SIZE; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * DIGEST_SIZE] = 0;
}

/* The transfer of j ended with result: check it, keep or drop the body. */
static void conclude(Engine *e, job *j, CURLcode result) {
    handle *h = j->handle;
    if (result != CURLE_OK) {
        set_error(j, "%s", h->curl_error[0] ? h->curl_error : curl_easy_strerror(result));
    } else {
        long status = 0;
        curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200)
            set_error(j, "HTTP %ld", status);
    }
    if (!j->error[0]) {
        unsigned char actual[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        int ok;
        if (j->algorithm == 2) {
            ok = EVP_DigestFinalXOF(j->md, actual, DIGEST_SIZE);
            len = DIGEST_SIZE;
        } else {
            ok = EVP_DigestFinal_ex(j->md, actual, &len);
        }
        if (ok != 1 || len != DIGEST_SIZE) {
            set_error(j, "hashing failed");
        } else if (memcmp(actual, j->digest, DIGEST_SIZE) != 0) {
            char text[2 * DIGEST_SIZE + 1];
            hex(actual, text);
            set_error(j, "the body does not match the object's name (its hash is %s)", text);
        }
    }
    if (!j->error[0])
        store(e, j);
    if (j->error[0]) {
        discard_temporary(e, j);
        j->size = 0;
    }
    release_body(j);
    h->job = NULL;
    j->handle = NULL;
}

static int start(Engine *e, handle *h, job *j, const char *base, unsigned long route,
                 const char *proxy, long connect_ms, long low_speed) {
    char url[MAX_BASE + MAX_RELPATH + 2];
    j->fd = -1;
    if (!e->md[j->algorithm]) {
        set_error(j, "this OpenSSL cannot compute the hash algorithm %d", j->algorithm);
        return -1;
    }
    j->md = EVP_MD_CTX_new();
    if (!j->md || EVP_DigestInit_ex(j->md, e->md[j->algorithm], NULL) != 1) {
        set_error(j, "cannot start hashing");
        return -1;
    }
    if (h->route != route) {
        curl_easy_setopt(h->easy, CURLOPT_PROXY, proxy);
        curl_easy_setopt(h->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
        curl_easy_setopt(h->easy, CURLOPT_LOW_SPEED_LIMIT, e->low_speed_limit);
        curl_easy_setopt(h->easy, CURLOPT_LOW_SPEED_TIME, low_speed);
        curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS, e->timeout_ms);
        h->route = route;
    }
    snprintf(url, sizeof url, "%s/%s", base, j->relpath);
    curl_easy_setopt(h->easy, CURLOPT_URL, url);
    curl_easy_setopt(h->easy, CURLOPT_WRITEDATA, j);
    h->curl_error[0] = 0;
    h->job = j;
    j->handle = h;
    if (curl_multi_add_handle(e->multi, h->easy) != CURLM_OK) {
        h->job = NULL;
        j->handle = NULL;
        set_error(j, "libcurl refused the transfer");
        return -1;
    }
    return 0;
}

static void append(job **head, job **tail, job *j) {
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

/* Hand finished jobs to the collectors. */
static void deliver(Engine *e, job *head, job *tail, Py_ssize_t n) {
    if (!head)
        return;
    pthread_mutex_lock(&e->lock);
    if (e->done_tail)
        e->done_tail->next = head;
    else
        e->done_head = head;
    e->done_tail = tail;
    e->unfinished -= n;
    pthread_cond_broadcast(&e->ready);
    pthread_mutex_unlock(&e->lock);
}

static void *drive(void *arg) {
    Engine *e = arg;
    handle *handles = calloc((size_t)e->parallel, sizeof(handle));
    handle **free_handles = calloc((size_t)e->parallel, sizeof(handle *));
    struct curl_slist *headers = NULL;
    char ua[512];
    int n_free = 0, ok = handles && free_handles;
    char base[MAX_BASE + 1], proxy[MAX_BASE + 1];
    long connect_ms = 0, low_speed = 0;
    unsigned long route = 0;

    snprintf(ua, sizeof ua, "User-Agent: %s", e->user_agent);
    headers = curl_slist_append(NULL, ua);
    if (headers) {
        struct curl_slist *more = curl_slist_append(headers, "Connection: keep-alive");
        if (!more) {
            curl_slist_free_all(headers);
            headers = NULL;
        }
    }
    e->multi = ok && headers ? curl_multi_init() : NULL;
    ok = ok && e->multi;
    for (int i = 0; ok && i < e->parallel; i++) {
        handle *h = &handles[i];
        h->easy = curl_easy_init();
        if (!h->easy) {
            ok = 0;
            break;
        }
        curl_easy_setopt(h->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h->easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h->easy, CURLOPT_BUFFERSIZE, 256L * 1024);
        curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, headers);
        /* libcurl's proxy environment variables must not override the configured proxy */
        curl_easy_setopt(h->easy, CURLOPT_NOPROXY, "");
        curl_easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h->easy, CURLOPT_ERRORBUFFER, h->curl_error);
        curl_easy_setopt(h->easy, CURLOPT_PRIVATE, h);
#if LIBCURL_VERSION_NUM >= 0x075700
        /* cancel does not wait for a name resolution in flight */
        curl_easy_setopt(h->easy, CURLOPT_QUICK_EXIT, 1L);
#endif
        free_handles[n_free++] = h;
    }

    pthread_mutex_lock(&e->lock);
    if (ok)
        e->multi_for_wakeup = e->multi;
    else
        snprintf(e->setup_error, ERROR_SIZE, "cannot set up libcurl");
    pthread_mutex_unlock(&e->lock);

    for (;;) {
        job *starts = NULL, *starts_tail = NULL, *finished = NULL, *finished_tail = NULL;
        Py_ssize_t n_finished = 0;
        int stop = 0;

        pthread_mutex_lock(&e->lock);
        for (;;) {
            if (!ok || e->cancelled) {
                stop = 1;
                break;
            }
            if (e->queue_head && n_free > 0)
                break;
            if (n_free < e->parallel)  /* transfers to drive */
                break;
            if (e->closing && !e->queue_head) {
                stop = 1;
                break;
            }
            pthread_cond_wait(&e->wake, &e->lock);
        }
        if (!stop) {
            int take = n_free;
            while (take > 0 && e->queue_head) {
                job *j = e->queue_head;
                e->queue_head = j->next;
                if (!e->queue_head)
                    e->queue_tail = NULL;
                append(&starts, &starts_tail, j);
                take--;
            }
            if (starts && e->route != route) {
                memcpy(base, e->base_url, sizeof base);
                memcpy(proxy, e->proxy, sizeof proxy);
                connect_ms = e->connect_timeout_ms;
                low_speed = e->low_speed_time;
                route = e->route;
            }
        }
        pthread_mutex_unlock(&e->lock);
        if (stop)
            break;

        while (starts) {
            job *j = starts;
            starts = j->next;
            handle *h = free_handles[--n_free];
            if (start(e, h, j, base, route, proxy, connect_ms, low_speed) < 0) {
                free_handles[n_free++] = h;
                release_body(j);
                append(&finished, &finished_tail, j);
                n_finished++;
            } else {
                __atomic_fetch_add(&e->requests, 1, __ATOMIC_RELAXED);
            }
        }

        int still_running = 0;
        CURLMcode mc = curl_multi_perform(e->multi, &still_running);
        if (mc != CURLM_OK) {
            snprintf(e->setup_error, ERROR_SIZE, "libcurl: %s", curl_multi_strerror(mc));
            ok = 0;  /* (everything still in flight ends with that reason) */
        }
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(e->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *easy = msg->easy_handle;
            CURLcode result = msg->data.result;
            handle *h = NULL;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&h);
            curl_multi_remove_handle(e->multi, easy);
            job *j = h->job;
            conclude(e, j, result);
            free_handles[n_free++] = h;
            append(&finished, &finished_tail, j);
            n_finished++;
        }
        deliver(e, finished, finished_tail, n_finished);
        if (ok && n_free < e->parallel) {
            mc = curl_multi_poll(e->multi, NULL, 0, POLL_MS, NULL);
            if (mc != CURLM_OK) {
                snprintf(e->setup_error, ERROR_SIZE, "libcurl: %s", curl_multi_strerror(mc));
                ok = 0;
            }
        }
    }

    /* cancelled, closed or never set up: whatever is left ends with a reason */
    job *left_head = NULL, *left_tail = NULL;
    Py_ssize_t n_left = 0;
    for (int i = 0; i < e->parallel && handles; i++) {
        handle *h = &handles[i];
        if (h->job) {
            job *j = h->job;
            curl_multi_remove_handle(e->multi, h->easy);
            set_error(j, "%s", ok ? "cancelled" : e->setup_error);
            discard_temporary(e, j);
            j->size = 0;
            release_body(j);
            h->job = NULL;
            j->handle = NULL;
            append(&left_head, &left_tail, j);
            n_left++;
        }
    }
    pthread_mutex_lock(&e->lock);
    e->multi_for_wakeup = NULL;
    e->closing = 1;  /* submit() takes nothing more: nobody would answer it */
    while (e->queue_head) {
        job *j = e->queue_head;
        e->queue_head = j->next;
        set_error(j, "%s", ok ? "cancelled" : e->setup_error);
        append(&left_head, &left_tail, j);
        n_left++;
    }
    e->queue_tail = NULL;
    pthread_mutex_unlock(&e->lock);
    deliver(e, left_head, left_tail, n_left);

    for (int i = 0; i < e->parallel && handles; i++)
        if (handles[i].easy)
            curl_easy_cleanup(handles[i].easy);
    if (e->multi)
        curl_multi_cleanup(e->multi);
    e->multi = NULL;
    curl_slist_free_all(headers);
    free(handles);
    free(free_handles);

    pthread_mutex_lock(&e->lock);
    e->running = 0;
    pthread_cond_broadcast(&e->ready);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* -- the Python type ----------------------------------------------------------------------- */

static void free_jobs(job *j) {
    while (j) {
        job *next = j->next;
        Py_XDECREF(j->token);
        release_body(j);
        free(j);
        j = next;
    }
}

static void wake_thread(Engine *e) {
    /* (with the lock held) */
    pthread_cond_signal(&e->wake);
    if (e->multi_for_wakeup)
        curl_multi_wakeup(e->multi_for_wakeup);
}

static void join_thread(Engine *e) {
    if (!e->started)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->join_lock);  /* (close() and cancel() may come from two threads) */
    if (!e->joined) {
        pthread_join(e->thread, NULL);
        e->joined = 1;
    }
    pthread_mutex_unlock(&e->join_lock);
    Py_END_ALLOW_THREADS
}

static int copy_text(char *dest, size_t size, const char *src, const char *what) {
    if (strlen(src) >= size) {
        PyErr_Format(PyExc_ValueError, "%s is too long", what);
        return -1;
    }
    strcpy(dest, src);
    return 0;
}

static int set_route_locked(Engine *e, const char *base, const char *proxy, long connect_ms,
                            long low_speed) {
    char b[MAX_BASE + 1], p[MAX_BASE + 1];
    if (copy_text(b, sizeof b, base, "the server URL") < 0 ||
        copy_text(p, sizeof p, proxy, "the proxy") < 0)
        return -1;
    size_t n = strlen(b);
    while (n > 0 && b[n - 1] == '/')
        b[--n] = 0;
    pthread_mutex_lock(&e->lock);
    memcpy(e->base_url, b, sizeof b);
    memcpy(e->proxy, p, sizeof p);
    e->connect_timeout_ms = connect_ms > 0 ? connect_ms : 1;
    e->low_speed_time = low_speed > 0 ? low_speed : 1;
    e->route++;
    pthread_mutex_unlock(&e->lock);
    return 0;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e) {
        e->root_fd = -1;
    }
    return (PyObject *)e;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"root", "base_url", "proxy", "connect_timeout_ms",
                             "low_speed_time", "user_agent", "parallel", "fsync", "fix_mode",
                             "named_files", "low_speed_limit", "timeout_ms", NULL};
    PyObject *root_obj = NULL;
    const char *base, *proxy, *user_agent;
    long connect_ms, low_speed, low_speed_limit = 1, timeout_ms = 0;
    int parallel, do_fsync, fix_mode, named_files = 0;
    if (e->initialized || e->root_fd >= 0 || e->user_agent) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is initialized already");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&ssllsipp|pll", kwlist,
                                     PyUnicode_FSConverter, &root_obj, &base, &proxy,
                                     &connect_ms, &low_speed, &user_agent, &parallel, &do_fsync,
                                     &fix_mode, &named_files, &low_speed_limit, &timeout_ms))
        return -1;
    e->low_speed_limit = low_speed_limit > 0 ? low_speed_limit : 1;
    e->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
    const char *root = PyBytes_AS_STRING(root_obj);
    if (parallel < 1 || parallel > 1024) {
        Py_DECREF(root_obj);
        PyErr_SetString(PyExc_ValueError, "parallel must be 1 to 1024");
        return -1;
    }
    e->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (e->root_fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, root);
        Py_DECREF(root_obj);
        return -1;
    }
    Py_DECREF(root_obj);
    if (strpbrk(user_agent, "\r\n")) {
        PyErr_SetString(PyExc_ValueError, "the user agent must be one line");
        return -1;
    }
    e->user_agent = strdup(user_agent);
    if (!e->user_agent) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->join_lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->ready, NULL);
    e->initialized = 1;
    if (set_route_locked(e, base, proxy, connect_ms, low_speed) < 0)
        return -1;
    e->parallel = parallel;
    e->do_fsync = do_fsync;
    e->fix_mode = fix_mode;
    e->named_files = named_files;
    static const char *names[N_ALGORITHMS] = {"SHA1", "RIPEMD160", "SHAKE128"};
    for (int i = 0; i < N_ALGORITHMS; i++)
        e->md[i] = EVP_MD_fetch(NULL, names[i], NULL);  /* NULL: jobs with it fail */
    ERR_clear_error();  /* (what a failed fetch left on this thread's queue) */
    e->running = 1;
    int rc = pthread_create(&e->thread, NULL, drive, e);
    if (rc != 0) {
        e->running = 0;
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    e->started = 1;
    return 0;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static const char *const algorithm_suffix[N_ALGORITHMS] = {"", "-rmd160", "-shake128"};

/* Whether relpath is the object path of this hash: data/XX/<38 more hex digits><the
 * algorithm's suffix><at most one kind letter of a stored object>, so that nothing but an
 * object's own name can be written, and only bytes with that hash under it. */
static int is_object_path(const char *p, Py_ssize_t n, int algorithm,
                          const unsigned char *digest) {
    const Py_ssize_t hex_end = 5 + 2 + 1 + 38;
    if (n < hex_end || n > MAX_RELPATH || memcmp(p, "data/", 5) != 0 || p[7] != '/')
        return 0;
    for (int i = 0, at = 5; i < 2 * DIGEST_SIZE; i++, at++) {
        if (at == 7)
            at++;
        int v = hex_value(p[at]);
        if (v < 0 || v != ((i & 1) ? digest[i / 2] & 15 : digest[i / 2] >> 4))
            return 0;
    }
    const char *rest = p + hex_end;
    size_t left = (size_t)(n - hex_end), suffix = strlen(algorithm_suffix[algorithm]);
    if (left < suffix || memcmp(rest, algorithm_suffix[algorithm], suffix) != 0)
        return 0;
    left -= suffix;
    rest += suffix;
    /* the stored kinds (format doc 1.2): partial, catalog, history, certificate, meta-info */
    return left == 0 || (left == 1 && rest[0] && strchr("PCHXM", rest[0]));
}

/* Check one job (relpath, algorithm code, digest, token[, most stored bytes or None]) and
 * fill j from it (the token is borrowed); -1 with an exception when it is malformed. */
static int parse_job(PyObject *item, job *j, PyObject **token) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 4 || PyTuple_GET_SIZE(item) > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "a job is (relpath, algorithm, digest, token[, max_size])");
        return -1;
    }
    j->has_max_size = 0;
    if (PyTuple_GET_SIZE(item) == 5 && PyTuple_GET_ITEM(item, 4) != Py_None) {
        j->max_size = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 4));
        if (j->max_size == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        j->has_max_size = 1;
    }
    PyObject *rel = PyTuple_GET_ITEM(item, 0), *alg = PyTuple_GET_ITEM(item, 1),
             *dig = PyTuple_GET_ITEM(item, 2);
    if (!PyUnicode_Check(rel) || !PyLong_Check(alg) || !PyBytes_Check(dig)) {
        PyErr_SetString(PyExc_TypeError, "a job is (relpath: str, algorithm: int, "
                                         "digest: bytes, token)");
        return -1;
    }
    long algorithm = PyLong_AsLong(alg);
    if (algorithm == -1 && PyErr_Occurred())
        return -1;
    if (algorithm < 0 || algorithm >= N_ALGORITHMS || PyBytes_GET_SIZE(dig) != DIGEST_SIZE) {
        PyErr_Format(PyExc_ValueError, "%R: bad hash (algorithm %ld, %zd bytes)", rel,
                     algorithm, PyBytes_GET_SIZE(dig));
        return -1;
    }
    Py_ssize_t n;
    const char *relpath = PyUnicode_AsUTF8AndSize(rel, &n);
    if (!relpath)
        return -1;
    const unsigned char *digest = (const unsigned char *)PyBytes_AS_STRING(dig);
    if (!is_object_path(relpath, n, (int)algorithm, digest)) {
        PyErr_Format(PyExc_ValueError, "not an object path of this hash: %R", rel);
        return -1;
    }
    memcpy(j->relpath, relpath, (size_t)n);
    j->relpath[n] = 0;
    j->algorithm = (int)algorithm;
    memcpy(j->digest, digest, DIGEST_SIZE);
    *token = PyTuple_GET_ITEM(item, 3);
    return 0;
}

static PyObject *Engine_validate(Engine *e, PyObject *items) {
    PyObject *jobs = PySequence_Tuple(items);  /* (a copy: the items stay alive) */
    if (!jobs)
        return NULL;
    job scratch;
    PyObject *token;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(jobs); i++) {
        if (parse_job(PyTuple_GET_ITEM(jobs, i), &scratch, &token) < 0) {
            Py_DECREF(jobs);
            return NULL;
        }
    }
    Py_DECREF(jobs);
    Py_RETURN_NONE;
}

static PyObject *Engine_submit(Engine *e, PyObject *items) {
    if (!e->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not initialized");
        return NULL;
    }
    PyObject *jobs = PySequence_Tuple(items);
    if (!jobs)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(jobs);
    job *head = NULL, *tail = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        job *j = calloc(1, sizeof(job));
        PyObject *token;
        if (!j) {
            PyErr_NoMemory();
            goto fail;
        }
        if (parse_job(PyTuple_GET_ITEM(jobs, i), j, &token) < 0) {
            free(j);
            goto fail;
        }
        j->fd = -1;
        j->engine = e;
        Py_INCREF(token);
        j->token = token;
        append(&head, &tail, j);
    }
    Py_DECREF(jobs);
    pthread_mutex_lock(&e->lock);
    if (!e->running || e->closing || e->cancelled) {
        pthread_mutex_unlock(&e->lock);
        free_jobs(head);
        PyErr_SetString(PyExc_RuntimeError, "the copy engine is stopped");
        return NULL;
    }
    if (head) {
        if (e->queue_tail)
            e->queue_tail->next = head;
        else
            e->queue_head = head;
        e->queue_tail = tail;
        e->unfinished += n;
        wake_thread(e);
    }
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
fail:
    Py_DECREF(jobs);
    free_jobs(head);
    return NULL;
}

/* Put finished jobs back in front of the done list (results() could not hand them over). */
static void requeue(Engine *e, job *head) {
    job *tail = head;
    while (tail->next)
        tail = tail->next;
    pthread_mutex_lock(&e->lock);
    tail->next = e->done_head;
    e->done_head = head;
    if (!e->done_tail)
        e->done_tail = tail;
    pthread_mutex_unlock(&e->lock);
}

static PyObject *result_of(job *j) {
    PyObject *out = PyTuple_New(3);
    if (!out)
        return NULL;
    PyObject *size = PyLong_FromUnsignedLongLong(j->error[0] ? 0 : j->size);
    PyObject *error = j->error[0]
        ? PyUnicode_DecodeUTF8(j->error, (Py_ssize_t)strlen(j->error), "replace")
        : Py_NewRef(Py_None);
    if (!size || !error) {
        Py_XDECREF(size);
        Py_XDECREF(error);
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, Py_NewRef(j->token));
    PyTuple_SET_ITEM(out, 1, size);
    PyTuple_SET_ITEM(out, 2, error);
    return out;
}

static PyObject *Engine_results(Engine *e, PyObject *unused) {
    if (!e->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not initialized");
        return NULL;
    }
    job *got = NULL;
    int ended = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->lock);
    while (!e->done_head && e->running)
        pthread_cond_wait(&e->ready, &e->lock);
    got = e->done_head;
    e->done_head = e->done_tail = NULL;
    ended = !got && !e->running;
    pthread_mutex_unlock(&e->lock);
    Py_END_ALLOW_THREADS
    if (ended)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    while (got) {
        job *j = got;
        PyObject *tuple = out ? result_of(j) : NULL;
        if (!tuple || PyList_Append(out, tuple) < 0) {
            /* (out of memory) the rest are answered by the next call; what is in out now
             * is returned, or the error when it is empty */
            Py_XDECREF(tuple);
            requeue(e, got);
            if (out && PyList_GET_SIZE(out) > 0) {
                PyErr_Clear();
                return out;
            }
            Py_XDECREF(out);
            return NULL;
        }
        Py_DECREF(tuple);
        got = j->next;
        Py_CLEAR(j->token);
        release_body(j);
        free(j);
    }
    return out;
}

static PyObject *Engine_set_route(Engine *e, PyObject *args) {
    const char *base, *proxy;
    long connect_ms, low_speed;
    if (!PyArg_ParseTuple(args, "ssll", &base, &proxy, &connect_ms, &low_speed))
        return NULL;
    if (!e->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not initialized");
        return NULL;
    }
    if (set_route_locked(e, base, proxy, connect_ms, low_speed) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void stop(Engine *e, int cancel) {
    if (!e->initialized)
        return;
    pthread_mutex_lock(&e->lock);
    e->closing = 1;
    if (cancel)
        e->cancelled = 1;
    wake_thread(e);
    pthread_mutex_unlock(&e->lock);
    join_thread(e);
}

static PyObject *Engine_stop(Engine *e, PyObject *cancel) {
    int yes = PyObject_IsTrue(cancel);
    if (yes < 0)
        return NULL;
    stop(e, yes);
    Py_RETURN_NONE;
}

static PyObject *Engine_get_requests(Engine *e, void *closure) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&e->requests, __ATOMIC_RELAXED));
}

static PyObject *Engine_get_unfinished(Engine *e, void *closure) {
    if (!e->initialized)
        return PyLong_FromLong(0);
    pthread_mutex_lock(&e->lock);
    Py_ssize_t n = e->unfinished;
    pthread_mutex_unlock(&e->lock);
    return PyLong_FromSsize_t(n);
}

static void Engine_dealloc(Engine *e) {
    if (e->initialized) {
        stop(e, 1);
        free_jobs(e->done_head);
        free_jobs(e->queue_head);
        pthread_mutex_destroy(&e->lock);
        pthread_mutex_destroy(&e->join_lock);
        pthread_cond_destroy(&e->wake);
        pthread_cond_destroy(&e->ready);
    }
    for (int i = 0; i < N_ALGORITHMS; i++)
        if (e->md[i])
            EVP_MD_free(e->md[i]);
    free(e->user_agent);
    if (e->root_fd >= 0)
        close(e->root_fd);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Engine_methods[] = {
    {"submit", (PyCFunction)Engine_submit, METH_O,
     "submit(jobs): queue (relpath, algorithm code, digest, token) tuples (all or none: a "
     "malformed one raises). A relpath must be the object path of its hash."},
    {"validate", (PyCFunction)Engine_validate, METH_O,
     "validate(jobs): raise as submit() would for a malformed job; queue nothing."},
    {"results", (PyCFunction)Engine_results, METH_NOARGS,
     "results(): the (token, size, error) of finished jobs, waiting for at least one; None "
     "once the engine ended and all were collected."},
    {"set_route", (PyCFunction)Engine_set_route, METH_VARARGS,
     "set_route(base_url, proxy, connect_timeout_ms, low_speed_time): for transfers that "
     "start from now on."},
    {"stop", (PyCFunction)Engine_stop, METH_O,
     "stop(cancel): end the thread once every job submitted is finished, or with cancel at "
     "once (jobs not finished end with the reason 'cancelled'). Any thread, any number of "
     "times: a cancel while another stop waits makes that return early too."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"requests", (getter)Engine_get_requests, NULL, "GET requests started", NULL},
    {"unfinished", (getter)Engine_get_unfinished, NULL, "jobs submitted and not finished",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycvmfs.storage._httpcopy.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(root, base_url, proxy, connect_timeout_ms, low_speed_time, user_agent, "
              "parallel, fsync, fix_mode, named_files=False): verified HTTP copies of objects "
              "into root (named_files: bodies wait in data/txn, not in nameless files).",
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pycvmfs.storage._httpcopy",
    .m_doc = "Verified HTTP copies of content-addressed objects (libcurl, OpenSSL).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__httpcopy(void) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        PyErr_SetString(PyExc_ImportError, "libcurl cannot be initialized");
        return NULL;
    }
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
