#!/usr/bin/env bash
# make gpu-bundle: a stripped `--release --features cuda` taidcache for compute capability 9.0
# (H100, H200), built on this machine (no GPU, no system CUDA toolkit) for the GPU machine
# (driver 580 = CUDA 13.0, PyTorch's pip CUDA libraries, no Rust), into gpu-bundle/ as
# taidcache.xz + BUILD.json, for the device tool's `carry` (64 MiB with the working tree).
#
# Why CUDA 13.0 exactly: candle's kernels are embedded as PTX that the driver compiles when a
# module is first used, and a 580 driver refuses PTX from a newer nvcc (13.1+ writes a newer PTX
# ISA). So nvcc and the libraries come from PyPI pinned to 13.0, unlike `make check-cuda`, which
# only compiles and takes the newest.
#
# Linking: candle 0.11 builds cudarc 0.19 with `dynamic-linking`, so the binary names libcuda.so.1,
# libcublas.so.13, libcurand.so.10 and (for candle-kernels' static MoE library) libcudart.so.13
# as DT_NEEDED (--as-needed drops cublasLt and nvrtc; libcublas loads libcublasLt itself). The pip wheels ship only the versioned files, and no libcuda at all (the driver's):
# the unversioned names are symlinks made here, and libcuda.so a stub holding every driver
# symbol cudarc declares, with the driver's soname. At run time the real driver and PyTorch's
# wheels answer (scripts/gpu-check.sh points LD_LIBRARY_PATH at them).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
VENV=${CUDA_BUNDLE_VENV:-target/cuda-bundle-venv}
TARGET_DIR=${CUDA_BUNDLE_TARGET_DIR:-target/cuda}
OUT_DIR=${GPU_BUNDLE_DIR:-gpu-bundle}
LIMIT_MIB=64
PIP_PINS=(
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
CUDARC_VERSION=13000 # CUDA 13.0, the 580 driver's
COMPUTE_CAP=90

fail() {
    echo "gpu-bundle: $*" >&2
    exit 1
}

started=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV" || fail "could not make the venv $VENV."
installed=$("$VENV/bin/python" -m pip freeze 2>/dev/null || true)
for pin in "${PIP_PINS[@]}"; do
    if ! grep -qx "$pin" <<<"$installed"; then
        echo "gpu-bundle: installing ${PIP_PINS[*]} into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PINS[@]}" ||
            fail "pip could not install the CUDA 13.0 wheels (${PIP_PINS[*]})."
        break
    fi
done
cuda=$("$VENV/bin/python" -c "import nvidia.cu13, os; print(os.path.abspath(list(nvidia.cu13.__path__)[0]))") ||
    fail "the venv $VENV has no nvidia.cu13 package."
"$cuda/bin/nvcc" --version | grep -q 'release 13\.0' || fail "$cuda/bin/nvcc is not CUDA 13.0."

# A toolkit layout the link step understands: lib/libX.so -> libX.so.N, lib/stubs/libcuda.so.
for lib in "$cuda"/lib/lib*.so.*; do
    base=$(basename "$lib")
    case $base in *.alt.* | *builtins*) continue ;; esac
    ln -sfn "$base" "$cuda/lib/${base%%.so.*}.so"
done
stubs="$cuda/lib/stubs"
mkdir -p "$stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1) ||
        fail "cudarc 0.19's sources are not in the cargo registry (run cargo fetch)."
    grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$sys" | sed 's/.*("\(.*\)")/void \1(void) {}/' |
        sort -u >"$stubs/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda-stub.c" ||
        fail "could not compile the libcuda link stub."
fi

echo "gpu-bundle: cargo build --release --features cuda (CUDA 13.0, sm_$COMPUTE_CAP) into $TARGET_DIR"
CUDA_HOME=$cuda CUDA_PATH=$cuda NVCC=$cuda/bin/nvcc PATH=$cuda/bin:$PATH \
    CUDARC_CUDA_VERSION=$CUDARC_VERSION CUDA_COMPUTE_CAP=$COMPUTE_CAP \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    "$CARGO" build --locked --release --features cuda --bin taidcache --target-dir "$TARGET_DIR" ||
    fail "the cuda build failed (the cargo output above says where)."

# The binary is 70 MiB stripped (33 MiB of it the fatbins of candle's GGUF/MoE kernels, which
# candle-core's quantized code pulls in): over the device tool's 64 MiB. xz brings it to about
# 11 MiB; scripts/gpu_check.py unpacks it with Python's lzma (no xz needed there).
bin="$TARGET_DIR/release/taidcache"
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | paste -sd' ')
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
glibcxx=$(objdump -T "$bin" | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1 || true)
ptx_isa=$(grep -ao '\.version [0-9]*\.[0-9]*' "$bin" | sort -uV | tail -1 | cut -d' ' -f2 || true)
command -v xz >/dev/null || fail "xz is not installed (apt-get install xz-utils)."
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
xz -T0 -6 -c "$bin" >"$OUT_DIR/taidcache.xz" || fail "xz could not compress $bin."
build_s=$(($(date +%s) - started))
cat >"$OUT_DIR/BUILD.json" <<EOF
{
  "commit": "$(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty')",
  "built_on": "$(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | head -1 | awk '{print $NF}')",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "features": "cuda",
  "cuda_version": "13.0",
  "nvcc": "$("$cuda/bin/nvcc" --version | tail -1)",
  "compute_cap": $COMPUTE_CAP,
  "ptx_isa": "$ptx_isa",
  "needed": "$needed",
  "max_glibc": "$glibc",
  "max_glibcxx": "$glibcxx",
  "bundle_seconds": $build_s,
  "binary_bytes": $(stat -c %s "$bin"),
  "binary_sha256": "$(sha256sum "$bin" | cut -d' ' -f1)"
}
EOF
bytes=$(du -sb "$OUT_DIR" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "gpu-bundle: $OUT_DIR/ is $bytes bytes ($((bytes / 1048576)) MiB; the binary is $(stat -c %s "$bin") bytes before xz), in ${build_s} s"
echo "gpu-bundle: it needs $needed; newest symbols $glibc $glibcxx; PTX ISA $ptx_isa"
[ $((bytes + tree)) -le $((LIMIT_MIB * 1048576)) ] ||
    fail "$OUT_DIR/ ($bytes bytes) and the working tree ($tree bytes) are over the device tool's $LIMIT_MIB MiB."
echo "gpu-bundle: with the working tree ($tree bytes), $(((bytes + tree) / 1048576)) MiB of the device tool's $LIMIT_MIB MiB"
