/*
 * libarchive, loaded on first use.
 *
 * Linking libarchive made every start of the binary load it and the ten libraries it needs
 * (libxml2, ICU, nettle, acl, lzma, zstd, lz4, bz2, ...): about 2.3 ms of every `stockade`
 * invocation, `--version` and a one-shot run included, although only image import unpacks
 * layers. So the binary does not link it: this file defines the libarchive functions the image
 * unpacker calls, each of which loads libarchive.so.13 (the soname of every libarchive 3.x)
 * with dlopen (by soname: the same search as when it was linked) the first time a reader is made,
 * and calls through to it. archive_read_new() returns NULL when the library cannot be loaded;
 * stk_archive_load_error() says why.
 */
#define _GNU_SOURCE
#include "CArchive.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define STK_ARCHIVE_SONAME "libarchive.so.13"

static pthread_mutex_t stk_archive_lock = PTHREAD_MUTEX_INITIALIZER;
static int stk_archive_loaded;
static char stk_archive_error[512];
static int stk_archive_failed;

static struct {
    struct archive *(*read_new)(void);
    int (*read_free)(struct archive *);
    int (*read_support_filter_none)(struct archive *);
    int (*read_support_filter_gzip)(struct archive *);
    int (*read_support_filter_zstd)(struct archive *); /* libarchive 3.3.3 and later; NULL before */
    int (*read_support_format_tar)(struct archive *);
    int (*read_open)(struct archive *, void *, archive_open_callback *, archive_read_callback *, archive_close_callback *);
    int (*read_next_header)(struct archive *, struct archive_entry **);
    int (*read_data_block)(struct archive *, const void **, size_t *, la_int64_t *);
    la_int64_t (*filter_bytes)(struct archive *, int);
    const char *(*error_string)(struct archive *);
    const char *(*entry_pathname)(struct archive_entry *);
    const char *(*entry_hardlink)(struct archive_entry *);
    const char *(*entry_symlink)(struct archive_entry *);
    __LA_MODE_T (*entry_filetype)(struct archive_entry *);
    __LA_MODE_T (*entry_perm)(struct archive_entry *);
    la_int64_t (*entry_uid)(struct archive_entry *);
    la_int64_t (*entry_gid)(struct archive_entry *);
} stk_la;

/* Loads and binds the library, under the lock. A failure is kept for stk_archive_load_error and
   tried again at the next reader (a momentary one, descriptors exhausted or a package upgrade half
   done, does not last until restart). */
static int stk_archive_load(void) {
    if (stk_archive_loaded) return 0;
    void *lib = dlopen(STK_ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *why = dlerror();
        snprintf(stk_archive_error, sizeof stk_archive_error, "%s (install libarchive13)", why ? why : STK_ARCHIVE_SONAME);
        stk_archive_failed = 1;
        return -1;
    }
    const char *missing = NULL;
#define STK_BIND(field, symbol, required) \
    do { \
        *(void **)(&stk_la.field) = dlsym(lib, symbol); \
        if (stk_la.field == NULL && (required) && missing == NULL) missing = symbol; \
    } while (0)
    STK_BIND(read_new, "archive_read_new", 1);
    STK_BIND(read_free, "archive_read_free", 1);
    STK_BIND(read_support_filter_none, "archive_read_support_filter_none", 1);
    STK_BIND(read_support_filter_gzip, "archive_read_support_filter_gzip", 1);
    STK_BIND(read_support_filter_zstd, "archive_read_support_filter_zstd", 0);
    STK_BIND(read_support_format_tar, "archive_read_support_format_tar", 1);
    STK_BIND(read_open, "archive_read_open", 1);
    STK_BIND(read_next_header, "archive_read_next_header", 1);
    STK_BIND(read_data_block, "archive_read_data_block", 1);
    STK_BIND(filter_bytes, "archive_filter_bytes", 1);
    STK_BIND(error_string, "archive_error_string", 1);
    STK_BIND(entry_pathname, "archive_entry_pathname", 1);
    STK_BIND(entry_hardlink, "archive_entry_hardlink", 1);
    STK_BIND(entry_symlink, "archive_entry_symlink", 1);
    STK_BIND(entry_filetype, "archive_entry_filetype", 1);
    STK_BIND(entry_perm, "archive_entry_perm", 1);
    STK_BIND(entry_uid, "archive_entry_uid", 1);
    STK_BIND(entry_gid, "archive_entry_gid", 1);
#undef STK_BIND
    if (missing != NULL) {
        snprintf(stk_archive_error, sizeof stk_archive_error, "%s has no %s: it is not the libarchive 3 this build needs",
                 STK_ARCHIVE_SONAME, missing);
        stk_archive_failed = 1;
        memset(&stk_la, 0, sizeof stk_la);
        dlclose(lib);
        return -1;
    }
    stk_archive_failed = 0;
    stk_archive_loaded = 1;
    return 0;
}

