/*
 * stockade-probe: the enforcement probes, one static binary, one probe per
 * subcommand. Each tries one forbidden thing, harmlessly (it undoes what it
 * did), prints one line saying what it observed, and exits with the code of
 * probes.h: 0 refused, 77 it worked, 2 could not tell, 64 usage.
 */
#include "probes.h"
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "list") == 0) {
        if (argc < 2) fprintf(stderr, "usage: stockade-probe PROBE [ARG...]\n");
        stk_probe_list(argc < 2 ? stderr : stdout);
        return argc < 2 ? STK_PROBE_USAGE : 0;
    }
    return stk_probe_run(argv[1], argc - 2, argv + 2);
}
