//! The CUDA rpath, when the `cuda` feature is on (see deploy/cuda_rpath.rs).
include!("../deploy/cuda_rpath.rs");

fn main() {
    emit_cuda_rpath();
}
