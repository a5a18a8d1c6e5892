/*
 * stockade-probe: the enforcement probes, one static binary, one probe per
 * subcommand. See probes.h for the exit-code convention.
 */
#include "probes.h"
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: stockade-probe PROBE [ARG...]\n");
        stk_probe_list(stderr);
        return STK_PROBE_USAGE;
    }
    return stk_probe_run(argv[1], argc - 2, argv + 2);
}
