#!/usr/bin/env bash
# ONNX Runtime's C/C++ headers from Debian trixie's libonnxruntime-dev, without touching the system's apt setup:
# a trixie source list and apt state in a temporary directory, `apt-get download`, `dpkg-deb -x`.
#   fetch-onnxruntime-headers.sh DEST      -> DEST/include/onnxruntime/onnxruntime_c_api.h ...
# The C API is backward compatible, so these 1.21 headers work with the newer libonnxruntime.so.1 of the
# onnxruntime pip wheel.
set -euo pipefail
dest=$1
[ -f "$dest/include/onnxruntime/onnxruntime_c_api.h" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Get::List-Cleanup=0
      -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq
(cd "$work" && apt-get "${opts[@]}" download -qq libonnxruntime-dev)
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/x"
mkdir -p "$dest/include"
cp -r "$work/x/usr/include/onnxruntime" "$dest/include/"
