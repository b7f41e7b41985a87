//! Lets binaries built with the `torchscript` feature find libtorch at run
//! time without LD_LIBRARY_PATH: torch-sys's own rpath does not reach the
//! final binaries (including test binaries), so add it here.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCHSCRIPT").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::PathBuf::from(dir).join("lib");
        // Resolve the project's `.cache/libtorch` link to the shared cache.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
