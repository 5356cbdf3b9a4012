# Shared helpers of the aarch64 stage (sourced by .ci/arm64/root and .ci/arm64/stage): an emulated Debian bookworm
# arm64 root entered with chroot through qemu-user's binfmt handler. Facts behind each step:
# ../shared/reference/environment.md ("aarch64 by emulation") and docs/arm64.md.

ARM64_ROOT=${EDGEVLM_ARM64_ROOT:-/var/cache/edgevlm/arm64-root}
# Neoverse-N1 (Raspberry Pi 5's Cortex-A76 class, Graviton 2): qemu's default "max" CPU has SVE2/SME, which makes
# ONNX Runtime pick KleidiAI SME kernels (16x slower under emulation) and is not a CPU people have.
ARM64_CPU=${EDGEVLM_ARM64_CPU:-neoverse-n1}
# Bumped when the root's contents change, so a cached root from an older recipe is rebuilt, not trusted.
ARM64_RECIPE=4

# Why the stage cannot run here, or nothing: no root, no qemu-user, no binfmt_misc.
arm64_missing() {
  [ "$(id -u)" = 0 ] || { echo "not root (chroot and binfmt_misc need it)"; return; }
  command -v apt-get >/dev/null || { echo "no apt-get (a Debian/Ubuntu host is needed)"; return; }
  [ -d /proc/sys/fs/binfmt_misc ] || { echo "the kernel has no binfmt_misc"; return; }
}

arm64_host_tools() {
  local need=()
  for pkg in qemu-user-static binfmt-support debootstrap crossbuild-essential-arm64; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  fi
  [ -f /proc/sys/fs/binfmt_misc/register ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
  [ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
}

# bookworm's qemu 7.2 passes the host's x86 /proc/cpuinfo through and `import onnxruntime` then crashes in its CPU
# detection: the chroot sees this file instead, one entry per host core, CPU part matching ARM64_CPU.
arm64_cpuinfo() {
  local part features
  case "$ARM64_CPU" in
    neoverse-n1) part=0xd0c; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
    cortex-a76)  part=0xd0b; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    cortex-a72)  part=0xd08; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
    *) echo "EDGEVLM_ARM64_CPU=$ARM64_CPU: no cpuinfo template (use neoverse-n1, cortex-a76 or cortex-a72)" >&2; return 1 ;;
  esac
  local i
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: %s\nCPU revision\t: 1\n\n' \
      "$i" "$features" "$part"
  done
}

ARM64_MOUNTED=0
arm64_mount() {
  [ "$ARM64_MOUNTED" = 1 ] && return
  arm64_cpuinfo > "$ARM64_ROOT/etc/edgevlm-cpuinfo"
  mount -t proc proc "$ARM64_ROOT/proc"
  mount --bind "$ARM64_ROOT/etc/edgevlm-cpuinfo" "$ARM64_ROOT/proc/cpuinfo"
  mount --rbind /dev "$ARM64_ROOT/dev" && mount --make-rslave "$ARM64_ROOT/dev"
  mount --rbind /sys "$ARM64_ROOT/sys" && mount --make-rslave "$ARM64_ROOT/sys"
  cp /etc/resolv.conf "$ARM64_ROOT/etc/resolv.conf"
  ARM64_MOUNTED=1
  trap arm64_umount EXIT
}

# A host folder seen inside the root at DEST (bundles and fixtures are made on the host, read on both sides).
ARM64_BINDS=()
arm64_bind() {
  arm64_mount
  mkdir -p "$ARM64_ROOT$2"
  mount --bind "$1" "$ARM64_ROOT$2"
  ARM64_BINDS+=("$ARM64_ROOT$2")
}

arm64_umount() {
  [ "$ARM64_MOUNTED" = 1 ] || return 0
  local b
  for b in "${ARM64_BINDS[@]}"; do umount "$b" || umount -l "$b" || true; done
  ARM64_BINDS=()
  umount -R "$ARM64_ROOT/sys" 2>/dev/null || umount -lR "$ARM64_ROOT/sys" || true
  umount -R "$ARM64_ROOT/dev" 2>/dev/null || umount -lR "$ARM64_ROOT/dev" || true
  umount -R "$ARM64_ROOT/proc" 2>/dev/null || umount -lR "$ARM64_ROOT/proc" || true
  ARM64_MOUNTED=0
  if grep -q " $ARM64_ROOT/" /proc/mounts; then
    echo "arm64: still mounted in $ARM64_ROOT: $(grep " $ARM64_ROOT/" /proc/mounts | cut -d' ' -f2 | tr '\n' ' ')" >&2
  fi
}

# Run a command in the root, as a clean login would: the host's SSL_*/PIP_* variables (its CA paths, its local
# wheel folder) do not exist there and break pip.
arm64_run() {
  arm64_mount
  chroot "$ARM64_ROOT" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    QEMU_CPU="$ARM64_CPU" PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 EDGEVLM_CACHE=/root/.cache/edgevlm "$@"
}

arm64_ready() {
  [ "$(cat "$ARM64_ROOT/etc/edgevlm-arm64-recipe" 2>/dev/null)" = "$ARM64_RECIPE" ]
}
