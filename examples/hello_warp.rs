//! The baseline of the cached-read benchmark (`tests/bench`): warp's hello world,
//! with the same runtime and allocator hubbub uses, so the ratio measures what
//! hubbub adds per request (middleware, cache lookup, JSON), not the framework.
//!
//! `hello_warp 127.0.0.1:18080`

use warp::Filter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_owned())
        .parse()?;
    let hello = warp::path::end().map(|| "Hello, World!");
    warp::serve(hello).run(listen).await;
    Ok(())
}
