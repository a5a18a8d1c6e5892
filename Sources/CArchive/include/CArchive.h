/*
 * libarchive, loaded on first use (see lazy.c): the declarations are libarchive's own.
 */
#ifndef STK_CARCHIVE_H
#define STK_CARCHIVE_H

#include <archive.h>
#include <archive_entry.h>

/* Why libarchive could not be loaded (dlopen's or dlsym's message), or NULL when it is loaded or
   has not been asked for yet. archive_read_new() returns NULL when loading failed. */
const char *stk_archive_load_error(void);

#endif
