//! Compile the .proto files with protox (pure Rust): no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/standin/v1/standin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