const char *stk_archive_load_error(void) {
    pthread_mutex_lock(&stk_archive_lock);
    const char *error = stk_archive_failed ? stk_archive_error : NULL;
    pthread_mutex_unlock(&stk_archive_lock);
    return error;
}

/* Every reader starts here: the only entry that loads. */
struct archive *archive_read_new(void) {
    pthread_mutex_lock(&stk_archive_lock);
    int rc = stk_archive_load();
    pthread_mutex_unlock(&stk_archive_lock);
    return rc == 0 ? stk_la.read_new() : NULL;
}

/* The rest are reached only with an archive that archive_read_new() made, so the library is
   loaded; each still refuses rather than call through a missing entry. */
#define STK_CALL(field, fallback, ...) (stk_la.field != NULL ? stk_la.field(__VA_ARGS__) : (fallback))
int archive_read_free(struct archive *a) { return STK_CALL(read_free, ARCHIVE_FATAL, a); }
int archive_read_support_filter_none(struct archive *a) { return STK_CALL(read_support_filter_none, ARCHIVE_FATAL, a); }
int archive_read_support_filter_gzip(struct archive *a) { return STK_CALL(read_support_filter_gzip, ARCHIVE_FATAL, a); }
int archive_read_support_filter_zstd(struct archive *a) { return STK_CALL(read_support_filter_zstd, ARCHIVE_FATAL, a); }
int archive_read_support_format_tar(struct archive *a) { return STK_CALL(read_support_format_tar, ARCHIVE_FATAL, a); }
int archive_read_open(struct archive *a, void *context, archive_open_callback *open, archive_read_callback *read,
                      archive_close_callback *close) {
    return STK_CALL(read_open, ARCHIVE_FATAL, a, context, open, read, close);
}
int archive_read_next_header(struct archive *a, struct archive_entry **entry) { return STK_CALL(read_next_header, ARCHIVE_FATAL, a, entry); }
int archive_read_data_block(struct archive *a, const void **buffer, size_t *size, la_int64_t *offset) {
    return STK_CALL(read_data_block, ARCHIVE_FATAL, a, buffer, size, offset);
}
la_int64_t archive_filter_bytes(struct archive *a, int n) { return STK_CALL(filter_bytes, -1, a, n); }
const char *archive_error_string(struct archive *a) { return STK_CALL(error_string, NULL, a); }
const char *archive_entry_pathname(struct archive_entry *e) { return STK_CALL(entry_pathname, NULL, e); }
const char *archive_entry_hardlink(struct archive_entry *e) { return STK_CALL(entry_hardlink, NULL, e); }
const char *archive_entry_symlink(struct archive_entry *e) { return STK_CALL(entry_symlink, NULL, e); }
__LA_MODE_T archive_entry_filetype(struct archive_entry *e) { return STK_CALL(entry_filetype, 0, e); }
__LA_MODE_T archive_entry_perm(struct archive_entry *e) { return STK_CALL(entry_perm, 0, e); }
la_int64_t archive_entry_uid(struct archive_entry *e) { return STK_CALL(entry_uid, -1, e); }
la_int64_t archive_entry_gid(struct archive_entry *e) { return STK_CALL(entry_gid, -1, e); }
