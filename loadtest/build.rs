//! With `--all-features` the workspace links contender's TorchScript engine
//! into this binary too; give it the same libtorch rpath as contender's own
//! binaries (see ../build.rs). Harmless when libtorch is not linked.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::PathBuf::from(dir).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
