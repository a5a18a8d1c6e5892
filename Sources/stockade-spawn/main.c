/* The spawn helper, as its own small program (see stk_helper.h): stockade executes it next to itself. */
#include "stk_helper.h"

int main(int argc, char **argv) { return stk_helper_exec_main(argc, argv); }
