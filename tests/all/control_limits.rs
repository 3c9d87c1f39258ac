//! A bounded control plane: concurrent uploads and the upload rate (429 with
//! `Retry-After`), an unauthenticated body left unread, no cross-tenant
//! hints, the compile timeout, and slow-loris clients cut off by the header
//! and body read timeouts. Raw TCP where a client must misbehave.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry::{Plane, Resp, TOKEN_A, TOKEN_B};
use crate::support::*;

fn addr(plane: &Plane) -> String {
    plane.api.trim_start_matches("http://").to_string()
}

fn metrics(plane: &Plane) -> String {
    reqwest::blocking::get(format!("{}/metrics", plane.api))
        .and_then(|r| r.text())
        .expect("GET /metrics")
}

fn metric(plane: &Plane, line_prefix: &str) -> u64 {
    metrics(plane)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

fn upload_as(plane: &Plane, token: &str, name: &str, bytes: Vec<u8>) -> Resp {
    plane.call(
        "POST",
        &format!("/v1/functions/{name}/versions"),
        Some(token),
        Some(bytes),
    )
}

/// A full request, answered 429 or not; with its `Retry-After`.
fn upload_raw(plane: &Plane, token: &str, body: &[u8]) -> (u16, Option<u64>, Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/functions/g/versions", plane.api))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .expect("upload");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = r.text().unwrap_or_default();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

const GARBAGE: &[u8] = b"not wasm, refused after admission";

/// An upload whose body never finishes: holds its admission permit.
fn hold_upload(plane: &Plane, token: &str) -> TcpStream {
    let before = metric(plane, "pipeline_control_upload_body_bytes_total ");
    let mut s = TcpStream::connect(addr(plane)).unwrap();
    write!(
        s,
        "POST /v1/functions/held/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(b"\0asm\x0d\0\x01\0").unwrap();
    // Admitted once the server has read those first bytes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(plane, "pipeline_control_upload_body_bytes_total ") < before + 8 {
        assert!(Instant::now() < deadline, "held upload never admitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// Repeats `f` while it answers 429 `too-many-uploads` (a dropped held
/// upload is released once the server notices the closed connection).
fn once_released(mut f: impl FnMut() -> (u16, Option<u64>, Value)) -> (u16, Option<u64>, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = f();
        if r.0 != 429 || r.2["error"]["code"] != "too-many-uploads" {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "permit never released: {:?}",
            r.2
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn uploads_are_bounded_and_tell_no_tenant_about_another() {
    let started = Instant::now();
    let plane = Plane::start_with(
        "cp-bounds",
        1,
        "max_concurrent_uploads = 3\nmax_concurrent_uploads_per_tenant = 2\n",
        ["", "uploads_per_minute = 1\nupload_burst = 3\n"],
    );

    // 1. An unauthenticated 60 MiB upload: 401 without the body being read.
    // The client writes until the server closes; what the kernel took is
    // socket buffers, a few MiB at most, not 60.
    let total = 60usize << 20;
    let mut s = TcpStream::connect(addr(&plane)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/functions/big/versions HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut reader = s.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
    });
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0usize;
    while written < total {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let response = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    eprintln!("unauthenticated 60 MiB upload: the kernel accepted {written} bytes");
    assert!(
        written < 16 << 20,
        "the server read the unauthenticated body: {written} bytes accepted"
    );
    assert!(
        response.starts_with("HTTP/1.1 401"),
        "no 401 before the close: {response:?}"
    );
    assert_eq!(
        metric(&plane, "pipeline_control_upload_body_bytes_total "),
        0
    );

    // 2. Two tenants upload the same bytes: the second answer has the shape
    // of a first upload, and deletes answer the same whether the blob, shared
    // with the other tenant, went or not.
    let good = std::fs::read(guest("enrich_rs")).unwrap();
    let a = upload_as(&plane, TOKEN_A, "same", good.clone());
    let b = upload_as(&plane, TOKEN_B, "same", good.clone());
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.body, b.body);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&a.body), keys(&b.body));
    assert_eq!(a.body["digest"], b.body["digest"]);
    assert_eq!(b.body["version"], 1, "{}", b.body);
    for r in [&a, &b] {
        assert!(r.body["compile_ms"].as_u64().is_some(), "{}", r.body);
    }
    let da = plane.call(
        "DELETE",
        "/v1/functions/same/versions/1",
        Some(TOKEN_A),
        None,
    );
    let db = plane.call(
        "DELETE",
        "/v1/functions/same/versions/1",
        Some(TOKEN_B),
        None,
    );
    assert_eq!(
        (da.status, db.status),
        (200, 200),
        "{} {}",
        da.body,
        db.body
    );
    assert_eq!(keys(&da.body), ["deleted"], "{}", da.body);
    assert_eq!(keys(&db.body), ["deleted"], "{}", db.body);
    let left = plane.stored_files();
    assert!(
        !left
            .iter()
            .any(|f| f.starts_with("blobs/") || f.starts_with("artifacts/")),
        "both versions deleted, the shared blob is gone: {left:?}"
    );

    // 3. Concurrent uploads: 2 per tenant, 3 in all.
    let held_a = [hold_upload(&plane, TOKEN_A), hold_upload(&plane, TOKEN_A)];
    let (status, retry, body) = upload_raw(&plane, TOKEN_A, GARBAGE);
    assert_eq!((status, retry), (429, Some(5)), "{body}");
    assert_eq!(body["error"]["code"], "too-many-uploads");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control.max_concurrent_uploads_per_tenant"),
        "{body}"
    );
    let held_b = hold_upload(&plane, TOKEN_B);
    let (status, retry, body) = upload_raw(&plane, TOKEN_B, GARBAGE);
    assert_eq!((status, retry), (429, Some(5)), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(control.max_concurrent_uploads)"),
        "{body}"
    );
    drop(held_a);
    let (status, _, body) = once_released(|| upload_raw(&plane, TOKEN_A, GARBAGE));
    assert_eq!(status, 415, "admitted once acme's uploads ended: {body}");

    // 4. The rate: globex has a burst of 3 and 1 a minute; it used 2 (one
    // upload, one held), a 429 for concurrency cost nothing.
    drop(held_b);
    let (status, _, body) = once_released(|| upload_raw(&plane, TOKEN_B, GARBAGE));
    assert_eq!(status, 415, "{body}");
    let (status, retry, body) = upload_raw(&plane, TOKEN_B, GARBAGE);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate-limited")),
        "{body}"
    );
    let retry = retry.expect("Retry-After");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Acme's own rate is untouched.
    assert_eq!(upload_raw(&plane, TOKEN_A, GARBAGE).0, 415);

    let text = metrics(&plane);
    for line in [
        "pipeline_control_uploads_total{result=\"rejected\",reason=\"too-many-uploads\"} 2",
        "pipeline_control_uploads_total{result=\"rejected\",reason=\"rate-limited\"} 1",
        "pipeline_control_uploads_total{result=\"rejected\",reason=\"unauthenticated\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    eprintln!(
        "control_limits bounds: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Writes `head`, then `trickle` one byte per `every`, until the server
/// closes the connection. Returns how long that took from the first byte,
/// the bytes trickled, and what the server answered.
fn trickle_until_closed(
    plane: &Plane,
    head: &str,
    trickle: &[u8],
    every: Duration,
) -> (Duration, usize, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr(plane)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut reader = s.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        let _ = tx.send((started.elapsed(), String::from_utf8_lossy(&buf).to_string()));
    });
    s.write_all(head.as_bytes()).unwrap();
    let mut sent = 0;
    for b in trickle {
        if let Ok(r) = rx.try_recv() {
            return (r.0, sent, r.1);
        }
        if s.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(every);
    }
    let (took, text) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server never closed the connection");
    (took, sent, text)
}

#[test]
fn compile_and_read_timeouts() {
    let started = Instant::now();
    let plane = Plane::start_with(
        "cp-timeouts",
        1,
        "compile_timeout_ms = 1\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 2000\n",
        ["", ""],
    );

    // A real component cannot be validated and compiled in 1 ms.
    let r = upload_as(
        &plane,
        TOKEN_A,
        "slow",
        std::fs::read(guest("enrich_rs")).unwrap(),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (422, Some("compile-timeout")),
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control.compile_timeout_ms"),
        "{}",
        r.body
    );
    assert!(
        plane.stored_files().is_empty(),
        "{:?}",
        plane.stored_files()
    );
    let r = plane.call("GET", "/v1/functions/slow", Some(TOKEN_A), None);
    assert_eq!(r.status, 404, "{}", r.body);
    // The abandoned compile still reads the staged body; the file goes then.
    wait_until(
        "the timed-out upload's staging file removed",
        Duration::from_secs(30),
        || staged(&plane).is_empty(),
    );

    // Headers trickled a byte every 100 ms (they would take 60 s): cut off
    // by the 1 s header read timeout.
    let filler = vec![b'a'; 600];
    let (took, sent, _) = trickle_until_closed(
        &plane,
        "POST /v1/functions/x/versions HTTP/1.1\r\nX-Slow: ",
        &filler,
        Duration::from_millis(100),
    );
    eprintln!("slow headers cut after {took:?}, {sent} bytes trickled");
    assert!(sent < filler.len(), "the headers were never cut off");
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );

    // A body trickled a byte every 100 ms (it would take 100 s): 408 once
    // the 2 s body timeout passes, then the connection closes.
    let (took, sent, text) = trickle_until_closed(
        &plane,
        &format!(
            "POST /v1/functions/x/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: 1000\r\n\r\n"
        ),
        &[0u8; 1000],
        Duration::from_millis(100),
    );
    eprintln!("slow body cut after {took:?}, {sent} bytes trickled");
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains("body-timeout"), "{text:?}");
    assert!(sent < 1000);
    assert!(
        took < Duration::from_secs(15),
        "cut off only after {took:?}"
    );

    // Idle keep-alive connections (the test client's pool) are closed by
    // the header timeout too, so at least the slow head.
    let headers = metric(
        &plane,
        "pipeline_control_http_timeouts_total{phase=\"headers\"} ",
    );
    assert!(headers >= 1, "no header timeout counted");
    let text = metrics(&plane);
    for line in [
        "pipeline_control_http_timeouts_total{phase=\"body\"} 1",
        "pipeline_control_uploads_total{result=\"rejected\",reason=\"compile-timeout\"} 1",
        "pipeline_control_uploads_total{result=\"rejected\",reason=\"body-timeout\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    eprintln!(
        "control_limits timeouts: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Upload bodies under `staging/` of the plane's store.
fn staged(plane: &Plane) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(plane.store.join("staging")) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().to_string(), len)
        })
        .collect()
}

