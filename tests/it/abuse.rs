//! Issue 4, item 4: a hostile or broken client gets a fast, bounded answer
//! or a closed connection, and everyone else keeps being served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;

fn serving(d: &Daemon) {
    let t = Instant::now();
    assert_eq!(d.creds().status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "others must be served meanwhile"
    );
}

/// Reads until the peer closes (Ok(bytes)) or the timeout hits (Err).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Duration> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Ok(out),
        }
    }
    Err(start.elapsed())
}

#[test]
fn an_oversized_header_gets_431_fast() {
    let d = DaemonBuilder::new("abuse-big").moto_role().start();
    let huge = "a".repeat(64 * 1024);
    let t = Instant::now();
    let r = raw(
        d.listen(),
        format!("GET /v1/credentials HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
    assert!(t.elapsed() < Duration::from_secs(2));
    serving(&d);
}

#[test]
fn a_slow_client_is_cut_off_at_the_header_timeout() {
    let d = DaemonBuilder::new("abuse-slow")
        .moto_role()
        .args(&["--header-timeout", "2s"])
        .start();
    let addr: SocketAddr = d.listen();

    // One byte per 300 ms, never finishing the head.
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    s.write_all(b"GET /v1/credentials HTTP/1.1\r\n").unwrap();
    let mut closed = false;
    for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        serving(&d);
        std::thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    if !closed {
        let r = read_until_closed(&mut s, Duration::from_secs(3));
        assert!(r.is_ok(), "connection still open after {:?}", t.elapsed());
    }
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        t.elapsed()
    );

    // A connection that never sends a byte is closed too.
    let mut idle = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(5)).is_ok(),
        "idle connection kept open"
    );
    assert!(t.elapsed() >= Duration::from_millis(1500) && t.elapsed() < Duration::from_secs(4));
    serving(&d);
}

#[test]
fn request_bodies_and_odd_methods_are_refused() {
    let d = DaemonBuilder::new("abuse-body")
        .moto_role()
        .args(&["--imds-listen", "127.0.0.1:0"])
        .start();
    let token = d.token();
    let auth = format!("Authorization: {token}\r\n");
    for req in [
        format!("POST /v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nConnection: close\r\n\r\nhello"),
        format!("GET /v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nConnection: close\r\n\r\nhello"),
        format!("GET /v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let r = raw(d.listen(), req.as_bytes());
        assert_eq!(r.status, 413, "{req}");
        assert_eq!(r.json()["code"], "BodyNotAllowed");
    }
    let r = raw(
        d.imds(),
        b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(r.status, 413);
    for m in ["TRACE", "PROPFIND", "FOO", "DELETE"] {
        let r = http(
            d.listen(),
            m,
            "/v1/credentials",
            &[("Authorization", &token)],
        );
        assert_eq!(r.status, 405, "{m}");
        let r = http(d.imds(), m, "/latest/api/token", &[]);
        assert_eq!(r.status, 405, "imds {m}");
        let r = http(d.admin(), m, "/metrics", &[]);
        assert_eq!(r.status, 405, "admin {m}");
    }
    // No redirects anywhere: a directory-ish path is a plain 404.
    let r = http(d.imds(), "GET", "/latest/meta-data", &[]);
    assert!(r.status == 404 || r.status == 401, "{}", r.status);
    assert!(r.header("location").is_none());
    serving(&d);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn ten_thousand_imds_token_puts_keep_memory_flat() {
    let d = DaemonBuilder::new("abuse-put")
        .moto_role()
        .args(&["--imds-listen", "127.0.0.1:0"])
        .start();
    let addr = d.imds();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
    let mut put = |n: usize| {
        // Pipelined in batches of 100, answers read back in full.
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending = Vec::new();
        for _ in 0..n / 100 {
            for _ in 0..100 {
                s.write_all(req).unwrap();
            }
            let mut seen = 0;
            while seen < 100 {
                let k = s.read(&mut buf).unwrap();
                assert!(k > 0, "closed early");
                pending.extend_from_slice(&buf[..k]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).to_string();
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if pending.len() < end + 4 + len {
                        break;
                    }
                    pending.drain(..end + 4 + len);
                    seen += 1;
                    got += 1;
                }
            }
        }
        got
    };
    assert_eq!(put(1000), 1000);
    let before = rss_kib(d.child.id());
    assert_eq!(put(10_000), 10_000);
    let after = rss_kib(d.child.id());
    eprintln!("RSS before {before} KiB, after 10 000 token PUTs {after} KiB");
    assert!(
        after < before + 1024,
        "memory grew by {} KiB",
        after.saturating_sub(before)
    );
    serving(&d);
}

#[test]
fn connections_beyond_the_limit_are_closed_and_counted() {
    let d = DaemonBuilder::new("abuse-conns")
        .moto_role()
        .args(&["--max-connections", "8", "--header-timeout", "20s"])
        .start();
    let addr = d.listen();
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(addr).unwrap();
    let _ = extra.write_all(b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = Instant::now();
    let r = read_until_closed(&mut extra, Duration::from_secs(3));
    assert_eq!(
        r,
        Ok(Vec::new()),
        "the ninth connection must be closed without an answer"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    serving(&d);
    assert!(d.metric("credvend_connections_refused_total").unwrap() >= 1.0);
}
