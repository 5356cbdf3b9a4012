# Cross-compiling the C library for 64-bit ARM Linux (Raspberry Pi 5, Jetson, RK3588, Graviton) on an x86-64
# Debian/Ubuntu host with crossbuild-essential-arm64:
#
#   cmake -S cpp_bindings -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cpp_bindings/cmake/aarch64-linux-gnu.cmake \
#         -DEDGEVLM_SYSROOT=/path/to/arm64-root \
#         -DONNXRUNTIME_LIBRARY=/path/to/arm64-root/.../onnxruntime/capi/libonnxruntime.so.1.23.2
#
# EDGEVLM_SYSROOT: an arm64 Debian root with the build dependencies installed (libpcre2-dev nlohmann-json3-dev
# libssl-dev libstb-dev): its headers, libraries and pkg-config files are used, never the host's. Without it,
# Debian's multiarch arm64 packages on the host are used (dpkg --add-architecture arm64). ONNXRUNTIME_LIBRARY: the
# aarch64 libonnxruntime.so.1.* (inside the aarch64 onnxruntime wheel), or ONNXRUNTIME_ROOT: an aarch64 release.
# Tests run through qemu-user (CMAKE_CROSSCOMPILING_EMULATOR): `ctest` works on the x86 host.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(EDGEVLM_SYSROOT "$ENV{EDGEVLM_SYSROOT}" CACHE PATH "An arm64 Debian root with the build dependencies")
# CMake reads this file again for each try_compile, where cache variables are not set: the environment carries it.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES EDGEVLM_SYSROOT)
if(EDGEVLM_SYSROOT)
  set(ENV{EDGEVLM_SYSROOT} ${EDGEVLM_SYSROOT})
  set(CMAKE_SYSROOT ${EDGEVLM_SYSROOT})
  set(ENV{PKG_CONFIG_SYSROOT_DIR} ${EDGEVLM_SYSROOT})
  set(ENV{PKG_CONFIG_LIBDIR}
      "${EDGEVLM_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${EDGEVLM_SYSROOT}/usr/share/pkgconfig")
  set(CMAKE_FIND_ROOT_PATH ${EDGEVLM_SYSROOT})
  set(qemu_prefix ${EDGEVLM_SYSROOT})
else()
  set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
  set(qemu_prefix /usr/aarch64-linux-gnu)
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Neoverse-N1 (Cortex-A76 class): the CPU the aarch64 stage emulates; QEMU_CPU in the environment wins.
find_program(QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${QEMU_AARCH64} -L ${qemu_prefix})
endif()
