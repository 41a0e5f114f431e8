// Included by farmctl/build.rs and worker/build.rs (a build script cannot
// depend on a workspace crate without one of its own, and this is one function).
//
// With the `cuda` feature the binaries link CUDA's libraries (libcudart,
// libcublas, libcurand, and the driver's libcuda) dynamically. An rpath to
// the folders they usually live in, listed in deploy/cuda-rpath.txt, lets a
// binary built on one machine start on a GPU machine without
// LD_LIBRARY_PATH; LD_LIBRARY_PATH still wins.
fn emit_cuda_rpath() {
    println!("cargo:rerun-if-changed=../deploy/cuda-rpath.txt");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let dirs = std::fs::read_to_string("../deploy/cuda-rpath.txt").expect("deploy/cuda-rpath.txt lists the CUDA rpath");
    let dirs: Vec<&str> = dirs.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}
