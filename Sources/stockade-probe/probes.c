#define _GNU_SOURCE
#include "probes.h"
#include <string.h>
#include <unistd.h>

typedef int (*stk_probe_fn)(int argc, char **argv);

/* Prints the effective uid; a smoke probe that always succeeds. */
static int probe_whoami(int argc, char **argv) {
    (void)argc; (void)argv;
    printf("uid=%d gid=%d\n", (int)getuid(), (int)getgid());
    return STK_PROBE_SUCCEEDED;
}

static const struct { const char *name; stk_probe_fn fn; } probes[] = {
    {"whoami", probe_whoami},
};

int stk_probe_run(const char *name, int argc, char **argv) {
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        if (strcmp(probes[i].name, name) == 0) return probes[i].fn(argc, argv);
    fprintf(stderr, "stockade-probe: unknown probe %s\n", name);
    return STK_PROBE_USAGE;
}

void stk_probe_list(FILE *out) {
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) fprintf(out, "%s\n", probes[i].name);
}
