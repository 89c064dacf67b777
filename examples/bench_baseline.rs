//! The floor for `scripts/bench`: the smallest hyper server that answers
//! every request with the same bytes from memory. It uses the same stack as
//! credvend (tokio's multi-thread runtime with its default worker count,
//! hyper http1, TCP_NODELAY) and sends the same headers, but checks nothing,
//! counts nothing and looks nothing up.
//!
//! Usage: `bench_baseline BODY_FILE` binds 127.0.0.1 on an ephemeral port
//! and prints `listening 127.0.0.1:PORT` on stdout.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: bench_baseline BODY_FILE");
    let body = Bytes::from(std::fs::read(&path).expect("read the body file"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    println!(
        "listening {}",
        listener.local_addr().expect("local address")
    );
    std::io::stdout().flush().expect("stdout");

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let mut r = Response::new(Full::new(body.clone()));
                let h = r.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
