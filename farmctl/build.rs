//! With the `cuda` feature the binaries link CUDA's libraries (libcudart,
//! libcublas, libcurand, and the driver's libcuda) dynamically. An rpath to
//! the folders they usually live in lets a binary built on one machine start
//! on a GPU machine without LD_LIBRARY_PATH; LD_LIBRARY_PATH still wins.
fn main() {
    println!("cargo:rerun-if-changed=../deploy/cuda-rpath.txt");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let dirs = std::fs::read_to_string("../deploy/cuda-rpath.txt").expect("deploy/cuda-rpath.txt lists the CUDA rpath");
    let dirs: Vec<&str> = dirs.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}