/// A body is streamed to a staging file as it arrives (not held in memory),
/// and nothing of a failed upload stays: not when the client goes away
/// mid-body, not when a body without a declared length runs past the limit.
#[test]
fn streamed_uploads_leave_nothing_behind() {
    let started = Instant::now();
    let max = 8usize << 20;
    let plane = Plane::start_with(
        "cp-stream",
        1,
        &format!("max_component_bytes = {max}\n"),
        ["", ""],
    );

    // 1. Cut mid-body: 2 MiB of a declared 6 MiB, then the client is gone.
    let mut s = TcpStream::connect(addr(&plane)).unwrap();
    write!(
        s,
        "POST /v1/functions/cut/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: {}\r\n\r\n",
        6 << 20
    )
    .unwrap();
    s.write_all(b"\0asm\x0d\0\x01\0").unwrap();
    let sent = 2usize << 20;
    s.write_all(&vec![0u8; sent - 8]).unwrap();
    // What the server read is on disk, in one staging file of this tenant.
    wait_until("the partial body staged", Duration::from_secs(20), || {
        staged(&plane).iter().any(|(_, len)| *len as usize == sent)
    });
    let files = staged(&plane);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].0.starts_with("upload-acme-"), "{files:?}");
    drop(s);
    wait_until(
        "the staging file removed after the disconnect",
        Duration::from_secs(10),
        || staged(&plane).is_empty(),
    );
    assert!(
        plane.stored_files().is_empty(),
        "{:?}",
        plane.stored_files()
    );

    // 2. No declared length (chunked), past the limit: 413, nothing kept.
    let mut body = b"\0asm\x0d\0\x01\0".to_vec();
    body.resize(max + (1 << 20), 0);
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/functions/big/versions", plane.api))
        .bearer_auth(TOKEN_A)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
        .send()
        .expect("chunked upload");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too-large"), "{text}");
    assert!(staged(&plane).is_empty(), "{:?}", staged(&plane));
    assert!(
        plane.stored_files().is_empty(),
        "{:?}",
        plane.stored_files()
    );

    // 3. A good upload: stored, and its staging file gone.
    let good = std::fs::read(guest("enrich_rs")).unwrap();
    let r = upload_as(&plane, TOKEN_A, "good", good);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(staged(&plane).is_empty(), "{:?}", staged(&plane));
    let stored = plane.stored_files();
    assert!(stored.iter().any(|f| f.starts_with("blobs/")), "{stored:?}");
    eprintln!(
        "control_limits streamed uploads: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A compile held for as long as the test wants (the fault hook stands in
/// for a slow one: a large component) holds acme's compile queue; globex's
/// upload is stored meanwhile, while acme's is provably still compiling.
#[test]
fn one_tenants_slow_compile_never_blocks_another_tenants_upload() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(unique("pw-hold"));
    std::fs::create_dir_all(&dir).unwrap();
    let release = dir.join("release");
    let held = dir.join("release.held");
    let hook = format!("acme:{}", release.display());
    let plane = Plane::start_env(
        "cp-queue",
        1,
        "compile_concurrency = 2\ncompile_concurrency_per_tenant = 1\n",
        ["", ""],
        &[(pipeline_worker::registry::api::FAULT_HOLD_COMPILE, &hook)],
    );
    let (tx, rx) = mpsc::channel();
    let api = plane.api.clone();
    let slow = std::fs::read(guest("hostile")).unwrap();
    let a = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
            .post(format!("{api}/v1/functions/slow/versions"))
            .bearer_auth(TOKEN_A)
            .body(slow)
            .send()
            .map(|r| r.status().as_u16());
        let _ = tx.send(r);
    });
    wait_until("acme's compile held", Duration::from_secs(30), || {
        held.exists()
    });
    let held_at = Instant::now();

    // Other bytes than acme's: uploads of the same bytes are stored one at
    // a time, whoever uploads them.
    let b = upload_as(
        &plane,
        TOKEN_B,
        "quick",
        std::fs::read(guest("enrich_rs")).unwrap(),
    );
    assert_eq!(b.status, 201, "{}", b.body);
    assert!(
        rx.try_recv().is_err(),
        "acme's upload ended before globex's was stored: nothing was held"
    );
    assert!(
        !release.exists() && held_at.elapsed() < Duration::from_secs(55),
        "the hold may have timed out (60 s); the proof is void"
    );
    eprintln!(
        "globex stored while acme compiled, {:.2} s after the hold began",
        held_at.elapsed().as_secs_f64()
    );

    std::fs::write(&release, b"").unwrap();
    let a_status = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("acme's upload never ended")
        .expect("acme's upload");
    assert_eq!(a_status, 201);
    a.join().unwrap();
    let mine = plane.call("GET", "/v1/functions/slow", Some(TOKEN_A), None);
    assert_eq!(mine.status, 200, "{}", mine.body);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "control_limits compile queues: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A version activated while the worker runs gets a pool sized for its own
