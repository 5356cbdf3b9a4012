// CPU checks through the compiler's cpuid wrapper; AMX also needs the process's permission to use the tiles' state
// (Linux: ARCH_REQ_XCOMP_PERM for XTILEDATA; granted once for the whole process, ONNX Runtime asks for it too).
#include "cpu.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace evk {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
static bool avx512_base() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
bool cpu_has_avx512() { return avx512_base(); }
bool cpu_has_avx512_bf16() { return avx512_base() && __builtin_cpu_supports("avx512bf16"); }
bool cpu_has_avx512_vnni() { return avx512_base() && __builtin_cpu_supports("avx512vnni"); }
bool cpu_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_bf16() { return false; }
bool cpu_has_avx512_vnni() { return false; }
bool cpu_has_avx2() { return false; }
#endif

bool cpu_has_amx_bf16() {
#if defined(__linux__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
    return false;
#endif
}

Cap kernel_cap() {
    const char *cap = std::getenv("EDGEVLM_KERNELS");
    if (cap && std::strcmp(cap, "portable") == 0) return Cap::portable;
    if (cap && std::strcmp(cap, "avx512") == 0) return Cap::avx512;
    if (cap && std::strcmp(cap, "vnni") == 0) return Cap::vnni;
    if (cap && std::strcmp(cap, "avx2") == 0) return Cap::avx2;
    return Cap::none;
}

bool avx512_allowed() {
    static const bool avx512 = cpu_has_avx512();
    const Cap cap = kernel_cap();
    return avx512 && cap != Cap::portable && cap != Cap::avx2;
}

bool avx2_allowed() {
    static const bool avx2 = cpu_has_avx2();
    return avx2 && kernel_cap() != Cap::portable;
}

}  // namespace evk
