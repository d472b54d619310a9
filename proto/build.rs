fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No protoc on the build machines: use the vendored binary.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=shoal.proto");
    tonic_prost_build::configure().compile_protos(&["shoal.proto"], &["."])?;
    Ok(())
}
