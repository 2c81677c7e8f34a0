// Generates the tonic/prost code for `protos/fastlightgen.proto` with the protoc binary that
// ships inside the `protoc-bin-vendored` crate, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=protos/fastlightgen.proto");
    tonic_prost_build::configure().compile_protos(&["protos/fastlightgen.proto"], &["protos"])?;
    Ok(())
}
