//! Generates the gRPC code from `proto/` with protox (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "voicecluster/v1/directory.proto",
            "voicecluster/v1/config.proto",
            "voicecluster/v1/call_legs.proto",
            "voicecluster/v1/task_events.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
