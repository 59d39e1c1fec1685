//! Compile the .proto files with protox (pure Rust): no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/standin/v1/standin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Chunk data is decoded as a slice of the receive buffer, not copied out of it.
    tonic_prost_build::configure()
        .bytes(".standin.v1.Chunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
