/*
 * libarchive, loaded on first use.
 *
 * Linking libarchive made every start of the binary load it and the ten libraries it needs
 * (libxml2, ICU, nettle, acl, lzma, zstd, lz4, bz2, ...): about 2.3 ms of every `stockade`
 * invocation, `--version` and a one-shot run included, although only image import unpacks
 * layers. So the binary does not link it: this file defines the libarchive functions the image
 * unpacker calls, each of which loads libarchive.so.13 (the soname of every libarchive 3.x)
 * once, with dlopen, and calls through to it. archive_read_new() returns NULL when the library
 * cannot be loaded; stk_archive_load_error() says why.
 */
#define _GNU_SOURCE
#include "CArchive.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define STK_ARCHIVE_SONAME "libarchive.so.13"

static pthread_once_t stk_archive_once = PTHREAD_ONCE_INIT;
static char stk_archive_error[512];
static int stk_archive_failed;

static struct {
    struct archive *(*read_new)(void);
    int (*read_free)(struct archive *);
    int (*read_support_filter_none)(struct archive *);
    int (*read_support_filter_gzip)(struct archive *);
    int (*read_support_filter_zstd)(struct archive *);
    int (*read_support_format_tar)(struct archive *);
    int (*read_open)(struct archive *, void *, archive_open_callback *, archive_read_callback *, archive_close_callback *);
    int (*read_next_header)(struct archive *, struct archive_entry **);
    int (*read_data_block)(struct archive *, const void **, size_t *, la_int64_t *);
    const char *(*error_string)(struct archive *);
    const char *(*entry_pathname)(struct archive_entry *);
    const char *(*entry_hardlink)(struct archive_entry *);
    const char *(*entry_symlink)(struct archive_entry *);
    __LA_MODE_T (*entry_filetype)(struct archive_entry *);
    __LA_MODE_T (*entry_perm)(struct archive_entry *);
    la_int64_t (*entry_uid)(struct archive_entry *);
    la_int64_t (*entry_gid)(struct archive_entry *);
} stk_la;

static void stk_archive_load(void) {
    void *lib = dlopen(STK_ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *why = dlerror();
        snprintf(stk_archive_error, sizeof stk_archive_error, "%s (install libarchive13)", why ? why : STK_ARCHIVE_SONAME);
        stk_archive_failed = 1;
        return;
    }
    const char *missing = NULL;
#define STK_BIND(field, symbol) \
    do { \
        *(void **)(&stk_la.field) = dlsym(lib, symbol); \
        if (stk_la.field == NULL && missing == NULL) missing = symbol; \
    } while (0)
    STK_BIND(read_new, "archive_read_new");
    STK_BIND(read_free, "archive_read_free");
    STK_BIND(read_support_filter_none, "archive_read_support_filter_none");
    STK_BIND(read_support_filter_gzip, "archive_read_support_filter_gzip");
    STK_BIND(read_support_filter_zstd, "archive_read_support_filter_zstd");
    STK_BIND(read_support_format_tar, "archive_read_support_format_tar");
    STK_BIND(read_open, "archive_read_open");
    STK_BIND(read_next_header, "archive_read_next_header");
    STK_BIND(read_data_block, "archive_read_data_block");
    STK_BIND(error_string, "archive_error_string");
    STK_BIND(entry_pathname, "archive_entry_pathname");
    STK_BIND(entry_hardlink, "archive_entry_hardlink");
    STK_BIND(entry_symlink, "archive_entry_symlink");
    STK_BIND(entry_filetype, "archive_entry_filetype");
    STK_BIND(entry_perm, "archive_entry_perm");
    STK_BIND(entry_uid, "archive_entry_uid");
    STK_BIND(entry_gid, "archive_entry_gid");
#undef STK_BIND
    if (missing != NULL) {
        snprintf(stk_archive_error, sizeof stk_archive_error, "%s has no %s: it is not libarchive 3", STK_ARCHIVE_SONAME, missing);
        stk_archive_failed = 1;
        /* Kept loaded: nothing calls through a NULL entry, since archive_read_new() fails first. */
    }
}

const char *stk_archive_load_error(void) {
    return stk_archive_failed ? stk_archive_error : NULL;
}

/* Every reader starts here: the only entry that loads. */
struct archive *archive_read_new(void) {
    pthread_once(&stk_archive_once, stk_archive_load);
    return stk_archive_failed ? NULL : stk_la.read_new();
}

/* The rest are reached only with an archive that archive_read_new() made, so the library is loaded. */
int archive_read_free(struct archive *a) { return stk_la.read_free(a); }
int archive_read_support_filter_none(struct archive *a) { return stk_la.read_support_filter_none(a); }
int archive_read_support_filter_gzip(struct archive *a) { return stk_la.read_support_filter_gzip(a); }
int archive_read_support_filter_zstd(struct archive *a) { return stk_la.read_support_filter_zstd(a); }
int archive_read_support_format_tar(struct archive *a) { return stk_la.read_support_format_tar(a); }
int archive_read_open(struct archive *a, void *context, archive_open_callback *open, archive_read_callback *read,
                      archive_close_callback *close) {
    return stk_la.read_open(a, context, open, read, close);
}
int archive_read_next_header(struct archive *a, struct archive_entry **entry) { return stk_la.read_next_header(a, entry); }
int archive_read_data_block(struct archive *a, const void **buffer, size_t *size, la_int64_t *offset) {
    return stk_la.read_data_block(a, buffer, size, offset);
}
const char *archive_error_string(struct archive *a) { return stk_la.error_string(a); }
const char *archive_entry_pathname(struct archive_entry *e) { return stk_la.entry_pathname(e); }
const char *archive_entry_hardlink(struct archive_entry *e) { return stk_la.entry_hardlink(e); }
const char *archive_entry_symlink(struct archive_entry *e) { return stk_la.entry_symlink(e); }
__LA_MODE_T archive_entry_filetype(struct archive_entry *e) { return stk_la.entry_filetype(e); }
__LA_MODE_T archive_entry_perm(struct archive_entry *e) { return stk_la.entry_perm(e); }
la_int64_t archive_entry_uid(struct archive_entry *e) { return stk_la.entry_uid(e); }
la_int64_t archive_entry_gid(struct archive_entry *e) { return stk_la.entry_gid(e); }
