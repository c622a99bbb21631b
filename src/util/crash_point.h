#pragma once
// Fault injection for the resume tests: with LOWBIT_CRASH_AT=NAME:N in the environment, the N-th
// time (counting from 1) crash_point(NAME) is reached, the process kills itself with SIGKILL, as
// kill -9 or a power loss would stop it: no destructor, no flush. Without the variable it costs
// one comparison.
namespace lowbit {

void crash_point(const char* name);

}  // namespace lowbit
