#ifndef STK_PROBES_H
#define STK_PROBES_H
#include <stdio.h>

/* Exit codes: the probe tried the forbidden thing and ... */
#define STK_PROBE_BLOCKED 0      /* ... it was refused (the control holds) */
#define STK_PROBE_SUCCEEDED 77   /* ... it worked (the control does not hold) */
#define STK_PROBE_ERROR 2        /* ... the probe could not tell (setup error) */
#define STK_PROBE_USAGE 64

/* Runs the probe named `name`; returns its exit code. */
int stk_probe_run(const char *name, int argc, char **argv);
/* Prints the probe names, one a line. */
void stk_probe_list(FILE *out);
#endif