/// pipeline's threads (2), like one loaded at start-up, not for the largest
/// concurrency on the worker (8, pipeline `other`).
#[test]
fn hot_swapped_versions_get_a_pool_sized_per_pipeline() {
    let started = Instant::now();
    let plane = Plane::start_with("cp-pools", 1, "", ["", ""]);
    let w = WorkerProcess::start_env(
        "run",
        &plane.config,
        &[("PIPELINE_WORKER__PIPELINES__1__CONCURRENCY", "8")],
    );
    wait_until("the worker reports p", Duration::from_secs(60), || {
        let r = plane.call("GET", "/v1/pipelines/p", Some(TOKEN_A), None);
        r.body["workers"].as_array().is_some_and(|w| !w.is_empty())
    });
    let v = plane.upload_ok("enrich", &guest("enrich_rs"));
    assert_eq!(plane.activate("enrich", v).status, 202);
    plane.wait_workers_on(1, &format!("enrich@{v}"), Duration::from_secs(60));
    let log = w.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("activated version loaded"))
        .unwrap_or_else(|| panic!("no load logged:\n{log}"));
    let slots = line
        .split([' ', ','])
        .find_map(|f| {
            let v = f
                .strip_prefix("pool_slots=")
                .or_else(|| f.strip_prefix("\"pool_slots\":"))?;
            v.trim_matches('}').parse::<u32>().ok()
        })
        .unwrap_or_else(|| panic!("no pool_slots in {line:?}"));
    assert_eq!(
        slots,
        pipeline_worker::sandbox::pool_instances(2),
        "sized for pipeline p's 2 threads, not the worker's largest (8 = {} slots): {line}",
        pipeline_worker::sandbox::pool_instances(8)
    );
    eprintln!(
        "control_limits pools: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
