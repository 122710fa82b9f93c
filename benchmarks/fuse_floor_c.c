/* Build: gcc -O2 -Wall -o /tmp/fuse_floor_c benchmarks/fuse_floor_c.c $(pkg-config --cflags --libs fuse3)
   Run (root): /tmp/fuse_floor_c SRC MNT [cachedir], then time the find/tar commands of
   benchmarks/client.py on MNT; unmount with fusermount3 -u MNT. See docs/mount.md. */
#define _GNU_SOURCE
/* A do-nothing read-only FUSE low-level file system in C (libfuse3), for comparison with
   benchmarks/fuse_floor.py. Usage: cfloor SRC MNT [cachedir]  (single-threaded loop) */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct { char *path; char *name; struct stat st; fuse_ino_t parent;
                 fuse_ino_t *kids; size_t nkids; } node;
static node *nodes; static size_t nnodes, cap;
static int cache_dir; static double ttl = 240.0;

static fuse_ino_t add(const char *path, const char *name, fuse_ino_t parent) {
    if (nnodes == cap) { cap = cap ? cap * 2 : 1024; nodes = realloc(nodes, cap * sizeof(node)); }
    fuse_ino_t ino = nnodes++;
    node *n = &nodes[ino]; memset(n, 0, sizeof *n);
    n->path = strdup(path); n->name = strdup(name); n->parent = parent;
    lstat(path, &n->st); n->st.st_ino = ino;
    n->st.st_atim = n->st.st_ctim = n->st.st_mtim;
    if (S_ISDIR(n->st.st_mode)) {
        struct dirent **list; int k = scandir(path, &list, NULL, alphasort);
        fuse_ino_t *kids = calloc(k > 0 ? k : 1, sizeof(fuse_ino_t)); size_t m = 0;
        for (int i = 0; i < k; i++) {
            const char *e = list[i]->d_name;
            if (strcmp(e, ".") && strcmp(e, "..")) {
                char *p; if (asprintf(&p, "%s/%s", path, e) < 0) exit(1);
                kids[m++] = add(p, e, ino); free(p);
            }
            free(list[i]);
        }
        free(list);
        nodes[ino].kids = kids; nodes[ino].nkids = m;
    }
    return ino;
}

static void entry(fuse_req_t req, fuse_ino_t ino) {
    struct fuse_entry_param e; memset(&e, 0, sizeof e);
    e.ino = ino; e.attr = nodes[ino].st; e.attr_timeout = e.entry_timeout = ttl;
    fuse_reply_entry(req, &e);
}
static void ll_init(void *u, struct fuse_conn_info *c) {
    (void)u; c->want &= ~FUSE_CAP_READDIRPLUS_AUTO;  /* as pyfuse3: always READDIRPLUS */
}
static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    node *p = &nodes[parent];
    for (size_t i = 0; i < p->nkids; i++)
        if (!strcmp(nodes[p->kids[i]].name, name)) { entry(req, p->kids[i]); return; }
    fuse_reply_err(req, ENOENT);
}
static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi; fuse_reply_attr(req, &nodes[ino].st, ttl);
}
static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    fi->fh = ino; fi->cache_readdir = cache_dir; fi->keep_cache = cache_dir;
    fuse_reply_open(req, fi);
}
static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
    (void)fi; node *d = &nodes[ino]; char *buf = malloc(size); size_t used = 0;
    for (size_t i = off; i < d->nkids; i++) {
        node *k = &nodes[d->kids[i]];
        struct fuse_entry_param e; memset(&e, 0, sizeof e);
        e.ino = d->kids[i]; e.attr = k->st; e.attr_timeout = e.entry_timeout = ttl;
        size_t n = fuse_add_direntry_plus(req, buf + used, size - used, k->name, &e, i + 1);
        if (n > size - used) break;
        used += n;
    }
    fuse_reply_buf(req, buf, used); free(buf);
}
static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino; (void)fi; fuse_reply_err(req, 0);
}
static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if ((fi->flags & O_ACCMODE) != O_RDONLY) { fuse_reply_err(req, EROFS); return; }
    int fd = open(nodes[ino].path, O_RDONLY);
    if (fd < 0) { fuse_reply_err(req, errno); return; }
    fi->fh = fd; fi->keep_cache = 1; fuse_reply_open(req, fi);
}
static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)ino; char *buf = malloc(size); ssize_t n = pread(fi->fh, buf, size, off);
    if (n < 0) fuse_reply_err(req, errno); else fuse_reply_buf(req, buf, n);
    free(buf);
}
static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino; close(fi->fh); fuse_reply_err(req, 0);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: cfloor SRC MNT [cachedir]\n"); return 2; }
    cache_dir = argc > 3;
    cap = 1024; nodes = calloc(cap, sizeof(node)); nnodes = 1;  /* node 0 unused: root is 1 */
    add(argv[1], "", 1);
    char *fa[] = {argv[0], "-o", "ro,fsname=cfloor,subtype=cfloor,default_permissions", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fa);
    struct fuse_lowlevel_ops ops = {
        .init = ll_init, .lookup = ll_lookup, .getattr = ll_getattr, .opendir = ll_opendir,
        .readdirplus = ll_readdirplus, .releasedir = ll_releasedir, .open = ll_open,
        .read = ll_read, .release = ll_release};
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_session_mount(se, argv[2])) return 1;
    printf("ready %zu\n", nnodes); fflush(stdout);
    int r = fuse_session_loop(se);
    fuse_session_unmount(se); fuse_session_destroy(se);
    return r ? 1 : 0;
}
